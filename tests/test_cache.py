"""The build cache heals itself: stale locks, corrupted libraries, unwritable or odd
cache paths, and a key that knows what -march=native means here.

Each test builds a tiny library (one function returning 42) into its own cache under
tmp_path, and loads what the cache returns in a child process (a corrupted library
could kill the interpreter that loads it)."""
import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rnngen import build
from rnngen.errors import BuildError

NAME = "answer"
HEADER = "int rnngen_test_answer(void);\n"
SOURCE = '#include "answer.h"\nint rnngen_test_answer(void) { return 42; }\n'


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("RNNGEN_CACHE_DIR", str(d))
    monkeypatch.setattr(build, "BUILD_TIMEOUT_S", 30.0)
    return d


def key_dir(cache_root: Path) -> Path:
    return cache_root / build.build_key(NAME, HEADER, SOURCE)


def loads_and_answers(lib: Path) -> bool:
    """Whether the library loads in a fresh interpreter and its function returns 42."""
    code = "import ctypes, sys; print(ctypes.CDLL(sys.argv[1]).rnngen_test_answer())"
    res = subprocess.run([sys.executable, "-c", code, str(lib)], capture_output=True,
                         text=True, timeout=60)
    return res.returncode == 0 and res.stdout.strip() == "42"


def dead_pid() -> int:
    p = subprocess.Popen(["sleep", "0"])
    p.wait()                           # reaped: the PID names no process now
    return p.pid


def write_lock(d: Path, **owner) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    lock = d / "lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "start": None,
                                "token": "someone-else", **owner}) + "\n")
    return lock


def test_a_fresh_build_publishes_a_checksum(cache):
    lib = build.build_library(NAME, HEADER, SOURCE)
    assert lib.is_absolute() and loads_and_answers(lib)
    done = (lib.parent / "done").read_text()
    assert f"sha256 {hashlib.sha256(lib.read_bytes()).hexdigest()}" in done.splitlines()
    assert not (lib.parent / "lock").exists()
    assert build.build_library(NAME, HEADER, SOURCE) == lib     # and is found again


# -- locks ---------------------------------------------------------------------------
def test_a_lock_whose_process_died_is_taken_over_at_once(cache):
    """kill -9 during a build left `lock` with a dead PID: every later load waited the
    whole RNNGEN_BUILD_TIMEOUT, then told the user to delete it."""
    lock = write_lock(key_dir(cache), pid=dead_pid())
    t = time.monotonic()
    lib = build.build_library(NAME, HEADER, SOURCE)
    assert time.monotonic() - t < 20          # not the 30 s timeout
    assert loads_and_answers(lib) and not lock.exists()
    assert not [p for p in lib.parent.iterdir() if p.name.startswith(".lock")]


def test_a_build_killed_with_sigkill_is_taken_over(cache):
    """The real thing: a process claims the build, is killed with SIGKILL while its
    compiler runs, and the next load builds at once."""
    code = textwrap.dedent(f"""
        import time
        from rnngen import build
        build.build_key({NAME!r}, {HEADER!r}, {SOURCE!r})   # asks the compiler its version
        build.subprocess.run = lambda *a, **k: time.sleep(600)   # then it hangs
        build.build_library({NAME!r}, {HEADER!r}, {SOURCE!r})
    """)
    env = dict(os.environ, RNNGEN_CACHE_DIR=str(cache),
               PYTHONPATH=str(Path(build.__file__).resolve().parent.parent))
    victim = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while not list(cache.glob(f"{NAME}-*/lock")):
            assert victim.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        victim.kill()                      # SIGKILL: no finally, no cleanup
        victim.wait()
    lock, = cache.glob(f"{NAME}-*/lock")
    t = time.monotonic()
    lib = build.build_library(NAME, HEADER, SOURCE)
    assert time.monotonic() - t < 20 and loads_and_answers(lib) and not lock.exists()


def test_a_lock_whose_pid_was_reused_is_stale(cache):
    if build._proc_stat(os.getpid()) is None:
        pytest.skip("no /proc here to read a process's start time")
    # our own PID is alive, but it started at another time than the lock says
    write_lock(key_dir(cache), pid=os.getpid(), start="1")
    t = time.monotonic()
    assert loads_and_answers(build.build_library(NAME, HEADER, SOURCE))
    assert time.monotonic() - t < 20


def test_a_lock_older_than_the_timeout_is_stale_whatever_its_host(cache, monkeypatch):
    monkeypatch.setattr(build, "BUILD_TIMEOUT_S", 5.0)
    lock = write_lock(key_dir(cache), pid=12345, host="another-machine")
    old = time.time() - 100
    os.utime(lock, (old, old))
    assert loads_and_answers(build.build_library(NAME, HEADER, SOURCE))


def test_a_live_owner_is_waited_for(cache, monkeypatch):
    """A lock whose process is alive is not taken over (until it is older than the
    timeout, when that process's compiler has been stopped too)."""
    monkeypatch.setattr(build, "BUILD_TIMEOUT_S", 10.0)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        lock = write_lock(key_dir(cache), pid=sleeper.pid,
                          start=(build._proc_stat(sleeper.pid) or (None, None))[1])
        owner = build._read_lock(lock)
        assert build._stale(owner) is None
        # the owner finishes (releases its lock without a library) after a second
        threading.Timer(1.0, lock.unlink).start()
        t = time.monotonic()
        assert loads_and_answers(build.build_library(NAME, HEADER, SOURCE))
        assert 0.9 < time.monotonic() - t < 8
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "older than" in build._stale(dict(owner, age=11.0))


def test_another_hosts_lock_is_judged_by_its_age_only(cache, monkeypatch):
    monkeypatch.setattr(build, "BUILD_TIMEOUT_S", 2.0)
    lock = write_lock(key_dir(cache), pid=dead_pid(), host="another-machine")
    assert build._stale(build._read_lock(lock)) is None
    t = time.monotonic()
    assert loads_and_answers(build.build_library(NAME, HEADER, SOURCE))
    assert time.monotonic() - t > 1.5           # waited until the lock was 2 s old


def test_the_wait_is_bounded(cache, monkeypatch):
    """A lock that keeps being renewed (never stale) is waited for RNNGEN_BUILD_TIMEOUT."""
    monkeypatch.setattr(build, "BUILD_TIMEOUT_S", 1.0)
    lock = write_lock(key_dir(cache), pid=os.getpid(), host="another-machine")
    stop = threading.Event()

    def renew():
        while not stop.wait(0.1):
            os.utime(lock)
    threading.Thread(target=renew, daemon=True).start()
    try:
        with pytest.raises(BuildError, match="timed out.*another-machine.*delete"):
            build.build_library(NAME, HEADER, SOURCE)
    finally:
        stop.set()


def test_breaking_a_stale_lock_never_removes_a_fresh_claim(cache):
    """Two waiters judge the same lock stale; the first breaks it and claims the build.
    The second's break must leave that fresh claim in place."""
    d = key_dir(cache)
    lock = write_lock(d, pid=dead_pid())
    seen = build._read_lock(lock)
    assert build._stale(seen)
    build._break(lock, seen)                          # the first waiter
    assert not lock.exists()
    token = build._acquire(lock, cache)               # ... claims it
    assert token is not None
    build._break(lock, seen)                          # the second, with its old look
    assert lock.exists() and build._read_lock(lock)["token"] == token
    build._release(lock, token)
    assert not lock.exists()


def test_release_leaves_another_claim_alone(cache):
    d = key_dir(cache)
    lock = write_lock(d, pid=os.getpid())
    build._release(lock, "not-that-one")
    assert lock.exists()


def test_waiters_on_a_stale_lock_build_once(cache, tmp_path):
    """Four processes find a dead owner's lock: one takes it over and compiles, all load."""
    write_lock(key_dir(cache), pid=dead_pid())
    log = tmp_path / "compiles.log"
    code = textwrap.dedent(f"""
        import sys
        from rnngen import build
        def command(src, out, include):
            with open({str(log)!r}, "a") as f:
                f.write("compile\\n")
            return build.compile_command(src, out, include)
        lib = build.build_library({NAME!r}, {HEADER!r}, {SOURCE!r}, command=command)
        print(lib)
    """)
    env = dict(os.environ, RNNGEN_CACHE_DIR=str(cache), RNNGEN_BUILD_TIMEOUT="60",
               PYTHONPATH=str(Path(build.__file__).resolve().parent.parent))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    libs = {o[0].strip() for o in outs}
    assert len(libs) == 1 and loads_and_answers(Path(libs.pop()))
    assert log.read_text().count("compile") == 1


# -- corrupted libraries ------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "zero", "delete", "done-without-checksum"])
def test_a_corrupted_library_is_rebuilt(cache, damage):
    """A library truncated behind its `done` marker killed the interpreter with SIGBUS,
    zeros over its code with SIGSEGV, on every load."""
    lib = build.build_library(NAME, HEADER, SOURCE)
    good = lib.read_bytes()
    if damage == "truncate":
        lib.write_bytes(good[:len(good) // 2])
    elif damage == "zero":
        lib.write_bytes(good[:1024] + bytes(len(good) - 2048) + good[-1024:])
    elif damage == "delete":
        lib.unlink()
    else:                              # a marker as older versions wrote it
        (lib.parent / "done").write_text(lib.parent.name + "\n")
    again = build.build_library(NAME, HEADER, SOURCE)
    assert again == lib and len(again.read_bytes()) == len(good)
    assert loads_and_answers(again)
    digest = hashlib.sha256(again.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in (lib.parent / "done").read_text()


# -- the cache directory ---------------------------------------------------------------------
def test_an_unwritable_cache_is_a_clear_build_error(tmp_path, monkeypatch):
    """A cache path that cannot be created (here under a regular file: refused to root
    too) raised a raw OSError."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("RNNGEN_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(BuildError, match="RNNGEN_CACHE_DIR to a writable directory") as ei:
        build.build_library(NAME, HEADER, SOURCE)
    assert str(blocker / "cache") in str(ei.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permissions do not stop root from writing")
def test_a_read_only_cache_is_a_clear_build_error(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setenv("RNNGEN_CACHE_DIR", str(ro))
    ro.chmod(0o555)
    try:
        with pytest.raises(BuildError, match="cannot write to the build cache") as ei:
            build.build_library(NAME, HEADER, SOURCE)
        assert str(ro) in str(ei.value) and "RNNGEN_CACHE_DIR" in str(ei.value)
    finally:
        ro.chmod(0o755)


def test_a_read_only_file_system_is_a_clear_build_error(cache, monkeypatch):
    """Errno 30 (EROFS) came out raw; as root chmod cannot provoke it, so the file
    system's answer is simulated."""
    def refuse(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(BuildError, match="Read-only file system") as ei:
        build.build_library(NAME, HEADER, SOURCE)
    assert str(cache) in str(ei.value) and "RNNGEN_CACHE_DIR" in str(ei.value)


def test_a_read_only_cache_still_serves_what_it_holds(cache, monkeypatch):
    lib = build.build_library(NAME, HEADER, SOURCE)

    def refuse(*args, **kwargs):
        raise AssertionError("wrote to the cache")
    for what in ("_acquire", "_compile", "_write_atomic"):
        monkeypatch.setattr(build, what, refuse)
    monkeypatch.setattr(Path, "mkdir", refuse)
    assert build.build_library(NAME, HEADER, SOURCE) == lib


def test_a_relative_cache_path_starting_with_a_dash(tmp_path, monkeypatch):
    """gcc read `-foo/...` as an option."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RNNGEN_CACHE_DIR", "-foo")
    lib = build.build_library(NAME, HEADER, SOURCE)
    assert lib.is_absolute() and lib.is_relative_to(tmp_path / "-foo")
    assert loads_and_answers(lib)


# -- the key -------------------------------------------------------------------------------
def test_the_key_holds_what_march_native_resolves_to(monkeypatch):
    target = build.target_key()
    assert target and "native" not in target.split("| ")[-1].split("-march=")[-1].split()[0]
    key = build.build_key(NAME, HEADER, SOURCE)
    monkeypatch.setattr(build, "target_key", lambda: target + " -mno-avx2")
    assert build.build_key(NAME, HEADER, SOURCE) != key


def test_another_backend_can_use_build_library(cache):
    """suffix, command and key_extra (keyword-only); the plain call is unchanged."""
    calls = []

    def command(src, out, include):
        calls.append((src, out, include))
        return [build.CC, "-x", "c", "-shared", "-fPIC", str(src), "-o", str(out),
                f"-I{include}"]

    lib = build.build_library(NAME, HEADER, SOURCE, suffix=".src", command=command,
                              key_extra=("toolkit 1.0", "sm_90"))
    assert loads_and_answers(lib)
    (src, out, include), = calls        # called once, to compile
    assert src == lib.parent / f"{NAME}.src" and src.read_text() == SOURCE
    assert src.is_absolute() and out.is_absolute() and include == lib.parent
    other = build.build_library(NAME, HEADER, SOURCE, suffix=".src", command=command,
                                key_extra=("toolkit 1.1", "sm_90"))
    assert other.parent != lib.parent and len(calls) == 2
    plain = build.build_library(NAME, HEADER, SOURCE)
    assert plain.parent not in (lib.parent, other.parent) and loads_and_answers(plain)
    with pytest.raises(TypeError):
        build.build_library(NAME, HEADER, SOURCE, ".src")


# -- clearing while others build (issue 20, item 10) -----------------------------------------
def test_clearing_keeps_a_folder_where_another_process_is_building(cache):
    done = build.build_library(NAME, HEADER, SOURCE).parent     # a finished library
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        busy = cache / "other-0123456789abcdef0123"
        write_lock(busy, pid=sleeper.pid, start=(build._proc_stat(sleeper.pid) or (None, None))[1])
        deleted, kept = build.clear_cache()
        assert kept == [busy] and busy.is_dir() and not done.exists()
        assert done in deleted and not (cache / "index").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_build_whose_folder_is_cleared_meanwhile_builds_again(cache):
    """A clear that looked at the folder just before this build locked it deletes it under
    the compiler: the build starts over instead of failing."""
    calls = []

    def command(src, out, include):
        calls.append(src)
        if len(calls) == 1:
            shutil.rmtree(src.parent)                      # the clear, mid-build
        return build.compile_command(src, out, include)
    lib = build.build_library(NAME, HEADER, SOURCE, command=command)
    assert len(calls) == 2 and loads_and_answers(lib)
