"""Equations to nodes: each equation of the step lowered to a hash-consed DAG of
per-element nodes, every problem collected with its line (a SpecError lists them all)."""
from __future__ import annotations

import math
from typing import Optional

from .. import expr as E
from ..errors import SpecError
from ..functions import BINARY, FUNCTIONS, check_activation
from ..spec import (MAX_INT_PARAM, MAX_LAG, MAX_OPERATIONS, MAX_PHASES, MAX_SUM_TERMS,
                    CellSpec)
from .nodes import PRODUCTS, Node, Weight, c_name

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
        from ..spec import _suggest
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
            from ..spec import _suggest
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
        self.env = env
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
            from ..initializers import check_init
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
