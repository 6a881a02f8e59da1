"""The benchmark harness on a tiny problem: it runs, checks its peers, counts FLOPs as
documented, reports a missing peer as missing, and writes its JSON and table."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    for m in ("bench", "peers"):
        sys.modules.pop(m, None)
    import bench as b
    return b


def test_tiny_run_writes_results(bench, tmp_path, monkeypatch, capsys):
    real = bench.peers.available
    monkeypatch.setattr(bench.peers, "available",
                        lambda name: None if name == "torch" else real(name))
    bench.main(["--cells", "LSTM,GRU", "--configs", "3,2,4,16", "--peers",
                "nn.LSTM,torch eager,numpy", "--rounds", "1", "--per-round", "1",
                "--settle", "0", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "results.json").read_text())
    rows = {r["cell"]: r for r in doc["results"]}
    T, B, D, H = 3, 2, 4, 16
    assert rows["LSTM"]["inference"]["flop"] == 2 * T * B * H * (4 * D + 4 * H)
    assert rows["GRU"]["training"]["flop"] == 3 * 2 * T * B * H * (3 * D + 3 * H)
    assert rows["GRU"]["inference"]["ratio"]["numpy"] > 0      # numpy was timed
    assert "numpy" not in rows["GRU"]["training"]["ratio"]      # it has no backward
    assert rows["LSTM"]["notes"]["nn.LSTM"].startswith("missing")
    assert rows["GRU"]["notes"]["torch eager"].startswith("missing")
    assert "nn.LSTM" not in rows["GRU"]["notes"]                # not a peer of GRU
    assert "peer torch eager missing" in out and "| GRU" in out
    assert [t["target"] for t in doc["targets"]][0].startswith("training >= 3x jax")
    assert [t["target"] for t in doc["targets"]][-2:] == [
        "LayerNormLSTM, sLSTM training >= 5x torch eager at B=32",
        "rnngen.jax training >= 90% of the layer API's speed at B=32"]
    # how fast and busy the machine was: SGEMM before and after, load per row
    assert len(doc["sgemm_measured"]) == 2 and all(v > 0 for v in doc["sgemm_measured"])
    md = (tmp_path / "RESULTS.md").read_text()
    assert "SGEMM measured" in md
    # the instruction set it ran at: rnngen's target, named in the JSON and the markdown
    from rnngen.targets import cpu_target
    assert doc["machine"]["rnngen_march"] == cpu_target().march
    assert doc["machine"]["target"] == cpu_target().describe() and cpu_target().kernel in md
    assert f"RNNGEN_MARCH={cpu_target().march}" in md
    if doc["load"]["before"] is not None:
        assert len(rows["GRU"]["load"]) == 3 and "load average over one minute" in md


def test_a_peer_that_computes_something_else_is_refused(bench, monkeypatch):
    class Wrong(bench.peers.NumpyPeer):
        def forward(self, x):
            return super().forward(x) + 1.0
    monkeypatch.setattr(bench, "PEERS", [("numpy", "numpy", Wrong)])
    factory, _ = bench.make_factory(["numpy"])
    with pytest.raises(AssertionError, match="numpy forward differs from rnngen"):
        bench.run_case("GRU", "GRU", {}, (3, 2, 4, 16), 1, 1, factory, 0)


def test_an_x86_level_holds_the_peers_to_it(bench, monkeypatch, tmp_path):
    """RNNGEN_MARCH=x86-64-v2: the limits are set before the peers are imported and take
    effect where a peer can say (ATen's dispatch in torch, OpenBLAS's kernel)."""
    import subprocess
    import textwrap
    from rnngen.targets import runnable_x86_levels
    if "x86-64-v2" not in runnable_x86_levels():
        pytest.skip("not an x86-64 machine")
    assert bench.PEER_LIMITS.keys() == {"x86-64-v2", "x86-64-v3", "x86-64-v4"}
    code = textwrap.dedent(f"""
        import os, sys, json
        sys.path.insert(0, {str(BENCH)!r})
        import bench
        limits = bench.hold_peers("x86-64-v2")
        mods = {{"torch": bench.peers.available("torch"), "jax": None}}
        print(json.dumps([limits, bench.peer_isa(mods), bench.sgemm_rate(64, 1)["kernel"]]))
    """)
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in bench.PEER_LIMITS["x86-64-v2"]}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout
    limits, isa, blas = json.loads(out.splitlines()[-1])
    assert limits["OPENBLAS_CORETYPE"] == "Nehalem" and blas == "Nehalem"
    if "torch cpu capability" in isa:
        assert isa["torch cpu capability"] == "DEFAULT"


def test_kernel_microbenchmark_builds_warning_free_and_reports(monkeypatch, capsys):
    """`make microbench` at every x86 level this CPU runs, and a wide-margin guard: at each
    level the packed kernel runs at least half the BLAS's rate (the BLAS held to the same
    level, in the same process), for blocks of rows and for single rows.  (Before the
    kernels were sized per instruction set, the AVX2 build ran at 2% of the BLAS.)"""
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("micro", None)
    import micro
    from rnngen.targets import runnable_x86_levels
    out = micro.main(["--reps", "1000"])      # compiles with -Wall -Wextra -Werror
    import re
    sections = out.split("\n== RNNGEN_MARCH=")[1:]
    assert len(sections) == max(len(runnable_x86_levels()), 1)
    for sec in sections:
        level = sec.split(":", 1)[0]
        assert re.search(r"kernel \w+ float \d+x\d+ double \d+x\d+; BLAS core \S+", sec), sec
        peak = re.search(r"peak ([\d.]+) GFLOP/s", sec)
        assert peak and float(peak.group(1)) > 0
        rows = re.findall(r"row \S+ by \S+ \(panel \d+ KB\): rnngen ([\d.]+), BLAS ([\d.]+) "
                          r"GFLOP/s", sec)
        assert len(rows) == 6 and all(float(a) > 0 for a, _ in rows)
        assert all(float(a) >= 0.5 * float(b) for a, b in rows), (level, rows)
        blocks = re.findall(r"block \d+x\d+ by \d+x\d+: rnngen ([\d.]+), BLAS ([\d.]+) GFLOP/s",
                            sec)
        assert len(blocks) == 5 and all(float(b) > 0 for _, b in blocks)
        assert all(float(a) >= 0.5 * float(b) for a, b in blocks), (level, blocks)
        m = re.search(r"barrier, 2 threads: rnngen (\d+) ns, libgomp (\d+) ns", sec)
        assert m and int(m.group(1)) >= 0 and int(m.group(2)) >= 0


@pytest.mark.parametrize("peer", ["numpy", "torch eager", "jax scan"])
@pytest.mark.parametrize("source", ["examples/layernorm_lstm.yaml", "examples/slstm.yaml",
                                    "examples/mgu.yaml", "examples/torch_gru.yaml",
                                    "examples/mingru.yaml", "examples/indrnn.yaml",
                                    "examples/layernorm_gru.yaml"])
def test_gallery_peers_compute_the_cell_of_the_yaml(bench, source, peer):
    """The peers of the cells of examples/ in `make bench`, written from the YAML
    equations, against rnngen in float64 at tiny sizes: forward, and dx where they train.
    Biases and gains get random values, so that their placement is checked too."""
    label, mod, pcls = next(p for p in bench.PEERS if p[0] == peer)
    if mod != "numpy":
        pytest.importorskip(mod)
    jax = bench.peers.available("jax") if mod == "jax" else None
    if jax is not None:
        x64 = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", True)
    try:
        import numpy as np
        T, B, D, H = 4, 3, 5, 6
        rng = np.random.default_rng(3)
        layer = bench.layer_class(source)(H, input_dim=D, return_sequences=True,
                                          dtype="float64", seed=0)
        ws = [w + rng.uniform(-0.3, 0.3, w.shape) for w in layer.get_weights()]
        layer.set_weights(ws)
        x, dy = rng.uniform(-1, 1, (B, T, D)), rng.uniform(-1, 1, (B, T, H))
        obj = pcls(type(layer).__name__, layer.params, dict(zip(layer.weight_names(), ws)))
        y = obj.forward(x)
        assert y.dtype == np.float64
        np.testing.assert_allclose(y, layer.forward(x), rtol=1e-12, atol=1e-13)
        if obj.trains:
            layer.forward(x)
            np.testing.assert_allclose(obj.train(x, dy), layer.backward(dy), rtol=1e-11,
                                       atol=1e-12)
    finally:
        if jax is not None:
            jax.config.update("jax_enable_x64", x64)


def test_dropin_rows_run_check_their_peers_and_render(monkeypatch, tmp_path, capsys):
    """benchmarks/bench_dropin.py at tiny sizes: every row times rnngen and its peer (after
    checking that both compute the same loss), the JSON holds the ratios and targets, and
    results_md renders them; peak_of sees a 64 MB allocation."""
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(BENCH))
    for m in ("bench", "peers", "bench_dropin", "results_md"):
        sys.modules.pop(m, None)
    import bench_dropin as bd
    import results_md
    monkeypatch.setattr(bd, "B", 3)
    monkeypatch.setattr(bd, "D", 4)
    monkeypatch.setattr(bd, "H", 5)
    monkeypatch.setattr(bd, "LENGTHS", (2, 6))
    monkeypatch.setattr(bd, "CUSTOM", {"MGU": (4, 3, 4, 5), "MGU B=1": (5, 1, 4, 5)})
    bd.main(["--rounds", "1", "--per-round", "1", "--no-memory", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "dropin.json").read_text())
    assert [r["row"] for r in doc["rows"]] == ["LSTM", "GRU", "MGU", "MGU B=1"]
    for r in doc["rows"]:
        assert r["ms"] > 0 and r["peer_ms"] > 0 and r["ratio"] == r["peer_ms"] / r["ms"]
        assert r["met"] == (r["ratio"] >= r["target"])
    assert "torch.nn.GRU" in capsys.readouterr().out
    md = "\n".join(results_md.dropin_section(doc, "###"))
    assert "### Drop-in modules" in md and "| GRU | torch.nn.GRU |" in md
    import numpy as np
    assert bd.peak_of(lambda: np.ones(8 << 20).sum()) > 50
