"""Stage 2c: lower a CellIR and its Layout into a backend-neutral step program.

The program says what one (sample b, unit j) element of each step loop computes,
as frozen, typed statements over *logical accesses*: a state register, a saved
value (slot) at this step, a column block of a product, a row of x @ W, a vector
weight, a bias gradient (an explicit reduction over samples), ...  It says
nothing about threads, panels or memory order: a backend's frame defines the
names an access renders to (:mod:`rnngen.render`), and runs the loops and GEMMs.

    forward[p]   phase p of a step: after the GEMMs of phase p (``gemms``), one
                 elementwise loop (``body``); the last phase ends with the masked
                 state update and the output.
    backward[i]  the phases in reverse: one loop (``real`` on a real step,
                 ``padded`` on a padded one) followed by ``dOperand += dS @ U^T``
                 for the groups of that phase.

Adjoints that live in memory between loops are held in locals inside a backward
loop: ``loads`` before its body, ``stores`` after it, so that every location is
read once and written once per element.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Union

from .expr import unparse
from .functions import FUNCTIONS
from .ir import CellIR, Group, Node
from .layout import Layout


# -- accesses: one element (b, j) of a buffer the frame defines --------------------------
@dataclass(frozen=True)
class Access:
    """kind: state | dstate (s, lag) | slot (node label) | product | mean | dproduct |
    dmean (group, block: a GEMM's or a mean's result, and its gradient) | xw | dxw (block)
    | vector | dvector (weight) | droot (root index) | adj (node label) | y | dy | x | dxe
    (x read elementwise, and its gradient)."""
    kind: str
    name: str = ""
    index: int = 0


def state(s, k): return Access("state", s, k)            # noqa: E704
def dstate(s, k): return Access("dstate", s, k)          # noqa: E704
def slot(n): return Access("slot", n.label)              # noqa: E704
def adj(n): return Access("adj", n.label)                # noqa: E704


# -- expressions ----------------------------------------------------------------------
@dataclass(frozen=True)
class Lit:
    value: float


@dataclass(frozen=True)
class Local:
    name: str


@dataclass(frozen=True)
class Load:
    access: Access


@dataclass(frozen=True)
class Started:
    """1 where the sample has had at least ``lag`` real steps before this one, else 0."""
    lag: int


@dataclass(frozen=True)
class Neg:
    arg: "Expr"
    parens: bool = True   # -(a), or -a where a is a single name (the same value)


@dataclass(frozen=True)
class Bin:
    op: str           # + - * /
    left: "Expr"
    right: "Expr"
    parens: bool = False   # (a op b): where it is an operand


@dataclass(frozen=True)
class Call:
    """FUNCTIONS[func].value of x, or (deriv=True) its derivative given x and/or y."""
    func: str
    x: Optional["Expr"]
    y: Optional["Expr"] = None
    deriv: bool = False


@dataclass(frozen=True)
class Pow:
    """x ** c for a constant c."""
    x: "Expr"
    c: float


@dataclass(frozen=True)
class MaxMin:
    """max(a, b) or min(a, b) (``op`` "max" or "min")."""
    op: str
    a: "Expr"
    b: "Expr"


@dataclass(frozen=True)
class Select:
    """then where ``a op b`` holds, else ``other`` (a derivative that picks a side)."""
    op: str           # >= or <=
    a: "Expr"
    b: "Expr"
    then: "Expr"
    other: "Expr"


@dataclass(frozen=True)
class Scaled:
    """g * (factor), -g (factor None, negate), or g (factor None)."""
    g: "Expr"
    factor: Optional["Expr"]
    negate: bool = False


Expr = Union[Lit, Local, Load, Started, Neg, Bin, Call, Pow, MaxMin, Select, Scaled]
Target = Union[Local, Access]


# -- statements -----------------------------------------------------------------------
@dataclass(frozen=True)
class Let:
    """A new local: ``const`` unless it is an accumulator; ``note``: the equation it
    computes, printed as a comment above it."""
    name: str
    value: Expr
    const: bool = True
    note: str = ""


@dataclass(frozen=True)
class Set:
    target: Target
    value: Expr
    when: tuple = ()      # conditions on the frame: "save", "last_step", "not_lags_shared"


@dataclass(frozen=True)
class Add:
    target: Target
    value: Expr


@dataclass(frozen=True)
class ReduceAdd:
    """target (a vector weight's gradient, per unit) += value, summed over samples: each
    frame decides how (a thread's own sum, per-sample rows added up in order, ...)."""
    target: Access
    value: Expr


@dataclass(frozen=True)
class IfReal:
    """body on a real step only (the masked state update)."""
    body: tuple


@dataclass(frozen=True)
class Unused:
    """Locals that may be unread (a frame's compilers must not warn)."""
    names: tuple


Stmt = Union[Let, Set, Add, ReduceAdd, IfReal, Unused]


# -- the program ----------------------------------------------------------------------
@dataclass(frozen=True)
class Gemm:
    """S_group = operand @ [U_1 | ... ] (forward), dOperand += dS_group @ [U...]^T
    (backward).  For a mean group (``mean``): S_group = the operand's mean over the
    units of each sample, broadcast; dOperand += the mean of dS_group's row."""
    group: Group
    operand: Node
    weights: tuple        # of weight names, column blocks in order (none for a mean)
    transposed: bool
    target: Optional[Access] = None   # backward: the operand's adjoint buffer
    starts: bool = False  # backward: the first write of target this step (=, not +=)

    @property
    def mean(self) -> bool:
        return self.group.mean


@dataclass(frozen=True)
class ForwardPhase:
    phase: int
    gemms: tuple          # of Gemm, before the loop
    body: tuple           # of Stmt


@dataclass(frozen=True)
class BackwardPhase:
    phase: int
    real: tuple           # of Stmt, on a real step
    padded: tuple         # of Stmt, on a padded step (the step's entry only)
    last: bool            # closes the step: the input-only part (dXW rows, bias sums)
    reads_hoisted: bool
    gemms: tuple          # of Gemm, after the loop


@dataclass(frozen=True)
class StepProgram:
    ir: CellIR
    layout: Layout
    forward: tuple        # of ForwardPhase, phase order
    backward: tuple       # of BackwardPhase, reverse phase order
    keep_xw: bool         # backward reads x @ W values: forward saves XW

    @property
    def xw_group(self):
        return self.layout.xw_group

    @property
    def x_elementwise(self) -> bool:
        return self.ir.x_elementwise


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
    if n.op == "mean":
        return f"mean({n.args[0].label})"
    if n.op == "xval":
        return "x"
    if n.op == "pow":
        return f"{n.args[0].label} ** {n.attr!r}"
    if n.op in ("max", "min"):
        a, b = (x.label if not x.is_const else repr(x.attr) for x in n.args)
        return f"{n.op}({a}, {b})"
    if n.op == "call":
        return f"{n.attr}({n.args[0].label})"
    if n.op == "assign":
        return f"new {n.attr}"
    sym = {"neg": "-", "add": "+", "sub": "-", "mul": "*", "div": "/"}[n.op]
    if n.op == "neg":
        return f"-{n.args[0].label}"
    return f"{n.args[0].label if not n.args[0].is_const else n.args[0].attr} {sym} " \
           f"{n.args[1].label if not n.args[1].is_const else n.args[1].attr}"


class _Lowering:
    def __init__(self, ir: CellIR, layout: Layout):
        self.ir = ir
        self.layout = layout
        self.root_index = {n: i for i, n in enumerate(ir.roots)}
        self.xprod_index = {n: i for i, n in enumerate(ir.xprods)}
        self.slot_set = set(layout.slots)
        self.buf_set = set(ir.buffered)
        self._reads_hoisted = False
        self._locals: dict = {}        # backward loop being built: Access -> its local
        self._entry_inits: dict = {}   # assign node -> local holding its adjoint from the entry
        self._starts: dict = {}        # adjoint buffer -> the loop or product that starts it

    # -- values ----------------------------------------------------------------------
    def _hoisted_value(self, n):
        self._reads_hoisted = True
        return Local(f"v_{n.label}")

    def fwd_val(self, n: Node, loop: int) -> Expr:
        ir = self.ir
        if n.is_const:
            return Lit(n.attr)
        if n.hoisted:   # computed from XW at the top of the loop
            return self._hoisted_value(n)
        if n.op == "state":
            return Load(state(*n.attr))
        if n.op == "started":
            return Started(n.attr)
        if n.op in ("matmul", "mean"):
            g, k = ir.group_of(n)
            return Load(Access("mean" if g.mean else "product", g.name, k))
        if ir.phases[n] == loop:
            return Local(f"v_{n.label}")
        return Load(slot(n))

    def bwd_val(self, n: Node) -> Expr:
        if n.is_const:
            return Lit(n.attr)
        if n.hoisted:   # recomputed from XW at the top of the loop, as in forward
            return self._hoisted_value(n)
        if n.op == "started":   # backward keeps nreal as forward had it at this step
            return Started(n.attr)
        if n in self.layout.recomputed:   # from saved values (the same operation as forward;
            # where forward's compiler fused it into an FMA the two may differ by a rounding)
            e = self.value_expr(n, self.bwd_val)
            return Bin(e.op, e.left, e.right, parens=True) if isinstance(e, Bin) else e
        assert n in self.slot_set and n not in self.layout.transient, n
        return Load(slot(n))

    def hoisted_local(self, n):
        if n.is_const:
            self._reads_hoisted = True
            return Lit(n.attr)
        return self._hoisted_value(n)

    @staticmethod
    def value_expr(n: Node, val) -> Expr:
        a = [val(x) for x in n.args]
        if n.op == "neg":
            return Neg(a[0])
        if n.op in ("add", "sub", "mul", "div"):
            return Bin({"add": "+", "sub": "-", "mul": "*", "div": "/"}[n.op], a[0], a[1])
        if n.op == "call":
            return Call(n.attr, a[0])
        if n.op == "pow":
            return Pow(a[0], n.attr)
        if n.op in ("max", "min"):
            return MaxMin(n.op, a[0], a[1])
        if n.op == "assign":
            return a[0]
        raise ValueError(n.op)  # pragma: no cover

    @staticmethod
    def partials(n: Node, val) -> list:
        """[(arg, factor or None for 1, negate)] for the reverse pass."""
        if n.op in ("add", "assign"):
            return [(a, None, False) for a in n.args]
        if n.op == "sub":
            return [(n.args[0], None, False), (n.args[1], None, True)]
        if n.op == "neg":
            return [(n.args[0], None, True)]
        if n.op == "mul":   # none with respect to a constant (its value may not be saved)
            a, b = n.args
            return [(x, val(other), False) for x, other in ((a, b), (b, a)) if not x.is_const]
        if n.op == "div":
            a, b = n.args
            out = [(a, Bin("/", Lit(1.0), val(b)), False)] if not a.is_const else []
            if not b.is_const:
                out.append((b, Bin("/", Neg(val(n), parens=False), val(b)), False))
            return out
        if n.op == "call":
            f = FUNCTIONS[n.attr]
            x = val(n.args[0]) if f.uses_x else None
            y = val(n) if f.uses_y else None
            return [(n.args[0], Call(n.attr, x, y, deriv=True), False)]
        if n.op == "pow":   # c x^(c-1)
            return [(n.args[0], Bin("*", Lit(n.attr), Pow(val(n.args[0]), n.attr - 1)), False)]
        if n.op in ("max", "min"):   # a tie goes to the first argument
            a, b = (val(x) for x in n.args)
            op = ">=" if n.op == "max" else "<="
            return [(n.args[0], Select(op, a, b, Lit(1.0), Lit(0.0)), False),
                    (n.args[1], Select(op, a, b, Lit(0.0), Lit(1.0)), False)]
        raise ValueError(n.op)  # pragma: no cover

    def _tracked(self, build, *args):
        """(statements, whether they read a hoisted value) of build(*args)."""
        self._reads_hoisted = False
        out = build(*args)
        reads, self._reads_hoisted = self._reads_hoisted, False
        return out, reads

    # -- input-only ("hoisted") values, from XW --------------------------------------
    def hoisted_values(self):
        out = []
        for n in self.ir.hoisted:
            if n.op == "xprod":
                e = Load(Access("xw", "", self.xprod_index[n]))
            elif n.op == "xval":
                e = Load(Access("x"))
            elif n.op == "bias":
                e = Load(Access("vector", n.attr))
            else:
                e = self.value_expr(n, self.hoisted_local)
            out.append(Let(f"v_{n.label}", e))
        return out

    def _with_hoisted(self, body, reads):
        if not reads:
            return body
        return self.hoisted_values() + [Unused(tuple(f"v_{n.label}" for n in self.ir.hoisted))] \
            + body

    def _hoisted_partials(self):
        ir = self.ir
        out = []
        # x @ W's adjoints are not needed where dS holds them (see Layout.xw_group)
        in_ds = self.layout.xw_group is not None
        skip = lambda n: in_ds and n.op == "xprod"  # noqa: E731
        # a value's adjoint is live where it reaches a gradient (x @ W's rows, a vector
        # weight, x read elementwise) through live operands; the others are not emitted
        # (their locals would only be written: a warning, an error with -Werror)
        live = {}
        for n in ir.hoisted:   # operands before their users
            if n.op in ("xprod", "bias", "xval"):
                live[n] = not skip(n)
            else:
                live[n] = any(live.get(a, False) for a, _, _ in self.partials(n, self.hoisted_local)
                              if not a.is_const and not skip(a))
        for n in ir.hoisted:
            if live[n]:   # (root_adjoint loads the root's adjoint: only for live ones)
                init = (self.root_adjoint(n) if n in self.root_index and not self._direct(n)
                        else Lit(0.0))
                out.append(Let(f"g_{n.label}", init, const=False))
        for n in reversed(ir.hoisted):
            g = Local(f"g_{n.label}")
            if not live[n]:
                continue
            if n.op == "xprod":
                if not skip(n):
                    out.append(Set(Access("dxw", "", self.xprod_index[n]), g))
            elif n.op == "bias":
                out.append(ReduceAdd(Access("dvector", n.attr), g))
            elif n.op == "xval":   # the frame adds these rows to dx after its dXW product
                out.append(Set(Access("dxe"), g))
            else:
                for a, f, neg in self.partials(n, self.hoisted_local):
                    if not a.is_const and live.get(a, False):
                        out.append(Add(Local(f"g_{a.label}"), Scaled(g, f, neg)))
        return out

    # -- forward ---------------------------------------------------------------------
    def _store(self, n: Node, value: Expr) -> Set:
        if n in self.layout.new_state_alias:   # the other slot holds it but at the last step
            return Set(slot(n), value, ("save", "last_step"))
        when = (() if n in self.layout.inference_slots else ("save",)) + (
            ("not_lags_shared",) if n in self.layout.lag_alias else ())
        return Set(slot(n), value, when)

    def _forward_body(self, p: int):
        ir = self.ir
        out = []
        val = lambda n: self.fwd_val(n, p)  # noqa: E731
        if p == 0:   # leaves whose per-step value must be kept
            for n in self.layout.slots:
                if n.op in ("state", "started") or n.hoisted:
                    out.append(self._store(n, val(n)))
        for n in ir.loops[p]:
            out.append(Let(f"v_{n.label}", self.value_expr(n, val)))
            if n in self.slot_set:
                out.append(self._store(n, Local(f"v_{n.label}")))
        for n in self.layout.slots:   # products whose values the backward pass reads
            if n.op in ("matmul", "mean") and ir.phases[n] == p:
                out.append(self._store(n, val(n)))
        return out

    def update(self):
        """Masked register update, in the last loop: a padded step keeps every state."""
        ir = self.ir
        body = []
        for s in ir.states:
            for k in range(ir.lags[s], 1, -1):
                body.append(Set(state(s, k), Load(state(s, k - 1))))
            body.append(Set(state(s, 1), self.fwd_val(ir.assigns[s], ir.nphases - 1)))
        return [IfReal(tuple(body)), Set(Access("y"), Load(state(ir.output, 1)))]

    def forward(self):
        out = []
        for p in range(self.ir.nphases):
            body = self._with_hoisted(*self._tracked(self._forward_body, p))
            if p == self.ir.nphases - 1:
                body = body + self.update()
            gemms = tuple(Gemm(g, g.operand, () if g.mean else tuple(mm.attr for mm in g.matmuls),
                               False) for g in self.ir.groups_of_phase(p))
            out.append(ForwardPhase(p, gemms, tuple(body)))
        return tuple(out)

    # -- backward --------------------------------------------------------------------
    def _mem(self, access: Access) -> Local:
        """An adjoint held in memory between loops, as the backward loop being built sees
        it: a local, loaded before the loop body and stored after it.  Each location is
        then read once and written once per element, and the body works in registers.
        (A body that zeroed a location and then added to it in the same row computed a
        wrong gradient with GCC 12 at -O2, right at -O1; the cause was not pinned down,
        and this form has no such sequence.)"""
        name = self._locals.get(access)
        if name is None:   # acc_ and the memory's name: acc_dL_h_1, acc_d_c_new, acc_dXP_t
            what = {"dstate": lambda: f"dL_{access.name}_{access.index}",
                    "adj": lambda: f"d_{access.name}",
                    "droot": lambda: f"dXP_{self.ir.roots[access.index].label}",
                    }.get(access.kind, lambda: f"{access.kind}_{access.name}_{access.index}")()
            name = self._locals[access] = f"acc_{what}"
        return Local(name)

    def root_adjoint(self, n):
        """The adjoint of hoisted root n at this step: dXP is [NR, B, H], one step's worth
        (roots of row (b, t) are only read at step t, so backward finishes them there)."""
        return self._mem(Access("droot", "", self.root_index[n]))

    def _direct(self, n: Node) -> bool:
        """A vector weight read by the step (`a * x + b`): the contributions to its
        adjoint go straight into its gradient (summed over the samples), not through
        the step's root adjoints (dXP) and the input-only part."""
        return n.op == "bias" and n not in self.buf_set

    def adjoint_target(self, a: Node, p: int):
        """Where a contribution to a's adjoint goes, from backward loop p."""
        ir = self.ir
        if a.is_const or a.op == "started":
            return None
        if a.op == "state":
            return self._mem(dstate(*a.attr))
        if a.hoisted:
            if a in self.buf_set:   # a root that is also a GEMM operand
                return self._mem(adj(a))
            if self._direct(a):
                return Access("dvector", a.attr)
            return self.root_adjoint(a)
        if ir.owner[a] == p:
            return Local(f"g_{a.label}")
        return self._mem(adj(a))

    def _backward_body(self, p: int):
        ir = self.ir
        owned = [n for n in ir.nodes if ir.owner.get(n) == p]
        out = []
        for n in owned:
            init = self._entry_inits.get(n)
            if init is None:
                init = self._mem(adj(n)) if n in self.buf_set else Lit(0.0)
            out.append(Let(f"g_{n.label}", init, const=False))
        for n in reversed(owned):
            g = Local(f"g_{n.label}")
            if n.op in ("matmul", "mean"):
                grp, k = ir.group_of(n)
                out.append(Set(Access("dmean" if grp.mean else "dproduct", grp.name, k), g))
                continue
            for a, f, neg in self.partials(n, self.bwd_val):
                tgt = self.adjoint_target(a, p)
                if tgt is not None:
                    value = Scaled(g, f, neg)
                    out.append(ReduceAdd(tgt, value) if isinstance(tgt, Access)
                               and tgt.kind == "dvector" else Add(tgt, value))
        if p == 0:   # hoisted GEMM operands: their adjoint buffer flows to dXP
            for n in ir.buffered:
                if n.hoisted:
                    out.append(Add(self.root_adjoint(n), self._mem(adj(n))))
        return out

    def _entry(self, p: int):
        """(statements, {adjoint in memory: its value}, padded-row statements) that open a
        backward step in loop p.  dy reaches the carried output; at a real step the
        registers shift back and each new state takes the adjoint its register held (in
        a local when loop p owns the new state); the step's accumulators start at zero.
        At a padded step the registers stay."""
        ir = self.ir
        dy = Load(Access("dy"))
        pre, inits = [], {}
        padded = [Add(dstate(ir.output, 1), dy)]
        self._entry_inits = {}
        for s in ir.states:
            a = ir.assigns[s]
            held = Load(dstate(s, 1))
            if s == ir.output:
                held = Bin("+", held, dy)
            pre.append(Let(f"a_{s}", held))
            for k in range(1, ir.lags[s] + 1):
                inits[dstate(s, k)] = (Load(dstate(s, k + 1)) if k < ir.lags[s] else Lit(0.0))
            if ir.owner.get(a) == p:
                self._entry_inits[a] = Local(f"a_{s}")
            else:
                inits[adj(a)] = Local(f"a_{s}")
        for n in ir.buffered:   # (on real rows the first write of each starts it: _starts)
            if n.op != "assign":
                padded.append(Set(adj(n), Lit(0.0)))
        return pre, inits, padded

    def _loop(self, p: int, entry: bool, final: bool):
        self._locals, inits, pre, padded = {}, {}, [], []
        if entry:
            pre, inits, padded = self._entry(p)
            for access in inits:
                self._mem(access)
        body, reads = self._tracked(self._backward_body, p)
        if final:
            more, more_reads = self._tracked(self._hoisted_partials)
            body, reads = body + more, reads or more_reads
        self._entry_inits = {}
        if not body and not entry:
            return [], [], False
        starts = {a for a, first in self._starts.items() if first == ("loop", p)}
        load = [Let(name, inits.get(access, Lit(0.0) if access in starts else Load(access)),
                    const=False)
                for access, name in self._locals.items()]
        # store what changed (or the entry set, or what this loop starts); root adjoints
        # are read by no later loop than the final one
        changed = {s.target.name for s in body if isinstance(s, Add)
                   and isinstance(s.target, Local)}
        store = [Set(access, Local(name)) for access, name in self._locals.items()
                 if (access in inits or access in starts or name in changed)
                 and not (final and access.kind == "droot")]
        return self._with_hoisted(pre + load + body + store, reads), padded, reads

    def _first_writes(self, final: int) -> dict:
        """{adjoint buffer or root adjoint: ("loop", p) or ("gemm", group name)}, the first
        of the step's backward loops and products (in the order they run) to touch it:
        that one starts it (from zero, or writes the product) instead of adding to what
        an earlier one left, so no loop spends a pass zeroing buffers it does not use."""
        ir = self.ir
        lazy = {adj(n) for n in ir.buffered if n.op != "assign"} | {
            Access("droot", "", i) for i in range(len(ir.roots))}
        first = {}
        for p in range(ir.nphases - 1, -1, -1):
            self._locals = {}
            self._tracked(self._backward_body, p)
            if p == final:
                self._tracked(self._hoisted_partials)
            for access in self._locals:
                if access in lazy:
                    first.setdefault(access, ("loop", p))
            for g in ir.groups_of_phase(p):
                if operand_adjoint(g) in lazy:
                    first.setdefault(operand_adjoint(g), ("gemm", g.name))
        self._locals = {}
        return first

    def backward(self):
        ir = self.ir
        busy = [p for p in range(ir.nphases) if self._tracked(self._backward_body, p)[0]]
        self._locals = {}
        first, final = (max(busy), min(busy)) if busy else (0, 0)
        self._starts = self._first_writes(final)
        out = []
        for p in range(ir.nphases - 1, -1, -1):
            real, padded, reads = self._loop(p, p == first, p == final)
            # no product carries a gradient into an operand that has none (a constant, or
            # started(): mean(started(h[-1])) is a number of the step, not of the weights)
            gemms = tuple(Gemm(g, g.operand, () if g.mean else tuple(mm.attr for mm in g.matmuls),
                               True, operand_adjoint(g),
                               self._starts.get(operand_adjoint(g)) == ("gemm", g.name))
                          for g in ir.groups_of_phase(p)
                          if not (g.operand.is_const or g.operand.op == "started"))
            out.append(BackwardPhase(p, tuple(real), tuple(padded), p == final, reads, gemms))
        self._locals = {}
        return tuple(out)


def operand_adjoint(g: Group) -> Access:
    """The buffer receiving dOperand += dS @ [U...]^T (its element (b, j))."""
    a = g.operand
    if a.op == "state":
        return dstate(*a.attr)
    return adj(a)


# -- dead locals ----------------------------------------------------------------------
_EXPRS = (Lit, Local, Load, Started, Neg, Bin, Call, Pow, MaxMin, Select, Scaled)


def _reads(e, out: set) -> set:
    """The locals an expression reads, added to ``out``."""
    if isinstance(e, Local):
        out.add(e.name)
    elif isinstance(e, _EXPRS):
        for f in fields(e):
            v = getattr(e, f.name)
            if isinstance(v, _EXPRS):
                _reads(v, out)
    return out


def _flat(body):
    for s in body:
        if isinstance(s, IfReal):
            yield from _flat(s.body)
        else:
            yield s


def prune_locals(body: tuple) -> tuple:
    """``body`` without the locals nothing needs: a statement is needed where it writes
    memory (a Set or Add to an access, a ReduceAdd) or a needed local, and a local is
    needed where a needed statement reads it.  What is left reads every local it
    declares, so no compiler warns and nothing needs silencing (Unused goes too)."""
    def local_target(s):
        t = getattr(s, "target", None)
        return t.name if isinstance(t, Local) else None

    needed: set = set()
    while True:
        before = len(needed)
        for s in _flat(body):
            if isinstance(s, Unused):
                continue
            name = s.name if isinstance(s, Let) else local_target(s)
            if name is None or name in needed:
                _reads(s.value, needed)
        if len(needed) == before:
            break

    def keep(stmts):
        out = []
        for s in stmts:
            if isinstance(s, Unused):
                continue
            if isinstance(s, IfReal):
                inner = keep(s.body)
                if inner:
                    out.append(IfReal(tuple(inner)))
                continue
            name = s.name if isinstance(s, Let) else local_target(s)
            if name is None or name in needed:
                out.append(s)
        return out
    return tuple(keep(body))


def _equation_notes(ir: CellIR) -> dict:
    """{forward local: "target = expression"} for the value of each equation of the step
    (a state's new value is v_<state>_new; the text is rebuilt from the parsed equation, so
    nothing of the spec's file reaches the generated code but identifiers and numbers)."""
    notes = {}
    for eq in ir.spec.equations:
        label = ir.equations[eq.target].label
        try:
            text = unparse(eq.expr)
        except RecursionError:             # thousands of terms: the fuzzer's worst cases
            text = "..."
        if len(text) > 160:
            text = text[:150] + " ..."
        notes[f"v_{label}"] = f"{eq.target} = {text}".replace("*/", "* /")
    return notes


def _annotate(body: tuple, notes: dict) -> tuple:
    out = []
    for s in body:
        if isinstance(s, Let) and s.name in notes:
            s = replace(s, note=notes[s.name])
        elif isinstance(s, IfReal):
            s = IfReal(_annotate(s.body, notes))
        out.append(s)
    return tuple(out)


def lower_program(ir: CellIR, layout: Layout) -> StepProgram:
    low = _Lowering(ir, layout)
    notes = _equation_notes(ir)
    forward = tuple(replace(ph, body=_annotate(prune_locals(ph.body), notes))
                    for ph in low.forward())
    backward = tuple(replace(ph, real=prune_locals(ph.real), padded=prune_locals(ph.padded))
                     for ph in low.backward())
    return StepProgram(ir=ir, layout=layout, forward=forward, backward=backward,
                       keep_xw=any(ph.reads_hoisted for ph in backward))
