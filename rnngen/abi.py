"""The call ABI of a cell's entry points, as one schema from which the C header, the CUDA
header, the kernels' unpacking of their arguments and the Python call are all generated.

Every forward and backward entry point takes a context and one argument struct:

    int rnngen_<cell>_forward_f32(const rnngen_ctx *ctx,
                                  const rnngen_<cell>_forward_args_f32 *args);
    int rnngen_<cell>_backward_f32(const rnngen_ctx *ctx,
                                   const rnngen_<cell>_backward_args_f32 *args);

(CUDA: ``const rnngen_cuda_ctx *ctx``, the caller's stream and device.)  The struct has one
member per :class:`Field` of :func:`fields`, in that order: the sizes, then a pointer per
buffer and per weight (named after the spec's weights, in spec order).  A template prints
the struct with :func:`c_struct` and the kernel's parameters with :func:`c_params`;
``runtime.Kernel`` fills the struct by member name from the same list, so no entry point
is described twice and no argument goes by position.
"""
from __future__ import annotations

from dataclasses import dataclass

from .ir import CellIR

ENTRIES = ("forward", "backward")

_SHAPES = {"input matrix": "D,H", "recurrent matrix": "H,H", "vector": "H"}


@dataclass(frozen=True)
class Field:
    """One member of an argument struct.  ``kind``: "int" (a size or an option), "in" (a
    buffer the call reads), "out" (a buffer it writes), "mask" (the uint8 mask) or "work"
    (scratch: read and written).  ``shape``: the buffer's shape in the sizes' names
    ("B,T,D"), ``optional``: the pointer may be NULL, ``doc``: what it holds."""
    name: str
    kind: str
    shape: str = ""
    optional: bool = False
    doc: str = ""

    def ctype(self, ct: str) -> str:
        """The member's C type for element type ``ct`` ("float" or "double")."""
        return {"int": "int", "mask": "const unsigned char *", "in": f"const {ct} *",
                "out": f"{ct} *", "work": f"{ct} *"}[self.kind]

    @property
    def pointer(self) -> bool:
        return self.kind != "int"


def _sizes(*extra) -> list:
    return [Field("T", "int", doc="steps"), Field("B", "int", doc="samples"),
            Field("D", "int", doc="input_dim"), Field("H", "int", doc="output_dim"),
            *extra]


def fields(ir: CellIR, entry: str) -> tuple:
    """The members of ``entry``'s argument struct ("forward" or "backward"), in order."""
    states = ", ".join(ir.states)
    weights = [Field(f"w_{w.name}", "in", _SHAPES[w.role], doc=f"weight {w.name}")
               for w in ir.weights]
    if entry == "forward":
        return tuple(_sizes() + [
            Field("x", "in", "B,T,D"),
            Field("mask", "mask", "B,T", True, "1 = real step, 0 = padding; NULL: all real"),
            Field("state0", "in", "S,B,H", True,
                  f"every state ({states}) before the first step; NULL: zeros"),
            *weights,
            Field("y", "out", "B,T,H", doc=f"the output (the carried {ir.output}) at every step"),
            Field("state_last", "out", "S,B,H", True, "every state's final value, or NULL"),
            Field("save", "out", "save_size", True, "for backward, or NULL (inference)"),
            Field("work", "work", "work_size", doc="scratch")])
    if entry == "backward":
        grads = [Field(f"dw_{w.name}", "out", _SHAPES[w.role], doc=f"gradient of {w.name}")
                 for w in ir.weights]
        return tuple(_sizes(Field("truncate", "int",
                                  doc="-1: full BPTT; k > 0: the last k steps only")) + [
            Field("x", "in", "B,T,D"),
            Field("mask", "mask", "B,T", True, "the forward's mask, or NULL"),
            *weights,
            Field("save", "in", "save_size", doc="from forward"),
            Field("dy", "in", "B,T,H", doc="gradient of the loss w.r.t. y"),
            Field("dstate_last", "in", "S,B,H", True,
                  "gradient w.r.t. the final states, or NULL: zeros"),
            Field("dx", "out", "B,T,D"),
            Field("dstate0", "out", "S,B,H", True, "gradient w.r.t. state0, or NULL"),
            *grads,
            Field("work", "work", "work_size", doc="scratch")])
    raise ValueError(f"no entry point {entry!r}; the entry points are {ENTRIES}")


def struct_name(prefix: str, entry: str, suffix: str) -> str:
    """``rnngen_<cell>_<entry>_args<suffix>``."""
    return f"{prefix}_{entry}_args{suffix}"


def _member(f: Field, ct: str, end: str) -> str:
    """One member's declaration (``end``: ";" in a struct, "," or ")" in a parameter list)
    with its shape and meaning as a comment."""
    t = f.ctype(ct)
    decl = f"    {t}{'' if t.endswith('*') else ' '}{f.name}{end}"
    note = ", ".join(x for x in (f"[{f.shape}]" if f.shape else "", f.doc) if x)
    return f"{decl.ljust(39)} /* {note} */" if note else decl


def c_struct(ir: CellIR, prefix: str, entry: str, ct: str, suffix: str) -> str:
    """The typedef of ``entry``'s argument struct for element type ``ct``."""
    name = struct_name(prefix, entry, suffix)
    return "\n".join([f"typedef struct {name} {{",
                      *(_member(f, ct, ";") for f in fields(ir, entry)), f"}} {name};"])


def c_params(ir: CellIR, entry: str, ct: str, lead: str) -> str:
    """The parameter list of the kernel behind an entry point: ``lead`` (the context's
    part: the threads or the stream), then one parameter per member, in order."""
    members = fields(ir, entry)
    return "\n".join([f"    {lead},"] + [_member(f, ct, "," if i < len(members) - 1 else ")")
                                        for i, f in enumerate(members)])


def c_required(ir: CellIR, entry: str) -> str:
    """The C condition that a required pointer is NULL."""
    return " || ".join(f"!{f.name}" for f in fields(ir, entry)
                       if f.pointer and not f.optional)


def c_entry(ir: CellIR, prefix: str, entry: str, suffix: str, backend: str,
            kernel: str = "") -> str:
    """The public entry point: checks the context and the struct, then calls the kernel
    (``kernel``, default ``<entry>_kernel<suffix>``) with the context's part and every
    member, in order."""
    struct = struct_name(prefix, entry, suffix)
    names = [f"args->{f.name}" for f in fields(ir, entry)]
    call = ",\n        ".join(", ".join(names[i:i + 6]) for i in range(0, len(names), 6))
    kernel = kernel or f"{entry}_kernel{suffix}"
    if backend == "c":
        ctx, lead = "rnngen_ctx", "ctx ? ctx->threads : 0"
        check = ["    if (ctx && ctx->threads < 0) return RNNGEN_ECTX;"]
        run = [f"    return {kernel}({lead},", f"        {call});"]
    else:   # the call runs on the context's device, then the caller's is current again
        ctx, lead = "rnngen_cuda_ctx", "ctx ? ctx->stream : NULL"
        check = ["    int previous = -1;",
                 "    if (ctx && ctx->device >= 0) {",
                 "        int n = 0;",
                 "        RNNGEN_CU(cudaGetDeviceCount(&n));",
                 "        if (ctx->device >= n)",
                 "            return RNNGEN_ECTX;",
                 "        RNNGEN_CU(cudaGetDevice(&previous));",
                 "        if (previous == ctx->device)",
                 "            previous = -1;",
                 "        else",
                 "            RNNGEN_CU(cudaSetDevice(ctx->device));",
                 "    }"]
        run = [f"    int st = {kernel}({lead},", f"        {call});",
               "    if (previous >= 0)",
               "        cudaSetDevice(previous);",
               "    return st;"]
    return "\n".join([f"int {prefix}_{entry}{suffix}(const {ctx} *ctx, const {struct} *args)",
                      "{", "    if (!args) return RNNGEN_ENULL;", *check, *run, "}"])
