"""Backends: what turns a cell's IR into a loaded library for one kind of device.

A :class:`Backend` owns its frame templates and dialects (through its render
function in :mod:`rnngen.render`), its compile command (for
:func:`rnngen.build.build_library`) and its loader (a kernel class from
:mod:`rnngen.runtime`).  The per-element math is the same for all of them.

``c``              the CPU: C with OpenMP, the CPU BLAS (the default; ``cpu`` is an alias)
``cuda``           an NVIDIA GPU: CUDA compiled by nvcc, cuBLAS from PyPI (the ``cuda`` extra)
``cuda-emulated``  the CUDA source compiled as C++ by the host compiler against
                   ``templates/rnngen_cuda_emu.h``: its kernels' logic on the CPU, for
                   testing the CUDA backend where there is no GPU (slow; not for real work)
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from . import build
from .errors import BuildError, DeviceError
from .ir import CellIR
from .layout import Layout, Schedule, compute_layout
from .render import TEMPLATES, cuda_layout, render_c, render_cuda
from .runtime import CudaKernel, Kernel
from .targets import cuda_archs, cuda_target, nvcc_path  # noqa: F401 (re-exported)

CUBLAS_PIN = "nvidia-cublas==13.0.2.14"   # the release that matches nvcc 13.0
CUBLAS_SONAME = "libcublas.so.13"
CUDA_HEADERS = ("rnngen_cuda.h", "rnngen_cuda_emu.h")


@dataclass(frozen=True)
class Backend:
    name: str
    render: Callable[..., tuple[str, str]]               # (ir, source name, layout, schedule)
    layout: Callable[..., Layout]                        # (ir, **layout choices)
    suffix: str                                          # of the source file
    lib_suffix: str                                      # library name = cell name + this
    command: Callable[[Path, Path, Path], list[str]]     # (source, library, include dir)
    key_extra: Callable[[], tuple[str, ...]]             # what else the binary depends on
    kernel: type                                         # runtime loader
    check: Callable[[], None] = lambda: None             # raises DeviceError if unusable here

    def library_name(self, ir: CellIR) -> str:
        return ir.name + self.lib_suffix


# -- C ---------------------------------------------------------------------------------
def _c_key() -> tuple[str, ...]:
    return ()


# -- CUDA ------------------------------------------------------------------------------
def nvcc_version() -> str:
    return cuda_target().toolkit


def cublas_dirs() -> tuple[str, str]:
    """(include dir, library dir) of cuBLAS from PyPI (nvidia-cublas, the cuda extra)."""
    try:
        import nvidia
    except ImportError:
        nvidia = None
    for base in list(getattr(nvidia, "__path__", [])):
        root = Path(base) / "cu13"
        if (root / "include" / "cublas_v2.h").is_file() and (root / "lib" / CUBLAS_SONAME).is_file():
            return str(root / "include"), str(root / "lib")
    raise DeviceError(f"no cuBLAS: pip install -e '.[cuda]' (or pip install {CUBLAS_PIN})")


def _headers_digest() -> str:
    h = hashlib.sha256()
    for name in CUDA_HEADERS:
        h.update((TEMPLATES / name).read_bytes())
    return h.hexdigest()


def nvcc_command(src: Path, out: Path, include: Path) -> list[str]:
    """nvcc's call for the current CUDA target (rnngen.targets.cuda_target)."""
    inc, lib = cublas_dirs()
    target = cuda_target()
    return [target.nvcc, "-O3", "-std=c++17", *target.gencode, "-Werror", "all-warnings",
            "-Xcompiler", "-fPIC,-Wall,-Wextra", "-shared", str(src), "-o", str(out),
            f"-I{include}", f"-I{TEMPLATES}", f"-I{inc}", f"-L{lib}", f"-l:{CUBLAS_SONAME}",
            "-Xlinker", f"-rpath,{lib}", "-Xlinker", "-z,nodelete"]


def _cuda_key() -> tuple[str, ...]:
    return (cuda_target().key(), _headers_digest(), cublas_dirs()[1])


def check_cuda() -> None:
    """Raise DeviceError naming what is missing: the driver, a device, cuBLAS or nvcc."""
    try:
        drv = ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise DeviceError("no NVIDIA driver: libcuda.so.1 cannot be loaded, so "
                          "backend='cuda' cannot run here (backend='cuda-emulated' runs the "
                          "CUDA kernels' logic on the CPU, for testing)") from None
    st = drv.cuInit(0)
    n = ctypes.c_int(0)
    if st != 0 or drv.cuDeviceGetCount(ctypes.byref(n)) != 0 or n.value < 1:
        raise DeviceError(f"no CUDA device: the driver found none (cuInit returned {st}, "
                          f"{n.value} devices)")
    cublas_dirs()
    nvcc_path()


# -- CUDA emulated on the host ---------------------------------------------------------
CXX = os.environ.get("CXX", "c++")


def _emu_flags() -> list[str]:
    flags = ["-x", "c++", "-std=c++17", "-O2", "-fPIC", "-pthread", "-Wall", "-Wextra",
             "-Werror", "-DRNNGEN_CUDA_EMULATION"]
    if os.environ.get("RNNGEN_SANITIZE"):   # make asan, and the sanitizer test
        flags += build.SANITIZE
    return flags


def emulated_command(src: Path, out: Path, include: Path) -> list[str]:
    inc, libdir, lib = build.blas_paths()
    return [CXX, *_emu_flags(), "-shared", str(src), "-o", str(out), f"-I{include}",
            f"-I{TEMPLATES}", f"-I{inc}", f"-L{libdir}", f"-l{lib}", f"-Wl,-rpath,{libdir}",
            "-Wl,-z,nodelete"]


@lru_cache(maxsize=None)
def _cxx_version() -> str:
    try:
        out = subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"no working C++ compiler {CXX!r} ({e}); install g++ or set CXX") from None
    return out.stdout.splitlines()[0] if out.stdout else CXX


def _emu_key() -> tuple[str, ...]:
    return (_cxx_version(), " ".join(_emu_flags()), _headers_digest(), *build.blas_paths())


BACKENDS = {
    "c": Backend("c", render_c, compute_layout, ".c", "", build.compile_command, _c_key,
                 Kernel),
    "cuda": Backend("cuda", render_cuda, cuda_layout, ".cu", "_cuda", nvcc_command, _cuda_key,
                    CudaKernel, check_cuda),
    "cuda-emulated": Backend("cuda-emulated", render_cuda, cuda_layout, ".cu", "_cuda",
                             emulated_command, _emu_key, CudaKernel),
}
ALIASES = {"cpu": "c"}


def get_backend(name: object) -> Backend:
    """The backend called ``name`` (c, cpu, cuda, cuda-emulated); ValueError otherwise."""
    key = ALIASES.get(name, name) if isinstance(name, str) else None
    if key not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(repr(b) for b in BACKENDS)} "
                         f"(or 'cpu' for 'c'), got {name!r}")
    return BACKENDS[key]
