"""Tokenizer and parser for the step equations of a cell spec.

The grammar is a whitelist; nothing in a spec is ever evaluated by Python or
copied into C as text.  Equations are ``name = expr``, one per line (a line may
continue while a parenthesis is open), ``#`` starts a comment::

    expr    := term (('+' | '-') term)*
    term    := unary (('*' | '/' | '@') unary)*
    unary   := '-' unary | power
    power   := postfix ['**' unary]
    postfix := NAME '[' expr ']' | NAME '(' expr (',' expr)* ')' | atom
    atom    := NUMBER | NAME | '(' expr ')'

``@`` is a matrix product and binds like ``*``; ``**`` binds tighter than a sign
and groups from the right (all as in Python: ``-a ** 2`` is ``-(a ** 2)``).
``h[-k]`` is a lag subscript on a state, ``U[k]`` an element of a weight family.

Every spec is parsed and lowered in bounded time and memory: the limits below are
checked before the work they bound (the parser's recursion, a sum()'s expansion),
and a spec beyond one gets a SpecError saying which limit and where.
"""
from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from typing import Optional, Union

# -- limits on equations (README, "Spec format") ---------------------------------------
MAX_NESTING = 32         # parentheses, calls and subscripts inside each other
MAX_SUM_TERMS = 1024     # terms one sum() expands to
MAX_OPERATIONS = 10_000  # operands, operators and calls of all equations, sums expanded
MAX_LAG = 64             # k in h[-k]
MAX_PHASES = 64          # products in a row (h @ U ... @ V), each needs the one before
FLT_MAX = 3.4028234663852886e38   # largest float32
FLT_MIN = 1.1754943508222875e-38  # smallest normal float32


def constant_problem(v: float) -> Optional[str]:
    """Why v cannot be a constant of a cell (compiled as float32 and float64), or None.
    Nonzero constants below float32's normal range are refused rather than rounded:
    they would flush to zero (or lose precision) in the float32 kernels only."""
    if not math.isfinite(v):
        return f"constant {v} is not finite"
    try:
        f32 = struct.unpack("f", struct.pack("f", v))[0]
    except OverflowError:
        f32 = math.inf
    if math.isinf(f32):
        return (f"constant {v!r} does not fit in float32: constants must lie within "
                f"+-{FLT_MAX:.8g}")
    if v != 0 and abs(f32) < FLT_MIN:
        return (f"constant {v!r} is too small for float32: a nonzero constant must be at "
                f"least {FLT_MIN:.8g} in magnitude (write 0 for zero)")
    return None


@dataclass(frozen=True)
class Num:
    value: float
    line: int


@dataclass(frozen=True)
class Name:
    id: str
    line: int


@dataclass(frozen=True)
class BinOp:
    op: str            # one of + - * / @ **
    left: "Expr"
    right: "Expr"
    line: int


@dataclass(frozen=True)
class Neg:
    arg: "Expr"
    line: int


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple
    line: int


@dataclass(frozen=True)
class Subscript:
    name: str
    index: "Expr"
    line: int


Expr = Union[Num, Name, BinOp, Neg, Call, Subscript]


@dataclass(frozen=True)
class Equation:
    target: str
    expr: Expr
    line: int


# ASCII digits only: \d would also take other scripts' digits (float() reads "٣" as 3)
_TOKEN = re.compile(r"""
    (?P<ws>[ \t]+) | (?P<comment>\#[^\n]*) | (?P<nl>\n)
  | (?P<num>(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?)
  | (?P<name>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<op>\*\*|[-+*/@=(),\[\]])
""", re.VERBOSE)


class _ParseError(Exception):
    def __init__(self, line: int, msg: str):
        super().__init__(msg)
        self.line = line


def _tokenize(text: str, first_line: int, problems: list):
    """Yield (kind, value, line).  Newlines inside parentheses are dropped."""
    toks = []
    line = first_line
    depth = 0
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            problems.append((line, f"unexpected character {text[pos]!r} in step equations "
                                   "(allowed: names, numbers, + - * / ** @ ( ) [ ] , =)"))
            # skip the rest of this line
            nxt = text.find("\n", pos)
            pos = len(text) if nxt < 0 else nxt
            toks.append(("bad", None, line))
            depth = 0          # resynchronise at the next line
            continue
        kind = m.lastgroup
        val = m.group()
        pos = m.end()
        if kind == "nl":
            if depth == 0:
                toks.append(("nl", "\n", line))
            line += 1
        elif kind in ("ws", "comment"):
            pass
        else:
            if val in "([":
                depth += 1
            elif val in ")]":
                depth = max(0, depth - 1)
            toks.append((kind, val, line))
    toks.append(("nl", "\n", line))
    toks.append(("eof", None, line))
    return toks


class _Parser:
    def __init__(self, toks):
        self.toks = toks
        self.i = 0
        self.depth = 0     # parentheses, calls and subscripts open at this point

    def enter(self, line):
        """Open one more level of nesting; refuse beyond MAX_NESTING, before the parser
        (which recurses once per level) could run out of stack."""
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _ParseError(line, f"expression nested too deeply: at most {MAX_NESTING} "
                                    "parentheses, calls and subscripts may be open inside "
                                    "each other; split it into several equations")

    def peek(self):
        return self.toks[self.i]

    def next(self):
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, val, what):
        t = self.next()
        if t[1] != val:
            got = "end of line" if t[0] == "nl" else repr(t[1])
            raise _ParseError(t[2], f"expected {what}, got {got}")
        return t

    def statement(self):
        t = self.next()
        if t[0] != "name":
            got = "end of line" if t[0] == "nl" else repr(t[1])
            raise _ParseError(t[2], f"an equation must start with 'name =', got {got}")
        self.expect("=", "'=' after the name being defined")
        e = self.expr()
        end = self.peek()
        if end[0] != "nl":
            raise _ParseError(end[2], f"unexpected {end[1]!r} after the end of the expression")
        self.next()
        return Equation(t[1], e, t[2])

    def expr(self):
        left = self.term()
        while self.peek()[1] in ("+", "-") and self.peek()[0] == "op":
            op = self.next()
            left = BinOp(op[1], left, self.term(), op[2])
        return left

    def term(self):
        left = self.unary()
        while self.peek()[1] in ("*", "/", "@") and self.peek()[0] == "op":
            op = self.next()
            left = BinOp(op[1], left, self.unary(), op[2])
        return left

    def unary(self):
        """Leading signs, read in a loop: an even number of minus signs cancels exactly
        (-(-v) is v in floating point), so at most one Neg is built however many."""
        negative, first = False, self.peek()
        while self.peek()[0] == "op" and self.peek()[1] in ("-", "+"):
            if self.next()[1] == "-":
                negative = not negative
        arg = self.power()
        if not negative:
            return arg
        if isinstance(arg, Num):
            return Num(-arg.value, first[2])
        return Neg(arg, first[2])

    def power(self):
        base = self.postfix()
        if self.peek()[0] == "op" and self.peek()[1] == "**":
            op = self.next()
            self.enter(op[2])      # each ** nests its exponent one level deeper
            exponent = self.unary()
            self.depth -= 1
            return BinOp("**", base, exponent, op[2])
        return base

    def postfix(self):
        t = self.next()
        if t[0] == "num":
            value = float(t[1])
            problem = constant_problem(value)
            if problem:
                raise _ParseError(t[2], f"{problem} (written {_short(t[1])})")
            return Num(value, t[2])
        if t[0] == "name":
            nxt = self.peek()
            if nxt[1] == "(" and nxt[0] == "op":
                self.next()
                self.enter(nxt[2])
                args = [self.expr()]
                while self.peek()[1] == ",":
                    self.next()
                    args.append(self.expr())
                self.expect(")", f"')' closing the call of {t[1]}")
                self.depth -= 1
                return Call(t[1], tuple(args), t[2])
            if nxt[1] == "[" and nxt[0] == "op":
                self.next()
                self.enter(nxt[2])
                idx = self.expr()
                self.expect("]", f"']' closing the subscript of {t[1]}")
                self.depth -= 1
                return Subscript(t[1], idx, t[2])
            return Name(t[1], t[2])
        if t[0] == "op" and t[1] == "(":
            self.enter(t[2])
            e = self.expr()
            self.expect(")", "')'")
            self.depth -= 1
            return e
        got = "end of line" if t[0] == "nl" else repr(t[1])
        raise _ParseError(t[2], f"expected a name, number or '(', got {got}")

    def skip_line(self):
        while self.peek()[0] not in ("nl", "eof"):
            self.next()
        if self.peek()[0] == "nl":
            self.next()


def parse_equations(text: str, first_line: int, problems: list) -> list[Equation]:
    """Parse the step block.  Syntax errors are appended to ``problems``."""
    toks = _tokenize(text, first_line, problems)
    p = _Parser(toks)
    eqs = []
    while p.peek()[0] != "eof":
        if p.peek()[0] == "nl":
            p.next()
            continue
        if p.peek()[0] == "bad":
            p.skip_line()
            continue
        start = p.i
        p.depth = 0
        try:
            eqs.append(p.statement())
        except _ParseError as e:
            if not any(k == "bad" for k, _, _ in toks[start:p.i + 1]):
                problems.append((e.line, e.msg if hasattr(e, "msg") else str(e)))
            p.skip_line()
    return eqs


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else f"{text[:n // 2]}...{text[-n // 2:]} ({len(text)} characters)"


def names_in(e: Expr):
    """Every Name / Subscript base in ``e``, left to right (for dependency checks).
    Walked with a stack: a chain of a thousand ``+`` is a tree a thousand deep."""
    stack = [e]
    while stack:
        e = stack.pop()
        if isinstance(e, Name):
            yield e
        elif isinstance(e, BinOp):
            stack += (e.right, e.left)
        elif isinstance(e, Neg):
            stack.append(e.arg)
        elif isinstance(e, Call):
            stack.extend(reversed(e.args))
        elif isinstance(e, Subscript):
            yield Name(e.name, e.line)
            stack.append(e.index)


_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 2, "**": 4}


def unparse(e: Expr) -> str:
    """An expression as the spec language writes it, with only the parentheses it needs
    (names are identifiers and numbers floats, so the text is safe in a C comment)."""
    def prec(x):
        if isinstance(x, BinOp):
            return _PREC[x.op]
        return 3 if isinstance(x, Neg) else 5

    def wrap(x, parens):
        t = unparse(x)
        return f"({t})" if parens else t
    if isinstance(e, Num):
        v = e.value
        return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Neg):
        return "-" + wrap(e.arg, prec(e.arg) < 3)
    if isinstance(e, Call):
        return f"{e.func}({', '.join(unparse(a) for a in e.args)})"
    if isinstance(e, Subscript):
        return f"{e.name}[{unparse(e.index)}]"
    p = _PREC[e.op]
    if e.op == "**":
        left, right = wrap(e.left, prec(e.left) <= p), wrap(e.right, prec(e.right) < p)
    else:
        left, right = wrap(e.left, prec(e.left) < p), wrap(e.right, prec(e.right) <= p)
    return f"{left} {e.op} {right}"
