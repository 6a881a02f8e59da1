"""Tokenizer and parser for the step equations of a cell spec.

The grammar is a whitelist; nothing in a spec is ever evaluated by Python or
copied into C as text.  Equations are ``name = expr``, one per line (a line may
continue while a parenthesis is open), ``#`` starts a comment::

    expr    := term (('+' | '-') term)*
    term    := unary (('*' | '/' | '@') unary)*
    unary   := '-' unary | postfix
    postfix := NAME '[' expr ']' | NAME '(' expr (',' expr)* ')' | atom
    atom    := NUMBER | NAME | '(' expr ')'

``@`` is a matrix product and binds like ``*`` (as in Python).  ``h[-k]`` is a
lag subscript on a state, ``U[k]`` an element of a weight family.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union


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
    op: str            # one of + - * / @
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


_TOKEN = re.compile(r"""
    (?P<ws>[ \t]+) | (?P<comment>\#[^\n]*) | (?P<nl>\n)
  | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<op>[-+*/@=(),\[\]])
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
                                   "(allowed: names, numbers, + - * / @ ( ) [ ] , =)"))
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
        t = self.peek()
        if t[0] == "op" and t[1] == "-":
            self.next()
            arg = self.unary()
            if isinstance(arg, Num):
                return Num(-arg.value, t[2])
            return Neg(arg, t[2])
        if t[0] == "op" and t[1] == "+":
            self.next()
            return self.unary()
        return self.postfix()

    def postfix(self):
        t = self.next()
        if t[0] == "num":
            return Num(float(t[1]), t[2])
        if t[0] == "name":
            nxt = self.peek()
            if nxt[1] == "(" and nxt[0] == "op":
                self.next()
                args = [self.expr()]
                while self.peek()[1] == ",":
                    self.next()
                    args.append(self.expr())
                self.expect(")", f"')' closing the call of {t[1]}")
                return Call(t[1], tuple(args), t[2])
            if nxt[1] == "[" and nxt[0] == "op":
                self.next()
                idx = self.expr()
                self.expect("]", f"']' closing the subscript of {t[1]}")
                return Subscript(t[1], idx, t[2])
            return Name(t[1], t[2])
        if t[0] == "op" and t[1] == "(":
            e = self.expr()
            self.expect(")", "')'")
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
        try:
            eqs.append(p.statement())
        except _ParseError as e:
            if not any(k == "bad" for k, _, _ in toks[start:p.i + 1]):
                problems.append((e.line, e.msg if hasattr(e, "msg") else str(e)))
            p.skip_line()
    return eqs


def names_in(e: Expr):
    """Every Name / Subscript base / Call name in ``e`` (for dependency checks)."""
    if isinstance(e, Name):
        yield e
    elif isinstance(e, BinOp):
        yield from names_in(e.left)
        yield from names_in(e.right)
    elif isinstance(e, Neg):
        yield from names_in(e.arg)
    elif isinstance(e, Call):
        for a in e.args:
            yield from names_in(a)
    elif isinstance(e, Subscript):
        yield Name(e.name, e.line)
        yield from names_in(e.index)
