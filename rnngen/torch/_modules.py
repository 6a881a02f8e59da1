"""The Keras-style modules: :class:`Recurrent` (one layer of any cell) and
:class:`Bidirectional`."""
from typing import List, Optional

import numpy as np
import torch
from torch import nn

from .. import validation as V
from ..layers import MERGE_MODES, cell_from_ref, cell_ref, check_pair, resolve_cell
from ._ops import _FLOATS, _kernel, register_cell, run


# -- the modules --------------------------------------------------------------------------
def register_weight(module: nn.Module, cell: str, name: str, value, dtype, device) -> None:
    """A parameter ``name`` of ``module`` holding ``value``; a name torch.nn.Module already
    uses (``cell``'s weight names come from its spec) is a ValueError."""
    if hasattr(nn.Module, name) or name in module.__dict__:
        raise ValueError(f"{cell}'s weight {name!r} clashes with an attribute of "
                         "torch.nn.Module; rename it in the spec")
    module.register_parameter(name, nn.Parameter(torch.tensor(value, dtype=dtype,
                                                              device=device)))


def _check_float(t, what):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{what} must be float32 or float64, got {t.dtype}")


class Recurrent(nn.Module):
    """A recurrent layer over rnngen's kernels.

    ``cell``: a built-in name ("GRU", "LSTM", ...), a path to a YAML spec, or a class from
    :func:`rnngen.load_cell`.  ``**cell_params``: the cell's parameters (``activation``,
    ``init``, ``depth``, ...; the spec's ``params``).  Parameters are registered under the
    spec's weight names in spec order, so ``list(m.parameters())`` lines up with the numpy
    layer's ``get_weights()``; they start as the numpy layer initialises them, from
    ``seed`` (default: drawn from torch's generator, so ``torch.manual_seed`` makes it
    reproducible).  ``dtype`` (default torch's default dtype) and ``device`` as for any
    module; ``.double()``, ``.float()``, ``.to(device)`` switch the kernels with them.

    ``m(x, mask=None, initial_state=None)``: x (B, T, input_dim); mask (B, T) bool or 0/1;
    initial_state one (B, output_dim) tensor per state, in spec order (``m.state_names``).
    Returns y ((B, T, H) with return_sequences, else (B, H)), or with return_state the tuple
    (y, s_1, ..., s_n) of y and the final value of every state.  go_backwards=True reads the
    sequence from its end and returns the outputs in that (reversed) order, as Keras.
    """

    def __init__(self, cell, input_dim: int, output_dim: int, return_sequences: bool = False,
                 truncate_gradient: int = -1, return_state: bool = False,
                 go_backwards: bool = False, *, seed=None, dtype=None, device=None,
                 **cell_params):
        super().__init__()
        cls = resolve_cell(cell)
        # every argument checked as the numpy layer checks it (rnngen/validation.py)
        opts = V.layer_options(output_dim, input_dim, return_sequences, truncate_gradient,
                               return_state, go_backwards, input_dim_optional=False)
        params = V.cell_params(cls.spec, cell_params)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in _FLOATS:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self.cell_class = cls
        for name, v in opts.items():
            setattr(self, name, v)
        self.cell_params = dict(cell_params)
        self.params = params
        self._key = register_cell(cls.spec, V.code_params(cls.spec, params))
        ir = _kernel(self._key, "cpu").ir
        V.check_x_elementwise(ir, self.input_dim, self.output_dim, cls.__name__)
        self.state_names = tuple(ir.states)
        self.weight_names = tuple(w.name for w in ir.weights)
        # the weights the numpy layer draws for the same seed
        first = V.initial_weights(ir, params, self.input_dim, self.output_dim,
                                  np.random.default_rng(seed))
        for name, w in zip(self.weight_names, first):
            register_weight(self, cls.__name__, name, w, dtype, device)

    # -- weights ---------------------------------------------------------------------------
    def _weights(self) -> List[torch.Tensor]:
        """The weights as the module sees them now: parameters, or what a parametrization
        (torch.nn.utils.parametrize: orthogonal, weight_norm, ...) or pruning makes of
        them, or the tensors torch.func.functional_call put in their place."""
        return [getattr(self, n) for n in self.weight_names]

    def get_weights(self) -> list:
        """Copies of the parameters as numpy arrays, in spec order (the numpy layer's
        get_weights() and weights= order; rnngen.interop reads and writes such lists)."""
        return [w.detach().cpu().numpy().copy() for w in self._weights()]

    def set_weights(self, weights) -> None:
        """Copy a list of arrays (or tensors) in spec order into the parameters, keeping
        their dtype and device."""
        ws = self._weights()
        if not isinstance(weights, (list, tuple)) or len(weights) != len(ws):
            n = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
            raise ValueError(f"wrong number of weights: got {n}; {self.cell_class.__name__} "
                             f"expects {len(ws)}: " + ", ".join(
                                 f"{n} {tuple(w.shape)}" for n, w in zip(self.weight_names, ws)))
        new = [torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
               for a in weights]
        for name, w, a in zip(self.weight_names, ws, new):
            if tuple(a.shape) != tuple(w.shape):
                raise ValueError(f"weight {name} has shape {tuple(a.shape)}, expected "
                                 f"{tuple(w.shape)}")
        with torch.no_grad():
            for name, w, a in zip(self.weight_names, ws, new):
                param = self._parameters.get(name)
                if param is None:   # parametrized or pruned: it has no plain parameter
                    raise ValueError(f"weight {name} is computed by a parametrization or "
                                     f"pruning; set its original tensor instead")
                param.copy_(a)

    # -- checks -----------------------------------------------------------------------------

    def _check_x(self, x, w0):
        _check_float(x, "x")
        V.check_x_shape(x.shape, self.input_dim, "module")
        if x.dtype != w0.dtype:
            raise TypeError(f"x is {x.dtype} but the module's parameters are {w0.dtype}: "
                            f"convert x, or the module with .float() / .double()")
        if x.device != w0.device:
            raise ValueError(f"x is on {x.device} but the module's parameters are on "
                             f"{w0.device}")
        return x.contiguous()

    @staticmethod
    def _check_mask(mask, x):
        if mask is None:
            return None
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch tensor, got {type(mask).__name__}")
        B, T = x.shape[0], x.shape[1]
        if tuple(mask.shape) != (B, T):
            raise ValueError(f"mask must have shape (batch, timesteps) = {(B, T)}, got "
                             f"{tuple(mask.shape)}")
        if mask.device != x.device:
            raise ValueError(f"mask is on {mask.device} but x is on {x.device}")
        if mask.dtype == torch.bool:
            return mask.to(torch.uint8).contiguous()
        if mask.is_complex() or (not torch.compiler.is_compiling()
                                 and not bool(((mask == 0) | (mask == 1)).all())):
            raise ValueError("mask must be boolean or hold only 0 and 1")
        return (mask != 0).to(torch.uint8).contiguous()

    def _check_state(self, initial_state, x):
        if initial_state is None:
            return None
        S, B, H = len(self.state_names), x.shape[0], self.output_dim
        states = initial_state
        if isinstance(states, torch.Tensor) and S == 1 and states.dim() == 2:
            states = [states]
        if not isinstance(states, (list, tuple)) or len(states) != S:
            raise ValueError(f"initial_state must be a list of {S} tensors of shape "
                             f"(batch, output_dim) = {(B, H)}, one per state "
                             f"({', '.join(self.state_names)})")
        for name, s in zip(self.state_names, states):
            _check_float(s, f"initial state {name}")
            if tuple(s.shape) != (B, H) or s.dtype != x.dtype or s.device != x.device:
                raise ValueError(f"initial state {name} must be a {x.dtype} tensor on "
                                 f"{x.device} of shape {(B, H)}, got {s.dtype} on {s.device} "
                                 f"of shape {tuple(s.shape)}")
        return torch.stack(list(states))

    # -- running --------------------------------------------------------------------------
    def forward(self, x, mask=None, initial_state=None):
        weights = self._weights()
        x = self._check_x(x, weights[0])
        mask = self._check_mask(mask, x)
        state0 = self._check_state(initial_state, x)
        y, last = run(self._key, x, mask, state0, weights, self.output_dim,
                      self.truncate_gradient, self.go_backwards, self.return_state)
        out = y if self.return_sequences else y[:, -1]
        if self.return_state:
            return (out, *last.unbind(0))
        return out

    # -- pickling (torch.save(module), multiprocessing) --------------------------------------
    def __getstate__(self):
        """The cell class is made at run time from its spec: pickled as the built-in's
        name or the spec's text, made again (and its key registered) on unpickling."""
        state = dict(super().__getstate__())
        state["_cell_ref"] = cell_ref(state.pop("cell_class"))
        return state

    def __setstate__(self, state):
        state = dict(state)
        cls = cell_from_ref(state.pop("_cell_ref"))
        super().__setstate__(state)
        self.cell_class = cls
        register_cell(cls.spec, V.code_params(cls.spec, self.params))

    def extra_repr(self) -> str:
        s = (f"{self.cell_class.__name__}, input_dim={self.input_dim}, "
             f"output_dim={self.output_dim}")
        for name, default in (("return_sequences", False), ("truncate_gradient", -1),
                              ("return_state", False), ("go_backwards", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + "".join(f", {k}={v!r}" for k, v in self.cell_params.items())

    def _reversed_copy(self, seed=None) -> "Recurrent":
        """The same layer reading the other way, with weights of its own (as Keras's
        Bidirectional makes its backward layer)."""
        w = self._weights()[0]
        return Recurrent(self.cell_class, self.input_dim, self.output_dim,
                         self.return_sequences, self.truncate_gradient, self.return_state,
                         not self.go_backwards, seed=seed, dtype=w.dtype, device=w.device,
                         **self.cell_params)




class Bidirectional(nn.Module):
    """A layer read both ways, as Keras 3's Bidirectional (and rnngen.layers.Bidirectional):
    ``forward_layer`` is the given Recurrent, ``backward_layer`` a copy with go_backwards
    flipped and weights of its own (or the ``backward_layer`` given); with return_sequences
    its output sequence is put back into time order, and with a mask both outputs are zero
    at padded steps.  merge_mode "concat" (last axis, forward first), "sum", "mul", "ave",
    or None (both outputs returned).

    ``m(x, mask=None, initial_state=None)``: initial_state lists the forward layer's states
    and then the backward layer's.  Returns the merged output (or the two outputs), then,
    with return_state, the final states of the forward layer and of the backward layer,
    all in one tuple."""

    def __init__(self, layer: Recurrent, merge_mode: Optional[str] = "concat",
                 backward_layer: Optional[Recurrent] = None, *, seed=None):
        super().__init__()
        if not isinstance(layer, Recurrent):
            raise TypeError(f"Bidirectional wraps an rnngen.torch.Recurrent, got "
                            f"{type(layer).__name__}")
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {MERGE_MODES}, got {merge_mode!r}")
        if backward_layer is None:
            backward_layer = layer._reversed_copy(seed)
        elif not isinstance(backward_layer, Recurrent):
            raise TypeError("backward_layer must be an rnngen.torch.Recurrent")
        check_pair(layer, backward_layer, ("return_sequences", "return_state", "output_dim",
                                           "input_dim"))
        self.merge_mode = merge_mode
        self.forward_layer = layer
        self.backward_layer = backward_layer

    def forward(self, x, mask=None, initial_state=None):
        S = len(self.forward_layer.state_names)
        s_f = s_b = None
        if initial_state is not None:
            if not isinstance(initial_state, (list, tuple)) or len(initial_state) != 2 * S:
                raise ValueError(f"initial_state must list {2 * S} tensors: the forward "
                                 f"layer's {S} states, then the backward layer's")
            s_f, s_b = list(initial_state[:S]), list(initial_state[S:])
        out_f = self.forward_layer(x, mask, s_f)
        out_b = self.backward_layer(x, mask, s_b)
        states = ()
        if self.forward_layer.return_state:
            (out_f, *st_f), (out_b, *st_b) = out_f, out_b
            states = (*st_f, *st_b)
        if self.forward_layer.return_sequences:
            out_b = torch.flip(out_b, (1,))
            if mask is not None:        # padded steps output zero (Keras 3's Bidirectional)
                keep = (mask != 0).unsqueeze(-1).to(out_f.dtype)
                out_f, out_b = out_f * keep, out_b * keep
        if self.merge_mode is None:
            merged = (out_f, out_b)
        elif self.merge_mode == "concat":
            merged = (torch.cat([out_f, out_b], dim=-1),)
        elif self.merge_mode == "sum":
            merged = (out_f + out_b,)
        elif self.merge_mode == "mul":
            merged = (out_f * out_b,)
        else:
            merged = ((out_f + out_b) / 2,)
        result = merged + states
        return result[0] if len(result) == 1 else result

    def extra_repr(self) -> str:
        return f"merge_mode={self.merge_mode!r}"
