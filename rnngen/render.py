"""Stage 3: render a cell's step program into sources: C (``<cell>.c`` and ``.h``)
or CUDA (``<cell>.cu`` and ``<cell>_cuda.h``).

The per-element math comes from one :class:`~rnngen.program.StepProgram`; a
:class:`Renderer` turns its statements into text in one :class:`Dialect` (type
names, literals, math function names).  Both backends render the same
statements; their templates (``templates/cell.c.j2``, ``cell.cu.j2``) hold the
frames: signatures, buffer layout, threads or kernels, and GEMM calls.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import jinja2

from . import abi, frame
from .functions import FUNCTIONS
from . import program as P
from .ir import GENERATOR_VERSION, CellIR
from .layout import Layout, Schedule, compute_layout
from .program import describe, lower_program

# The templates: inside the package where a wheel or `pip install .` put them
# (rnngen/_data/templates), else the checkout's top-level templates/ (the source of truth).
TEMPLATES = next((d for d in (Path(__file__).resolve().parent / "_data" / "templates",
                              Path(__file__).resolve().parent.parent / "templates")
                  if d.is_dir()), Path(__file__).resolve().parent.parent / "templates")


@dataclass(frozen=True)
class Dialect:
    """How a C-like language spells types, literals and math functions."""
    name: str
    ctype: str
    suffix: str            # function-name suffix, e.g. "_f32"
    lit_suffix: str        # "f" for float literals
    math_suffix: str       # "f" for expf, tanhf, ...
    gemm: str              # GEMM macro name in the runtime header
    fast_math: tuple = ()  # (name, replacement) pairs, e.g. vectorisable exp for float
    lit_cast: str = ""     # a type-generic dialect: literals as R(0.5)

    def lit(self, v: float) -> str:
        s = repr(float(v))
        if "inf" in s or "nan" in s:
            raise ValueError(f"constant {v} is not finite")
        return f"{self.lit_cast}({s})" if self.lit_cast else s + self.lit_suffix

    def math(self, fname: str) -> str:
        return dict(self.fast_math).get(fname, fname + self.math_suffix)

    def fmt(self, template: str, **kw) -> str:
        names = {k: self.math(k) for k in ("exp", "tanh", "log1p", "expm1", "fabs", "sqrt",
                                           "log", "pow")}
        names["fmax"] = "rnngen_max" + self.math_suffix
        names["fmin"] = "rnngen_min" + self.math_suffix
        consts = {"one": self.lit(1), "zero": self.lit(0), "c0_2": self.lit(0.2),
                  "c0_5": self.lit(0.5)}
        return template.format(**names, **consts, **kw)

C_F32 = Dialect("c", "float", "_f32", "f", "f", "RNNGEN_GEMM_F32",
                (("exp", "rnngen_expf"), ("tanh", "rnngen_tanhf"), ("log", "rnngen_logf")))
C_F64 = Dialect("c", "double", "_f64", "", "", "RNNGEN_GEMM_F64")
C_DIALECTS = (C_F32, C_F64)
# The CUDA source is C++: its kernels are written once, for `template <typename R>`, and
# instantiated for float and double.  The runtime header overloads rnngen_exp, rnngen_tanh,
# ... and the NaN-propagating rnngen_max/rnngen_min for both; literals are R(0.5).
CUDA_F32 = Dialect("cuda", "float", "_f32", "f", "f", "")
CUDA_F64 = Dialect("cuda", "double", "_f64", "", "", "")
CUDA_DIALECTS = (CUDA_F32, CUDA_F64)
CUDA_R = Dialect("cuda", "R", "", "", "", "", tuple(
    (f, "rnngen_" + f) for f in ("exp", "tanh", "log1p", "expm1", "fabs", "sqrt", "log", "pow")),
    lit_cast="R")


class Renderer:
    """Text of a step program's statements in one dialect.  Accesses render to the names
    both frames define for element (b, j) of a step (``bj`` = b*H + j, ``bs`` = b*LDSL + j
    in a saved value's step, ``r`` = b*T + t, ``rx`` the row of XW, ``nU`` units per
    slice and ``OFF_g``/``OFFW`` the slice's first column: the C frame splits the units
    between threads, the CUDA frame has one slice)."""

    WHEN = {"save": "save", "last_step": "t == T - 1", "not_lags_shared": "!lags_shared"}

    def __init__(self, d: Dialect):
        self.d = d

    def access(self, a: P.Access) -> str:
        k = a.kind
        if k == "state":
            return f"L_{a.name}_{a.index}[bj]"
        if k == "dstate":
            return f"dL_{a.name}_{a.index}[bj]"
        if k == "slot":
            return f"s_{a.name}[bs]"
        if k == "adj":
            return f"d_{a.name}[bj]"
        if k == "mean" and self.d.name == "c":   # one copy per sample and thread (unit j0)
            return f"S_{a.name}[(size_t)b * LDS_{a.name} + j0]"
        if k in ("product", "mean"):
            return f"S_{a.name}[(size_t)b * LDS_{a.name} + OFF_{a.name} + {a.index} * nU + j]"
        if k == "dmean" and self.d.name == "c":   # a mean's dS kept two steps (t & 1)
            return (f"dS_{a.name}[(((size_t)t & 1) * B + b) * LDS_{a.name} + "
                    f"OFF_{a.name} + {a.index} * nU + j]")
        if k in ("dproduct", "dmean"):
            return (f"dS_{a.name}[((size_t)b * DSB + (size_t)t * DST) * LDS_{a.name} + "
                    f"OFF_{a.name} + {a.index} * nU + j]")
        if k == "xw":
            return f"XW[rx * LDXW + OFFW + {a.index} * nU + j]"
        if k == "dxw":
            return f"dXW[(size_t)r * LDXW + OFFW + {a.index} * nU + j]"
        if k == "vector":
            return f"w_{a.name}[j]"
        if k == "dvector":
            return f"db_{a.name}[j]"
        if k == "droot":
            return f"dXP[(size_t){a.index} * BH + bj]"
        if k == "y":
            return "y[(size_t)r * H + j]"
        if k == "dy":
            return "dy[r * H + j]"
        if k == "x":      # x elementwise: D == H (the frames check)
            return "x[(size_t)r * D + j]"
        if k == "dxe":
            return "dXE[(size_t)r * H + j]"
        raise ValueError(k)  # pragma: no cover

    @staticmethod
    def buffer(a: P.Access) -> str:
        """The [B, H] buffer of a per-element access (a GEMM's output)."""
        return {"dstate": f"dL_{a.name}_{a.index}", "adj": f"d_{a.name}"}[a.kind]

    def expr(self, e) -> str:
        d = self.d
        if isinstance(e, P.Lit):
            return d.lit(e.value)
        if isinstance(e, P.Local):
            return e.name
        if isinstance(e, P.Load):
            return self.access(e.access)
        if isinstance(e, P.Started):
            return f"(nreal[b] >= {e.lag} ? {d.lit(1)} : {d.lit(0)})"
        if isinstance(e, P.Neg):
            return f"-({self.expr(e.arg)})" if e.parens else f"-{self.expr(e.arg)}"
        if isinstance(e, P.Bin):
            text = f"{self.expr(e.left)} {e.op} {self.expr(e.right)}"
            return f"({text})" if e.parens else text
        if isinstance(e, P.Call):
            f = FUNCTIONS[e.func]
            x = self.expr(e.x) if e.x is not None else None
            if e.deriv:
                return d.fmt(f.deriv, x=x, y=self.expr(e.y) if e.y is not None else None)
            return d.fmt(f.value, x=x)
        if isinstance(e, P.Pow):
            return f"{d.math('pow')}({self.expr(e.x)}, {d.lit(e.c)})"
        if isinstance(e, P.MaxMin):
            return f"rnngen_{e.op}{d.math_suffix}({self.expr(e.a)}, {self.expr(e.b)})"
        if isinstance(e, P.Select):
            return (f"({self.expr(e.a)} {e.op} {self.expr(e.b)} ? {self.expr(e.then)} : "
                    f"{self.expr(e.other)})")
        if isinstance(e, P.Scaled):
            g = self.expr(e.g)
            if e.factor is None:
                return f"-{g}" if e.negate else g
            return f"{g} * ({self.expr(e.factor)})"
        raise TypeError(e)  # pragma: no cover

    def target(self, t) -> str:
        return t.name if isinstance(t, P.Local) else self.access(t)

    def stmt(self, s) -> list:
        ct = self.d.ctype
        if isinstance(s, P.Let):
            note = [f"/* {s.note} */"] if s.note else []
            return note + [f"{'const ' if s.const else ''}{ct} {s.name} = {self.expr(s.value)};"]
        if isinstance(s, P.Set):
            text = f"{self.target(s.target)} = {self.expr(s.value)};"
            if s.when:
                text = f"if ({' && '.join(self.WHEN[c] for c in s.when)}) {text}"
            return [text]
        if isinstance(s, (P.Add, P.ReduceAdd)):
            return [f"{self.target(s.target)} += {self.expr(s.value)};"]
        if isinstance(s, P.IfReal):
            return ["if (m) {", *("    " + line for b in s.body for line in self.stmt(b)), "}"]
        if isinstance(s, P.Unused):
            return [" ".join(f"(void){n};" for n in s.names)]
        raise TypeError(s)  # pragma: no cover

    def stmts(self, body) -> list:
        return [line for s in body for line in self.stmt(s)]


_DECLARATION = re.compile(r"\s*(?:\[\[maybe_unused\]\]\s+)?(?:const\s+)?[A-Za-z_][\w ]*?"
                          r"[\s*]([A-Za-z_]\w*)\s*=(.*)$")
_WORD = re.compile(r"[A-Za-z_]\w*")


def _uncommented(text: str) -> str:
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.S)


def _code_words(text: str) -> set:
    """The identifiers a piece of C reads, comments and member names apart."""
    return set(_WORD.findall(re.sub(r"(\.|->)\s*[A-Za-z_]\w*", " ", _uncommented(text))))


def used_only(decls: str, body: str, defines: str = "") -> str:
    """The lines of ``decls`` that ``body`` needs: a declaration of one name (``const R *x =
    F.x;``) is kept where the body, or a line kept after it, reads the name (through the
    ``#define`` lines of ``defines`` too), without [[maybe_unused]]; any other non-blank
    line is kept as it is (each kept line ends with a newline).  So a kernel's prologue
    declares only what its statements use, and nothing needs marking as possibly unused."""
    macros = {}
    for line in defines.split("\n"):
        m = re.match(r"\s*#define\s+([A-Za-z_]\w*)(.*)$", line)
        if m:
            macros[m.group(1)] = _code_words(m.group(2))
    words: set = set()

    def read(text):
        todo = list(_code_words(text))
        while todo:
            w = todo.pop()
            if w not in words:
                words.add(w)
                todo.extend(macros.get(w, ()))

    lines = [line for line in decls.split("\n") if line.strip()]
    found = [_DECLARATION.match(line) for line in lines]
    read(body)
    for line, m in zip(lines, found):
        if not m:          # kept as it is: what it reads is needed
            read(line)
            continue
        code = _uncommented(m.group(2)).strip()   # the filter judges a line by one name
        while re.search(r"\([^()]*\)", code):
            code = re.sub(r"\([^()]*\)", "", code)
        if "," in code or not code.endswith(";"):
            raise ValueError(f"used_only takes one whole declaration per line, got {line!r}")
    keep = [m is None for m in found]
    for i in reversed(range(len(lines))):   # a declaration reads only the lines above it
        m = found[i]
        if m and m.group(1) in words:
            keep[i] = True
            read(m.group(2))
    kept = [line.replace("[[maybe_unused]] ", "") for line, k in zip(lines, keep) if k]
    return "".join(line + "\n" for line in kept)


@lru_cache(maxsize=None)
def _env():
    """One environment per process: it keeps the compiled templates (compiling them took
    0.1 s of every render; a template changed on disk is compiled again, auto_reload)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["used_only"] = used_only
    return env


def template_files():
    return sorted(p for p in TEMPLATES.iterdir() if p.is_file())


GENERATOR_MODULES = ("abi.py", "expr.py", "frame.py", "functions.py", "spec.py", "ir/__init__.py", "ir/nodes.py", "ir/lowering.py", "ir/analysis.py", "layout.py", "program.py",
                     "render.py")


@lru_cache(maxsize=None)
def generator_digest() -> str:
    """A hash of everything that turns a spec into sources: the templates and the code
    of the generating stages (so a library found by its inputs is what they render to)."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    # (the bridges' templates, jax_*, render no kernel: rnngen.jax keys its own builds)
    kernels = [p for p in template_files() if not p.name.startswith("jax_")]
    for p in [*kernels, *(here / m for m in GENERATOR_MODULES)]:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _context(ir: CellIR, layout: Layout, source_name: str, dialects, header: str,
             schedule: Schedule) -> dict:
    return dict(ir=ir, layout=layout, prog=lower_program(ir, layout), abi=abi, workbuf=frame, version=GENERATOR_VERSION,
                source=source_name, spec_digest=ir.spec.digest[:16], describe=describe,
                dialects=[(d, Renderer(d)) for d in dialects], defines=schedule.defines(),
                prefix=f"rnngen_{ir.name}", header=header,
                code_params=", ".join(f"{p.name}={ir.params[p.name]}" for p in ir.spec.params
                                      if p.kind != "init") or "none")


def render_c(ir: CellIR, source_name: str, layout: Layout = None,
             schedule: Schedule = Schedule()) -> tuple[str, str]:
    """Return (header text, C source text) for the cell: <name>.h and <name>.c.
    ``layout`` (default: every optimisation of compute_layout) and ``schedule`` force
    the choices the tests exercise."""
    env = _env()
    ctx = _context(ir, layout or compute_layout(ir), source_name, C_DIALECTS, f"{ir.name}.h",
                   schedule)
    return env.get_template("cell.h.j2").render(**ctx), env.get_template("cell.c.j2").render(**ctx)


def cuda_layout(ir: CellIR, **choices) -> Layout:
    """The CUDA backend saves every lag slot (no run-time lags_shared), so the layout of
    the saved values does not depend on the mask; the other choices as compute_layout."""
    if choices.pop("share_lags", False):
        raise ValueError("the CUDA backend saves every lag slot: share_lags must be False")
    return compute_layout(ir, share_lags=False, **choices)


def cuda_phase0_fold(prog) -> tuple:
    """Forward's phase 0 as the CUDA frame runs it at the top of phase 1's kernel, where it
    only copies states into their slots (``s_h_prev[bs] = L_h_1[bj]``); else ().  Phase
    1's GEMMs then read the state registers themselves (the same values), one launch per
    step fewer, and the copies are read by backward alone: they run only when training."""
    fwd = prog.forward
    if not (len(fwd) > 1 and fwd[0].body and fwd[1].body and not fwd[0].gemms
            and all(isinstance(st, P.Set) and isinstance(st.target, P.Access)
                    and st.target.kind == "slot" and isinstance(st.value, P.Load)
                    and st.value.access.kind == "state" for st in fwd[0].body)):
        return ()
    return tuple(replace(st, when=st.when if "save" in st.when else st.when + ("save",))
                 for st in fwd[0].body)


def render_cuda(ir: CellIR, source_name: str, layout: Layout = None,
                schedule: Schedule = Schedule()) -> tuple[str, str]:
    """Return (header text, CUDA source text) for the cell: <name>_cuda.h and <name>.cu.
    The same source compiles with nvcc for a GPU and, as C++ with -DRNNGEN_CUDA_EMULATION,
    on the CPU (templates/rnngen_cuda_emu.h)."""
    layout = layout or cuda_layout(ir)
    if schedule != Schedule():
        raise ValueError("the CUDA backend has no schedule choices yet")
    if layout.lag_alias:
        raise ValueError("the CUDA frame saves every lag slot: use a layout with share_lags=False")
    env = _env()
    ctx = _context(ir, layout, source_name, CUDA_DIALECTS,
                   f"{ir.name}_cuda.h", Schedule())
    ctx["generic"] = Renderer(CUDA_R)
    ctx["fold0"] = cuda_phase0_fold(ctx["prog"])
    return (env.get_template("cell.cuh.j2").render(**ctx),
            env.get_template("cell.cu.j2").render(**ctx))
