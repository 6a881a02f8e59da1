"""rnngen.jax against a float64 jax.lax.scan reference of the same equations
(tests/jax_reference.py): outputs, final states, dx, every weight gradient and the initial
states' gradients, with masks, initial states, truncation and go_backwards, under jit and
grad; float32; vmap; a training loop; errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import jax_reference as jref  # noqa: E402
import rnngen.jax as rj  # noqa: E402

jax.config.update("jax_enable_x64", True)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SOURCES = {"MGU": EXAMPLES / "mgu.yaml", "LayerNormLSTM": EXAMPLES / "layernorm_lstm.yaml"}
B, T, D, H = 3, 6, 4, 5
MASK = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0], [1, 0, 1, 1, 0, 1]], bool)


def layer(cell, **kw):
    return rj.Recurrent(SOURCES.get(cell, cell), D, H, return_sequences=True,
                        return_state=True, **kw)


def problem(lay, seed=0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(rng.normal(scale=0.5, size=v.shape), dtype)
              for k, v in lay.init(jax.random.key(seed), dtype).items()}
    x = jnp.asarray(rng.normal(size=(B, T, D)), dtype)
    return params, x, rng


def losses(lay, mask, states, dy, dlast, truncate):
    """The same scalar through rnngen.jax and through the reference."""
    def ours(params, x, s0):
        y, *last = lay.apply(params, x, mask, s0 if states else None)
        return jnp.sum(y * dy) + jnp.sum(jnp.stack(last) * dlast)

    def theirs(params, x, s0):
        y, last = jref.run(lay.cell_class.__name__, lay.params, params, x, mask,
                           s0 if states else None, truncate)
        return jnp.sum(y * dy) + jnp.sum(last[:len(lay.state_names)] * dlast)
    return ours, theirs


def check(lay, mask=None, states=False, truncate=-1, seed=0):
    params, x, rng = problem(lay, seed)
    S = len(lay.state_names)
    s0 = [jnp.asarray(rng.normal(size=(B, H))) for _ in range(S)]
    dy = jnp.asarray(rng.normal(size=(B, T, H)))
    dlast = jnp.asarray(rng.normal(size=(S, B, H)))
    ours, theirs = losses(lay, mask, states, dy, dlast, truncate)
    # forward: every output and every final state
    y, *last = jax.jit(lambda p, x: lay.apply(p, x, mask, s0 if states else None))(params, x)
    y_ref, last_ref = jref.run(lay.cell_class.__name__, lay.params, params, x, mask,
                               s0 if states else None, truncate)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(jnp.stack(last), last_ref[:S], rtol=0, atol=1e-10)  # (SimpleDeepRNN's lags apart)
    # gradients of params, x and the initial states, under jit
    g = jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(params, x, s0)
    g_ref = jax.grad(theirs, argnums=(0, 1, 2))(params, x, s0)
    for name in lay.weight_names:
        np.testing.assert_allclose(g[0][name], g_ref[0][name], rtol=0, atol=1e-10,
                                   err_msg=name)
    np.testing.assert_allclose(g[1], g_ref[1], rtol=0, atol=1e-10, err_msg="dx")
    if states:
        for a, b in zip(g[2], g_ref[2]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10, err_msg="dstate0")
    return g


@pytest.mark.parametrize("cell", jref.CELLS)
def test_cells_against_scan(cell):
    check(layer(cell))


@pytest.mark.parametrize("cell", ["SimpleDeepRNN", "LSTM", "LayerNormLSTM"])
def test_masks_truncation(cell):
    check(layer(cell), mask=MASK)
    g = check(layer(cell, truncate_gradient=2), mask=MASK, truncate=2)
    assert float(jnp.abs(g[1][:, :T - 2]).max()) == 0.0      # dx is zero before T - k


@pytest.mark.parametrize("cell", ["LSTM", "MGU"])
def test_initial_states(cell):
    g = check(layer(cell), mask=MASK, states=True)
    assert all(float(jnp.abs(d).max()) > 0 for d in g[2])


def test_go_backwards_reads_the_reversed_sequence():
    fwd, bwd = layer("GRU"), layer("GRU", go_backwards=True)
    params, x, _ = problem(fwd)
    y_b, h_b = bwd.apply(params, x, MASK)
    y_f, h_f = fwd.apply(params, x[:, ::-1], MASK[:, ::-1])
    np.testing.assert_allclose(y_b, y_f, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_b, h_f, rtol=0, atol=1e-12)


def test_return_options_and_unused_final_state():
    lay = rj.Recurrent("LSTM", D, H)
    params, x, _ = problem(lay)
    y = lay.apply(params, x)
    assert y.shape == (B, H)
    full = rj.Recurrent("LSTM", D, H, return_sequences=True).apply(params, x)
    np.testing.assert_array_equal(y, full[:, -1])
    # value_and_grad of the last output only: the final states' cotangent is a symbolic zero
    v, g = jax.value_and_grad(lambda p: jnp.sum(lay.apply(p, x) ** 2))(params)
    assert np.isfinite(float(v)) and set(g) == set(lay.weight_names)


def test_float32_close_to_float64():
    lay = layer("GRU")
    params, x, _ = problem(lay)
    p32 = {k: v.astype(jnp.float32) for k, v in params.items()}
    y64, _ = lay.apply(params, x, MASK)
    y32, _ = jax.jit(lay.apply)(p32, x.astype(jnp.float32), MASK)
    assert y32.dtype == jnp.float32
    np.testing.assert_allclose(y32, y64, rtol=0, atol=1e-5)
    g32 = jax.grad(lambda p: jnp.sum(lay.apply(p, x.astype(jnp.float32))[0]))(p32)
    g64 = jax.grad(lambda p: jnp.sum(lay.apply(p, x)[0]))(params)
    for k in g64:
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-4, atol=1e-4)


def test_vmap_matches_a_loop():
    lay = layer("LSTM")
    params, x, _ = problem(lay)
    xs = jnp.stack([x, 2 * x])
    ys = jax.vmap(lambda x: lay.apply(params, x)[0])(xs)
    for i in range(2):
        np.testing.assert_allclose(ys[i], lay.apply(params, xs[i])[0], rtol=0, atol=1e-12)
    gs = jax.vmap(jax.grad(lambda x: jnp.sum(lay.apply(params, x)[0])))(xs)
    g1 = jax.grad(lambda x: jnp.sum(lay.apply(params, x)[0]))(xs[1])
    np.testing.assert_allclose(gs[1], g1, rtol=0, atol=1e-12)


def test_init_follows_the_spec_and_the_key():
    lay = rj.Recurrent("GRU", D, H)
    a, b = lay.init(jax.random.key(1)), lay.init(jax.random.key(1))
    c = lay.init(jax.random.key(2))
    assert list(a) == list(lay.weight_names)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["W_z"], c["W_z"])
    assert a["W_z"].dtype == jnp.float32
    np.testing.assert_array_equal(a["b_z"], 0)                     # zero biases
    U = np.asarray(lay.init(jax.random.key(3), jnp.float64)["U_z"])
    np.testing.assert_allclose(U @ U.T, np.eye(H) * (U @ U.T)[0, 0], atol=1e-12)  # orthogonal
    assert (U @ U.T)[0, 0] > 0.5                                     # (times the spec's gain)


def test_training_lowers_the_loss():
    lay = rj.Recurrent("GRU", 2, 8, inner_activation="sigmoid", activation="tanh")
    head = jnp.asarray(np.random.default_rng(0).normal(size=(8,)) * 0.3)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(16, 10, 2)), jnp.float32)
    target = jnp.sum(x[:, :, 0], axis=1) * 0.2

    @jax.jit
    def step(p):
        def loss(p):
            return jnp.mean((lay.apply(p, x) @ head.astype(jnp.float32) - target) ** 2)
        v, g = jax.value_and_grad(loss)(p)
        return v, jax.tree_util.tree_map(lambda a, b: a - 0.5 * b, p, g)
    p = lay.init(jax.random.key(0))
    first, _ = step(p)
    for _ in range(60):
        v, p = step(p)
    assert float(v) < 0.5 * float(first)


def test_bad_input_says_what_is_expected():
    lay = rj.Recurrent("LSTM", D, H)
    params = lay.init(jax.random.key(0))
    x = jnp.zeros((B, T, D), jnp.float32)
    with pytest.raises(ValueError, match="input_dim 3"):
        lay.apply(params, jnp.zeros((B, T, 3), jnp.float32))
    with pytest.raises(ValueError, match="3 dimensions"):
        lay.apply(params, jnp.zeros((T, D), jnp.float32))
    with pytest.raises(ValueError, match=r"mask must have shape"):
        lay.apply(params, x, mask=jnp.ones((B, T + 1)))
    with pytest.raises(TypeError, match="x is float64"):
        lay.apply(params, x.astype(jnp.float64))
    with pytest.raises(ValueError, match="weights"):
        lay.apply({"W_i": params["W_i"]}, x)
    with pytest.raises(ValueError, match="initial_state must be a list of 2"):
        lay.apply(params, x, initial_state=[jnp.zeros((B, H))])
    with pytest.raises(ValueError, match="truncate_gradient"):
        rj.Recurrent("LSTM", D, H, truncate_gradient=0)
    with pytest.raises(TypeError, match="no parameter"):
        rj.Recurrent("LSTM", D, H, nonsense=1)


def test_the_cuda_kernels_through_their_emulation():
    """backend="cuda-emulated": the CUDA kernels' handlers (the CUDA backend's struct, its
    save layout) on XLA's CPU platform agree with the C backend's."""
    emu = rj.Recurrent("LSTM", D, H, return_sequences=True, return_state=True,
                       backend="cuda-emulated")
    c = layer("LSTM")
    params, x, rng = problem(c)
    s0 = [jnp.asarray(rng.normal(size=(B, H))) for _ in range(2)]

    def loss(lay):
        return lambda p, x, s: sum(jnp.sum(o * (i + 1)) for i, o in
                                   enumerate(lay.apply(p, x, MASK, s)))
    for a, b in zip(jax.jit(emu.apply)(params, x, MASK, s0), c.apply(params, x, MASK, s0)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    g_emu = jax.jit(jax.grad(loss(emu), argnums=(0, 1, 2)))(params, x, s0)
    g_c = jax.grad(loss(c), argnums=(0, 1, 2))(params, x, s0)
    for a, b in zip(jax.tree_util.tree_leaves(g_emu), jax.tree_util.tree_leaves(g_c)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_the_gpu_handlers_compile():
    """backend="cuda": the handlers that take XLA's stream and scratch build against the
    nvcc-built kernels (nothing runs: no GPU is needed to build)."""
    from rnngen.backends import DeviceError, cublas_dirs, nvcc_path
    from rnngen.jax import _ffi
    try:
        cublas_dirs()
        nvcc_path()
    except DeviceError as e:
        pytest.skip(str(e))
    from rnngen.build import runtime_header
    from rnngen.pipeline import built_library
    from rnngen.runtime.ffi import cdef_from_headers
    lib, ir, header = built_library(rj.Recurrent("GRU", D, H).cell_class.spec, None, "cuda")
    out = _ffi.build_handlers(ir, cdef_from_headers(runtime_header(), header), str(lib),
                              "cuda")
    assert out.is_file() and "PlatformStream" in (out.parent / "gru_jax_cuda.cc").read_text()


@pytest.mark.gpu
def test_on_the_gpu():
    """backend="cuda" on XLA's CUDA platform (a JAX with its CUDA plugin) against the C
    backend: outputs and every gradient, float64."""
    if jax.default_backend() != "gpu":
        pytest.skip("JAX has no GPU here (it needs the jax[cuda13] plugin)")
    gpu, c = layer("GRU", backend="cuda"), layer("GRU", backend="c")
    params, x, _ = problem(c)
    y_gpu = jax.jit(gpu.apply)(params, x, MASK)
    g = jax.grad(lambda p: jnp.sum(gpu.apply(p, x, MASK)[0] ** 2))(params)
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        p_cpu, x_cpu = jax.device_put(params, cpu), jax.device_put(x, cpu)
        y_c = c.apply(p_cpu, x_cpu, MASK)
        g_c = jax.grad(lambda p: jnp.sum(c.apply(p, x_cpu, MASK)[0] ** 2))(p_cpu)
    for a, b in zip(y_gpu, y_c):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12)
    for k in g:
        np.testing.assert_allclose(np.asarray(g[k]), np.asarray(g_c[k]), rtol=0, atol=1e-10)
