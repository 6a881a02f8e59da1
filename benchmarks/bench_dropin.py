"""The drop-in modules against torch.nn's, training, on the CPU (`make bench` runs this after
bench.py; alone: `python benchmarks/bench_dropin.py [--rounds 5]`).

Rows:
- rnngen.torch.LSTM and GRU against torch.nn.LSTM and GRU with the same weights: 2 layers,
  bidirectional, packed unsorted batches of lengths 50-100, B=32, D=128, H=256, float32; one
  training call is forward + backward of a fixed loss on the output and h_n (targets:
  LSTM >= 1.3x, GRU >= 1.5x);
- a cell torch lacks (examples/mgu.yaml) through rnngen.torch.RNN(cell=...) against the same
  cell as an eager PyTorch loop over the steps (the input products hoisted out of the loop,
  as benchmarks/peers.py writes its loops), 1 layer, (T, B, D, H) = (100, 32, 128, 256) and
  (200, 1, 64, 128) (target >= 8x).
Calls alternate between rnngen and the peer, a round at a time, after untimed warm-up;
printed are medians and their ratios (peer time / rnngen time).  Peak memory: each module
runs in a fresh process, which reports how far its first training call, and then its
second, raise the peak resident set above the resident set before the call.

RNNGEN_MARCH holds the peers to the same instruction-set level as bench.py does.  Results
go to benchmarks/results/<RNNGEN_MARCH>/dropin.json, and benchmarks/RESULTS.md gains a
"Drop-in modules" table under that level.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

B, D, H, LAYERS = 32, 128, 256, 2
LENGTHS = (50, 100)
CUSTOM = {"MGU": (100, 32, 128, 256), "MGU B=1": (200, 1, 64, 128)}
TARGETS = {"LSTM": 1.3, "GRU": 1.5, "MGU": 8.0, "MGU B=1": 8.0}


def setup(kind: str, ours: bool, seed: int = 0):
    """(module, inputs function) for one row; the same weights and inputs for both sides."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence
    import rnngen.torch as rt
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if kind in ("LSTM", "GRU"):
        ref = getattr(torch.nn, kind)(D, H, LAYERS, bidirectional=True, batch_first=True)
        m = rt.convert(ref) if ours else ref
        lengths = torch.randint(LENGTHS[0], LENGTHS[1] + 1, (B,), generator=g)
        x = torch.randn(B, int(lengths.max()), D, generator=g)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)

        def call():
            out, h = m(packed)
            h = h[0] if isinstance(h, tuple) else h
            return out.data.square().mean() + h.square().mean()
        return m, call
    T, Bc, Dc, Hc = CUSTOM[kind]
    cell = rt.RNN(Dc, Hc, cell=str(HERE.parent / "examples" / "mgu.yaml"), batch_first=True,
                  seed=seed)
    x = torch.randn(Bc, T, Dc, generator=g)
    if ours:
        return cell, lambda: cell(x)[0].square().mean()
    W_f, U_f, b_f, W_h, U_h, b_h = [getattr(cell, f"{n}_l0") for n in cell.weight_names]

    def loop():
        xf, xh = x @ W_f + b_f, x @ W_h + b_h        # hoisted input products
        h, ys = x.new_zeros(Bc, Hc), []
        for t in range(T):
            f = torch.sigmoid(xf[:, t] + h @ U_f)
            hh = torch.tanh(xh[:, t] + (f * h) @ U_h)
            h = (1 - f) * h + f * hh
            ys.append(h)
        return torch.stack(ys, 1).square().mean()
    return cell, loop


def train_call(m, call):
    for p in m.parameters():
        p.grad = None
    call().backward()


def peak_memory(kind: str, ours: bool) -> tuple:
    """MB that the first training call, and then the second, add to the peak resident set
    of a fresh process that made the module and its inputs (rnngen's library is loaded
    then): the first counts everything the call holds at its peak, rnngen's scratch
    included; the second what a call of a training loop adds over memory the process
    already holds."""
    code = (f"import sys; sys.path[:0] = {[str(HERE), str(HERE.parent)]!r}\n"
            "import bench_dropin as b\n"
            f"m, call = b.setup({kind!r}, {ours!r})\n"
            "first = b.peak_of(lambda: b.train_call(m, call))\n"
            "print(first, b.peak_of(lambda: b.train_call(m, call)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=os.environ)
    first, later = map(float, out.stdout.strip().splitlines()[-1].split())
    return first, later


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def peak_of(fn) -> float:
    """MB by which fn() raises this process's peak resident set above its resident set
    before the call (Linux: VmHWM after a reset)."""
    import gc
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                          # VmHWM := VmRSS
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 1024


def time_pair(kind: str, rounds: int, per_round: int) -> dict:
    import torch
    sides = {name: setup(kind, ours) for name, ours in (("rnngen", True), ("peer", False))}
    # the same function: outputs of the loss agree
    a, b = (sides[n][1]().item() for n in ("rnngen", "peer"))
    if abs(a - b) > 1e-4 * max(1.0, abs(b)):
        raise SystemExit(f"{kind}: rnngen and the peer disagree ({a} vs {b})")
    times = {n: [] for n in sides}
    for n, (m, call) in sides.items():
        for _ in range(2):
            train_call(m, call)                       # untimed warm-up
    for _ in range(rounds):
        for n, (m, call) in sides.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                train_call(m, call)
                times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) * 1e3 for n, v in times.items()}
    return {"ms": med["rnngen"], "peer_ms": med["peer"], "ratio": med["peer"] / med["rnngen"],
            "threads": torch.get_num_threads()}


PEERS = {"LSTM": "torch.nn.LSTM", "GRU": "torch.nn.GRU",
         "MGU": "the MGU as an eager PyTorch loop", "MGU B=1": "the same loop"}
SHAPES = {"LSTM": f"2 layers, bidirectional, packed, lengths {LENGTHS[0]}-{LENGTHS[1]}, "
                  f"B={B}, D={D}, H={H}",
          **{k: "1 layer, (T,B,D,H) = " + ",".join(map(str, v)) for k, v in CUSTOM.items()}}
SHAPES["GRU"] = SHAPES["LSTM"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(TARGETS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--out", default=None, help="folder for dropin.json (default: "
                    "benchmarks/results/<RNNGEN_MARCH>)")
    a = ap.parse_args(argv)
    import bench                                 # sets the peers' limits before torch loads
    import rnngen.targets
    target = rnngen.targets.cpu_target()
    limits = bench.hold_peers(target.march)
    import torch
    rows = []
    for kind in a.rows.split(","):
        r = time_pair(kind, a.rounds, a.per_round)
        if not a.no_memory:
            r["peak_mb"] = peak_memory(kind, True)
            r["peer_peak_mb"] = peak_memory(kind, False)
        r.update(row=kind, peer=PEERS[kind], shape=SHAPES[kind], target=TARGETS[kind],
                 met=r["ratio"] >= TARGETS[kind])
        rows.append(r)
        mem = (f", peak +{r['peak_mb'][0]:.0f}/+{r['peak_mb'][1]:.0f} MB vs "
               f"+{r['peer_peak_mb'][0]:.0f}/+{r['peer_peak_mb'][1]:.0f} MB"
               if "peak_mb" in r else "")
        print(f"{kind:5s} {r['ms']:8.1f} ms  {r['peer']} {r['peer_ms']:8.1f} ms  "
              f"{r['ratio']:5.2f}x (target {r['target']}x: "
              f"{'ok' if r['met'] else 'MISSED'}){mem}")
    doc = {"date": time.strftime("%Y-%m-%d"), "cpu": bench.machine()["cpu"],
           "march": target.march, "target": target.describe(), "peer_limits": limits,
           "torch": torch.__version__, "rows": rows}
    default_out = a.out is None
    out = Path(a.out or HERE / "results" / target.march)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dropin.json").write_text(json.dumps(doc, indent=1))
    print(f"wrote {out / 'dropin.json'}")
    import results_md
    runs = sorted((HERE / "results").glob("*/results.json"), reverse=True)
    if default_out and runs:
        print(f"wrote {results_md.write(runs, HERE / 'RESULTS.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
