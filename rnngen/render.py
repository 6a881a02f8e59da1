"""Stage 3: render a CellIR into C sources (one .c and one .h per cell).

The per-element math (forward values, reverse-mode partials, adjoint routing)
is produced here once, as C statements that index buffers with ``b``, ``j``,
``bj`` (= b*H + j), ``bs`` (= b*LDSL + j, in a saved value's step; the template
has the layouts), ``r`` (= b*T + t, a row of x and y), ``rx`` (the row of XW: r,
or b where inference keeps one step of XW) and ``t``.
A dialect supplies only type names, literals and math function names, so a
CUDA dialect reuses the same statements inside its own kernel frame and
launch code.  Templates (``templates/*.j2``) hold the frame: signatures,
buffer layout, loops and GEMM calls.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2

from .functions import FUNCTIONS
from .ir import GENERATOR_VERSION, CellIR, Node, c_name

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


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

    def lit(self, v: float) -> str:
        s = repr(float(v))
        if "inf" in s or "nan" in s:
            raise ValueError(f"constant {v} is not finite")
        return s + self.lit_suffix

    def math(self, fname: str) -> str:
        return dict(self.fast_math).get(fname, fname + self.math_suffix)

    def fmt(self, template: str, **kw) -> str:
        names = {k: self.math(k) for k in ("exp", "tanh", "log1p", "expm1", "fabs")}
        names["fmax"] = "rnngen_max" + self.math_suffix
        names["fmin"] = "rnngen_min" + self.math_suffix
        consts = {"one": self.lit(1), "zero": self.lit(0), "c0_2": self.lit(0.2),
                  "c0_5": self.lit(0.5)}
        return template.format(**names, **consts, **kw)

C_F32 = Dialect("c", "float", "_f32", "f", "f", "RNNGEN_GEMM_F32",
                (("exp", "rnngen_expf"), ("tanh", "rnngen_tanhf")))
C_F64 = Dialect("c", "double", "_f64", "", "", "RNNGEN_GEMM_F64")
C_DIALECTS = (C_F32, C_F64)
# CUDA's device math library has expf, tanhf, log1pf, ... and the runtime header the
# NaN-propagating rnngen_max/rnngen_min: the statements are the C backend's
CUDA_F32 = Dialect("cuda", "float", "_f32", "f", "f", "")
CUDA_F64 = Dialect("cuda", "double", "_f64", "", "", "")
CUDA_DIALECTS = (CUDA_F32, CUDA_F64)


class CellMath:
    """Per-element statements for one cell, in one dialect."""

    def __init__(self, ir: CellIR, d: Dialect):
        self.ir = ir
        self.d = d
        self.root_index = {n: i for i, n in enumerate(ir.roots)}
        self.xprod_index = {n: i for i, n in enumerate(ir.xprods)}
        self.slot_set = set(ir.slots)
        # slots that inference needs too: GEMM operands and values read by a later loop;
        # the rest are kept for backward only, and inference skips their stores
        operands = {g.operand for g in ir.groups}
        self.inference_slots = {
            n for n in ir.slots
            if n in operands or (n.op not in ("state", "started", "matmul") and not n.hoisted
                                 and any(ir.phases[u] != ir.phases[n] for u in ir.users[n]))}
        # a slot that is a state's new value (`h = sigmoid(...)`) holds, at step t < T-1,
        # what the slot of that state's previous value holds at step t + 1 (phase 0 copies
        # the carried state there; backward reads slots of real rows only): forward saves
        # it at the last step only and backward reads the other slot.  Slot -> that slot.
        prev = {n.attr[0]: n for n in ir.slots if n.op == "state" and n.attr[1] == 1}
        self.slot_alias = {
            ir.assigns[st].args[0]: prev[st] for st in ir.states
            if ir.assigns[st].args[0] in self.slot_set and st in prev
            and ir.assigns[st].args[0] not in self.inference_slots}
        self.xw_group = self._xw_alias_group()
        # Without a mask every step is real, so a lag slot (h[-k], k >= 2) at step t holds
        # what the slot of h[-1] holds at step t - k + 1 (zero, as at step 0, before
        # that): training without a mask saves it once ("lags_shared" in the template).
        # Slots laid out step by step only (one GEMM then covers the shifted rows).
        self.lag_alias = {} if self.xw_group is not None else {
            n: (prev[n.attr[0]], n.attr[1]) for n in ir.slots
            if n.op == "state" and n.attr[1] >= 2 and n.attr[0] in prev}
        self.buf_set = set(ir.buffered)
        self._locals: dict = {}    # backward loop being built: adjoint in memory -> its local
        self._entry_inits: dict = {}   # assign node -> local holding its adjoint from the entry

    def _xw_alias_group(self):
        """The group whose dS equals dXW, column for column, or None.  That is so when
        block k of x @ W and block k of the group's product are added into the same
        pre-activation through nothing but sums (`sigmoid(x @ W + b + h @ U)`): the
        adjoint of each is the adjoint of that sum.  Backward then writes dS only and
        reads it as dXW (x @ W's gradient products take dS's rows, which are laid out
        like x's, b*T + t)."""
        ir = self.ir

        def top(n):   # the sum that n reaches through sums it is added into once
            while len(ir.users[n]) == 1:
                u = ir.users[n][0]
                if u.op != "add" or sum(a is n for a in u.args) != 1:
                    break
                n = u
            return n

        for g in ir.groups:
            if len(g.matmuls) == len(ir.xprods) > 0 and all(
                    top(mm) is top(xp) for mm, xp in zip(g.matmuls, ir.xprods)):
                return g
        return None

    # -- value access --------------------------------------------------------
    def root_adjoint(self, n):
        """The adjoint of hoisted root n at this step: dXP is [NR, B, H], one step's worth
        (roots of row (b, t) are only read at step t, so backward finishes them there)."""
        return self._mem(f"dXP[(size_t){self.root_index[n]} * BH + bj]")

    def _mem(self, expr: str) -> str:
        """An adjoint held in memory between loops, as the backward loop being built sees
        it: a local, loaded before the loop body and stored after it.  Each location is
        then read once and written once per row, and the body works in registers.
        (A body that zeroed a location and then added to it in the same row computed
        a wrong gradient with GCC 12 at -O2, right at -O1; the cause was not pinned
        down, and this form has no such sequence.)"""
        name = self._locals.get(expr)
        if name is None:
            name = self._locals[expr] = f"a{len(self._locals)}"
        return name

    def fwd_val(self, n: Node, loop: int) -> str:
        ir = self.ir
        if n.is_const:
            return self.d.lit(n.attr)
        if n.hoisted:   # computed from XW at the top of the loop (see forward_loop)
            self._reads_hoisted = True
            return f"v_{n.label}"
        if n.op == "state":
            s, k = n.attr
            return f"L_{s}_{k}[bj]"
        if n.op == "started":
            return f"(nreal[b] >= {n.attr} ? {self.d.lit(1)} : {self.d.lit(0)})"
        if n.op == "matmul":
            g, k = ir.group_of(n)
            return f"S_{g.name}[(size_t)b * LDS_{g.name} + OFF_{g.name} + {k} * nU + j]"
        if ir.phases[n] == loop:
            return f"v_{n.label}"
        return f"s_{n.label}[bs]"

    def bwd_val(self, n: Node) -> str:
        if n.is_const:
            return self.d.lit(n.attr)
        if n.hoisted:   # recomputed from XW at the top of the loop, as in forward
            self._reads_hoisted = True
            return f"v_{n.label}"
        if n.op == "started":   # backward keeps nreal as forward had it at this step
            return f"(nreal[b] >= {n.attr} ? {self.d.lit(1)} : {self.d.lit(0)})"
        assert n in self.slot_set, n
        return f"s_{n.label}[bs]"

    def value_expr(self, n: Node, val) -> str:
        a = [val(x) for x in n.args]
        if n.op == "neg":
            return f"-({a[0]})"
        if n.op in ("add", "sub", "mul", "div"):
            op = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[n.op]
            return f"{a[0]} {op} {a[1]}"
        if n.op == "call":
            return self.d.fmt(FUNCTIONS[n.attr].value, x=a[0])
        if n.op == "assign":
            return a[0]
        raise ValueError(n.op)  # pragma: no cover

    def partials(self, n: Node, val) -> list:
        """[(arg, factor or None for 1, negate)] for the reverse pass."""
        if n.op in ("add", "assign"):
            return [(a, None) for a in n.args]
        if n.op == "sub":
            return [(n.args[0], None), (n.args[1], "-1")]
        if n.op == "neg":
            return [(n.args[0], "-1")]
        if n.op == "mul":
            a, b = n.args
            return [(a, val(b)), (b, val(a))]
        if n.op == "div":
            a, b = n.args
            return [(a, f"{self.d.lit(1)} / {val(b)}"), (b, f"-{val(n)} / {val(b)}")]
        if n.op == "call":
            f = FUNCTIONS[n.attr]
            x = val(n.args[0]) if f.uses_x else None
            y = val(n) if f.uses_y else None
            return [(n.args[0], self.d.fmt(f.deriv, x=x, y=y))]
        raise ValueError(n.op)  # pragma: no cover

    @staticmethod
    def times(g, factor):
        if factor is None:
            return g
        if factor == "-1":
            return f"-{g}"
        return f"{g} * ({factor})"

    # -- input-only ("hoisted") values, from XW ------------------------------
    def hoisted_values(self):
        """Statements computing every hoisted node from XW and the biases."""
        out = []
        for n in self.ir.hoisted:
            if n.op == "xprod":
                e = f"XW[rx * LDXW + OFFW + {self.xprod_index[n]} * nU + j]"
            elif n.op == "bias":
                e = f"w_{n.attr}[j]"
            else:
                e = self.value_expr(n, self.hoisted_local)
            out.append(f"const {self.d.ctype} v_{n.label} = {e};")
        return out

    def hoisted_local(self, n):
        self._reads_hoisted = True
        return self.d.lit(n.attr) if n.is_const else f"v_{n.label}"

    def _tracked(self, build, *args):
        """(statements, whether they read a hoisted value) of build(*args)."""
        self._reads_hoisted = False
        out = build(*args)
        reads, self._reads_hoisted = self._reads_hoisted, False
        return out, reads

    @property
    def backward_reads_xw(self) -> bool:
        """Whether backward reads any hoisted value (so forward must save XW).  Sums of
        x @ W and biases have constant partials: the LSTM's, GRU's and SimpleRNN's
        backward never reads them, and their forward keeps no XW."""
        return any(loop["reads_hoisted"] for loop in self.backward_loops())

    def _hoisted_partials(self):
        ir, d = self.ir, self.d
        out = []
        # x @ W's adjoints are not needed where dS holds them (see _xw_alias_group)
        in_ds = self.xw_group is not None
        skip = lambda n: in_ds and n.op == "xprod"  # noqa: E731
        for n in ir.hoisted:
            init = self.root_adjoint(n) if n in self.root_index else d.lit(0)
            if not skip(n):
                out.append(f"{d.ctype} g_{n.label} = {init};")
        for n in reversed(ir.hoisted):
            g = f"g_{n.label}"
            if n.op == "xprod":
                if not skip(n):
                    out.append(f"dXW[(size_t)r * LDXW + OFFW + {self.xprod_index[n]} * nU + j] = {g};")
            elif n.op == "bias":
                out.append(f"db_{n.attr}[j] += {g};")   # this thread's sum (see the template)
            else:
                for a, f in self.partials(n, self.hoisted_local):
                    if not a.is_const and not skip(a):
                        out.append(f"g_{a.label} += {self.times(g, f)};")
        return out

    # -- step loops ----------------------------------------------------------
    def forward_loop(self, p: int):
        """Statements of forward loop p.  The hoisted values it reads (x @ W plus biases
        and whatever else depends on the input only) are computed in the loop from XW:
        no pass over all rows, and nothing but XW kept for them."""
        return self._with_hoisted(*self._tracked(self._forward_body, p))

    def _with_hoisted(self, body, reads):
        if not reads:
            return body
        pre = self.hoisted_values()
        pre.append(" ".join(f"(void)v_{n.label};" for n in self.ir.hoisted))
        return pre + body

    def _forward_body(self, p: int):
        ir, d = self.ir, self.d
        out = []
        val = lambda n: self.fwd_val(n, p)  # noqa: E731
        if p == 0:   # leaves whose per-step value must be kept
            for n in ir.slots:
                if n.op in ("state", "started") or n.hoisted:
                    out.append(self._store(n, val(n)))
        for n in ir.loops[p]:
            out.append(f"const {d.ctype} v_{n.label} = {self.value_expr(n, val)};")
            if n in self.slot_set:
                out.append(self._store(n, f"v_{n.label}"))
        for n in ir.slots:   # products whose values the backward pass reads
            if n.op == "matmul" and ir.phases[n] == p:
                out.append(self._store(n, val(n)))
        return out

    def _store(self, n: Node, value: str) -> str:
        store = f"s_{n.label}[bs] = {value};"
        if n in self.slot_alias:   # the other slot holds it at every step but the last
            return f"if (save && t == T - 1) {store}"
        cond = ([] if n in self.inference_slots else ["save"]) + (
            ["!lags_shared"] if n in self.lag_alias else [])
        return f"if ({' && '.join(cond)}) {store}" if cond else store

    def update(self):
        """Masked register update, in the last loop: a padded step keeps every state."""
        ir = self.ir
        out = ["if (m) {"]
        for s in ir.states:
            for k in range(ir.lags[s], 1, -1):
                out.append(f"    L_{s}_{k}[bj] = L_{s}_{k - 1}[bj];")
            out.append(f"    L_{s}_1[bj] = v_{ir.assigns[s].label};")
        out.append("}")
        out.append(f"y[(size_t)r * H + j] = L_{ir.output}_1[bj];")
        return out

    def adjoint_target(self, a: Node, p: int):
        """Where a contribution to a's adjoint goes, from backward loop p."""
        ir = self.ir
        if a.is_const or a.op == "started":
            return None
        if a.op == "state":
            s, k = a.attr
            return self._mem(f"dL_{s}_{k}[bj]")
        if a.hoisted:
            if a in self.buf_set:   # a root that is also a GEMM operand
                return self._mem(f"d_{a.label}[bj]")
            return self.root_adjoint(a)
        if ir.owner[a] == p:
            return f"g_{a.label}"
        return self._mem(f"d_{a.label}[bj]")

    def _backward_body(self, p: int):
        ir, d = self.ir, self.d
        owned = [n for n in ir.nodes if ir.owner.get(n) == p]
        out = []
        for n in owned:
            init = self._entry_inits.get(n)
            if init is None:
                init = self._mem(f"d_{n.label}[bj]") if n in self.buf_set else d.lit(0)
            out.append(f"{d.ctype} g_{n.label} = {init};")
        for n in reversed(owned):
            g = f"g_{n.label}"
            if n.op == "matmul":
                grp, k = ir.group_of(n)
                out.append(f"dS_{grp.name}[((size_t)b * DSB + (size_t)t * DST) * LDS_{grp.name} + OFF_{grp.name}"
                           f" + {k} * nU + j] = {g};")
                continue
            for a, f in self.partials(n, self.bwd_val):
                tgt = self.adjoint_target(a, p)
                if tgt is not None:
                    out.append(f"{tgt} += {self.times(g, f)};")
        if p == 0:   # hoisted GEMM operands: their adjoint buffer flows to dXP
            for n in ir.buffered:
                if n.hoisted:
                    out.append(f"{self.root_adjoint(n)} += {self._mem(f'd_{n.label}[bj]')};")
        return out

    def _entry(self, p: int):
        """(statements, {adjoint in memory: its value}, padded-row statements) that open a
        backward step in loop p.  dy reaches the carried output; at a real step the
        registers shift back and each new state takes the adjoint its register held (in
        a local when loop p owns the new state); the step's accumulators start at zero.
        At a padded step the registers stay."""
        ir, d = self.ir, self.d
        dy = "dy[r * H + j]"
        pre, inits = [], {}
        padded = [f"dL_{ir.output}_1[bj] += {dy};"]
        self._entry_inits = {}
        for s in ir.states:
            a = ir.assigns[s]
            held = f"dL_{s}_1[bj]" + (f" + {dy}" if s == ir.output else "")
            pre.append(f"const {d.ctype} a_{c_name(s)} = {held};")
            for k in range(1, ir.lags[s] + 1):
                inits[f"dL_{s}_{k}[bj]"] = (f"dL_{s}_{k + 1}[bj]" if k < ir.lags[s]
                                            else d.lit(0))
            if ir.owner.get(a) == p:
                self._entry_inits[a] = f"a_{c_name(s)}"
            else:
                inits[f"d_{a.label}[bj]"] = f"a_{c_name(s)}"
        for n in ir.buffered:
            if n.op != "assign":
                inits[f"d_{n.label}[bj]"] = d.lit(0)
                padded.append(f"d_{n.label}[bj] = {d.lit(0)};")
        for n in ir.roots:
            inits[f"dXP[(size_t){self.root_index[n]} * BH + bj]"] = d.lit(0)
        return pre, inits, padded

    def _loop(self, p: int, entry: bool, final: bool):
        """(statements on a real row, on a padded row, whether they read a hoisted value)
        of backward loop p: the step's entry first if ``entry``, the hoisted part
        (dXW rows, bias gradients) last if ``final``."""
        ct = self.d.ctype
        self._locals, inits, pre, padded = {}, {}, [], []
        if entry:
            pre, inits, padded = self._entry(p)
            for expr in inits:
                self._mem(expr)
        body, reads = self._tracked(self._backward_body, p)
        if final:
            more, more_reads = self._tracked(self._hoisted_partials)
            body, reads = body + more, reads or more_reads
        self._entry_inits = {}
        if not body and not entry:
            return [], [], False
        load = [f"{ct} {name} = {inits.get(expr, expr)};" for expr, name in self._locals.items()]
        # store what changed (or the entry set); root adjoints are read by no later loop
        # than the final one
        changed = {name for stmt in body for name in [stmt.split(" ", 1)[0]]}
        store = [f"{expr} = {name};" for expr, name in self._locals.items()
                 if (expr in inits or name in changed)
                 and not (final and expr.startswith("dXP["))]
        return self._with_hoisted(pre + load + body + store, reads), padded, reads

    def backward_loops(self):
        """The row loops of one backward step, in order (phases reversed), each followed
        by its phase's GEMMs: [{phase, real_rows, padded_rows, last, reads_hoisted}].
        The step's entry opens the first loop and the hoisted part closes the last: both
        touch only this thread's units, so no barrier separates them, and one pass over
        the rows does all three.  ``last``: padded rows zero their dXW row there."""
        ir = self.ir
        busy = [p for p in range(ir.nphases) if self._tracked(self._backward_body, p)[0]]
        self._locals = {}
        first, final = (max(busy), min(busy)) if busy else (0, 0)
        loops = []
        for p in range(ir.nphases - 1, -1, -1):
            real, padded, reads = self._loop(p, p == first, p == final)
            loops.append(dict(phase=p, real_rows=real, padded_rows=padded, last=p == final,
                              reads_hoisted=reads))
        self._locals = {}
        return loops

    def operand_grad_target(self, g):
        """The buffer receiving dOperand += dS @ [U...]^T."""
        a = g.operand
        if a.op == "state":
            s, k = a.attr
            return f"dL_{s}_{k}"
        return f"d_{a.label}"


def describe(n: Node) -> str:
    """A short readable form of a node, for comments."""
    if n.is_const:
        return repr(n.attr)
    if n.op == "state":
        s, k = n.attr
        return s if k == 1 else f"{s}[-{k}]"
    if n.op == "started":
        return f"started(lag {n.attr})"
    if n.op == "bias":
        return n.attr
    if n.op == "xprod":
        return f"x @ {n.attr}"
    if n.op == "matmul":
        return f"{n.args[0].label} @ {n.attr}"
    if n.op == "call":
        return f"{n.attr}({n.args[0].label})"
    if n.op == "assign":
        return f"new {n.attr}"
    sym = {"neg": "-", "add": "+", "sub": "-", "mul": "*", "div": "/"}[n.op]
    if n.op == "neg":
        return f"-{n.args[0].label}"
    return f"{n.args[0].label if not n.args[0].is_const else n.args[0].attr} {sym} " \
           f"{n.args[1].label if not n.args[1].is_const else n.args[1].attr}"


def _env():
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True)


def template_files():
    return sorted(p for p in TEMPLATES.iterdir() if p.is_file())


def _context(ir: CellIR, source_name: str, dialects, header: str) -> dict:
    return dict(ir=ir, version=GENERATOR_VERSION, source=source_name,
                spec_digest=ir.spec.digest[:16], describe=describe,
                dialects=[(d, CellMath(ir, d)) for d in dialects],
                prefix=f"rnngen_{ir.name}", header=header,
                code_params=", ".join(f"{p.name}={ir.params[p.name]}" for p in ir.spec.params
                                      if p.kind != "init") or "none")


def render_c(ir: CellIR, source_name: str) -> tuple[str, str]:
    """Return (header text, C source text) for the cell: <name>.h and <name>.c."""
    env = _env()
    ctx = _context(ir, source_name, C_DIALECTS, f"{ir.name}.h")
    return env.get_template("cell.h.j2").render(**ctx), env.get_template("cell.c.j2").render(**ctx)


def render_cuda(ir: CellIR, source_name: str) -> tuple[str, str]:
    """Return (header text, CUDA source text) for the cell: <name>_cuda.h and <name>.cu.
    The same source compiles with nvcc for a GPU and, as C++ with -DRNNGEN_CUDA_EMULATION,
    on the CPU (templates/rnngen_cuda_emu.h)."""
    env = _env()
    ctx = _context(ir, source_name, CUDA_DIALECTS, f"{ir.name}_cuda.h")
    return (env.get_template("cell.cuh.j2").render(**ctx),
            env.get_template("cell.cu.j2").render(**ctx))
