"""A malformed spec gets one SpecError that lists every problem with file and line."""
import textwrap

import pytest

import rnngen
from rnngen.errors import SpecError

GOOD = """\
name: Mini
params: {activation: tanh}
weights:
  W: {shape: [input_dim, output_dim], init: glorot_uniform}
  U: {shape: [output_dim, output_dim], init: orthogonal}
  b: {shape: [output_dim], init: zero}
state: [h]
step: |
  h = activation(x @ W + b + h @ U)
output: h
"""


def load(tmp_path, text, name="cell.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return rnngen.load_cell(p)


def problems(tmp_path, text):
    with pytest.raises(SpecError) as ei:
        load(tmp_path, text)
    e = ei.value
    assert e.path.endswith("cell.yaml")
    return {(line, msg) for line, msg in e.problems}, str(e)


def has(probs, line, *words):
    return any(ln == line and all(w in msg for w in words) for ln, msg in probs)


def test_good_spec_loads(tmp_path):
    assert load(tmp_path, GOOD).__name__ == "Mini"


def test_unknown_keys_with_lines(tmp_path):
    probs, text = problems(tmp_path, GOOD.replace("state: [h]", "gatse: [h]").replace(
        "init: zero}", "init: zero, inti: 3}"))
    assert has(probs, 7, "unknown key 'gatse'", "state")
    assert has(probs, 6, "unknown key 'inti'", "init")
    assert has(probs, 1, "missing required key 'state'")
    assert "cell.yaml:7:" in text and "cell.yaml:6:" in text


def test_unknown_name_and_function_all_reported(tmp_path):
    probs, _ = problems(tmp_path, GOOD.replace(
        "h = activation(x @ W + b + h @ U)",
        "a = foo(x @ W)\n  h = activation(a + zz + h @ U + b)"))
    assert has(probs, 9, "unknown function 'foo'")
    assert has(probs, 10, "unknown name 'zz'")


def test_shape_mismatches(tmp_path):
    probs, _ = problems(tmp_path, GOOD.replace("x @ W + b + h @ U", "x @ U + b + h @ W"))
    assert has(probs, 9, "shape mismatch in x @ U")
    assert has(probs, 9, "shape mismatch in (...) @ W")
    probs, _ = problems(tmp_path, GOOD.replace("x @ W + b + h @ U", "x @ W + U + h @ b"))
    assert has(probs, 9, "U", "right operand of @")
    assert has(probs, 9, "right operand of @ must be a matrix weight")
    # x elementwise is allowed (input_dim must then equal output_dim); a matrix is not
    probs, _ = problems(tmp_path, GOOD.replace("x @ W + b + h @ U", "x + b + h @ U + W"))
    assert has(probs, 9, "weight 'W' has shape [input_dim, output_dim] and can only be the "
                         "right operand of @")


def test_used_before_defined_and_cycle(tmp_path):
    probs, _ = problems(tmp_path, GOOD.replace(
        "h = activation(x @ W + b + h @ U)",
        "a = c + x @ W\n  c = a * 2\n  e = d\n  h = activation(a + c + e + b + h @ U)\n  d = h"))
    assert has(probs, 9, "cycle", "a -> c -> a")
    assert has(probs, 11, "'d' is used before it is defined (on line 13)")


def test_unknown_function_activation_and_init(tmp_path):
    probs, _ = problems(tmp_path, GOOD.replace("activation: tanh", "activation: softmax")
                        .replace("init: orthogonal", "init: orthogonl"))
    assert has(probs, 2, "softmax", "not elementwise")
    assert has(probs, 5, "init 'orthogonl'")


def test_syntax_errors_and_bad_characters(tmp_path):
    probs, _ = problems(tmp_path, GOOD.replace(
        "h = activation(x @ W + b + h @ U)",
        "h = activation(x @ W + b + h @ U) +\n  q = __import__('os')\n  r = h ** * 2"))
    assert has(probs, 9, "expected a name, number or '('")
    assert has(probs, 10, "unexpected character")
    assert has(probs, 11, "expected a name, number or '('")


def test_assignment_rules(tmp_path):
    probs, _ = problems(tmp_path, GOOD.replace(
        "h = activation(x @ W + b + h @ U)",
        "h = activation(x @ W + b + h @ U)\n  h = h * 2\n  W = h\n  unused = h * 3"))
    assert has(probs, 10, "'h' is assigned twice (first on line 9)")
    assert has(probs, 11, "cannot assign to 'W'")
    assert has(probs, 12, "'unused' is defined but never used")


def test_state_and_output_rules(tmp_path):
    probs, _ = problems(tmp_path, GOOD.replace("state: [h]", "state: [h, c]")
                        .replace("output: h", "output: y"))
    assert has(probs, 10, "output 'y' must be a state (h, c) or a value defined in step")
    probs, _ = problems(tmp_path, GOOD.replace("state: [h]", "state: [h, c]"))
    assert has(probs, 0, "state 'c' is never assigned")


def test_unused_weight_and_bad_shape(tmp_path):
    # structural problems (the file's layout) are all reported together ...
    probs, _ = problems(tmp_path, GOOD.replace(
        "  b: {shape: [output_dim], init: zero}",
        "  b: {shape: [output_dim], init: zero}\n  V: {shape: [output_dim, 3], init: zero}\n"
        "  Z: {shape: [output_dim]}"))
    assert has(probs, 7, "unsupported shape [output_dim, 3]")
    assert has(probs, 8, "weight 'Z': missing 'init'")
    # ... and the equations' problems once the layout is right
    probs, _ = problems(tmp_path, GOOD.replace(
        "  b: {shape: [output_dim], init: zero}",
        "  b: {shape: [output_dim], init: zero}\n  Z: {shape: [output_dim], init: zero}"))
    assert has(probs, 7, "weight 'Z' is declared but not used")


def test_lags_and_families(tmp_path):
    spec = GOOD.replace("  U: {shape: [output_dim, output_dim], init: orthogonal}",
                        "  U: {shape: [output_dim, output_dim], init: orthogonal, count: 2}")
    probs, _ = problems(tmp_path, spec.replace("h @ U", "h[1] @ U[3]"))
    assert has(probs, 9, "lag subscript h[1] must be negative")
    probs, _ = problems(tmp_path, spec.replace("h @ U", "h[-1] @ U[3]"))
    assert has(probs, 9, "U[3] is out of range")
    probs, _ = problems(tmp_path, spec.replace("h @ U", "h @ U"))
    assert has(probs, 9, "weight family 'U' needs a subscript")
    ok = load(tmp_path, spec.replace("h @ U", "sum(k, 1, 2, h[-k] @ U[k])"))
    assert ok(2, input_dim=3).weight_names() == ["W", "U_1", "U_2", "b"]


def test_yaml_syntax_error_has_line(tmp_path):
    probs, _ = problems(tmp_path, GOOD.replace("state: [h]", "state: [h"))
    assert any(line >= 7 and "not valid YAML" in m for line, m in probs)


def test_missing_file():
    with pytest.raises(SpecError, match="cannot read"):
        rnngen.load_cell("/nonexistent/cell.yaml")
