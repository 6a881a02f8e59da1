"""Shared test helpers: random weights, masks, central finite differences."""
from __future__ import annotations

import numpy as np

import reference as ref

CELLS = ["SimpleRNN", "SimpleDeepRNN", "GRU", "LSTM", "JZS1", "JZS2", "JZS3"]
B, T, D, H = 3, 6, 3, 2


def masks(kind):
    if kind == "none":
        return None
    m = np.ones((B, T), dtype=bool)
    if kind == "start":
        m[1, :2] = False
        m[2, :4] = False
    elif kind == "end":
        m[0, 4:] = False
        m[2, 1:] = False
    elif kind == "holes":
        m[:] = np.array([[1, 0, 1, 1, 0, 1], [0, 1, 0, 0, 1, 1], [1, 1, 0, 1, 0, 0]], bool)
    else:
        raise KeyError(kind)
    return m


def random_problem(name, seed=0, depth=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, D))
    W = [rng.normal(scale=0.6, size=s) for s in ref.weight_shapes(name, D, H, depth)]
    return x, W


def central_diff(f, arr, eps=1e-6):
    """Gradient of the scalar f() w.r.t. every entry of arr (perturbed in place)."""
    g = np.zeros_like(arr)
    for i in np.ndindex(arr.shape):
        old = arr[i]
        arr[i] = old + eps
        fp = f()
        arr[i] = old - eps
        fm = f()
        arr[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def reference_grads(name, p, W, x, mask, dy_full, truncate):
    """Finite-difference gradients of the (truncated) loss sum(dy * y) of the reference.

    With truncate = k < T the loss is the one Theano's rule differentiates: the
    state entering step T - k is held fixed, outputs before it are dropped."""
    Tn = x.shape[1]
    t0 = Tn - truncate if 0 < truncate < Tn else 0
    if t0 > 0:
        _, start = ref.run(name, p, W, x[:, :t0], None if mask is None else mask[:, :t0])
    else:
        start = None
    x = x.copy()
    W = [w.copy() for w in W]

    def loss():
        y, _ = ref.run(name, p, W, x, mask, start=start, t_start=t0)
        return float(np.sum(y * dy_full[:, t0:]))

    dx = np.zeros_like(x)
    xs = x[:, t0:].copy()

    def loss_x():
        x[:, t0:] = xs
        return loss()
    dx[:, t0:] = central_diff(loss_x, xs)
    x[:, t0:] = xs
    dW = [central_diff(loss, w) for w in W]
    return dx, dW


def check_layer_against(layer, reference, W, x, mask=None, *, rng, atol=1e-7):
    """A float64 layer whose weights are W against ``reference(W, x, mask)`` (its output
    for every step): forward to 1e-12, then dx and every weight's gradient against central
    differences of the loss sum(y * dy) for a random dy.  Returns y."""
    y = layer(x, mask=mask)
    np.testing.assert_allclose(y, reference(W, x, mask), rtol=1e-12, atol=1e-12)
    dy = rng.normal(size=y.shape)
    dx = layer.backward(dy)

    def loss():
        return float(np.sum(reference(W, x, mask) * dy))
    np.testing.assert_allclose(dx, central_diff(loss, x), rtol=1e-6, atol=atol)
    for wname, w, g in zip(layer.weight_names(), W, layer.grads):
        np.testing.assert_allclose(g, central_diff(loss, w), rtol=1e-6, atol=atol,
                                   err_msg=wname)
    return y
