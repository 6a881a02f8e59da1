"""`make bench-gpu`: rnngen's CUDA kernels side by side with GPU peers, in one run.

The seven seed cells, the LSTM with sigmoid gates (LSTM-sigmoid: exactly what
``torch.nn.LSTM`` computes), the minimal gated unit (examples/mgu.yaml) and torch's own
GRU (examples/torch_gru.yaml: exactly what ``torch.nn.GRU`` computes, which is not the
seed GRU), float32, inference (forward only) and training (the forward that saves, then
backward with full BPTT), rnngen with ``backend="cuda"`` against:

- cuDNN: ``torch.nn.LSTM`` / ``torch.nn.GRU`` on CUDA, for LSTM-sigmoid and TorchGRU only
  (the cells whose math they compute);
- torch eager: the same cell as a PyTorch step loop on CUDA with autograd (peers.py's
  step functions; ``x @ W`` of all steps hoisted into one product);
- torch.compile: that loop through ``torch.compile(fullgraph=True)`` (inductor; the
  compile, on the first call, is timed apart and reported, not in the medians);
- jax scan: ``jax.jit`` of ``jax.lax.scan`` with ``jax.grad``, on the GPU.

Inputs live on the GPU: torch CUDA tensors go to the rnngen layer as they are (read in
place through ``__cuda_array_interface__``; results come back as DeviceArrays), and JAX
gets its own device copies.  Every call is timed between two ``torch.cuda.synchronize()``
(and JAX's ``block_until_ready``), so a time is the latency a caller waits for, host
overhead included.  Matrix products run in full float32 everywhere: TF32 is switched off
for torch, cuDNN and inductor, and JAX's matmul precision is "highest" (rnngen's cuBLAS
calls use the default math mode, no TF32).  rnngen's weights are numpy arrays, so its
times include uploading them (and downloading the weight gradients) on every call, as a
user of the layer API pays them.

Before timing, each peer's output (and for training, its dx) is compared with rnngen's;
a difference beyond the tolerance stops the run.  Rounds interleave the implementations
call by call as in bench.py.  Writes a table to the terminal, gpu.json and gpu.png under
benchmarks/results/, and benchmarks/RESULTS-GPU.md.

Without a usable GPU (no CUDA in torch, no device, no nvcc or cuBLAS for rnngen) it exits
with status 2 and one line saying which.  ``--smoke`` runs the same code path on the CPU
at tiny sizes (rnngen's ``cuda-emulated`` backend, torch and JAX on the CPU, torch.compile
for one cell) so that it can be tested without a GPU; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# JAX reserves 75% of GPU memory on its first use unless told otherwise, which would
# starve torch's and rnngen's allocations: allocate as needed (before jax is imported)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402  (its helpers: flops, close, machine, table, chart)
import peers  # noqa: E402
import rnngen  # noqa: E402
from rnngen import layers  # noqa: E402
from rnngen.backends import get_backend  # noqa: E402

LSTM_TARGET = (100, 64, 512, 512)   # issue 11: LSTM training >= 1.0x cuDNN here
CONFIGS = [LSTM_TARGET, (100, 1, 512, 512)]
SMOKE_CONFIGS = [(3, 2, 3, 4), (3, 1, 3, 4)]
# (label, rnngen class or spec path, extra layer arguments, peers.py's cell name)
CELLS = [
    ("SimpleRNN", "SimpleRNN", {}, "SimpleRNN"),
    ("SimpleDeepRNN", "SimpleDeepRNN", {}, "SimpleDeepRNN"),
    ("GRU", "GRU", {}, "GRU"),
    ("LSTM", "LSTM", {}, "LSTM"),
    ("LSTM-sigmoid", "LSTM", {"inner_activation": "sigmoid"}, "LSTM"),
    ("JZS1", "JZS1", {}, "JZS1"),
    ("JZS2", "JZS2", {}, "JZS2"),
    ("JZS3", "JZS3", {}, "JZS3"),
    ("MGU", "examples/mgu.yaml", {}, "MGU"),
    ("TorchGRU", "examples/torch_gru.yaml", {}, "TorchGRU"),
]
# the cells that cuDNN computes exactly, and the peers.py class that maps their weights
CUDNN_CELLS = {"LSTM-sigmoid": "TorchLSTMPeer", "TorchGRU": "TorchGRUPeer"}
# activations the peers' step functions need where a spec fixes them (no parameter)
FIXED_ACTS = {"TorchGRU": {"activation": "tanh", "inner_activation": "sigmoid"}}
PEERS = ["cuDNN", "torch eager", "torch.compile", "jax scan"]
# --quick: every target once (cuDNN's two cells, two custom cells, torch.compile for one)
QUICK = ["GRU", "LSTM-sigmoid", "MGU", "TorchGRU"]
TOL = {"forward": 2e-3, "dx": 5e-3}   # largest difference / largest magnitude, as bench.py
WARM_S = 0.05
MAX_CALLS = 50


class NoGPU(Exception):
    """The GPU run cannot start here; the message says why (one line)."""


# ------------------------------------------------------------------ where things run
class Place:
    """Where the run computes: the GPU (torch CUDA tensors straight into rnngen's "cuda"
    backend) or, for --smoke, the CPU (numpy views of CPU tensors into "cuda-emulated")."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.torch = peers.available("torch")
        self.jax = None
        if self.torch is None:
            if not smoke:
                raise NoGPU("torch is not installed (pip install torch, a CUDA build)")
        elif not smoke and not self.torch.cuda.is_available():
            raise NoGPU(f"torch {self.torch.__version__} sees no CUDA GPU (torch.version.cuda = "
                        f"{self.torch.version.cuda}); --smoke runs the code path on the CPU")
        self.backend = "cuda-emulated" if smoke else "cuda"
        try:
            get_backend(self.backend).check()
        except rnngen.DeviceError as e:
            raise NoGPU(f"rnngen backend='cuda' cannot run: {e}") from None
        self.device = "cpu" if smoke else "cuda"
        if self.torch is not None:
            t = self.torch
            # full float32 products everywhere, as rnngen's cuBLAS calls
            t.backends.cuda.matmul.allow_tf32 = False
            t.backends.cudnn.allow_tf32 = False
            t.set_float32_matmul_precision("highest")

    def sync(self):
        if not self.smoke:
            self.torch.cuda.synchronize()

    def tensor(self, a: np.ndarray):
        """An input on the device (--smoke without torch: the numpy array)."""
        return a if self.torch is None else self.torch.tensor(a, device=self.device)

    def to_rnngen(self, t):
        """What the rnngen layer is given: the CUDA tensor itself (zero copy), or on the
        CPU the numpy view of the tensor (the emulated backend takes host arrays)."""
        if not self.smoke:
            return t
        return t if isinstance(t, np.ndarray) else t.numpy()

    def load_jax(self):
        """jax, or a string saying why it is not a peer here (looked at once)."""
        if self.jax is None:
            self.jax = self._find_jax()
        return self.jax

    def _find_jax(self):
        jax = peers.available("jax")
        if jax is None:
            return "missing: jax is not installed (pip install 'jax[cuda13]')"
        try:
            where = jax.default_backend()
        except Exception as e:   # noqa: BLE001 - a plugin that fails to start
            return f"missing: jax {jax.__version__} cannot start: {str(e).splitlines()[0][:200]}"
        if not self.smoke and where != "gpu":
            return (f"missing: jax {jax.__version__} has no GPU backend here (its default is "
                    f"{where!r}; pip install 'jax[cuda13]')")
        jax.config.update("jax_default_matmul_precision", "highest")
        return jax

    def describe(self) -> dict:
        info = bench.machine()
        t = self.torch
        info["device"] = "cpu (--smoke: figures mean nothing)" if self.smoke else \
            t.cuda.get_device_name(0)
        if not self.smoke:
            p = t.cuda.get_device_properties(0)
            info["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}",
                           "memory_gib": round(p.total_memory / 2**30, 1),
                           "sms": p.multi_processor_count, "torch_cuda": t.version.cuda,
                           "cudnn": t.backends.cudnn.version()}
        jax = self.load_jax()
        info["versions"] = {
            "torch": t.__version__ if t else "missing",
            "jax": (jax if isinstance(jax, str) else
                    f"{jax.__version__} ({jax.default_backend()})"),
            "rnngen": rnngen.__version__}
        return info


def to_numpy(v) -> np.ndarray:
    """A host copy of a torch tensor, a DeviceArray, a jax or numpy array."""
    if hasattr(v, "detach"):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def sgemm_rate(place: Place) -> dict:
    """GFLOP/s of an n x n x n float32 product through torch (cuBLAS on the GPU, no TF32)."""
    torch = place.torch
    n = 256 if place.smoke else 8192
    if torch is None:                       # --smoke without torch
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        t0 = time.perf_counter()
        a @ a
        return {"sgemm": 2.0 * n ** 3 / (time.perf_counter() - t0) / 1e9, "n": n,
                "how": f"numpy {n}^3 float32 on the CPU"}
    a = torch.randn(n, n, device=place.device)
    b = torch.randn(n, n, device=place.device)
    c = a @ b
    place.sync()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        c = a @ b
        place.sync()
        ts.append(time.perf_counter() - t0)
    ref = (a[:4].double() @ b.double()).float()
    assert torch.allclose(c[:4], ref, rtol=1e-3, atol=1e-2), "SGEMM check failed"
    return {"sgemm": 2.0 * n ** 3 / min(ts) / 1e9, "n": n,
            "how": f"torch.mm {n}^3 float32 on {place.device}, TF32 off"}


# ------------------------------------------------------------------ peers on the device
class TorchLoop(peers.TorchEagerPeer):
    """peers.py's PyTorch step loop with its weights on the device; compiled or not."""

    def __init__(self, cell, params, weights, place: Place, compiled: bool):
        super().__init__(cell, params, weights)
        torch = self.torch
        self.w = {k: v.detach().to(place.device).requires_grad_(True)
                  for k, v in self.w.items()}
        self.fn = torch.compile(self._run, fullgraph=True) if compiled else self._run

    def device_inputs(self, xt, dyt):
        return xt, dyt

    def fwd(self, x):
        with self.torch.no_grad():
            return self.fn(x)

    def trn(self, x, dy):
        xt = x.detach().requires_grad_(True)
        for v in self.w.values():
            v.grad = None
        self.fn(xt).backward(dy)
        return xt.grad


class Cudnn:
    """torch.nn.LSTM / nn.GRU (peers.py's weight mapping) moved to the device: cuDNN."""
    trains = True

    def __init__(self, peer_cls, cell, params, weights, place: Place):
        self.p = peer_cls(cell, params, weights)
        self.torch, self.exact = self.p.torch, self.p.exact
        self.mod = self.p.mod.to(place.device)     # .to() flattens the weights for cuDNN

    def device_inputs(self, xt, dyt):
        return xt, dyt

    def fwd(self, x):
        with self.torch.no_grad():
            return self.mod(x)[0]

    def trn(self, x, dy):
        xt = x.detach().requires_grad_(True)
        self.mod.zero_grad(set_to_none=True)
        self.mod(xt)[0].backward(dy)
        return xt.grad


class JaxScan(peers.JaxPeer):
    """peers.py's jax.lax.scan peer on device-resident inputs (its weights are already on
    jax's default device, the GPU when jax has one)."""

    def device_inputs(self, xt, dyt):
        jax = self.jax
        return jax.device_put(to_numpy(xt)), jax.device_put(to_numpy(dyt))

    def fwd(self, x):
        return self._fwd(self.w, x).block_until_ready()

    def trn(self, x, dy):
        gw, gx = self._grad(self.w, x, dy)
        self.jax.block_until_ready((gw, gx))
        return gx


# ------------------------------------------------------------------ one case
def layer_class(source: str):
    if source.endswith(".yaml"):
        return rnngen.load_cell(str(ROOT / source))
    return getattr(layers, source)


def make_layer(place, source, extra, cfg):
    T, B, D, H = cfg
    layer = layer_class(source)(H, input_dim=D, return_sequences=True, dtype="float32",
                                seed=0, backend=place.backend, **extra)
    # biases are zero (or one) after init: give them values, so that the checks below
    # also check how each peer places them
    rng = np.random.default_rng(2)
    ws = [w + rng.uniform(-0.1, 0.1, w.shape).astype(w.dtype) if w.ndim == 1 else w
          for w in layer.get_weights()]
    layer.set_weights(ws)
    return layer


def time_calls(fns, rounds, per_round, warm_s, sync):
    """Median seconds per call of each (name, fn): interleaved rounds as in bench.py, each
    turn starting with untimed calls for warm_s, every call between two syncs."""
    times = {n: [] for n, _ in fns}
    for k in range(rounds):
        for n, f in fns[k % len(fns):] + fns[:k % len(fns)]:
            t_end = time.perf_counter() + warm_s
            f()
            sync()
            while time.perf_counter() < t_end:
                f()
                sync()
            t_end = time.perf_counter() + warm_s
            for i in range(MAX_CALLS):
                if i >= per_round and time.perf_counter() > t_end:
                    break
                sync()
                t0 = time.perf_counter()
                f()
                sync()
                times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


def make_peers(place, label, peer_cell, params, weights, wanted, compile_cells):
    """(name, peer object or a string saying why it is not run) for every wanted peer
    of this cell; a peer that does not apply to the cell is left out."""
    out = []
    torch = place.torch
    pparams = {**params, **FIXED_ACTS.get(peer_cell, {})}
    for name in PEERS:
        if name not in wanted:
            continue
        if name == "cuDNN":
            if label not in CUDNN_CELLS:
                continue
            if torch is None:
                out.append((name, "missing: torch is not installed"))
                continue
            out.append((name, Cudnn(getattr(peers, CUDNN_CELLS[label]), peer_cell, pparams,
                                    weights, place)))
        elif name in ("torch eager", "torch.compile"):
            if torch is None:
                out.append((name, "missing: torch is not installed"))
                continue
            compiled = name == "torch.compile"
            if compiled and label not in compile_cells:
                out.append((name, "skipped: not in --compile-cells"))
                continue
            if compiled:
                torch._dynamo.reset()    # a fresh cache per case: no stale recompile limits
            out.append((name, TorchLoop(peer_cell, pparams, weights, place, compiled)))
        elif name == "jax scan":
            jax = place.load_jax()
            if isinstance(jax, str):
                out.append((name, jax))
                continue
            out.append((name, JaxScan(peer_cell, pparams, weights)))
    return out


def run_case(place, cell, cfg, a, wanted, compile_cells):
    label, source, extra, peer_cell = cell
    T, B, D, H = cfg
    layer = make_layer(place, source, extra, cfg)
    rng = np.random.default_rng(1)
    xt = place.tensor(rng.uniform(-1, 1, (B, T, D)).astype(np.float32))
    dyt = place.tensor(rng.uniform(-1, 1, (B, T, H)).astype(np.float32))
    xr, dyr = place.to_rnngen(xt), place.to_rnngen(dyt)
    weights = dict(zip(layer.weight_names(), layer.get_weights()))

    def rn_fwd():
        return layer.forward(xr, training=False)

    def rn_train():
        layer.forward(xr)
        return layer.backward(dyr)

    y_ref = to_numpy(rn_fwd())
    dx_ref = to_numpy(rn_train())
    fns = {"inference": [("rnngen", rn_fwd)], "training": [("rnngen", rn_train)]}
    notes, checks, compile_s = {}, {}, {}
    for pname, obj in make_peers(place, label, peer_cell, layer.params, weights, wanted,
                                 compile_cells):
        if isinstance(obj, str):
            notes[pname] = obj
            continue
        xn, dyn = obj.device_inputs(xt, dyt)
        try:
            t0 = time.perf_counter()
            y = to_numpy(obj.fwd(xn))
            t1 = time.perf_counter()
            dx = to_numpy(obj.trn(xn, dyn)) if obj.trains else None
            t2 = time.perf_counter()
        except Exception as e:   # noqa: BLE001 - a peer that cannot run is reported, not fatal
            if pname != "torch.compile":
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            notes[pname] = f"failed: {type(e).__name__}: {first}"
            print(f"    {pname}: {notes[pname]}", flush=True)
            continue
        if pname == "torch.compile":
            compile_s = {"inference": round(t1 - t0, 3), "training": round(t2 - t1, 3)}
        err = bench.close(y, y_ref, 0)
        checks[pname] = {"forward": err}
        if err > TOL["forward"]:
            raise AssertionError(f"{label} {cfg}: {pname} forward differs from rnngen by "
                                 f"{err:.2e}")
        fns["inference"].append((pname, lambda o=obj, x=xn: o.fwd(x)))
        if dx is not None:
            err = bench.close(dx, dx_ref, 0)
            checks[pname]["dx"] = err
            if err > TOL["dx"]:
                raise AssertionError(f"{label} {cfg}: {pname} dx differs from rnngen by "
                                     f"{err:.2e}")
            fns["training"].append((pname, lambda o=obj, x=xn, d=dyn: o.trn(x, d)))
    fl = bench.flops(layer, T, B, D, H)
    out = {}
    for mode, lst in fns.items():
        med = time_calls(lst, a.rounds, a.per_round, a.warm, place.sync)
        mf = fl * (3 if mode == "training" else 1)
        out[mode] = {"flop": mf,
                     "ms": {n: 1e3 * v for n, v in med.items()},
                     "gflops": {n: mf / v / 1e9 for n, v in med.items()},
                     "ratio": {n: med[n] / med["rnngen"] for n in med if n != "rnngen"}}
    out.update(notes=notes, check=checks, compile_s=compile_s)
    return out


# ------------------------------------------------------------------ report
def targets(results) -> list[tuple[str, bool, str]]:
    """Issue 11's GPU targets, each with whether it holds in this run and the worst case.
    'Custom' cells are those cuDNN does not compute (all but LSTM-sigmoid and TorchGRU)."""
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

    custom = lambda r: r["cell"] not in CUDNN_CELLS  # noqa: E731
    check(f"LSTM training >= 1.0x cuDNN at {','.join(map(str, LSTM_TARGET))}",
          ratios("training", "cuDNN", lambda r: r["cell"] == "LSTM-sigmoid"
                 and tuple(r["config"]) == LSTM_TARGET), 1.0)
    check("custom cells: training >= 5x torch eager", ratios("training", "torch eager", custom),
          5.0)
    check("custom cells: training >= 2x torch.compile",
          ratios("training", "torch.compile", custom), 2.0)
    check("B=1 inference latency <= cuDNN's", ratios(
        "inference", "cuDNN", lambda r: r["config"][1] == 1), 1.0)
    return out


def prebuild(place, cells, jobs: int):
    """Compile every cell's library for the backend, `jobs` at a time (`rnngen build`
    processes: nvcc is slow, and one process builds one library at a time)."""
    def one(cell):
        _, source, extra, _ = cell
        spec = str(ROOT / source) if source.endswith(".yaml") else source
        cmd = [sys.executable, "-m", "rnngen", "build", spec, "--backend", place.backend]
        for k, v in extra.items():
            cmd += ["--param", f"{k}={v}"]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        return cell[0], r.returncode, (r.stderr or r.stdout).strip()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, jobs)) as ex:
        results = list(ex.map(one, cells))
    bad = [(n, err) for n, rc, err in results if rc != 0]
    for n, err in bad:
        print(f"build of {n} for {place.backend} failed:\n{err}", file=sys.stderr)
    if bad:
        raise SystemExit(1)
    print(f"built {len(cells)} libraries for {place.backend} in "
          f"{time.perf_counter() - t0:.0f} s ({jobs} at a time)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="the whole code path on the CPU at tiny sizes (rnngen's cuda-emulated "
                         "backend, torch and JAX on the CPU): a test, not a measurement")
    ap.add_argument("--quick", action="store_true",
                    help="each target once, for a short GPU session: cells " + ",".join(QUICK)
                         + ", torch.compile for MGU only, 3 rounds")
    ap.add_argument("--cells", default=None, help="comma-separated cell labels (default: all)")
    ap.add_argument("--configs", default=None,
                    help="semicolon-separated T,B,D,H (default: "
                         + ";".join(",".join(map(str, c)) for c in CONFIGS) + "; --smoke: "
                         + ";".join(",".join(map(str, c)) for c in SMOKE_CONFIGS) + ")")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--compile-cells", default=None,
                    help="the cells torch.compile runs for (default: all; --smoke: MGU, "
                         "for the compile takes 10-30 s per case on a CPU)")
    ap.add_argument("--rounds", type=int, default=None, help="default 5 (--smoke: 1)")
    ap.add_argument("--per-round", type=int, default=None, help="default 5 (--smoke: 1)")
    ap.add_argument("--warm", type=float, default=None,
                    help="seconds of untimed calls before each turn's timed calls "
                         f"(default {WARM_S}; --smoke: 0)")
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1),
                    help="libraries compiled at a time before the run")
    ap.add_argument("--out", default=None,
                    help="default benchmarks/results (--smoke: build/bench-gpu-smoke)")
    a = ap.parse_args(argv)
    sm = a.smoke
    if a.quick:
        a.cells = a.cells or ",".join(QUICK)
        a.compile_cells = a.compile_cells or "MGU"
        a.rounds = a.rounds or (1 if sm else 3)
    a.cells = a.cells or ",".join(c[0] for c in CELLS)
    a.rounds = a.rounds if a.rounds is not None else (1 if sm else 5)
    a.per_round = a.per_round if a.per_round is not None else (1 if sm else 5)
    a.warm = a.warm if a.warm is not None else (0.0 if sm else WARM_S)
    out = Path(a.out or (ROOT / "build" / "bench-gpu-smoke" if sm else HERE / "results"))
    names = a.cells.split(",")
    unknown = set(names) - {c[0] for c in CELLS}
    if unknown:
        ap.error(f"unknown cells {sorted(unknown)}; known: {[c[0] for c in CELLS]}")
    cells = [c for c in CELLS if c[0] in names]
    configs = (SMOKE_CONFIGS if sm else CONFIGS) if a.configs is None else \
        [tuple(int(v) for v in c.split(",")) for c in a.configs.split(";")]
    wanted = a.peers.split(",")
    if set(wanted) - set(PEERS):
        ap.error(f"unknown peers {sorted(set(wanted) - set(PEERS))}; known: {PEERS}")
    compile_cells = set((a.compile_cells or ("MGU" if sm else ",".join(names))).split(","))

    t_start = time.perf_counter()
    try:
        place = Place(sm)
    except NoGPU as e:
        print("bench-gpu: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    info = place.describe()
    rates = sgemm_rate(place)
    sgemm = rates["sgemm"]
    print(f"device: {info['device']}; host: {info['cpu']}, {info['cores']} cores; "
          f"versions: {info['versions']}")
    print(f"SGEMM {rates.get('how', '')}: {sgemm:.0f} GFLOP/s")
    prebuild(place, cells, a.jobs)

    results = []
    for cell in cells:
        for cfg in configs:
            t0 = time.perf_counter()
            r = run_case(place, cell, cfg, a, wanted, compile_cells)
            r.update(cell=cell[0], config=list(cfg))
            results.append(r)
            comp = (f"; torch.compile took {r['compile_s']['inference']:.1f} + "
                    f"{r['compile_s']['training']:.1f} s" if r["compile_s"] else "")
            print(f"  {cell[0]:14s} {str(cfg):22s} inference {r['inference']['ms']['rnngen']:8.3f}"
                  f" ms  training {r['training']['ms']['rnngen']:8.3f} ms  "
                  f"({time.perf_counter() - t0:.0f} s{comp})", flush=True)

    peer_names = [p for p in PEERS if p in wanted]
    for mode in ("inference", "training"):
        print(f"\n{mode} (float32; ratio = peer time / rnngen time, >1 means rnngen is faster)")
        print(bench.table(results, mode, sgemm, peer_names))
    tg = targets(results)
    print("\ntargets:")
    for desc, ok, worst in tg:
        print(f"  [{'ok' if ok else 'MISSED'}] {desc}: {worst}")
    for p, n in {p: n for r in results for p, n in r["notes"].items()
                 if not n.startswith("skipped")}.items():
        print(f"  peer {p}: {n}")
    out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": info, "gpu": not sm, "smoke": sm,
           "sgemm_gflops": {"sgemm": sgemm, "how": rates.get("how", "")},
           "tolerance": TOL, "results": results,
           "targets": [{"target": d, "met": ok, "worst": w} for d, ok, w in tg],
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "gpu.json").write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {out / 'gpu.json'} and {bench.chart(results, peer_names, out / 'gpu.png')}")
    import results_md
    md = HERE / "RESULTS-GPU.md" if out.resolve() == (HERE / "results").resolve() \
        else out / "RESULTS-GPU.md"
    print(f"wrote {results_md.write(out / 'gpu.json', md)} "
          f"({time.perf_counter() - t_start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
