"""rnngen.keras against keras.layers on the same Keras backend, training, on the CPU
(`make bench` runs this after bench_dropin.py; alone: `python benchmarks/bench_keras.py
[--rounds 5] [--backends torch,jax]`).

Rows, per backend (each backend in a process of its own: Keras picks one per process):
rnngen.keras.LSTM and GRU (Keras's defaults: sigmoid recurrent activation, GRU with
reset_after=True, so both sides compute the same function) against keras.layers.LSTM and
GRU with the same weights, in a model Input -> layer(return_sequences=True) -> Dense(1), at
(T, B, D, H) = (100, 32, 128, 256), float32.  One training call is ``model.train_on_batch``
(forward, backward, an SGD step).  Calls alternate between rnngen and Keras, a round at a
time, after untimed warm-up; printed are medians and their ratio (Keras time / rnngen time;
target >= 3x on the torch backend).

RNNGEN_MARCH holds Keras's backends to the same instruction-set level as bench.py holds its
peers.  Results go to benchmarks/results/<RNNGEN_MARCH>/keras.json, and benchmarks/RESULTS.md gains
a "Keras 3 layers" table under that level.
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

T, B, D, H = 100, 32, 128, 256
TARGETS = {"torch": 3.0}


def measure(rounds: int, per_round: int) -> list:
    """In a process whose KERAS_BACKEND is set: the rows of this backend."""
    import numpy as np
    import keras
    import rnngen.keras as rk
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (B, T, D)).astype("float32")
    y = rng.uniform(-1, 1, (B, T, 1)).astype("float32")
    rows = []
    for kind in ("LSTM", "GRU"):
        models = {}
        for side, mod in (("rnngen", rk), ("keras", keras.layers)):
            m = keras.Sequential([keras.Input((T, D)), getattr(mod, kind)(H, return_sequences=True),
                                  keras.layers.Dense(1)])
            m.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse")
            models[side] = m
        models["rnngen"].set_weights(models["keras"].get_weights())
        ours = models["rnngen"].predict(x, verbose=0)
        theirs = models["keras"].predict(x, verbose=0)
        err = float(np.abs(ours - theirs).max())
        if err > 1e-3:
            raise AssertionError(f"{kind}: rnngen.keras differs from keras.layers by {err:.2e}")
        times = {s: [] for s in models}
        for s, m in models.items():
            for _ in range(2):
                m.train_on_batch(x, y)
        for r in range(rounds):
            for s in (list(models) if r % 2 == 0 else list(models)[::-1]):
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    models[s].train_on_batch(x, y)
                    times[s].append(time.perf_counter() - t0)
        med = {s: statistics.median(v) for s, v in times.items()}
        rows.append({"cell": kind, "config": [T, B, D, H], "backend": keras.backend.backend(),
                     "ms": {s: 1e3 * v for s, v in med.items()},
                     "ratio": med["keras"] / med["rnngen"]})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--backends", default="torch,jax")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="folder for keras.json (default: "
                    "benchmarks/results/<RNNGEN_MARCH>)")
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(measure(a.rounds, a.per_round)))
        return 0
    import bench                 # the peers' limits for RNNGEN_MARCH, inherited by the children
    from rnngen.targets import cpu_target
    target = cpu_target()
    limits = bench.hold_peers(target.march)
    out = Path(a.out) if a.out else HERE / "results" / target.march
    rows = []
    for be in a.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=be)
        res = subprocess.run([sys.executable, __file__, "--child", be, "--rounds",
                              str(a.rounds), "--per-round", str(a.per_round)], env=env,
                             capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{be}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
            continue
        rows += json.loads(res.stdout.strip().splitlines()[-1])
    print(f"Keras 3 layers, training (train_on_batch), float32, (T,B,D,H) = {(T, B, D, H)}, "
          f"rnngen for {cpu_target().describe()}")
    print("| backend | cell | rnngen.keras ms | keras.layers ms | keras / rnngen | target |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        tgt = TARGETS.get(r["backend"])
        verdict = "-" if tgt is None else (f">= {tgt}x " + ("met" if r["ratio"] >= tgt
                                                            else "MISSED"))
        print(f"| {r['backend']} | {r['cell']} | {r['ms']['rnngen']:.1f} | "
              f"{r['ms']['keras']:.1f} | {r['ratio']:.2f}x | {verdict} |")
    from importlib.metadata import version
    doc = {"date": time.strftime("%Y-%m-%d"), "target": target.describe(),
           "peer_limits": limits, "keras": version("keras"), "rows": rows, "targets": TARGETS}
    out.mkdir(parents=True, exist_ok=True)
    (out / "keras.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out / 'keras.json'}")
    import results_md
    runs = sorted((HERE / "results").glob("*/results.json"), reverse=True)
    if a.out is None and runs:
        print(f"wrote {results_md.write(runs, HERE / 'RESULTS.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
