"""rnngen.keras on Keras's jax and torch backends: tests/keras_backend_cases.py run in a
fresh process per backend (Keras fixes its backend once per process; the rest of the suite
uses its numpy backend), and the clear error on a backend it does not run on."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_keras_backends():
    """Both backends at once, one process each (the suite itself runs on one core)."""
    pytest.importorskip("keras")
    backends = [b for b in ("jax", "torch") if importlib.util.find_spec(b) is not None]
    if not backends:
        pytest.skip("neither jax nor torch is installed")
    procs = {b: subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                  str(HERE / "keras_backend_cases.py")],
                                 env=dict(os.environ, KERAS_BACKEND=b), cwd=HERE.parent,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for b in backends}
    results = {b: p.communicate(timeout=900) for b, p in procs.items()}
    for b, (out, err) in results.items():
        tail = f"KERAS_BACKEND={b}:\n{out[-3000:]}{err[-2000:]}"
        assert procs[b].returncode == 0, tail
        assert " passed" in out and "skipped" not in out.splitlines()[-1], tail


def test_other_backends_raise_a_clear_error():
    code = ("import rnngen.keras as rk\n"
            "try:\n    rk.LSTM(4)\nexcept RuntimeError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, KERAS_BACKEND="numpy"), timeout=300)
    assert "KERAS_BACKEND=jax or KERAS_BACKEND=torch" in res.stdout, res.stdout + res.stderr
