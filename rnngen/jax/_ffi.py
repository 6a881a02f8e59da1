"""XLA FFI handlers over a cell's kernels: rendered from templates/jax_ffi.cc.j2 with the
call ABI's member list (rnngen.abi), compiled with the C++ compiler against
``jax.ffi.include_dir()`` and the cell's own library, and registered with XLA once per
process.

A handler's operands are the entry point's "in" and "mask" members and its results the
"out" members, each in struct order, an optional member only when its
``has_<name>`` attribute is set; the sizes (T, B, D, H, truncate) are int64 attributes.
:func:`operands` and :func:`results` give that order from the same list, by name.
"""
from __future__ import annotations

import ctypes
import hashlib
import threading
from pathlib import Path

import jax
import numpy as np

from .. import abi, build
from ..backends import CXX, _cxx_version
from ..render import GENERATOR_VERSION, _env
from ..runtime.ffi import DTYPES, STATUS

# (C type, entry-point suffix, XLA's dtype) of each element type the kernels take
_DTYPES = tuple((ct, sfx, f"ffi::DataType::F{8 * np.dtype(dt).itemsize}")
                for dt, (ct, sfx) in DTYPES.items())
_COUNTS = {"save_size": "(save_size > 0 ? save_size : 1)",
           "work_size": "(work_size > 0 ? work_size : 1)"}

_lock = threading.Lock()
_TARGETS: dict = {}      # kernel library path -> target prefix (registered)
_LIBS: list = []         # the loaded handler libraries, kept for the process's life


def _count(shape: str) -> str:
    """A member's element count as a C expression of the handler's sizes."""
    if shape in _COUNTS:
        return _COUNTS[shape]
    return " * ".join(f"(long long){d}" if d != "S" else "S" for d in shape.split(","))


class _Entry:
    def __init__(self, ir, name):
        self.name = name
        self.fields = abi.fields(ir, name)
        self.counts = {f.name: _count(f.shape) for f in self.fields if f.pointer}
        self.ints = [f for f in self.fields if f.kind == "int"]
        self.optional = [f for f in self.fields if f.optional]


PLATFORMS = {"c": "cpu", "cuda-emulated": "cpu", "cuda": "CUDA"}


def render_source(ir, header: str, symbol: str, backend: str = "c") -> str:
    """The C++ source of ``ir``'s handlers (``header``: the file holding the C
    declarations; ``symbol``: the handlers' name prefix) for the kernels of ``backend``
    ("c", "cuda" on XLA's stream, or "cuda-emulated")."""
    entries = [_Entry(ir, e) for e in abi.ENTRIES]
    return _env().get_template("jax_ffi.cc.j2").render(
        cell=ir.spec.name, version=GENERATOR_VERSION, header=header, prefix=f"rnngen_{ir.name}",
        symbol=symbol, entries=entries, dtypes=_DTYPES, nstates=len(ir.states), backend=backend,
        status=[(c, t.replace('"', "'")) for c, t in sorted(STATUS.items())])


def _command(kernel_lib: str):
    def command(src: Path, out: Path, include: Path) -> list:
        # -O1: the handlers are glue around one kernel call (-O2 took 4.2 s a cell, mostly
        # XLA's headers, -O1 3.3 s)
        return [CXX, "-std=c++17", "-O1", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror",
                "-isystem", jax.ffi.include_dir(), f"-I{include}", str(src), kernel_lib,
                f"-Wl,-rpath,{Path(kernel_lib).parent}", "-Wl,-z,nodelete", "-o", str(out)]
    return command


def build_handlers(ir, cdef: str, lib_path: str, backend: str = "c") -> Path:
    """The handler library of a cell's kernels (``cdef``: their C declarations,
    ``lib_path``: their library, built for ``backend``), built into the cache (or found
    there); nothing is loaded or registered, so no device is needed."""
    name = f"{ir.name}_jax" + ("" if backend == "c" else "_" + backend.replace("-", "_"))
    source = render_source(ir, f"{name}.h", f"rnngen_jax_{ir.name}", backend)
    return build.build_library(
        name, cdef, source, suffix=".cc", command=_command(lib_path),
        key_extra=(lib_path, jax.ffi.include_dir(), jax.__version__, _cxx_version()),
        describe=f"{ir.spec.name}'s XLA FFI handlers" + ("" if backend == "c" else
                                                          f" for {backend}"))


def targets(kernel, backend: str = "c") -> str:
    """The prefix of the XLA FFI targets of ``kernel`` (a Kernel of ``backend``):
    ``<prefix>_forward_f32`` and so on, built and registered (for XLA's platform of that
    backend) on first use."""
    with _lock:
        prefix = _TARGETS.get(kernel.lib_path)
        if prefix is not None:
            return prefix
        ir = kernel.ir
        handle = ctypes.CDLL(str(build_handlers(ir, kernel.cdef, kernel.lib_path, backend)))
        _LIBS.append(handle)
        digest = hashlib.sha256(kernel.lib_path.encode()).hexdigest()[:16]
        prefix = f"rnngen_{ir.name}_{digest}"
        for entry in abi.ENTRIES:
            for _, sfx, _ in _DTYPES:
                fn = getattr(handle, f"rnngen_jax_{ir.name}_{entry}{sfx}")
                jax.ffi.register_ffi_target(f"{prefix}_{entry}{sfx}", jax.ffi.pycapsule(fn),
                                            platform=PLATFORMS[backend])
        _TARGETS[kernel.lib_path] = prefix
        return prefix


def operands(ir, entry: str, values: dict) -> list:
    """The handler's operands from ``values`` (member name -> array or None), in order."""
    return [values[f.name] for f in abi.fields(ir, entry)
            if f.kind in ("in", "mask") and values[f.name] is not None]


def results(ir, entry: str, shapes: dict) -> list:
    """The handler's results (member name -> ShapeDtypeStruct or None; the scratch is the
    handler's own), in order, and their names."""
    names = [f.name for f in abi.fields(ir, entry)
             if f.kind == "out" and shapes[f.name] is not None]
    return [shapes[n] for n in names], names


def flags(ir, entry: str, values: dict) -> dict:
    """``has_<name>`` for every optional member."""
    return {f"has_{f.name}": np.bool_(values[f.name] is not None)
            for f in abi.fields(ir, entry) if f.optional}
