"""Stage 5: load a compiled cell through cffi and call its entry points.

``ffi``: status codes, the cffi declarations cut from the headers, memory checks, fork;
``arrays``: checks of arrays against a cell, and device arrays; ``cpu``: :class:`Kernel`,
the C backend's library on numpy arrays; ``cuda``: :class:`CudaKernel`, the CUDA
backend's (on a GPU, or its host emulation), on numpy or device arrays.
"""
from .arrays import (DeviceArray, DeviceBuffer, DeviceView, check_arguments,
                     is_device_array)
from .cpu import Kernel
from .cuda import CudaKernel
from .ffi import (DTYPES, ECUBLAS, ECUDA, STATUS, cdef_from_headers,
                  check_memory, in_forked_child)

__all__ = ["DTYPES", "ECUBLAS", "ECUDA", "STATUS", "CudaKernel", "DeviceArray", "DeviceBuffer",
           "DeviceView", "Kernel", "cdef_from_headers", "check_arguments", "check_memory",
           "in_forked_child", "is_device_array"]
