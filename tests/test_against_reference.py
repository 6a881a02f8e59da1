"""Every seed layer against the own numpy reference (forward, 1e-10) and against
central finite differences of that reference (dx and every weight, ~1e-6), in
float64, with and without masks, for both return_sequences and several
truncate_gradient values; then float32 against float64."""
import numpy as np
import pytest

import reference as ref
from helpers import CELLS, H, T, masks, random_problem, reference_grads
from rnngen import layers

MASKS = ["none", "start", "end", "holes"]
TRUNCATE = [-1, 1, 3, T, T + 2]


def make_layer(name, W, dtype="float64", **kw):
    return getattr(layers, name)(H, weights=W, dtype=dtype, **kw)


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("name", CELLS)
def test_forward_matches_reference(name, mask_kind):
    x, W = random_problem(name, seed=1)
    mask = masks(mask_kind)
    y_ref, _ = ref.run(name, ref.DEFAULTS[name], W, x, mask)
    seq = make_layer(name, W, return_sequences=True)
    np.testing.assert_allclose(seq(x, mask=mask), y_ref, rtol=1e-10, atol=1e-13)
    last = make_layer(name, W, return_sequences=False)
    np.testing.assert_allclose(last(x, mask=mask), y_ref[:, -1], rtol=1e-10, atol=1e-13)


def test_masked_sample_equals_unpadded_sample():
    """A padded sample gives what the same sample gives without its padding."""
    for name in CELLS:
        x, W = random_problem(name, seed=2)
        mask = masks("holes")
        layer = make_layer(name, W, return_sequences=True)
        y = layer(x, mask=mask)
        for b in range(x.shape[0]):
            real = mask[b]
            if not real.any():
                assert np.all(y[b] == 0)
                continue
            alone = make_layer(name, W, return_sequences=True)(x[b:b + 1, real])
            np.testing.assert_allclose(y[b, real], alone[0], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(y[b, -1], alone[0, -1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("truncate", TRUNCATE)
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("name", CELLS)
def test_gradients_match_finite_differences(name, mask_kind, return_sequences, truncate):
    x, W = random_problem(name, seed=3)
    mask = masks(mask_kind)
    rng = np.random.default_rng(4)
    layer = make_layer(name, W, return_sequences=return_sequences, truncate_gradient=truncate)
    y = layer(x, mask=mask)
    dy = rng.normal(size=y.shape)
    dx = layer.backward(dy)
    dy_full = dy if return_sequences else np.zeros(x.shape[:2] + (H,))
    if not return_sequences:
        dy_full[:, -1] = dy
    fdx, fdW = reference_grads(name, ref.DEFAULTS[name], W, x, mask, dy_full, truncate)
    np.testing.assert_allclose(dx, fdx, rtol=1e-6, atol=1e-8)
    assert len(layer.grads) == len(W)
    for k, (g, f) in enumerate(zip(layer.grads, fdW)):
        np.testing.assert_allclose(g, f, rtol=1e-6, atol=1e-8, err_msg=f"weight {k}")
    if 0 < truncate < T:
        assert np.all(dx[:, :T - truncate] == 0)


@pytest.mark.parametrize("name,mask_kind,unsaved", [
    ("SimpleRNN", "holes", (T - 1, 0)), ("SimpleDeepRNN", "holes", (T - 1, 0)),
    ("SimpleDeepRNN", "none", (T - 1, 2 * T)), ("GRU", "none", (0, 0))])
def test_values_saved_elsewhere_are_not_saved_twice(name, mask_kind, unsaved):
    """SimpleRNN's h = sigmoid(...) is the h_prev its next step saves anyway: forward
    writes that slot at the last step only.  Without a mask, SimpleDeepRNN's h[-2] and
    h[-3] are the h_prev of one and two steps before: their slots are not written at
    all.  Backward never reads what was not written (NaN left there would reach the
    gradients).  GRU has neither."""
    x, W = random_problem(name, seed=5)
    mask = masks(mask_kind)
    B = x.shape[0]
    layer = make_layer(name, W, return_sequences=True)
    layer(x, mask=mask)
    save = layer._last[2]
    save[:] = np.nan
    layer(x, mask=mask)   # reuses the buffer
    assert layer._last[2] is save
    assert np.isnan(save).sum() == sum(unsaved) * B * H
    dy = np.random.default_rng(6).normal(size=(B, T, H))
    dx = layer.backward(dy)
    fdx, fdW = reference_grads(name, ref.DEFAULTS[name], W, x, mask, dy, -1)
    np.testing.assert_allclose(dx, fdx, rtol=1e-6, atol=1e-8)
    for g, f in zip(layer.grads, fdW):
        np.testing.assert_allclose(g, f, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("name", CELLS)
def test_float32_matches_float64(name, mask_kind):
    x, W = random_problem(name, seed=5)
    mask = masks(mask_kind)
    out = {}
    for dtype in ("float64", "float32"):
        layer = make_layer(name, W, dtype=dtype, return_sequences=True, truncate_gradient=4)
        y = layer(x.astype(dtype), mask=mask)
        assert y.dtype == np.dtype(dtype)
        dx = layer.backward(np.ones_like(y))
        assert dx.dtype == np.dtype(dtype) and all(g.dtype == np.dtype(dtype) for g in layer.grads)
        out[dtype] = (y, dx, layer.grads)
    y64, dx64, g64 = out["float64"]
    y32, dx32, g32 = out["float32"]
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-4)
    for a, b in zip(g32, g64):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation,inner", [("relu", "sigmoid"), ("softplus", "tanh"),
                                              ("linear", "hard_sigmoid")])
def test_other_activations_gru(activation, inner):
    p = dict(activation=activation, inner_activation=inner)
    x, W = random_problem("GRU", seed=6)
    mask = masks("holes")
    layer = layers.GRU(H, weights=W, dtype="float64", return_sequences=True, **p)
    y = layer(x, mask=mask)
    y_ref, _ = ref.run("GRU", p, W, x, mask)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-13)
    dy = np.random.default_rng(7).normal(size=y.shape)
    dx = layer.backward(dy)
    fdx, fdW = reference_grads("GRU", p, W, x, mask, dy, -1)
    np.testing.assert_allclose(dx, fdx, rtol=1e-6, atol=1e-8)
    for g, f in zip(layer.grads, fdW):
        np.testing.assert_allclose(g, f, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_simple_deep_rnn_depths(depth):
    p = dict(ref.DEFAULTS["SimpleDeepRNN"], depth=depth)
    x, W = random_problem("SimpleDeepRNN", seed=8, depth=depth)
    mask = masks("holes")
    layer = layers.SimpleDeepRNN(H, depth=depth, weights=W, dtype="float64",
                                 return_sequences=True, truncate_gradient=4)
    assert len(layer.get_weights()) == depth + 2
    y = layer(x, mask=mask)
    y_ref, _ = ref.run("SimpleDeepRNN", p, W, x, mask)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-13)
    dy = np.random.default_rng(9).normal(size=y.shape)
    dx = layer.backward(dy)
    fdx, fdW = reference_grads("SimpleDeepRNN", p, W, x, mask, dy, 4)
    np.testing.assert_allclose(dx, fdx, rtol=1e-6, atol=1e-8)
    for g, f in zip(layer.grads, fdW):
        np.testing.assert_allclose(g, f, rtol=1e-6, atol=1e-8)


def test_depth_one_is_simple_rnn_with_inner_activation():
    """depth=1 is SimpleRNN with an inner activation on the recurrent term."""
    x, W = random_problem("SimpleDeepRNN", seed=10, depth=1)
    deep = layers.SimpleDeepRNN(H, depth=1, inner_activation="linear", weights=W,
                                dtype="float64", return_sequences=True)
    simple = layers.SimpleRNN(H, weights=W, dtype="float64", return_sequences=True)
    np.testing.assert_allclose(deep(x), simple(x), rtol=1e-12)


def test_nan_propagates_like_numpy():
    x, W = random_problem("LSTM", seed=11)
    x[0, 2, 1] = np.nan
    y = make_layer("LSTM", W, return_sequences=True)(x)
    y_ref, _ = ref.run("LSTM", ref.DEFAULTS["LSTM"], W, x)
    assert np.array_equal(np.isnan(y), np.isnan(y_ref))
    assert np.isnan(y[0, 2:]).all() and not np.isnan(y[0, :2]).any() and not np.isnan(y[1:]).any()
