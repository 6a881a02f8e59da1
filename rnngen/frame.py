"""The frame's work buffer: one table per backend of the scratch arrays a cell's kernels carve
out of ``work``, from which the templates print both the size (``<cell>_sizes``) and the
carving (one pointer per array, in order), so that the two can never disagree.

Each :class:`Buffer` has a name (the kernel's local), a count of elements (a C expression of
``size_t`` over T, B, D, H and the frame's constants: BH = B*H, LDXW = NW*H, LDS_<group> =
width*H, NSLOT, NR, NVEC, X_ELEMENTWISE, RNNGEN_MAX_THREADS, RNNGEN_PANEL_MAX) and what it
holds.  A kernel uses some of the arrays (forward some, backward others); the carving marks
each pointer as possibly unused.
"""
from __future__ import annotations

from dataclasses import dataclass

from .ir import CellIR
from .program import describe


@dataclass(frozen=True)
class Buffer:
    name: str
    count: str
    doc: str


def _products(g) -> str:
    if g.mean:
        return f"the mean of {g.operand.label}"
    return " | ".join(mm.attr for mm in g.matmuls)


def _history(ir: CellIR) -> list:
    out = []
    for s in ir.states:
        for k in range(1, ir.lags[s] + 1):
            out += [Buffer(f"L_{s}_{k}", "BH", f"[B,H] {s}, {k} real step(s) back"),
                    Buffer(f"dL_{s}_{k}", "BH", "[B,H] its adjoint")]
    out += [Buffer(f"d_{n.label}", "BH", f"[B,H] adjoint of {describe(n)}")
            for n in ir.buffered]
    return out


def c_work(ir: CellIR) -> tuple:
    """The C backend's scratch (templates/cell.c.j2)."""
    out = []
    if ir.xprods:
        out += [Buffer("Wcat", "(size_t)D * LDXW", "[D, NW*H] the W of x @ W side by side"),
                Buffer("Pw", "(size_t)D * (LDXW + RNNGEN_PANEL_MAX * RNNGEN_MAX_THREADS)",
                       "Wcat packed, thread by thread"),
                Buffer("dWcat", "(size_t)D * LDXW", "[D, NW*H]")]
    for g in ir.groups:
        lds = f"LDS_{g.name}"
        out += [
            Buffer(f"Pf_{g.name}", f"(size_t)H * ({lds} + RNNGEN_PANEL_MAX * RNNGEN_MAX_THREADS)",
                   f"packed [{_products(g)}], thread by thread"),
            Buffer(f"Pb_{g.name}", f"{lds} * ((size_t)H + RNNGEN_PANEL_MAX * RNNGEN_MAX_THREADS)",
                   "packed transpose, for backward"),
            Buffer(f"dUcat_{g.name}", f"(size_t)H * {lds}", f"[H, {g.width}*H]"),
            Buffer(f"S_{g.name}", f"(size_t)B * {lds}",
                   f"[B, {g.width}*H] {g.operand.label} @ [U...], this step"),
            Buffer(f"dS_{g.name}", f"(size_t)2 * B * {lds}",
                   "rows (t & 1) * B + b: the gradient w.r.t. the mean, two steps") if g.mean
            else Buffer(f"dS_{g.name}", f"(size_t)T * B * {lds}",
                        f"rows b * DSB + t * DST of {g.width}*H")]
    out += _history(ir)
    out += [Buffer("nreal_all", "(size_t)RNNGEN_MAX_THREADS * B",
                   "[threads][B] real steps seen so far"),
            Buffer("iXW", "(size_t)B * LDXW", "inference: one step of XW"),
            Buffer("iSL", "(size_t)NSLOT * 2 * BH",
                   "two steps of slots: double-buffered between threads"),
            Buffer("dXW", "(size_t)B * T * LDXW", "[B*T, NW*H]"),
            Buffer("dXE", "(size_t)X_ELEMENTWISE * B * T * H",
                   "[B*T, H] gradient of x read elementwise"),
            Buffer("dXP", "(size_t)NR * BH", "[NR, B, H] adjoints of the roots, this step"),
            Buffer("dVec", "(size_t)RNNGEN_MAX_THREADS * NVEC * H",
                   "[threads][NVEC][H] bias gradients, batch split")]
    return tuple(out)


def cuda_work(ir: CellIR) -> tuple:
    """The CUDA backend's scratch (templates/cell.cu.j2)."""
    out = [Buffer("Wcat", "(size_t)D * LDXW", "[D, NW*H] the W of x @ W side by side"),
           Buffer("dWcat", "(size_t)D * LDXW", "[D, NW*H]")]
    for g in ir.groups:
        lds = f"LDS_{g.name}"
        out += [Buffer(f"Ucat_{g.name}", f"(size_t)H * {lds}", f"[H, {g.width}*H] [{_products(g)}]"),
                Buffer(f"dUcat_{g.name}", f"(size_t)H * {lds}", f"[H, {g.width}*H]"),
                Buffer(f"S_{g.name}", f"(size_t)B * {lds}",
                       f"[B, {g.width}*H] {g.operand.label} @ [U...], this step"),
                Buffer(f"dS_{g.name}", f"(size_t)T * B * {lds}",
                       f"rows b * DSB + t * DST of {g.width}*H")]
    out += _history(ir)
    out += [Buffer("NREAL", "(size_t)T * B", "[T,B] real steps before each step (inference; "
                   "training keeps it in save)"),
            Buffer("iSL", "(size_t)NSLOT * 2 * BH", "inference: two steps of slots"),
            Buffer("XWw", "(size_t)B * T * LDXW", "[B*T, NW*H] x @ Wcat when save does not keep it"),
            Buffer("dXW", "(size_t)B * T * LDXW", "[B*T, NW*H]"),
            Buffer("dXP", "(size_t)NR * BH", "[NR, B, H] adjoints of the roots, this step"),
            Buffer("dVec", "(size_t)NVEC * BH", "[NVEC, B, H] bias gradients per sample"),
            Buffer("dXE", "(size_t)X_ELEMENTWISE * B * T * H",
                   "[B*T, H] gradient of x read elementwise")]
    return tuple(out)


def strides(ir: CellIR) -> str:
    """The locals the counts read (sizes defines them as the kernels do)."""
    lines = ["    const size_t BH = (size_t)B * H, LDXW = (size_t)NW * H;"]
    lines += [f"    const size_t LDS_{g.name} = {g.width} * (size_t)H;" for g in ir.groups]
    return "\n".join(lines)


def work_size(buffers) -> str:
    """The statements of <cell>_sizes that add up the table into ``n``."""
    lines = ["    size_t n = 0;"]
    lines += [f"    n += {b.count};   /* {b.name} */" for b in buffers]
    return "\n".join(lines)


def carve(buffers, ct: str, unused: str) -> str:
    """One pointer per array, in the table's order, from ``work`` (``unused``: the
    dialect's mark of a local that a kernel may not read)."""
    lines = [f"    {unused} {ct} *p = work;   /* the next free element */"]
    for b in buffers:
        decl = f"    {unused} {ct} *{b.name} = p; p += {b.count};"
        lines.append(f"{decl.ljust(59)} /* {b.doc} */")
    return "\n".join(lines)
