"""Keras 3 layers over rnngen's kernels, for Keras's jax and torch backends:
:class:`SimpleRNN`, :class:`GRU` and :class:`LSTM` (keras.layers' own arguments and
weights) and :class:`Recurrent` (any cell).  Import keras with KERAS_BACKEND set to jax or
torch first; on other backends the layers raise.

    import keras, rnngen.keras
    model = keras.Sequential([keras.layers.Embedding(1000, 64, mask_zero=True),
                              rnngen.keras.LSTM(128), keras.layers.Dense(1)])
"""
from ._layers import GRU, LSTM, Recurrent, SimpleRNN

__all__ = ["GRU", "LSTM", "Recurrent", "SimpleRNN"]
