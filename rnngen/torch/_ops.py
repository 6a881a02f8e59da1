"""The two operators that carry every cell, and the registry of cells and kernels.

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
CUDA tensors go to the CUDA backend by device pointer, on torch's current stream.
"""
import hashlib
import threading
from typing import Optional

import torch

import numpy as np

from ..pipeline import compile_cell
from ..runtime import DeviceBuffer, Kernel

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


def _device_index(x: torch.Tensor) -> int:
    """The GPU a CUDA call runs on: its tensors' (torch does not make it the current device
    for a custom operator); -1 (the current one) for the emulation's CPU tensors."""
    return x.device.index if x.device.type == "cuda" else -1


def _scratch(n: int, x: torch.Tensor) -> torch.Tensor:
    """The kernels' scratch from torch's allocator; on the emulation filled with NaN, as
    its cudaMalloc fills fresh memory, so that a read of what nobody wrote shows."""
    if x.device.type == "cuda":
        return torch.empty(n, dtype=x.dtype, device=x.device)
    return torch.full((n,), float("nan"), dtype=x.dtype)


def _forward_cuda(k, x, mask, state0, weights, H, training, states_out):
    """y, save, the final states and the scratch are torch's own tensors (from its caching
    allocator, on x's stream), which the kernels write in place: the call allocates no
    device memory of its own."""
    B, T, D = x.shape
    n_save, n_work = k.sizes(T, B, D, H)
    save = torch.empty(n_save if training else 0, dtype=x.dtype, device=x.device)
    y = torch.empty((B, T, H), dtype=x.dtype, device=x.device)
    last = torch.empty((k.nstates, B, H), dtype=x.dtype, device=x.device) if states_out \
        else _empty_states(x)
    work = _scratch(n_work, x)
    k.forward(_dev(x), _dev(mask), [_dev(w) for w in weights], H, training,
              save=_buffer(k, save) if training else None, out=_OnStream(y),
              state0=_dev(state0), states_out=states_out,
              states_into=_OnStream(last) if states_out else None, work=_OnStream(work),
              device=_device_index(x))
    return y, save, last


def _backward_cuda(k, x, mask, state0, weights, save, dy, dlast, truncate, state0_grad):
    """dx, the weight gradients, dstate0 and the scratch are torch's own tensors, written
    in place on torch's stream (nothing goes through the host, nothing is allocated
    outside torch's allocator)."""
    B, T, D = x.shape
    dx = torch.empty_like(x)
    grads = [torch.empty(w.shape, dtype=x.dtype, device=x.device) for w in weights]
    ds0 = torch.empty((k.nstates, B, dy.shape[2]), dtype=x.dtype, device=x.device) \
        if state0_grad else _empty_states(x)
    work = _scratch(k.sizes(T, B, D, dy.shape[2])[1], x)
    k.backward(_dev(x), _dev(mask), [_dev(w) for w in weights], _buffer(k, save.contiguous()),
               _dev(dy), truncate, out=_OnStream(dx), grads_out=[_OnStream(g) for g in grads],
               dstates=_dev(dlast), state0_grad=state0_grad,
               state0_grad_into=_OnStream(ds0) if state0_grad else None, work=_OnStream(work),
               device=_device_index(x))
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


def _fake_device(device_type: str) -> str:
    """The kernel whose sizes a fake call reports: the tensors' device's, the C backend's
    for tensors on the meta device (shape inference)."""
    return "cpu" if device_type == "meta" else device_type


@_recurrent.register_fake
def _recurrent_fake(key, x, mask, state0, weights, H, truncate, training, states_out):
    B, T, D = x.shape
    dev = _fake_device(x.device.type)
    S = _kernel(key, dev).nstates
    n = _save_size(key, dev, T, B, D, H) if training else 0
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
    # contiguous, as the kernels write them (whatever the strides of x and the weights)
    return [x.new_empty(x.shape), ds0] + [x.new_empty(w.shape) for w in weights]


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


def run(key, x, mask, state0, weights, H, truncate=-1, reverse=False, states_out=True):
    """(y [B,T,H], last [S,B,H], or [0] without ``states_out``) of the cell ``key`` on x
    [B,T,D], read from its end with ``reverse`` (y then in that reading order): the
    operator, asked to keep what backward needs only where autograd will want it."""
    if reverse:
        x = torch.flip(x, (1,))
        mask = None if mask is None else torch.flip(mask, (1,))
    training = torch.is_grad_enabled() and (
        x.requires_grad or any(w.requires_grad for w in weights)
        or (state0 is not None and state0.requires_grad))
    y, _, last = torch.ops.rnngen.recurrent(key, x.contiguous(), mask, state0, weights, H,
                                            truncate, training, states_out)
    return y, last
