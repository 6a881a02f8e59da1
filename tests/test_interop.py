"""rnngen.interop: weights between rnngen's layers and torch.nn.LSTM/GRU (and their cells)
and Keras 3's SimpleRNN, GRU and LSTM.  Each pair in float64: the foreign layer with
random weights, converted, both run on one input and compared to 1e-12; converted back,
the foreign weights are the same bits.  One float32 check each for torch and Keras, and
the errors.  The torch tests skip without torch, the Keras tests without keras (the
float64 Keras fixture is conftest.py's)."""
import sys

import numpy as np
import pytest

import rnngen
from rnngen import interop, layers

B, T, D, H = 3, 6, 4, 5
EXACT = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture
def torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch


def randomize_torch(torch, module, scale=0.5):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, dtype=p.dtype) * scale)
    return module


def run_torch(torch, module, x):
    """module's output sequence for x (B, T, D), whatever its batch_first; cells step."""
    xt = torch.from_numpy(x)
    with torch.no_grad():
        if isinstance(module, (torch.nn.LSTMCell, torch.nn.GRUCell)):
            h = torch.zeros(x.shape[0], module.hidden_size, dtype=xt.dtype)
            c, ys = torch.zeros_like(h), []
            for t in range(x.shape[1]):
                if isinstance(module, torch.nn.LSTMCell):
                    h, c = module(xt[:, t], (h, c))
                else:
                    h = module(xt[:, t], h)
                ys.append(h)
            return torch.stack(ys, 1).numpy()
        if module.batch_first:
            return module(xt)[0].numpy()
        return module(xt.transpose(0, 1))[0].transpose(0, 1).numpy()


def torch_params(module):
    return {n: p.detach().numpy().copy() for n, p in module.named_parameters()}


def assert_same_bits(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_weight_lists_are_the_layers_weight_order():
    for kind, names in interop.LISTS.items():
        cls = rnngen.load_example("torch_gru") if kind == "TorchGRU" else layers.BUILTIN[kind]
        assert [n for n, _ in names] == cls(H).weight_names(), kind


# -- torch ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", ["LSTM", "LSTM-batch_first", "LSTMCell"])
def test_torch_lstm(torch, make):
    if make == "LSTMCell":
        new = lambda: torch.nn.LSTMCell(D, H).double()  # noqa: E731
    else:
        new = lambda: torch.nn.LSTM(D, H, batch_first=make.endswith("first")).double()  # noqa: E731
    m = randomize_torch(torch, new())
    x = np.random.default_rng(0).normal(size=(B, T, D))
    W = interop.from_torch_lstm(m)
    assert [w.dtype for w in W] == [np.float64] * 12
    ours = layers.LSTM(H, inner_activation="sigmoid", weights=W, dtype="float64",
                       return_sequences=True)
    np.testing.assert_allclose(ours(x), run_torch(torch, m, x), **EXACT)
    assert interop.to_rnngen(m).get_config() == ours.get_config()

    # back: the matrices are the same bits, the two biases go in as their sum
    m2 = new()
    assert interop.to_torch_lstm(ours, m2) is m2
    p, p2 = torch_params(m), torch_params(m2)
    sfx = "" if make == "LSTMCell" else "_l0"
    for k in ("weight_ih", "weight_hh"):
        assert np.array_equal(p2[k + sfx], p[k + sfx])
    assert np.array_equal(p2["bias_ih" + sfx], p["bias_ih" + sfx] + p["bias_hh" + sfx])
    assert not p2["bias_hh" + sfx].any()
    np.testing.assert_allclose(run_torch(torch, m2, x), run_torch(torch, m, x), **EXACT)
    # and from there to rnngen again: the same bits
    for a, b in zip(interop.from_torch_lstm(m2), W):
        assert np.array_equal(a, b)


def test_torch_lstm_state_dict(torch):
    rng = np.random.default_rng(1)
    W = [w + rng.normal(scale=0.3, size=w.shape) for w in
         layers.LSTM(H, inner_activation="sigmoid", input_dim=D, dtype="float64",
                     seed=0).get_weights()]
    sd = interop.to_torch_lstm(W)
    assert sorted(sd) == ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_ih_l0"]
    m = torch.nn.LSTM(D, H, batch_first=True).double()
    m.load_state_dict(sd)
    for a, b in zip(interop.from_torch_lstm(m), W):
        assert np.array_equal(a, b)
    x = rng.normal(size=(B, T, D))
    ours = layers.LSTM(H, inner_activation="sigmoid", weights=W, dtype="float64",
                       return_sequences=True)
    np.testing.assert_allclose(ours(x), run_torch(torch, m, x), **EXACT)


@pytest.mark.parametrize("make", ["GRU", "GRU-batch_first", "GRUCell"])
def test_torch_gru(torch, make):
    if make == "GRUCell":
        new = lambda: torch.nn.GRUCell(D, H).double()  # noqa: E731
    else:
        new = lambda: torch.nn.GRU(D, H, batch_first=make.endswith("first")).double()  # noqa: E731
    m = randomize_torch(torch, new())
    x = np.random.default_rng(2).normal(size=(B, T, D))
    W = interop.from_torch_gru(m)
    ours = rnngen.load_example("torch_gru")(H, weights=W, dtype="float64",
                                           return_sequences=True)
    np.testing.assert_allclose(ours(x), run_torch(torch, m, x), **EXACT)
    np.testing.assert_allclose(interop.to_rnngen(m)(x), ours(x), rtol=0, atol=0)

    m2 = new()
    assert interop.to_torch_gru(ours, m2) is m2     # six biases: every parameter exact
    assert_same_bits(torch_params(m2), torch_params(m))
    sd = interop.to_torch_gru(W)
    if make != "GRUCell":
        assert_same_bits({k: v.numpy() for k, v in sd.items()}, torch_params(m))


def test_torch_float32(torch):
    m = randomize_torch(torch, torch.nn.LSTM(D, H, batch_first=True))
    g = randomize_torch(torch, torch.nn.GRU(D, H, batch_first=True))
    x = np.random.default_rng(3).normal(size=(B, T, D)).astype(np.float32)
    for module in (m, g):
        ours = interop.to_rnngen(module)
        assert ours.dtype == "float32" and ours.return_sequences
        np.testing.assert_allclose(ours(x), run_torch(torch, module, x), rtol=1e-5, atol=1e-6)
    m2 = interop.to_torch_lstm(interop.from_torch_lstm(m), torch.nn.LSTM(D, H))
    assert np.array_equal(torch_params(m2)["weight_hh_l0"], torch_params(m)["weight_hh_l0"])


def test_torch_errors(torch):
    nn = torch.nn
    with pytest.raises(TypeError, match=r"expects a torch.nn.LSTM .*got torch.nn.modules.rnn.GRU"):
        interop.from_torch_lstm(nn.GRU(D, H))
    with pytest.raises(TypeError, match="expects a torch.nn.GRU"):
        interop.from_torch_gru(layers.GRU(H))
    with pytest.raises(ValueError, match="num_layers=2"):
        interop.from_torch_lstm(nn.LSTM(D, H, num_layers=2))
    with pytest.raises(ValueError, match="bidirectional=True"):
        interop.from_torch_gru(nn.GRU(D, H, bidirectional=True))
    with pytest.raises(ValueError, match="proj_size=2"):
        interop.to_torch_lstm(interop.from_torch_lstm(nn.LSTM(D, H)), nn.LSTM(D, H, proj_size=2))
    W = interop.from_torch_lstm(nn.LSTM(D, H))
    with pytest.raises(ValueError, match=rf"input_dim={D}, output_dim={H}.*hidden_size={H + 1}"):
        interop.to_torch_lstm(W, nn.LSTM(D, H + 1))
    with pytest.raises(ValueError, match="input_size=7"):
        interop.to_torch_lstm(W, nn.LSTM(7, H))
    with pytest.raises(ValueError, match=r"got 11, expected the 12 weights of rnngen.layers.LSTM"):
        interop.to_torch_lstm(W[:11])
    bad = list(W)
    bad[4] = np.zeros((H, H + 1), np.float32)
    with pytest.raises(ValueError, match=r"weight U_c has shape \(5, 6\), expected \(5, 5\)"):
        interop.to_torch_lstm(bad)
    bad[4] = np.zeros((H, H), int)
    with pytest.raises(TypeError, match="U_c must hold floating-point"):
        interop.to_torch_lstm(bad)
    with pytest.raises(TypeError, match="list of numpy arrays"):
        interop.to_torch_lstm(np.zeros(3))
    with pytest.raises(ValueError, match="bias=False"):
        interop.to_torch_lstm(W, nn.LSTM(D, H, bias=False))
    # bias=False: zero biases both ways
    nb = interop.from_torch_lstm(nn.LSTM(D, H, bias=False))
    assert not any(b.any() for b in nb[2::3])
    interop.to_torch_lstm(nb, nn.LSTM(D, H, bias=False))
    # an rnngen layer whose math differs
    with pytest.raises(ValueError, match=r"'hard_sigmoid'\), a different function"):
        interop.to_torch_lstm(layers.LSTM(H, input_dim=D), nn.LSTM(D, H))
    with pytest.raises(ValueError, match="reset gate before the recurrent product"):
        interop.to_torch_gru(layers.GRU(H, input_dim=D), nn.GRU(D, H))
    with pytest.raises(TypeError, match="to_rnngen sets activation itself"):
        interop.to_rnngen(nn.LSTM(D, H), activation="relu")
    with pytest.raises(TypeError, match="to_rnngen expects a torch.nn.LSTM"):
        interop.to_rnngen(nn.RNN(D, H))


def test_torch_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)     # `import torch` raises ImportError
    with pytest.raises(ImportError, match=r"needs PyTorch.*pip install -e '\.\[torch\]'"):
        interop.to_torch_lstm([np.zeros((D, H))] * 12)


# -- Keras 3 -------------------------------------------------------------------------------
def keras_layer(keras, kind, **kw):
    if kind == "SimpleRNN":
        return keras.layers.SimpleRNN(H, return_sequences=True, **kw)
    if kind == "GRU":
        return keras.layers.GRU(H, reset_after=False, return_sequences=True, **kw)
    if kind == "GRU-reset_after":
        return keras.layers.GRU(H, return_sequences=True, **kw)
    return keras.layers.LSTM(H, return_sequences=True, **kw)


# Keras's defaults (activation tanh, recurrent_activation sigmoid) and what they make
KERAS = {"SimpleRNN": (layers.SimpleRNN, {"activation": "tanh"}),
         "GRU": (layers.GRU, {"activation": "tanh", "inner_activation": "sigmoid"}),
         "GRU-reset_after": (None, {}),
         "LSTM": (layers.LSTM, {"activation": "tanh", "inner_activation": "sigmoid"})}


@pytest.mark.parametrize("kind", list(KERAS))
def test_keras(keras, kind):
    rng = np.random.default_rng(4)
    k = keras_layer(keras, kind, dtype="float64")
    k.build((None, None, D))
    k.set_weights([rng.normal(scale=0.5, size=w.shape) for w in k.get_weights()])
    x = rng.normal(size=(B, T, D))
    mask = np.ones((B, T), bool)
    mask[1, :2] = mask[2, 4:] = False
    expected = np.asarray(k(x, mask=mask.copy()))
    assert expected.dtype == np.float64

    W = interop.from_keras(k)
    cls, settings = KERAS[kind]
    cls = cls or rnngen.load_example("torch_gru")
    ours = cls(H, weights=W, dtype="float64", return_sequences=True, **settings)
    np.testing.assert_allclose(ours(x, mask=mask), expected, **EXACT)
    auto = interop.to_rnngen(k)
    assert type(auto).spec.path == cls.spec.path and auto.params == ours.params
    np.testing.assert_allclose(auto(x, mask=mask), expected, **EXACT)

    k2 = keras_layer(keras, kind, dtype="float64")     # unbuilt: to_keras builds it
    assert interop.to_keras(ours, k2) is k2
    for a, b in zip(k2.get_weights(), k.get_weights()):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    cell = keras_layer(keras, kind, dtype="float64").cell
    interop.to_keras(W, cell)
    for a, b in zip(cell.get_weights(), k.get_weights()):
        assert np.array_equal(a, b)


def test_keras_float32(keras):
    rng = np.random.default_rng(5)
    k = keras.layers.LSTM(H, dtype="float32")
    k.build((None, None, D))
    k.set_weights([rng.normal(scale=0.5, size=w.shape) for w in k.get_weights()])
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    ours = interop.to_rnngen(k)
    assert ours.dtype == "float32" and not ours.return_sequences
    np.testing.assert_allclose(ours(x), np.asarray(k(x)), rtol=1e-5, atol=1e-6)


def test_keras_errors(keras):
    L = keras.layers
    with pytest.raises(TypeError, match="expects a Keras 3 SimpleRNN, GRU or LSTM"):
        interop.from_keras(L.Dense(3))
    with pytest.raises(TypeError, match="expects a Keras 3 SimpleRNN, GRU or LSTM"):
        interop.to_keras([], layers.LSTM(H))
    with pytest.raises(ValueError, match=r"no weights yet.*build"):
        interop.from_keras(L.LSTM(H))
    W = [np.zeros(s) for s in layers.GRU(H, input_dim=D).weight_shapes()]
    with pytest.raises(ValueError, match=rf"output_dim={H}, but the Keras layer has units=3"):
        interop.to_keras(W, L.GRU(3, reset_after=False))
    built = L.GRU(H, reset_after=False)
    built.build((None, None, D + 1))
    with pytest.raises(ValueError, match=rf"input_dim={D}, but .* built for input_dim={D + 1}"):
        interop.to_keras(W, built)
    with pytest.raises(ValueError, match="expected the 12 weights of rnngen.load_example"):
        interop.to_keras(W, L.GRU(H))       # reset_after=True: TorchGRU's list
    hard = L.LSTM(H, recurrent_activation="hard_sigmoid")
    hard.build((None, None, D))
    with pytest.raises(ValueError, match=r"Keras 3's hard_sigmoid, clip\(x/6 \+ 0.5, 0, 1\)"):
        interop.to_rnngen(hard)
    with pytest.raises(ValueError, match="hard_sigmoid"):
        interop.to_keras(layers.LSTM(H, input_dim=D), hard)
    interop.to_keras(layers.LSTM(H, input_dim=D).get_weights(), hard)    # a list: no check
    sig = L.LSTM(H)
    with pytest.raises(ValueError, match="a different function"):     # seed default hard_sigmoid
        interop.to_keras(layers.LSTM(H, input_dim=D), sig)
    with pytest.raises(ValueError, match="only with activation='tanh'"):
        g = L.GRU(H, activation="relu")
        g.build((None, None, D))
        interop.to_rnngen(g)
    with pytest.raises(ValueError, match="use_bias=False"):
        interop.to_keras([w + 1 for w in layers.SimpleRNN(H, input_dim=D).get_weights()],
                         L.SimpleRNN(H, use_bias=False))
