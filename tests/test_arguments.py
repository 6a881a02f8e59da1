"""Every kernel call checks its arguments against the cell (issue 20, item 3): shapes,
dtypes and contiguity of x, mask, states, dy, the save buffer and every weight, on the C
and the emulated CUDA backends, through the layer API, rnngen.torch's module and its raw
custom op.  Before, a wrongly shaped parameter overflowed the heap (SIGABRT), a float64
weight in a float32 module was read as float32 pairs, and H larger than the weights made
the op read out of bounds: the torch cases run in a child interpreter, so that a crash
fails the test instead of ending the run."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rnngen import layers
from rnngen.pipeline import compile_cell

T, B, D, H = 4, 3, 5, 8


def _weights(k, dtype=np.float32):
    rng = np.random.default_rng(0)
    return [rng.normal(size=w.dims(D, H)).astype(dtype) for w in k.ir.weights]


@pytest.mark.parametrize("backend", ["c", "cuda-emulated"])
def test_kernel_calls_check_every_argument(backend):
    k = compile_cell(layers.LSTM.spec, backend=backend)
    ws = _weights(k)
    x = np.zeros((B, T, D), np.float32)
    y, save, _ = k.forward(x, None, ws, H, True)           # the good call works
    dy = np.ones((B, T, H), np.float32)
    k.backward(x, None, ws, save, dy, -1)
    i = [w.name for w in k.ir.weights].index("U_i")
    bad = ws[:i] + [np.zeros(1, np.float32)] + ws[i + 1:]
    with pytest.raises(ValueError, match=r"weight U_i must have shape \(8, 8\) .* got \(1,\)"):
        k.forward(x, None, bad, H, True)
    with pytest.raises(ValueError, match=r"weight U_i must have shape \(8, 8\)"):
        k.backward(x, None, bad, save, dy, -1)
    f64 = ws[:i] + [ws[i].astype(np.float64)] + ws[i + 1:]
    with pytest.raises(TypeError, match="weight U_i must be float32, got float64"):
        k.forward(x, None, f64, H, True)
    with pytest.raises(ValueError, match="takes 12 weights"):
        k.forward(x, None, ws[:-1], H, True)
    with pytest.raises(ValueError, match=r"weight W_\w must have shape \(5, 4096\)"):
        k.forward(x, None, ws, 4096, True)                    # H beyond the weights
    with pytest.raises(TypeError, match="mask must be uint8 or bool, got int64"):
        k.forward(x, np.ones((B, T), np.int64), ws, H, True)
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 4\)"):
        k.forward(x, np.ones((B, T + 1), np.uint8), ws, H, True)
    with pytest.raises(ValueError, match=r"state0 must have shape \(2, 3, 8\)"):
        k.forward(x, None, ws, H, True, state0=np.zeros((1, B, H), np.float32))
    with pytest.raises(ValueError, match=r"dy must have shape \(3, 4, 8\)|weight"):
        k.backward(x, None, ws, save, np.ones((B, T + 1, H), np.float32), -1)
    with pytest.raises(ValueError, match="H \\(output_dim\\) must be a positive int"):
        k.forward(x, None, ws, 0, True)
    with pytest.raises(TypeError, match="x must be float32 or float64, got float16"):
        k.forward(x.astype(np.float16), None, ws, H, True)
    if backend == "c":
        with pytest.raises(ValueError, match="x must be C-contiguous"):
            k.forward(np.zeros((B, 2 * T, D), np.float32)[:, ::2], None, ws, H, True)
        with pytest.raises(ValueError, match=r"save must have shape"):
            k.backward(x, None, ws, save[:-1], dy, -1)


def _child(code: str) -> str:
    pytest.importorskip("torch")
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr[-3000:]}"
    return res.stdout


def test_torch_modules_and_the_raw_op_refuse_what_does_not_fit_the_cell():
    out = _child("""
        import torch
        from torch import nn
        from rnngen.torch import Recurrent

        def expect(what, fn, *errors):
            try:
                fn()
            except (ValueError, TypeError, RuntimeError) as e:
                print(what, "->", type(e).__name__, str(e).splitlines()[0][:200], flush=True)
                return
            print(what, "-> no error", flush=True)

        x = torch.randn(3, 4, 5)
        m = Recurrent("LSTM", 5, 8, return_sequences=True)
        m.U_i = nn.Parameter(torch.zeros(1))
        expect("wrong shape forward", lambda: m(x))
        expect("wrong shape backward", lambda: m(x).sum().backward())
        m = Recurrent("LSTM", 5, 8, return_sequences=True)
        m.U_i = nn.Parameter(torch.zeros(8, 8, dtype=torch.float64))
        expect("float64 weight", lambda: m(x))
        m = Recurrent("LSTM", 5, 8, return_sequences=True)
        params = dict(m.named_parameters())
        params["U_f"] = torch.zeros(8, 9)
        expect("functional_call", lambda: torch.func.functional_call(m, params, (x,)))
        m = Recurrent("LSTM", 5, 8, return_sequences=True)
        ws = [p.detach() for p in m.parameters()]
        expect("raw op H=4096", lambda: torch.ops.rnngen.recurrent(
            m._key, x, None, None, ws, 4096, -1, True, False))
    """)
    lines = dict(ln.split(" -> ", 1) for ln in out.splitlines() if " -> " in ln)
    assert "must have shape (8, 8)" in lines["wrong shape forward"], out
    assert "must have shape (8, 8)" in lines["wrong shape backward"], out
    assert "must be float32, got float64" in lines["float64 weight"], out
    assert "weight U_f must have shape (8, 8)" in lines["functional_call"], out
    assert "must have shape (5, 4096)" in lines["raw op H=4096"], out
