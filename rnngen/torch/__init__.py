"""The kernels as PyTorch modules.

    import torch
    import rnngen.torch as rt
    m = rt.Recurrent("LSTM", input_dim=8, output_dim=16, return_sequences=True)
    y = m(x, mask=mask)          # x (B, T, 8) float32 tensor, mask (B, T) bool
    y.sum().backward()           # m.W_i.grad, m.U_i.grad, ... in get_weights() order

    lstm = rt.LSTM(8, 16, num_layers=2, bidirectional=True)   # torch.nn.LSTM's drop-in
    model = rt.convert(model)    # every nn.LSTM / nn.GRU / nn.RNN inside, replaced

:class:`Recurrent` and :class:`Bidirectional` (``_modules``) speak the seed's Keras
conventions; :class:`LSTM`, :class:`GRU` and :class:`RNN` (``_nn``) those of torch.nn, with
the same parameters and ``state_dict``; all of them run on two operators, ``rnngen::recurrent``
and ``rnngen::recurrent_backward`` (``_ops``).  torch is an optional dependency:
``pip install -e '.[torch]'``.  Guide: docs/torch.md.
"""
try:
    import torch  # noqa: F401
except ImportError as e:                      # pragma: no cover - tested in a subprocess
    raise ImportError("rnngen.torch needs PyTorch, an optional dependency: "
                      "pip install -e '.[torch]' (from a checkout) or "
                      "pip install 'rnngen[torch]'") from e

from ._ops import _BACKENDS, _kernel, register_cell  # noqa: F401  (tests patch _BACKENDS)
from ._modules import Bidirectional, Recurrent
from ._nn import GRU, LSTM, RNN, InputError, convert

__all__ = ["Recurrent", "Bidirectional", "LSTM", "GRU", "RNN", "convert", "InputError",
           "register_cell"]
