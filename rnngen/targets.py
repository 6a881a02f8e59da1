"""Targets: what a library is compiled for.

A :class:`CudaTarget` names the CUDA toolkit (nvcc's version) and the GPU architectures
(``RNNGEN_CUDA_ARCHS``, default 90: SASS for each, PTX for the newest); the CUDA backend's
compile line and cache key come from it.

A :class:`CpuTarget` names the instruction set of a C build (the ``-march`` value,
``RNNGEN_MARCH``, default ``native``), the flags it adds to the compile line, and the
micro-kernel that templates/rnngen_runtime.h selects for it.  The kernel table lives in
that header alone (register block and panel width per instruction set); this module reads
it back by running the compiler's preprocessor over the header with the target's flags,
so Python and C cannot disagree.  Every build takes a target, and the cache key holds it
(the flags, what the compiler resolves ``-march`` to, and the kernel).

``RNNGEN_MARCH``   any ``-march`` value the compiler accepts (``native``, ``x86-64-v2``,
                   ``x86-64-v3``, ``x86-64-v4``, ``znver3``, ``armv8.2-a`` ...); a target
                   that needs instructions this CPU lacks is refused with a BuildError
                   (its code would die of an illegal instruction).
``RNNGEN_KERNEL``  ``auto`` (default: the table's kernel for the instruction set) or
                   ``portable`` (the BLAS on each panel: the fallback for CPUs without a
                   table entry, selectable anywhere to test it).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from .errors import BuildError, DeviceError
from .render import TEMPLATES

MARCH_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")
KERNELS = ("auto", "portable")

# Predefined macros of x86 instruction-set extensions and the /proc/cpuinfo flag that says
# the CPU has each: a target whose compiler defines one the CPU lacks cannot run here.
X86_FEATURES = {
    "__SSE3__": "pni", "__SSSE3__": "ssse3", "__SSE4_1__": "sse4_1", "__SSE4_2__": "sse4_2",
    "__POPCNT__": "popcnt", "__AVX__": "avx", "__AVX2__": "avx2", "__FMA__": "fma",
    "__F16C__": "f16c", "__BMI__": "bmi1", "__BMI2__": "bmi2", "__LZCNT__": "abm",
    "__MOVBE__": "movbe", "__AVX512F__": "avx512f", "__AVX512CD__": "avx512cd",
    "__AVX512BW__": "avx512bw", "__AVX512DQ__": "avx512dq", "__AVX512VL__": "avx512vl",
}


@dataclass(frozen=True)
class CpuTarget:
    """One instruction set for the C backend, and the micro-kernel built for it."""
    march: str                 # the -march value
    kernel: str                # avx512, avx2, sse2, neon or portable (the header's table)
    mr_f32: int                # rows of the register block (0: portable)
    panel_f32: int             # columns of a packed panel
    mr_f64: int
    panel_f64: int
    vector_bytes: int          # the kernels' vector size (0: portable)
    forced_portable: bool      # RNNGEN_KERNEL=portable
    resolved: str              # what the compiler makes of -march (part of the key)

    @property
    def flags(self) -> tuple[str, ...]:
        """What the target adds to the compile line."""
        out = [f"-march={self.march}"]
        # GCC's elementwise loops use 256-bit vectors by default; 512 only pays where the
        # target has AVX-512 (no effect elsewhere, and an error off x86)
        if self.kernel == "avx512":
            out.append("-mprefer-vector-width=512")
        if self.forced_portable:
            out.append("-DRNNGEN_KERNEL_PORTABLE")
        return tuple(out)

    def describe(self) -> str:
        """e.g. ``x86-64-v3 (avx2 kernels: float 6x16, double 6x8)``."""
        if self.kernel == "portable":
            return f"{self.march} (portable kernels: the BLAS per panel of {self.panel_f32})"
        return (f"{self.march} ({self.kernel} kernels: float {self.mr_f32}x{self.panel_f32}, "
                f"double {self.mr_f64}x{self.panel_f64})")

    def key(self) -> str:
        return f"{' '.join(self.flags)} | {self.kernel} | {self.resolved}"


def _cc() -> str:
    return os.environ.get("CC", "cc")


def _macros(cc: str, flags: tuple[str, ...]) -> dict[str, str]:
    """The macros the compiler defines after the runtime header's target table, with
    ``flags`` (no BLAS headers needed: RNNGEN_NO_BLAS)."""
    cmd = [cc, *flags, "-DRNNGEN_NO_BLAS", "-dM", "-E", "-x", "c",
           str(TEMPLATES / "rnngen_runtime.h")]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"no working C compiler {cc!r} ({e}); install gcc or set CC") from None
    if res.returncode != 0:
        err = (res.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BuildError(f"the compiler {cc!r} refuses the target {' '.join(flags)}: {err} "
                         f"(RNNGEN_MARCH must be a -march value it knows, e.g. native, "
                         f"x86-64-v2, x86-64-v3)")
    out = {}
    for line in res.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0] == "#define":
            out[parts[1]] = parts[2] if len(parts) == 3 else ""
    return out


def _resolved(cc: str, march: str) -> str:
    """What ``-march`` means to this compiler (gcc: the cc1 line of ``-###`` with the
    CPU's name and every -m feature flag; clang: -target-cpu and -target-feature)."""
    try:
        res = subprocess.run([cc, f"-march={march}", "-###", "-E", "-x", "c", os.devnull],
                             capture_output=True, text=True, timeout=60)
        lines = res.stderr.splitlines()
    except (OSError, subprocess.SubprocessError):
        lines = []
    for line in lines:
        if line.startswith(" ") and ("cc1" in line or "-target-cpu" in line):
            return " ".join(t for t in line.split() if "/" not in t)
    try:   # another compiler: the CPU's features as the kernel reports them
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"-march={march} {flags.strip()}"


def cpu_flags() -> Optional[set[str]]:
    """This CPU's feature flags from /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith(("flags", "Features"))), None)
    except OSError:
        return None
    return set(line.split(":", 1)[1].split()) if line else None


def missing_features(macros: dict[str, str]) -> list[str]:
    """The x86 extensions the target's code uses that this CPU lacks."""
    have = cpu_flags()
    if have is None or "__x86_64__" not in macros or "sse2" not in have:   # not an x86 CPU
        return []
    return sorted({flag for m, flag in X86_FEATURES.items() if m in macros and flag not in have})


def _int(macros: dict[str, str], name: str) -> int:
    """A number of the header's table."""
    value = macros.get(name, "")
    if not value.isdigit():
        raise BuildError(f"the runtime header's {name} is not a number: {value!r}")
    return int(value)


@lru_cache(maxsize=None)
def _cpu_target(cc: str, march: str, kernel: str) -> CpuTarget:
    base = CpuTarget(march, "portable", 0, 0, 0, 0, 0, kernel == "portable", "")
    macros = _macros(cc, base.flags)
    missing = missing_features(macros)
    if missing:
        raise BuildError(f"RNNGEN_MARCH={march} uses instructions this CPU lacks "
                         f"({', '.join(missing)}): its code would stop with an illegal "
                         f"instruction.  Use a level the CPU has (native, x86-64-v2, "
                         f"x86-64-v3{', x86-64-v4' if 'avx512f' in (cpu_flags() or ()) else ''})")
    name = macros.get("RNNGEN_KERNEL_NAME", '"portable"').strip('"')
    return CpuTarget(march, name, _int(macros, "RNNGEN_MR_F32"), _int(macros, "RNNGEN_PANEL_F32"),
                     _int(macros, "RNNGEN_MR_F64"), _int(macros, "RNNGEN_PANEL_F64"),
                     _int(macros, "RNNGEN_VEC_BYTES"), kernel == "portable",
                     _resolved(cc, march))


def cpu_target(march: Optional[str] = None, kernel: Optional[str] = None) -> CpuTarget:
    """The C target of a build: ``march`` (default RNNGEN_MARCH, else native) and
    ``kernel`` (default RNNGEN_KERNEL, else auto).  Checked: a value that could reach the
    compile line as anything but a -march value, a compiler that refuses it, or a target
    this CPU cannot run raises BuildError."""
    march = march if march is not None else (os.environ.get("RNNGEN_MARCH") or "native")
    kernel = kernel if kernel is not None else (os.environ.get("RNNGEN_KERNEL") or "auto")
    if not isinstance(march, str) or not MARCH_RE.match(march):
        raise BuildError(f"RNNGEN_MARCH must be a -march value such as native, x86-64-v2, "
                         f"x86-64-v3 or x86-64-v4 (letters, digits, '.', '_', '+', '-'), "
                         f"got {march!r}")
    if kernel not in KERNELS:
        raise BuildError(f"RNNGEN_KERNEL must be one of {', '.join(KERNELS)}, got {kernel!r}")
    return _cpu_target(_cc(), march, kernel)


def runnable_x86_levels() -> list[str]:
    """The x86-64 levels this CPU runs (v2, v3, v4 as far as it has them); empty off x86."""
    levels = []
    for march in ("x86-64-v2", "x86-64-v3", "x86-64-v4"):
        try:
            cpu_target(march, "auto")
        except BuildError:
            continue
        levels.append(march)
    return levels


# -- CUDA ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CudaTarget:
    """The CUDA backend's target: the toolkit and the GPU architectures."""
    archs: tuple          # compute capabilities, ascending, e.g. ("80", "90")
    toolkit: str          # nvcc --version's last line
    nvcc: str             # nvcc's path

    @property
    def gencode(self) -> tuple[str, ...]:
        """nvcc's -gencode flags: SASS for every architecture, PTX for the newest too (so
        newer GPUs can JIT it)."""
        out = []
        for a in self.archs:
            code = f"[sm_{a},compute_{a}]" if a == self.archs[-1] else f"sm_{a}"
            out += ["-gencode", f"arch=compute_{a},code={code}"]
        return tuple(out)

    def describe(self) -> str:
        return (f"CUDA ({self.toolkit}) for {', '.join('sm_' + a for a in self.archs)} "
                f"(+ PTX compute_{self.archs[-1]})")

    def key(self) -> str:
        return f"{self.toolkit} | {' '.join(self.gencode)}"


def cuda_archs() -> list[str]:
    """Target architectures: RNNGEN_CUDA_ARCHS (e.g. "80;90"), default 90 (H100/H200)."""
    raw = os.environ.get("RNNGEN_CUDA_ARCHS", "90")
    archs = [a.strip() for a in raw.replace(",", ";").split(";") if a.strip()]
    if not archs or not all(a.isdigit() and 2 <= len(a) <= 3 for a in archs):
        raise BuildError(f"RNNGEN_CUDA_ARCHS must list compute capabilities such as '90' or "
                         f"'80;90', got {raw!r}")
    return sorted(set(archs), key=int)


def nvcc_path() -> str:
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"),
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise DeviceError("no nvcc: install the CUDA toolkit (13.0) or set NVCC to its path")


@lru_cache(maxsize=None)
def _nvcc_version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise DeviceError(f"nvcc does not run ({e})") from None
    return out.strip().splitlines()[-1]


def cuda_target() -> CudaTarget:
    """The CUDA target of a build now: RNNGEN_CUDA_ARCHS and the nvcc found (NVCC,
    PATH, CUDA_HOME); DeviceError without nvcc, BuildError for bad architectures."""
    archs = tuple(cuda_archs())
    nvcc = nvcc_path()
    return CudaTarget(archs, _nvcc_version(nvcc), nvcc)
