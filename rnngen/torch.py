"""The kernels as PyTorch modules: :class:`Recurrent` and :class:`Bidirectional`.

    import torch
    import rnngen.torch as rt
    m = rt.Recurrent("LSTM", input_dim=8, output_dim=16, return_sequences=True)
    y = m(x, mask=mask)          # x (B, T, 8) float32 tensor, mask (B, T) bool
    y.sum().backward()           # m.W_i.grad, m.U_i.grad, ... in get_weights() order

Two operators in the namespace ``rnngen::`` carry every cell (torch.library.custom_op):

    rnngen::recurrent(key, x, mask, state0, weights, H, truncate, training, states_out)
        -> (y [B,T,H], save [n], last [S,B,H] or [0])
    rnngen::recurrent_backward(key, x, mask, state0, weights, save, dy, dlast, truncate,
                               state0_grad) -> [dx, dstate0 (or [0]), dW_1, ..., dW_n]

``key`` names a cell and its compiled-in parameters (a digest of both, the same in every
process); :func:`register_cell` maps it to the spec, and the kernel for a tensor's device
(the C backend for CPU tensors, the CUDA backend for CUDA tensors) is compiled on first use.
The forward returns ``save``, what the kernels keep for the backward, as a tensor, so that
autograd (``register_autograd``) saves it and torch.compile sees it; fake implementations
give both operators' shapes (the size of ``save`` from the kernel's ``sizes``, a C call, or
an unbacked size where the shapes are symbolic).

CPU tensors reach the kernels by pointer: numpy views of contiguous tensors, and outputs
written straight into fresh tensors.
CUDA tensors go to the CUDA backend by device pointer, on torch's current stream.  torch is
an optional dependency: ``pip install -e '.[torch]'``.  Guide: docs/torch.md.
"""
import hashlib
import threading
from pathlib import Path
from typing import List, Optional

try:
    import torch
    from torch import nn
except ImportError as e:                      # pragma: no cover - tested in a subprocess
    raise ImportError("rnngen.torch needs PyTorch, an optional dependency: "
                      "pip install -e '.[torch]' (from a checkout) or "
                      "pip install 'rnngen[torch]'") from e

import numpy as np

from .layers import MERGE_MODES, check_pair
from .pipeline import compile_cell
from .runtime import DeviceBuffer, Kernel

__all__ = ["Recurrent", "Bidirectional", "register_cell"]

_FLOATS = (torch.float32, torch.float64)

# -- the registry of cells ------------------------------------------------------------
_CELLS: dict = {}        # key -> (spec, compiled-in parameters)
_KERNELS: dict = {}      # (key, backend) -> Kernel
_lock = threading.Lock()


def register_cell(spec, code_params: dict) -> str:
    """The operators' key for ``spec`` with its compiled-in parameters ``code_params``
    (activations, integer and float parameters), registered in this process.  The key is a
    digest of the spec's text and the parameters, so it is the same in every process (a
    graph compiled in one names the same cell in another that registered it)."""
    params = {k: code_params[k] for k in sorted(code_params)}
    digest = hashlib.sha256(repr((spec.digest, sorted(params.items()))).encode()).hexdigest()
    key = f"{spec.name}:{digest[:20]}"
    with _lock:
        _CELLS.setdefault(key, (spec, params))
    return key


def _backend(device_type: str) -> str:
    try:
        return _BACKENDS[device_type]
    except KeyError:
        raise RuntimeError(f"rnngen runs on CPU and CUDA tensors, not on {device_type!r} "
                           "ones") from None


def _kernel(key: str, device_type: str) -> Kernel:
    backend = _backend(device_type)
    k = _KERNELS.get((key, backend))
    if k is None:
        with _lock:
            cell = _CELLS.get(key)
        if cell is None:
            raise RuntimeError(f"rnngen cell {key!r} is not registered in this process: make "
                               f"its rnngen.torch.Recurrent (or call register_cell) first")
        k = compile_cell(cell[0], cell[1], backend)
        with _lock:
            k = _KERNELS.setdefault((key, backend), k)
    return k


def _save_size(key, device_type, T, B, D, H):
    """Elements of the save buffer: the kernel's own count for concrete sizes, an unbacked
    size for symbolic ones (torch.compile with dynamic shapes)."""
    if all(isinstance(v, int) for v in (T, B, D, H)):
        return _kernel(key, device_type).sizes(T, B, D, H)[0]
    return torch.library.get_ctx().new_dynamic_size()


# -- CPU: numpy views of the tensors ----------------------------------------------------
def _empty(shape, dtype) -> torch.Tensor:
    """A fresh tensor for a kernel's output.  (An earlier pool reused the memory of outputs
    that torch's use count said nobody held; the count missed a held untyped_storage() and
    tensors sent to other processes, which then changed under their holders.  Fresh memory
    is never reachable by anyone else; glibc's heap serves repeated sizes without new page
    faults once its mmap threshold has adapted.)"""
    return torch.empty(shape, dtype=dtype)


def _np(t: Optional[torch.Tensor]):
    """The numpy view of a CPU tensor (no copy when it is contiguous)."""
    return None if t is None else t.detach().contiguous().numpy()


def _into(view: np.ndarray, arr: np.ndarray) -> None:
    """The kernels return the array they were given to write into (a tensor's numpy
    view) where it fits; anything else is copied there."""
    if arr is not view:
        view[...] = arr


def _empty_states(x):
    return torch.empty((0,), dtype=x.dtype, device=x.device)


def _forward_cpu(k, x, mask, state0, weights, H, training, states_out):
    B, T, D = x.shape
    y = _empty((B, T, H), x.dtype)
    save = _empty((k.sizes(T, B, D, H)[0] if training else 0,), x.dtype)
    y_view, save_view = y.numpy(), (save.numpy() if training else None)
    y_np, save_np, last = k.forward(
        _np(x), _np(mask), [_np(w) for w in weights], H, training, save=save_view,
        out=y_view, state0=_np(state0), states_out=states_out)
    _into(y_view, y_np)
    if training:
        _into(save_view, save_np)
    return y, save, torch.from_numpy(last) if states_out else _empty_states(x)


def _backward_cpu(k, x, mask, state0, weights, save, dy, dlast, truncate, state0_grad):
    dx = _empty(x.shape, x.dtype)
    grads = [_empty(w.shape, w.dtype) for w in weights]
    dx_view, g_views = dx.numpy(), [g.numpy() for g in grads]
    dx_np, g_np, ds0 = k.backward(
        _np(x), _np(mask), [_np(w) for w in weights], _np(save), _np(dy), truncate,
        out=dx_view, grads_out=g_views, dstates=_np(dlast), state0_grad=state0_grad)
    _into(dx_view, dx_np)
    for view, g in zip(g_views, g_np):
        _into(view, g)
    return [dx, torch.from_numpy(ds0) if state0_grad else _empty_states(x)] + grads


# -- CUDA: device pointers on torch's current stream -------------------------------------
_TYPESTR = {torch.float32: "<f4", torch.float64: "<f8", torch.uint8: "|u1"}


class _OnStream:
    """A contiguous tensor as a device array for the CUDA kernels: its pointer, shape and
    dtype, and torch's current stream (torch's own __cuda_array_interface__ names none,
    and rnngen would then run on the default stream).  A CPU tensor gives its host
    pointer, which is what the CUDA backend's emulation (cuda-emulated) reads."""

    def __init__(self, t: torch.Tensor):
        self.tensor = t                     # keeps the memory alive
        self.shape = tuple(t.shape)
        stream = torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0
        self.__cuda_array_interface__ = {
            "shape": self.shape, "typestr": _TYPESTR[t.dtype], "data": (t.data_ptr(), False),
            "strides": None, "version": 3, "stream": stream if stream else None}


def _dev(t):
    return None if t is None else _OnStream(t.contiguous())


def _buffer(k, t: torch.Tensor) -> DeviceBuffer:
    """A DeviceBuffer over a tensor's memory (owned by the tensor), which the CUDA kernels
    take as their save buffer: forward writes it, backward reads it."""
    return DeviceBuffer.over(k, _OnStream(t))


def _tensor_on(a, device) -> torch.Tensor:
    """A tensor on ``device`` from a DeviceArray the CUDA kernels made (the final states
    and their gradients: read in place on a GPU through its __cuda_array_interface__; on
    the CPU, the emulation, copied out with its get())."""
    if device.type == "cpu":
        return torch.from_numpy(a.get())
    return torch.as_tensor(a, device=device)


def _forward_cuda(k, x, mask, state0, weights, H, training, states_out):
    """y and save are torch's own tensors, which the kernels write in place."""
    B, T, D = x.shape
    save = torch.empty(k.sizes(T, B, D, H)[0] if training else 0, dtype=x.dtype,
                       device=x.device)
    y = torch.empty((B, T, H), dtype=x.dtype, device=x.device)
    _, _, last = k.forward(_dev(x), _dev(mask), [_dev(w) for w in weights], H, training,
                           save=_buffer(k, save) if training else None, out=_OnStream(y),
                           state0=_dev(state0), states_out=states_out)
    last = _tensor_on(last, x.device) if states_out else _empty_states(x)
    return y, save, last


def _backward_cuda(k, x, mask, state0, weights, save, dy, dlast, truncate, state0_grad):
    """dx and the weight gradients are torch's own tensors, written in place on torch's
    stream (nothing goes through the host)."""
    dx = torch.empty_like(x)
    grads = [torch.empty(w.shape, dtype=x.dtype, device=x.device) for w in weights]
    _, _, ds0 = k.backward(
        _dev(x), _dev(mask), [_dev(w) for w in weights], _buffer(k, save.contiguous()),
        _dev(dy), truncate, out=_OnStream(dx), grads_out=[_OnStream(g) for g in grads],
        dstates=_dev(dlast), state0_grad=state0_grad)
    ds0 = _tensor_on(ds0, x.device) if state0_grad else _empty_states(x)
    return [dx, ds0] + grads


# the backend for a tensor's device type, and the functions that run its kernels
_BACKENDS = {"cpu": "c", "cuda": "cuda"}
_RUN = {"c": (_forward_cpu, _backward_cpu), "cuda": (_forward_cuda, _backward_cuda),
        "cuda-emulated": (_forward_cuda, _backward_cuda)}


# -- the operators ----------------------------------------------------------------------
@torch.library.custom_op(
    "rnngen::recurrent", mutates_args=(),
    schema="(str key, Tensor x, Tensor? mask, Tensor? state0, Tensor[] weights, SymInt H, "
           "int truncate, bool training, bool states_out) -> (Tensor, Tensor, Tensor)")
def _recurrent(key, x, mask, state0, weights, H, truncate, training, states_out):
    """y [B,T,H] (every step), save (what backward reads; [0] unless training) and the
    final states [S,B,H] (with states_out, else [0]) of the cell ``key`` on x [B,T,D]."""
    k = _kernel(key, x.device.type)
    run = _RUN[_backend(x.device.type)][0]
    return run(k, x.contiguous(), mask, state0, weights, H, training, states_out)


@_recurrent.register_fake
def _recurrent_fake(key, x, mask, state0, weights, H, truncate, training, states_out):
    B, T, D = x.shape
    S = _kernel(key, x.device.type).nstates
    n = _save_size(key, x.device.type, T, B, D, H) if training else 0
    last = x.new_empty((S, B, H) if states_out else (0,))
    return x.new_empty((B, T, H)), x.new_empty((n,)), last


@torch.library.custom_op(
    "rnngen::recurrent_backward", mutates_args=(),
    schema="(str key, Tensor x, Tensor? mask, Tensor? state0, Tensor[] weights, Tensor save, "
           "Tensor dy, Tensor? dlast, int truncate, bool state0_grad) -> Tensor[]")
def _recurrent_backward(key, x, mask, state0, weights, save, dy, dlast, truncate,
                        state0_grad):
    """[dx, dstate0 ([0] unless state0_grad), dW_1, ..., dW_n] for the gradients dy of
    every output and dlast of the final states (None: zero)."""
    if save.numel() == 0:
        raise RuntimeError("rnngen: backward through a forward that ran with training=False "
                           "(nothing was saved for it)")
    k = _kernel(key, x.device.type)
    run = _RUN[_backend(x.device.type)][1]
    return run(k, x.contiguous(), mask, state0, weights, save, dy.contiguous(), dlast,
               truncate, state0_grad)


@_recurrent_backward.register_fake
def _recurrent_backward_fake(key, x, mask, state0, weights, save, dy, dlast, truncate,
                             state0_grad):
    ds0 = torch.empty_like(state0) if state0_grad else x.new_empty((0,))
    return [torch.empty_like(x), ds0] + [torch.empty_like(w) for w in weights]


def _setup_context(ctx, inputs, output):
    key, x, mask, state0, weights, H, truncate, training, states_out = inputs
    _, save, _ = output
    ctx.mark_non_differentiable(save)
    # no zero gradients for save (and unused outputs): zeros of save's size cost 10% of a
    # training call
    ctx.set_materialize_grads(False)
    ctx.key, ctx.H, ctx.truncate, ctx.states_out = key, H, truncate, states_out
    ctx.save_for_backward(x, mask, state0, save, *weights)


def _backward(ctx, dy, dsave, dlast):
    x, mask, state0, save, *weights = ctx.saved_tensors
    if dy is None:
        dy = x.new_zeros((x.shape[0], x.shape[1], ctx.H))
    need = ctx.needs_input_grad
    state0_grad = state0 is not None and bool(need[3])
    out = torch.ops.rnngen.recurrent_backward(
        ctx.key, x, mask, state0, weights, save, dy,
        dlast.contiguous() if ctx.states_out and dlast is not None else None,
        ctx.truncate, state0_grad)
    dx, ds0, grads = out[0], out[1], out[2:]
    return (None, dx if need[1] else None, None, ds0 if state0_grad else None,
            list(grads), None, None, None, None)


torch.library.register_autograd("rnngen::recurrent", _backward, setup_context=_setup_context)


# -- the modules --------------------------------------------------------------------------
def _cell_class(cell):
    """The numpy layer class for a built-in name, a spec path, or a class from load_cell."""
    from .layers import BUILTIN, Recurrent as NumpyRecurrent, load_cell
    if isinstance(cell, type) and issubclass(cell, NumpyRecurrent) and cell.spec is not None:
        return cell
    if isinstance(cell, str) and cell in BUILTIN:
        return BUILTIN[cell]
    if isinstance(cell, (str, Path)):
        p = Path(cell)
        if p.suffix in (".yaml", ".yml") or p.exists():
            return load_cell(p)
        raise ValueError(f"cell {str(cell)!r} is neither a built-in cell ("
                         + ", ".join(BUILTIN) + ") nor a spec file (.yaml)")
    raise TypeError("cell must be a built-in name ('GRU'), a path to a YAML spec, or a class "
                    f"from rnngen.load_cell, got {cell!r}")


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
        cls = _cell_class(cell)
        known = {p.name for p in cls.spec.params}
        unknown = sorted(set(cell_params) - known)
        if unknown:
            raise TypeError(f"{cls.__name__} has no parameter {', '.join(map(repr, unknown))}; "
                            f"its parameters: {', '.join(sorted(known)) or 'none'}")
        for name, v in (("return_state", return_state), ("go_backwards", go_backwards)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {v!r}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in _FLOATS:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        # the numpy layer checks every argument and draws the initial weights
        layer = cls(output_dim, input_dim=input_dim, return_sequences=return_sequences,
                    truncate_gradient=truncate_gradient, dtype="float64", seed=seed,
                    **cell_params)
        self.cell_class = cls
        self.input_dim, self.output_dim = layer.input_dim, layer.output_dim
        self.return_sequences = layer.return_sequences
        self.truncate_gradient = layer.truncate_gradient
        self.return_state, self.go_backwards = bool(return_state), bool(go_backwards)
        self.cell_params = dict(cell_params)
        self.params = dict(layer.params)
        code = {p.name: layer.params[p.name] for p in cls.spec.params if p.kind != "init"}
        self._key = register_cell(cls.spec, code)
        ir = _kernel(self._key, "cpu").ir
        self.state_names = tuple(ir.states)
        self.weight_names = tuple(w.name for w in ir.weights)
        for name, w in zip(self.weight_names, layer.get_weights()):
            if hasattr(nn.Module, name) or name in self.__dict__:
                raise ValueError(f"{cls.__name__}'s weight {name!r} clashes with an attribute "
                                 "of torch.nn.Module; rename it in the spec")
            self.register_parameter(
                name, nn.Parameter(torch.tensor(w, dtype=dtype, device=device)))

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
        if x.dim() != 3:
            raise ValueError(f"x must have 3 dimensions (batch, timesteps, input_dim), got "
                             f"shape {tuple(x.shape)}")
        B, T, D = x.shape
        if D != self.input_dim:
            raise ValueError(f"x has input_dim {D}, but the module was made for input_dim "
                             f"{self.input_dim}: expected shape (batch, timesteps, "
                             f"{self.input_dim})")
        if B < 1 or T < 1:
            raise ValueError(f"x must have at least one sample and one step, got shape "
                             f"{tuple(x.shape)}")
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
        if self.go_backwards:
            x = torch.flip(x, (1,))
            mask = None if mask is None else torch.flip(mask, (1,))
        training = torch.is_grad_enabled() and (
            x.requires_grad or any(w.requires_grad for w in weights)
            or (state0 is not None and state0.requires_grad))
        y, _, last = torch.ops.rnngen.recurrent(
            self._key, x, mask, state0, weights, self.output_dim, self.truncate_gradient,
            training, self.return_state)
        out = y if self.return_sequences else y[:, -1]
        if self.return_state:
            return (out, *last.unbind(0))
        return out

    # -- pickling (torch.save(module), multiprocessing) --------------------------------------
    def __getstate__(self):
        """The cell class is made at run time from its spec: pickled as the built-in's
        name or the spec file's path, loaded again (and its key registered) on unpickling."""
        from .layers import BUILTIN
        state = dict(super().__getstate__())
        cls = state.pop("cell_class")
        # a built-in by name; a user cell by its spec's text (and path, for messages), so
        # that unpickling makes the very cell that was pickled, wherever and whenever,
        # whatever became of the file
        state["_cell_ref"] = (cls.__name__ if BUILTIN.get(cls.__name__) is cls
                              else ("spec", str(cls.spec.path), cls.spec.text))
        return state

    def __setstate__(self, state):
        state = dict(state)
        ref = state.pop("_cell_ref")
        if isinstance(ref, tuple) and len(ref) == 3 and ref[0] == "spec":
            from .layers import layer_class
            from .ir import compute_ir
            from .spec import parse_spec
            spec = parse_spec(ref[2], ref[1])
            compute_ir(spec)                     # its equations' checks, as load_cell's
            cls = layer_class(spec)
        else:
            cls = _cell_class(ref)
        super().__setstate__(state)
        self.cell_class = cls
        code = {p.name: self.params[p.name] for p in cls.spec.params if p.kind != "init"}
        register_cell(cls.spec, code)

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
