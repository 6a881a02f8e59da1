"""Command line: rnngen COMMAND (also python -m rnngen COMMAND).

A SPEC argument is a path to a spec file, relative to the current directory, or the
class or file name of a built-in spec (GRU, gru, simple_rnn).  Each command has its
own help: rnngen COMMAND --help.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from .errors import BuildError, DeviceError, KernelError, SpecError
from .pipeline import GENERATED, ROOT, SPECS, builtin_specs


class UsageError(Exception):
    """A bad argument: printed without a traceback, exit status 2."""


def in_checkout() -> bool:
    """Whether rnngen runs from a checkout (specs/, generated/ and benchmarks/ beside the
    package) rather than from an installed wheel."""
    return SPECS == ROOT / "specs" and GENERATED.is_dir()


def _not_in_checkout(what: str) -> int:
    print(f"rnngen {what} works in a checkout of the rnngen repository (it needs "
          f"{'benchmarks/' if what == 'bench' else 'generated/'} beside specs/); this rnngen "
          f"is installed from a wheel at {Path(__file__).resolve().parent}", file=sys.stderr)
    return 2


# -- finding specs ----------------------------------------------------------------------
def find_spec(arg: str) -> Path:
    """A spec file: ``arg`` as a path (relative to the current directory), else the
    built-in spec whose class name or file name is ``arg``."""
    p = Path(arg)
    try:
        if p.is_file():
            return p
    except (OSError, RuntimeError) as e:   # a symlink loop, a name too long, ...
        raise UsageError(f"cannot use {arg!r} as a spec file: {e}") from None
    from .spec import load_spec
    low = arg.lower()
    for b in builtin_specs():
        if low in (b.stem, b.name) or low == load_spec(b).name.lower():
            return b
    names = ", ".join(load_spec(b).name for b in builtin_specs())
    raise UsageError(f"no spec file {arg!r} (looked for {os.path.abspath(p)}; paths are relative to "
                     f"the current directory) and no built-in spec of that name ({names})")


def parse_params(pairs) -> dict:
    """--param k=v values: ints, floats and names, as YAML reads them."""
    import yaml
    out = {}
    for pair in pairs or ():
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise UsageError(f"--param takes NAME=VALUE (e.g. activation=relu), got {pair!r}")
        try:
            value = yaml.safe_load(v.strip())
        except yaml.YAMLError:
            raise UsageError(f"--param {k.strip()}: {v.strip()!r} is not a value (a name, an "
                             f"integer or a number such as 1e-5)") from None
        if isinstance(value, str):   # YAML 1.1 reads 1e-3 (no dot) as text; a number here
            try:
                value = float(value) if value.strip() else value
            except ValueError:
                pass
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UsageError(f"--param {k.strip()}: {v.strip()!r} is not a value (a name, an "
                             f"integer or a number such as 1e-5)")
        out[k.strip()] = value
    return out


# -- generate, check, build -------------------------------------------------------------
def cmd_generate(args) -> int:
    from .pipeline import generated_files, stale_generated, write_if_changed
    if not in_checkout():
        return _not_in_checkout("generate")
    files = generated_files()
    changed = [p for p, text in files.items() if write_if_changed(p, text)]
    _, stale = stale_generated(files)
    for p in stale:
        p.unlink()
    print(f"generated/: {len(files)} files, {len(changed)} rewritten, {len(stale)} removed")
    return 0


def cmd_check(args) -> int:
    from .pipeline import generated_files, stale_generated
    if not in_checkout():
        return _not_in_checkout("check")
    stale, extra = stale_generated(generated_files())
    if stale or extra:
        print("generated/ is out of date (run make): " + ", ".join(map(str, stale + extra)))
        return 1
    print("generated/ is up to date")
    return 0


def cmd_build(args) -> int:
    from .pipeline import built_library
    from .spec import load_spec
    params = parse_params(args.param)
    if args.specs:
        jobs = [(find_spec(s), params) for s in args.specs]
    else:
        if in_checkout():
            cmd_generate(args)
        jobs = [(p, params) for p in builtin_specs()]
        if not params:     # and what the framework layers run with their defaults
            from .pipeline import framework_variants
            jobs += framework_variants()
    if args.jax:
        from .build import runtime_header
        from .runtime.ffi import cdef_from_headers
        try:
            from .jax._ffi import build_handlers
        except ImportError as e:
            print(f"rnngen build --jax needs jax ({e}): pip install -e '.[jax]'",
                  file=sys.stderr)
            return 2
    for p, params in jobs:
        spec = load_spec(p)
        t = time.perf_counter()
        lib, ir, header = built_library(spec, params, args.backend)   # no device needed
        if args.jax:
            build_handlers(ir, cdef_from_headers(runtime_header(), header), str(lib),
                           args.backend)
        given = ", ".join(f"{k}={v}" for k, v in params.items())
        print(f"built {spec.name:14s} ({p}{'; ' + given if given else ''}) for {args.backend}"
              f"{' with its XLA FFI handlers' if args.jax else ''} in "
              f"{time.perf_counter() - t:.2f} s")
    return 0


# -- list, show, new ----------------------------------------------------------------------
def _describe(path: Path, builtin: bool) -> str:
    from .ir import compute_ir
    from .spec import load_spec
    spec = load_spec(path)
    compute_ir(spec)   # the equations' checks too (names, functions, shapes): SpecError
    where = f"built-in, {path.parent.name}/{path.name}" if builtin else str(path)
    lines = [f"{spec.name} ({where})"]
    if spec.doc:
        lines += textwrap.wrap(spec.doc.strip().splitlines()[0], 92, initial_indent="  ",
                               subsequent_indent="  ")
    ws = []
    for w in spec.weights:
        shape = "[" + ", ".join(w.shape) + "]"
        ws.append(f"{w.name}_1..{w.name}_{w.count} {shape}" if w.count is not None
                  else f"{w.name} {shape}")
    lines += textwrap.wrap(f"weights: {', '.join(ws)}", 92, initial_indent="  ",
                           subsequent_indent="    ")
    ps = [f"{p.name}={p.default}" for p in spec.params]
    lines += textwrap.wrap(f"parameters: {', '.join(ps) or '(none)'}", 92,
                           initial_indent="  ", subsequent_indent="    ")
    lines.append(f"  state: {', '.join(spec.states)}; output: {spec.output}")
    return "\n".join(lines)


def cmd_list(args) -> int:
    if args.specs:   # the given specs only, each checked as load_cell checks it
        out = [_describe(find_spec(s), False) for s in args.specs]
    else:
        out = [_describe(p, True) for p in builtin_specs()]
    print("\n".join(out))
    return 0


def cmd_show(args) -> int:
    from .pipeline import generate
    from .spec import load_spec
    spec = load_spec(find_spec(args.spec))
    _, header, source = generate(spec, parse_params(args.param), args.backend)
    sys.stdout.write(header if args.header else source)
    return 0


SKELETON = """\
# {name}: a recurrent cell for rnngen.  Use it from Python (paths are relative to the
# current directory):
#     import rnngen
#     {name} = rnngen.load_cell("{file}")
#     layer = {name}(64, return_sequences=True)     # output_dim, then the params below
# Check it with `rnngen list {file}`, see its C code with `rnngen show {file}`.
# The format: docs/spec-format.md in the rnngen repository.
name: {name}                  # the layer's class name
doc: A gated recurrent cell (edit the equations below).

# Constructor parameters, in this order after output_dim, with their defaults.  The default's
# kind is the parameter's kind: an activation (sigmoid hard_sigmoid tanh relu softplus linear;
# compiled in, one library per choice), an initialization (glorot_uniform orthogonal zero ...;
# used only to initialise weights), an integer >= 1 or a number such as 1.0e-5 (compiled in).
params:
  init: glorot_uniform
  inner_init: orthogonal
  activation: tanh
  inner_activation: sigmoid

# The weights, in the order of weights= and get_weights().  Shapes: [input_dim, output_dim]
# for x @ W, [output_dim, output_dim] for state @ U, [output_dim] for a vector used
# elementwise.  init: an initialization name or an init parameter above.
weights:
  W_g: {{shape: [input_dim, output_dim], init: init}}
  U_g: {{shape: [output_dim, output_dim], init: inner_init}}
  b_g: {{shape: [output_dim], init: zero}}
  W_h: {{shape: [input_dim, output_dim], init: init}}
  U_h: {{shape: [output_dim, output_dim], init: inner_init}}
  b_h: {{shape: [output_dim], init: zero}}

# The state vectors: each starts at zero and is assigned once per step.
state: [h]

# One equation per line, run in order.  x is the step's input; a state name is its previous
# value until its own equation.  + - * / elementwise, @ matrix product, the activations,
# exp, activation parameters as functions; `#` starts a comment.
step: |
  g = inner_activation(x @ W_g + b_g + h @ U_g)   # a gate between 0 and 1
  hh = activation(x @ W_h + b_h + h @ U_h)        # the candidate state
  h = g * h + (1 - g) * hh                         # keep a part, take in the rest

# The state the layer returns.
output: h
"""


def cmd_new(args) -> int:
    from .spec import is_identifier
    if not is_identifier(args.name):
        raise UsageError(f"the cell's name becomes its class name and must be an identifier "
                         f"(letters, digits, _), got {args.name!r}")
    path = Path(args.output or f"{args.name.lower()}.yaml")
    if path.exists() and not args.force:
        raise UsageError(f"{path} exists; choose another name or -o PATH, or pass --force")
    try:
        path.write_text(SKELETON.format(name=args.name, file=path.as_posix()))
    except OSError as e:
        hint = (" (give -o a file path, not a directory)" if path.is_dir() else
                " (its directory does not exist)" if not path.parent.is_dir() else "")
        raise UsageError(f"cannot write {path}: {e.strerror}{hint}") from None
    print(f"wrote {path}: a {args.name} cell; try `rnngen build {path}`")
    return 0


# -- cache ----------------------------------------------------------------------------
ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*-[0-9a-f]{20}\Z")


def _size(p: Path) -> int:
    total = 0
    for root, _, files in os.walk(p):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def cmd_cache(args) -> int:
    from .build import cache_dir
    root = cache_dir()
    how = "RNNGEN_CACHE_DIR" if os.environ.get("RNNGEN_CACHE_DIR") else \
        "the default; set RNNGEN_CACHE_DIR to move it"
    entries = sorted(p for p in root.iterdir() if p.is_dir() and ENTRY.match(p.name)) \
        if root.is_dir() else []
    index = root / "index"
    size = sum(map(_size, entries)) + (_size(index) if index.is_dir() else 0)
    if args.clear:
        from .build import clear_cache
        deleted, kept = clear_cache(entries)
        try:
            root.rmdir()             # only if nothing else is left in it
        except OSError:
            pass
        print(f"cleared {root}: {len(deleted)} folders and the index, "
              f"{(size - sum(map(_size, kept))) / 1e6:.1f} MB"
              + (f"; kept {len(kept)} where another process is building now" if kept else ""))
        return 0
    built = [p for p in entries if (p / "done").is_file()]
    failed = [p for p in entries if (p / "failed").is_file()]
    n_index = sum(1 for _ in index.iterdir()) if index.is_dir() else 0
    print(f"cache: {root} ({how})")
    print(f"  {len(built)} libraries built, {len(entries)} folders, {size / 1e6:.1f} MB; "
          f"index: {n_index} entries")
    if failed:
        print(f"  failed builds ({len(failed)}; the compiler's output is in each 'failed' file):")
        for p in failed:
            print(f"    {p / 'failed'}")
    else:
        print("  failed builds: none")
    return 0


# -- demo, bench ------------------------------------------------------------------------
def cmd_demo(args) -> int:
    import numpy as np
    from . import layers
    rng = np.random.default_rng(0)
    B, T, D, H = 8, 20, 16, 32
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    mask = np.ones((B, T), dtype=bool)
    mask[:, :3] = False          # start padding
    n = args.calls
    print(f"x: {B} samples x {T} steps x {D} inputs (first 3 steps masked), output_dim {H}, "
          f"float32")
    print(f"times: the median of {n} calls each, after one untimed call (which loads, or "
          f"compiles, the library)")
    print(f"{'layer':14s} {'weights':>7s} {'forward ms':>11s} {'backward ms':>12s} "
          f"{'|y| mean':>9s} {'|dx| mean':>10s}")
    for name in ("SimpleRNN", "SimpleDeepRNN", "GRU", "LSTM", "JZS1", "JZS2", "JZS3"):
        layer = getattr(layers, name)(H, return_sequences=True, input_dim=D, seed=1)
        y = layer(x, mask=mask)
        dx = layer.backward(np.ones_like(y))
        fwd, bwd = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            y = layer(x, mask=mask)
            t1 = time.perf_counter()
            dx = layer.backward(np.ones_like(y))
            t2 = time.perf_counter()
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
        print(f"{name:14s} {len(layer.get_weights()):7d} {1e3 * statistics.median(fwd):11.3f} "
              f"{1e3 * statistics.median(bwd):12.3f} {np.abs(y).mean():9.4f} "
              f"{np.abs(dx).mean():10.4f}")
    return 0


def cmd_bench(args) -> int:
    script = ROOT / "benchmarks" / "bench.py"
    if not (in_checkout() and script.is_file()):
        return _not_in_checkout("bench")
    rest = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    # as `make bench`: a machine-wide OpenBLAS kernel pin would slow rnngen's and numpy's BLAS
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return subprocess.run([sys.executable, str(script), *rest], env=env).returncode


# -- the parser ---------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rnngen", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, help, description, **kw):
        return sub.add_parser(name, help=help, description=description, **kw)

    def spec_options(p, backends):
        p.add_argument("--param", action="append", metavar="NAME=VALUE",
                       help="a parameter's value instead of its default (repeatable), "
                            "e.g. --param activation=relu --param depth=2")
        p.add_argument("--backend", choices=backends, default="c",
                       help="the backend (default: c)")

    p = add("list", "list and check the given specs (or the built-ins), with weights and parameters",
            "Print each SPEC given, after checking it as load_cell does (a spec with mistakes "
            "is an error listing them), or without SPEC every built-in cell (specs/ of "
            "rnngen): its class name, file, weights (in the order of weights= and get_weights(), with shapes; "
            "a family U with count n is U_1..U_n), parameters with their defaults (in "
            "constructor order after output_dim), states and output.")
    p.add_argument("specs", nargs="*", metavar="SPEC", help="spec files to list as well")
    p.set_defaults(run=cmd_list)

    p = add("show", "print the C or CUDA source generated for a spec",
            "Print the source generated for SPEC with its parameters (defaults unless given "
            "with --param): the C file (--backend c) or the CUDA file (--backend cuda; the "
            "cuda-emulated backend compiles the same file). Nothing is compiled.")
    p.add_argument("spec", metavar="SPEC", help="a spec file, or a built-in's name (e.g. GRU)")
    spec_options(p, ["c", "cuda"])
    p.add_argument("--header", action="store_true",
                   help="print the generated header (the entry points) instead of the source")
    p.set_defaults(run=cmd_show)

    p = add("build", "compile specs into the library cache",
            "Compile each SPEC (any path, or a built-in's name) into the build cache, as its "
            "layer would on first use. Without SPEC: every built-in spec, and (without --param) "
            "the variants rnngen.torch's and rnngen.keras's layers run by default (sigmoid "
            "gates, examples/torch_gru.yaml), after `rnngen generate` when run from a "
            "checkout.")
    p.add_argument("specs", nargs="*", metavar="SPEC")
    spec_options(p, ["c", "cuda", "cuda-emulated"])
    p.add_argument("--jax", action="store_true",
                   help="also build the cell's XLA FFI handlers for rnngen.jax (needs jax and "
                        "a C++ compiler)")
    p.set_defaults(run=cmd_build)

    p = add("new", "write a commented skeleton spec that builds as is",
            "Write a spec for a new cell called NAME (a gated recurrent unit with comments on "
            "every key) to name.yaml in the current directory, or to -o PATH. Edit its "
            "equations, then load it with rnngen.load_cell(PATH).")
    p.add_argument("name", metavar="NAME", help="the cell's class name, e.g. MyCell")
    p.add_argument("-o", "--output", metavar="PATH", help="where to write it")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(run=cmd_new)

    p = add("cache", "show the build cache (where, size, failed builds) or clear it",
            "Print where the build cache is (RNNGEN_CACHE_DIR, default "
            "$XDG_CACHE_HOME/rnngen or ~/.cache/rnngen), how many libraries it holds and "
            "their size, and the builds that failed (folders with a 'failed' file holding "
            "the compiler's output). A library is keyed by everything that affects it "
            "(sources, compiler, flags, CPU), so none is ever served in the wrong place; "
            "libraries of older versions just take space: clear it to reclaim that.")
    p.add_argument("--clear", action="store_true",
                   help="delete the cache's libraries and index (do not run while rnngen "
                        "runs elsewhere on this cache); libraries are rebuilt when used")
    p.set_defaults(run=cmd_cache)

    p = add("demo", "run each built-in layer forward and backward and print a table",
            "Run the seven built-in layers on a small masked batch and print the median "
            "forward and backward time of several calls, with the mean output and gradient.")
    p.add_argument("--calls", type=int, default=25, metavar="N",
                   help="timed calls per layer (default 25); the median is printed")
    p.set_defaults(run=cmd_demo)

    p = add("generate", "(checkout) write generated/ for every built-in spec",
            "Write generated/<cell>.c, .h, .cu and _cuda.h for every spec in specs/ with "
            "default parameters, rewriting only files whose contents change. Works in a "
            "checkout of the repository only.")
    p.set_defaults(run=cmd_generate)

    p = add("check", "(checkout) exit 1 if generated/ is out of date",
            "Exit with status 1 if generated/ is not what specs/ and templates/ produce. "
            "Works in a checkout of the repository only.")
    p.set_defaults(run=cmd_check)

    p = add("bench", "(checkout) run the benchmark, benchmarks/bench.py",
            "Run benchmarks/bench.py (as `make bench` does) with the arguments that follow; "
            "`rnngen bench -- --help` lists them. It needs the bench extra (pip install -e "
            "'.[bench]') for its peers, and works in a checkout of the repository only. "
            "Writes benchmarks/results/ and benchmarks/RESULTS.md.")
    p.set_defaults(run=cmd_bench)
    return ap


def main(argv=None) -> int:
    ap = parser()
    args, rest = ap.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = rest
    elif rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.run(args)
    except UsageError as e:
        print(f"rnngen {args.command}: {e}", file=sys.stderr)
        return 2
    except SpecError as e:
        print(e, file=sys.stderr)
        return 2
    except (ValueError, TypeError) as e:     # a parameter value or backend refused
        print(f"rnngen {args.command}: {e}", file=sys.stderr)
        return 2
    except (BuildError, DeviceError, KernelError) as e:
        print(f"rnngen {args.command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:   # a file that cannot be read or written
        print(f"rnngen {args.command}: {e.strerror or e}"
              + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
