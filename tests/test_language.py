"""The spec language's newer parts (issue 12): sqrt, log, abs, max, min, ** with a constant,
float parameters, an output that is not a state, cells without x @ W, a state's new value
as a GEMM operand, and SpecErrors that list every problem with suggestions.  Each cell is
checked on the C backend and the emulated CUDA backend against an own numpy reference
(float64, forward to 1e-12) and central finite differences (every weight, dx)."""
import numpy as np
import pytest

import rnngen
from helpers import central_diff
from rnngen.pipeline import ROOT

B, T, D, H = 3, 5, 4, 6

FUNCS = """\
name: Funcs
doc: Exercises the newer functions, float parameters and an output that is not a state.
params: {eps: 1.0e-3, p: 1.5, act: tanh}
weights:
  W: {shape: [input_dim, output_dim], init: glorot_uniform}
  U: {shape: [output_dim, output_dim], init: orthogonal}
  V: {shape: [output_dim, output_dim], init: orthogonal}
  b: {shape: [output_dim], init: uniform}
state: [h, c]
step: |
  a = x @ W + b + h @ U
  s = sqrt(a ** 2 + eps) + log(1 + abs(a)) * 0.5
  m = max(a, c) - min(s, 2) + (abs(a) + eps) ** p
  c = act(m) * 0.5        # the new c is the operand of the next product
  o = tanh(c @ V) + s * 0.1
  h = o
output: o
"""


def funcs_reference(W, x, mask, eps=1e-3, p=1.5):
    Wx, U, V, b = W
    Bn, Tn = x.shape[:2]
    h, c, o = (np.zeros((Bn, U.shape[0])) for _ in range(3))
    ys = []
    for t in range(Tn):
        a = x[:, t] @ Wx + b + h @ U
        s = np.sqrt(a ** 2 + eps) + np.log(1 + np.abs(a)) * 0.5
        m = np.maximum(a, c) - np.minimum(s, 2) + (np.abs(a) + eps) ** p
        cn = np.tanh(m) * 0.5
        on = np.tanh(cn @ V) + s * 0.1
        keep = mask[:, t:t + 1]
        c, h, o = np.where(keep, cn, c), np.where(keep, on, h), np.where(keep, on, o)
        ys.append(o)
    return np.stack(ys, 1)


NOX = """\
name: NoX
doc: "The input never enters (an autonomous cell): dx is zero."
weights:
  U: {shape: [output_dim, output_dim], init: orthogonal}
  b: {shape: [output_dim], init: uniform}
state: [h]
step: |
  h = tanh(h @ U + b + 1)
output: h
"""


def nox_reference(W, x, mask):
    U, b = W
    h = np.zeros((x.shape[0], U.shape[0]))
    ys = []
    for t in range(x.shape[1]):
        h = np.where(mask[:, t:t + 1], np.tanh(h @ U + b + 1), h)
        ys.append(h)
    return np.stack(ys, 1)


def _cell(tmp_path, text, name):
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return rnngen.load_cell(p)


def _check(cls, reference, backend, params=None, mask_kind="holes"):
    params = params or {}
    rng = np.random.default_rng(2)
    layer = cls(H, input_dim=D, return_sequences=True, dtype="float64", seed=0,
                backend=backend, **params)
    W = layer.get_weights()
    x = rng.normal(size=(B, T, D))
    mask = np.ones((B, T), bool) if mask_kind == "none" else rng.random((B, T)) > 0.3
    ref_params = {k: v for k, v in params.items() if k in ("eps", "p")}
    y_inf = layer(x, mask=mask, training=False)
    y = layer(x, mask=mask)
    want = reference(W, x, mask, **ref_params)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(y_inf, y)
    dy = rng.normal(size=y.shape)
    dx = layer.backward(dy)

    def loss():
        return float(np.sum(reference(W, x, mask, **ref_params) * dy))
    np.testing.assert_allclose(dx, central_diff(loss, x), rtol=1e-6, atol=1e-7)
    for name, w, g in zip(layer.weight_names(), W, layer.grads):
        np.testing.assert_allclose(g, central_diff(loss, w), rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    # float32 computes the same function
    l32 = cls(H, input_dim=D, return_sequences=True, seed=0, backend=backend, **params)
    l32.set_weights(W)
    np.testing.assert_allclose(l32(x.astype(np.float32), mask=mask), want, rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("backend", ["c", "cuda-emulated"])
def test_new_functions_float_parameters_and_a_step_value_as_output(tmp_path, backend):
    cls = _cell(tmp_path, FUNCS, "funcs")
    assert [p.kind for p in cls.spec.params] == ["float", "float", "activation"]
    _check(cls, funcs_reference, backend)
    _check(cls, funcs_reference, backend, {"eps": 0.25, "p": 2.5}, mask_kind="none")


@pytest.mark.parametrize("backend", ["c", "cuda-emulated"])
def test_a_cell_without_x_at_w_builds_and_is_correct(tmp_path, backend):
    """It failed to compile: dXW was declared and never used."""
    _check(_cell(tmp_path, NOX, "nox"), nox_reference, backend)


def test_float_parameters_are_checked(tmp_path):
    cls = _cell(tmp_path, FUNCS, "funcs")
    with pytest.raises(ValueError, match="eps: constant inf is not finite"):
        cls(4, eps=float("inf"))
    with pytest.raises(TypeError, match="p must be a number"):
        cls(4, p="2")
    with pytest.raises(rnngen.SpecError, match=r"funcs.yaml:3: float parameter 'eps': constant "
                                               r"1e\+39 does not fit in float32"):
        _cell(tmp_path, FUNCS.replace("eps: 1.0e-3", "eps: 1.0e+39"), "funcs")
    # YAML 1.1 reads 1e-3 (no dot) as a string: it is taken as a number all the same
    assert _cell(tmp_path, FUNCS.replace("1.0e-3", "1e-3"), "funcs").spec.params[0].default \
        == 1e-3


def _problems(tmp_path, text):
    p = tmp_path / "cell.yaml"
    p.write_text(text)
    with pytest.raises(rnngen.SpecError) as e:
        rnngen.load_cell(p)
    return e.value.problems


MGU = (ROOT / "examples" / "mgu.yaml").read_text()


def test_every_problem_of_a_file_is_listed_with_suggestions(tmp_path):
    """A declaration's problem (init: zeros) and the equations' (activaton(...)) in one
    error; every operand and argument checked; the nearest known name suggested."""
    text = (MGU.replace("b_f: {shape: [output_dim], init: zero}",
                        "b_f: {shape: [output_dim], init: zeros}")
               .replace("f = inner_activation(x @ W_f + b_f + h @ U_f)",
                        "f = inner_activaton(x @ W_f + b_f + h @ U_f)")
               .replace("hh = activation(x @ W_h + b_h + (f * h) @ U_h)",
                        "hh = activation(foo(x @ W_h) * b_h / tnah(h) + (f * h) @ U_h)"))
    probs = _problems(tmp_path, text)
    msgs = [m for _, m in probs]
    assert len(probs) == 4, probs
    assert any("init 'zeros'" in m and "did you mean 'zero'?" in m for m in msgs)
    assert any("unknown function 'inner_activaton' (did you mean 'inner_activation'?)" in m
               for m in msgs)
    assert any("unknown function 'foo'" in m for m in msgs)
    assert any("unknown function 'tnah' (did you mean 'tanh'?)" in m for m in msgs)


def test_power_rules(tmp_path):
    probs = _problems(tmp_path, MGU.replace("h = (1 - f) * h + f * hh",
                                            "h = (1 - f) * h + f * hh ** f"))
    assert [m for _, m in probs] == [
        "the exponent of ** must be a constant: a number or a numeric parameter (e.g. x ** 2, "
        "x ** 0.5, x ** p); a value that changes per step or unit can be raised with "
        "exp(log(x) * y)"]
    probs = _problems(tmp_path, MGU.replace("h = (1 - f) * h + f * hh",
                                            "h = (1 - f) * h + f * hh ** (-2) ** 0.5"))
    assert "(-2.0) ** 0.5" in probs[0][1] or "has no real value" in probs[0][1]
    # -a ** 2 is -(a ** 2), as in Python; 2 ** 3 ** 2 groups from the right
    from rnngen.expr import BinOp, Neg, parse_equations
    eq = parse_equations("y = -a ** 2\nz = 2 ** 3 ** 2\n", 1, [])
    assert isinstance(eq[0].expr, Neg) and eq[0].expr.arg.op == "**"
    assert isinstance(eq[1].expr, BinOp) and eq[1].expr.right.op == "**"


def test_max_and_min_send_a_tie_to_the_first_argument(tmp_path):
    spec = """\
name: Tie
weights:
  W: {shape: [input_dim, output_dim], init: glorot_uniform}
state: [h]
step: |
  h = max(x @ W, h) + min(x @ W, 0 * h)
output: h
"""
    cls = _cell(tmp_path, spec, "tie")
    layer = cls(2, input_dim=1, return_sequences=True, dtype="float64",
                weights=[np.array([[0.0, 1.0]])])
    x = np.zeros((1, 2, 1))                    # every max and min is a tie: x @ W = h = 0
    layer(x)
    layer.backward(np.ones((1, 2, 2)))
    # d/dW = sum over steps of x * (1 + 1): x = 0 so 0; the ties route the state gradient
    # away from h (max's second argument): d/dx = W's row times 2 per step
    np.testing.assert_array_equal(layer.grads[0], [[0.0, 0.0]])
    dx = layer.backward(np.ones((1, 2, 2)))
    np.testing.assert_allclose(dx[0, :, 0], [2.0, 2.0])


XEL = """\
name: XEl
doc: x read elementwise as well as through x @ W (input_dim must equal output_dim).
weights:
  W: {shape: [input_dim, output_dim], init: glorot_uniform}
  U: {shape: [output_dim, output_dim], init: orthogonal}
  b: {shape: [output_dim], init: uniform}
state: [h]
step: |
  h = tanh(h @ U + x @ W + x * (1 + h) + b) * sigmoid(x)
output: h
"""

XONLY = """\
name: XOnly
doc: x read elementwise only.
weights:
  U: {shape: [output_dim, output_dim], init: orthogonal}
state: [h]
step: |
  h = tanh(h @ U + x * (1 + h))
output: h
"""


def xel_reference(W, x, mask):
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    Wx, U, b = W if len(W) == 3 else (None, W[0], 0)
    h = np.zeros((x.shape[0], U.shape[0]))
    ys = []
    for t in range(x.shape[1]):
        pre = h @ U + x[:, t] * (1 + h) + b + (x[:, t] @ Wx if Wx is not None else 0)
        hn = np.tanh(pre) * (sig(x[:, t]) if Wx is not None else 1)
        h = np.where(mask[:, t:t + 1], hn, h)
        ys.append(h)
    return np.stack(ys, 1)


@pytest.mark.parametrize("backend", ["c", "cuda-emulated"])
@pytest.mark.parametrize("text", [XEL, XONLY], ids=["with-x@W", "x-only"])
def test_x_read_elementwise(tmp_path, backend, text):
    cls = _cell(tmp_path, text, "xel")
    with pytest.raises(ValueError, match="uses x elementwise .* input_dim must equal output_dim"):
        cls(4, input_dim=3, backend=backend)
    rng = np.random.default_rng(3)
    Hn, Bn = 32, 5      # two threads of 16 units on the C backend
    layer = cls(Hn, input_dim=Hn, return_sequences=True, dtype="float64", seed=0,
                backend=backend)
    W = layer.get_weights()
    x = rng.normal(size=(Bn, T, Hn))
    mask = rng.random((Bn, T)) > 0.3
    y = layer(x, mask=mask)
    np.testing.assert_allclose(y, xel_reference(W, x, mask), rtol=1e-12, atol=1e-12)
    dy = rng.normal(size=y.shape)
    dx = layer.backward(dy)

    def loss():
        return float(np.sum(xel_reference(W, x, mask) * dy))
    np.testing.assert_allclose(dx, central_diff(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer.grads[0], central_diff(loss, W[0]), rtol=1e-6, atol=1e-7)
    trunc = cls(Hn, input_dim=Hn, return_sequences=True, dtype="float64", weights=W,
                truncate_gradient=2, backend=backend)
    trunc(x, mask=mask)
    assert not np.any(trunc.backward(dy)[:, :T - 2])     # steps not reached: no gradient


CASES = """
name: Cases
weights:
  W: {shape: [input_dim, output_dim], init: glorot_uniform}
  U: {shape: [output_dim, output_dim], init: orthogonal}
  V: {shape: [output_dim, output_dim], init: orthogonal}
state: [h, H]
step: |
  A = tanh(x @ W + H @ V)
  a = sigmoid(h @ U)
  h = a * A + (1 - a) * h
  H = 0.5 * H + A
output: h
"""


def cases_reference(W, x, mask):
    Wx, U, V = W
    h = np.zeros((x.shape[0], U.shape[0]))
    H_ = np.zeros_like(h)
    ys = []
    for t in range(x.shape[1]):
        A = np.tanh(x[:, t] @ Wx + H_ @ V)
        a = 1 / (1 + np.exp(-(h @ U)))
        m = mask[:, t:t + 1]
        h, H_ = np.where(m, a * A + (1 - a) * h, h), np.where(m, 0.5 * H_ + A, H_)
        ys.append(h)
    return np.stack(ys, 1)


@pytest.mark.parametrize("backend", ["c", "cuda-emulated"])
def test_names_that_differ_only_in_case(tmp_path, backend):
    """States h and H, locals A and a: C names are lowercase, so they are made unique
    (h_new, h_new_2); it failed to compile (two `a_h` adjoints), and which one got `_2`
    changed from run to run."""
    _check(_cell(tmp_path, CASES, "cases"), cases_reference, backend)


def test_the_generated_source_is_the_same_in_every_process(tmp_path):
    """Names are made unique in node order, never in a set's (address) order."""
    import subprocess
    import sys
    (tmp_path / "cases.yaml").write_text(CASES)
    code = ("import sys, rnngen; from rnngen.ir import compute_ir; "
            "from rnngen.render import render_c, render_cuda; "
            "ir = compute_ir(rnngen.load_cell(sys.argv[1]).spec); "
            "print(render_c(ir, 'x')[1] + render_cuda(ir, 'x')[1])")
    outs = {subprocess.run([sys.executable, "-c", code, str(tmp_path / "cases.yaml")],
                           capture_output=True, text=True, check=True, cwd=ROOT,
                           env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)}).stdout
            for seed in range(4)}
    assert len(outs) == 1
