"""The Keras-style API: constructor arguments, weights, config, bad inputs, Embedding."""
import inspect

import numpy as np
import pytest

import reference as ref
from rnngen import layers
from rnngen.errors import KernelError

SEED_SIGNATURES = {
    "SimpleRNN": ["output_dim", "init", "inner_init", "activation", "weights",
                  "truncate_gradient", "return_sequences", "input_dim", "input_length"],
    "SimpleDeepRNN": ["output_dim", "depth", "init", "inner_init", "activation",
                      "inner_activation", "weights", "truncate_gradient", "return_sequences",
                      "input_dim", "input_length"],
    "GRU": ["output_dim", "init", "inner_init", "activation", "inner_activation", "weights",
            "truncate_gradient", "return_sequences", "input_dim", "input_length"],
    "LSTM": ["output_dim", "init", "inner_init", "forget_bias_init", "activation",
             "inner_activation", "weights", "truncate_gradient", "return_sequences",
             "input_dim", "input_length"],
}
for _j in ("JZS1", "JZS2", "JZS3"):
    SEED_SIGNATURES[_j] = SEED_SIGNATURES["GRU"]
DEFAULT_ACTS = {"SimpleRNN": ("sigmoid", None), "SimpleDeepRNN": ("sigmoid", "hard_sigmoid"),
                "GRU": ("sigmoid", "hard_sigmoid"), "LSTM": ("tanh", "hard_sigmoid"),
                "JZS1": ("tanh", "sigmoid"), "JZS2": ("tanh", "sigmoid"),
                "JZS3": ("tanh", "sigmoid")}
NWEIGHTS = {"SimpleRNN": 3, "SimpleDeepRNN": 5, "GRU": 9, "LSTM": 12, "JZS1": 8, "JZS2": 9,
            "JZS3": 9}


@pytest.mark.parametrize("name", list(SEED_SIGNATURES))
def test_signature_and_defaults(name):
    cls = getattr(layers, name)
    sig = inspect.signature(cls)
    positional = [p.name for p in sig.parameters.values() if p.kind != p.KEYWORD_ONLY]
    assert positional == SEED_SIGNATURES[name]
    assert [p.name for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY] == [
        "return_state", "go_backwards", "dtype", "seed", "backend"]
    act, inner = DEFAULT_ACTS[name]
    assert sig.parameters["activation"].default == act
    if inner:
        assert sig.parameters["inner_activation"].default == inner
    layer = cls(5, input_dim=4, seed=0)
    assert len(layer.get_weights()) == NWEIGHTS[name]
    assert layer.output_shape == (None, 5)
    assert cls(5, return_sequences=True, input_length=7).output_shape == (None, 7, 5)


def test_initialization_rules():
    lstm = layers.LSTM(4, input_dim=3, seed=0)
    w = dict(zip(lstm.weight_names(), lstm.get_weights()))
    assert np.all(w["b_f"] == 1) and np.all(w["b_i"] == 0)
    u = w["U_i"].astype(np.float64)
    np.testing.assert_allclose(u @ u.T, 1.21 * np.eye(4), atol=1e-5)   # orthogonal * 1.1
    s = np.sqrt(6 / 7)
    assert np.abs(w["W_i"]).max() <= s
    a = layers.GRU(4, input_dim=3, seed=3).get_weights()
    b = layers.GRU(4, input_dim=3, seed=np.random.default_rng(3)).get_weights()
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], layers.GRU(4, input_dim=3, seed=4).get_weights()[0])
    jz = dict(zip(layers.JZS1(4, input_dim=4).weight_names(), layers.JZS1(4, input_dim=4).get_weights()))
    assert np.array_equal(jz["Pmat"], np.eye(4))
    p = dict(zip(layers.JZS2(4, input_dim=9).weight_names(), layers.JZS2(4, input_dim=9, seed=1).get_weights()))["Pmat"]
    np.testing.assert_allclose(np.abs(p), 1 / 3, rtol=1e-6)


@pytest.mark.parametrize("name", list(SEED_SIGNATURES))
def test_weights_round_trip(name):
    rng = np.random.default_rng(0)
    shapes = ref.weight_shapes(name, 3, 4)
    W = [rng.normal(size=s) for s in shapes]
    layer = getattr(layers, name)(4, weights=W, dtype="float64")
    assert layer.input_dim == 3
    got = layer.get_weights()
    assert [g.shape for g in got] == [tuple(s) for s in shapes]
    for a, b in zip(got, W):
        assert np.array_equal(a, b)
    other = getattr(layers, name)(4, input_dim=3, dtype="float64", seed=1)
    other.set_weights(got)
    x = rng.normal(size=(2, 5, 3))
    np.testing.assert_array_equal(other(x), layer(x))


def test_wrong_weights_name_expected_shapes():
    W = layers.GRU(4, input_dim=3).get_weights()
    with pytest.raises(ValueError, match=r"wrong number of weights: got 8; GRU expects 9 arrays: "
                                         r"W_z \(3, 4\), U_z \(4, 4\), b_z \(4,\)"):
        layers.GRU(4, weights=W[:-1])
    bad = list(W)
    bad[1] = np.zeros((4, 5))
    with pytest.raises(ValueError, match=r"weight U_z has shape \(4, 5\), expected \(4, 4\)"):
        layers.GRU(4, weights=bad)
    with pytest.raises(ValueError, match=r"JZS1 expects 8 arrays: W_z .* Pmat \(3, 4\)"):
        layers.JZS1(4, weights=layers.JZS2(4, input_dim=3).get_weights())
    with pytest.raises(TypeError, match="weights must be a list"):
        layers.GRU(4, weights=np.zeros(3))


@pytest.mark.parametrize("name", list(SEED_SIGNATURES))
def test_config_round_trip(name):
    layer = getattr(layers, name)(6, truncate_gradient=3, return_sequences=True, input_dim=2,
                                  activation="relu", dtype="float64")
    cfg = layer.get_config()
    assert cfg["class_name"] == name and cfg["activation"] == "relu"
    again = layers.from_config(cfg)
    assert type(again) is type(layer) and again.get_config() == cfg
    again.set_weights(layer.get_weights())
    x = np.random.default_rng(0).normal(size=(2, 4, 2))
    np.testing.assert_array_equal(again(x), layer(x))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown activation 'tanhh'"):
        layers.GRU(4, activation="tanhh")
    with pytest.raises(ValueError, match="softmax.*not elementwise"):
        layers.LSTM(4, inner_activation="softmax")
    with pytest.raises(ValueError, match="unknown init 'glorot'"):
        layers.LSTM(4, init="glorot")
    with pytest.raises(ValueError, match="output_dim must be a positive integer"):
        layers.GRU(0)
    with pytest.raises(ValueError, match="truncate_gradient must be -1"):
        layers.GRU(4, truncate_gradient=0)
    with pytest.raises(ValueError, match="depth must be an integer (>= 1|from 1)"):
        layers.SimpleDeepRNN(4, depth=0)
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        layers.GRU(4, dtype="float16")
    with pytest.raises(TypeError):
        layers.GRU(4, bogus=1)
    with pytest.raises(ValueError, match="unknown layer class"):
        layers.from_config({"class_name": "Nope"})


def test_bad_inputs():
    layer = layers.LSTM(4, input_dim=3, return_sequences=True)
    x = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"3 dimensions.*got shape \(5, 3\)"):
        layer(x[0])
    with pytest.raises(ValueError, match=r"input_dim 2, but the layer was built for input_dim 3"):
        layer(np.zeros((2, 5, 2)))
    with pytest.raises(TypeError, match="float32 or float64 array, got dtype int64"):
        layer(np.zeros((2, 5, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="numpy array"):
        layer("abc")
    with pytest.raises(ValueError, match="at least one sample and one step"):
        layer(np.zeros((2, 0, 3)))
    with pytest.raises(ValueError, match=r"mask must have shape \(nb_samples, timesteps\) = \(2, 5\)"):
        layer(x, mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        layer(x, mask=np.full((2, 5), 2))
    with pytest.raises(ValueError, match="input_length=4"):
        layers.GRU(4, input_length=4)(x)
    fresh = layers.GRU(4)
    with pytest.raises(ValueError, match="backward\\(\\) needs a forward"):
        fresh.backward(np.zeros((2, 4)))
    layer(x)
    with pytest.raises(ValueError, match=r"dy must have the shape of the last output \(2, 5, 4\)"):
        layer.backward(np.zeros((2, 4)))
    layer(x, training=False)
    with pytest.raises(ValueError, match="training=True"):
        layer.backward(np.zeros((2, 5, 4)))


def test_mask_accepts_bool_and_01():
    layer = layers.GRU(3, input_dim=2, return_sequences=True, dtype="float64", seed=0)
    x = np.random.default_rng(0).normal(size=(2, 4, 2))
    m = np.array([[1, 1, 0, 1], [0, 1, 1, 1]])
    a = layer(x, mask=m)
    b = layer(x, mask=m.astype(bool))
    c = layer(x, mask=m.astype(np.float32))
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert layer.compute_mask(x, m) is m
    assert layers.GRU(3).compute_mask(x, m) is None


def test_builds_from_first_input_and_casts_float32():
    layer = layers.SimpleRNN(3, seed=0)
    assert not layer.built
    y = layer(np.ones((2, 4, 5)))       # float64 input into a float32 layer
    assert layer.input_dim == 5 and y.dtype == np.float32 and y.shape == (2, 3)


def test_kernel_status_becomes_exception():
    layer = layers.GRU(3, input_dim=2, dtype="float64")
    k = layer._kernel
    with pytest.raises(KernelError, match="dimension .* smaller than 1"):
        k.sizes(0, 1, 2, 3)
    x = np.zeros((1, 2, 2))
    _, save, _ = k.forward(x, None, layer.get_weights(), 3, True)
    with pytest.raises(KernelError, match="truncate_gradient must be -1"):
        k.backward(x, None, layer.get_weights(), save, np.zeros((1, 2, 3)), 0)


def test_embedding_masking_recipe():
    emb = layers.Embedding(10, 3, mask_zero=True, seed=0)
    idx = np.array([[0, 0, 4, 5], [1, 2, 3, 0]])
    e = emb(idx)
    assert e.shape == (2, 4, 3)
    mask = emb.compute_mask(idx)
    assert mask.tolist() == [[False, False, True, True], [True, True, True, False]]
    assert layers.Embedding(10, 3).compute_mask(idx) is None
    rnn = layers.GRU(2, dtype="float32", seed=0)
    alone = rnn(e[:1, 2:])
    y = rnn(e, mask=mask)
    np.testing.assert_allclose(y[0], alone[0], rtol=1e-6)
    dx = rnn.backward(np.ones_like(y))
    emb.backward(dx)
    g = emb.grads[0]
    np.testing.assert_allclose(g[4], dx[0, 2], rtol=1e-6)
    np.testing.assert_allclose(g[0], dx[0, 0] + dx[0, 1] + dx[1, 3], rtol=1e-6)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 10\)"):
        emb(np.array([[10]]))
    with pytest.raises(TypeError, match="must be integers"):
        emb(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="Embedding expects 1 weight array"):
        emb.set_weights([])
    assert layers.from_config(emb.get_config()).get_config() == emb.get_config()


def test_outputs_reuse_memory_only_when_no_one_holds_them():
    from rnngen.layers import GRU
    rng = np.random.default_rng(0)
    layer = GRU(5, input_dim=3, return_sequences=True, seed=0)
    x1 = rng.normal(size=(2, 4, 3)).astype(np.float32)
    x2 = rng.normal(size=(2, 4, 3)).astype(np.float32)
    y1 = layer(x1)
    kept = y1.copy()
    view = layer(x2)[:, 0]               # a view keeps its base alive
    y3 = layer(x1)
    np.testing.assert_array_equal(y1, kept)        # held: never overwritten
    assert not np.shares_memory(y3, y1) and not np.shares_memory(y3, view)
    addr = layer(x2).ctypes.data         # dropped at once ...
    assert layer(x2).ctypes.data == addr  # ... so the next call writes there
    dy = np.ones_like(y1)
    dx1 = layer.backward(dy)
    dx1_copy = dx1.copy()
    layer(x2)
    layer.backward(2 * dy)
    np.testing.assert_array_equal(dx1, dx1_copy)


def test_a_temporary_result_is_not_overwritten_by_the_next_call():
    from rnngen.layers import SimpleRNN
    rng = np.random.default_rng(1)
    layer = SimpleRNN(4, input_dim=3, return_sequences=True, seed=0)
    x1 = rng.normal(size=(2, 5, 3)).astype(np.float32)
    x2 = rng.normal(size=(2, 5, 3)).astype(np.float32)
    a, b = layer(x1).copy(), layer(x2).copy()
    np.testing.assert_array_equal(layer(x1) - layer(x2), a - b)   # both alive at once


def test_gradients_reuse_memory_only_when_no_one_holds_them():
    from rnngen.layers import LSTM
    rng = np.random.default_rng(2)
    layer = LSTM(6, input_dim=3, return_sequences=True, seed=0)
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    dy = rng.normal(size=(2, 4, 6)).astype(np.float32)
    layer(x)
    layer.backward(dy)
    addrs = [g.ctypes.data for g in layer.grads]
    expected = [g.copy() for g in layer.grads]
    layer(x)
    layer.backward(dy)                         # nothing held: written in place, same values
    assert [g.ctypes.data for g in layer.grads] == addrs
    for g, e in zip(layer.grads, expected):
        np.testing.assert_array_equal(g, e)
    held_list = layer.grads                    # the list held: its arrays keep their values
    layer(x)
    layer.backward(2 * dy)
    assert layer.grads is not held_list
    for g, e in zip(held_list, expected):
        np.testing.assert_array_equal(g, e)
    one = layer.grads[1]                       # one array held: it keeps its values
    one_copy = one.copy()
    layer(x)
    layer.backward(3 * dy)
    np.testing.assert_array_equal(one, one_copy)
    np.testing.assert_allclose(layer.grads[1], 1.5 * one_copy, rtol=1e-5, atol=1e-6)


def test_x_changed_between_forward_and_backward_does_not_change_the_gradients():
    """Issue 20, item 11: the layer kept the caller's x."""
    layer = layers.GRU(5, input_dim=3, return_sequences=True, dtype="float64", seed=0)
    x = np.random.default_rng(0).normal(size=(2, 4, 3))
    y = layer(x)
    dy = np.ones_like(y)
    layer.backward(dy)
    want = [g.copy() for g in layer.grads]
    layer(x)
    x += 1.0                                  # the caller reuses its buffer
    layer.backward(dy)
    for g, w in zip(layer.grads, want):
        np.testing.assert_array_equal(g, w)


def test_an_unknown_keyword_names_the_arguments_and_the_nearest():
    with pytest.raises(TypeError, match=r"did you mean 'activation'\?.*its arguments are "
                                        r"output_dim, init, inner_init, activation"):
        layers.GRU(4, activaton="tanh")
