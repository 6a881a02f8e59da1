"""Initial states, final states, go_backwards and Bidirectional (issue 13, part 1).

Every seed layer against the own numpy reference started from given states (forward,
1e-10) and against central finite differences of it: the gradients w.r.t. x, every
weight and every initial state, of a loss that reads the outputs and the final states,
with masks and truncation, in float64; float32 against float64; the CUDA emulation
against the C backend; user specs; then Keras 3 (numpy backend) where the math
coincides."""
import numpy as np
import pytest

import reference as ref
from helpers import B, CELLS, D, H, T, central_diff, masks, random_problem
from rnngen import layers

STATES = {"LSTM": ["h", "c"]}


def state_names(name):
    return STATES.get(name, ["h"])


def make_layer(name, W, dtype="float64", **kw):
    kw.setdefault("return_sequences", True)
    return getattr(layers, name)(H, weights=W, dtype=dtype, **kw)


def start_from(name, p, init):
    """The reference's registers holding the initial states one step back (zeros
    further back) and one step of history counted (started(h[-1]) holds at step 0)."""
    regs, nreal = ref.initial_state(name, p, B, H)
    for s, v in zip(state_names(name), init):
        regs[s][0] = v.copy()
    return regs, nreal + 1


def ref_loss(name, W, x, mask, init, dy, ds, truncate=-1):
    """A function: sum(dy * y) + sum(ds_i * final state_i) of the reference started from
    init (the arrays as they are when it is called); with truncate = k < T the state
    entering step T - k is held fixed at its value now (Theano's rule)."""
    p = ref.DEFAULTS[name]
    t0 = T - truncate if 0 < truncate < T else 0
    fixed = None
    if t0:
        _, fixed = ref.run(name, p, W, x[:, :t0], None if mask is None else mask[:, :t0],
                           start=start_from(name, p, init))

    def loss():
        start = fixed if t0 else start_from(name, p, init)
        y, (regs, _) = ref.run(name, p, W, x, mask, start=start, t_start=t0)
        total = float(np.sum(y * dy[:, t0:]))
        for s, d in zip(state_names(name), ds):
            total += float(np.sum(regs[s][0] * d))
        return total
    return loss


def problem(name, seed):
    x, W = random_problem(name, seed=seed)
    rng = np.random.default_rng(seed + 100)
    init = [rng.normal(scale=0.7, size=(B, H)) for _ in state_names(name)]
    dy = rng.normal(size=(B, T, H))
    ds = [rng.normal(size=(B, H)) for _ in state_names(name)]
    return x, W, init, dy, ds


@pytest.mark.parametrize("mask_kind", ["none", "start", "holes"])
@pytest.mark.parametrize("name", CELLS)
def test_forward_from_initial_states_matches_reference(name, mask_kind):
    x, W, init, _, _ = problem(name, 1)
    mask = masks(mask_kind)
    p = ref.DEFAULTS[name]
    y_ref, (regs, _) = ref.run(name, p, W, x, mask, start=start_from(name, p, init))
    layer = make_layer(name, W, return_state=True)
    y, *final = layer(x, mask=mask, initial_state=init)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-13)
    assert len(final) == len(state_names(name))
    for s, f in zip(state_names(name), final):
        np.testing.assert_allclose(f, regs[s][0], rtol=1e-10, atol=1e-13, err_msg=s)
    if mask_kind == "start":   # leading padded steps keep the initial state (and output it)
        np.testing.assert_allclose(y[2, :4], np.repeat(init[0][2:3], 4, axis=0), rtol=0, atol=0)
    # no initial state: the states are zeros; the final states are the carried values
    y0, *final0 = make_layer(name, W, return_state=True)(x, mask=mask)
    y0_ref, (regs0, _) = ref.run(name, p, W, x, mask)
    np.testing.assert_allclose(y0, y0_ref, rtol=1e-10, atol=1e-13)
    for s, f in zip(state_names(name), final0):
        np.testing.assert_allclose(f, regs0[s][0], rtol=1e-10, atol=1e-13)
    # without return_sequences the output is the final output state
    last, *_ = make_layer(name, W, return_state=True, return_sequences=False)(
        x, mask=mask, initial_state=init)
    np.testing.assert_allclose(last, regs["h"][0], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("truncate", [-1, 2, T + 1])
@pytest.mark.parametrize("mask_kind", ["none", "start", "holes"])
@pytest.mark.parametrize("name", CELLS)
def test_state_gradients_match_finite_differences(name, mask_kind, truncate):
    x, W, init, dy, ds = problem(name, 2)
    mask = masks(mask_kind)
    layer = make_layer(name, W, return_state=True, truncate_gradient=truncate)
    layer(x, mask=mask, initial_state=init)
    dx = layer.backward(dy, dstates=ds)
    x, W, init = x.copy(), [w.copy() for w in W], [a.copy() for a in init]
    loss = ref_loss(name, W, x, mask, init, dy, ds, truncate)
    for k, a in enumerate(init):
        np.testing.assert_allclose(layer.initial_state_grads[k], central_diff(loss, a),
                                   rtol=1e-6, atol=1e-8, err_msg=f"initial state {k}")
    np.testing.assert_allclose(dx, central_diff(loss, x), rtol=1e-6, atol=1e-8)
    for k, (g, w) in enumerate(zip(layer.grads, W)):
        np.testing.assert_allclose(g, central_diff(loss, w), rtol=1e-6, atol=1e-8,
                                   err_msg=f"weight {k}")
    if 0 < truncate < T:
        assert all(np.all(g == 0) for g in layer.initial_state_grads)


@pytest.mark.parametrize("name", ["SimpleRNN", "LSTM", "SimpleDeepRNN"])
def test_final_state_gradients_alone(name):
    """dstates without dy (and the output only the last step): the gradient flows from
    the final states only; no initial state: initial_state_grads is None."""
    x, W, init, _, ds = problem(name, 3)
    mask = masks("end")
    layer = make_layer(name, W, return_state=True, return_sequences=False)
    layer(x, mask=mask)
    dx = layer.backward(np.zeros((B, H)), dstates=ds)
    assert layer.initial_state_grads is None
    zeros = [np.zeros((B, H)) for _ in init]
    x = x.copy()
    loss = ref_loss(name, W, x, mask, zeros, np.zeros((B, T, H)), ds)
    # (the reference started from zero states counts one step of history: only
    # SimpleDeepRNN reads it, so compare it without initial states separately)
    if name != "SimpleDeepRNN":
        np.testing.assert_allclose(dx, central_diff(loss, x), rtol=1e-6, atol=1e-8)
    else:
        p = ref.DEFAULTS[name]

        def loss0():
            y, (regs, _) = ref.run(name, p, W, x, mask)
            return float(np.sum(regs["h"][0] * ds[0]))
        np.testing.assert_allclose(dx, central_diff(loss0, x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", CELLS)
def test_float32_states_agree_with_float64(name):
    x, W, init, dy, ds = problem(name, 4)
    mask = masks("holes")
    out = {}
    for dt in ("float64", "float32"):
        layer = make_layer(name, W, dtype=dt, return_state=True)
        y, *final = layer(x.astype(dt), mask=mask, initial_state=[a.astype(dt) for a in init])
        dx = layer.backward(dy.astype(dt), dstates=[d.astype(dt) for d in ds])
        out[dt] = [y, *final, dx, *layer.initial_state_grads, *layer.grads]
        assert all(a.dtype == np.dtype(dt) for a in out[dt])
    for a, b in zip(out["float32"], out["float64"]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", CELLS)
def test_go_backwards_is_the_reversed_sequence(name):
    """go_backwards runs the reversed x (and mask) and returns the outputs in that
    (reversed) order, as Keras; dx comes back in x's order."""
    x, W, init, dy, ds = problem(name, 5)
    mask = masks("holes")
    back = make_layer(name, W, go_backwards=True, return_state=True)
    y, *final = back(x, mask=mask, initial_state=init)
    xr, mr = x[:, ::-1].copy(), mask[:, ::-1].copy()
    fwd = make_layer(name, W, return_state=True)
    y_r, *final_r = fwd(xr, mask=mr, initial_state=init)
    np.testing.assert_array_equal(y, y_r)
    for a, b in zip(final, final_r):
        np.testing.assert_array_equal(a, b)
    dx = back.backward(dy, dstates=ds)
    dx_r = fwd.backward(dy, dstates=ds)
    np.testing.assert_array_equal(dx, dx_r[:, ::-1])
    for a, b in zip(back.grads + back.initial_state_grads, fwd.grads + fwd.initial_state_grads):
        np.testing.assert_array_equal(a, b)
    # and against finite differences of the reference on the reversed input
    xr = xr.copy()
    loss = ref_loss(name, W, xr, mr, init, dy, ds)   # x reversed: dx reversed back
    np.testing.assert_allclose(dx, central_diff(loss, xr)[:, ::-1], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_bidirectional_merges_and_gradients(merge_mode):
    name = "GRU"
    x, W, _, _, _ = problem(name, 6)
    W2 = [w[::-1].copy() if w.ndim == 2 else w + 0.1 for w in W]
    mask = masks("end")
    bi = layers.Bidirectional(make_layer(name, W, return_state=True), merge_mode)
    bi.set_weights(W + W2)
    rng = np.random.default_rng(7)
    init = [rng.normal(size=(B, H)), rng.normal(size=(B, H))]
    out = bi(x, mask=mask, initial_state=init)
    p = ref.DEFAULTS[name]
    y_f, (rf, _) = ref.run(name, p, W, x, mask, start=start_from(name, p, init[:1]))
    y_b, (rb, _) = ref.run(name, p, W2, x[:, ::-1], mask[:, ::-1],
                           start=start_from(name, p, init[1:]))
    keep = mask[:, :, None]   # padded steps output zero (as Keras's Bidirectional)
    y_f, y_b = y_f * keep, y_b[:, ::-1] * keep
    merged = {"concat": lambda: np.concatenate([y_f, y_b], -1), "sum": lambda: y_f + y_b,
              "mul": lambda: y_f * y_b, "ave": lambda: (y_f + y_b) / 2,
              None: lambda: [y_f, y_b]}[merge_mode]()
    n_out = 2 if merge_mode is None else 1
    outs, states = out[:n_out], out[n_out:]
    for a, b in zip(outs, merged if merge_mode is None else [merged]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(states[0], rf["h"][0], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(states[1], rb["h"][0], rtol=1e-10, atol=1e-13)
    assert bi.output_shape[0][-1] == (2 * H if merge_mode == "concat" else H)
    # backward against finite differences of the merged reference
    dy = [rng.normal(size=(B, T, H)) for _ in range(2)] if merge_mode is None else \
        rng.normal(size=np.shape(merged))
    ds = [rng.normal(size=(B, H)), rng.normal(size=(B, H))]
    dx = bi.backward(dy, dstates=ds)
    xc = x.copy()

    def loss():
        yf, (a, _) = ref.run(name, p, W, xc, mask, start=start_from(name, p, init[:1]))
        yb, (c, _) = ref.run(name, p, W2, xc[:, ::-1], mask[:, ::-1],
                             start=start_from(name, p, init[1:]))
        yf, yb = yf * keep, yb[:, ::-1] * keep
        m = {"concat": lambda: np.concatenate([yf, yb], -1), "sum": lambda: yf + yb,
             "mul": lambda: yf * yb, "ave": lambda: (yf + yb) / 2,
             None: lambda: None}[merge_mode]()
        total = float(np.sum(dy[0] * yf) + np.sum(dy[1] * yb)) if merge_mode is None \
            else float(np.sum(dy * m))
        return total + float(np.sum(a["h"][0] * ds[0]) + np.sum(c["h"][0] * ds[1]))
    np.testing.assert_allclose(dx, central_diff(loss, xc), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(bi.initial_state_grads[1], central_diff(loss, init[1]),
                               rtol=1e-6, atol=1e-8)
    assert len(bi.grads) == 2 * len(W) and len(bi.get_weights()) == 2 * len(W)
    again = layers.from_config(bi.get_config())
    assert isinstance(again, layers.Bidirectional) and again.merge_mode == merge_mode


def test_emulated_cuda_states_agree_with_c():
    for name in ("LSTM", "SimpleDeepRNN"):
        x, W, init, dy, ds = problem(name, 8)
        mask = masks("holes")
        res = {}
        for be in ("c", "cuda-emulated"):
            layer = make_layer(name, W, return_state=True, backend=be, truncate_gradient=-1)
            y, *final = layer(x, mask=mask, initial_state=init)
            dx = layer.backward(dy, dstates=ds)
            res[be] = [y, *final, dx, *layer.initial_state_grads, *layer.grads]
        for a, b in zip(res["cuda-emulated"], res["c"]):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-13)


def test_user_spec_states(tmp_path):
    """A two-state user cell (one state not the output) and the mean(): initial states
    change the result as a shifted run does: starting from the states after k steps
    gives the last T-k outputs of the full run."""
    import rnngen
    for cls in (rnngen.load_example("layernorm_lstm"), rnngen.load_example("mgu")):
        layer = cls(4, input_dim=3, return_sequences=True, return_state=True,
                    dtype="float64", seed=0)
        x = np.random.default_rng(9).normal(size=(2, 7, 3))
        y, *final = layer(x)
        y3, *mid = layer(x[:, :3])
        y_rest, *final2 = layer(x[:, 3:], initial_state=mid)
        np.testing.assert_allclose(y_rest, y[:, 3:], rtol=1e-12, atol=1e-14)
        for a, b in zip(final2, final):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        assert len(final) == len(layer.state_names)


def test_state_argument_errors():
    x, W, init, dy, ds = problem("LSTM", 10)
    layer = make_layer("LSTM", W, return_state=True)
    with pytest.raises(ValueError, match=r"list of 2 arrays .*\(h, c\)"):
        layer(x, initial_state=init[:1])
    with pytest.raises(ValueError, match="for c has shape"):
        layer(x, initial_state=[init[0], np.zeros((B, H + 1))])
    with pytest.raises(TypeError, match="floating-point"):
        layer(x, initial_state=[init[0], np.zeros((B, H), dtype=int)])
    layer(x, initial_state=init)
    with pytest.raises(ValueError, match="dstates must be a list of 2"):
        layer.backward(dy, dstates=ds[:1])
    plain = make_layer("LSTM", W)
    plain(x)
    with pytest.raises(ValueError, match="return_state=True"):
        plain.backward(dy, dstates=ds)
    with pytest.raises(TypeError, match="go_backwards must be True or False"):
        make_layer("GRU", random_problem("GRU")[1], go_backwards="yes")
    with pytest.raises(ValueError, match="merge_mode must be one of"):
        layers.Bidirectional(plain, merge_mode="max")
    with pytest.raises(TypeError, match="wraps a recurrent layer"):
        layers.Bidirectional(layers.Embedding(3, 2))


# Keras 3 (numpy backend, float64: conftest's keras fixture) where the math coincides:
# its default activations, GRU with reset_after=False.  Keras outputs zeros at padded
# steps before a sample's first real step where rnngen outputs the carried state (the
# initial state): the masks here pad the end, or there is no initial state.
KERAS_KINDS = {"SimpleRNN": ("SimpleRNN", {}), "GRU": ("GRU", {"reset_after": False}),
               "LSTM": ("LSTM", {})}


def keras_pair(keras, kind, seed, **kw):
    from rnngen import interop
    cls, extra = KERAS_KINDS[kind]
    k = getattr(keras.layers, cls)(H, dtype="float64", **extra, **kw)
    k.build((None, None, D))
    rng = np.random.default_rng(seed)
    k.set_weights([rng.normal(scale=0.5, size=w.shape) for w in k.get_weights()])
    return k, interop.to_rnngen(k)


@pytest.mark.parametrize("kind", list(KERAS_KINDS))
def test_keras_return_state_and_initial_state(keras, kind):
    k, ours = keras_pair(keras, kind, 11, return_sequences=True, return_state=True)
    assert ours.return_state and ours.return_sequences
    rng = np.random.default_rng(12)
    x = rng.normal(size=(B, T, D))
    mask = masks("end")
    init = [rng.normal(size=(B, H)) for _ in ours.state_names]
    expected = [np.asarray(a) for a in k(x, mask=mask.copy(), initial_state=init)]
    got = ours(x, mask=mask, initial_state=init)
    assert len(got) == len(expected) == 1 + len(ours.state_names)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", list(KERAS_KINDS))
def test_keras_go_backwards(keras, kind):
    k, ours = keras_pair(keras, kind, 13, return_sequences=True, go_backwards=True,
                         return_state=True)
    assert ours.go_backwards
    x = np.random.default_rng(14).normal(size=(B, T, D))
    mask = masks("end")      # reversed: padded steps first, from zero states
    expected = [np.asarray(a) for a in k(x, mask=mask.copy())]
    for a, b in zip(ours(x, mask=mask), expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("merge_mode", ["concat", "ave", None])
@pytest.mark.parametrize("kind", list(KERAS_KINDS))
def test_keras_bidirectional(keras, kind, merge_mode):
    from rnngen import interop
    cls, extra = KERAS_KINDS[kind]
    kb = keras.layers.Bidirectional(
        getattr(keras.layers, cls)(H, dtype="float64", return_sequences=True,
                                   return_state=True, **extra), merge_mode=merge_mode)
    kb.build((None, None, D))
    rng = np.random.default_rng(15)
    kb.set_weights([rng.normal(scale=0.5, size=w.shape) for w in kb.get_weights()])
    x = rng.normal(size=(B, T, D))
    mask = masks("end")
    expected = [np.asarray(a) for a in kb(x, mask=mask.copy())]
    ours = layers.Bidirectional(interop.to_rnngen(kb.forward_layer), merge_mode,
                                interop.to_rnngen(kb.backward_layer))
    got = ours(x, mask=mask)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
