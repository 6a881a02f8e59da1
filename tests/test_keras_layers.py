"""rnngen.keras on Keras's jax and torch backends: tests/keras_backend_cases.py run in a
fresh process per backend (Keras fixes its backend once per process; the rest of the suite
uses its numpy backend), and the clear error on a backend it does not run on."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_keras_backend(backend):
    pytest.importorskip("keras")
    pytest.importorskip(backend)
    env = dict(os.environ, KERAS_BACKEND=backend)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(HERE / "keras_backend_cases.py")], env=env, cwd=HERE.parent,
                         capture_output=True, text=True, timeout=900)
    tail = res.stdout[-3000:] + res.stderr[-2000:]
    assert res.returncode == 0, tail
    assert " passed" in res.stdout and "skipped" not in res.stdout.splitlines()[-1], tail


def test_other_backends_raise_a_clear_error():
    code = ("import rnngen.keras as rk\n"
            "try:\n    rk.LSTM(4)\nexcept RuntimeError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, KERAS_BACKEND="numpy"), timeout=300)
    assert "KERAS_BACKEND=jax or KERAS_BACKEND=torch" in res.stdout, res.stdout + res.stderr
