"""Stage 1: read a cell spec (YAML) into frozen, typed objects.

Every problem is reported with file and line, and all problems of a spec are
reported together in one :class:`~rnngen.errors.SpecError`.  This module checks
the structure of the file; :mod:`rnngen.ir` checks the equations' meaning
(names, shapes, definitions) when it lowers them.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import yaml

from .errors import SpecError
from .expr import Equation, parse_equations
from .functions import ACTIVATIONS, FUNCTIONS, NOT_ELEMENTWISE
from .initializers import INITS

TOP_KEYS = ("name", "doc", "params", "weights", "state", "step", "output")
REQUIRED_KEYS = ("name", "weights", "state", "step", "output")
WEIGHT_KEYS = ("shape", "init", "count", "doc")
DIMS = ("input_dim", "output_dim")
ALLOWED_SHAPES = {("input_dim", "output_dim"): "input matrix",
                  ("output_dim", "output_dim"): "recurrent matrix",
                  ("output_dim",): "vector"}
# Names the equations may use that the spec does not declare.
RESERVED = {"x", "input_dim", "output_dim", "sum", "started"} | set(FUNCTIONS)
# \Z, not $: $ also matches before a trailing newline
_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*\Z")


def is_identifier(s: object) -> bool:
    """Whether s is a plain ASCII identifier: the whitelist for any text from a spec, a
    file name or a path that may appear in generated code."""
    return isinstance(s, str) and _IDENT.match(s) is not None


@dataclass(frozen=True)
class Param:
    name: str
    default: Union[str, int]
    kind: str                   # "activation" | "init" | "int"
    line: int


@dataclass(frozen=True)
class WeightDecl:
    name: str
    shape: tuple                # of "input_dim" / "output_dim"
    init: str                   # an init name or the name of an init param
    count: Union[None, int, str]  # a family U[1..count]; int or int param name
    line: int

    @property
    def role(self) -> str:
        return ALLOWED_SHAPES[self.shape]


@dataclass(frozen=True)
class CellSpec:
    name: str
    doc: str
    params: tuple               # of Param, in declared order
    weights: tuple              # of WeightDecl, in weights= order
    states: tuple               # of str
    equations: tuple            # of Equation
    output: str
    path: str
    text: str                   # the file's text, for hashing

    def param(self, name: str) -> Optional[Param]:
        return next((p for p in self.params if p.name == name), None)

    def weight(self, name: str) -> Optional[WeightDecl]:
        return next((w for w in self.weights if w.name == name), None)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _line(node) -> int:
    return node.start_mark.line + 1


def _scalar(node, problems, what, types=(str,)):
    if not isinstance(node, yaml.ScalarNode):
        problems.append((_line(node), f"{what} must be a single value, not a list or mapping"))
        return None
    value = yaml.safe_load(node.value) if node.style is None else node.value
    if not isinstance(value, types) or isinstance(value, bool):
        tn = " or ".join(t.__name__ for t in types)
        problems.append((_line(node), f"{what} must be a {tn}, got {node.value!r}"))
        return None
    return value


def _mapping(node, problems, what):
    if not isinstance(node, yaml.MappingNode):
        problems.append((_line(node), f"{what} must be a mapping (key: value)"))
        return []
    seen = {}
    out = []
    for k, v in node.value:
        key = k.value if isinstance(k, yaml.ScalarNode) else None
        if key is None:
            problems.append((_line(k), f"{what}: keys must be plain names"))
            continue
        if key in seen:
            problems.append((_line(k), f"{what}: {key!r} given twice (first on line {seen[key]})"))
            continue
        seen[key] = _line(k)
        out.append((key, k, v))
    return out


def _suggest(word, choices):
    import difflib
    m = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {m[0]!r}?)" if m else ""


def load_spec(path: Union[str, Path]) -> CellSpec:
    """Read and check a cell spec file; raise SpecError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(str(path), [(0, f"cannot read the spec file: {e.strerror}")]) from None
    return parse_spec(text, str(path))


def parse_spec(text: str, path: str = "<string>") -> CellSpec:
    problems: list[tuple[int, str]] = []
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise SpecError(path, [(line, f"not valid YAML: {getattr(e, 'problem', e)}")]) from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise SpecError(path, [(1, "a cell spec must be a YAML mapping with keys "
                                   + ", ".join(TOP_KEYS))])
    top = {}
    for key, knode, vnode in _mapping(root, problems, "spec"):
        if key not in TOP_KEYS:
            problems.append((_line(knode), f"unknown key {key!r}{_suggest(key, TOP_KEYS)}; "
                                           f"allowed keys: {', '.join(TOP_KEYS)}"))
            continue
        top[key] = vnode
    for key in REQUIRED_KEYS:
        if key not in top:
            problems.append((1, f"missing required key {key!r}"))

    name = _scalar(top["name"], problems, "name") if "name" in top else None
    if name is not None and not is_identifier(name):
        problems.append((_line(top["name"]), f"name {name!r} must be an identifier "
                                             "(letters, digits, underscore)"))
    doc = (_scalar(top["doc"], problems, "doc") if "doc" in top else "") or ""

    # params
    params = []
    if "params" in top:
        for pname, knode, vnode in _mapping(top["params"], problems, "params"):
            line = _line(knode)
            if not is_identifier(pname) or pname in RESERVED:
                problems.append((line, f"parameter name {pname!r} is not allowed "
                                       "(reserved or not an identifier)"))
                continue
            default = _scalar(vnode, problems, f"default of parameter {pname!r}", (str, int))
            if default is None:
                continue
            if isinstance(default, int):
                if default < 1:
                    problems.append((line, f"integer parameter {pname!r} must default to "
                                           f">= 1, got {default}"))
                    continue
                kind = "int"
            elif default in ACTIVATIONS:
                kind = "activation"
            elif default in INITS:
                kind = "init"
            elif default in NOT_ELEMENTWISE:
                problems.append((line, f"parameter {pname!r}: {default!r} cannot be a recurrent "
                                       f"activation ({NOT_ELEMENTWISE[default]})"))
                continue
            else:
                problems.append((line, f"parameter {pname!r}: default {default!r} is neither an "
                                       f"activation ({', '.join(ACTIVATIONS)}), an init "
                                       f"({', '.join(INITS)}) nor an integer"))
                continue
            params.append(Param(pname, default, kind, line))
    pkinds = {p.name: p.kind for p in params}

    # weights
    weights = []
    if "weights" in top:
        wmap = _mapping(top["weights"], problems, "weights")
        if not wmap and isinstance(top["weights"], yaml.MappingNode):
            problems.append((_line(top["weights"]), "weights: declare at least one weight"))
        for wname, knode, vnode in wmap:
            line = _line(knode)
            if not is_identifier(wname) or wname in RESERVED or wname in pkinds:
                problems.append((line, f"weight name {wname!r} is not allowed "
                                       "(reserved, a parameter, or not an identifier)"))
                continue
            fields = {}
            for key, fk, fv in _mapping(vnode, problems, f"weight {wname!r}"):
                if key not in WEIGHT_KEYS:
                    problems.append((_line(fk), f"weight {wname!r}: unknown key {key!r}"
                                                f"{_suggest(key, WEIGHT_KEYS)}; allowed keys: "
                                                f"{', '.join(WEIGHT_KEYS)}"))
                else:
                    fields[key] = fv
            ok = True
            shape = None
            if "shape" not in fields:
                problems.append((line, f"weight {wname!r}: missing 'shape' (e.g. "
                                       "[input_dim, output_dim])"))
                ok = False
            else:
                sn = fields["shape"]
                if not isinstance(sn, yaml.SequenceNode) or not all(
                        isinstance(d, yaml.ScalarNode) for d in sn.value):
                    problems.append((_line(sn), f"weight {wname!r}: shape must be a list such "
                                                "as [input_dim, output_dim]"))
                    ok = False
                else:
                    shape = tuple(d.value for d in sn.value)
                    if shape not in ALLOWED_SHAPES:
                        problems.append((_line(sn), f"weight {wname!r}: unsupported shape "
                                                    f"[{', '.join(shape)}]; allowed: "
                                                    "[input_dim, output_dim], "
                                                    "[output_dim, output_dim], [output_dim]"))
                        ok = False
            init = None
            if "init" not in fields:
                problems.append((line, f"weight {wname!r}: missing 'init' (an init name such as "
                                       "zero, or the name of an init parameter)"))
                ok = False
            else:
                init = _scalar(fields["init"], problems, f"init of weight {wname!r}")
                if init is not None and init not in INITS and pkinds.get(init) != "init":
                    problems.append((_line(fields["init"]),
                                     f"weight {wname!r}: init {init!r} is neither an init "
                                     f"parameter ({', '.join(k for k, v in pkinds.items() if v == 'init') or 'none declared'}) "
                                     f"nor an init name ({', '.join(INITS)})"))
                    ok = False
            count = None
            if "count" in fields:
                count = _scalar(fields["count"], problems, f"count of weight {wname!r}", (int, str))
                if isinstance(count, int) and count < 1:
                    problems.append((_line(fields["count"]), f"weight {wname!r}: count must be "
                                                             ">= 1"))
                    ok = False
                elif isinstance(count, str) and pkinds.get(count) != "int":
                    problems.append((_line(fields["count"]),
                                     f"weight {wname!r}: count {count!r} must be an integer or "
                                     "the name of an integer parameter"))
                    ok = False
            if ok and init is not None:
                weights.append(WeightDecl(wname, shape, init, count, line))

    # state
    states = []
    if "state" in top:
        sn = top["state"]
        items = [sn] if isinstance(sn, yaml.ScalarNode) else (
            sn.value if isinstance(sn, yaml.SequenceNode) else None)
        if items is None:
            problems.append((_line(sn), "state must be a name or a list of names, e.g. [h, c]"))
            items = []
        wnames = {w.name for w in weights}
        for it in items:
            s = _scalar(it, problems, "a state name")
            if s is None:
                continue
            if not is_identifier(s) or s in RESERVED or s in pkinds or s in wnames:
                problems.append((_line(it), f"state name {s!r} is not allowed (reserved, "
                                            "a parameter or weight, or not an identifier)"))
            elif s in states:
                problems.append((_line(it), f"state {s!r} listed twice"))
            else:
                states.append(s)
        if not items:
            problems.append((_line(sn), "declare at least one state vector"))

    output = None
    if "output" in top:
        output = _scalar(top["output"], problems, "output")
        if output is not None and output not in states:
            problems.append((_line(top["output"]), f"output {output!r} must be one of the "
                                                   f"states ({', '.join(states)})"))

    equations = []
    if "step" in top:
        sn = top["step"]
        body = _scalar(sn, problems, "step")
        if body is not None:
            first = sn.start_mark.line + (2 if sn.style in ("|", ">") else 1)
            before = len(problems)
            equations = parse_equations(body, first, problems)
            if not equations and len(problems) == before:
                problems.append((_line(sn), "step: no equations"))

    if problems:
        raise SpecError(path, problems)
    return CellSpec(name, doc.strip(), tuple(params), tuple(weights), tuple(states),
                    tuple(equations), output, path, text)
