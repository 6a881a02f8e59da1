"""The C backend's kernel: a cell's library called on numpy arrays."""
from __future__ import annotations

import threading
from typing import Optional

import cffi
import numpy as np

from .. import abi
from ..errors import KernelError
from ..ir import CellIR
from . import ffi as _ffi
from .arrays import _MASK_DTYPES, _describe, _dims, _fit, _weight_args, check_arguments
from .ffi import DTYPES, STATUS, cdef_from_headers, check_memory


class Kernel:
    """The compiled forward/backward of one cell (both dtypes)."""

    def __init__(self, ir: CellIR, lib_path, runtime_header: str, cell_header: str):
        self.ir = ir
        self.lib_path = str(lib_path)     # what rnngen.jax's handlers link against
        self.backend = "c"                # the backend's name (compile_cell sets it)
        self.cdef = cdef_from_headers(runtime_header, cell_header)
        self.ffi = cffi.FFI()
        self.ffi.cdef(self.cdef)
        self.lib = self.ffi.dlopen(str(lib_path))
        self.prefix = f"rnngen_{ir.name}"
        self._local = threading.local()   # scratch buffers, one set per calling thread
        self._members: dict = {}          # entry -> its struct's member names (rnngen.abi)
        self._default_ctx = self.ffi.new("rnngen_ctx *", {"threads": 0})

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

    def _context(self, threads: int = 0):
        """The call's context (rnngen_ctx; threads 0: the defaults)."""
        if threads == 0:
            return self._default_ctx
        return self.ffi.new("rnngen_ctx *", {"threads": threads})

    def _call(self, entry: str, sfx: str, ctx, values: dict) -> int:
        """rnngen_<cell>_<entry><sfx>(ctx, &args), the struct filled by member name from
        ``values`` as rnngen.abi lists the members (the header was printed from the same
        list): a member missing from ``values`` (or one the struct lacks) is a KeyError
        here, never a shifted argument.  ``values`` holds the buffers' cdata alive until the call returns."""
        names = self._members.get(entry)
        if names is None:                       # the schema, once per kernel and entry
            names = self._members[entry] = frozenset(f.name for f in abi.fields(self.ir, entry))
        if values.keys() != names:
            missing = sorted(names - values.keys())
            raise KeyError(f"{entry}: no value for {', '.join(missing)}" if missing else
                           f"{entry}: no member {', '.join(sorted(values.keys() - names))}")
        args = self.ffi.new(f"{abi.struct_name(self.prefix, entry, sfx)} *", values)
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
        if _ffi._forked_child and save.size > 3 and save[-3] > 1:
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
