"""`make microbench`: compile benchmarks/kernels.c against rnngen's runtime header with
the kernels' own flags and run it (the single-row product's rate with its panel in L1
and in L2, a B = 32 step's product against the BLAS's, and the cost of a barrier), the
figures behind the README's arithmetic."""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rnngen.build import TEMPLATES, compile_command  # noqa: E402


def build(out_dir: Path) -> Path:
    exe = out_dir / "kernels"
    cmd = compile_command(HERE / "kernels.c", exe, TEMPLATES, shared=False)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}")
    return exe


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=20000, help="products per timing")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([str(build(Path(d))), str(args.reps)], capture_output=True,
                             text=True, check=True).stdout
    print(out, end="")
    return out


if __name__ == "__main__":
    main()
