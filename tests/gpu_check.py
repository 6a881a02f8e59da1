"""`make gpu-check`: everything that needs a GPU, in one command, for the first session
that is lent one.  Each step runs with a time limit; one summary at the end.

1. environment: the GPU (nvidia-smi), nvcc, torch's and JAX's view of CUDA;
2. build: the libraries the later steps use, for backend="cuda" and "c", 8 at a time;
3. gpu tests: ``pytest -m gpu`` (the seven seed layers and two user specs against the C
   backend on the GPU, rnngen.torch with CUDA tensors, rnngen.jax on XLA's GPU, devices
   and threads);
4. compute-sanitizer memcheck, racecheck and synccheck on a small forward and backward
   (tests/gpu_small.py: LSTM, LayerNorm LSTM, MGU; float32 and float64);
5. ``benchmarks/bench_gpu.py --quick``.

Exit status: 0 when every step passed, 1 when one failed, 2 when there is no GPU
(nothing else runs then).  ``--out DIR`` keeps each step's whole output there
(``<step>.log``) and the summary (``summary.txt``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# (name, seconds allowed): within about 8 minutes on one H100 with 16 cores
LIMITS = {"environment": 60, "build": 150, "gpu tests": 240, "memcheck": 90,
          "racecheck": 90, "synccheck": 90, "bench-gpu quick": 240}
BUILD = ["LSTM", "GRU", "SimpleRNN", "SimpleDeepRNN", "JZS1", "JZS2", "JZS3",
         "examples/mgu.yaml", "examples/layernorm_lstm.yaml", "examples/torch_gru.yaml"]


def run(cmd, limit, log=None, env=None):
    """(status, seconds, output) of a command; status 124 when it ran out of time."""
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit,
                           env=env)
        status, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        status = 124
        out = "".join(x.decode() if isinstance(x, bytes) else (x or "")
                      for x in (e.stdout, e.stderr)) + f"\n(stopped after {limit} s)"
    except FileNotFoundError as e:
        status, out = 127, str(e)
    if log is not None:
        log.write_text(out)
    return status, time.perf_counter() - t0, out


def environment() -> tuple[int, str]:
    lines = []
    smi = shutil.which("nvidia-smi")
    if smi:
        r = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total",
                            "--format=csv,noheader"], capture_output=True, text=True)
        lines.append("GPU: " + (r.stdout.strip() or r.stderr.strip()))
    sys.path.insert(0, str(ROOT))
    from rnngen.targets import cuda_target
    try:
        t = cuda_target()   # nvcc as the builds find it (NVCC, PATH, CUDA_HOME)
        lines.append(f"nvcc: {t.nvcc}: {t.describe()}")
    except Exception as e:   # noqa: BLE001 - reported; check_cuda below decides
        lines.append(f"nvcc: {' '.join(str(e).split())}")
    probe = ("import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, "
             "'devices', torch.cuda.device_count())")
    r = subprocess.run([PY, "-c", probe], capture_output=True, text=True)
    lines.append((r.stdout or r.stderr).strip().splitlines()[-1] if (r.stdout or r.stderr)
                 else "torch: none")
    try:
        from rnngen.backends import check_cuda
        check_cuda()
    except Exception as e:   # noqa: BLE001 - any reason the GPU backend cannot run
        lines.append(f"backend='cuda': {' '.join(str(e).split())}")
        return 2, "\n".join(lines)
    lines.append("backend='cuda': usable")
    return 0, "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="folder for each step's log and the summary")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out")
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    t_all = time.perf_counter()
    status, env_text = environment()
    print(env_text, flush=True)
    if out:
        (out / "environment.log").write_text(env_text + "\n")
    if status == 2:
        print("gpu-check: no usable GPU here; nothing else was run", file=sys.stderr)
        return 2
    from rnngen.targets import nvcc_path
    beside = Path(nvcc_path()).parent / "compute-sanitizer"   # in the toolkit, by nvcc
    sanitizer = shutil.which("compute-sanitizer") or (str(beside) if beside.is_file() else None)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    steps = [
        ("build", [PY, "-c", "import subprocess, sys; from concurrent.futures import "
                   "ThreadPoolExecutor as P; jobs = [(c, b) for b in ('cuda', 'c') for c in "
                   "sys.argv[1:]]; rc = list(P(8).map(lambda j: subprocess.run([sys.executable, "
                   "'-m', 'rnngen', 'build', j[0], '--backend', j[1]]).returncode, jobs)); "
                   "sys.exit(max(rc))", *BUILD]),
        ("gpu tests", [PY, "-m", "pytest", "-q", "-m", "gpu", "-rs", "-p", "no:cacheprovider",
                       "tests"]),
    ]
    for tool in ("memcheck", "racecheck", "synccheck"):
        cmd = None if sanitizer is None else [
            sanitizer, "--tool", tool, "--error-exitcode", "9", "--target-processes",
            "all", PY, "tests/gpu_small.py"]
        steps.append((tool, cmd))
    steps.append(("bench-gpu quick", [PY, "benchmarks/bench_gpu.py", "--quick"]))

    rows = []
    for name, cmd in steps:
        if name in skip:
            rows.append((name, "skipped", 0.0, "(--skip)"))
            continue
        if cmd is None:
            rows.append((name, "FAILED", 0.0, "compute-sanitizer not found"))
            continue
        print(f"== {name}: {' '.join(cmd[:6])}{' ...' if len(cmd) > 6 else ''}", flush=True)
        st, secs, text = run(cmd, LIMITS[name], out / f"{name.replace(' ', '_')}.log"
                             if out else None, env)
        tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or [""]
        rows.append((name, "passed" if st == 0 else
                     ("TIMED OUT" if st == 124 else f"FAILED ({st})"), secs, tail[0][:160]))
        print(text[-3000:], flush=True)
    width = max(len(r[0]) for r in rows)
    summary = ["", "gpu-check summary", env_text,
               *(f"{n:{width}s}  {s:12s} {t:6.0f} s  {tail}" for n, s, t, tail in rows),
               f"total {time.perf_counter() - t_all:.0f} s"]
    print("\n".join(summary))
    if out:
        (out / "summary.txt").write_text("\n".join(summary) + "\n")
    return 0 if all(s in ("passed", "skipped") for _, s, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
