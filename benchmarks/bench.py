"""`make bench`: rnngen's kernels side by side with peers, in one run.

For every seed cell and two cells of examples/ (the LayerNorm LSTM and xLSTM's
sLSTM, issue 12) at every configuration (T, B, D, H), and the other cells of examples/
(MGU, torch's GRU, minGRU, IndRNN, the LayerNorm GRU) at the first and third, float32, it times inference
(forward only) and training (the forward that saves what backward needs, then
backward with full BPTT), interleaving rnngen and its peers call by call on the
same inputs and thread count.  Each result is the median of the timed calls
(each implementation's turn starts with untimed calls), reported as ms, GFLOP/s (matrix-product FLOPs only: forward
2*T*B*H*(D*nW + H*nU) for nW input and nU recurrent H-wide products; training
3x that), the fraction of this machine's SGEMM rate (a large square product
through the same BLAS rnngen uses), and peer ms / rnngen ms.

Before timing, each peer's output (and for training, its dx) is compared with
rnngen's, so every column computes the same thing.  How the peers are written (the
input products hoisted, denormals flushed in PyTorch as in XLA): benchmarks/peers.py.
Writes a table to the terminal, results.json and ratios.png under benchmarks/results/.

Instruction sets: rnngen builds for RNNGEN_MARCH (default native; e.g. x86-64-v2,
x86-64-v3, x86-64-v4).  Where it names an x86 level, the peers are held to the same level
before they are imported (PEER_LIMITS: oneDNN's, MKL's and ATen's CPU dispatch for
PyTorch, XLA's --xla_cpu_max_isa for JAX, OPENBLAS_CORETYPE for numpy's and rnngen's
BLAS); results.json records the target, the limits and what each peer reports it runs
(torch's CPU capability, the BLAS's kernel).  A run's JSON goes to
benchmarks/results/<RNNGEN_MARCH>/, and benchmarks/RESULTS.md is written from every run
found there, one section per level.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# The peers' instruction-set limits per x86 level: in the environment before numpy, torch and
# jax load their libraries (OpenBLAS reads OPENBLAS_CORETYPE when it is loaded).
PEER_LIMITS = {
    "x86-64-v2": {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                  "ATEN_CPU_CAPABILITY": "default", "OPENBLAS_CORETYPE": "Nehalem",
                  "XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"},
    "x86-64-v3": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                  "ATEN_CPU_CAPABILITY": "avx2", "OPENBLAS_CORETYPE": "Haswell",
                  "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"},
    "x86-64-v4": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                  "ATEN_CPU_CAPABILITY": "avx512", "OPENBLAS_CORETYPE": "SkylakeX",
                  "XLA_FLAGS": "--xla_cpu_max_isa=AVX512"},
}


def hold_peers(march: str) -> dict:
    """Set the peers' limits for ``march`` (an x86 level; nothing for others) in this
    process's environment, before the peers are imported; returns what was set."""
    limits = dict(PEER_LIMITS.get(march, {}))
    for k, v in limits.items():
        if k == "XLA_FLAGS" and os.environ.get(k) and v not in os.environ[k].split():
            v = f"{os.environ[k]} {v}"
        elif k == "XLA_FLAGS" and os.environ.get(k):
            v = os.environ[k]
        os.environ[k] = limits[k] = v
    return limits


if __name__ == "__main__":   # before numpy is imported (a test importing this sets nothing)
    hold_peers(os.environ.get("RNNGEN_MARCH") or "native")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import peers  # noqa: E402
import rnngen  # noqa: E402
import rnngen.targets  # noqa: E402
from rnngen import layers  # noqa: E402

WARM_S = 0.03     # untimed calls fill this much time before each turn's timed calls: the
                  # first calls after a pause run slower (cores idle, threads asleep), which
                  # made 0.3 ms calls measure up to 2x slower than in a steady loop
MAX_CALLS = 50
CONFIGS = [(100, 32, 128, 256), (50, 64, 512, 512), (200, 1, 64, 128), (25, 128, 256, 1024)]
# (label, rnngen class or spec path, extra layer arguments): the seven seed layers with
# their default activations, LSTM with sigmoid gates, where nn.LSTM computes exactly the same
# cell, and two cells of examples/ (GALLERY)
CELLS = [
    ("SimpleRNN", "SimpleRNN", {}),
    ("SimpleDeepRNN", "SimpleDeepRNN", {}),
    ("GRU", "GRU", {}),
    ("LSTM", "LSTM", {}),
    ("LSTM-sigmoid", "LSTM", {"inner_activation": "sigmoid"}),
    ("JZS1", "JZS1", {}),
    ("JZS2", "JZS2", {}),
    ("JZS3", "JZS3", {}),
    ("LayerNormLSTM", "examples/layernorm_lstm.yaml", {}),
    ("sLSTM", "examples/slstm.yaml", {}),
    ("MGU", "examples/mgu.yaml", {}),
    ("TorchGRU", "examples/torch_gru.yaml", {}),
    ("MinGRU", "examples/mingru.yaml", {}),
    ("IndRNN", "examples/indrnn.yaml", {}),
    ("LayerNormGRU", "examples/layernorm_gru.yaml", {}),
]
SEED = {"SimpleRNN", "SimpleDeepRNN", "GRU", "LSTM", "JZS1", "JZS2", "JZS3"}
GALLERY = {"LayerNormLSTM", "sLSTM"}   # issue 12's targets
# the rest of examples/, at the first and third configurations unless --configs is given
MORE = {"MGU", "TorchGRU", "MinGRU", "IndRNN", "LayerNormGRU"}
MORE_CONFIGS = [CONFIGS[0], CONFIGS[2]]
PEERS = [
    ("nn.LSTM", "torch", peers.TorchLSTMPeer),
    ("torch eager", "torch", peers.TorchEagerPeer),
    ("jax scan", "jax", peers.JaxPeer),
    ("numpy", "numpy", peers.NumpyPeer),
    ("rnngen.jax", "jax", None),       # the same kernels through XLA's FFI: RnngenJaxPeer
]


class RnngenJaxPeer(peers.JaxPeer):
    """rnngen.jax.Recurrent with the layer's weights, forward and jax.grad under jax.jit (the
    JAX peer's calls): its ratio to rnngen (the layer API) is what the bridge costs (issue
    24: at most 10%)."""
    name = "rnngen.jax"

    def __init__(self, source, params, weights: dict):
        import jax
        import jax.numpy as jnp
        import rnngen.jax as rj
        src = source if not source.endswith(".yaml") else str(HERE.parent / source)
        D, H = weights[next(iter(weights))].shape
        layer = rj.Recurrent(src, D, H, return_sequences=True, **params)
        self.jax = jax
        self.w = {k: jnp.asarray(v) for k, v in weights.items()}
        self._fwd = jax.jit(layer.apply)
        self._grad = jax.jit(jax.grad(lambda w, x, dy: jnp.sum(layer.apply(w, x) * dy),
                                      argnums=(0, 1)))


# ------------------------------------------------------------------ machine
def sgemm_rate(n: int = 2048, reps: int = 5) -> dict:
    """GFLOP/s of an n x n x n float32 product through scipy-openblas32 (rnngen's BLAS),
    and through numpy's own BLAS for comparison."""
    import cffi
    from rnngen.build import blas_paths
    _, libdir, lib = blas_paths()
    ffi = cffi.FFI()
    ffi.cdef("void scipy_cblas_sgemm(int, int, int, int, int, int, float, const float *, int,"
             " const float *, int, float, float *, int); char *scipy_openblas_get_corename(void);")
    blas = ffi.dlopen(str(Path(libdir) / f"lib{lib}.so"))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    pa, pb, pc = (ffi.from_buffer("float[]", v) for v in (a, b, c))
    flop = 2.0 * n ** 3

    def ours():
        blas.scipy_cblas_sgemm(101, 111, 111, n, n, n, 1.0, pa, n, pb, n, 0.0, pc, n)

    out = {}
    for name, fn in (("scipy-openblas32", ours), ("numpy", lambda: a @ b)):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = flop / min(ts) / 1e9
    assert np.allclose(c, a @ b, rtol=1e-3, atol=1e-2), "SGEMM check failed"
    out["kernel"] = ffi.string(blas.scipy_openblas_get_corename()).decode()
    return out


def peer_isa(mods) -> dict:
    """What the peers report they run: torch's CPU capability (ATen's dispatch) and
    oneDNN's limit as torch sees it; the XLA flags in force."""
    out = {}
    torch = mods.get("torch")
    if torch is not None:
        try:
            out["torch cpu capability"] = torch.backends.cpu.get_cpu_capability()
        except AttributeError:
            pass
    if mods.get("jax") is not None:
        out["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
    return out


def load() -> list:
    """The load average over 1, 5 and 15 minutes: how busy the machine is with other
    processes too (a shared machine; None where the OS does not say)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__}


# ------------------------------------------------------------------ one case
def flops(layer, T, B, D, H) -> float:
    ir = layer._kernel.ir
    n_in = sum(1 for w in ir.weights if w.role == "input matrix")
    n_rec = sum(1 for w in ir.weights if w.role == "recurrent matrix")
    return 2.0 * T * B * H * (D * n_in + H * n_rec)


def close(a, b, tol) -> float:
    """Largest difference relative to the largest magnitude."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def layer_class(source: str):
    """A seed layer by name, or the class of a spec file (a path from the checkout's root)."""
    if source.endswith(".yaml"):
        return rnngen.load_cell(HERE.parent / source)
    return getattr(layers, source)


def run_case(label, cls, extra, cfg, rounds, per_round, peer_objs_factory, settle):
    T, B, D, H = cfg
    rng = np.random.default_rng(1)
    layer = layer_class(cls)(H, input_dim=D, return_sequences=True, dtype="float32",
                             seed=0, **extra)
    cell = type(layer).__name__          # the cell's name in peers.py (a spec's `name:`)
    x = rng.uniform(-1, 1, (B, T, D)).astype(np.float32)
    dy = rng.uniform(-1, 1, (B, T, H)).astype(np.float32)
    weights = dict(zip(layer.weight_names(), layer.get_weights()))
    params = layer.params

    def rn_fwd():
        return layer.forward(x, training=False)

    def rn_train():
        layer.forward(x)
        return layer.backward(dy)

    y_ref = rn_fwd()
    dx_ref = rn_train()
    fns = {"inference": [("rnngen", rn_fwd)], "training": [("rnngen", rn_train)]}
    notes = {}
    for pname, obj in peer_objs_factory(cell, params, weights, cls):
        if isinstance(obj, str):          # missing or not applicable
            notes[pname] = obj
            continue
        err = close(obj.forward(x), y_ref, 0)
        exact = getattr(obj, "exact", True)
        if exact and err > 2e-3:
            raise AssertionError(f"{label} {cfg}: {pname} forward differs from rnngen by {err:.2e}")
        why = ["timing only: sigmoid gates, not this cell's hard_sigmoid"] if not exact else []
        if getattr(obj, "note", None):
            why.append(obj.note)
        if why:
            notes[pname] = "; ".join(why)
        fns["inference"].append((pname, lambda o=obj: o.forward(x)))
        if obj.trains:
            if exact:
                err = close(obj.train(x, dy), dx_ref, 0)
                if err > 5e-3:
                    raise AssertionError(f"{label} {cfg}: {pname} dx differs from rnngen by "
                                         f"{err:.2e}")
            fns["training"].append((pname, lambda o=obj: o.train(x, dy)))
    fl = flops(layer, T, B, D, H)
    out = {}
    for mode, lst in fns.items():
        times = {n: [] for n, _ in lst}
        for k in range(rounds):
            # interleaved: a few calls of each in turn, the order rotating from round to
            # round so that no implementation always follows the same one
            for n, f in lst[k % len(lst):] + lst[:k % len(lst)]:
                time.sleep(settle)   # let the last implementation's idle threads stop spinning
                t_end = time.perf_counter() + WARM_S
                f()                  # untimed, for at least WARM_S: wakes threads and cores
                while time.perf_counter() < t_end:
                    f()
                t_end = time.perf_counter() + WARM_S
                for i in range(MAX_CALLS):   # per_round calls, more while under WARM_S
                    if i >= per_round and time.perf_counter() > t_end:
                        break
                    t0 = time.perf_counter()
                    f()
                    times[n].append(time.perf_counter() - t0)
        med = {n: statistics.median(v) for n, v in times.items()}
        mf = fl * (3 if mode == "training" else 1)
        out[mode] = {
            "flop": mf,
            "ms": {n: 1e3 * v for n, v in med.items()},
            "gflops": {n: mf / v / 1e9 for n, v in med.items()},
            "ratio": {n: med[n] / med["rnngen"] for n in med if n != "rnngen"},
        }
    out["notes"] = notes
    return out


def make_factory(wanted):
    mods = {m: peers.available(m) for m in ("torch", "jax", "numpy")}

    def factory(cls, params, weights, source=None):
        for pname, mod, pcls in PEERS:
            if pname not in wanted:
                continue
            if pname == "nn.LSTM" and cls != "LSTM":
                continue
            if mods[mod] is None:
                yield pname, f"missing: {mod} is not installed (pip install -e '.[bench]')"
                continue
            if pcls is None:          # rnngen.jax: made from the cell's source
                yield pname, RnngenJaxPeer(source, params, weights)
                continue
            yield pname, pcls(cls, params, weights)
    return factory, mods


# ------------------------------------------------------------------ report
def table(results, mode, sgemm, peer_names) -> str:
    head = ["cell", "T,B,D,H", "ms", "GFLOP/s", "SGEMM"] + [f"x {p}" for p in peer_names]
    rows = []
    for r in results:
        m = r[mode]
        cells = [r["cell"], ",".join(map(str, r["config"])), f"{m['ms']['rnngen']:.2f}",
                 f"{m['gflops']['rnngen']:.0f}", f"{m['gflops']['rnngen'] / sgemm:.0%}"]
        for p in peer_names:
            if p in m["ratio"]:
                cells.append(f"{m['ratio'][p]:.2f}")
            else:
                cells.append("-")
        rows.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in rows)) for i, h in enumerate(head)]
    fmt = lambda cs: "| " + " | ".join(c.ljust(w) for c, w in zip(cs, widths)) + " |"  # noqa
    lines = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(c) for c in rows]
    return "\n".join(lines)


def targets(results, sgemm) -> list[tuple[str, bool, str]]:
    """The issue's targets, each with whether it holds in this run and the worst case."""
    out = []

    def check(desc, items, bound):
        items = [(v, k) for v, k in items if v is not None]
        if not items:
            out.append((desc, False, "no data"))
            return
        worst = min(items)
        out.append((desc, worst[0] >= bound, f"worst {worst[0]:.2f} ({worst[1]})"))

    def ratios(mode, peer, pred):
        return [(r[mode]["ratio"].get(peer), f"{r['cell']} {r['config']}")
                for r in results if pred(r)]

    b32 = lambda r: r["config"][1] == 32   # noqa: E731
    b1 = lambda r: r["config"][1] == 1     # noqa: E731
    seed = lambda r: r["cell"] in SEED             # noqa: E731
    gallery = lambda r: r["cell"] in GALLERY       # noqa: E731
    check("training >= 3x jax at B=32", ratios("training", "jax scan",
                                               lambda r: b32(r) and seed(r)), 3)
    check("training >= 5x torch eager at B=32", ratios("training", "torch eager",
                                                       lambda r: b32(r) and seed(r)), 5)
    check("training >= 5x jax at B=1", ratios("training", "jax scan",
                                              lambda r: b1(r) and seed(r)), 5)
    check("training >= 5x torch eager at B=1", ratios("training", "torch eager",
                                                      lambda r: b1(r) and seed(r)), 5)
    # nn.LSTM computes the seed LSTM only with sigmoid gates: its ratios are claimed there
    lstm = lambda r: r["cell"] == "LSTM-sigmoid"  # noqa: E731
    check("LSTM-sigmoid inference >= 1.0x nn.LSTM at B>=32", ratios(
        "inference", "nn.LSTM", lambda r: lstm(r) and r["config"][1] >= 32), 1.0)
    check("LSTM-sigmoid inference >= 1.5x nn.LSTM at B=1", ratios(
        "inference", "nn.LSTM", lambda r: lstm(r) and b1(r)), 1.5)
    check("LSTM-sigmoid training >= 1.3x nn.LSTM at B=32", ratios(
        "training", "nn.LSTM", lambda r: lstm(r) and b32(r)), 1.3)
    check("LSTM-sigmoid training >= 1.5x nn.LSTM", ratios("training", "nn.LSTM", lstm), 1.5)
    check("inference >= 80% of SGEMM at B>=32 (seed cells, LSTM-sigmoid)", [
        (r["inference"]["gflops"]["rnngen"] / sgemm, f"{r['cell']} {r['config']}")
        for r in results if r["config"][1] >= 32 and not gallery(r) and r["cell"] not in MORE],
          0.8)
    # issue 12: the LayerNorm LSTM and sLSTM of examples/, as for the seed cells
    check("LayerNormLSTM, sLSTM training >= 3x jax at B=32", ratios(
        "training", "jax scan", lambda r: b32(r) and gallery(r)), 3)
    check("LayerNormLSTM, sLSTM training >= 5x torch eager at B=32", ratios(
        "training", "torch eager", lambda r: b32(r) and gallery(r)), 5)
    # issue 24: rnngen.jax at >= 90% of the layer API's speed (the bridge costs <= 10%)
    check("rnngen.jax training >= 90% of the layer API's speed at B=32", [
        (None if v is None else 1 / v, k) for v, k in ratios(
            "training", "rnngen.jax", lambda r: b32(r) and (seed(r) or gallery(r)))], 0.9)
    return out


def chart(results, peer_names, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        return "matplotlib is not installed: no chart"
    fig, axes = plt.subplots(2, 1, figsize=(max(10, len(results) * 0.55), 9), sharex=True)
    labels = [f"{r['cell']}\n{','.join(map(str, r['config']))}" for r in results]
    xs = np.arange(len(results))
    width = 0.8 / max(len(peer_names), 1)
    for ax, mode in zip(axes, ("inference", "training")):
        for i, p in enumerate(peer_names):
            vals = [r[mode]["ratio"].get(p, np.nan) for r in results]
            ax.bar(xs + (i - (len(peer_names) - 1) / 2) * width, vals, width, label=p)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("peer time / rnngen time")
        ax.set_title(f"{mode}: how many times faster rnngen is (log scale)")
        ax.legend(fontsize=8)
    axes[1].set_xticks(xs, labels, rotation=90, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default=",".join(c[0] for c in CELLS),
                    help="comma-separated cell labels")
    ap.add_argument("--configs", default=";".join(",".join(map(str, c)) for c in CONFIGS),
                    help="semicolon-separated T,B,D,H")
    ap.add_argument("--peers", default=",".join(p[0] for p in PEERS))
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds; in each, every implementation runs one untimed call, then "
                         "--per-round timed calls, before the next implementation's turn")
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--settle", type=float, default=0.3,
                    help="seconds of pause before each implementation's turn: thread pools "
                         "(OpenBLAS, OpenMP, XLA) spin for a while after a call and would slow "
                         "the next implementation (numpy's OpenBLAS threads spin for about "
                         "0.1 s; with 0.1 here, 0.3 ms calls measured up to 2.5x slower)")
    ap.add_argument("--out", default=None,
                    help="folder for results.json and ratios.png (default: "
                         "benchmarks/results/<RNNGEN_MARCH or native>)")
    a = ap.parse_args(argv)
    target = rnngen.targets.cpu_target()
    limits = hold_peers(target.march)
    default_out = a.out is None
    a.out = a.out or str(HERE / "results" / (target.march
                                             + ("-portable" if target.forced_portable else "")))

    cells = [c for c in CELLS if c[0] in a.cells.split(",")]
    unknown = set(a.cells.split(",")) - {c[0] for c in CELLS}
    if unknown:
        ap.error(f"unknown cells {sorted(unknown)}; known: {[c[0] for c in CELLS]}")
    configs = [tuple(int(v) for v in c.split(",")) for c in a.configs.split(";")]
    wanted = a.peers.split(",")
    factory, mods = make_factory(wanted)
    if mods["torch"] is not None:
        mods["torch"].set_num_threads(os.cpu_count())
    peer_names = [p[0] for p in PEERS if p[0] in wanted]

    info = machine()
    info["versions"] = {m: getattr(v, "__version__", "?") if v else "missing"
                        for m, v in mods.items()}
    info["rnngen_march"] = target.march
    info["target"] = target.describe()
    info["peer_limits"] = limits
    info["peer_isa"] = peer_isa(mods)
    load_before = load()
    rates = sgemm_rate()
    sgemm = rates["scipy-openblas32"]
    first = sgemm
    print(f"machine: {info['cpu']}, {info['cores']} cores; peers: {info['versions']}; "
          f"load average {load_before}")
    print(f"rnngen: RNNGEN_MARCH={target.march}, {target.describe()}; peers held to: "
          f"{limits or 'nothing (not an x86 level)'}; they report {info['peer_isa']}")
    print(f"SGEMM 2048^3: {sgemm:.0f} GFLOP/s through scipy-openblas32, {rates['kernel']} kernel "
          f"(numpy's BLAS: {rates['numpy']:.0f}); threads: {os.cpu_count()} for every implementation")

    results = []
    default_configs = a.configs == ap.get_default("configs")
    for label, cls, extra in cells:
        for cfg in configs:
            if label in MORE and default_configs and cfg not in MORE_CONFIGS:
                continue
            t0 = time.perf_counter()
            at_start = load()
            r = run_case(label, cls, extra, cfg, a.rounds, a.per_round, factory, a.settle)
            r.update(cell=label, config=list(cfg), load=at_start)
            results.append(r)
            print(f"  {label:14s} {str(cfg):22s} inference {r['inference']['ms']['rnngen']:8.2f} ms"
                  f"  training {r['training']['ms']['rnngen']:8.2f} ms"
                  f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
            for p, why in r["notes"].items():
                if why.startswith("missing"):
                    print(f"    {p}: {why}")

    # the machine's speed drifts (a shared VM): measure SGEMM again and keep the faster
    # rate, so that the fractions of it are not flattered by one slow measurement
    again = sgemm_rate()
    if again["scipy-openblas32"] > sgemm:
        rates, sgemm = again, again["scipy-openblas32"]
    print(f"SGEMM again after the run: {again['scipy-openblas32']:.0f} GFLOP/s; using {sgemm:.0f}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for mode in ("inference", "training"):
        print(f"\n{mode} (float32; ratio = peer time / rnngen time, >1 means rnngen is faster)")
        print(table(results, mode, sgemm, peer_names))
    tg = targets(results, sgemm)
    print("\ntargets:")
    for desc, ok, worst in tg:
        print(f"  [{'ok' if ok else 'MISSED'}] {desc}: {worst}")
    missing = {p: n for r in results for p, n in r["notes"].items() if n.startswith("missing")}
    for p, n in missing.items():
        print(f"  peer {p} {n}")
    doc = {"machine": info, "sgemm_gflops": rates, "results": results,
           "sgemm_measured": [first, again["scipy-openblas32"]],
           "load": {"before": load_before, "after": load()},
           "targets": [{"target": d, "met": ok, "worst": w} for d, ok, w in tg],
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {out / 'results.json'} and {chart(results, peer_names, out / 'ratios.png')}")
    # the markdown report: benchmarks/RESULTS.md from every level's run under
    # benchmarks/results/ for the default --out, else beside the JSON
    import results_md
    if default_out:
        runs = sorted((HERE / "results").glob("*/results.json"), reverse=True)   # v4, v3, v2
        print(f"wrote {results_md.write(runs, HERE / 'RESULTS.md')}")
    else:
        print(f"wrote {results_md.write([out / 'results.json'], out / 'RESULTS.md')}")


if __name__ == "__main__":
    main()
