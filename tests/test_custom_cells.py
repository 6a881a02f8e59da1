"""Cells written by a user as YAML: built just in time, checked like the seed layers."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import rnngen
from helpers import B, D, H, T, central_diff, masks

ROOT = Path(__file__).resolve().parent.parent
sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731


def mgu_reference(W, x, mask):
    W_f, U_f, b_f, W_h, U_h, b_h = W
    h = np.zeros((x.shape[0], H))
    ys = []
    for t in range(x.shape[1]):
        f = sig(x[:, t] @ W_f + b_f + h @ U_f)
        hh = np.tanh(x[:, t] @ W_h + b_h + (f * h) @ U_h)
        new = (1 - f) * h + f * hh
        h = np.where(mask[:, t:t + 1], new, h)
        ys.append(h)
    return np.stack(ys, 1)


ODD = """\
name: Odd
doc: Exercises lags, a vector weight inside the loop, division, exp and two states.
params: {act: tanh}
weights:
  W: {shape: [input_dim, output_dim], init: glorot_uniform}
  U: {shape: [output_dim, output_dim], init: orthogonal}
  V: {shape: [output_dim, output_dim], init: orthogonal}
  b: {shape: [output_dim], init: zero}
  p: {shape: [output_dim], init: uniform}
state: [h, c]
step: |
  g = sigmoid(x @ W + b + h @ U + c * p)   # a peephole: p is a vector weight
  c = c / (1 + g) + exp(-g)
  h = act(h[-2] @ V) * g - c / 2
output: h
"""


def odd_reference(W, x, mask):
    Wx, U, V, b, p = W
    Bn = x.shape[0]
    h1, h2, c = np.zeros((Bn, H)), np.zeros((Bn, H)), np.zeros((Bn, H))
    ys = []
    for t in range(x.shape[1]):
        m = mask[:, t:t + 1]
        g = sig(x[:, t] @ Wx + b + h1 @ U + c * p)
        cn = c / (1 + g) + np.exp(-g)
        hn = np.tanh(h2 @ V) * g - cn / 2
        h2 = np.where(m, h1, h2)
        h1 = np.where(m, hn, h1)
        c = np.where(m, cn, c)
        ys.append(h1)
    return np.stack(ys, 1)


@pytest.mark.parametrize("which", ["mgu", "odd"])
def test_user_cell_forward_and_gradients(tmp_path, which):
    if which == "mgu":
        path, refn, nW = ROOT / "examples" / "mgu.yaml", mgu_reference, 6
    else:
        path = tmp_path / "odd.yaml"
        path.write_text(ODD)
        refn, nW = odd_reference, 5
    Cell = rnngen.load_cell(path)
    rng = np.random.default_rng(0)
    layer = Cell(H, input_dim=D, return_sequences=True, dtype="float64", seed=0)
    W = [w + rng.normal(scale=0.3, size=w.shape) for w in layer.get_weights()]
    assert len(W) == nW
    layer.set_weights(W)
    x = rng.normal(size=(B, T, D))
    mask = masks("holes")
    y = layer(x, mask=mask)
    np.testing.assert_allclose(y, refn(W, x, mask), rtol=1e-10, atol=1e-13)
    dy = rng.normal(size=y.shape)
    dx = layer.backward(dy)
    loss = lambda: float(np.sum(refn(W, x, mask) * dy))  # noqa: E731
    np.testing.assert_allclose(dx, central_diff(loss, x), rtol=1e-6, atol=1e-8)
    for g, w in zip(layer.grads, W):
        np.testing.assert_allclose(g, central_diff(loss, w), rtol=1e-6, atol=1e-8)
    # float32 agrees too, and the config names the spec so it can be rebuilt
    l32 = Cell(H, weights=W, return_sequences=True)
    np.testing.assert_allclose(l32(x.astype(np.float32), mask=mask), y, rtol=1e-4, atol=1e-5)
    again = rnngen.layers.from_config(layer.get_config())
    again.set_weights(W)
    np.testing.assert_array_equal(again(x, mask=mask), y)


def test_concurrent_builds_of_a_new_spec(tmp_path):
    """Several processes building the same new spec at once: one build, all succeed."""
    spec = tmp_path / "fresh.yaml"
    spec.write_text((ROOT / "examples" / "mgu.yaml").read_text().replace("MGU", "Fresh"))
    cache = tmp_path / "cache"
    code = textwrap.dedent(f"""
        import numpy as np, rnngen
        C = rnngen.load_cell({str(spec)!r})
        l = C(3, input_dim=2, seed=0, dtype="float64")
        print(repr(float(l(np.ones((1, 4, 2))).sum())))
    """)
    env = dict(os.environ, RNNGEN_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert len({o[0] for o in outs}) == 1
    dirs = [d for d in cache.iterdir() if d.name.startswith("fresh-")]
    assert len(dirs) == 1 and (dirs[0] / "done").exists() and not (dirs[0] / "lock").exists()
    assert (dirs[0] / "libfresh.so").exists()


def test_failed_build_reports_compiler_output(tmp_path, monkeypatch):
    from rnngen import build
    monkeypatch.setenv("RNNGEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(rnngen.BuildError, match="compiling broken failed"):
        build.build_library("broken", "/* h */", "int f(void) { return undefined_name; }")
    d = next(tmp_path.iterdir())
    assert (d / "failed").exists() and not (d / "lock").exists()


TWICE = """\
name: Twice
params: {}
weights:
  W: {shape: [input_dim, output_dim], init: glorot_uniform}
  U: {shape: [output_dim, output_dim], init: orthogonal}
state: [h]
step: |
  h = tanh(x @ W + h @ U + x @ W)
output: h
"""


def twice_reference(W, x, mask):
    Wx, U = W
    h = np.zeros((x.shape[0], H))
    ys = []
    for t in range(x.shape[1]):
        h = np.where(mask[:, t:t + 1], np.tanh(2 * x[:, t] @ Wx + h @ U), h)
        ys.append(h)
    return np.stack(ys, 1)


@pytest.mark.parametrize("spec,same", [("odd", 1), ("mgu", 0), ("twice", 0)])
def test_dxw_is_read_from_ds_only_where_the_adjoints_are_equal(tmp_path, spec, same):
    """Odd's x @ W and h @ U are added into one sum (so dXW = dS: XW_IS_DS); MGU's
    x @ W_f and x @ W_h go to products of two different operands, and Twice adds x @ W
    in twice (its adjoint is twice dS): those keep dXW.  Twice's gradients, truncated,
    against finite differences."""
    from rnngen.layers import load_spec
    from rnngen.pipeline import generate
    path = ROOT / "examples" / "mgu.yaml" if spec == "mgu" else tmp_path / f"{spec}.yaml"
    if spec != "mgu":
        path.write_text({"odd": ODD, "twice": TWICE}[spec])
    _, _, source = generate(load_spec(path))
    assert f"#define XW_IS_DS {same}" in source
    if spec != "twice":
        return
    rng = np.random.default_rng(1)
    W = [rng.normal(scale=0.5, size=(D, H)), rng.normal(scale=0.5, size=(H, H))]
    layer = rnngen.load_cell(path)(H, weights=W, return_sequences=True, dtype="float64",
                                   truncate_gradient=T - 2)
    x, mask = rng.normal(size=(B, T, D)), masks("holes")
    np.testing.assert_allclose(layer(x, mask=mask), twice_reference(W, x, mask), rtol=1e-10)
    dy = rng.normal(size=(B, T, H))
    dy[:, :2] = 0   # truncated: only the last T - 2 steps' outputs count, through them only
    dx = layer.backward(dy)
    loss = lambda: float(np.sum(twice_reference(W, x, mask) * dy))  # noqa: E731
    assert np.all(dx[:, :2] == 0)
    np.testing.assert_allclose(dx[:, 2:], central_diff(loss, x)[:, 2:], rtol=1e-6, atol=1e-8)
