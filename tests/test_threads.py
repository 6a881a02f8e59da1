"""The threaded kernels: every thread count gives the reference's forward and the
single-thread gradients (which test_against_reference checks by finite differences).

H = 37 splits into unit slices of 16, 16 and 5, so slices of unequal width, a
thread with a partial block and (with 4 threads asked) a cap at 3 are covered.
B = 3 runs the unit split (every thread owns some units of every sample); B = 25 the
batch split (every thread owns some samples: 13 + 12 with 2 threads, 9 + 8 + 8 with 3)."""
from __future__ import annotations

import numpy as np
import pytest

import rnngen
import reference as ref
from helpers import CELLS
from rnngen import layers

B, T, D, H = 3, 7, 5, 37


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    rnngen.set_num_threads(0)


def _mask():
    m = np.ones((B, T), bool)
    m[1, :2] = False
    m[2, 4:] = False
    m[0, 3] = False
    return m


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("masked", [False, True])
def test_thread_counts_agree(name, masked):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(B, T, D))
    dy = rng.normal(size=(B, T, H))
    p = dict(ref.DEFAULTS[name])
    W = [rng.normal(scale=0.3, size=s) for s in ref.weight_shapes(name, D, H)]
    mask = _mask() if masked else None
    y_ref, _ = ref.run(name, p, W, x, mask)
    results = {}
    for nt in (1, 2, 3, 4):
        rnngen.set_num_threads(nt)
        layer = getattr(layers, name)(H, weights=W, return_sequences=True, dtype="float64")
        y = layer.forward(x, mask)
        np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
        results[nt] = (layer.backward(dy), layer.grads)
    dx1, g1 = results[1]
    for nt in (2, 3, 4):
        dx, g = results[nt]
        np.testing.assert_allclose(dx, dx1, rtol=1e-10, atol=1e-12)
        for a, b in zip(g, g1):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("truncate", [1, 3])
def test_threads_with_truncation(truncate):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(B, T, D))
    dy = rng.normal(size=(B, T, H))
    out = []
    for nt in (1, 3):
        rnngen.set_num_threads(nt)
        layer = layers.GRU(H, input_dim=D, return_sequences=True, dtype="float64", seed=1,
                           truncate_gradient=truncate)
        layer.forward(x, _mask())
        out.append((layer.backward(dy), layer.grads))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(out[1][1], out[0][1]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch", [3, 25])   # the unit split, the batch split
def test_float32_threads_match_float64(batch):
    """The float32 kernels use their own vectorised exp/tanh: compare with float64 over
    inputs large enough to reach every branch (|x| < 0.625 and beyond, saturation)."""
    rng = np.random.default_rng(5)
    x = rng.normal(scale=3.0, size=(batch, T, D))
    for name in ("SimpleRNN", "LSTM", "JZS1"):
        rnngen.set_num_threads(2)
        l64 = getattr(layers, name)(H, input_dim=D, return_sequences=True, dtype="float64",
                                    seed=2)
        l32 = getattr(layers, name)(H, weights=[w.astype(np.float32) for w in l64.get_weights()],
                                    return_sequences=True, dtype="float32")
        np.testing.assert_allclose(l32.forward(x.astype(np.float32)), l64.forward(x),
                                   rtol=1e-5, atol=2e-6)
        dy = rng.normal(size=(batch, T, H))
        dx64 = l64.backward(dy)
        np.testing.assert_allclose(l32.backward(dy.astype(np.float32)), dx64,
                                   rtol=1e-4, atol=1e-5 * np.abs(dx64).max())
        for g32, g64 in zip(l32.grads, l64.grads):
            np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5 * np.abs(g64).max())


def test_set_num_threads_checks_its_argument():
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="number of threads"):
            rnngen.set_num_threads(bad)
    rnngen.set_num_threads(2)
    assert rnngen.get_num_threads() == 2


@pytest.mark.parametrize("name", CELLS)
def test_larger_batch_directional_derivative(name):
    """B = 13 runs every row kernel of the per-step products (blocks of 8 and 4 rows,
    then single rows) over panels with partial tails, and x @ W step by step (below
    B = 8 it is one product before the loop, as in the other tests); the gradient is
    checked along a random direction against central differences of the reference."""
    Bb, Tt, Dd, Hh = 13, 5, 4, 37
    rng = np.random.default_rng(11)
    x = rng.normal(size=(Bb, Tt, Dd))
    dy = rng.normal(size=(Bb, Tt, Hh))
    mask = rng.random((Bb, Tt)) > 0.3
    p = dict(ref.DEFAULTS[name])
    W = [rng.normal(scale=0.3, size=s) for s in ref.weight_shapes(name, Dd, Hh)]
    rnngen.set_num_threads(2)
    layer = getattr(layers, name)(Hh, weights=W, return_sequences=True, dtype="float64")
    y = layer.forward(x, mask)
    np.testing.assert_allclose(y, ref.run(name, p, W, x, mask)[0], rtol=1e-10, atol=1e-12)
    dx = layer.backward(dy)
    vx = rng.normal(size=x.shape)
    vW = [rng.normal(size=w.shape) for w in W]
    eps = 1e-6

    def loss(s):
        y_s, _ = ref.run(name, p, [w + s * v for w, v in zip(W, vW)], x + s * vx, mask)
        return float(np.sum(y_s * dy))
    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    analytic = float(np.sum(dx * vx)) + sum(float(np.sum(g * v)) for g, v in zip(layer.grads, vW))
    assert analytic == pytest.approx(fd, rel=1e-6)


def test_a_smaller_team_than_asked_still_covers_every_unit(tmp_path):
    """OpenMP may give fewer threads than asked (here OMP_THREAD_LIMIT=1 with 2 asked):
    the work is split over the team it gave."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    script = tmp_path / "team.py"
    script.write_text(
        "import sys\nimport numpy as np\nsys.path.insert(0, sys.argv[1])\n"
        "import rnngen\nfrom rnngen import layers\n"
        "rnngen.set_num_threads(2)\n"
        "x = np.random.default_rng(0).normal(size=(3, 5, 4))\n"
        "L = layers.GRU(40, input_dim=4, return_sequences=True, dtype='float64', seed=0)\n"
        "y = L(x)\ndx = L.backward(np.ones_like(y))\n"
        "np.save(sys.argv[2], np.concatenate([y.ravel(), dx.ravel()]"
        " + [g.ravel() for g in L.grads]))\n")
    root = str(Path(__file__).resolve().parent.parent)
    out = {}
    for limit in ("2", "1"):
        env = dict(os.environ, OMP_THREAD_LIMIT=limit)
        path = tmp_path / f"out{limit}.npy"
        subprocess.run([sys.executable, str(script), root, str(path)], env=env, check=True,
                       timeout=300)
        out[limit] = np.load(path)
    assert np.all(np.isfinite(out["1"]))
    np.testing.assert_allclose(out["1"], out["2"], rtol=1e-12, atol=1e-12)


BIG_B = 25   # >= 8 rows per thread for up to 3 threads: the batch split


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("truncate", [-1, 2])
@pytest.mark.parametrize("masked", [True, False])   # no mask: h[-k] shares h_prev's slot
def test_batch_split_agrees_with_one_thread(name, truncate, masked):
    rng = np.random.default_rng(17)
    Tt = 6
    x = rng.normal(size=(BIG_B, Tt, D))
    dy = rng.normal(size=(BIG_B, Tt, H))
    mask = rng.random((BIG_B, Tt)) > 0.25 if masked else None
    p = dict(ref.DEFAULTS[name])
    W = [rng.normal(scale=0.3, size=s) for s in ref.weight_shapes(name, D, H)]
    y_ref, _ = ref.run(name, p, W, x, mask)
    results = {}
    for nt in (1, 2, 3):
        rnngen.set_num_threads(nt)
        layer = getattr(layers, name)(H, weights=W, return_sequences=True, dtype="float64",
                                      truncate_gradient=truncate)
        np.testing.assert_allclose(layer.forward(x, mask), y_ref, rtol=1e-10, atol=1e-12)
        results[nt] = (layer.backward(dy), layer.grads)
    dx1, g1 = results[1]
    assert np.abs(dx1).max() > 0 and all(np.abs(g).max() > 0 for g in g1)
    for nt in (2, 3):
        dx, g = results[nt]
        np.testing.assert_allclose(dx, dx1, rtol=1e-10, atol=1e-12)
        for a, b in zip(g, g1):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("batch", [B, BIG_B])
def test_thread_count_changed_between_forward_and_backward(name, batch):
    """Backward reads values forward laid out for its own team (JZS1 keeps x @ W): it
    follows forward's layout whatever the thread count is when it runs."""
    rng = np.random.default_rng(23)
    x = rng.normal(size=(batch, 5, D))
    dy = rng.normal(size=(batch, 5, H))
    layer = getattr(layers, name)(H, input_dim=D, return_sequences=True, dtype="float64",
                                  seed=4)
    rnngen.set_num_threads(1)
    layer.forward(x)
    dx1, g1 = layer.backward(dy).copy(), [g.copy() for g in layer.grads]
    for nt_forward, nt_backward in ((2, 1), (3, 1), (1, 2), (2, 3)):
        rnngen.set_num_threads(nt_forward)
        layer.forward(x)
        rnngen.set_num_threads(nt_backward)
        np.testing.assert_allclose(layer.backward(dy), dx1, rtol=1e-10, atol=1e-12)
        for a, b in zip(layer.grads, g1):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_saved_values_not_from_forward_are_refused():
    from rnngen.errors import KernelError
    layer = layers.GRU(H, input_dim=D, return_sequences=True, dtype="float64", seed=0)
    x = np.random.default_rng(0).normal(size=(B, T, D))
    y = layer.forward(x)
    save = layer._last[2]
    for at, bads in ((-3, (0.0, 1.5, 65.0, np.nan)), (-2, (0.5, 2.0, np.nan)),
                     (-1, (0.5, 2.0, -1.0, np.nan))):
        old = save[at]
        for bad in bads:   # where forward notes its layout (-3), whether it had a mask (-2)
            # and whether it had initial states (-1)
            save[at] = bad
            with pytest.raises(KernelError, match="not written by this cell's forward"):
                layer.backward(np.ones_like(y))
        save[at] = old


@pytest.mark.parametrize("name", ["SimpleDeepRNN", "GRU"])
def test_backward_without_its_forward_s_mask_is_an_error(name):
    """Without a mask SimpleDeepRNN saves h[-2] and h[-3] in h_prev's slot (and a padded
    step is absent): backward must know whether forward had one."""
    from rnngen.errors import KernelError
    layer = getattr(layers, name)(H, input_dim=D, return_sequences=True, dtype="float64",
                                  seed=0)
    x = np.random.default_rng(0).normal(size=(B, T, D))
    mask = _mask().astype(np.uint8)
    for fwd, bwd in ((mask, None), (None, mask)):
        layer.forward(x, fwd)
        kernel = layer._kernel
        xx, _, save, weights, _ = layer._last
        with pytest.raises(KernelError, match="pass backward the mask of its forward"):
            kernel.backward(xx, bwd, weights, save, np.ones((B, T, H)), -1)
        layer.backward(np.ones((B, T, H)))   # with forward's own mask: fine


def test_a_smaller_team_for_backward_than_forward_is_an_error(tmp_path):
    """With forward's values laid out for more threads than OpenMP now gives (forced
    here by editing the layout forward noted to 3 under OMP_THREAD_LIMIT=2), backward
    returns a status that Python raises, instead of reading the values wrongly."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    script = tmp_path / "team.py"
    script.write_text(
        "import sys\nimport numpy as np\nsys.path.insert(0, sys.argv[1])\n"
        "import rnngen\nfrom rnngen import layers\nfrom rnngen.errors import KernelError\n"
        "rnngen.set_num_threads(2)\n"
        "x = np.random.default_rng(0).normal(size=(3, 5, 4))\n"
        "L = layers.JZS1(40, input_dim=4, return_sequences=True, dtype='float64', seed=0)\n"
        "y = L(x)\nassert L._last[2][-3] == 2\nL._last[2][-3] = 3\n"
        "try:\n    L.backward(np.ones_like(y))\nexcept KernelError as e:\n    print(e)\n")
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, OMP_THREAD_LIMIT="2")
    res = subprocess.run([sys.executable, str(script), root], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "fewer threads for backward than forward" in res.stdout
