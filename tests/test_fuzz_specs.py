"""Fuzzing the spec stages: any text is either accepted (and then renders) or rejected
with a SpecError that names the file; nothing else (RecursionError, MemoryError, a hang,
a ValueError from deep inside) may come out of parse_spec followed by compute_ir.

Profiles (``RNNGEN_FUZZ_PROFILE``): ``quick`` (the default, in the suite: a few hundred
examples; six accepted specs from a fixed seed built and run on both backends) and ``long``
(``make fuzz``: many more examples, the accepted specs compiled too, up to
``RNNGEN_FUZZ_COMPILE`` distinct sources, default 40, and ``RNNGEN_FUZZ_BUILD_RUN`` new
random ones, default 40, built and run on both backends)."""
import os
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rnngen.errors import SpecError
from rnngen.ir import compute_ir
from rnngen.render import render_c
from rnngen.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent
BASES = [p.read_text() for p in sorted((ROOT / "specs").glob("*.yaml"))] + [
    (ROOT / "examples" / "mgu.yaml").read_text()]

_common = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("quick", max_examples=200, **_common)
settings.register_profile("long", max_examples=6000, **_common)
PROFILE = os.environ.get("RNNGEN_FUZZ_PROFILE", "quick")
FUZZ = settings(settings.get_profile(PROFILE))
COMPILE_MAX = int(os.environ.get("RNNGEN_FUZZ_COMPILE", "40")) if PROFILE == "long" else 0
_compiled: set = set()
SECONDS_PER_SPEC = 30      # parse + lower + render; a hang fails the test instead of CI


def _alarm(signum, frame):
    raise TimeoutError(f"one spec took more than {SECONDS_PER_SPEC} s")


def check(text: str) -> str:
    """The only allowed outcomes: accepted (and rendered) or a located SpecError."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS_PER_SPEC)
    try:
        try:
            ir = compute_ir(parse_spec(text, "fuzz.yaml"))
        except SpecError as e:
            assert e.problems, "a SpecError lists at least one problem"
            assert all(isinstance(line, int) and line >= 0 and msg for line, msg in e.problems)
            assert str(e).count("fuzz.yaml") >= len(e.problems) + 1
            return "rejected"
        header, source = render_c(ir, "x")
        assert ir.name and source and header
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if len(_compiled) < COMPILE_MAX and source not in _compiled:
        from rnngen.build import build_library
        _compiled.add(source)
        assert build_library(ir.name, header, source).exists()
    return "accepted"


def test_the_built_in_specs_are_accepted():
    assert [check(t) for t in BASES] == ["accepted"] * len(BASES)


# -- random text --------------------------------------------------------------------
YAML_CHARS = st.sampled_from(list("abhxUW_[]{}():,-+*/@=#&!|>?'\"\n\t 0123456789.eE%\\")
                             + ["\u00e9", "\u0000", "\u202e", "\ufeff", "\u2028", "\u0663",
                                "\U0001d489", "\ud7ff", "\uffff"])


@FUZZ
@given(st.one_of(st.text(max_size=400), st.text(YAML_CHARS, max_size=400)))
def test_random_text(text):
    event(check(text))


# -- mutations of the built-in specs -------------------------------------------------
TOKENS = ["(", ")", "[", "]", "{", "}", ",", ":", "-", "+", "*", "/", "@", "=", "#", "\n",
          "\n  ", "  ", "\t", "h", "c", "x", "f", "k", "U", "W", "h[-1]", "h[-2]", "U[1]", "U[0]",
          "x @ W", "h @ U", " @ U_h", "sum(k, 1, 3, h[-k] @ U[k])", "sum(k, 1, depth, ",
          "started(h[-2])", "tanh(", "sigmoid(", "activation(", "exp(", "1", "0", "-0",
          "2.5", "1e39", "1e999", "1e-50", "3.4028235e38", "1e308", "1e30 * 1e30",
          "99999999999999999999", "-100000000000000000000", "count: 3", "count: 1000000000",
          "depth: 100000", "depth", "&a", "*a", "!!python/object/apply:os.system ['true']",
          "? ", "| ", "> ", "'", '"', "---", "...", "%YAML 1.2", "\u00e9", "\u0000", "\u202e",
          "\ufeff", "\u2028", "\u0663", "\U0001d489", "\U0001F600", "h\u0300", "ℎ", "ｈ"]
HUGE = ["1e999", "1e39", "1" + "0" * 400, "0." + "0" * 60 + "1", "4294967297",
        "1000000000", "2e-45", "0x7fffffff", "0b" + "1" * 80]


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(BASES))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "duplicate", "number", "nest",
                                     "chain", "swap"]))
        n = len(text)
        i = draw(st.integers(0, n))
        if kind == "insert":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
        elif kind == "delete":
            j = draw(st.integers(i, min(n, i + 20)))
            text = text[:i] + text[j:]
        elif kind == "duplicate":
            j = draw(st.integers(i, min(n, i + 40)))
            text = text[:j] + text[i:j] + text[j:]
        elif kind == "number":   # replace the first number after i
            j = next((k for k in range(i, n) if text[k].isdigit()), None)
            if j is not None:
                text = text[:j] + draw(st.sampled_from(HUGE)) + text[j + 1:]
        elif kind == "nest":     # a deep stack of openers (some closed) around position i
            depth = draw(st.sampled_from([2, 20, 33, 300, 1200]))
            opener = draw(st.sampled_from(["(", "tanh(", "[", "{", "- ", "h[", "sum(k, 1, 2, "]))
            closer = {"(": ")", "tanh(": ")", "[": "]", "{": "}", "- ": "", "h[": "]",
                      "sum(k, 1, 2, ": ")"}[opener]
            text = text[:i] + opener * depth + text[i:i + 5] + closer * depth + text[i + 5:]
        elif kind == "chain":    # a long chain of terms at position i
            op = draw(st.sampled_from([" + ", " * ", " - ", " @ U", " / "]))
            term = draw(st.sampled_from(["h", "1", "f", "x", ""]))
            text = text[:i] + (op + term) * draw(st.sampled_from([10, 1000, 5000])) + text[i:]
        else:                    # swap two lines
            lines = text.split("\n")
            a = draw(st.integers(0, len(lines) - 1))
            b = draw(st.integers(0, len(lines) - 1))
            lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
    return text


@FUZZ
@given(mutated())
def test_mutated_specs(text):
    event(check(text))


# -- well-formed equations, random expressions ----------------------------------------
MGU = BASES[-1]
HH = "hh = activation(x @ W_h + b_h + (f * h) @ U_h)"
NUMBERS = st.sampled_from(["0", "1", "0.5", "2", "1e-3", "1e38", "3.4e38", "1e-37", "7"])
LEAVES = st.one_of(st.sampled_from(["h", "f", "b_h", "h[-1]", "h[-3]", "started(h[-2])",
                                    "x @ W_h"]), NUMBERS)


def _combine(children):
    unary = st.builds(lambda f, a: f"{f}({a})",
                      st.sampled_from(["tanh", "sigmoid", "relu", "exp", "activation",
                                       "hard_sigmoid", "softplus", "linear", "-", ""]),
                      children)
    binary = st.builds(lambda a, op, b: f"{a} {op} {b}", children,
                       st.sampled_from(["+", "-", "*", "/"]), children)
    matmul = st.builds(lambda a: f"({a}) @ U_h", children)
    summed = st.builds(lambda a, hi: f"sum(k, 1, {hi}, {a} * k)", children,
                       st.sampled_from(["1", "3", "64"]))
    return st.one_of(unary, binary, matmul, summed)


EXPRESSIONS = st.recursive(LEAVES, _combine, max_leaves=25)


@settings(FUZZ, max_examples=FUZZ.max_examples // 2)   # each accepted one renders: ~80 ms
@given(EXPRESSIONS)
def test_generated_expressions(expr):
    assert HH in MGU
    event(check(MGU.replace(HH, f"hh = activation(x @ W_h + b_h + {expr} + (f * h) @ U_h)")))


def test_the_fuzzers_reach_both_outcomes():
    """The generators above are not all rejected (or all accepted) by construction."""
    texts = [MGU, MGU.replace("(1 - f)", "(1e39 - f)"), BASES[0].replace("[", "(", 1)]
    assert [check(t) for t in texts] == ["accepted", "rejected", "rejected"]


@pytest.mark.parametrize("i", range(len(BASES)))
def test_deep_mutations_of_each_base(i):
    """The worst cases of the issue, applied to every built-in spec at its first equation."""
    text = BASES[i]
    eq = text.index("step: |") + len("step: |\n")
    line_end = text.index("\n", eq)
    name, rhs = text[eq:line_end].split("=", 1)
    for bad in ["(" * 250 + rhs + ")" * 250, rhs + " + h" * 1000, rhs + " * h" * 1000,
                "-" * 1000 + rhs, rhs + " + sum(k, 1, 100000000, h)", rhs + " + h[-100000000000000000000]",
                rhs + " + 1e999", rhs + " + 1e39", rhs + " * 1e-50", rhs + " + 1e30 * 1e30"]:
        check(text[:eq] + name + "= " + bad + text[line_end:])


# -- accepted specs build and run (issue 20, item 5) -----------------------------------
def _random_expression(rng, depth=0) -> str:
    """A random expression of the same grammar as EXPRESSIONS, from a seeded generator (so
    that the suite builds the same specs on every run; `make fuzz` draws new ones)."""
    leaves = ["h", "f", "b_h", "h[-1]", "h[-3]", "started(h[-2])", "x @ W_h", "0.5", "2",
              "1e-3", "7", "x"]
    if depth > 3 or rng.random() < 0.3:
        return rng.choice(leaves)
    kind = rng.choice(["unary", "binary", "binary", "matmul", "sum", "mean"])
    a = _random_expression(rng, depth + 1)
    if kind == "unary":
        return f"{rng.choice(['tanh', 'sigmoid', 'relu', 'exp', 'activation', 'softplus', '-', ''])}({a})"
    if kind == "binary":
        return f"{a} {rng.choice(['+', '-', '*'])} {_random_expression(rng, depth + 1)}"
    if kind == "matmul":
        return f"({a}) @ U_h"
    if kind == "mean":
        return f"mean({a})"
    return f"sum(k, 1, {rng.choice(['1', '3'])}, {a} * k)"


BUILD_RUN = int(os.environ.get("RNNGEN_FUZZ_BUILD_RUN", "40" if PROFILE == "long" else "6"))


def test_accepted_specs_build_and_run_on_both_backends(tmp_path):
    """Distinct accepted specs (MGU with a random term in its candidate) are compiled for
    the C and the emulated CUDA backend and run forward and backward in float64 with a
    mask: both backends agree, and the gradient of x matches a directional derivative of
    the forward.  (Before, 38 of 96 distinct accepted fuzzed specs failed to compile.)"""
    import random

    import numpy as np

    import rnngen
    rng = random.Random(20261207 if PROFILE != "long" else None)
    built, tried = 0, 0
    while built < BUILD_RUN and tried < 50 * BUILD_RUN:
        tried += 1
        expr = _random_expression(rng)
        text = MGU.replace(HH, f"hh = activation(x @ W_h + b_h + {expr} + (f * h) @ U_h)")
        if check(text) != "accepted":
            continue
        built += 1
        path = tmp_path / f"fuzz{built}.yaml"
        path.write_text(text.replace("name: MGU", f"name: Fuzz{built}"))
        Cell = rnngen.load_cell(path)
        data = np.random.default_rng(built)
        x = data.normal(size=(3, 5, 4))
        mask = data.random((3, 5)) > 0.3
        mask[0] = True
        dy = data.normal(size=(3, 5, 4))
        out = {}
        for backend in ("c", "cuda-emulated"):
            layer = Cell(4, input_dim=4, return_sequences=True, dtype="float64", seed=built,
                         backend=backend)
            y = layer(x, mask=mask)
            dx = layer.backward(dy)
            out[backend] = (y, dx, [g.copy() for g in layer.grads])
        (y, dx, grads), (ye, dxe, gradse) = out["c"], out["cuda-emulated"]
        assert np.isfinite(y).all() or not np.isfinite(ye).all(), expr
        np.testing.assert_allclose(ye, y, rtol=1e-10, atol=1e-10, err_msg=expr)
        np.testing.assert_allclose(dxe, dx, rtol=1e-9, atol=1e-9, err_msg=expr)
        for a, b in zip(gradse, grads):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=expr)
        if np.isfinite(y).all() and np.isfinite(dx).all():
            v, eps = data.normal(size=x.shape), 1e-6
            layer = Cell(4, input_dim=4, return_sequences=True, dtype="float64", seed=built)
            fd = (np.sum(layer(x + eps * v, mask=mask) * dy)
                  - np.sum(layer(x - eps * v, mask=mask) * dy)) / (2 * eps)
            assert abs(fd - np.sum(dx * v)) <= 1e-5 * (1 + abs(fd)), (expr, fd, np.sum(dx * v))
    assert built == BUILD_RUN, f"only {built} of {tried} generated specs were accepted"


COMPILE_CHECK = int(os.environ.get("RNNGEN_FUZZ_COMPILE_CHECK", "200"))


def test_hundreds_of_accepted_specs_compile_warning_free(tmp_path):
    """COMPILE_CHECK (default 200) distinct accepted specs from a fixed seed (the MGU with a
    random term in its candidate): the C source and the CUDA source (as the emulation
    compiles it) of each pass the compilers' front ends with the builds' warnings as
    errors (-fsyntax-only: unused and undeclared names, types, conversions).  The six above
    are also built and run; `make fuzz` builds 40 more at -O3."""
    import random
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from rnngen import backends, build
    from rnngen.render import render_cuda
    rng = random.Random(7)
    seen, tried = set(), 0
    c_files, cu_files = [], []
    while len(seen) < COMPILE_CHECK and tried < 30 * COMPILE_CHECK:
        tried += 1
        expr = _random_expression(rng)
        if expr in seen:
            continue
        text = MGU.replace(HH, f"hh = activation(x @ W_h + b_h + {expr} + (f * h) @ U_h)")
        text = text.replace("name: MGU", f"name: Fuzz{len(seen)}")
        try:
            ir = compute_ir(parse_spec(text, "fuzz.yaml"))
        except SpecError:
            continue
        seen.add(expr)
        for (header, source), hname, suffix, files in (
                (render_c(ir, "fuzz.yaml"), f"{ir.name}.h", ".c", c_files),
                (render_cuda(ir, "fuzz.yaml"), f"{ir.name}_cuda.h", ".cu", cu_files)):
            (tmp_path / hname).write_text(header)
            src = tmp_path / f"{ir.name}{suffix}"
            src.write_text(source)
            files.append((src, expr))
    assert len(seen) == COMPILE_CHECK, f"only {len(seen)} distinct accepted specs"
    inc = build.blas_paths()[0]
    c_cmd = [build.CC, *[f for f in build.cflags() if not f.startswith("-O")], "-fsyntax-only",
             f"-I{tmp_path}", f"-I{build.TEMPLATES}", f"-I{inc}"]
    cu_cmd = [backends.CXX, *[f for f in backends._emu_flags() if not f.startswith("-O")],
              "-fsyntax-only", f"-I{tmp_path}", f"-I{build.TEMPLATES}", f"-I{inc}"]

    def check_batch(job):
        cmd, batch = job
        r = subprocess.run(cmd + [str(s) for s, _ in batch], capture_output=True, text=True)
        if r.returncode == 0:
            return None
        bad = next((e for s, e in batch if s.name in r.stderr), "?")
        return f"{bad}:\n{r.stderr[:3000]}"

    jobs = [(cmd, files[i:i + 25]) for cmd, files in ((c_cmd, c_files), (cu_cmd, cu_files))
            for i in range(0, len(files), 25)]
    with ThreadPoolExecutor(2) as pool:
        failures = [f for f in pool.map(check_batch, jobs) if f]
    assert not failures, failures[0]
