"""Stage 4: compile rendered C into a shared library, in a content-keyed cache.

The cache key is a hash of everything that affects the binary: the rendered
source and header (which already encode the spec, its parameters, the
generator and the templates), the runtime header, the compiler's version and
the flags.  A build is claimed by creating ``lock`` exclusively; the library
is compiled under a temporary name and renamed into place, and ``done`` is
written last, so a reader never sees half a library.  A failed build leaves
``failed`` with the compiler's output.  Other processes wait for ``done`` or
``failed`` for a bounded time, then stop with an error naming what to delete.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from .errors import BuildError
from .render import TEMPLATES

CC = os.environ.get("CC", "cc")
CFLAGS = ["-O3", "-march=native", "-std=c11", "-fPIC", "-fopenmp", "-ffp-contract=fast", "-Wall", "-Wextra", "-Werror"]
# -z nodelete: the library (and so libgomp and the BLAS it loaded) stays mapped when
# cffi closes it at interpreter exit.  Unloaded, libgomp's idle worker threads (and the
# BLAS's) would run unmapped code: 5-8% of runs crashed at exit before this flag.
LDFLAGS = ["-Wl,-z,nodelete"]
BUILD_TIMEOUT_S = float(os.environ.get("RNNGEN_BUILD_TIMEOUT", "600"))


def cache_dir() -> Path:
    d = os.environ.get("RNNGEN_CACHE_DIR")
    if d:
        return Path(d)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rnngen"


@lru_cache(maxsize=None)
def blas_paths() -> tuple[str, str, str]:
    """(include dir, library dir, library name) of scipy-openblas32."""
    try:
        import scipy_openblas32 as ob
    except ImportError:
        raise BuildError("the BLAS package is missing: pip install scipy-openblas32 "
                         "(or pip install -e . from the rnngen checkout)") from None
    return ob.get_include_dir(), ob.get_lib_dir(), ob.get_library()


@lru_cache(maxsize=None)
def compiler_id() -> str:
    try:
        out = subprocess.run([CC, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"no working C compiler {CC!r} ({e}); install gcc or set CC") from None
    return out.stdout.splitlines()[0] if out.stdout else CC


def runtime_header() -> str:
    return (TEMPLATES / "rnngen_runtime.h").read_text()


def build_key(name: str, header: str, source: str, key_extra: tuple = ()) -> str:
    h = hashlib.sha256()
    for part in (header, source, runtime_header(), compiler_id(), " ".join(CFLAGS + LDFLAGS),
                 *blas_paths(), sys.platform, *key_extra):
        h.update(part.encode())
        h.update(b"\0")
    return f"{name}-{h.hexdigest()[:20]}"


def compile_command(src: Path, out: Path, include: Path, shared: bool = True) -> list[str]:
    """The compiler call for a cell library (or, shared=False, a program such as the
    kernel microbenchmark) against the runtime header and the BLAS."""
    inc, libdir, lib = blas_paths()
    link = ["-shared", *LDFLAGS] if shared else []
    return [CC, *CFLAGS, *link, str(src), "-o", str(out), f"-I{include}",
            f"-I{inc}", f"-L{libdir}", f"-l{lib}", f"-Wl,-rpath,{libdir}", "-lm"]


def build_library(name: str, header: str, source: str, *, suffix: str = ".c",
                  command=None, key_extra: tuple = ()) -> Path:
    """Return the path of the compiled library for these sources, building it once.

    ``suffix``: the source file's extension; ``command(src, out, include)``: the compiler
    call (default :func:`compile_command`); ``key_extra``: strings that also affect the
    binary (another compiler's version, target architectures), added to the cache key."""
    command = command or compile_command
    key = build_key(name, header, source, tuple(key_extra))
    d = cache_dir() / key
    lib = d / f"lib{name}.so"
    done, failed, lock = d / "done", d / "failed", d / "lock"
    if done.exists():
        return lib
    d.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return _wait_for(d, lib, lock)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        failed.unlink(missing_ok=True)
        (d / f"{name}.h").write_text(header)
        (d / f"{name}{suffix}").write_text(source)
        (d / "rnngen_runtime.h").write_text(runtime_header())
        with tempfile.NamedTemporaryFile(dir=d, suffix=".so", delete=False) as tmp:
            tmp_path = Path(tmp.name)
        cmd = command(d / f"{name}{suffix}", tmp_path, d)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            res = subprocess.CompletedProcess(cmd, 127, "", str(e))
        if res.returncode != 0:
            tmp_path.unlink(missing_ok=True)
            log = f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}"
            failed.write_text(log)
            raise BuildError(f"compiling {name} failed (sources in {d}):\n{log}")
        os.replace(tmp_path, lib)
        done.write_text(key + "\n")
        return lib
    finally:
        lock.unlink(missing_ok=True)


def _wait_for(d: Path, lib: Path, lock: Path) -> Path:
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    while time.monotonic() < deadline:
        if (d / "done").exists():
            return lib
        if (d / "failed").exists() and not lock.exists():
            raise BuildError(f"building {lib.name} failed in another process:\n"
                             f"{(d / 'failed').read_text()}")
        if not lock.exists() and not (d / "done").exists():
            # the builder gave up without a verdict; try again ourselves
            raise BuildError(f"another process stopped building {lib.name} without finishing; "
                             f"run again (or delete {d})")
        time.sleep(0.05)
    raise BuildError(f"timed out after {BUILD_TIMEOUT_S:.0f} s waiting for another process to "
                     f"build {lib.name}; if no build is running, delete {lock}")


def clear_cache() -> None:
    shutil.rmtree(cache_dir(), ignore_errors=True)
