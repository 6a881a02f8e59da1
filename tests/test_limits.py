"""Every spec is rejected or lowered in bounded time and memory, with a located SpecError.

Each case here raised RecursionError or MemoryError, ran for ever, or failed only at the
first forward (or in gcc) before the limits of README's "Spec format" were checked."""
import time
from pathlib import Path

import pytest

from rnngen.errors import SpecError
from rnngen.ir import compute_ir, resolve_params
from rnngen.render import render_c
from rnngen.spec import (MAX_COUNT, MAX_ENTRIES, MAX_INT_PARAM, MAX_LAG, MAX_NESTING,
                         MAX_OPERATIONS, MAX_PHASES, MAX_SPEC_CHARS, MAX_SUM_TERMS,
                         MAX_YAML_DEPTH, parse_spec)

ROOT = Path(__file__).resolve().parent.parent
MGU = (ROOT / "examples" / "mgu.yaml").read_text()
HH = "hh = activation(x @ W_h + b_h + (f * h) @ U_h)"     # line 15 of mgu.yaml
HH_LINE = 15
U_H = "U_h: {shape: [output_dim, output_dim], init: inner_init}"   # line 10
U_H_LINE = 10


def lower(text):
    """parse + lower + render, timed: every outcome must come quickly."""
    t = time.monotonic()
    try:
        ir = compute_ir(parse_spec(text, "cell.yaml"))
        render_c(ir, "x")
        return ir
    finally:
        assert time.monotonic() - t < 20


def rejected(text, line, *words):
    with pytest.raises(SpecError) as ei:
        lower(text)
    probs = ei.value.problems
    assert any(ln == line and all(w in msg for w in words) for ln, msg in probs), probs
    assert f"cell.yaml:{line}:" in str(ei.value)
    return ei.value


def with_hh(expr):
    assert HH in MGU
    return MGU.replace(HH, f"hh = activation(x @ W_h + b_h + {expr})")


def test_mgu_is_accepted_as_a_baseline():
    assert lower(MGU).name == "mgu"


@pytest.mark.parametrize("opening,closing", [("(", ")"), ("tanh(", ")"), ("exp(", ")"),
                                             ("sum(k, 1, 1, ", ")")])
def test_deep_nesting_is_refused_before_the_parser_recurses(opening, closing):
    expr = opening * 250 + "f * h" + closing * 250 + " @ U_h"
    rejected(with_hh(expr), HH_LINE, "nested too deeply", f"at most {MAX_NESTING}")


def test_deep_subscripts_are_refused():
    rejected(with_hh("(f * h[" + "h[" * 250 + "-1" + "]" * 251 + ") @ U_h"), HH_LINE,
             "nested too deeply")


def test_nesting_at_the_limit_is_accepted():
    expr = "(" * (MAX_NESTING - 2) + "f * h" + ")" * (MAX_NESTING - 2)
    assert lower(with_hh(f"tanh({expr}) @ U_h"))
    rejected(with_hh("(" * (MAX_NESTING + 1) + "f * h" + ")" * (MAX_NESTING + 1) + " @ U_h"),
             HH_LINE, "nested too deeply")


def test_long_chains_and_many_signs_are_lowered_without_recursion():
    # 1000 terms of + and *, 1000 unary minus signs: trees 1000 deep, lowered by loops
    assert lower(with_hh("(f * h) @ U_h" + " + f" * 1000))
    assert lower(with_hh("(f * h) @ U_h" + " * f" * 1000))
    ir = lower(with_hh("-" * 1000 + "(f * h) @ U_h"))
    assert not any(n.op == "neg" for n in ir.nodes)          # an even count cancels
    ir = lower(with_hh("-" * 999 + "(f * h) @ U_h"))
    assert sum(n.op == "neg" for n in ir.nodes) == 1


def test_deep_yaml_is_refused_with_its_line():
    rejected(MGU.replace("state: [h]", "state: " + "[" * 500 + "h" + "]" * 500), 12,
             "YAML nested too deeply", f"at most {MAX_YAML_DEPTH}")
    block = "".join("\n" + "  " * (i + 1) + f"k{i}:" for i in range(300)) + " 1"
    with pytest.raises(SpecError, match="YAML nested too deeply") as ei:
        lower(MGU.replace("doc: Minimal gated unit.", "doc:" + block))
    (line, _), = ei.value.problems
    assert 3 < line < 3 + 300        # where the mapping too deep begins


def test_a_huge_sum_is_refused_before_it_is_expanded():
    e = rejected(with_hh("(f * h) @ U_h + sum(k, 1, 100000000, f)"), HH_LINE,
                 "100000000 terms", f"at most {MAX_SUM_TERMS}")
    assert len(e.problems) == 1
    rejected(with_hh("(f * h) @ U_h + sum(k, -3e38, 3e38, f)"), HH_LINE, "terms",
             f"at most {MAX_SUM_TERMS}")


def test_nested_sums_hit_the_operation_limit():
    e = rejected(with_hh("(f * h) @ U_h + sum(i, 1, 1000, sum(j, 1, 1000, f * i * j))"),
                 HH_LINE, "too large", f"more than {MAX_OPERATIONS} operations")
    assert len(e.problems) == 1


@pytest.mark.parametrize("count", ["1000000000", "0", "257", "1" + "0" * 5000, "0b1" + "0" * 20000])
def test_family_count_out_of_range(count):
    rejected(MGU.replace(U_H, U_H[:-1] + f", count: {count}}}"), U_H_LINE,
             f"count must be an integer from 1 to {MAX_COUNT}")


def test_integer_parameter_out_of_range():
    spec = (ROOT / "specs" / "simple_deep_rnn.yaml").read_text()
    rejected(spec.replace("depth: 3", "depth: 1000000000"), 5,
             f"from 1 to {MAX_INT_PARAM}")
    s = parse_spec(spec)
    for bad in (0, MAX_INT_PARAM + 1, 10 ** 9, 2 ** 5000):
        with pytest.raises(ValueError, match=f"from 1 to {MAX_INT_PARAM}"):
            resolve_params(s, {"depth": bad})
    assert resolve_params(s, {"depth": MAX_LAG})["depth"] == MAX_LAG


def test_lags_are_bounded():
    rejected(with_hh("(f * h[-100000000000000000000]) @ U_h"), HH_LINE, "too far back",
             f"at most {MAX_LAG}")
    rejected(with_hh(f"(f * h[-{MAX_LAG + 1}]) @ U_h"), HH_LINE, "too far back")
    assert lower(with_hh(f"(f * h[-{MAX_LAG}]) @ U_h")).lags["h"] == MAX_LAG
    # a lag from a parameter's value, given at layer construction
    spec = parse_spec((ROOT / "specs" / "simple_deep_rnn.yaml").read_text(), "sdr.yaml")
    with pytest.raises(SpecError, match="too far back"):
        compute_ir(spec, {"depth": MAX_LAG + 1})


@pytest.mark.parametrize("const,words", [
    ("1e999", "not finite"), ("1e39", "does not fit in float32"),
    ("3.5e38", "does not fit in float32"), ("-3.5e38", "does not fit in float32"),
    ("1e-50", "too small for float32"), ("1e-40", "too small for float32"),
    ("1e30 * 1e30", "does not fit in float32"), ("1e-30 * 1e-30", "too small for float32"),
    ("1e38 / 1e-10", "does not fit in float32"), ("3e38 + 3e38", "does not fit in float32"),
    ("-(3e38 + 1e38)", "does not fit in float32"),
])
def test_constants_float32_cannot_hold_are_refused_at_load(const, words):
    rejected(MGU.replace("(1 - f)", f"({const} - f)"), 16, words)


@pytest.mark.parametrize("const", ["3.4028235e38", "1.1754944e-38", "0.0", "1e-30 * 1e-5",
                                   "0 * 1e30"])
def test_constants_at_the_edge_of_float32_are_accepted(const):
    assert lower(MGU.replace("(1 - f)", f"({const} - f)"))


def test_products_in_a_row_are_bounded():
    # f depends on h @ U_f, so f * h is one product deep already
    assert lower(with_hh("(f * h)" + " @ U_h" * (MAX_PHASES - 1)))
    rejected(with_hh("(f * h)" + " @ U_h" * MAX_PHASES), HH_LINE, "too many matrix products",
             f"at most {MAX_PHASES}")


def test_too_many_entries_and_characters():
    rejected(MGU.replace("state: [h]", "state: [" + ", ".join(f"s{i}" for i in range(2000))
                         + "]"), 12, "2000 entries", f"at most {MAX_ENTRIES}")
    with pytest.raises(SpecError, match=f"at most {MAX_SPEC_CHARS}"):
        parse_spec(MGU + "#" * MAX_SPEC_CHARS)


def test_a_bad_term_repeated_by_a_sum_is_listed_once():
    e = rejected(with_hh("(f * h) @ U_h + sum(k, 1, 200, f * zz)"), HH_LINE, "unknown name 'zz'")
    assert len(e.problems) == 1


# -- what a spec path may be (issue 20, item 6) ----------------------------------------------
def _load_in_child(path: str) -> str:
    """load_spec in a child interpreter with a time and memory limit: what it raised."""
    import subprocess
    import sys
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))\n"
            "from rnngen.spec import load_spec\n"
            "from rnngen.errors import SpecError\n"
            "try:\n"
            "    load_spec(sys.argv[1])\n"
            "except SpecError as e:\n"
            "    print('SpecError:', e)\n")
    res = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom", "fifo", "dir"])
def test_a_spec_path_that_is_not_a_regular_file_is_refused_at_once(tmp_path, target):
    import os
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")           # reading it would block forever
        path = tmp_path / "fifo"
    elif target == "dir":
        path = tmp_path
    else:
        path = tmp_path / "spec.yaml"
        path.symlink_to(target)                # reading it would never end
    out = _load_in_child(str(path))
    assert "SpecError" in out and "must be a regular file" in out, out


def test_a_huge_spec_file_is_refused_without_reading_it_all(tmp_path):
    import time
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:                 # 2 GB, sparse
        f.truncate(2 << 30)
    t0 = time.perf_counter()
    out = _load_in_child(str(big))
    assert "larger than" in out and time.perf_counter() - t0 < 20, out


def test_a_spec_that_is_not_utf8_is_a_spec_error(tmp_path):
    from rnngen.errors import SpecError
    from rnngen.spec import load_spec
    p = tmp_path / "latin.yaml"
    p.write_bytes(b"name: Cell\n# caf\xe9\n")
    with pytest.raises(SpecError, match=r"not UTF-8 text \(byte 0xe9 at offset 16\)") as e:
        load_spec(p)
    assert ":2" in str(e.value) or "line 2" in str(e.value)
