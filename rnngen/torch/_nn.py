"""Drop-ins for ``torch.nn.LSTM``, ``GRU`` and ``RNN`` over rnngen's kernels, the same front
end for any cell (``RNN(..., cell="mgu.yaml")``), and :func:`convert`.

The built-in modes keep torch's parameters as torch lays them out (``weight_ih_l0`` [G*H, D]
with the gates in torch's order, ``bias_hh_l1_reverse``, ...), so ``state_dict`` moves between
the two both ways, and hand the kernels each gate's block as the cell's spec names it: the
transposed slices ``weight_ih[g*H:(g+1)*H].t()`` (copied once per call, a few hundred
kilobytes) and, where the spec has one bias per gate, ``bias_ih + bias_hh``.  Autograd takes
the gradients back through these views into torch's layout.

The cells are the ones torch computes: the seed's LSTM with sigmoid gates (torch's gate
order i, f, g, o is the spec's i, f, c, o), the GRU with the reset gate after the recurrent
product (examples/torch_gru.yaml, torch's r, z, n) and the Elman RNN (SimpleRNN, tanh or relu).

Layers run one after the other on batch-major (B, T, D) tensors; a direction reading
backwards runs on the time-reversed sequence.  A PackedSequence becomes a padded batch
and a mask: a padded step is absent for the cell (its state carries over), so h_n is each
sequence's state after its last real step, and the reverse direction starts at each
sequence's own end.  Dropout between layers is applied, as torch applies it, to the layer's
output in torch's layout (time-major, or the packed data), so the same generator state
draws the same mask.
"""
import math
import warnings
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from .. import validation as V
from ..layers import cell_from_ref, cell_ref, resolve_cell
from ._modules import register_weight
from ._ops import _FLOATS, _kernel, register_cell, run

__all__ = ["LSTM", "GRU", "RNN", "convert", "InputError"]


class InputError(ValueError, RuntimeError):
    """A bad input to a drop-in module: a ValueError, and a RuntimeError as torch.nn's
    modules raise for the same mistakes."""


class InputTypeError(InputError, TypeError):
    """An input of the wrong dtype: also a TypeError."""


# -- the cells torch computes, and how its parameters map onto their specs ---------------
def _lstm_blocks(w_ih, w_hh, b_ih, b_hh):
    """torch's i, f, g, o blocks as the LSTM spec's W_*, U_*, b_* (g is the spec's c)."""
    wi, wh = w_ih.chunk(4), w_hh.chunk(4)
    b = None if b_ih is None else (b_ih + b_hh).chunk(4)
    out = {}
    for g, name in enumerate("ifco"):
        out[f"W_{name}"], out[f"U_{name}"] = wi[g].t(), wh[g].t()
        out[f"b_{name}"] = None if b is None else b[g]
    return out


def _gru_blocks(w_ih, w_hh, b_ih, b_hh):
    """torch's r, z, n blocks as examples/torch_gru.yaml names them (two biases each)."""
    wi, wh = w_ih.chunk(3), w_hh.chunk(3)
    bi = (None,) * 3 if b_ih is None else b_ih.chunk(3)
    bh = (None,) * 3 if b_hh is None else b_hh.chunk(3)
    out = {}
    for g, name in enumerate("rzn"):
        out[f"W_i{name}"], out[f"W_h{name}"] = wi[g].t(), wh[g].t()
        out[f"b_i{name}"], out[f"b_h{name}"] = bi[g], bh[g]
    return out


def _rnn_blocks(w_ih, w_hh, b_ih, b_hh):
    return {"W": w_ih.t(), "U": w_hh.t(), "b": None if b_ih is None else b_ih + b_hh}


# mode: (cell, its compiled-in parameters, gates per weight matrix, the block mapping)
_MODES = {
    "LSTM": ("LSTM", {"activation": "tanh", "inner_activation": "sigmoid"}, 4, _lstm_blocks),
    "GRU": ("torch_gru", {}, 3, _gru_blocks),
    "RNN_TANH": ("SimpleRNN", {"activation": "tanh"}, 1, _rnn_blocks),
    "RNN_RELU": ("SimpleRNN", {"activation": "relu"}, 1, _rnn_blocks),
}
_EXAMPLE_CELLS: dict = {}


def _mode_cell(name):
    if name in _EXAMPLE_CELLS:
        return _EXAMPLE_CELLS[name]
    if name == "torch_gru":
        from .. import load_example
        return _EXAMPLE_CELLS.setdefault(name, load_example(name))
    return resolve_cell(name)


def _check_int(name, v, low):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} should be of type int, got {type(v).__name__} {v!r}")
    if v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


# -- packed sequences -------------------------------------------------------------------------
class _Packing:
    """Where the rows of a PackedSequence's data sit in a padded batch-major tensor in the
    caller's order, and back."""

    @torch.compiler.disable      # data-dependent sizes: run eagerly under torch.compile
    def __init__(self, p: PackedSequence):
        self.batch_sizes, self.sorted_indices = p.batch_sizes, p.sorted_indices
        self.unsorted_indices = p.unsorted_indices
        T, B = len(p.batch_sizes), int(p.batch_sizes[0])
        device = p.data.device
        # valid[t, j]: step t of the j-th longest sequence is real (the data's row order)
        self.valid = (torch.arange(B).unsqueeze(0) < p.batch_sizes.unsqueeze(1)).to(device)
        self.T, self.B = T, B
        unsorted = self.valid.t()
        if self.unsorted_indices is not None:
            unsorted = unsorted[self.unsorted_indices.to(device)]
        self.mask = unsorted.to(torch.uint8).contiguous()        # (B, T), caller's order

    @torch.compiler.disable
    def padded(self, data):
        """(B, T, F) in the caller's order, zeros at padded steps."""
        tm = data.new_zeros((self.T, self.B) + tuple(data.shape[1:]))
        tm = tm.index_put((self.valid,), data)
        out = tm.transpose(0, 1)
        if self.unsorted_indices is not None:
            out = out[self.unsorted_indices.to(data.device)]
        return out

    @torch.compiler.disable
    def data(self, y):
        """The packed rows of a (B, T, F) tensor in the caller's order."""
        if self.sorted_indices is not None:
            y = y[self.sorted_indices.to(y.device)]
        return y.transpose(0, 1)[self.valid]

    @torch.compiler.disable
    def pack(self, y):
        return PackedSequence(self.data(y), self.batch_sizes, self.sorted_indices,
                              self.unsorted_indices)


# -- the modules ----------------------------------------------------------------------------
class _RNNBase(nn.Module):
    """What LSTM, GRU and RNN share: torch.nn's signature and state_dict for the built-in
    modes, any cell's weights (``{weight}_l{k}[_reverse]``) otherwise."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None,
                 *, cell=None, seed=None, cell_params: Optional[dict] = None):
        super().__init__()
        name = type(self).__name__
        self.input_size = _check_int("input_size", input_size, 1)
        self.hidden_size = _check_int("hidden_size", hidden_size, 1)
        self.num_layers = _check_int("num_layers", num_layers, 1)
        self.bias = V.check_flag("bias", bias)
        self.batch_first = V.check_flag("batch_first", batch_first)
        self.bidirectional = V.check_flag("bidirectional", bidirectional)
        if (isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating))
                or not 0 <= dropout <= 1):
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             f"probability of an element being zeroed, got {dropout!r}")
        self.dropout = float(dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          f"non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        if proj_size != 0:
            raise ValueError(f"rnngen.torch.{name} has no proj_size (an LSTM with "
                             f"projections is not supported); got proj_size={proj_size!r}")
        self.proj_size = 0
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in _FLOATS:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.mode = mode
        dirs = 2 if self.bidirectional else 1
        self._sfx = [f"_l{k}{'_reverse' if d else ''}" for k in range(self.num_layers)
                     for d in range(dirs)]
        self._inputs = [self.input_size if k == 0 else self.hidden_size * dirs
                        for k in range(self.num_layers) for _ in range(dirs)]
        if cell is None:
            cls_name, given, gates, self._blocks = _MODES[mode]
            self.cell_class = _mode_cell(cls_name)
        else:
            self.cell_class, given, self._blocks = resolve_cell(cell), cell_params or {}, None
        spec = self.cell_class.spec
        params = V.cell_params(spec, given)              # as the numpy layer checks them
        self._code = V.code_params(spec, params)
        self._key = register_cell(spec, self._code)
        ir = _kernel(self._key, "cpu").ir
        self.state_names = tuple(ir.states)
        self.weight_names = tuple(w.name for w in ir.weights)
        if cell is None:
            self._init_torch_layout(gates, device, dtype)
        else:
            self._init_cell(ir, params, seed, device, dtype)
            self.cell_params = dict(given)

    def _init_torch_layout(self, gates, device, dtype):
        """torch's parameters, registered in its order and drawn as its reset_parameters
        draws them (so torch.manual_seed gives both modules the same weights)."""
        G, H = gates, self.hidden_size
        names = []
        for sfx, D in zip(self._sfx, self._inputs):
            shapes = [(f"weight_ih{sfx}", (G * H, D)), (f"weight_hh{sfx}", (G * H, H))]
            if self.bias:
                shapes += [(f"bias_ih{sfx}", (G * H,)), (f"bias_hh{sfx}", (G * H,))]
            for n, shape in shapes:
                self.register_parameter(n, nn.Parameter(torch.empty(shape, device=device,
                                                                    dtype=dtype)))
                names.append(n)
        self._flat_weights_names = names
        self.reset_parameters()

    def _init_cell(self, ir, params, seed, device, dtype):
        """The cell's weights per layer and direction, as its numpy layer draws them."""
        cell = self.cell_class.__name__
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        names = []
        for i, (sfx, D) in enumerate(zip(self._sfx, self._inputs)):
            V.check_x_elementwise(ir, D, self.hidden_size, cell)
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), i]))
            for w, a in zip(ir.weights, V.initial_weights(ir, params, D, self.hidden_size, rng)):
                register_weight(self, cell, f"{w.name}{sfx}", a, dtype, device)
                names.append(f"{w.name}{sfx}")
        self._flat_weights_names = names

    def reset_parameters(self) -> None:
        """Every parameter uniform in +-1/sqrt(hidden_size), as torch.nn's RNNs (built-in
        modes; a cell of one's own is drawn by its spec's initializers)."""
        if self._blocks is None:
            raise TypeError("reset_parameters is for the torch.nn modes; a cell's own "
                            "weights are drawn by its spec's initializers when it is made")
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            nn.init.uniform_(w, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """Nothing to do (torch.nn's RNNs pack their weights for cuDNN here); kept so that
        code written for torch.nn runs unchanged."""

    @property
    def _flat_weights(self):
        """The parameters in torch.nn's order, as torch.nn's ``_flat_weights``."""
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self):
        """The parameters per layer and direction, as torch.nn's ``all_weights``."""
        per = len(self._flat_weights_names) // len(self._sfx)
        ws = self._flat_weights
        return [ws[i:i + per] for i in range(0, len(ws), per)]

    # -- the weights one layer and direction hands the kernels ------------------------------
    def _layer_weights(self, i):
        sfx = self._sfx[i]
        if self._blocks is None:
            return [getattr(self, f"{n}{sfx}") for n in self.weight_names]
        b = self.bias
        w_ih, w_hh = getattr(self, f"weight_ih{sfx}"), getattr(self, f"weight_hh{sfx}")
        blocks = self._blocks(w_ih, w_hh, getattr(self, f"bias_ih{sfx}") if b else None,
                              getattr(self, f"bias_hh{sfx}") if b else None)
        zero = None
        out = []
        for n in self.weight_names:
            t = blocks[n]
            if t is None:
                if zero is None:
                    zero = w_ih.new_zeros(self.hidden_size)
                t = zero
            out.append(t.contiguous())
        return out

    # -- checks ---------------------------------------------------------------------------
    def _check_input(self, input, w0):
        name = type(self).__name__
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{name} takes a tensor or a PackedSequence, got "
                            f"{type(input).__name__}")
        if input.dtype not in _FLOATS:
            raise InputTypeError(f"input must be float32 or float64, got {input.dtype} "
                                 "(float16 and bfloat16, autocast's too, are not supported)")
        if input.dtype != w0.dtype:
            raise InputTypeError(f"input is {input.dtype} but the module's parameters are "
                                 f"{w0.dtype}: convert one of them (.float() / .double())")
        if input.device != w0.device:
            raise InputError(f"input is on {input.device} but the module's parameters are "
                             f"on {w0.device}")
        if input.dim() not in (2, 3):
            raise InputError(f"{name}: expected input to be 2D (unbatched: sequence, "
                             f"input_size) or 3D, got {input.dim()}D of shape "
                             f"{tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise InputError(f"input.size(-1) must be equal to input_size. Expected "
                             f"{self.input_size}, got {input.shape[-1]}")

    def _states0(self, hx, B, batched, x):
        """hx as a list of S tensors (L*dirs, B, H), or None."""
        if hx is None:
            return None
        S = len(self.state_names)
        name = type(self).__name__
        if S == 1:
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"{name}: hx must be a tensor of shape (num_layers * "
                                f"num_directions, batch, hidden_size), got "
                                f"{type(hx).__name__}")
            states = [hx]
        else:
            if (not isinstance(hx, (tuple, list)) or len(hx) != S
                    or not all(isinstance(h, torch.Tensor) for h in hx)):
                raise TypeError(f"{name}: hx must be a tuple of {S} tensors "
                                f"({', '.join(self.state_names)}), each of shape "
                                f"(num_layers * num_directions, batch, hidden_size)")
            states = list(hx)
        LD = len(self._sfx)
        want = (LD, B, self.hidden_size) if batched else (LD, self.hidden_size)
        for n, h in zip(self.state_names, states):
            if tuple(h.shape) != want:
                kind = "batched" if batched else "unbatched"
                raise InputError(f"{name}: initial state {n} must have shape {want} for "
                                 f"{kind} input, got {tuple(h.shape)}")
            if h.dtype != x.dtype or h.device != x.device:
                raise InputError(f"{name}: initial state {n} must be {x.dtype} on "
                                 f"{x.device}, got {h.dtype} on {h.device}")
        return states if batched else [h.unsqueeze(1) for h in states]

    # -- running --------------------------------------------------------------------------
    def forward(self, input, hx=None):
        w0 = getattr(self, self._flat_weights_names[0])
        packing = None
        if isinstance(input, PackedSequence):
            self._check_input(input.data, w0)
            if input.data.dim() != 2:
                raise InputError("a PackedSequence's data must be 2D (steps, input_size)")
            packing = _Packing(input)
            x, mask, batched = packing.padded(input.data), packing.mask, True
        else:
            self._check_input(input, w0)
            batched = input.dim() == 3
            if not batched:
                x = input.unsqueeze(0)
            else:
                x = input if self.batch_first else input.transpose(0, 1)
            mask = None
        B, T = x.shape[0], x.shape[1]
        if T < 1:
            raise InputError(f"{type(self).__name__}: the input must hold at least one "
                             f"step, got shape {tuple(input.shape)}")
        states0 = self._states0(hx, B, batched, x)
        if B == 0:                   # an empty batch (as torch.nn: empty outputs)
            return self._empty_result(x, T, batched)
        dirs = 2 if self.bidirectional else 1
        finals = []
        layer_in = x
        for k in range(self.num_layers):
            outs = []
            for d in range(dirs):
                i = k * dirs + d
                s0 = None if states0 is None else torch.stack([s[i] for s in states0])
                y, last = self._run(layer_in, mask, s0, self._layer_weights(i), bool(d))
                outs.append(y)
                finals.append(last)
            layer_in = outs[0] if dirs == 1 else torch.cat(outs, dim=-1)
            if self.dropout > 0 and self.training and k < self.num_layers - 1:
                layer_in = self._dropout(layer_in, packing)
        S = len(self.state_names)
        h_n = [torch.stack([f[s] for f in finals]) for s in range(S)]
        if packing is not None:
            output = packing.pack(layer_in)
        elif not batched:
            output, h_n = layer_in[0], [h.squeeze(1) for h in h_n]
        else:
            output = layer_in if self.batch_first else layer_in.transpose(0, 1).contiguous()
        return output, (h_n[0] if S == 1 else tuple(h_n))

    def _empty_result(self, x, T, batched):
        dirs = 2 if self.bidirectional else 1
        out = x.new_zeros((0, T, dirs * self.hidden_size))
        if not self.batch_first:
            out = out.transpose(0, 1).contiguous()
        h = x.new_zeros((self.num_layers * dirs, 0, self.hidden_size))
        S = len(self.state_names)
        return out, (h if S == 1 else tuple(h.clone() for _ in range(S)))

    def _run(self, x, mask, state0, weights, reverse):
        y, last = run(self._key, x, mask, state0, weights, self.hidden_size, -1, reverse)
        return (torch.flip(y, (1,)) if reverse else y), last

    def _dropout(self, y, packing):
        """Dropout on a layer's output in torch's own layout, so that a generator in the
        same state draws torch's mask."""
        if packing is not None:
            return packing.padded(F.dropout(packing.data(y), self.dropout, True))
        return F.dropout(y.transpose(0, 1).contiguous(), self.dropout, True).transpose(0, 1)

    # -- pickling, repr ---------------------------------------------------------------------
    def __getstate__(self):
        state = dict(super().__getstate__())
        state["cell_class"] = cell_ref(state["cell_class"])
        return state

    def __setstate__(self, state):
        state = dict(state)
        state["cell_class"] = cell_from_ref(state["cell_class"])
        super().__setstate__(state)
        register_cell(self.cell_class.spec, self._code)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self._blocks is None:
            s = f"cell={self.cell_class.__name__}, " + s
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if self._blocks is None:
            s += "".join(f", {k}={v!r}" for k, v in self.cell_params.items())
        return s


class LSTM(_RNNBase):
    """torch.nn.LSTM over rnngen's kernels: the same arguments, parameters, state_dict,
    inputs (a tensor, batched or not, or a PackedSequence; ``(h_0, c_0)``) and outputs
    ``(output, (h_n, c_n))``.  ``proj_size`` is not supported."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device, dtype)


class GRU(_RNNBase):
    """torch.nn.GRU over rnngen's kernels (the reset gate applied after the recurrent
    product, as torch and cuDNN): the same arguments, parameters, state_dict, inputs and
    outputs ``(output, h_n)``."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype)


class RNN(_RNNBase):
    """torch.nn.RNN over rnngen's kernels (``nonlinearity`` "tanh" or "relu"), or, with
    ``cell=``, any cell through torch.nn's front end.

    ``cell``: a built-in name ("GRU", "LSTM", "MGU" of a spec path, ...), a path to a YAML
    spec, or a class from :func:`rnngen.load_cell`; its parameters are registered as
    ``{weight}_l{k}`` and ``{weight}_l{k}_reverse`` and drawn by the spec's initializers
    from ``seed`` (default: torch's generator); ``**cell_params`` are the cell's parameters
    by name.  ``hx`` and the returned final state are one tensor for a cell of one state,
    else a tuple of the spec's states in spec order (``m.state_names``), each
    (num_layers * num_directions, batch, hidden_size)."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None,
                 dtype=None, *, cell=None, seed=None, **cell_params):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             "'relu'.")
        if cell is None:
            if cell_params or seed is not None:
                what = ", ".join(sorted(cell_params)) or "seed"
                raise TypeError(f"RNN got {what}, which only a cell of one's own (cell=...) "
                                "takes")
        elif nonlinearity != "tanh" or bias is not True:
            raise ValueError("nonlinearity and bias belong to the Elman RNN; with cell=..., "
                             "pass the cell's own parameters by name (e.g. activation='relu')")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, cell=cell, seed=seed, cell_params=cell_params)
        self.nonlinearity = nonlinearity


# -- converting a model -----------------------------------------------------------------------
def _why_not(m) -> Optional[str]:
    """Why an nn.LSTM / GRU / RNN cannot be replaced, or None."""
    from torch.nn.utils import parametrize
    if type(m) not in (nn.LSTM, nn.GRU, nn.RNN):
        return f"a subclass of torch.nn.{type(m).__mro__[1].__name__} (its code may differ)"
    if getattr(m, "proj_size", 0):
        return f"proj_size={m.proj_size} (projections are not supported)"
    if parametrize.is_parametrized(m):
        return "parametrized weights"
    ps = list(m.parameters())
    if not ps:
        return "no parameters"
    if ps[0].dtype not in _FLOATS:
        return f"dtype {ps[0].dtype} (rnngen runs float32 and float64)"
    if ps[0].device.type not in ("cpu", "cuda"):
        return f"device {ps[0].device} (rnngen runs on CPU and CUDA)"
    return None


def _replacement(m):
    p = next(m.parameters())
    common = dict(bias=m.bias, batch_first=m.batch_first, dropout=float(m.dropout),
                  bidirectional=m.bidirectional, device=p.device, dtype=p.dtype)
    with warnings.catch_warnings():     # torch warned about these arguments already
        warnings.simplefilter("ignore")
        if type(m) is nn.LSTM:
            new = LSTM(m.input_size, m.hidden_size, m.num_layers, **common)
        elif type(m) is nn.GRU:
            new = GRU(m.input_size, m.hidden_size, m.num_layers, **common)
        else:
            new = RNN(m.input_size, m.hidden_size, m.num_layers, m.nonlinearity, **common)
    # the module's own Parameter objects (same names and shapes), so that an optimizer
    # made before, gradients, and weights tied between modules still hold
    if list(new._parameters) != list(m._parameters):
        raise RuntimeError(f"rnngen.torch.convert: {type(m).__name__}'s parameters "
                           f"{list(m._parameters)} do not match {list(new._parameters)}")
    for name, p in m._parameters.items():
        new._parameters[name] = p
    new.train(m.training)
    for attr in _HOOKS:                  # its hooks too (the same dicts: handles still work)
        if hasattr(m, attr):
            setattr(new, attr, getattr(m, attr))
    return new


_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
          "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
          "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
          "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def convert(module: nn.Module) -> nn.Module:
    """Replace every torch.nn.LSTM, GRU and RNN inside ``module`` (recursively, and
    ``module`` itself) with rnngen's drop-in holding the same Parameter objects (so an
    optimizer made before, gradients and tied weights carry over), training mode and
    hooks; return the model (changed in place; a new module when ``module`` itself is one
    of them).  A module used in two places is replaced by one
    module.  Those that cannot be converted (proj_size > 0, a subclass, parametrized
    weights, float16, ...) are left in place and listed in one warning."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert takes a torch.nn.Module, got {type(module).__name__}")
    done: dict = {}
    skipped = []

    def swap(m, path):
        if id(m) in done:
            return done[id(m)]
        if isinstance(m, nn.RNNBase):
            why = _why_not(m)
            if why is None:
                done[id(m)] = _replacement(m)
                return done[id(m)]
            skipped.append(f"{path or type(m).__name__}: {why}")
            done[id(m)] = None
            return None
        # _modules, not named_children(): that one yields a module held twice only once
        for name, child in list(m._modules.items()):
            if child is None:
                continue
            new = swap(child, f"{path}.{name}" if path else name)
            if new is not None:
                setattr(m, name, new)
        done[id(m)] = None
        return None

    new = swap(module, "")
    if skipped:
        warnings.warn("rnngen.torch.convert left these modules as they were: "
                      + "; ".join(skipped), stacklevel=2)
    return module if new is None else new
