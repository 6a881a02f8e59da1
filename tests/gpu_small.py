"""A small forward and backward on backend="cuda", checked against the C backend: the
program `make gpu-check` runs under compute-sanitizer (memcheck, racecheck, synccheck).

Cells: LSTM (a seed cell), the LayerNorm LSTM (means over units) and MGU (a user spec);
float32 and float64; B = 3, T = 5, D = 4, H = 33 (a ragged block edge), a mask with a
padded step, return_sequences.  Exit status 0 when every output and gradient agrees, 1
when one does not, 2 when backend="cuda" cannot run here.  ``--backend cuda-emulated``
runs the same on the CPU (the suite does, so that this program stays right).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import rnngen  # noqa: E402
from rnngen import layers  # noqa: E402

B, T, D, H = 3, 5, 4, 33
TOL = {"float32": 1e-4, "float64": 1e-10}


def cells():
    return {"LSTM": layers.LSTM,
            "LayerNormLSTM": rnngen.load_cell(ROOT / "examples" / "layernorm_lstm.yaml"),
            "MGU": rnngen.load_cell(ROOT / "examples" / "mgu.yaml")}


def run(cls, backend, dtype, x, mask, dy):
    layer = cls(H, input_dim=D, return_sequences=True, dtype=dtype, seed=3, backend=backend)
    y = layer(x, mask=mask)
    dx = layer.backward(dy)
    return [np.asarray(y), np.asarray(dx)] + [np.asarray(g) for g in layer.grads]


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="cuda", choices=["cuda", "cuda-emulated"])
    backend = ap.parse_args(argv).backend
    if backend == "cuda":
        try:
            from rnngen.backends import check_cuda
            check_cuda()
        except Exception as e:   # noqa: BLE001 - any reason the GPU backend cannot run
            print(f"gpu_small: backend='cuda' cannot run here: {e}", file=sys.stderr)
            return 2
    rng = np.random.default_rng(0)
    mask = np.ones((B, T), dtype=bool)
    mask[1, 2] = False
    mask[2, 3:] = False
    bad = 0
    for name, cls in cells().items():
        for dtype in ("float32", "float64"):
            x = rng.normal(size=(B, T, D)).astype(dtype)
            dy = rng.normal(size=(B, T, H)).astype(dtype)
            want = run(cls, "c", dtype, x, mask, dy)
            got = run(cls, backend, dtype, x, mask, dy)
            err = max(float(np.max(np.abs(a - b)) / (1 + float(np.max(np.abs(a)))))
                      for a, b in zip(want, got))
            ok = err <= TOL[dtype]
            bad += not ok
            print(f"{name:14s} {dtype}: largest relative difference from C {err:.2e} "
                  f"({'ok' if ok else 'MISMATCH'})", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
