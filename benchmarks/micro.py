"""`make microbench`: compile benchmarks/kernels.c against rnngen's runtime header with
the kernels' own flags, once per x86 level this CPU runs (RNNGEN_MARCH = x86-64-v2, v3, v4:
each level's micro-kernel), and run it with the BLAS held to the same level
(OPENBLAS_CORETYPE): the core's multiply-add peak, the single-row product's rate with its
panel in L1 and in L2 against the BLAS's, a step's products against the BLAS's GEMM, and
the cost of a barrier."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rnngen.build import TEMPLATES, compile_command  # noqa: E402
from rnngen.targets import cpu_target, runnable_x86_levels  # noqa: E402


# OpenBLAS's kernels for each x86 level (OPENBLAS_CORETYPE): the BLAS held to the level the
# micro-kernel is built for (Nehalem: SSE4.2; Haswell: AVX2 + FMA; SkylakeX: AVX-512)
BLAS_CORE = {"x86-64-v2": "Nehalem", "x86-64-v3": "Haswell", "x86-64-v4": "SkylakeX"}


def build(out_dir: Path, target) -> Path:
    exe = out_dir / f"kernels-{target.march}-{target.kernel}"
    cmd = compile_command(HERE / "kernels.c", exe, TEMPLATES, shared=False, target=target)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}")
    return exe


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=20000, help="scales every timing loop")
    ap.add_argument("--levels", default=None,
                    help="comma-separated RNNGEN_MARCH values (default: every x86 level this "
                         "CPU runs, else native)")
    args = ap.parse_args(argv)
    levels = args.levels.split(",") if args.levels else (runnable_x86_levels() or ["native"])
    text = f"CPU: {cpu_name()}\n"
    print(text, end="")
    with tempfile.TemporaryDirectory() as d:
        for march in levels:
            target = cpu_target(march, "auto")
            env = dict(os.environ)
            env.pop("OPENBLAS_L2_SIZE", None)
            env.pop("OPENBLAS_CORETYPE", None)
            if march in BLAS_CORE:
                env["OPENBLAS_CORETYPE"] = BLAS_CORE[march]
            out = subprocess.run([str(build(Path(d), target)), str(args.reps)], capture_output=True,
                                 text=True, check=True, env=env).stdout
            block = f"\n== RNNGEN_MARCH={march}: {target.describe()}\n{out}"
            print(block, end="", flush=True)
            text += block
    return text


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "CPU part")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
