"""rnngen/validation.py: one set of checks for every front end.  The numpy layer and
rnngen.torch's modules refuse the same arguments with the same messages, and the torch
modules no longer make a numpy layer to check them."""
import numpy as np
import pytest

from rnngen import layers, validation as V

BAD = [
    (dict(truncate_gradient=0), ValueError, "truncate_gradient must be -1"),
    (dict(return_sequences="yes"), TypeError, "return_sequences must be True or False"),
    (dict(go_backwards=1), TypeError, "go_backwards must be True or False"),
    (dict(activation="swish"), ValueError, "activation"),
    (dict(colour="red"), TypeError, "colour"),
]


@pytest.mark.parametrize("kwargs,error,text", BAD)
def test_both_front_ends_refuse_the_same_arguments(kwargs, error, text):
    with pytest.raises(error, match=text) as numpy_error:
        layers.GRU(8, input_dim=4, **kwargs)
    torch = pytest.importorskip("torch")  # noqa: F841
    import rnngen.torch as rt
    with pytest.raises(error, match=text) as torch_error:
        rt.Recurrent("GRU", 4, 8, **kwargs)
    if "colour" not in kwargs:      # (the numpy layer's signature names unknown keywords)
        assert str(torch_error.value) == str(numpy_error.value)


def test_sizes_are_checked_in_one_place():
    for v in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="output_dim must be a positive integer"):
            V.layer_options(v, 3, False, -1, False, False)
    with pytest.raises(ValueError, match="input_dim must be a positive integer"):
        V.layer_options(4, None, False, -1, False, False, input_dim_optional=False)
    assert V.layer_options(4, None, True, 5, False, True)["truncate_gradient"] == 5


def test_torch_modules_draw_the_numpy_layers_weights_without_making_one(monkeypatch):
    torch = pytest.importorskip("torch")
    import rnngen.torch as rt
    want = layers.LSTM(6, input_dim=3, seed=11, dtype="float64").get_weights()

    def refuse(*a, **k):
        raise AssertionError("a numpy layer was made")
    monkeypatch.setattr(layers.Recurrent, "__init__", refuse)
    m = rt.Recurrent("LSTM", 3, 6, seed=11, dtype=torch.float64)
    for p, w in zip(m.parameters(), want):
        np.testing.assert_array_equal(p.detach().numpy(), w)
    rt.RNN(3, 6, cell="GRU", seed=1)            # the drop-in front end for any cell too
