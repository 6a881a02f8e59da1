"""Command line: python -m rnngen {generate,build,check,demo}.

generate  write generated/<cell>.c and .h for every spec in specs/ (only files whose
          contents change are rewritten)
build     generate, then compile every spec into the library cache
check     exit 1 if generated/ is not what the specs and templates produce
demo      run each seed layer forward and backward and print a table
"""
from __future__ import annotations

import argparse
import sys
import time

from .errors import SpecError
from .pipeline import generated_files, stale_generated, write_if_changed


def cmd_generate() -> int:
    files = generated_files()
    changed = [p for p, text in files.items() if write_if_changed(p, text)]
    _, stale = stale_generated(files)
    for p in stale:
        p.unlink()
    print(f"generated/: {len(files)} files, {len(changed)} rewritten, {len(stale)} removed")
    return 0


def cmd_build() -> int:
    from .pipeline import builtin_specs, compile_cell
    from .spec import load_spec
    cmd_generate()
    for p in builtin_specs():
        t = time.perf_counter()
        k = compile_cell(load_spec(p))
        print(f"built {k.ir.spec.name:14s} ({p.name}) in {time.perf_counter() - t:.2f} s")
    return 0


def cmd_check() -> int:
    stale, extra = stale_generated(generated_files())
    if stale or extra:
        print("generated/ is out of date (run make): " + ", ".join(map(str, stale + extra)))
        return 1
    print("generated/ is up to date")
    return 0


def cmd_demo() -> int:
    import numpy as np
    from . import layers
    rng = np.random.default_rng(0)
    B, T, D, H = 8, 20, 16, 32
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    mask = np.ones((B, T), dtype=bool)
    mask[:, :3] = False          # start padding
    print(f"x: {B} samples x {T} steps x {D} inputs (first 3 steps masked), output_dim {H}")
    print(f"{'layer':14s} {'weights':>7s} {'forward ms':>11s} {'backward ms':>12s} "
          f"{'|y| mean':>9s} {'|dx| mean':>10s}")
    for name in ("SimpleRNN", "SimpleDeepRNN", "GRU", "LSTM", "JZS1", "JZS2", "JZS3"):
        layer = getattr(layers, name)(H, return_sequences=True, input_dim=D, seed=1)
        t0 = time.perf_counter()
        y = layer(x, mask=mask)
        t1 = time.perf_counter()
        dx = layer.backward(np.ones_like(y))
        t2 = time.perf_counter()
        print(f"{name:14s} {len(layer.get_weights()):7d} {1e3 * (t1 - t0):11.3f} "
              f"{1e3 * (t2 - t1):12.3f} {np.abs(y).mean():9.4f} {np.abs(dx).mean():10.4f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rnngen", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["generate", "build", "check", "demo"])
    args = ap.parse_args(argv)
    try:
        return {"generate": cmd_generate, "build": cmd_build, "check": cmd_check,
                "demo": cmd_demo}[args.command]()
    except SpecError as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
