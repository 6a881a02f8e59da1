"""SimpleRNN, GRU (reset_after=False) and LSTM against Keras 3 on its numpy backend,
where the math coincides (sigmoid as inner activation: Keras 3's hard_sigmoid is a
different function).  Skipped when keras is not installed."""
import os

os.environ.setdefault("KERAS_BACKEND", "numpy")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
if keras.backend.backend() != "numpy":  # pragma: no cover - another test imported keras first
    pytest.skip("keras was loaded with another backend", allow_module_level=True)

from rnngen import layers  # noqa: E402

keras.config.set_floatx("float64")

B, T, D, H = 3, 7, 4, 5
MASK = np.array([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 0, 0]], bool)


def run_keras(layer, x, mask):
    return np.asarray(layer(x, mask=None if mask is None else mask.copy()), dtype=np.float64)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("name", ["SimpleRNN", "GRU", "LSTM"])
def test_matches_keras3(name, return_sequences, masked):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, D))
    mask = MASK if masked else None
    if name == "SimpleRNN":
        k = keras.layers.SimpleRNN(H, activation="tanh", return_sequences=return_sequences,
                                   dtype="float64")
        k.build((B, T, D))
        W, U, b = [rng.normal(scale=0.5, size=w.shape) for w in k.get_weights()]
        k.set_weights([W, U, b])
        ours = layers.SimpleRNN(H, activation="tanh", weights=[W, U, b], dtype="float64",
                                return_sequences=return_sequences)
    elif name == "GRU":
        k = keras.layers.GRU(H, activation="tanh", recurrent_activation="sigmoid",
                             reset_after=False, return_sequences=return_sequences,
                             dtype="float64")
        k.build((B, T, D))
        W, U, b = [rng.normal(scale=0.5, size=w.shape) for w in k.get_weights()]
        k.set_weights([W, U, b])
        split = lambda a: np.split(a, 3, axis=-1)  # noqa: E731  keras order: z, r, h
        (Wz, Wr, Wh), (Uz, Ur, Uh), (bz, br, bh) = split(W), split(U), split(b)
        ours = layers.GRU(H, activation="tanh", inner_activation="sigmoid", dtype="float64",
                          weights=[Wz, Uz, bz, Wr, Ur, br, Wh, Uh, bh],
                          return_sequences=return_sequences)
    else:
        k = keras.layers.LSTM(H, activation="tanh", recurrent_activation="sigmoid",
                              return_sequences=return_sequences, dtype="float64")
        k.build((B, T, D))
        W, U, b = [rng.normal(scale=0.5, size=w.shape) for w in k.get_weights()]
        k.set_weights([W, U, b])
        split = lambda a: np.split(a, 4, axis=-1)  # noqa: E731  keras order: i, f, c, o
        (Wi, Wf, Wc, Wo), (Ui, Uf, Uc, Uo), (bi, bf, bc, bo) = split(W), split(U), split(b)
        ours = layers.LSTM(H, activation="tanh", inner_activation="sigmoid", dtype="float64",
                           weights=[Wi, Ui, bi, Wc, Uc, bc, Wf, Uf, bf, Wo, Uo, bo],
                           return_sequences=return_sequences)
    expected = run_keras(k, x, mask)
    got = ours(x, mask=mask)
    assert got.shape == expected.shape
    # Keras 3.15's numpy backend does not keep full float64 precision (with floatx and
    # dtype float64 it differs from a plain float64 numpy loop by ~7e-8, while rnngen
    # agrees with that loop to 1e-15, see test_against_reference.py), hence 1e-6 here.
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
