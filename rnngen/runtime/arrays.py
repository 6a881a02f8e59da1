"""Arrays at the kernels' door: checks of numpy and device arrays against a cell
(shapes, dtypes, contiguity), and the device arrays of the CUDA backend (views of
__cuda_array_interface__ / DLPack producers, owned device buffers and the arrays
kernels return)."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..ir import CellIR
from .ffi import DTYPES

if TYPE_CHECKING:
    from .cuda import CudaKernel


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
