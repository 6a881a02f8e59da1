"""Stage 4: compile rendered C into a shared library, in a content-keyed cache.

The cache key is a hash of everything that affects the binary: the rendered
source and header (which already encode the spec, its parameters, the
generator and the templates), the runtime header, the compiler command, the
compiler's version and the target (rnngen.targets: the -march value, RNNGEN_MARCH, what
the compiler resolves it to on this machine, and the micro-kernel; a cache shared between
machines must not serve code for another CPU).

A build is claimed by creating ``lock`` exclusively (it names the owner: PID,
host, the process's start time); the library is compiled under a temporary name
and renamed into place, and ``done`` is written last with the library's sha256,
so a reader never sees half a library.  The cache heals itself:

* a library that does not match its ``done`` (truncated, overwritten) is rebuilt;
* a lock whose owner is gone (same host, PID dead or reused) or that is older than
  RNNGEN_BUILD_TIMEOUT is moved aside and taken over at once, instead of being
  waited for;
* a failed build leaves ``failed`` with the compiler's output; processes that
  waited for it report that output.

Other processes wait for a live owner for a bounded time, then stop with an
error naming what to delete.  A cache directory that cannot be written is a
BuildError that says so.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import BuildError
from .render import TEMPLATES
from .targets import CpuTarget, cpu_target

CC = os.environ.get("CC", "cc")
# The flags of every C build; the target's (-march=..., and -mprefer-vector-width=512 where
# it has AVX-512: rnngen.targets.CpuTarget.flags) follow -O3.
# -fno-math-errno: sqrt becomes one instruction (no errno); -fno-trapping-math: no code
# relies on floating-point exceptions, so the compiler may turn branches into selects and
# loops with exp, log, max ... vectorise (results are the same, IEEE rounding throughout).
# Measured in docs/design.md.
BASE_CFLAGS = ("-O3", "-std=c11", "-fPIC", "-fopenmp", "-ffp-contract=fast",
               "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wextra", "-Werror")
# -z nodelete: the library (and so libgomp and the BLAS it loaded) stays mapped when
# cffi closes it at interpreter exit.  Unloaded, libgomp's idle worker threads (and the
# BLAS's) would run unmapped code: 5-8% of runs crashed at exit before this flag.
LDFLAGS = ["-Wl,-z,nodelete"]
# RNNGEN_SANITIZE=1 (make asan): every library built with AddressSanitizer and UBSan, for a
# process that preloads the sanitizer runtime (the key holds the flags, so such libraries
# never serve a process without it).
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def cflags(target: Optional[CpuTarget] = None) -> list[str]:
    """The C compiler's flags for ``target`` (default: rnngen.targets.cpu_target(), i.e.
    RNNGEN_MARCH and RNNGEN_KERNEL as they are now)."""
    target = target or cpu_target()
    out = [BASE_CFLAGS[0], *target.flags, *BASE_CFLAGS[1:]]
    if os.environ.get("RNNGEN_SANITIZE"):
        out += SANITIZE
    return out


BUILD_TIMEOUT_S = float(os.environ.get("RNNGEN_BUILD_TIMEOUT", "600"))


def cache_dir() -> Path:
    """The cache directory, absolute: the compiler is given paths under it, and a
    relative one starting with '-' would be read as an option."""
    d = os.environ.get("RNNGEN_CACHE_DIR")
    if not d:
        d = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rnngen"
    return Path(os.path.abspath(d))


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


def target_key() -> str:
    """The current C target as the key holds it: its flags, its kernel and what the
    compiler resolves -march to (the CPU's name and every -m feature flag), so a cache
    shared between machines never serves code for another CPU."""
    return cpu_target().key()


def _env_parts(key_extra: Sequence[str], command: Optional[Callable], suffix: str) -> list:
    """What the binary depends on besides the sources: with the default command the
    compiler's version, the flags, the BLAS and the target (target_key); another
    command is named, and its compiler and flags belong in ``key_extra``."""
    parts = [runtime_header(), sys.platform, suffix, *key_extra]
    if command is None or command is compile_command:
        parts += [compiler_id(), " ".join(cflags() + LDFLAGS), *blas_paths(), target_key()]
    else:
        parts.append(f"{getattr(command, '__module__', '')}."
                     f"{getattr(command, '__qualname__', repr(command))}")
    return parts


def _digest(parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def build_key(name: str, header: str, source: str, key_extra: Sequence[str] = (), *,
              command: Optional[Callable] = None, suffix: str = ".c") -> str:
    """The cache folder's name: a hash of the sources and of everything else the binary
    depends on (see _env_parts)."""
    return f"{name}-{_digest([header, source, *_env_parts(key_extra, command, suffix)])}"


# -- finding a library before rendering its sources --------------------------------------
def input_key(inputs: Sequence[str], key_extra: Sequence[str] = (), *,
              command: Optional[Callable] = None, suffix: str = ".c") -> str:
    """A hash of what the sources are rendered from (spec, parameters, choices, the
    generator's code and templates) and of the build environment: the index entry that
    finds a built library without rendering it again."""
    return _digest([*inputs, *_env_parts(key_extra, command, suffix)])


def lookup(ikey: str) -> Optional[tuple[Path, str]]:
    """(library, header text) recorded for ``ikey`` if that library is published and
    intact, else None (then render and build_library as usual)."""
    try:
        folder, name = (cache_dir() / "index" / ikey).read_text().split()
        d = cache_dir() / folder
        lib = d / f"lib{name}.so"
        if "/" in folder or folder.startswith(".") or not _published(d, lib):
            return None
        return lib, (d / f"{name}.h").read_text()
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def record(ikey: str, lib: Path) -> None:
    """Note which library ``ikey`` was built into (best effort: a read-only cache only
    loses the shortcut)."""
    try:
        index = cache_dir() / "index"
        index.mkdir(parents=True, exist_ok=True)
        _write_atomic(index / ikey, f"{lib.parent.name} {lib.name[3:-3]}\n")
    except OSError:
        pass


def compile_command(src: Path, out: Path, include: Path, shared: bool = True,
                    target: Optional[CpuTarget] = None) -> list[str]:
    """The compiler call for a cell library (or, shared=False, a program such as the
    kernel microbenchmark) against the runtime header and the BLAS, for ``target``
    (default: the current one, rnngen.targets.cpu_target())."""
    inc, libdir, lib = blas_paths()
    link = ["-shared", *LDFLAGS] if shared else []
    return [CC, *cflags(target), *link, str(src), "-o", str(out), f"-I{include}",
            f"-I{inc}", f"-L{libdir}", f"-l{lib}", f"-Wl,-rpath,{libdir}", "-lm"]


def build_library(name: str, header: str, source: str, *, suffix: str = ".c",
                  command: Optional[Callable[[Path, Path, Path], list]] = None,
                  key_extra: Sequence[str] = (), describe: str = "") -> Path:
    """Return the path of the compiled library for these sources, building it once.

    ``suffix``: the source file's extension; ``command(src, out, include)``: the compiler
    call (default :func:`compile_command`; it is given absolute paths); ``key_extra``:
    strings that also affect the binary (another compiler's version and flags, target
    architectures), added to the cache key.  ``describe`` names what is built in the one
    line printed to stderr when this process compiles it (``compiling MGU (float32+float64,
    activation=tanh) ... 8.1 s``; nothing when the cache has it); RNNGEN_QUIET=1 silences
    that line."""
    command = command or compile_command
    key = build_key(name, header, source, tuple(key_extra), command=command, suffix=suffix)
    root = cache_dir()
    d = root / key
    lib = d / f"lib{name}.so"
    if _published(d, lib):       # a read-only cache that holds the library is fine
        return lib
    lock, failed = d / "lock", d / "failed"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(root, e) from None
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    waited_since = None          # when we first found a live owner building it
    while True:
        if waited_since is not None:
            if _published(d, lib):
                return lib
            try:
                failed_at = failed.stat().st_mtime
            except OSError:
                failed_at = None
            if failed_at is not None and failed_at >= waited_since - 1 and not lock.exists():
                raise BuildError(f"building {lib.name} failed in another process:\n"
                                 f"{_read(failed)}")
        try:
            token = _acquire(lock, root)
        except BuildError:
            if d.is_dir():
                raise
            d.mkdir(parents=True, exist_ok=True)   # cleared meanwhile: start over
            continue
        if token is not None:
            try:
                if _published(d, lib):    # the owner we waited for finished meanwhile
                    return lib
                loud = os.environ.get("RNNGEN_QUIET", "") in ("", "0")
                if loud:
                    print(f"compiling {describe or name} ...", end="", file=sys.stderr,
                          flush=True)
                t0, built = time.perf_counter(), False
                try:
                    try:
                        lib = _compile(d, name, header, source, suffix, command, key, root)
                    except BuildError:
                        if d.is_dir():
                            raise
                        # the folder was deleted under us (a cache clear that looked just
                        # before our lock): build again
                        d.mkdir(parents=True, exist_ok=True)
                        lib = _compile(d, name, header, source, suffix, command, key, root)
                    built = True
                    return lib
                finally:
                    if loud:
                        print(f" {time.perf_counter() - t0:.1f} s" if built else " failed",
                              file=sys.stderr, flush=True)
            finally:
                _release(lock, token)
        owner = _read_lock(lock)
        if owner is None:        # released between our try and this look: try again
            continue
        stale = _stale(owner)
        if stale:
            _break(lock, owner)  # and claim it on the next turn
            waited_since = None
            continue
        if waited_since is None:
            waited_since = time.time()
        if time.monotonic() > deadline:
            raise BuildError(f"timed out after {BUILD_TIMEOUT_S:.0f} s waiting for process "
                             f"{owner.get('pid')} on {owner.get('host')} to build {lib.name}; "
                             f"if no build is running, delete {lock}")
        time.sleep(0.05)


# -- publishing and checking ------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _published(d: Path, lib: Path) -> bool:
    """Whether ``done`` is there and the library is what it recorded (a library
    truncated or overwritten after it was built crashed the interpreter on load)."""
    try:
        text = (d / "done").read_text()
        want = next((ln.split()[1] for ln in text.splitlines()
                     if ln.startswith("sha256 ") and len(ln.split()) == 2), None)
        return want is not None and _sha256(lib) == want
    except (OSError, UnicodeDecodeError):
        return False


def _compile(d: Path, name: str, header: str, source: str, suffix: str, command: Callable,
             key: str, root: Path) -> Path:
    """Build under the lock: sources, compiler into a temporary name, rename, ``done``."""
    lib, done, failed = d / f"lib{name}.so", d / "done", d / "failed"
    tmp_path = None
    try:
        done.unlink(missing_ok=True)       # what it vouched for is being replaced
        failed.unlink(missing_ok=True)
        (d / f"{name}.h").write_text(header)
        (d / f"{name}{suffix}").write_text(source)
        (d / "rnngen_runtime.h").write_text(runtime_header())
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".lib{name}-", suffix=".so")
        os.close(fd)
        tmp_path = Path(tmp)
        cmd = [str(c) for c in command(d / f"{name}{suffix}", tmp_path, d)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            res = subprocess.CompletedProcess(cmd, 124, "", f"timed out after "
                                                            f"{BUILD_TIMEOUT_S:.0f} s")
        except OSError as e:
            res = subprocess.CompletedProcess(cmd, 127, "", str(e))
        if res.returncode != 0:
            log = f"$ {shlex.join(cmd)}\n{res.stdout}{res.stderr}"
            _write_atomic(failed, log)
            raise BuildError(f"compiling {name} failed (sources in {d}):\n{log}")
        os.replace(tmp_path, lib)
        tmp_path = None
        _write_atomic(done, f"{key}\nsha256 {_sha256(lib)}\n")
        return lib
    except OSError as e:
        raise _unwritable(root, e) from None
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _unwritable(root: Path, e: OSError) -> BuildError:
    return BuildError(f"cannot write to the build cache {root} ({e.strerror or e}: "
                      f"{e.filename or root}); set RNNGEN_CACHE_DIR to a writable directory")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        return f"({path} unreadable: {e})"


# -- the lock ---------------------------------------------------------------------------
# The lock file holds its owner as JSON: pid, host, the process's start time (to tell a
# reused PID) and a token unique to this claim.  It is written whole under a temporary
# name and linked into place (os.link fails if a lock exists), so a lock is never seen
# empty or half-written.
def _proc_stat(pid: int) -> Optional[tuple[str, str]]:
    """(state, start time in clock ticks) of a process from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


_identity: dict = {}


def _me() -> dict:
    """This process as a lock names it (looked up again in a forked child)."""
    pid = os.getpid()
    if pid not in _identity:
        st = _proc_stat(pid)
        _identity[pid] = {"pid": pid, "host": socket.gethostname(), "start": st and st[1]}
    return _identity[pid]


def _acquire(lock: Path, root: Path) -> Optional[str]:
    """Claim ``lock``; its token, or None when another process holds it."""
    token = uuid.uuid4().hex
    text = json.dumps({**_me(), "token": token}) + "\n"
    tmp = lock.with_name(f".lock.{token}")
    try:
        tmp.write_text(text)
        try:
            os.link(tmp, lock)
        except FileExistsError:
            return None
        except OSError:          # a file system without hard links: create it exclusively
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(fd, "w") as f:
                f.write(text)
        return token
    except OSError as e:
        raise _unwritable(root, e) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _read_lock(lock: Path) -> Optional[dict]:
    """The lock's owner record (with its file's identity and age), or None if no lock.
    A record that cannot be read gives a dict with no pid (judged by age alone)."""
    try:
        st = os.stat(lock)
        raw = lock.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return {"raw": b"", "ino": None, "age": 0.0}
    try:
        owner = json.loads(raw)
        if not isinstance(owner, dict):
            owner = {}
    except ValueError:
        owner = {}
    owner.update(raw=raw, ino=(st.st_dev, st.st_ino), age=time.time() - st.st_mtime)
    return owner


def _stale(owner: dict) -> Optional[str]:
    """Why the lock's owner can no longer finish (a reason), or None if it may."""
    if owner["age"] > BUILD_TIMEOUT_S:
        return f"older than RNNGEN_BUILD_TIMEOUT ({BUILD_TIMEOUT_S:.0f} s)"
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        # an old-style or unreadable lock: give a writer a moment, then take it over
        return "unreadable" if owner["age"] > 10 and "token" not in owner else None
    if owner.get("host") != socket.gethostname():
        return None               # another machine's process: only its age tells
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} is gone"
    except PermissionError:
        pass                      # alive, another user's
    except OSError:
        return None
    st = _proc_stat(pid)
    if st is not None:
        if st[0] == "Z":
            return f"process {pid} has exited"
        if owner.get("start") is not None and st[1] != owner["start"]:
            return f"process {pid} is gone (its PID now belongs to another process)"
    return None


def _break(lock: Path, owner: dict) -> None:
    """Remove a stale lock so that a waiter can claim it.  Race-safe: the lock is first
    renamed aside (atomic), then checked to be the very file judged stale; if another
    waiter had meanwhile replaced it with a fresh claim, that claim is linked back."""
    aside = lock.with_name(f".lock.stale.{uuid.uuid4().hex}")
    try:
        os.rename(lock, aside)
    except OSError:               # gone already (another waiter broke it) or unwritable
        return
    try:
        st = os.stat(aside)
        same = (st.st_dev, st.st_ino) == owner["ino"] and aside.read_bytes() == owner["raw"]
    except OSError:
        same = False
    if not same:
        try:
            os.link(aside, lock)  # back in place, unless a newer claim exists already
        except OSError:
            pass
    try:
        aside.unlink()
    except OSError:
        pass


def _release(lock: Path, token: str) -> None:
    """Remove our lock, and only ours (a waiter may have taken it over as stale)."""
    owner = _read_lock(lock)
    if owner is not None and owner.get("token") == token:
        try:
            lock.unlink()
        except OSError:
            pass


def building(d: Path) -> bool:
    """Whether a live process is building in cache folder ``d`` (its lock's owner is
    alive and the lock not too old)."""
    owner = _read_lock(d / "lock")
    return owner is not None and _stale(owner) is None


def clear_cache(entries: Optional[Sequence[Path]] = None) -> tuple[list[Path], list[Path]]:
    """Delete the cache's library folders (``entries``, default every folder in it) and its
    index, but not a folder where another process is building right now (that build would
    fail): (deleted, kept)."""
    root = cache_dir()
    if entries is None:
        entries = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    deleted, kept = [], []
    for p in entries:
        if p.name != "index" and building(p):
            kept.append(p)
            continue
        shutil.rmtree(p, ignore_errors=True)
        deleted.append(p)
    shutil.rmtree(root / "index", ignore_errors=True)
    return deleted, kept
