"""Stage 1: read a cell spec (YAML) into frozen, typed objects.

Every problem is reported with file and line, and all problems of a spec are
reported together in one :class:`~rnngen.errors.SpecError`.  This module checks
the structure of the file; :mod:`rnngen.ir` checks the equations' meaning
(names, shapes, definitions) when it lowers them.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import yaml

from .errors import SpecError
from .expr import (FLT_MAX, FLT_MIN, constant_problem, MAX_LAG, MAX_NESTING, MAX_OPERATIONS,  # noqa: F401
                   MAX_PHASES, MAX_SUM_TERMS, Equation, parse_equations)
from .functions import ACTIVATIONS, BINARY, FUNCTIONS, NOT_ELEMENTWISE
from .initializers import INITS

TOP_KEYS = ("name", "doc", "params", "weights", "state", "step", "output")
REQUIRED_KEYS = ("name", "weights", "state", "step", "output")
WEIGHT_KEYS = ("shape", "init", "count", "doc")
DIMS = ("input_dim", "output_dim")
ALLOWED_SHAPES = {("input_dim", "output_dim"): "input matrix",
                  ("output_dim", "output_dim"): "recurrent matrix",
                  ("output_dim",): "vector"}
# Names the equations may use that the spec does not declare.
RESERVED = {"x", "input_dim", "output_dim", "sum", "started", "mean"} | set(FUNCTIONS) | set(BINARY)
# a number YAML 1.1 reads as a string (1e-5: no dot), taken as a float parameter
_FLOAT_TEXT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z")
# Limits on a spec (README, "Spec format"; those on equations are in expr.py).  Each
# is checked before the work it bounds, so any text is rejected or loaded quickly.
MAX_SPEC_CHARS = 1_000_000   # the file's text
MAX_NAME = 100               # the cell's name (its library's file names hold it)
MAX_YAML_DEPTH = 20          # lists and mappings inside each other (a spec needs 4)
MAX_COUNT = 256              # members of a weight family (count:)
MAX_INT_PARAM = 256          # value of an integer parameter (default or given to a layer)
MAX_ENTRIES = 1000           # parameters, weights, states, equations: of each at most this
# \Z, not $: $ also matches before a trailing newline
_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*\Z")


def is_identifier(s: object) -> bool:
    """Whether s is a plain ASCII identifier: the whitelist for any text from a spec, a
    file name or a path that may appear in generated code."""
    return isinstance(s, str) and _IDENT.match(s) is not None


@dataclass(frozen=True)
class Param:
    name: str
    default: Union[str, int, float]
    kind: str                   # "activation" | "init" | "int" | "float"
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


class _TooMany(Exception):
    def __init__(self, line, msg):
        super().__init__(msg)
        self.line = line


class _TooDeep(yaml.YAMLError):
    def __init__(self, mark):
        super().__init__()
        self.problem_mark = mark


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing to nest lists and mappings deeper than
    MAX_YAML_DEPTH: its composer recurses once per level (500 ``[`` raised
    RecursionError)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _line(node) -> int:
    return node.start_mark.line + 1


def _plain_value(text: str):
    """What YAML makes of a plain (unquoted) scalar: int, float, bool, None or str."""
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError):
        # an int of more than 4300 digits, which int() refuses to read: only its size
        # matters (it is out of every range), and 10 ** (digits - 1) has that size
        m = re.fullmatch(r"([-+]?)[0-9][0-9_]*", text)
        if m:
            return (-1 if m.group(1) == "-" else 1) * 10 ** (len(text.lstrip("+-").replace("_", "")) - 1)
        return text


def _scalar(node, problems, what, types=(str,)):
    if not isinstance(node, yaml.ScalarNode):
        problems.append((_line(node), f"{what} must be a single value, not a list or mapping"))
        return None
    value = _plain_value(node.value) if node.style is None else node.value
    if not isinstance(value, types) or isinstance(value, bool):
        tn = " or ".join(t.__name__ for t in types)
        problems.append((_line(node), f"{what} must be a {tn}, got {_short(node.value)}"))
        return None
    return value


def _too_many(node, items, what):
    """Refuse more than MAX_ENTRIES items at once (checks of each against the others
    would take quadratic time)."""
    if len(items) > MAX_ENTRIES:
        raise _TooMany(_line(node), f"{what}: {len(items)} entries; at most {MAX_ENTRIES} "
                                    "are allowed")


def _mapping(node, problems, what):
    if not isinstance(node, yaml.MappingNode):
        problems.append((_line(node), f"{what} must be a mapping (key: value)"))
        return []
    _too_many(node, node.value, what)
    seen = {}
    out = []
    for k, v in node.value:
        key = k.value if isinstance(k, yaml.ScalarNode) else None
        if key is None:
            problems.append((_line(k), f"{what}: keys must be plain names"))
            continue
        if key in seen:
            problems.append((_line(k), f"{what}: {_short(key)} given twice (first on line {seen[key]})"))
            continue
        seen[key] = _line(k)
        out.append((key, k, v))
    return out


def _short(text: str, n: int = 60) -> str:
    """repr(text), shortened in the middle when long (a message quotes it)."""
    r = repr(text)
    return r if len(r) <= n else f"{r[:n // 2]}...{r[-n // 2:]} ({len(text)} characters)"


def _int_text(v: int) -> str:
    """An integer for a message (str() refuses ints of more than 4300 digits)."""
    return str(v) if abs(v) < 10 ** 30 else f"a {v.bit_length()}-bit integer"


def _suggest(word, choices):
    import difflib
    m = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {m[0]!r}?)" if m else ""


def load_spec(path: Union[str, Path]) -> CellSpec:
    """Read and check a cell spec file; raise SpecError listing every problem."""
    path = Path(path)
    return parse_spec(_read_spec_file(path), str(path))


def _read_spec_file(path: Path) -> str:
    """The text of a spec file: a regular file (not a device, FIFO or directory: /dev/zero
    would read until memory runs out, a FIFO block forever), read up to the size limit and
    no further, UTF-8."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        hint = ""
        if isinstance(e, FileNotFoundError) and path.parts[:1] == ("examples",):
            from .pipeline import EXAMPLES   # a checkout's examples/ outside a checkout
            if (EXAMPLES / path.name).is_file():
                hint = (f" (paths are relative to the current directory; the example "
                        f"shipped with rnngen is rnngen.load_example({path.stem!r}))")
        raise SpecError(str(path), [(0, f"cannot read the spec file: {e.strerror}{hint}")]) \
            from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecError(str(path), [(0, "the spec must be a regular file (this is a "
                                            + _file_kind(st.st_mode) + ")")])
        limit = 4 * MAX_SPEC_CHARS   # UTF-8 takes at most 4 bytes a character
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise SpecError(str(path), [(0, f"cannot read the spec file: {e.strerror}")]) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise SpecError(str(path), [(0, f"the spec file is larger than {limit} bytes; at most "
                                        f"{MAX_SPEC_CHARS} characters are allowed")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise SpecError(str(path), [(line, f"the spec is not UTF-8 text (byte "
                                           f"{data[e.start]:#04x} at offset {e.start})")]) from None


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def parse_spec(text: str, path: str = "<string>") -> CellSpec:
    """Check a spec's text (``path`` names it in messages); raise SpecError listing
    every problem."""
    problems: list[tuple[int, str]] = []
    if len(text) > MAX_SPEC_CHARS:
        raise SpecError(path, [(0, f"the spec has {len(text)} characters; at most "
                                   f"{MAX_SPEC_CHARS} are allowed")])
    try:
        root = yaml.compose(text, Loader=_Loader)
    except _TooDeep as e:
        raise SpecError(path, [(e.problem_mark.line + 1, "YAML nested too deeply: at most "
                                f"{MAX_YAML_DEPTH} lists and mappings may be inside each "
                                "other (a spec needs 4)")]) from None
    except RecursionError:   # not expected past the depth check; still a located answer
        raise SpecError(path, [(0, "YAML nested too deeply to read")]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise SpecError(path, [(line, f"not valid YAML: {getattr(e, 'problem', e)}")]) from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise SpecError(path, [(1, "a cell spec must be a YAML mapping with keys "
                                   + ", ".join(TOP_KEYS))])
    try:
        return _parse_root(root, text, path, problems)
    except _TooMany as e:
        raise SpecError(path, problems + [(e.line, str(e))]) from None


def _parse_root(root, text: str, path: str, problems: list) -> CellSpec:
    top = {}
    for key, knode, vnode in _mapping(root, problems, "spec"):
        if key not in TOP_KEYS:
            problems.append((_line(knode), f"unknown key {_short(key)}{_suggest(key, TOP_KEYS)}; "
                                           f"allowed keys: {', '.join(TOP_KEYS)}"))
            continue
        top[key] = vnode
    for key in REQUIRED_KEYS:
        if key not in top:
            problems.append((1, f"missing required key {_short(key)}"))

    name = _scalar(top["name"], problems, "name") if "name" in top else None
    if name is not None and not is_identifier(name):
        problems.append((_line(top["name"]), f"name {_short(name)} must be an identifier "
                                             "(letters, digits, underscore)"))
    elif name is not None and len(name) > MAX_NAME:
        problems.append((_line(top["name"]), f"the name has {len(name)} characters; at most "
                                             f"{MAX_NAME} are allowed (it names the library "
                                             f"and its files)"))
    doc = (_scalar(top["doc"], problems, "doc") if "doc" in top else "") or ""

    # params.  loose_*: what the equations may be checked against although the
    # declaration had a problem (so a file's every problem is reported at once)
    params, loose_params, loose_weights, invalid_names = [], [], [], set()
    if "params" in top:
        for pname, knode, vnode in _mapping(top["params"], problems, "params"):
            line = _line(knode)
            if not is_identifier(pname) or pname in RESERVED:
                problems.append((line, f"parameter name {_short(pname)} is not allowed "
                                       "(reserved or not an identifier)"))
                continue
            default = _scalar(vnode, problems, f"default of parameter {_short(pname)}",
                              (str, int, float))
            if default is None:
                continue
            if isinstance(default, str) and _FLOAT_TEXT.match(default):
                default = float(default)
            if isinstance(default, float):
                problem = constant_problem(default)
                if problem:
                    problems.append((line, f"float parameter {_short(pname)}: {problem}"))
                    continue
                kind = "float"
            elif isinstance(default, int):
                if not 1 <= default <= MAX_INT_PARAM:
                    problems.append((line, f"integer parameter {_short(pname)} must default to an "
                                           f"integer from 1 to {MAX_INT_PARAM}, got "
                                           f"{_int_text(default)}"))
                    continue
                kind = "int"
            elif default in ACTIVATIONS:
                kind = "activation"
            elif default in INITS:
                kind = "init"
            elif default in NOT_ELEMENTWISE:
                problems.append((line, f"parameter {_short(pname)}: {_short(default)} cannot be a recurrent "
                                       f"activation ({NOT_ELEMENTWISE[default]})"))
                continue
            else:
                problems.append((line, f"parameter {_short(pname)}: default {_short(default)} is neither an "
                                       f"activation ({', '.join(ACTIVATIONS)}), an init "
                                       f"({', '.join(INITS)}), an integer nor a number"
                                       f"{_suggest(default, ACTIVATIONS + tuple(INITS))}"))
                continue
            params.append(Param(pname, default, kind, line))
        declared = {p.name for p in params}
        for pname, knode, vnode in _mapping(top["params"], [], "params"):
            if is_identifier(pname) and pname not in RESERVED and pname not in declared:
                invalid_names.add(pname)
                v = _plain_value(vnode.value) if isinstance(vnode, yaml.ScalarNode) else None
                loose_params.append(Param(pname, 1, "int", _line(knode)) if isinstance(v, int)
                                    else Param(pname, "linear", "activation", _line(knode)))
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
                problems.append((line, f"weight name {_short(wname)} is not allowed "
                                       "(reserved, a parameter, or not an identifier)"))
                continue
            fields = {}
            for key, fk, fv in _mapping(vnode, problems, f"weight {_short(wname)}"):
                if key not in WEIGHT_KEYS:
                    problems.append((_line(fk), f"weight {_short(wname)}: unknown key {_short(key)}"
                                                f"{_suggest(key, WEIGHT_KEYS)}; allowed keys: "
                                                f"{', '.join(WEIGHT_KEYS)}"))
                else:
                    fields[key] = fv
            ok = True
            shape = None
            if "shape" not in fields:
                problems.append((line, f"weight {_short(wname)}: missing 'shape' (e.g. "
                                       "[input_dim, output_dim])"))
                ok = False
            else:
                sn = fields["shape"]
                if not isinstance(sn, yaml.SequenceNode) or not all(
                        isinstance(d, yaml.ScalarNode) for d in sn.value):
                    problems.append((_line(sn), f"weight {_short(wname)}: shape must be a list such "
                                                "as [input_dim, output_dim]"))
                    ok = False
                else:
                    shape = tuple(d.value for d in sn.value)
                    if shape not in ALLOWED_SHAPES:
                        problems.append((_line(sn), f"weight {_short(wname)}: unsupported shape "
                                                    f"[{', '.join(shape)}]; allowed: "
                                                    "[input_dim, output_dim], "
                                                    "[output_dim, output_dim], [output_dim]"))
                        ok = False
            init = None
            if "init" not in fields:
                problems.append((line, f"weight {_short(wname)}: missing 'init' (an init name such as "
                                       "zero, or the name of an init parameter)"))
                ok = False
            else:
                init = _scalar(fields["init"], problems, f"init of weight {_short(wname)}")
                if init is not None and init not in INITS and pkinds.get(init) != "init":
                    problems.append((_line(fields["init"]),
                                     f"weight {_short(wname)}: init {_short(init)} is neither an init "
                                     f"parameter ({', '.join(k for k, v in pkinds.items() if v == 'init') or 'none declared'}) "
                                     f"nor an init name ({', '.join(INITS)})"
                                     f"{_suggest(init, list(INITS) + [k for k, v in pkinds.items() if v == 'init'])}"))
                    ok = False
            count = None
            if "count" in fields:
                count = _scalar(fields["count"], problems, f"count of weight {_short(wname)}", (int, str))
                if isinstance(count, int) and not 1 <= count <= MAX_COUNT:
                    problems.append((_line(fields["count"]),
                                     f"weight {_short(wname)}: count must be an integer from 1 to "
                                     f"{MAX_COUNT}, got {_int_text(count)}"))
                    ok = False
                elif isinstance(count, str) and pkinds.get(count) != "int":
                    problems.append((_line(fields["count"]),
                                     f"weight {_short(wname)}: count {_short(count)} must be an integer or "
                                     "the name of an integer parameter"))
                    ok = False
            if ok and init is not None:
                weights.append(WeightDecl(wname, shape, init, count, line))
            elif shape in ALLOWED_SHAPES:
                good_count = count if isinstance(count, int) and 1 <= count <= MAX_COUNT or \
                    pkinds.get(count) == "int" else None
                loose_weights.append(WeightDecl(wname, shape, "zero", good_count, line))
            else:
                invalid_names.add(wname)

    # state
    states = []
    if "state" in top:
        sn = top["state"]
        items = [sn] if isinstance(sn, yaml.ScalarNode) else (
            sn.value if isinstance(sn, yaml.SequenceNode) else None)
        if items is None:
            problems.append((_line(sn), "state must be a name or a list of names, e.g. [h, c]"))
            items = []
        _too_many(sn, items, "state")
        wnames = {w.name for w in weights}
        seen_states = set()
        for it in items:
            s = _scalar(it, problems, "a state name")
            if s is None:
                continue
            if not is_identifier(s) or s in RESERVED or s in pkinds or s in wnames:
                problems.append((_line(it), f"state name {_short(s)} is not allowed (reserved, "
                                            "a parameter or weight, or not an identifier)"))
            elif s in seen_states:
                problems.append((_line(it), f"state {_short(s)} listed twice"))
            else:
                states.append(s)
                seen_states.add(s)
        if not items:
            problems.append((_line(sn), "declare at least one state vector"))

    output = None
    if "output" in top:
        output = _scalar(top["output"], problems, "output")

    equations = []
    if "step" in top:
        sn = top["step"]
        body = _scalar(sn, problems, "step")
        if body is not None:
            first = sn.start_mark.line + (2 if sn.style in ("|", ">") else 1)
            before = len(problems)
            equations = parse_equations(body, first, problems)
            if len(equations) > MAX_ENTRIES:
                problems.append((_line(sn), f"step: {len(equations)} equations; at most "
                                            f"{MAX_ENTRIES} are allowed"))
            if not equations and len(problems) == before:
                problems.append((_line(sn), "step: no equations"))

    if output is not None and output not in states \
            and output not in {eq.target for eq in equations}:
        problems.append((_line(top["output"]), f"output {_short(output)} must be a state "
                                               f"({', '.join(states)}) or a value defined in "
                                               f"step{_suggest(output, list(states) + [eq.target for eq in equations])}"))

    if problems:
        err = SpecError(path, problems)
        if states and equations:   # the equations can still be checked: see check_equations
            err.partial = CellSpec(
                name if isinstance(name, str) and is_identifier(name) else "Cell", "",
                tuple(params + loose_params), tuple(weights + loose_weights), tuple(states),
                tuple(equations), output if output in states or output in
                {eq.target for eq in equations} else states[0], path, text)
            err.invalid_names = frozenset(invalid_names)
        raise err
    return CellSpec(name, doc.strip(), tuple(params), tuple(weights), tuple(states),
                    tuple(equations), output, path, text)
