"""A process that ran kernels on two threads, then forks: the child's kernels work (on one
thread: libgomp's threads do not survive fork; before, the child waited forever in
GOMP_parallel).  Each case runs in its own interpreter with a time limit."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork")

PRELUDE = textwrap.dedent("""
    import os, sys, warnings, numpy as np, rnngen
    from rnngen import layers
    rnngen.set_num_threads(2)
    layer = layers.LSTM(64, input_dim=8, seed=0, return_sequences=True)
    x = np.random.default_rng(0).random((16, 10, 8)).astype(np.float32)
    dy = np.ones((16, 10, 64), np.float32)
    y0 = layer(x).copy()
    dx0 = layer.backward(dy).copy()

    def child(body):
        pid = os.fork()
        if pid == 0:
            try:
                code = body()
            except BaseException as e:
                print("child raised", type(e).__name__, e, flush=True)
                code = 9
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
""")


def run(body: str) -> str:
    res = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_a_forked_child_runs_forward_and_backward():
    out = run("""
        def body():
            y = layer(x).copy()
            dx = layer.backward(dy)
            ok = np.allclose(y, y0, rtol=1e-5, atol=1e-6) and np.allclose(dx, dx0, rtol=1e-4,
                                                                          atol=1e-6)
            print("threads", rnngen.get_num_threads(), "ok", ok, flush=True)
            return 0 if ok else 3
        print("child exit", child(body))
        print("parent", np.allclose(layer(x), y0))      # the parent keeps its threads
    """)
    assert "threads 1 ok True" in out and "child exit 0" in out and "parent True" in out


def test_more_threads_in_a_forked_child_warn_and_run_on_one():
    out = run("""
        def body():
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                rnngen.set_num_threads(2)
            assert any("forked process" in str(m.message) for m in w), w
            assert rnngen.get_num_threads() == 1
            other = layers.GRU(48, input_dim=8, seed=1)   # a kernel first loaded in the child
            other(x)
            layer(x)
            return 0
        print("child exit", child(body))
    """)
    assert "child exit 0" in out


def test_a_backward_across_the_fork_is_refused_clearly():
    """The forward ran on two threads in the unit split before the fork: its saved values
    need two threads, which the child cannot start."""
    out = run("""
        one = np.random.default_rng(1).random((1, 10, 8)).astype(np.float32)   # unit split
        big = layers.LSTM(64, input_dim=8, seed=0, return_sequences=True)
        y = big(one)
        def body():
            try:
                big.backward(np.ones_like(y))
            except RuntimeError as e:
                print("refused:", e, flush=True)
                return 0
            return 5
        print("child exit", child(body))
    """)
    assert "child exit 0" in out and "ran on 2 threads before the process forked" in out
