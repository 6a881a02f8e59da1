"""Stage 5: load a compiled cell through cffi and call its entry points.

The cffi declarations are cut from the very header the C code includes
(runtime header between its cdef markers, then the cell header without
preprocessor lines), so they cannot drift apart.  :class:`Kernel` calls the C
backend's library on numpy arrays; :class:`CudaKernel` the CUDA backend's (on a
GPU, or its host emulation), copying numpy arrays to device memory and back.
"""
from __future__ import annotations

import re
import threading
from typing import Optional

import cffi
import numpy as np

from .errors import KernelError
from .ir import CellIR

STATUS = {
    -1: "a dimension (T, B, D or H) is smaller than 1",
    -2: "a required pointer is NULL",
    -3: "the sizes overflow the BLAS's 32-bit integers; use fewer steps or samples per call",
    -4: "truncate_gradient must be -1 or a positive number of steps",
    -5: "OpenMP started fewer threads for backward than forward laid its saved values out "
        "for; run forward again with the threads available now",
    -6: "the saved values were not written by this cell's forward",
    -7: "backward got a mask where its forward had none, or none where it had one; pass "
        "backward the mask of its forward",
    -8: "a CUDA call failed",
    -9: "a cuBLAS call failed",
}
ECUDA, ECUBLAS = -8, -9
DTYPES = {np.dtype(np.float32): ("float", "_f32"), np.dtype(np.float64): ("double", "_f64")}


def _fit(arr: Optional[np.ndarray], shape, dtype) -> np.ndarray:
    if arr is not None and arr.shape == tuple(shape) and arr.dtype == dtype:
        return arr
    return np.empty(shape, dtype=dtype)


def cdef_from_headers(runtime_header: str, cell_header: str) -> str:
    m = re.search(r"/\* cdef-begin.*?\*/(.*)/\* cdef-end \*/", runtime_header, re.S)
    body = m.group(1) if m else ""
    lines = [ln for ln in cell_header.splitlines() if not ln.lstrip().startswith("#")]
    return body + "\n" + "\n".join(lines)


class Kernel:
    """The compiled forward/backward of one cell (both dtypes)."""

    def __init__(self, ir: CellIR, lib_path, runtime_header: str, cell_header: str):
        self.ir = ir
        self.ffi = cffi.FFI()
        self.ffi.cdef(cdef_from_headers(runtime_header, cell_header))
        self.lib = self.ffi.dlopen(str(lib_path))
        self.prefix = f"rnngen_{ir.name}"
        self._local = threading.local()   # scratch buffers, one set per calling thread

    def set_threads(self, n: int) -> None:
        """Threads the kernels use (0: OpenMP's count, OMP_NUM_THREADS or the cores)."""
        st = getattr(self.lib, f"{self.prefix}_set_threads")(int(n))
        if st != 0:
            raise ValueError(f"the number of threads must be 0 (automatic) or positive, got {n}")

    def _work(self, n: int, dtype) -> np.ndarray:
        """Scratch of n elements, kept between calls: a fresh buffer each call would cost
        page faults on every first touch (tens of MB for the larger problems)."""
        bufs = self._local.__dict__.setdefault("bufs", {})
        buf = bufs.get(dtype)
        if buf is None or buf.size < n:
            buf = bufs[dtype] = np.empty(max(n, 1), dtype=dtype)
        return buf

    def _check(self, status: int, what: str):
        if status != 0:
            raise KernelError(f"{self.ir.spec.name} {what}: {STATUS.get(status, 'status')} "
                              f"(status {status})")

    def sizes(self, T, B, D, H) -> tuple[int, int]:
        save = self.ffi.new("long long *")
        work = self.ffi.new("long long *")
        self._check(getattr(self.lib, f"{self.prefix}_sizes")(T, B, D, H, save, work), "sizes")
        return int(save[0]), int(work[0])

    def _ptr(self, ctype, arr: Optional[np.ndarray]):
        if arr is None:
            return self.ffi.NULL
        return self.ffi.from_buffer(ctype + "[]", arr)

    def forward(self, x, mask, weights, H, training: bool, save=None, out=None):
        """x [B,T,D] contiguous; mask uint8 [B,T] or None; returns (y [B,T,H], save).

        ``save``: a buffer from an earlier call to reuse when it has the right size;
        ``out``: an array to write y into (used when its shape and dtype fit)."""
        B, T, D = x.shape
        ctype, sfx = DTYPES[x.dtype]
        n_save, n_work = self.sizes(T, B, D, H)
        y = _fit(out, (B, T, H), x.dtype)
        if not training:
            save = None
        elif save is None or save.size != n_save or save.dtype != x.dtype:
            save = np.empty(n_save, dtype=x.dtype)
        work = self._work(n_work, x.dtype)
        p = lambda a: self._ptr(ctype, a)  # noqa: E731
        st = getattr(self.lib, f"{self.prefix}_forward{sfx}")(
            T, B, D, H, p(x), self._ptr("unsigned char", mask), *[p(w) for w in weights],
            p(y), p(save), p(work))
        self._check(st, "forward")
        return y, save

    def backward(self, x, mask, weights, save, dy, truncate: int, out=None, grads_out=None):
        """Returns (dx, weight gradients); ``out`` and ``grads_out``: arrays to write them
        into where shape and dtype fit."""
        B, T, D = x.shape
        H = dy.shape[2]
        ctype, sfx = DTYPES[x.dtype]
        _, n_work = self.sizes(T, B, D, H)
        dx = _fit(out, x.shape, x.dtype)
        if grads_out is None or len(grads_out) != len(weights):
            grads_out = [None] * len(weights)
        grads = [_fit(g, w.shape, w.dtype) for g, w in zip(grads_out, weights)]
        work = self._work(n_work, x.dtype)
        p = lambda a: self._ptr(ctype, a)  # noqa: E731
        st = getattr(self.lib, f"{self.prefix}_backward{sfx}")(
            T, B, D, H, int(truncate), p(x), self._ptr("unsigned char", mask),
            *[p(w) for w in weights], p(save), p(dy), p(dx), *[p(g) for g in grads], p(work))
        self._check(st, "backward")
        return dx, grads


class DeviceBuffer:
    """Device memory from a CUDA library (host memory in its emulation), freed with it."""

    def __init__(self, kernel: "CudaKernel", nbytes: int):
        pp = kernel.ffi.new("void **")
        kernel._check(kernel._fn("cuda_alloc")(max(int(nbytes), 1), pp), "cuda_alloc")
        self.ptr = kernel.ffi.gc(pp[0], kernel._fn("cuda_free"))
        self.nbytes = int(nbytes)


class CudaKernel(Kernel):
    """The compiled forward/backward of one cell on the CUDA backend.  Numpy arrays in and
    out: inputs are copied to device memory, results back; what forward saves for
    backward stays on the device (a :class:`DeviceBuffer`)."""

    def __init__(self, ir: CellIR, lib_path, runtime_header: str, cell_header: str):
        super().__init__(ir, lib_path, runtime_header, cell_header)
        self._check(self._fn("cuda_init")(), "cuda_init")

    def _fn(self, name):
        return getattr(self.lib, f"{self.prefix}_{name}")

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

    def _upload(self, role: str, arr: Optional[np.ndarray]):
        if arr is None:
            return self.ffi.NULL
        arr = np.ascontiguousarray(arr)
        buf = self._device(role, arr.nbytes)
        self._check(self._fn("cuda_copy")(buf.ptr, self.ffi.from_buffer(arr), arr.nbytes, 1),
                    "copy to the device")
        return buf.ptr

    def _download(self, arr: np.ndarray, ptr) -> np.ndarray:
        self._check(self._fn("cuda_copy")(self.ffi.from_buffer(arr), ptr, arr.nbytes, 0),
                    "copy from the device")
        return arr

    def forward(self, x, mask, weights, H, training: bool, save=None, out=None):
        B, T, D = x.shape
        _, sfx = DTYPES[x.dtype]
        n_save, n_work = self.sizes(T, B, D, H)
        itemsize = x.dtype.itemsize
        y = _fit(out, (B, T, H), x.dtype)
        if not training:
            save = None
        elif not (isinstance(save, DeviceBuffer) and save.nbytes == n_save * itemsize):
            save = DeviceBuffer(self, n_save * itemsize)
        ws = [self._upload(f"w{i}", w) for i, w in enumerate(weights)]
        dy_ = self._device("y", y.nbytes)
        st = self._fn(f"forward{sfx}")(
            self.ffi.NULL, T, B, D, H, self._upload("x", x), self._upload("mask", mask), *ws,
            dy_.ptr, save.ptr if save is not None else self.ffi.NULL,
            self._device("work", n_work * itemsize).ptr)
        self._check(st, "forward")
        return self._download(y, dy_.ptr), save

    def backward(self, x, mask, weights, save, dy, truncate: int, out=None, grads_out=None):
        B, T, D = x.shape
        H = dy.shape[2]
        _, sfx = DTYPES[x.dtype]
        _, n_work = self.sizes(T, B, D, H)
        if not isinstance(save, DeviceBuffer):
            raise TypeError("backward needs the save buffer of a forward on the CUDA backend")
        dx = _fit(out, x.shape, x.dtype)
        if grads_out is None or len(grads_out) != len(weights):
            grads_out = [None] * len(weights)
        grads = [_fit(g, w.shape, w.dtype) for g, w in zip(grads_out, weights)]
        ws = [self._upload(f"w{i}", w) for i, w in enumerate(weights)]
        ddx = self._device("dx", dx.nbytes)
        dgs = [self._device(f"dw{i}", g.nbytes) for i, g in enumerate(grads)]
        st = self._fn(f"backward{sfx}")(
            self.ffi.NULL, T, B, D, H, int(truncate), self._upload("x", x),
            self._upload("mask", mask), *ws, save.ptr, self._upload("dy", dy), ddx.ptr,
            *[g.ptr for g in dgs], self._device("work", n_work * x.dtype.itemsize).ptr)
        self._check(st, "backward")
        for g, d in zip(grads, dgs):
            self._download(g, d.ptr)
        return self._download(dx, ddx.ptr), grads
