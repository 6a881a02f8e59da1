"""rnngen.keras on one Keras backend, the one KERAS_BACKEND names (jax or torch):
tests/test_keras_layers.py runs this file in a fresh process per backend (Keras picks its
backend once per process, and the rest of the suite uses the numpy one).

Against keras.layers.SimpleRNN / GRU (both reset_after) / LSTM with copied weights, in
float64: outputs and the gradients of every weight and of x, masks, return_state,
initial_state, go_backwards; Embedding(mask_zero=True) upstream; fit lowers the loss;
save / load_model gives the same predictions, a user spec travelling inside the file."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
BACKEND = keras.backend.backend()
if BACKEND not in ("jax", "torch") or os.environ.get("KERAS_BACKEND") != BACKEND:
    pytest.skip("run by tests/test_keras_layers.py with KERAS_BACKEND=jax or torch",
                allow_module_level=True)
if BACKEND == "jax":
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
else:
    import torch
try:   # Keras maps float64 to float32 in type promotion off TensorFlow (see conftest.py)
    from keras.src.backend.common import dtypes
    dtypes.BIT64_TO_BIT32_DTYPE["float64"] = "float64"
except (ImportError, AttributeError):   # pragma: no cover
    pass

import rnngen.keras as rk  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
B, T, D, H = 3, 7, 4, 5
MASK = np.array([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 0, 0]], bool)
CASES = [("SimpleRNN", {}), ("SimpleRNN", {"activation": "relu"}),
         ("GRU", {"reset_after": False}), ("GRU", {}), ("LSTM", {}),
         ("LSTM", {"use_bias": False})]


def np_(a):
    return keras.ops.convert_to_numpy(a)


def pair(name, kw, seed=0, **more):
    """A Keras layer and ours, built, with the same random weights."""
    rng = np.random.default_rng(seed)
    k = getattr(keras.layers, name)(H, dtype="float64", **kw, **more)
    ours = getattr(rk, name)(H, dtype="float64", **kw, **more)
    k.build((B, T, D))
    ours.build((B, T, D))
    k.set_weights([rng.normal(scale=0.5, size=w.shape) for w in k.get_weights()])
    ours.set_weights(k.get_weights())
    return k, ours


def grads(layer, x, mask, dy):
    """(gradients of sum(y * dy) w.r.t. every trainable weight, w.r.t. x)."""
    if BACKEND == "jax":
        tv = [v.value for v in layer.trainable_variables]
        ntv = [v.value for v in layer.non_trainable_variables]

        def loss(tv, x):
            y, _ = layer.stateless_call(tv, ntv, x, mask=mask)
            return jnp.sum(y * dy)
        gw, gx = jax.grad(loss, argnums=(0, 1))(tv, jnp.asarray(x))
        return [np.asarray(g) for g in gw], np.asarray(gx)
    xt = torch.tensor(x, requires_grad=True)
    for v in layer.trainable_variables:
        v.value.grad = None
    y = layer(xt, mask=None if mask is None else torch.tensor(mask))
    (y * torch.tensor(dy)).sum().backward()
    return [v.value.grad.numpy() for v in layer.trainable_variables], xt.grad.numpy()


@pytest.mark.parametrize("name,kw,masked", [(n, kw, True) for n, kw in CASES]
                         + [("SimpleRNN", {}, False), ("LSTM", {}, False)])
def test_matches_keras(name, kw, masked):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, T, D))
    mask = MASK if masked else None
    k, ours = pair(name, kw, return_sequences=True)
    np.testing.assert_allclose(np_(ours(x, mask=mask)), np_(k(x, mask=mask)), rtol=0,
                               atol=1e-10)
    dy = rng.normal(size=(B, T, H))
    gk, gxk = grads(k, x, mask, dy)
    go, gxo = grads(ours, x, mask, dy)
    assert len(go) == len(gk)
    for a, b, v in zip(go, gk, k.trainable_variables):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10, err_msg=v.name)
    np.testing.assert_allclose(gxo, gxk, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_states_and_go_backwards(name):
    """With an initial state, a sample whose first steps are padding outputs the carried
    initial h there (rnngen, and Keras on jax); Keras's torch backend outputs zeros at
    those steps, so the mask here pads neither end (go_backwards reads from the end)."""
    mask = MASK.copy()
    mask[1] = [1, 0, 0, 1, 1, 1, 1]
    mask[2] = [1, 1, 0, 1, 0, 0, 1]
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, T, D))
    n = 2 if name == "LSTM" else 1
    s0 = [rng.normal(size=(B, H)) for _ in range(n)]
    for back in (False, True):
        k, ours = pair(name, {}, return_state=True, go_backwards=back, return_sequences=True)
        a, b = k(x, initial_state=s0, mask=mask), ours(x, initial_state=s0, mask=mask)
        assert len(a) == len(b) == n + 1
        for u, v in zip(a, b):
            np.testing.assert_allclose(np_(v), np_(u), rtol=0, atol=1e-10)


def test_embedding_mask_zero_upstream():
    idx = np.array([[3, 5, 0, 0, 0], [1, 2, 3, 4, 0], [0, 0, 7, 8, 9]])
    emb = keras.layers.Embedding(10, D, mask_zero=True, dtype="float64")
    emb.build((None, 5))
    k, ours = pair("LSTM", {})
    a = k(emb(idx), mask=emb.compute_mask(idx))
    model = keras.Sequential([keras.Input((5,), dtype="int32"), emb, ours])
    np.testing.assert_allclose(np_(model(idx)), np_(a), rtol=0, atol=1e-10)
    # padding at the end changes nothing: the output is the last real step's
    np.testing.assert_allclose(np_(model(idx[:1, :2]))[0], np_(model(idx))[0], atol=1e-12)


def _model(layer):
    return keras.Sequential([keras.Input((T, D)), layer, keras.layers.Dense(1)])


@pytest.mark.parametrize("layer", ["LSTM", "Recurrent"])
def test_fit_lowers_the_loss(layer):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, T, D)).astype("float32")
    y = x[:, :, 0].sum(axis=1, keepdims=True) * 0.3
    lay = rk.Recurrent(EXAMPLES / "mgu.yaml", 8, seed=0) if layer == "Recurrent" \
        else getattr(rk, layer)(8)
    model = _model(lay)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    hist = model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]
    assert model.predict(x, verbose=0).shape == (64, 1)


def test_save_and_load_carry_a_user_spec(tmp_path):
    spec = tmp_path / "my_cell.yaml"
    shutil.copy(EXAMPLES / "mgu.yaml", spec)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(B, T, D)).astype("float32")
    model = keras.Sequential([keras.Input((T, D)),
                              rk.Recurrent(spec, H, return_sequences=True, seed=1),
                              rk.GRU(H, reset_after=False, go_backwards=True),
                              keras.layers.Dense(2)])
    before = model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    spec.unlink()                                  # the file is all there is
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, rtol=0, atol=1e-6)
    assert [type(la).__name__ for la in loaded.layers[:2]] == ["Recurrent", "GRU"]
    assert loaded.layers[1].go_backwards and not loaded.layers[1].reset_after


def test_recurrent_weights_are_the_specs():
    lay = rk.Recurrent("GRU", H, return_sequences=True, seed=0, activation="tanh")
    lay.build((B, T, D))
    assert [v.name for v in lay.weights] == ["W_z", "U_z", "b_z", "W_r", "U_r", "b_r",
                                               "W_h", "U_h", "b_h"]
    from rnngen import layers
    ref = layers.GRU(H, activation="tanh", weights=[np_(v) for v in lay.weights],
                     dtype="float32", return_sequences=True)
    x = np.random.default_rng(4).normal(size=(B, T, D)).astype("float32")
    np.testing.assert_allclose(np_(lay(x, mask=MASK)), ref.forward(x, MASK, training=False),
                               atol=1e-6)


def test_unsupported_arguments_say_so():
    with pytest.raises(ValueError, match="dropout"):
        rk.LSTM(4, dropout=0.1)
    with pytest.raises(ValueError, match="stateful"):
        rk.GRU(4, stateful=True)
    with pytest.raises(ValueError, match="hard_sigmoid"):
        rk.LSTM(4, recurrent_activation="hard_sigmoid")
    with pytest.raises(ValueError, match="reset_after=False"):
        rk.GRU(4, activation="relu")
    with pytest.raises(ValueError, match="float32 or float64"):
        rk.LSTM(4, dtype="float16").build((2, 3, 4))


def test_masking_layer_and_bidirectional():
    """A keras.layers.Masking upstream, and keras.layers.Bidirectional around our layer,
    against the same with keras.layers.GRU."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(B, T, D))
    x[1, 4:] = 0.0                                  # padded at the end: Masking finds it
    x[2, :2] = 0.0
    k, ours = pair("GRU", {}, return_sequences=True)
    masking = keras.layers.Masking(0.0)
    np.testing.assert_allclose(np_(keras.Sequential([masking, ours])(x)),
                               np_(keras.Sequential([masking, k])(x)), rtol=0, atol=1e-10)
    m = masking.compute_mask(x)
    for rs in (True, False):
        k, ours = pair("GRU", {}, return_sequences=rs)
        bi_k = keras.layers.Bidirectional(k)
        bi_o = keras.layers.Bidirectional(ours)
        bi_k.build((B, T, D))
        bi_o.build((B, T, D))
        bi_o.set_weights(bi_k.get_weights())
        np.testing.assert_allclose(np_(bi_o(x, mask=m)), np_(bi_k(x, mask=m)), rtol=0,
                                   atol=1e-10)
