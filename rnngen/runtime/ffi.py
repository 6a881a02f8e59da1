"""The C side of a kernel library: what its status codes mean, the cffi declarations
(cut from the very headers the C code includes, so the two cannot drift apart), the
element types, memory checks, and what fork leaves behind."""
from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np


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
    -10: "the context is wrong: a negative number of threads, or a device that does not "
         "exist",
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
