"""`make bench-busy`: training speed on a busy machine (issue 10, part 4).

Times training calls (a forward that saves, then backward with full BPTT), float32,
one call at a time, for a small LSTM (T, B, D, H) = (20, 8, 16, 32) and for the LSTM
and the GRU at the sizes of `make bench`, under three conditions:

  idle      nothing else started by this script runs
  busy-1    one competing busy process (a Python busy loop, pinned to nothing)
  busy-all  one busy process per core

each with the default thread count (set_num_threads(0): OpenMP's count, then the
kernels' own choice of team) and with one thread (set_num_threads(1)).  The
conditions are interleaved: every round runs each condition once (starting and
stopping its busy processes), and within a condition every row and thread count in
turn; a turn starts with untimed calls.  The machine is shared and noisy, so every
figure pools all rounds.

Prints, per row, the median and 90th percentile per condition and thread count, and
the issue's targets:
  busy-1:   p90 / median of the default threads, every row      (target <= 2)
  busy-all: the small case's median with the default threads / its single-thread
            median on the idle machine                           (target <= 3)
and writes the samples to benchmarks/results/busy.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import rnngen  # noqa: E402
from rnngen import layers  # noqa: E402

SMALL = ("LSTM", (20, 8, 16, 32))
CONFIGS = [(100, 32, 128, 256), (50, 64, 512, 512), (200, 1, 64, 128), (25, 128, 256, 1024)]
ROWS = [SMALL] + [(cell, c) for cell in ("LSTM", "GRU") for c in CONFIGS]
CONDITIONS = ("idle", "busy-1", "busy-all")
THREADS = (0, 1)          # 0: the default (automatic) count; 1: one thread
BUSY_LOOP = "while True:\n    pass\n"
WARM_S = 0.03             # untimed calls before each turn's timed ones


class Background:
    """CPU time used by everything but this process and the busy processes it started, in
    cores, from /proc (Linux; elsewhere None): how busy the machine was made by others
    (the machine is shared)."""

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self):
        self.ok = Path("/proc/stat").exists()

    @staticmethod
    def _busy() -> int:
        v = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(v) - v[3] - v[4]   # all but idle and iowait

    @staticmethod
    def _proc(pid) -> int:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0
        return int(f[11]) + int(f[12])   # utime + stime, every thread

    def snapshot(self, pids=()):
        if not self.ok:
            return None
        return (time.monotonic(), self._busy(), self._proc("self") + sum(map(self._proc, pids)))

    def since(self, snap, pids=()) -> float | None:
        now = self.snapshot(pids)
        if snap is None or now is None or now[0] <= snap[0]:
            return None
        other = (now[1] - snap[1]) - (now[2] - snap[2])
        return max(0.0, other / self.TICK / (now[0] - snap[0]))

    def wait_quiet(self, limit: float, max_wait: float, log) -> float | None:
        """Wait (at most max_wait seconds) until others use less than `limit` cores over
        half a second; returns what they used last."""
        end = time.monotonic() + max_wait
        while True:
            snap = self.snapshot()
            time.sleep(0.5)
            used = self.since(snap)
            if used is None or used < limit or time.monotonic() >= end:
                return used
            log(f"  others use {used:.2f} cores: waiting for a quieter machine")
            time.sleep(2.0)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


class Busy:
    """n busy processes for the duration of a with-block (started and ended here, by pid)."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP],
                                       stdin=subprocess.DEVNULL) for _ in range(self.n)]
        if self.procs:
            time.sleep(0.3)   # let them start and take their cores
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


class Case:
    """One row: a layer and its inputs, built once."""

    def __init__(self, cell: str, config, seed: int = 0):
        T, B, D, H = config
        self.cell, self.config = cell, config
        rng = np.random.default_rng(seed)
        self.layer = getattr(layers, cell)(H, input_dim=D, return_sequences=True, seed=seed)
        self.x = rng.standard_normal((B, T, D), dtype=np.float32)
        self.dy = rng.standard_normal((B, T, H), dtype=np.float32)
        self.call()   # builds the layer (and its library)

    @property
    def label(self) -> str:
        return f"{self.cell} {','.join(map(str, self.config))}"

    def call(self) -> float:
        t = time.perf_counter()
        self.layer.forward(self.x)
        self.layer.backward(self.dy)
        return time.perf_counter() - t

    def team(self) -> str:
        """The team the current thread count gives this row ('-' where the library does
        not say: before rnngen_<cell>_team_size existed)."""
        k = self.layer._kernel
        fn = getattr(k.lib, f"{k.prefix}_team_size", None)
        return "-" if fn is None else str(fn(*self.config))

    def turn(self, seconds: float, min_calls: int, max_calls: int) -> list[float]:
        end = time.perf_counter() + WARM_S
        while time.perf_counter() < end:
            self.call()
        out = []
        end = time.perf_counter() + seconds
        while len(out) < max_calls and (len(out) < min_calls or time.perf_counter() < end):
            out.append(self.call())
        return out


def percentile(v, q) -> float:
    return float(np.percentile(np.asarray(v), q)) * 1e3


def run(cases, rounds: int, seconds: float, min_calls: int, max_calls: int, quiet_wait: float,
        log) -> tuple[dict, dict]:
    """Samples per (row, condition, thread count), and the cores others used meanwhile."""
    n = cores()
    busy = {"idle": 0, "busy-1": 1, "busy-all": n}
    bg = Background()
    samples = {(c.label, cond, nt): [] for c in cases for cond in CONDITIONS for nt in THREADS}
    others = {cond: [] for cond in CONDITIONS}
    for r in range(rounds):
        order = CONDITIONS if r % 2 == 0 else CONDITIONS[::-1]
        for cond in order:
            if quiet_wait > 0:
                bg.wait_quiet(0.25, quiet_wait, log)
            log(f"round {r + 1}/{rounds}: {cond} ({busy[cond]} busy process(es))")
            with Busy(busy[cond]) as b:
                pids = [p.pid for p in b.procs]
                for c in cases:
                    for nt in (THREADS if r % 2 == 0 else THREADS[::-1]):
                        rnngen.set_num_threads(nt)
                        snap = bg.snapshot(pids)
                        samples[(c.label, cond, nt)] += c.turn(seconds, min_calls, max_calls)
                        used = bg.since(snap, pids)
                        if used is not None:
                            others[cond].append(used)
            rnngen.set_num_threads(0)
    return samples, others


def report(cases, samples, others) -> tuple[str, dict]:
    head = f"{'row':<22} {'team':>4} | " + " | ".join(
        f"{cond + (' 1 thr' if nt else ' default'):^19}" for cond in CONDITIONS for nt in THREADS)
    sub = f"{'':<22} {'':>4} | " + " | ".join(f"{'median':>9} {'p90':>9}"
                                            for _ in CONDITIONS for _ in THREADS)
    lines = ["per-call training time, ms (forward + backward)", head, sub, "-" * len(head)]
    targets = {}
    for c in cases:
        cells = []
        for cond in CONDITIONS:
            for nt in THREADS:
                v = samples[(c.label, cond, nt)]
                cells.append(f"{percentile(v, 50):9.3f} {percentile(v, 90):9.3f}")
        lines.append(f"{c.label:<22} {c.team():>4} | " + " | ".join(cells))
    lines.append("cores used by other processes meanwhile (mean over turns): " + ", ".join(
        f"{cond} {np.mean(v):.2f}" if v else f"{cond} -" for cond, v in others.items()))
    lines += ["", "targets", f"{'row':<22} {'busy-1 p90/median':>18} {'ok':>3}  "
              f"{'busy-all median / idle 1-thread median':>40} {'ok':>3}"]
    ok_all = True
    for c in cases:
        v = samples[(c.label, "busy-1", 0)]
        r1 = percentile(v, 90) / percentile(v, 50)
        t = {"busy1_p90_over_median": r1}
        ok1 = r1 <= 2.0
        ok_all &= ok1
        extra = ""
        if (c.cell, c.config) == SMALL:
            r2 = (percentile(samples[(c.label, "busy-all", 0)], 50)
                  / percentile(samples[(c.label, "idle", 1)], 50))
            t["busyall_over_idle_single"] = r2
            ok_all &= r2 <= 3.0
            extra = f"{r2:40.2f} {'yes' if r2 <= 3.0 else 'NO':>3}"
        targets[c.label] = t
        lines.append(f"{c.label:<22} {r1:18.2f} {'yes' if ok1 else 'NO':>3}  {extra}")
    lines.append(f"\nall targets met: {'yes' if ok_all else 'NO'}")
    return "\n".join(lines), targets


# ------------------------------------------------------------------ calibration
# Training on one thread against two (forced with set_num_threads, which the team-size
# rule leaves alone) on an idle machine, over problems around the threshold: where two
# threads stop paying for their start and their barriers.  The figures behind
# RNNGEN_TEAM_WORK and RNNGEN_TEAM_CALL_WORK in templates/rnngen_runtime.h.  The column
# "others" is the cores other processes used meanwhile: rows where it is not near 0
# measured a busy machine.
CAL_CELLS = ("SimpleRNN", "GRU", "LSTM")
CAL_GRID = [(T, B, D, H) for T in (5, 50) for B in (1, 4, 8, 16, 32)
            for H in (32, 64, 128, 256) for D in (16, H)]


def step_work(case) -> int:
    """Multiply-adds of the products of one step (forward): B*H*(D*nW + H*nU)."""
    T, B, D, H = case.config
    k = case.layer._kernel
    nw = len(k.ir.xprods)
    nu = sum(g.width for g in k.ir.groups if not getattr(g, "mean", False))
    return B * H * (D * nw + H * nu)


def calibrate(cells, grid, rounds: int, seconds: float, quiet_wait: float, log) -> str:
    lines = [f"{'cell':<10} {'T,B,D,H':<14} {'work/step':>10} {'team':>4} {'1 thr ms':>9} "
             f"{'2 thr ms':>9} {'2/1':>6} {'others':>6}"]
    rows = []
    bg = Background()
    for cell in cells:
        for config in grid:
            c = Case(cell, config)
            if quiet_wait > 0:
                bg.wait_quiet(0.25, quiet_wait, log)
            snap = bg.snapshot()
            t = {1: [], 2: []}
            for r in range(rounds):
                for nt in ((1, 2) if r % 2 == 0 else (2, 1)):
                    rnngen.set_num_threads(nt)
                    t[nt] += c.turn(seconds, 5, 2000)
            rnngen.set_num_threads(0)
            used = bg.since(snap)
            m1, m2 = np.median(t[1]) * 1e3, np.median(t[2]) * 1e3
            rows.append((cell, config, step_work(c), c.team(), m1, m2, used))
            log(f"{c.label}: {m1:.3f} / {m2:.3f} ms")
    for cell, config, w, team, m1, m2, used in sorted(rows, key=lambda r: r[2]):
        lines.append(f"{cell:<10} {','.join(map(str, config)):<14} {w:>10} {team:>4} "
                     f"{m1:9.3f} {m2:9.3f} {m2 / m1:6.2f} "
                     f"{'-' if used is None else f'{used:.2f}':>6}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds over every condition")
    ap.add_argument("--seconds", type=float, default=0.6, help="timed seconds per turn")
    ap.add_argument("--min-calls", type=int, default=5, help="timed calls per turn, at least")
    ap.add_argument("--max-calls", type=int, default=400, help="timed calls per turn, at most")
    ap.add_argument("--small-only", action="store_true", help="the small LSTM only")
    ap.add_argument("--configs", default="",
                    help="only these sizes besides the small case, e.g. "
                         "'200,1,64,128;25,128,256,1024' (with --calibrate: the grid)")
    ap.add_argument("--quiet-wait", type=float, default=60,
                    help="before each condition (each row, calibrating), wait up to this many "
                         "seconds for other processes to use less than a quarter of a core")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "busy.json")
    ap.add_argument("--calibrate", action="store_true",
                    help="instead: one thread against two on this (idle) machine, over "
                         "small problems (the figures behind the team-size threshold)")
    args = ap.parse_args(argv)

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.calibrate:
        grid = ([tuple(int(v) for v in c.split(",")) for c in args.configs.split(";")]
                if args.configs else CAL_GRID)
        print(calibrate(CAL_CELLS, grid, args.rounds, min(args.seconds, 0.15),
                        args.quiet_wait, log))
        return 0
    rows = ROWS[:1] if args.small_only else ROWS
    if args.configs:
        keep = {tuple(int(v) for v in c.split(",")) for c in args.configs.split(";")}
        rows = [r for r in rows if r == SMALL or r[1] in keep]
    log(f"building {len(rows)} rows ...")
    rnngen.set_num_threads(0)
    cases = [Case(cell, config) for cell, config in rows]
    t0 = time.time()
    samples, others = run(cases, args.rounds, args.seconds, args.min_calls, args.max_calls,
                          args.quiet_wait, log)
    text, targets = report(cases, samples, others)
    print(f"{platform.processor() or platform.machine()}, {cores()} cores, "
          f"rnngen {rnngen.__version__}, {args.rounds} rounds, {time.time() - t0:.0f} s\n")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "cores": cores(), "rounds": args.rounds, "targets": targets,
        "other_cores": {cond: v for cond, v in others.items()},
        "teams": {c.label: c.team() for c in cases},
        "samples_ms": {f"{k[0]} | {k[1]} | {'default' if k[2] == 0 else '1 thread'}":
                       [s * 1e3 for s in v] for k, v in samples.items()},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
