"""Stage 2: lower a checked spec plus concrete parameter values to a typed IR.

The IR is a DAG of per-element nodes (one value per sample and hidden unit),
hash-consed so that a sub-expression written twice is computed once.  From it
this module derives the structure fast RNN kernels use:

* *hoisted* nodes depend on the input and the weights only (``x @ W``, biases,
  elementwise functions of them).  All ``x @ W`` products of a step are one
  product with the W matrices side by side, which depends on no state (so it
  can run anywhere in the step); the hoisted nodes that step nodes read (the
  *roots*) are computed from it inside the step loops.
* *step* nodes depend on the state.  A product ``e @ U`` of a step value needs
  ``e`` first, so each node gets a *phase*: phase(e @ U) = phase(e) + 1.  Per
  step, phase p runs the GEMMs of phase p (products that share an operand are
  one GEMM, the U matrices side by side) and then one fused elementwise loop.
* the backward pass is derived from the same nodes by reverse-mode
  differentiation; the forward pass saves (in *slots*, one [B, H] block per
  step) every value the backward partials read and every GEMM operand.

Everything here is plain data; :mod:`rnngen.render` turns it into C.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional

from . import expr as E
from .errors import SpecError
from .functions import ACTIVATIONS, BINARY, FUNCTIONS, check_activation
from .spec import (MAX_INT_PARAM, MAX_LAG, MAX_OPERATIONS, MAX_PHASES, MAX_SUM_TERMS,
                   CellSpec)

GENERATOR_VERSION = "0.1.0"

LEAF_OPS = ("const", "bias", "xprod", "xval", "state", "started")
# computed by a backend's frame between the elementwise loops of a step: products
# (a GEMM per group) and means over the units of a sample (a reduction per group)
PRODUCTS = ("matmul", "mean")
STEP_LEAVES = ("state", "started") + PRODUCTS


@dataclass(eq=False)
class Node:
    id: int
    op: str          # const bias xprod state started matmul neg add sub mul div call assign
    args: tuple
    attr: object     # const: float; bias/xprod/matmul: weight name; state: (state, lag);
                     # started: lag; call: function name; assign: state name
    varying: bool    # depends on the state (computed inside the time loop)
    label: str = ""  # a readable C-safe name
    origin: str = "" # the left-hand side of the equation that first made it

    @property
    def is_const(self):
        return self.op == "const"

    @property
    def hoisted(self):
        return not self.varying and self.op != "const"

    def __repr__(self):
        return f"Node({self.id}:{self.op}:{self.label})"


@dataclass(frozen=True)
class Weight:
    name: str          # concrete name (family members are NAME_k)
    role: str          # "input matrix" | "recurrent matrix" | "vector"
    shape: tuple       # of "input_dim"/"output_dim"
    init: str          # concrete init name
    line: int

    def dims(self, input_dim: int, output_dim: int) -> tuple:
        m = {"input_dim": input_dim, "output_dim": output_dim}
        return tuple(m[d] for d in self.shape)


@dataclass(frozen=True, eq=False)
class Group:
    """One GEMM of a step: operand @ [U_1 | U_2 | ...]; or (mean=True) the mean of the
    operand over the units of each sample, broadcast to every unit (matmuls = the one
    mean node)."""
    name: str
    phase: int
    operand: Node
    matmuls: tuple     # Node(op=matmul), column block k is matmuls[k]
    mean: bool = False

    @property
    def width(self):
        return len(self.matmuls)


@dataclass(frozen=True)
class CellIR:
    """The lowered cell: frozen, with tuples and read-only mappings.  Nodes are
    identified by object (their labels are fixed before the IR is made)."""
    spec: CellSpec
    name: str                  # C-safe lower-case cell name
    params: Mapping            # concrete parameter values
    weights: tuple             # of Weight, in weights= order
    states: tuple              # of str
    output: str
    lags: Mapping              # state -> number of registers kept (max lag, >= 1)
    nodes: tuple               # reachable nodes in topological order
    assigns: Mapping           # state -> assign node
    xprods: tuple              # xprod nodes, column blocks of the input product x @ [W...]
    roots: tuple               # hoisted nodes read by step nodes, column blocks of XP
    hoisted: tuple             # every hoisted node in topological order
    phases: Mapping            # node -> phase (step nodes)
    nphases: int               # loops 0..nphases-1
    loops: tuple               # loop p -> tuple of step nodes computed in it (topological)
    groups: tuple              # of Group, ordered by phase
    slots: tuple               # nodes whose per-step value is stored
    needed: frozenset          # step nodes whose value a backward partial reads
    owner: Mapping             # node -> loop index that owns its adjoint
    buffered: tuple            # nodes whose adjoint lives in a [B, H] buffer
    users: Mapping             # node -> tuple of the nodes that read it

    def weight(self, name):
        return next(w for w in self.weights if w.name == name)

    @property
    def x_elementwise(self) -> bool:
        """x is read elementwise (not only as x @ W): input_dim must equal output_dim."""
        return any(n.op == "xval" for n in self.nodes)

    def groups_of_phase(self, p):
        return [g for g in self.groups if g.phase == p]

    def group_of(self, matmul: Node):
        for g in self.groups:
            if matmul in g.matmuls:
                return g, g.matmuls.index(matmul)
        raise KeyError(matmul)


def c_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", s).lower()


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

    named = {n for n in nodes if n.label}
    for n in named:
        n.label = unique(c_name(n.label))
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


class _Lowering:
    def __init__(self, spec: CellSpec, params: dict):
        self.spec = spec
        self.output_state = spec.output    # a state of the spec, or one carrying the output
        self.params = params
        self.problems: list[tuple[int, str]] = []
        self.nodes: list[Node] = []
        self.cache: dict = {}
        self.weights: dict[str, Weight] = {}
        self.families: dict[str, list[str]] = {}
        self.weight_order: list[str] = []
        self.used_weights: set = set()
        self.lags = {s: 1 for s in spec.states}
        self.operations = 0          # lowered so far, sums expanded (MAX_OPERATIONS)
        self.products: dict = {}     # node id -> products in a row up to it (MAX_PHASES)

    # -- node construction (hash-consed) ------------------------------------
    def node(self, op, args=(), attr=None):
        key = (op, tuple(a.id for a in args), attr)
        if key in self.cache:
            return self.cache[key]
        varying = op in ("state", "started", "assign") + PRODUCTS or any(a.varying for a in args)
        n = Node(len(self.nodes), op, tuple(args), attr, varying,
                 origin=getattr(self, "current_target", ""))
        self.nodes.append(n)
        self.cache[key] = n
        self.products[n.id] = max((self.products[a.id] for a in args), default=0) \
            + (op in PRODUCTS)
        return n

    def const(self, v, line):
        """A constant node; a value that float32 cannot hold (a folded ``1e30 * 1e30``,
        a sum index far out) is a problem on ``line``."""
        try:
            v = float(v)
        except OverflowError:
            v = float("inf")
        problem = E.constant_problem(v)
        if problem:
            self.err(line, f"{problem} (computed from the constants here)")
        return self.node("const", (), v)

    def count(self, line):
        """One more operation lowered; past MAX_OPERATIONS the whole spec stops."""
        self.operations += 1
        if self.operations > MAX_OPERATIONS:
            raise _TooBig(line, f"the equations are too large: more than {MAX_OPERATIONS} "
                                "operations (names, numbers, operators and calls, with every "
                                "sum() expanded); use fewer or shorter sums")

    def err(self, line, msg):
        self.problems.append((line, msg))
        raise _Abort()

    # -- weights ---------------------------------------------------------------
    def declare_weights(self):
        for w in self.spec.weights:
            init = self.params.get(w.init, w.init)
            if w.count is None:
                names = [w.name]
            else:
                count = w.count if isinstance(w.count, int) else self.params[w.count]
                names = [f"{w.name}_{k}" for k in range(1, count + 1)]
                self.families[w.name] = names
            for n in names:
                if n in self.weights:
                    self.problems.append((w.line, f"weight {n!r} is declared twice (a family "
                                                  f"{w.name}[k] is named {w.name}_k)"))
                    continue
                self.weights[n] = Weight(n, w.role, w.shape, init, w.line)
                self.weight_order.append(n)

    # -- expressions -------------------------------------------------------------
    # A lowered value is one of ("x", None), ("vec", Node), ("int", int),
    # ("mat", Weight).
    # Chains (a + b + ..., a * b @ U / c ...) are trees as deep as they are long; they are
    # walked with loops, so only parentheses, calls and subscripts (at most MAX_NESTING,
    # checked by the parser) make this recurse.
    def lower(self, e, env, loopvars):
        self.count(e.line)
        if isinstance(e, E.Num):
            return ("vec", self.const(e.value, e.line))
        if isinstance(e, E.Name):
            return self.lower_name(e.id, e.line, env, loopvars)
        if isinstance(e, E.Subscript):
            return self.lower_subscript(e, env, loopvars)
        if isinstance(e, E.Neg):
            v = self.vec(self.lower(e.arg, env, loopvars), e.line, "the operand of unary -")
            if v.is_const:
                return ("vec", self.const(-v.attr, e.line))
            return ("vec", self.node("neg", (v,)))
        if isinstance(e, E.BinOp):
            if e.op in "+-":
                terms = []
                self.sum_terms(e, 1, env, loopvars, terms)
                return ("vec", self.build_sum(terms, e.line))
            if e.op == "**":
                return self.lower_power(e, env, loopvars)
            return self.lower_product(e, env, loopvars)
        if isinstance(e, E.Call):
            return self.lower_call(e, env, loopvars)
        raise TypeError(e)  # pragma: no cover

    def lower_product(self, e, env, loopvars):
        """A chain of * / @ (left-associative), from its innermost left operand out.  A
        problem in one operand does not stop the others from being checked."""
        spine = []
        while isinstance(e, E.BinOp) and e.op in "*/@":
            spine.append(e)
            e = e.left
        failed = False
        try:
            acc = self.lower(e, env, loopvars)
        except _Abort:
            failed, acc = True, None
        for b in reversed(spine):
            if b is not spine[0]:   # lower() counted the outermost
                self.count(b.line)
            try:
                right = self.lower(b.right, env, loopvars)
                if failed:
                    continue
                if b.op == "@":
                    acc = self.lower_matmul(b, acc, right)
                    continue
                a = self.vec(acc, b.line, f"the left operand of {b.op}")
                c = self.vec(right, b.line, f"the right operand of {b.op}")
                if a.is_const and c.is_const:
                    if b.op == "/" and c.attr == 0:
                        self.err(b.line, "division by the constant 0")
                    acc = ("vec", self.const(a.attr * c.attr if b.op == "*" else a.attr / c.attr,
                                             b.line))
                else:
                    acc = ("vec", self.node("mul" if b.op == "*" else "div", (a, c)))
            except _Abort:
                failed = True
        if failed:
            raise _Abort()
        return acc

    def lower_power(self, e, env, loopvars):
        """e ** c for a constant c: x * x for 2, a pow node otherwise (1 and 0 fold)."""
        failed = False
        try:
            base = self.vec(self.lower(e.left, env, loopvars), e.line, "the base of **")
        except _Abort:
            failed = True
        kind, ex = self.lower(e.right, env, loopvars)
        if kind == "int":
            c = float(ex)
        elif kind == "vec" and ex.is_const:
            c = float(ex.attr)
        else:
            self.err(e.line, "the exponent of ** must be a constant: a number or a numeric "
                             "parameter (e.g. x ** 2, x ** 0.5, x ** p); a value that changes "
                             "per step or unit can be raised with exp(log(x) * y)")
        if failed:
            raise _Abort()
        if base.is_const:
            try:
                return ("vec", self.const(math.pow(base.attr, c), e.line))
            except (ValueError, OverflowError):
                self.err(e.line, f"{base.attr!r} ** {c!r} has no real value")
        if c == 1:
            return ("vec", base)
        if c == 0:
            return ("vec", self.const(1.0, e.line))
        if c == 2:
            return ("vec", self.node("mul", (base, base)))
        return ("vec", self.node("pow", (base,), c))

    def vec(self, lowered, line, what):
        kind, val = lowered
        if kind == "vec":
            return val
        if kind == "x":   # x elementwise: the layer then needs input_dim == output_dim
            return self.node("xval")
        if kind == "mat":
            self.err(line, f"{what}: weight {val.name!r} has shape [{', '.join(val.shape)}] and "
                           "can only be the right operand of @")
        if kind == "int":
            return self.const(val, line)
        raise TypeError(kind)  # pragma: no cover

    def lower_name(self, name, line, env, loopvars):
        if name in self.poisoned:     # its own equation already reported a problem
            raise _Abort()
        if name in loopvars:
            return ("int", loopvars[name])
        if name == "x":
            return ("x", None)
        if name in env:
            return ("vec", env[name])
        if name in self.weights:
            self.used_weights.add(name)
            w = self.weights[name]
            if w.role == "vector":
                return ("vec", self.node("bias", (), name))
            return ("mat", w)
        if name in self.families:
            self.err(line, f"weight family {name!r} needs a subscript, e.g. {name}[1] .. "
                           f"{name}[{len(self.families[name])}]")
        p = self.spec.param(name)
        if p is not None:
            if p.kind == "int":
                return ("int", self.params[name])
            if p.kind == "float":
                return ("vec", self.const(self.params[name], line))
            if p.kind == "activation":
                self.err(line, f"activation parameter {name!r} must be called: {name}(...)")
            self.err(line, f"init parameter {name!r} can only be used as a weight's init")
        if name in ("input_dim", "output_dim"):
            self.err(line, f"{name} can only be used in weight shapes")
        if name in FUNCTIONS or name in BINARY or name in ("mean", "sum", "started"):
            self.err(line, f"function {name!r} must be called: {name}(...)")
        if name in self.later_defined:
            self.err(line, self.forward_ref_message(name, line))
        known = sorted(set(env) | set(self.weights) | set(self.spec.states) | {"x"}
                       | {p.name for p in self.spec.params})
        from .spec import _suggest
        self.err(line, f"unknown name {name!r}{_suggest(name, known)}; known here: "
                       f"{', '.join(known)}")

    def int_value(self, e, env, loopvars, what):
        kind, val = self.lower(e, env, loopvars)
        if kind == "int":
            return val
        if kind == "vec" and val.is_const and float(val.attr).is_integer():
            return int(val.attr)
        self.err(e.line, f"{what} must be an integer (a number, an integer parameter or "
                         "a sum() index)")

    def lower_subscript(self, e, env, loopvars):
        idx = self.int_value(e.index, env, loopvars, f"the subscript of {e.name}")
        if e.name in self.spec.states:
            if idx >= 0:
                self.err(e.line, f"lag subscript {e.name}[{idx}] must be negative: "
                                 f"{e.name}[-1] is the previous step, {e.name}[-k] k real "
                                 "steps back")
            if -idx > MAX_LAG:
                self.err(e.line, f"lag subscript {e.name}[{idx}] reaches too far back: at "
                                 f"most {MAX_LAG} steps ({e.name}[-{MAX_LAG}])")
            self.lags[e.name] = max(self.lags[e.name], -idx)
            return ("vec", self.node("state", (), (e.name, -idx)))
        if e.name in self.families:
            members = self.families[e.name]
            if not 1 <= idx <= len(members):
                self.err(e.line, f"{e.name}[{idx}] is out of range: the family has "
                                 f"{e.name}[1] .. {e.name}[{len(members)}]")
            return self.lower_name(members[idx - 1], e.line, env, loopvars)
        self.err(e.line, f"{e.name!r} cannot be subscripted: only states (lags, h[-2]) and "
                         "weight families (count:) can")

    def lower_matmul(self, e, left, right):
        """e is ``left @ right``, both operands lowered already."""
        if right[0] != "mat":
            self.err(e.line, "the right operand of @ must be a matrix weight")
        w = right[1]
        if left[0] == "x":
            if w.role != "input matrix":
                self.err(e.line, f"shape mismatch in x @ {w.name}: x has input_dim columns, so "
                                 f"{w.name} must have shape [input_dim, output_dim], not "
                                 f"[{', '.join(w.shape)}]")
            return ("vec", self.node("xprod", (), w.name))
        a = self.vec(left, e.line, "the left operand of @")
        if w.role != "recurrent matrix":
            self.err(e.line, f"shape mismatch in (...) @ {w.name}: the left operand has "
                             f"output_dim columns, so {w.name} must have shape "
                             f"[output_dim, output_dim], not [{', '.join(w.shape)}]")
        if a.is_const:
            self.err(e.line, f"the left operand of @ {w.name} is a constant")
        n = self.node("matmul", (a,), w.name)
        if self.products[n.id] > MAX_PHASES:
            self.err(e.line, f"too many matrix products in a row: this @ {w.name} needs "
                             f"{self.products[n.id] - 1} others computed one after another "
                             f"before it; at most {MAX_PHASES} in a row are allowed")
        return ("vec", n)

    def lower_call(self, e, env, loopvars):
        if e.func == "sum":
            terms = []
            self.sum_terms(e, 1, env, loopvars, terms)
            return ("vec", self.build_sum(terms, e.line))
        if e.func == "started":
            if len(e.args) != 1 or not isinstance(e.args[0], E.Subscript) \
                    or e.args[0].name not in self.spec.states:
                self.err(e.line, "started() takes one lagged state, e.g. started(h[-k]): 1 where "
                                 "the sample has had k real steps, else 0")
            kind, ref = self.lower(e.args[0], env, loopvars)
            return ("vec", self.node("started", (), ref.attr[1]))
        if e.func == "mean":
            args = self.lower_args(e, env, loopvars)
            if len(e.args) != 1:
                self.err(e.line, f"mean() takes exactly one argument, got {len(e.args)}")
            if args is None:
                raise _Abort()
            if args[0].is_const:
                return ("vec", args[0])
            return ("vec", self.node("mean", (args[0],)))
        fname = e.func
        p = self.spec.param(fname)
        if p is not None:
            if p.kind != "activation":
                self.err(e.line, f"parameter {fname!r} is not an activation and cannot be called")
            fname = self.params[fname]
        elif fname not in FUNCTIONS and fname not in BINARY:
            from .spec import _suggest
            acts = [p.name for p in self.spec.params if p.kind == "activation"]
            known = list(FUNCTIONS) + list(BINARY) + acts + ["mean", "sum", "started"]
            self.lower_args(e, env, loopvars)      # their problems too
            self.err(e.line, f"unknown function {e.func!r}{_suggest(e.func, known)}; callable "
                             f"here: {', '.join(known)}")
        want = 2 if fname in BINARY else 1
        args = self.lower_args(e, env, loopvars)
        if len(e.args) != want:
            self.err(e.line, f"{e.func}() takes exactly {'two arguments' if want == 2 else 'one argument'}, "
                             f"got {len(e.args)}")
        if args is None:
            raise _Abort()
        if want == 2:
            a, b = args
            if a.is_const and b.is_const:
                return ("vec", self.const(max(a.attr, b.attr) if fname == "max"
                                          else min(a.attr, b.attr), e.line))
            return ("vec", self.node(fname, (a, b)))
        return ("vec", self.node("call", (args[0],), fname))

    def lower_args(self, e, env, loopvars):
        """The arguments of a call as nodes, or None if any had a problem (each argument
        is checked, so all their problems are reported)."""
        out, failed = [], False
        for i, a in enumerate(e.args):
            try:
                out.append(self.vec(self.lower(a, env, loopvars), e.line,
                                    f"argument {i + 1} of {e.func}"))
            except _Abort:
                failed = True
        return None if failed else out

    def sum_terms(self, e, sign, env, loopvars, out):
        """Append the (sign, node) terms of a sum, + - chains and sum() calls flattened,
        left to right (a stack, not recursion: a chain is a tree as deep as it is long)."""
        stack = [(e, sign, loopvars)]
        while stack:
            e, sign, loopvars = stack.pop()
            if isinstance(e, E.BinOp) and e.op in "+-":
                self.count(e.line)
                stack.append((e.right, sign if e.op == "+" else -sign, loopvars))
                stack.append((e.left, sign, loopvars))
            elif isinstance(e, E.Call) and e.func == "sum":
                self.count(e.line)
                if len(e.args) != 4 or not isinstance(e.args[0], E.Name):
                    self.err(e.line, "sum takes (k, first, last, expression), e.g. "
                                     "sum(k, 1, depth, h[-k] @ U[k])")
                var = e.args[0].id
                if var in env or var in self.weights or var in loopvars or var == "x":
                    self.err(e.line, f"sum index {var!r} shadows another name")
                lo = self.int_value(e.args[1], env, loopvars, "the first value of sum()")
                hi = self.int_value(e.args[2], env, loopvars, "the last value of sum()")
                if hi < lo:
                    self.err(e.line, f"sum() from {lo} to {hi} is empty")
                if hi - lo + 1 > MAX_SUM_TERMS:
                    self.err(e.line, f"sum() from {lo} to {hi} has {hi - lo + 1} terms; at "
                                     f"most {MAX_SUM_TERMS} are allowed")
                for k in range(hi, lo - 1, -1):   # popped first to last
                    stack.append((e.args[3], sign, dict(loopvars, **{var: k})))
            else:   # keep going after a bad term, so every term's problems are reported
                try:
                    out.append((sign, self.vec(self.lower(e, env, loopvars), e.line,
                                               "a term of a sum")))
                except _Abort:
                    out.append((sign, None))

    def build_sum(self, terms, line):
        """Fold a flat sum: constants first, then input-only terms, then step terms,
        so that the input-only part is one hoisted sub-expression."""
        if any(t is None for _, t in terms):
            raise _Abort()
        c = sum(s * t.attr for s, t in terms if t.is_const)
        rest = [(s, t) for s, t in terms if not t.is_const]
        means = [(s, t) for s, t in rest if t.op == "mean"]
        if len(means) > 1:   # mean(a) +- mean(b) = mean(a +- b): one reduction, not several
            merged = self.node("mean", (self.build_sum([(s, t.args[0]) for s, t in means], line),))
            at = rest.index(means[0])
            rest = [st for st in rest[:at] if st[1].op != "mean"] + [(1, merged)] + [
                st for st in rest[at:] if st[1].op != "mean"]
        ordered = [st for st in rest if not st[1].varying] + [st for st in rest if st[1].varying]
        acc = None
        if c != 0 or not ordered:
            acc = self.const(c, line)
        for s, t in ordered:
            if acc is None:
                acc = t if s > 0 else self.node("neg", (t,))
            else:
                acc = self.node("add" if s > 0 else "sub", (acc, t))
        return acc

    # -- equations ------------------------------------------------------------
    def forward_ref_message(self, name, line):
        # Is there a cycle through later definitions?
        defs = self.all_defs
        seen = {name}
        stack = [(name, [name])]
        while stack:
            cur, p = stack.pop()
            for ref in defs.get(cur, ()):
                if ref == self.current_target:
                    cyc = " -> ".join([self.current_target] + p + [ref])
                    return (f"cycle: {cyc}; the equations of {self.current_target!r} and "
                            f"{name!r} depend on each other")
                if ref in defs and ref not in seen:
                    seen.add(ref)
                    stack.append((ref, p + [ref]))
        return (f"{name!r} is used before it is defined (on line {self.def_line[name]}); "
                "move its equation up")

    def run(self):
        spec = self.spec
        self.declare_weights()
        env: dict[str, Node] = {}
        assigned: dict[str, int] = {}
        locals_line: dict[str, int] = {}
        self.all_defs = {}
        self.def_line = {}
        for eq in spec.equations:
            self.def_line.setdefault(eq.target, eq.line)
            self.all_defs.setdefault(eq.target, set()).update(
                n.id for n in E.names_in(eq.expr) if n.id not in spec.states)
        for s in spec.states:
            env[s] = self.node("state", (), (s, 1))
        self.poisoned: set = set()
        for eq in spec.equations:     # usage, read from the text (even of a bad equation)
            for n in E.names_in(eq.expr):
                self.used_weights.update(self.families.get(n.id, [n.id]))
        used_locals: set = set()
        for i, eq in enumerate(spec.equations):
            self.current_target = eq.target
            self.later_defined = {q.target for q in spec.equations[i:]
                                  if q.target not in spec.states}
            for n in E.names_in(eq.expr):
                used_locals.add(n.id)
            t = eq.target
            if t == "x" or t in self.weights or t in self.families or spec.param(t) \
                    or t in FUNCTIONS or t in BINARY \
                    or t in ("mean", "sum", "started", "input_dim", "output_dim"):
                self.problems.append((eq.line, f"cannot assign to {t!r}: it is the input, a "
                                               "weight, a parameter or a function"))
                continue
            if t in assigned:
                self.problems.append((eq.line, f"{t!r} is assigned twice (first on line "
                                               f"{assigned[t]}); each name is defined once"))
                continue
            try:
                kind, val = self.lower(eq.expr, env, {})
                val = self.vec((kind, val), eq.line, f"the value of {t}")
            except _TooBig as e:   # stop here: the rest could take as long again
                self.problems.append((e.line, str(e)))
                raise SpecError(spec.path, self.problems) from None
            except _Abort:
                assigned[t] = eq.line
                self.poisoned.add(t)
                continue
            assigned[t] = eq.line
            if t in spec.states:
                env[t] = self.node("assign", (val,), t)
            else:
                locals_line[t] = eq.line
                env[t] = val
                if not val.label and not val.is_const:
                    val.label = c_name(t)
        for s in spec.states:
            if s not in assigned:
                self.problems.append((0, f"state {s!r} is never assigned in step; add an "
                                         f"equation '{s} = ...'"))
        out = spec.output
        for t, line in locals_line.items():
            if t not in used_locals and t != out:
                self.problems.append((line, f"{t!r} is defined but never used"))
        for name, w in self.weights.items():
            if name not in self.used_weights:
                self.problems.append((w.line, f"weight {name!r} is declared but not used in step"))
        if self.problems:
            raise SpecError(spec.path, self.problems)
        assigns = {s: env[s] for s in spec.states}
        if out not in spec.states:
            # the output is a step value: carried like a state (a padded step repeats it),
            # in a state of its own that nothing else reads
            taken = set(env) | set(self.weights) | {p.name for p in spec.params}
            name = next(n for n in (f"{out}_out{i or ''}" for i in range(len(taken) + 1))
                        if n not in taken)
            assigns[name] = self.node("assign", (env[out],), name)
            self.lags[name] = 1
            self.output_state = name
        return assigns


class _Abort(Exception):
    pass


class _TooBig(Exception):
    def __init__(self, line, msg):
        super().__init__(msg)
        self.line = line


def resolve_params(spec: CellSpec, values: Optional[dict] = None) -> dict:
    """Defaults overridden by ``values``; raise ValueError/TypeError on bad values."""
    values = dict(values or {})
    out = {}
    for p in spec.params:
        v = values.pop(p.name, p.default)
        if p.kind == "activation":
            v = check_activation(v, p.name)
        elif p.kind == "init":
            from .initializers import check_init
            v = check_init(v, p.name)
        elif p.kind == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{p.name} must be a number, got {type(v).__name__} {v!r}")
            v = float(v)
            problem = E.constant_problem(v)
            if problem:
                raise ValueError(f"{p.name}: {problem}")
        else:
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_INT_PARAM:
                shown = repr(v) if not isinstance(v, int) or abs(v) < 10 ** 30 \
                    else f"a {v.bit_length()}-bit integer"
                raise ValueError(f"{p.name} must be an integer from 1 to {MAX_INT_PARAM}, "
                                 f"got {shown}")
        out[p.name] = v
    if values:
        raise TypeError(f"{spec.name} has no parameter(s) {', '.join(map(repr, values))}; "
                        f"its parameters are {', '.join(p.name for p in spec.params)}")
    return out


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
                  users=ro({n: tuple(us) for n, us in users.items()}))
