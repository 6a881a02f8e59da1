"""The cost of training through rnngen.torch against the bare numpy layer (issue 13: within 10%).

    python benchmarks/torch_overhead.py [--cell LSTM] [--size 100 32 128 256] [--calls 30]

One training call = forward (saving what backward needs) + backward with full BPTT, float32,
return_sequences=True, a fixed dy.  The numpy layer: ``layer(x)`` then ``layer.backward(dy)``;
the module: ``m(x)`` then ``y.backward(dy)`` with the parameters' ``.grad`` set to None before
each call (as ``optimizer.zero_grad()`` does), so autograd stores the kernel's gradient
tensors without adding.  After untimed warm-up calls, calls alternate one by one between the
two (a busy machine then slows both alike); printed are the medians, their ratio, and the
median of the ratios of neighbouring calls.  Also checks that both give the same output and
gradients.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rnngen.torch as rt  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="LSTM")
    ap.add_argument("--size", nargs=4, type=int, default=[100, 32, 128, 256],
                    metavar=("T", "B", "D", "H"))
    ap.add_argument("--calls", type=int, default=60, help="timed calls per implementation")
    a = ap.parse_args(argv)
    T, B, D, H = a.size
    torch.manual_seed(0)
    m = rt.Recurrent(a.cell, D, H, return_sequences=True)
    layer = m.cell_class(H, weights=[p.detach().numpy() for p in m.parameters()],
                         return_sequences=True)
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((B, T, D)).astype(np.float32)
    dy_np = rng.standard_normal((B, T, H)).astype(np.float32)
    x, dy = torch.from_numpy(x_np), torch.from_numpy(dy_np)

    def bare():
        layer(x_np)
        layer.backward(dy_np)

    def module():
        for p in m.parameters():
            p.grad = None
        m(x).backward(dy)

    # the same numbers from both
    y_np = layer(x_np).copy()
    layer.backward(dy_np)
    module()
    np.testing.assert_allclose(m(x).detach().numpy(), y_np, rtol=1e-5, atol=1e-6)
    for p, g in zip(m.parameters(), layer.grads):
        np.testing.assert_allclose(p.grad.numpy(), g, rtol=1e-4, atol=1e-5)

    fns = {"numpy layer": bare, "rnngen.torch": module}
    times = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(5):
            fn()                          # untimed: the first calls run slower
    for _ in range(a.calls):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"{a.cell} training (forward + backward), T={T} B={B} D={D} H={H}, float32, "
          f"{len(times['rnngen.torch'])} calls each, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads")
    for k, v in med.items():
        q = np.percentile(np.array(times[k]) * 1e3, [10, 90])
        print(f"  {k:14s} median {v:8.2f} ms   (p10 {q[0]:.2f}, p90 {q[1]:.2f})")
    for k in list(fns)[1:]:
        ratio = med[k] / med["numpy layer"]
        pairs = statistics.median(m / b for m, b in zip(times[k], times["numpy layer"]))
        print(f"  {k} / numpy layer: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%); median of the "
              f"call-by-call ratios {pairs:.3f}")
    return med


if __name__ == "__main__":
    main()
