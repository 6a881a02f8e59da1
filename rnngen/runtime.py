"""Stage 5: load a compiled cell through cffi and call its entry points.

The cffi declarations are cut from the very header the C code includes
(runtime header between its cdef markers, then the cell header without
preprocessor lines), so they cannot drift apart.  :class:`Kernel` calls the C
backend's library on numpy arrays; :class:`CudaKernel` the CUDA backend's (on a
GPU, or its host emulation), copying numpy arrays to device memory and back.
"""
from __future__ import annotations

import ctypes
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Optional

import cffi
import numpy as np

from . import abi
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
    -10: "the context is wrong: a negative number of threads, or a device that is not the "
         "current one",
}
ECUDA, ECUBLAS = -8, -9

# After fork the child has no OpenMP threads but libgomp thinks it has: a parallel region of
# more than one thread would wait for them forever.  rnngen.pipeline makes every kernel of
# a forked child run on one thread; this notes the fork for the checks below.
_forked_child = False


def _after_fork_in_child() -> None:
    global _forked_child
    _forked_child = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def in_forked_child() -> bool:
    """Whether this process was forked from one that imported rnngen (its kernels then
    run on one thread: OpenMP's threads do not survive fork)."""
    return _forked_child


DTYPES = {np.dtype(np.float32): ("float", "_f32"), np.dtype(np.float64): ("double", "_f64")}


def _fit(arr: Optional[np.ndarray], shape, dtype) -> np.ndarray:
    """``arr`` where it can take a result of ``shape`` and ``dtype`` as it lies (C-contiguous,
    writable), else a new array."""
    if (isinstance(arr, np.ndarray) and arr.shape == tuple(shape) and arr.dtype == dtype
            and arr.flags.c_contiguous and arr.flags.writeable):
        return arr
    return np.empty(shape, dtype=dtype)


def _describe(a) -> tuple:
    """(shape, dtype, C-contiguous) of a numpy or device array; None for anything else."""
    if isinstance(a, np.ndarray):
        return a.shape, a.dtype, a.flags.c_contiguous
    if is_device_array(a):
        v = DeviceView.of(a, "an argument")   # checks contiguity itself
        return v.shape, v.dtype, True
    return None


def check_arguments(ir: CellIR, T: int, B: int, D: int, H: int, dtype, args) -> None:
    """Every argument of a kernel call against the cell: ``args`` is [(role, array or None,
    expected shape or None for none, kinds of dtype allowed)].  Raises TypeError or ValueError
    naming the argument, what it is and what is expected: no entry point can be driven to
    read or write out of bounds, nor read one dtype as another."""
    for role, arr, shape, dtypes in args:
        if arr is None:
            continue
        d = _describe(arr)
        if d is None:
            raise TypeError(f"{role} must be a numpy array or a device array, got "
                            f"{type(arr).__name__}")
        got_shape, got_dtype, contiguous = d
        if tuple(got_shape) != tuple(shape):
            raise ValueError(f"{role} must have shape {tuple(shape)} for {ir.spec.name} at "
                             f"T={T}, B={B}, D={D}, H={H}, got {tuple(got_shape)}")
        if got_dtype not in dtypes:
            raise TypeError(f"{role} must be {' or '.join(str(t) for t in dtypes)}, got "
                            f"{got_dtype}")
        if not contiguous:
            raise ValueError(f"{role} must be C-contiguous (np.ascontiguousarray)")


def _weight_args(ir: CellIR, weights, D: int, H: int, dtype) -> list:
    if not isinstance(weights, (list, tuple)) or len(weights) != len(ir.weights):
        n = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
        raise ValueError(f"{ir.spec.name} takes {len(ir.weights)} weights "
                         f"({', '.join(w.name for w in ir.weights)}), got {n}")
    return [(f"weight {w.name}", a, w.dims(D, H), (dtype,)) for w, a in zip(ir.weights, weights)]


_MASK_DTYPES = (np.dtype(np.uint8), np.dtype(np.bool_))


def _dims(x, H) -> tuple:
    """(B, T, D, dtype) of x, checked: a float32/float64 array of three dimensions; H a
    positive int."""
    d = _describe(x)
    if d is None or len(d[0]) != 3:
        raise ValueError(f"x must be a (batch, steps, input_dim) array, got "
                         f"{d[0] if d else type(x).__name__}")
    if d[1] not in DTYPES:
        raise TypeError(f"x must be float32 or float64, got {d[1]}")
    if isinstance(H, bool) or not isinstance(H, (int, np.integer)) or H < 1:
        raise ValueError(f"H (output_dim) must be a positive int, got {H!r}")
    B, T, D = d[0]
    return B, T, D, d[1]


def _physical_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: int, what: str) -> None:
    """MemoryError, before anything is allocated, when ``what`` needs more bytes than the
    machine has."""
    total = _physical_memory()
    if total is not None and nbytes > total:
        raise MemoryError(f"{what} needs {nbytes / 2**30:.1f} GiB, more than this machine's "
                          f"{total / 2**30:.1f} GiB; use fewer samples, steps or units per call")


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
        st = self._fn("set_threads")(int(n))
        if st != 0:
            raise ValueError(f"the number of threads must be 0 (automatic) or positive, got {n}")

    def _check_forward(self, x, mask, state0, weights, H) -> tuple:
        """(B, T, D, dtype) of a forward's arguments, each checked against the cell."""
        B, T, D, dtype = _dims(x, H)
        check_arguments(self.ir, T, B, D, H, dtype,
                        [("x", x, (B, T, D), (dtype,)), ("mask", mask, (B, T), _MASK_DTYPES),
                         ("state0", state0, (self.nstates, B, H), (dtype,))]
                        + _weight_args(self.ir, weights, D, H, dtype))
        return B, T, D, dtype

    def _check_backward(self, x, mask, weights, dy, dstates) -> tuple:
        """(B, T, D, H, dtype) of a backward's arguments (the save buffer apart), each
        checked against the cell; H is dy's last dimension."""
        d = _describe(dy)
        if d is None or len(d[0]) != 3:
            raise ValueError(f"dy must be a (batch, steps, output_dim) array, got "
                             f"{d[0] if d else type(dy).__name__}")
        H = d[0][2]
        B, T, D, dtype = _dims(x, H)
        check_arguments(self.ir, T, B, D, H, dtype,
                        [("x", x, (B, T, D), (dtype,)), ("mask", mask, (B, T), _MASK_DTYPES),
                         ("dy", dy, (B, T, H), (dtype,)),
                         ("dstates", dstates, (self.nstates, B, H), (dtype,))]
                        + _weight_args(self.ir, weights, D, H, dtype))
        return B, T, D, H, dtype

    @property
    def micro_kernel(self) -> str:
        """The micro-kernel the library was compiled with: its instruction set and register
        blocks, e.g. ``"avx2 float 6x16 double 6x8"`` (rnngen.targets)."""
        return self.ffi.string(self._fn("kernel")()).decode()

    def _work(self, n: int, dtype) -> np.ndarray:
        """Scratch of n elements, kept between calls: a fresh buffer each call would cost
        page faults on every first touch (tens of MB for the larger problems)."""
        bufs = self._local.__dict__.setdefault("bufs", {})
        buf = bufs.get(dtype)
        if buf is None or buf.size < n:
            buf = bufs[dtype] = np.empty(max(n, 1), dtype=dtype)
        return buf

    def _fn(self, name):
        """The library's entry point rnngen_<cell>_<name>."""
        return getattr(self.lib, f"{self.prefix}_{name}")

    def _context(self, **fields):
        """The call's context (rnngen_ctx: threads 0, the defaults)."""
        return self.ffi.new("rnngen_ctx *", fields)

    def _call(self, entry: str, sfx: str, ctx, values: dict) -> int:
        """rnngen_<cell>_<entry><sfx>(ctx, &args), the struct filled by member name from
        ``values`` as rnngen.abi lists the members (the header was printed from the same
        list): a member missing from ``values`` is a KeyError here, never a shifted
        argument.  ``values`` holds the buffers' cdata alive until the call returns."""
        args = self.ffi.new(f"{abi.struct_name(self.prefix, entry, sfx)} *")
        for f in abi.fields(self.ir, entry):
            setattr(args, f.name, values[f.name])
        return self._fn(f"{entry}{sfx}")(ctx, args)

    def _check_memory(self, T, B, D, H, n_save, n_work, training, itemsize):
        """MemoryError before anything is allocated if a call cannot fit this machine."""
        check_memory((n_save * training + n_work + 2 * B * T * (H + D)) * itemsize,
                     f"{self.ir.spec.name} at T={T}, B={B}, D={D}, H={H}")

    def _check(self, status: int, what: str):
        if status != 0:
            raise KernelError(f"{self.ir.spec.name} {what}: {STATUS.get(status, 'status')} "
                              f"(status {status})")

    def sizes(self, T, B, D, H) -> tuple[int, int]:
        save = self.ffi.new("long long *")
        work = self.ffi.new("long long *")
        self._check(self._fn("sizes")(T, B, D, H, save, work), "sizes")
        return int(save[0]), int(work[0])

    def _ptr(self, ctype, arr: Optional[np.ndarray]):
        if arr is None:
            return self.ffi.NULL
        return self.ffi.from_buffer(ctype + "[]", arr)

    @property
    def nstates(self) -> int:
        """S: the states of the cell (ir.states, in spec order)."""
        return len(self.ir.states)

    def forward(self, x, mask, weights, H, training: bool, save=None, out=None, state0=None,
                states_out: bool = False):
        """x [B,T,D] contiguous; mask uint8 [B,T] or None; state0 [S,B,H] contiguous (every
        state before the first step) or None for zeros; returns (y [B,T,H], save, last):
        last is [S,B,H], every state's final value, with ``states_out``, else None.

        ``save``: a buffer from an earlier call to reuse when it has the right size;
        ``out``: an array to write y into (used when its shape and dtype fit)."""
        B, T, D, _ = self._check_forward(x, mask, state0, weights, H)
        ctype, sfx = DTYPES[x.dtype]
        n_save, n_work = self.sizes(T, B, D, H)
        self._check_memory(T, B, D, H, n_save, n_work, training, x.dtype.itemsize)
        y = _fit(out, (B, T, H), x.dtype)
        if not training:
            save = None
        elif save is None or save.size != n_save or save.dtype != x.dtype:
            save = np.empty(n_save, dtype=x.dtype)
        last = np.empty((self.nstates, B, H), x.dtype) if states_out else None
        work = self._work(n_work, x.dtype)
        p = lambda a: self._ptr(ctype, a)  # noqa: E731
        values = dict(T=T, B=B, D=D, H=H, x=p(x), mask=self._ptr("unsigned char", mask),
                      state0=p(state0), y=p(y), state_last=p(last), save=p(save), work=p(work))
        values.update((f"w_{w.name}", p(a)) for w, a in zip(self.ir.weights, weights))
        self._check(self._call("forward", sfx, self._context(threads=0), values), "forward")
        return y, save, last

    def backward(self, x, mask, weights, save, dy, truncate: int, out=None, grads_out=None,
                 dstates=None, state0_grad: bool = False):
        """Returns (dx, weight gradients, dstate0); ``dstates``: [S,B,H] the gradient
        w.r.t. the final states (None: zero); dstate0 is [S,B,H], the gradient w.r.t. the
        initial states, with ``state0_grad``, else None.  ``out`` and ``grads_out``:
        arrays to write dx and the weight gradients into where shape and dtype fit."""
        if not isinstance(dy, np.ndarray):   # host arrays only on this backend
            raise ValueError(f"dy must be a (batch, steps, output_dim) array, got "
                             f"{type(dy).__name__}")
        B, T, D, H, dtype = self._check_backward(x, mask, weights, dy, dstates)
        n_save, n_work = self.sizes(T, B, D, H)
        check_arguments(self.ir, T, B, D, H, dtype, [("save", save, (n_save,), (dtype,))])
        ctype, sfx = DTYPES[x.dtype]
        if _forked_child and save.size > 3 and save[-3] > 1:
            raise RuntimeError(
                f"this backward's forward ran on {int(save[-3])} threads before the process "
                f"forked; a forked child runs every kernel on one thread (OpenMP's threads do "
                f"not survive fork), so it cannot run this backward: run the forward again in "
                f"this process")
        dx = _fit(out, x.shape, x.dtype)
        if grads_out is None or len(grads_out) != len(weights):
            grads_out = [None] * len(weights)
        grads = [_fit(g, w.shape, w.dtype) for g, w in zip(grads_out, weights)]
        d0 = np.empty((self.nstates, B, H), x.dtype) if state0_grad else None
        work = self._work(n_work, x.dtype)
        p = lambda a: self._ptr(ctype, a)  # noqa: E731
        values = dict(T=T, B=B, D=D, H=H, truncate=int(truncate), x=p(x),
                      mask=self._ptr("unsigned char", mask), save=p(save), dy=p(dy),
                      dstate_last=p(dstates), dx=p(dx), dstate0=p(d0), work=p(work))
        for w, a, g in zip(self.ir.weights, weights, grads):
            values[f"w_{w.name}"], values[f"dw_{w.name}"] = p(a), p(g)
        self._check(self._call("backward", sfx, self._context(threads=0), values), "backward")
        return dx, grads, d0


# DLPack's device types of CUDA memory (kDLCUDA, kDLCUDAManaged) and its data types
# (code, bits) that rnngen reads: float32/64, uint8 and bool (masks)
_DL_CUDA = (2, 13)
_DL_DTYPES = {(2, 32): np.dtype(np.float32), (2, 64): np.dtype(np.float64),
              (1, 8): np.dtype(np.uint8), (6, 8): np.dtype(np.bool_)}


def _dlpack_device(a) -> Optional[tuple]:
    try:
        return tuple(a.__dlpack_device__())
    except Exception:   # noqa: BLE001 - no DLPack, or a producer that cannot say
        return None


def is_device_array(a) -> bool:
    """Whether ``a`` is a CUDA device array (CuPy, torch CUDA tensors, numba, JAX, rnngen's
    own DeviceArray): it has ``__cuda_array_interface__``, or DLPack (``__dlpack__``) on a
    CUDA device."""
    if hasattr(a, "__cuda_array_interface__"):
        return True
    dev = _dlpack_device(a) if hasattr(a, "__dlpack__") else None
    return dev is not None and len(dev) == 2 and dev[0] in _DL_CUDA


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    """DLPack's DLTensor, which opens the DLManagedTensor a "dltensor" capsule holds."""
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _from_dlpack(a, what: str):
    """(pointer, shape, dtype, element strides or None, the capsule) of a DLPack array.
    The producer is asked to order its work before the legacy default stream (stream=1),
    the stream rnngen then runs on; the capsule, kept with the view, owns the reference
    (its deleter runs when it is collected)."""
    try:
        try:
            capsule = a.__dlpack__(stream=1)
        except TypeError:   # a producer without the stream argument
            capsule = a.__dlpack__()
        addr = _capsule_pointer(capsule, b"dltensor")
    except Exception as e:   # noqa: BLE001 - a producer or capsule rnngen cannot read
        raise TypeError(f"{what}: its DLPack capsule is not readable ({e})") from None
    t = ctypes.cast(addr, ctypes.POINTER(_DLTensor)).contents
    key = (t.dtype.code, t.dtype.bits)
    if key not in _DL_DTYPES or t.dtype.lanes != 1:
        raise TypeError(f"{what} must hold float32 or float64 (or, for a mask, uint8 or bool), "
                        f"got DLPack dtype code {t.dtype.code}, {t.dtype.bits} bits")
    if not 0 <= t.ndim <= 8:
        raise ValueError(f"{what} has {t.ndim} dimensions")
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    strides = tuple(int(t.strides[i]) for i in range(t.ndim)) if t.strides else None
    return (t.data or 0) + int(t.byte_offset), shape, _DL_DTYPES[key], strides, capsule


_TYPESTRS = {"<f4": np.dtype(np.float32), "<f8": np.dtype(np.float64),
             "|u1": np.dtype(np.uint8), "|b1": np.dtype(np.bool_)}


@dataclass(frozen=True)
class DeviceView:
    """What rnngen reads of a device array: its pointer, shape, dtype and stream."""
    ptr: int
    shape: tuple
    dtype: np.dtype
    stream: int          # 0: the default stream
    keep: object = field(default=None, compare=False, repr=False)   # a DLPack capsule

    @classmethod
    def of(cls, a, what: str) -> "DeviceView":
        """Read ``__cuda_array_interface__`` (first) or DLPack."""
        if not hasattr(a, "__cuda_array_interface__") and hasattr(a, "__dlpack__"):
            ptr, shape, dtype, strides, capsule = _from_dlpack(a, what)
            if strides is not None:
                strides = tuple(n * dtype.itemsize for n in strides)   # elements -> bytes
            cls._check_layout(what, ptr, shape, dtype, strides)
            return cls(ptr, shape, dtype, 0, capsule)
        try:
            iface = a.__cuda_array_interface__
            shape = tuple(int(n) for n in iface["shape"])
            typestr = iface["typestr"]
            ptr = int(iface["data"][0])
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            raise TypeError(f"{what}: its __cuda_array_interface__ is not readable") from None
        if typestr not in _TYPESTRS:
            raise TypeError(f"{what} must hold float32 or float64 (or, for a mask, uint8 or "
                            f"bool), got typestr {typestr!r}")
        dtype = _TYPESTRS[typestr]
        cls._check_layout(what, ptr, shape, dtype, iface.get("strides"))
        stream = iface.get("stream") if iface.get("version", 0) >= 3 else None
        return cls(ptr, shape, dtype, int(stream) if stream else 0)

    @staticmethod
    def _check_layout(what, ptr, shape, dtype, strides):
        """C-contiguous (byte strides, or None for compact) and not NULL."""
        if strides is not None:
            expect, step = [], dtype.itemsize
            for n in reversed(shape):
                expect.insert(0, step)
                step *= n
            if any(n > 1 and st != e for n, st, e in zip(shape, strides, expect)):
                raise ValueError(f"{what} must be C-contiguous (strides {tuple(strides)}, "
                                 f"expected {tuple(expect)}); copy it first")
        if ptr == 0 and int(np.prod(shape)) > 0:
            raise ValueError(f"{what} has a NULL data pointer")


class DeviceBuffer:
    """Device memory from a CUDA library (host memory in its emulation), freed with it."""

    def __init__(self, kernel: "CudaKernel", nbytes: int):
        pp = kernel.ffi.new("void **")
        kernel._check(kernel._fn("cuda_alloc")(max(int(nbytes), 1), pp), "cuda_alloc")
        self.ptr = kernel.ffi.gc(pp[0], kernel._fn("cuda_free"))
        self.nbytes = int(nbytes)
        self.owner = None

    @classmethod
    def over(cls, kernel: "CudaKernel", device_array, what: str = "save") -> "DeviceBuffer":
        """A buffer over a C-contiguous device array's memory (a torch CUDA tensor, say),
        which keeps the array alive and never frees it: the save buffer of a framework that
        allocates it itself."""
        v = DeviceView.of(device_array, what)
        buf = cls.__new__(cls)
        buf.ptr = kernel.ffi.cast("void *", v.ptr)
        buf.nbytes = int(np.prod(v.shape)) * v.dtype.itemsize
        buf.owner = device_array
        return buf


class DeviceArray:
    """A result on the GPU: a C-contiguous array (or a strided view of one) in device
    memory that rnngen allocated.  Hand it to CuPy or torch without a copy
    (``torch.as_tensor(a, device="cuda")``, ``cupy.asarray(a)``: both read
    ``__cuda_array_interface__``), or copy it to the host with :meth:`get`."""

    def __init__(self, kernel: "CudaKernel", buf: DeviceBuffer, shape, dtype, offset=0,
                 strides=None, stream: int = 0):
        self._kernel, self._buf = kernel, buf
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._offset, self._strides, self._stream = int(offset), strides, int(stream)

    @classmethod
    def empty(cls, kernel: "CudaKernel", shape, dtype, stream: int = 0) -> "DeviceArray":
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return cls(kernel, DeviceBuffer(kernel, nbytes), shape, dtype, stream=stream)

    @property
    def ptr(self) -> int:
        return int(self._kernel.ffi.cast("uintptr_t", self._buf.ptr)) + self._offset

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False),
                "strides": self._strides, "version": 3,
                "stream": self._stream if self._stream else None}

    def last_step(self) -> "DeviceArray":
        """The view [:, -1, :] of a [B, T, H] array (no copy)."""
        B, T, H = self.shape
        item = self.dtype.itemsize
        return DeviceArray(self._kernel, self._buf, (B, H), self.dtype,
                           self._offset + (T - 1) * H * item, (T * H * item, item), self._stream)

    def index(self, i: int) -> "DeviceArray":
        """The view [i] of a C-contiguous array (no copy): one state of [S, B, H]."""
        if self._strides is not None or not 0 <= i < self.shape[0]:
            raise IndexError(f"index {i} of a DeviceArray of shape {self.shape}")
        size = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        return DeviceArray(self._kernel, self._buf, self.shape[1:], self.dtype,
                           self._offset + i * size, None, self._stream)

    def get(self) -> np.ndarray:
        """A host copy (waits for the stream the array was written on)."""
        k = self._kernel
        out = np.empty(self.shape, self.dtype)
        k._check(k._fn("cuda_sync")(k._stream_ptr(self._stream)), "cuda_sync")
        if self._strides is None:
            return k._download(out, k.ffi.cast("void *", self.ptr))
        rows = int(np.prod(self.shape[:-1]))
        width = self.shape[-1] * self.dtype.itemsize
        k._check(k._fn("cuda_copy2d")(k.ffi.from_buffer(out), width,
                                      k.ffi.cast("void *", self.ptr), self._strides[-2], width,
                                      rows, k.ffi.NULL), "copy from the device")
        k._check(k._fn("cuda_sync")(k.ffi.NULL), "cuda_sync")
        return out

    def __array__(self, dtype=None, copy=None):
        a = self.get()
        return a if dtype is None else a.astype(dtype)

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"


class CudaKernel(Kernel):
    """The compiled forward/backward of one cell on the CUDA backend.

    Numpy arrays in and out: inputs are copied to device memory, results back.  Device
    arrays (anything with ``__cuda_array_interface__``: CuPy, torch CUDA tensors) are
    read where they lie, on their stream, and the results are DeviceArrays on the same
    stream.  What forward saves for backward stays on the device (a DeviceBuffer)."""

    def __init__(self, ir: CellIR, lib_path, runtime_header: str, cell_header: str):
        super().__init__(ir, lib_path, runtime_header, cell_header)
        self._check(self._fn("cuda_init")(), "cuda_init")
        # one cuBLAS handle per library, whose stream each call sets: calls from several
        # Python threads take turns
        self._calls = threading.Lock()

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
                states_out: bool = False):
        """As Kernel.forward; x (and mask, weights, state0) may be device arrays: then y
        (and the final states) are DeviceArrays computed on x's stream."""
        with self._calls:
            return self._forward(x, mask, weights, H, training, save, out, state0, states_out)

    def backward(self, x, mask, weights, save, dy, truncate: int, out=None, grads_out=None,
                 dstates=None, state0_grad: bool = False):
        """As Kernel.backward; with a device x or dy, dx (and dstate0) are DeviceArrays
        (the weight gradients are numpy arrays, like the weights).  Device arrays given as
        ``out`` (dx) and ``grads_out`` (every weight gradient) are written in place, on the
        stream, with no copy to the host and no wait; they are returned."""
        with self._calls:
            return self._backward(x, mask, weights, save, dy, truncate, out, grads_out,
                                  dstates, state0_grad)

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

    def _result(self, role: str, dev: bool, shape, dtype, stream: int):
        """(array, device pointer) for a result: a DeviceArray when the inputs are on the
        device, else a numpy array and a device buffer kept for ``role``."""
        if dev:
            a = DeviceArray.empty(self, shape, dtype, stream)
            return a, a._buf.ptr
        a = np.empty(shape, dtype)
        return a, self._device(role, a.nbytes).ptr

    def _forward(self, x, mask, weights, H, training, save, out, state0, states_out):
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
        last, lastptr = self._result("last", dev, (S, B, H), dtype, stream) if states_out \
            else (None, self.ffi.NULL)
        values = dict(T=T, B=B, D=D, H=H, x=self._in("x", x, (B, T, D), dtype),
                      mask=self._in("mask", mask, (B, T), np.uint8),
                      state0=self._in("state0", state0, (S, B, H), dtype), y=yptr,
                      state_last=lastptr, save=save.ptr if save is not None else self.ffi.NULL,
                      work=self._device("work", n_work * dtype.itemsize).ptr)
        values.update((f"w_{w.name}", p) for w, p in zip(self.ir.weights, ws))
        self._check(self._call("forward", sfx, self._context(stream), values), "forward")
        if not dev:
            self._download(y, yptr)
            if last is not None:
                self._download(last, lastptr)
        return y, save, last

    def _backward(self, x, mask, weights, save, dy, truncate, out, grads_out, dstates,
                  state0_grad):
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
        d0, d0ptr = self._result("dstate0", dev, (S, B, H), dtype, stream) if state0_grad \
            else (None, self.ffi.NULL)
        values = dict(T=T, B=B, D=D, H=H, truncate=int(truncate),
                      x=self._in("x", x, (B, T, D), dtype),
                      mask=self._in("mask", mask, (B, T), np.uint8), save=save.ptr,
                      dy=self._in("dy", dy, (B, T, H), dtype),
                      dstate_last=self._in("dstates", dstates, (S, B, H), dtype), dx=dxptr,
                      dstate0=d0ptr, work=self._device("work", n_work * dtype.itemsize).ptr)
        for w, p, g in zip(self.ir.weights, ws, dgs):
            values[f"w_{w.name}"], values[f"dw_{w.name}"] = p, g
        self._check(self._call("backward", sfx, self._context(stream), values), "backward")
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
