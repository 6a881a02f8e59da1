"""From the lowered nodes to the structure the kernels are printed from: readable names,
hoisted values, phases and their GEMM groups, saved slots, and who owns each adjoint."""
from __future__ import annotations

from types import MappingProxyType
from typing import Optional

from ..functions import FUNCTIONS
from ..spec import CellSpec
from .lowering import _Lowering, resolve_params
from .nodes import PRODUCTS, STEP_LEAVES, CellIR, Group, Node, c_name

# Names of the values no equation names: the expression they compute where that is
# short (x_w_i_plus_b_i, tanh_c_new, one_minus_z), else the left-hand side of their
# equation and what they are (i_sum, c_prod; c_value for an equation's whole value).
_WORDS = {"add": "plus", "sub": "minus", "mul": "times", "div": "over"}
_KINDS = {"add": "sum", "sub": "sum", "mul": "prod", "div": "quot", "neg": "neg",
          "pow": "pow", "max": "max", "min": "min"}
_CONST_WORDS = {0.0: "zero", 1.0: "one", 2.0: "two", 3.0: "three", 0.5: "half"}
MAX_NAME = 20


def _operand_word(n: Node) -> str:
    if n.is_const:
        return _CONST_WORDS.get(n.attr, "")
    return n.label


def _expression_name(n: Node) -> str:
    """A name spelling out what n computes from its operands' names ("" if none fits)."""
    words = [_operand_word(a) for a in n.args]
    if not all(words):
        return ""
    if n.op in _WORDS:
        return f"{words[0]}_{_WORDS[n.op]}_{words[1]}"
    if n.op in ("max", "min"):
        return f"{n.op}_{words[0]}_{words[1]}"
    if n.op == "neg":
        return f"neg_{words[0]}"
    if n.op == "call":
        return f"{n.attr}_{words[0]}"
    if n.op == "pow" and float(n.attr).is_integer():
        return f"{words[0]}_pow{int(n.attr)}"
    return ""


def _name_values(nodes, assigns) -> None:
    """Give every node a unique C-safe label; the labels equations gave are kept."""
    taken: set = set()

    def unique(base):
        lab, k = base, 2
        while lab in taken:
            lab, k = f"{base}_{k}", k + 1
        taken.add(lab)
        return lab

    named = [n for n in nodes if n.label]   # in node order: the same names on every run
    for n in named:
        n.label = unique(c_name(n.label))
    named = set(named)
    whole = {a.args[0] for a in assigns.values()}   # the value of a state's equation
    for n in nodes:
        if n in named:
            continue
        if n.op == "state":
            base = f"{n.attr[0]}_lag{n.attr[1]}" if n.attr[1] > 1 else n.attr[0] + "_prev"
        elif n.op == "started":
            base = f"started{n.attr}"
        elif n.op == "xprod":
            base = f"x_{n.attr}"
        elif n.op == "bias":
            base = n.attr
        elif n.op == "matmul":
            base = f"{n.args[0].label}_{n.attr}"
        elif n.op == "mean":
            base = f"mean_{n.args[0].label}"
        elif n.op == "xval":
            base = "x_t"
        elif n.is_const:
            base = f"const{n.id}"
        else:
            base = c_name(_expression_name(n))
            if not base or len(base) > MAX_NAME:
                what = "value" if n in whole else _KINDS.get(n.op, n.attr if n.op == "call"
                                                              else n.op)
                base = f"{n.origin}_{what}" if n.origin else f"{what}{n.id}"
        n.label = unique(c_name(base))


def compute_ir(spec: CellSpec, params: Optional[dict] = None) -> CellIR:
    params = resolve_params(spec, params)
    low = _Lowering(spec, params)
    assigns = low.run()

    # reachable nodes, topological (creation) order
    reach = set()
    stack = list(assigns.values())
    while stack:
        n = stack.pop()
        if n.id in reach:
            continue
        reach.add(n.id)
        stack.extend(n.args)
    nodes = [n for n in low.nodes if n.id in reach]
    users: dict = {n: [] for n in nodes}
    for n in nodes:
        for a in n.args:
            users[a].append(n)

    for s, n in assigns.items():
        n.label = c_name(s) + "_new"
    _name_values(nodes, assigns)

    hoisted = [n for n in nodes if n.hoisted]
    xprods = [n for n in nodes if n.op == "xprod"]
    roots = [n for n in hoisted if any(u.varying for u in users[n])]

    # phases
    phase: dict = {}
    for n in nodes:
        if not n.varying:
            continue
        if n.op in ("state", "started"):
            phase[n] = 0
        elif n.op in PRODUCTS:
            phase[n] = phase.get(n.args[0], 0) + 1
        else:
            phase[n] = max([phase[a] for a in n.args if a.varying] + [0])
    nphases = max(phase.values()) + 1
    # As late as possible: an elementwise node moves to the loop of its first
    # user, so it stays in a register instead of crossing loops.  GEMM operands
    # stay where they are (their product's phase was derived from them).
    for n in reversed(nodes):
        if not n.varying or n.op in STEP_LEAVES:
            continue
        late = [phase[u] - 1 if u.op in PRODUCTS else phase[u] for u in users[n]]
        phase[n] = min(late) if late else nphases - 1
    loops = [[n for n in nodes if n.varying and n.op not in STEP_LEAVES and phase[n] == p]
             for p in range(nphases)]

    groups = []
    for p in range(1, nphases):
        by_operand: dict = {}
        for n in nodes:
            if n.op == "matmul" and phase[n] == p:
                by_operand.setdefault(n.args[0], []).append(n)
        for operand, mms in by_operand.items():
            groups.append(Group(f"g_{operand.label}", p, operand, tuple(mms)))
        for n in nodes:
            if n.op == "mean" and phase[n] == p:
                groups.append(Group(f"gmean_{n.args[0].label}", p, n.args[0], (n,), mean=True))
    operands = {g.operand for g in groups}

    def loop_of(n):
        """The loop that computes n's value (or, for leaves, first has it)."""
        return phase[n] if n.varying else 0

    # values the backward partials read
    needed = set()
    for n in nodes:
        if not n.varying or n.op in STEP_LEAVES:
            continue
        # (a partial with respect to a constant is never formed: see program's partials)
        if n.op == "mul":
            a, b = n.args
            needed.update(x for x, other in ((a, b), (b, a)) if not other.is_const)
        elif n.op in ("max", "min"):
            needed.update(n.args)
        elif n.op == "pow":
            needed.add(n.args[0])
        elif n.op == "div":
            needed.add(n.args[1])
            if not n.args[1].is_const:   # d(a/b)/db = -(a/b)/b
                needed.add(n)
        elif n.op == "call":
            f = FUNCTIONS[n.attr]
            if f.uses_x:
                needed.add(n.args[0])
            if f.uses_y:
                needed.add(n)
    slots = []
    for n in nodes:
        if not n.varying:
            continue
        # read by another loop; a state's new value computed before the last loop is read
        # by the update at the end of the last one
        cross = n.op not in STEP_LEAVES and (
            any(loop_of(u) != phase[n] for u in users[n])
            or (n.op == "assign" and phase[n] != nphases - 1))
        if n.op == "started" and n not in operands:
            continue   # backward recounts the real steps: started() is not saved
        if n in operands or n in needed or cross:
            slots.append(n)
    # a hoisted GEMM operand is copied into a slot too (so dU is one GEMM over slots)
    for g in groups:
        if not g.operand.varying and g.operand not in slots and not g.operand.is_const:
            slots.append(g.operand)

    owner = {n: phase[n] for n in nodes if n.varying and n.op not in ("state", "started")}
    for n in nodes:
        if n.op in PRODUCTS:
            # own the adjoint where the users are; a product's contribution arrives after
            # its own loop (from dOperand += ...), so by the loop before it
            owner[n] = min(phase[u] - 1 if u.op in PRODUCTS else phase[u] for u in users[n])
    buffered = []
    for n in nodes:
        if n in owner:
            if n.op == "assign" or n in operands or any(phase[u] != owner[n] for u in users[n]):
                buffered.append(n)
        elif n.hoisted and n in operands:
            buffered.append(n)

    ro = MappingProxyType
    return CellIR(spec=spec, name=c_name(spec.name), params=ro(dict(params)),
                  weights=tuple(low.weights[w] for w in low.weight_order),
                  states=tuple(assigns), output=low.output_state, lags=ro(dict(low.lags)),
                  nodes=tuple(nodes), assigns=ro(dict(assigns)), xprods=tuple(xprods),
                  roots=tuple(roots), hoisted=tuple(hoisted), phases=ro(phase), nphases=nphases,
                  loops=tuple(tuple(lp) for lp in loops), groups=tuple(groups),
                  slots=tuple(slots), needed=frozenset(needed), owner=ro(owner), buffered=tuple(buffered),
                  users=ro({n: tuple(us) for n, us in users.items()}),
                  equations=ro({eq.target: assigns[eq.target] if eq.target in assigns
                                else low.env[eq.target] for eq in spec.equations}))
