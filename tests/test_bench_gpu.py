"""The GPU benchmark (benchmarks/bench_gpu.py, `make bench-gpu`) without a GPU: its --smoke
run takes the whole code path on the CPU (rnngen's cuda-emulated backend, torch and JAX on
the CPU) and must write every row, with every peer checked against rnngen; without --smoke
and without a GPU it must stop at once with status 2 and one line; a peer that computes
something else must stop the run."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"
CELLS = ["SimpleRNN", "SimpleDeepRNN", "GRU", "LSTM", "LSTM-sigmoid", "JZS1", "JZS2", "JZS3",
         "MGU", "TorchGRU"]
SMOKE_CONFIGS = [[3, 2, 3, 4], [3, 1, 3, 4]]


def test_smoke_run_writes_every_row_with_every_peer_checked(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--jobs", "2",
                          "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu.json").read_text())
    assert doc["smoke"] is True and doc["gpu"] is False
    rows = doc["results"]
    assert [(r["cell"], r["config"]) for r in rows] == [(c, k) for c in CELLS
                                                        for k in SMOKE_CONFIGS]
    tol = doc["tolerance"]
    for r in rows:
        where = f"{r['cell']} {r['config']}"
        # which peers ran: cuDNN only where its math is the cell's, torch.compile only for
        # --smoke's one cell, the eager loop and JAX everywhere
        ran = {"torch eager", "jax scan"}
        if r["cell"] in ("LSTM-sigmoid", "TorchGRU"):
            ran.add("cuDNN")
        if r["cell"] == "MGU":
            ran.add("torch.compile")
            assert r["compile_s"]["inference"] > 0 and r["compile_s"]["training"] > 0
        else:
            assert r["notes"] == {"torch.compile": "skipped: not in --compile-cells"}, where
        assert set(r["check"]) == ran, where
        for p, errs in r["check"].items():
            assert 0 <= errs["forward"] <= tol["forward"], (where, p, errs)
            assert 0 <= errs["dx"] <= tol["dx"], (where, p, errs)
        for mode in ("inference", "training"):
            assert set(r[mode]["ratio"]) == ran, (where, mode)
            assert all(v > 0 for v in r[mode]["ratio"].values()), (where, mode)
            assert r[mode]["ms"]["rnngen"] > 0
    T, B, D, H = SMOKE_CONFIGS[0]
    by = {(r["cell"], tuple(r["config"])): r for r in rows}
    assert by["MGU", (T, B, D, H)]["inference"]["flop"] == 2 * T * B * H * (2 * D + 2 * H)
    assert by["TorchGRU", (T, B, D, H)]["training"]["flop"] == 3 * 2 * T * B * H * (3 * D + 3 * H)
    targets = {t["target"]: t for t in doc["targets"]}
    assert len(targets) == 4
    lstm = targets["LSTM training >= 1.0x cuDNN at 100,64,512,512"]
    assert lstm["worst"] == "no data" and not lstm["met"]          # not a --smoke size
    assert "B=1 inference latency <= cuDNN's" in targets
    # torch.compile ran for MGU alone; the custom cells are those cuDNN does not compute
    assert "(MGU [3, " in targets["custom cells: training >= 2x torch.compile"]["worst"]
    eager = targets["custom cells: training >= 5x torch eager"]["worst"]
    assert re.fullmatch(r"worst \d+\.\d\d \((\w+) \[3, [12], 3, 4\]\)", eager)
    assert eager.split("(")[1].split()[0] not in ("LSTM-sigmoid", "TorchGRU")
    assert "| TorchGRU      | 3,1,3,4 |" in res.stdout and "targets:" in res.stdout
    md = (tmp_path / "RESULTS-GPU.md").read_text()
    assert "A `--smoke` run on the CPU" in md and "## torch.compile's compile time" in md
    assert "| MGU " in md and "x torch.compile" in md


def test_without_a_gpu_it_stops_with_status_2_and_one_line():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the benchmark would run")
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench-gpu: "), res.stderr
    assert "--smoke" in lines[0] and "Traceback" not in res.stderr and res.stdout == ""


@pytest.fixture()
def bench_gpu(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    for m in ("bench_gpu", "bench", "peers"):
        sys.modules.pop(m, None)
    import bench_gpu as b
    return b


@pytest.mark.parametrize("what", ["forward", "dx"])
def test_a_peer_that_computes_something_else_stops_the_run(bench_gpu, monkeypatch, what):
    class Wrong(bench_gpu.TorchLoop):
        def fwd(self, x):
            return super().fwd(x) + (0.01 if what == "forward" else 0.0)

        def trn(self, x, dy):
            return super().trn(x, dy) * (1.1 if what == "dx" else 1.0)

    monkeypatch.setattr(bench_gpu, "TorchLoop", Wrong)
    place = bench_gpu.Place(smoke=True)
    a = SimpleNamespace(rounds=1, per_round=1, warm=0.0)
    cell = next(c for c in bench_gpu.CELLS if c[0] == "MGU")
    with pytest.raises(AssertionError, match=f"MGU .*torch eager {what} differs from rnngen"):
        bench_gpu.run_case(place, cell, (3, 2, 3, 4), a, ["torch eager"], set())
