"""The CUDA backend's kernel: a cell's library (on a GPU, or its host emulation) called
on numpy arrays (copied to the device and back) or on device arrays in place."""
from __future__ import annotations

import numpy as np

from ..errors import KernelError
from ..ir import CellIR
from .arrays import DeviceArray, DeviceBuffer, DeviceView, _fit, is_device_array
from .cpu import Kernel
from .ffi import DTYPES, ECUBLAS, ECUDA, STATUS


class CudaKernel(Kernel):
    """The compiled forward/backward of one cell on the CUDA backend.

    Numpy arrays in and out: inputs are copied to device memory, results back.  Device
    arrays (anything with ``__cuda_array_interface__``: CuPy, torch CUDA tensors) are
    read where they lie, on their stream, and the results are DeviceArrays on the same
    stream.  What forward saves for backward stays on the device (a DeviceBuffer)."""

    def __init__(self, ir: CellIR, lib_path, runtime_header: str, cell_header: str):
        super().__init__(ir, lib_path, runtime_header, cell_header)
        self._check(self._fn("cuda_init")(), "cuda_init")

    def _stream_ptr(self, stream: int):
        return self.ffi.cast("void *", stream) if stream else self.ffi.NULL

    def _context(self, stream: int = 0, device: int = -1):
        """The call's context (rnngen_cuda_ctx): its stream, and the device it is for
        (-1: the current one)."""
        return self.ffi.new("rnngen_cuda_ctx *", {"stream": self._stream_ptr(stream),
                                                  "device": device})

    def set_threads(self, n: int) -> None:
        """The GPU's threads are not set by the user; the count is checked only."""
        if n < 0:
            raise ValueError(f"the number of threads must be 0 (automatic) or positive, got {n}")

    def _check(self, status: int, what: str):
        if status in (ECUDA, ECUBLAS):
            detail = self.ffi.string(self._fn("cuda_error")()).decode("ascii", "replace")
            raise KernelError(f"{self.ir.spec.name} {what}: {STATUS[status]}: {detail} "
                              f"(status {status})")
        super()._check(status, what)

    def _device(self, role: str, nbytes: int) -> DeviceBuffer:
        """A device buffer for ``role`` kept between calls (one set per calling thread)."""
        bufs = self._local.__dict__.setdefault("dev", {})
        buf = bufs.get(role)
        if buf is None or buf.nbytes < nbytes:
            buf = bufs[role] = DeviceBuffer(self, nbytes)
        return buf

    def _in(self, role: str, arr, shape, dtype):
        """The device pointer of an input: a device array's own (checked), or a copy of a
        host array in a buffer kept for ``role``."""
        if arr is None:
            return self.ffi.NULL
        if is_device_array(arr):
            v = DeviceView.of(arr, role)
            ok = v.dtype == dtype or (dtype == np.uint8 and v.dtype == np.bool_)
            if v.shape != tuple(shape) or not ok:
                raise ValueError(f"{role} on the device has shape {v.shape} and dtype {v.dtype}, "
                                 f"expected {tuple(shape)} and {np.dtype(dtype)}")
            return self.ffi.cast("void *", v.ptr)
        arr = np.ascontiguousarray(arr, dtype=dtype)
        buf = self._device(role, arr.nbytes)
        self._check(self._fn("cuda_copy")(buf.ptr, self.ffi.from_buffer(arr), arr.nbytes, 1),
                    "copy to the device")
        return buf.ptr

    def _download(self, arr: np.ndarray, ptr) -> np.ndarray:
        self._check(self._fn("cuda_copy")(self.ffi.from_buffer(arr), ptr, arr.nbytes, 0),
                    "copy from the device")
        return arr

    def forward(self, x, mask, weights, H, training: bool, save=None, out=None, state0=None,
                states_out: bool = False, states_into=None, work=None, device: int = -1):
        """As Kernel.forward; x (and mask, weights, state0) may be device arrays: then y
        (and the final states) are DeviceArrays computed on x's stream.  With device
        inputs, a framework's own device memory can take the results and the scratch, so
        that the call allocates nothing: ``out`` (y [B,T,H]), ``states_into`` (the final
        states [S,B,H], with ``states_out``) and ``work`` (at least sizes()[1] elements of
        x's dtype); each is written in place and returned where it is a result.
        ``device``: the GPU the call runs on (the inputs' device; -1: the current one)."""
        return self._forward(x, mask, weights, H, training, save, out, state0, states_out,
                             states_into, work, device)

    def backward(self, x, mask, weights, save, dy, truncate: int, out=None, grads_out=None,
                 dstates=None, state0_grad: bool = False, state0_grad_into=None, work=None,
                 device: int = -1):
        """As Kernel.backward; with a device x or dy, dx (and dstate0) are DeviceArrays
        (the weight gradients are numpy arrays, like the weights).  Device arrays given as
        ``out`` (dx), ``grads_out`` (every weight gradient) and ``state0_grad_into``
        (dstate0 [S,B,H]) are written in place, on the stream, with no copy to the host
        and no wait; they are returned.  ``work``, ``device``: as forward's."""
        return self._backward(x, mask, weights, save, dy, truncate, out, grads_out,
                              dstates, state0_grad, state0_grad_into, work, device)

    def _work(self, work, n_work: int, dtype):
        """The scratch: a given device array of at least n_work elements of dtype, or this
        thread's buffer kept between calls."""
        if work is None or not is_device_array(work):
            return self._device("work", n_work * dtype.itemsize).ptr
        v = DeviceView.of(work, "work")
        if v.dtype != dtype or int(np.prod(v.shape)) < n_work:
            raise ValueError(f"work on the device has {int(np.prod(v.shape))} elements of "
                             f"{v.dtype}, expected at least {n_work} of {np.dtype(dtype)}")
        return self.ffi.cast("void *", v.ptr)

    def _weights_in(self, weights, dtype):
        """The weights' device pointers (numpy weights copied up) and their shapes."""
        shapes = [DeviceView.of(w, f"w{i}").shape if is_device_array(w) else np.shape(w)
                  for i, w in enumerate(weights)]
        return [self._in(f"w{i}", w, s, dtype) for i, (w, s) in enumerate(zip(weights, shapes))], \
            shapes

    def _given(self, arr, what: str, shape, dtype):
        """The device pointer of a device array given to write a result into (checked), or
        None when ``arr`` is not a device array."""
        if arr is None or not is_device_array(arr):
            return None
        v = DeviceView.of(arr, what)
        if v.shape != tuple(shape) or v.dtype != dtype:
            raise ValueError(f"{what} on the device has shape {v.shape} and dtype {v.dtype}, "
                             f"expected {tuple(shape)} and {np.dtype(dtype)}")
        return self.ffi.cast("void *", v.ptr)

    def _states(self, role, what, wanted: bool, given, dev: bool, shape, dtype, stream):
        """(array, pointer) of an [S,B,H] result (the final states, dstate0): nothing when
        not wanted; the device array given for it (``what``) where there is one; else as
        _result."""
        if not wanted:
            return None, self.ffi.NULL
        ptr = self._given(given, what, shape, dtype) if dev else None
        if ptr is not None:
            return given, ptr
        return self._result(role, dev, shape, dtype, stream)

    def _result(self, role: str, dev: bool, shape, dtype, stream: int):
        """(array, device pointer) for a result: a DeviceArray when the inputs are on the
        device, else a numpy array and a device buffer kept for ``role``."""
        if dev:
            a = DeviceArray.empty(self, shape, dtype, stream)
            return a, a._buf.ptr
        a = np.empty(shape, dtype)
        return a, self._device(role, a.nbytes).ptr

    def _forward(self, x, mask, weights, H, training, save, out, state0, states_out,
                 states_into=None, work=None, device=-1):
        dev = is_device_array(x)
        xv = DeviceView.of(x, "x") if dev else None
        B, T, D = xv.shape if dev else x.shape
        dtype = xv.dtype if dev else x.dtype
        stream = xv.stream if dev else 0
        self._check_forward(x, mask, state0, weights, H)
        _, sfx = DTYPES[dtype]
        n_save, n_work = self.sizes(T, B, D, H)
        self._check_memory(T, B, D, H, n_save, n_work, training, dtype.itemsize)
        if not training:
            save = None
        elif not (isinstance(save, DeviceBuffer) and save.nbytes == n_save * dtype.itemsize):
            save = DeviceBuffer(self, n_save * dtype.itemsize)
        ws, _ = self._weights_in(weights, dtype)
        yptr = self._given(out, "out", (B, T, H), dtype) if dev else None
        if yptr is not None:
            y = out
        elif dev:
            y = DeviceArray.empty(self, (B, T, H), dtype, stream)
            yptr = y._buf.ptr
        else:
            y = _fit(out, (B, T, H), dtype)
            yptr = self._device("y", y.nbytes).ptr
        S = self.nstates
        last, lastptr = self._states("last", "states_into", states_out, states_into, dev,
                                     (S, B, H), dtype, stream)
        values = dict(T=T, B=B, D=D, H=H, x=self._in("x", x, (B, T, D), dtype),
                      mask=self._in("mask", mask, (B, T), np.uint8),
                      state0=self._in("state0", state0, (S, B, H), dtype), y=yptr,
                      state_last=lastptr, save=save.ptr if save is not None else self.ffi.NULL,
                      work=self._work(work, n_work, dtype))
        values.update((f"w_{w.name}", p) for w, p in zip(self.ir.weights, ws))
        self._check(self._call("forward", sfx, self._context(stream, device), values),
                    "forward")
        if not dev:
            self._download(y, yptr)
            if last is not None:
                self._download(last, lastptr)
        return y, save, last

    def _backward(self, x, mask, weights, save, dy, truncate, out, grads_out, dstates,
                  state0_grad, state0_grad_into=None, work=None, device=-1):
        xv = DeviceView.of(x, "x") if is_device_array(x) else None
        dyv = DeviceView.of(dy, "dy") if is_device_array(dy) else None
        dev = xv is not None or dyv is not None
        B, T, D = xv.shape if xv else x.shape
        H = dyv.shape[2] if dyv else dy.shape[2]
        dtype = dyv.dtype if dyv else dy.dtype
        stream = dyv.stream if dyv else (xv.stream if xv else 0)
        self._check_backward(x, mask, weights, dy, dstates)
        _, sfx = DTYPES[dtype]
        n_save, n_work = self.sizes(T, B, D, H)
        if not isinstance(save, DeviceBuffer):
            raise TypeError("backward needs the save buffer of a forward on the CUDA backend")
        if save.nbytes != n_save * dtype.itemsize:
            raise ValueError(f"save holds {save.nbytes} bytes, the forward of these sizes "
                             f"writes {n_save * dtype.itemsize}")
        if grads_out is None or len(grads_out) != len(weights):
            grads_out = [None] * len(weights)
        ws, shapes = self._weights_in(weights, dtype)
        gptrs = [self._given(g, f"grads_out[{i}]", s, dtype)
                 for i, (g, s) in enumerate(zip(grads_out, shapes))]
        on_device = dev and all(p is not None for p in gptrs)   # no gradient goes to the host
        grads = list(grads_out) if on_device else [_fit(g, s, dtype)
                                                   for g, s in zip(grads_out, shapes)]
        dxptr = self._given(out, "out", (B, T, D), dtype) if dev else None
        if dxptr is not None:
            dx = out
        elif dev:
            dx = DeviceArray.empty(self, (B, T, D), dtype, stream)
            dxptr = dx._buf.ptr
        else:
            dx = _fit(out, (B, T, D), dtype)
            dxptr = self._device("dx", dx.nbytes).ptr
        dgs = gptrs if on_device else [self._device(f"dw{i}", g.nbytes).ptr
                                       for i, g in enumerate(grads)]
        S = self.nstates
        d0, d0ptr = self._states("dstate0", "state0_grad_into", state0_grad, state0_grad_into,
                                 dev, (S, B, H), dtype, stream)
        values = dict(T=T, B=B, D=D, H=H, truncate=int(truncate),
                      x=self._in("x", x, (B, T, D), dtype),
                      mask=self._in("mask", mask, (B, T), np.uint8), save=save.ptr,
                      dy=self._in("dy", dy, (B, T, H), dtype),
                      dstate_last=self._in("dstates", dstates, (S, B, H), dtype), dx=dxptr,
                      dstate0=d0ptr, work=self._work(work, n_work, dtype))
        for w, p, g in zip(self.ir.weights, ws, dgs):
            values[f"w_{w.name}"], values[f"dw_{w.name}"] = p, g
        self._check(self._call("backward", sfx, self._context(stream, device), values),
                    "backward")
        if not on_device:
            self._check(self._fn("cuda_sync")(self._stream_ptr(stream)), "cuda_sync")
            for g, d in zip(grads, dgs):
                self._download(g, d)
        if not dev:
            self._download(dx, dxptr)
            if d0 is not None:
                self._download(d0, d0ptr)
        return dx, grads, d0

    def expand_last(self, dy, T: int):
        """A [B, T, H] device array, zero but for step T-1, which is dy [B, H] (a device
        array): the gradient of the last output only."""
        v = DeviceView.of(dy, "dy")
        B, H = v.shape
        full = DeviceArray.empty(self, (B, T, H), v.dtype, v.stream)
        item = v.dtype.itemsize
        sp = self._stream_ptr(v.stream)
        self._check(self._fn("cuda_zero")(full._buf.ptr, B * T * H * item, sp), "cuda_zero")
        self._check(self._fn("cuda_copy2d")(
            self.ffi.cast("void *", full.ptr + (T - 1) * H * item), T * H * item,
            self.ffi.cast("void *", v.ptr), H * item, H * item, B, sp), "copy on the device")
        return full
