"""benchmarks/RESULTS.md from the benchmark's JSON.

`make bench` (benchmarks/bench.py) calls this at the end of a run; on an existing JSON:

    python benchmarks/results_md.py [benchmarks/results/*/results.json ...] [-o benchmarks/RESULTS.md]

`make bench-gpu` (benchmarks/bench_gpu.py) too, for its gpu.json (rendered by render_gpu):

    python benchmarks/results_md.py benchmarks/results/gpu.json -o benchmarks/RESULTS-GPU.md

The chart (ratios.png beside the JSON) is linked when it exists.  Only the JSON is read:
this needs neither rnngen's libraries nor the peers.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
PEER_ORDER = ["nn.LSTM", "torch eager", "jax scan", "numpy", "rnngen.jax"]   # bench.py's PEERS


def peer_names(results) -> list[str]:
    """The peers that appear in any row: bench.py's order, then any others."""
    seen = []
    for r in results:
        for mode in ("inference", "training"):
            seen += [p for p in r[mode]["ratio"] if p not in seen]
        seen += [p for p in r.get("notes", {}) if p not in seen]
    return [p for p in PEER_ORDER if p in seen] + [p for p in seen if p not in PEER_ORDER]


def table(results, mode: str, sgemm: float, peers: list[str]) -> str:
    """One mode's table, as bench.py prints it: ms, GFLOP/s, fraction of SGEMM, then
    peer time / rnngen time per peer ('-': not run for that cell)."""
    head = ["cell", "T,B,D,H", "ms", "GFLOP/s", "SGEMM"] + [f"x {p}" for p in peers]
    rows = []
    for r in results:
        m = r[mode]
        rows.append([r["cell"], ",".join(map(str, r["config"])), f"{m['ms']['rnngen']:.2f}",
                     f"{m['gflops']['rnngen']:.0f}", f"{m['gflops']['rnngen'] / sgemm:.0%}"]
                    + [f"{m['ratio'][p]:.2f}" if p in m["ratio"] else "-" for p in peers])
    widths = [max(len(h), *(len(c[i]) for c in rows)) for i, h in enumerate(head)]

    def fmt(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [fmt(c) for c in rows])


def busyness(doc: dict) -> Optional[str]:
    """How busy and how fast the machine was during the run, where the JSON says (runs
    since the LayerNorm LSTM and sLSTM rows): SGEMM before and after, load averages."""
    sg, ld = doc.get("sgemm_measured"), doc.get("load") or {}
    per_case = sorted(r["load"][0] for r in doc["results"] if r.get("load"))
    if not sg and not per_case:
        return None
    text = []
    if sg:
        text.append(f"SGEMM measured {sg[0]:.0f} GFLOP/s before the timings and {sg[1]:.0f} "
                    f"after; the fractions below use the higher")
    if per_case:
        text.append(f"the load average over one minute (every process on the machine, "
                    f"this run's too) was {per_case[0]:.2f} to {per_case[-1]:.2f} at the "
                    f"start of the {len(per_case)} rows, median "
                    f"{per_case[len(per_case) // 2]:.2f}"
                    + (f", and {ld['after'][0]:.2f} at the end" if ld.get("after") else ""))
    return ("; ".join(text) + ". On a shared machine, rows that ran while other processes "
            "were busy are slower, by different amounts for different implementations: the "
            "ratios within a row, whose calls are interleaved, are steadier than its times, "
            "but not immune.")


COLUMNS = (
    "float32, every implementation on all cores. T steps, B samples, D inputs, "
    "H = output_dim. Columns: rnngen's median time in ms; its GFLOP/s, counting "
    "matrix-product FLOPs only (forward `2*T*B*H*(D*nW + H*nU)`, training 3x that); that "
    "rate as a fraction of the SGEMM rate; then peer time / rnngen time for each peer "
    "(> 1: rnngen is faster; `-`: not a peer of that cell, or not run). Inference is "
    "forward only; training is the forward that saves, then backward with full BPTT. "
    "How the peers are run and checked: the docstring of `benchmarks/bench.py`.")


def section(doc: dict, source: str, chart: Optional[str], level: str = "##") -> list[str]:
    """One run: its machine, target and peers' limits, then both tables and targets."""
    results, m, rates = doc["results"], doc["machine"], doc["sgemm_gflops"]
    sgemm = rates["scipy-openblas32"]
    peers = peer_names(results)
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    march = m.get("rnngen_march", "native")
    out = [f"{level} {m['cpu']}: RNNGEN_MARCH={march}", "",
           f"From `{source}` (a `make bench` run of {doc.get('date', 'an unknown date')}). "
           f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; SGEMM (2048³, "
           f"float32) {sgemm:.0f} GFLOP/s through scipy-openblas32 "
           f"({rates.get('kernel', '?')} kernel), numpy's BLAS {rates.get('numpy', 0):.0f}; "
           f"peers: {versions or 'unknown'}.", ""]
    if m.get("target"):
        limits = ", ".join(f"`{k}={v}`" for k, v in m.get("peer_limits", {}).items())
        seen = ", ".join(f"{k}: {v}" for k, v in m.get("peer_isa", {}).items())
        out += [f"rnngen built for {m['target']}; peers held to the same level by "
                f"{limits or 'nothing (native: every implementation uses what the CPU has)'}"
                + (f" (they report {seen})" if seen else "") + ".", ""]
    busy = busyness(doc)
    if busy:
        out += [busy, ""]
    if chart:
        out += [f"![peer time / rnngen time, per cell and size]({chart})", ""]
    else:
        out += ["No chart: `make bench` writes `ratios.png` beside the run's JSON (with "
                "matplotlib, from `pip install -e '.[bench]'`) and links it here.", ""]
    sub = level + "#"
    out += [f"{sub} Inference", "", table(results, "inference", sgemm, peers), "",
            f"{sub} Training (forward + backward)", "", table(results, "training", sgemm, peers),
            ""]
    if doc.get("targets"):
        out += [f"{sub} Targets", "", "The performance targets, as the script checks them:", ""]
        out += [f"    [{'ok' if t['met'] else 'MISSED'}] {t['target']}: {t['worst']}"
                for t in doc["targets"]]
        out.append("")
    notes = sorted({f"{p}: {n}" for r in results for p, n in r.get("notes", {}).items()})
    if notes:
        out += [f"{sub} Notes", ""] + [f"- {n}" for n in notes] + [""]
    if doc.get("dropin"):
        out += dropin_section(doc["dropin"], sub)
    if doc.get("keras"):
        out += keras_section(doc["keras"], sub)
    return out


def keras_section(d: dict, sub: str) -> list[str]:
    """benchmarks/bench_keras.py's rows (keras.json beside the run's results.json)."""
    out = [f"{sub} Keras 3 layers (training, float32)", "",
           f"From `benchmarks/bench_keras.py` ({d['date']}, keras {d['keras']}, rnngen for "
           f"{d['target']}). One training call: `model.train_on_batch` of Input -> layer -> "
           f"Dense(1), rnngen.keras against keras.layers with the same weights on the same "
           f"backend; ratio = Keras time / rnngen time.", "",
           "| backend | cell | T,B,D,H | rnngen.keras ms | keras.layers ms | ratio | target |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in d["rows"]:
        tgt = d.get("targets", {}).get(r["backend"])
        verdict = "-" if tgt is None else f">= {tgt}x {'ok' if r['ratio'] >= tgt else 'MISSED'}"
        out.append(f"| {r['backend']} | {r['cell']} | {','.join(map(str, r['config']))} | "
                   f"{r['ms']['rnngen']:.1f} | {r['ms']['keras']:.1f} | {r['ratio']:.2f}x | "
                   f"{verdict} |")
    return out + [""]


def dropin_section(d: dict, sub: str) -> list[str]:
    """benchmarks/bench_dropin.py's rows (dropin.json beside the run's results.json)."""
    out = [f"{sub} Drop-in modules (training, float32)", "",
           f"From `benchmarks/bench_dropin.py` ({d['date']}, torch {d['torch']}, rnngen for "
           f"{d['target']}). One training call: forward and backward of a loss on the outputs "
           f"(and h_n); ratio = peer time / rnngen time. Peak: what the first training call, "
           f"then the second, adds to the peak resident set of a fresh process (rnngen / "
           f"peer).", "",
           "| rnngen | peer | shapes | rnngen ms | peer ms | ratio | target | "
           "peak MB, 1st call | 2nd call |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in d["rows"]:
        peak = (" | ".join(f"{a:.0f} / {b:.0f}" for a, b in zip(r["peak_mb"], r["peer_peak_mb"]))
                if "peak_mb" in r else "- | -")
        out.append(f"| {r['row']} | {r['peer']} | {r['shape']} | {r['ms']:.1f} | "
                   f"{r['peer_ms']:.1f} | {r['ratio']:.2f}x | >= {r['target']}x "
                   f"{'ok' if r['met'] else 'MISSED'} | {peak} |")
    return out + [""]


def render(doc: dict, source: str, chart: Optional[str]) -> str:
    """The markdown of one run (see render_runs)."""
    if "gpu" in doc:
        return render_gpu(doc, source, chart)
    return render_runs([(doc, source, chart)])


def render_runs(runs: list, archived: tuple = ()) -> str:
    """The markdown of several `make bench` runs, ``runs`` = [(doc, source, chart)], one
    section each (e.g. one per instruction-set level): where they come from, the
    machine and target, the chart, both tables, targets."""
    out = ["# Benchmark results", "",
           "Generated by `benchmarks/results_md.py`; `make bench` rewrites this file from the "
           "runs under `benchmarks/results/` (one folder per `RNNGEN_MARCH`; the JSON and "
           "charts are not in the repository). Each section names its CPU and the "
           "instruction set rnngen and its peers ran at.", "", COLUMNS, ""]
    if archived:
        out += ["Earlier runs, kept as they were written: "
                + ", ".join(f"[{a}]({a})" for a in archived) + ".", ""]
    for doc, source, chart in runs:
        out += section(doc, source, chart)
    return "\n".join(out)


GPU_PEER_ORDER = ["cuDNN", "torch eager", "torch.compile", "jax scan"]   # bench_gpu.py's


def render_gpu(doc: dict, source: str, chart: Optional[str]) -> str:
    """The markdown of a `make bench-gpu` run (benchmarks/bench_gpu.py's gpu.json): the
    same tables and targets as render(), the GPU's SGEMM rate, torch.compile's compile
    times."""
    results, m = doc["results"], doc["machine"]
    sgemm = doc["sgemm_gflops"]["sgemm"]
    seen = peer_names(results)
    peers = [p for p in GPU_PEER_ORDER if p in seen] + [p for p in seen
                                                         if p not in GPU_PEER_ORDER]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    gpu = m.get("gpu", {})
    gpu_txt = (f"{gpu['name']} (compute capability {gpu.get('capability', '?')}, "
               f"{gpu.get('memory_gib', '?')} GiB, {gpu.get('sms', '?')} SMs; CUDA "
               f"{gpu.get('torch_cuda', '?')} and cuDNN {gpu.get('cudnn', '?')} in torch)"
               if gpu else m.get("device", "unknown"))
    out = [
        "# GPU benchmark results",
        "",
        f"Generated by `benchmarks/results_md.py` from `{source}` (a `make bench-gpu` run of "
        f"{doc.get('date', 'an unknown date')}); `make bench-gpu` rewrites this file.",
        "",
    ]
    if doc.get("smoke"):
        out += ["**A `--smoke` run on the CPU (rnngen's cuda-emulated backend): it tests the "
                "code path, its figures mean nothing.**", ""]
    out += [
        f"Device: {gpu_txt}; host: {m['cpu']}, {m['cores']} cores, Python {m['python']}; "
        f"SGEMM ({doc['sgemm_gflops'].get('how', '?')}) {sgemm:.0f} GFLOP/s; "
        f"{versions or 'versions unknown'}.",
        "",
        "float32, every product in full float32 (no TF32). T steps, B samples, D inputs, "
        "H = output_dim. Columns: rnngen's (`backend=\"cuda\"`) median time in ms, each call "
        "between two device synchronizations; its GFLOP/s, counting matrix-product FLOPs only "
        "(forward `2*T*B*H*(D*nW + H*nU)`, training 3x that); that rate as a fraction of the "
        "SGEMM rate; then peer time / rnngen time for each peer (> 1: rnngen is faster; `-`: "
        "not a peer of that cell, or not run). cuDNN (`torch.nn.LSTM`/`nn.GRU`) is a peer of "
        "LSTM-sigmoid and TorchGRU only, the cells it computes. How the peers are run and "
        "checked: the docstring of `benchmarks/bench_gpu.py`.",
        "",
    ]
    if chart:
        out += [f"![peer time / rnngen time, per cell and size]({chart})", ""]
    else:
        out += ["No chart: `make bench-gpu` writes `benchmarks/results/gpu.png` (with "
                "matplotlib) and links it here.", ""]
    out += ["## Inference", "", table(results, "inference", sgemm, peers), "",
            "## Training (forward + backward)", "", table(results, "training", sgemm, peers),
            ""]
    if doc.get("targets"):
        out += ["## Targets", "", "Issue 11's GPU targets, as the script checks them:", ""]
        out += [f"    [{'ok' if t['met'] else 'MISSED'}] {t['target']}: {t['worst']}"
                for t in doc["targets"]]
        out.append("")
    comp = [f"{r['cell']} {','.join(map(str, r['config']))}: {r['compile_s']['inference']:.1f}"
            f" s (inference), {r['compile_s']['training']:.1f} s (training)"
            for r in results if r.get("compile_s")]
    if comp:
        out += ["## torch.compile's compile time", "",
                "On the first call of each case (not in the medians):", ""]
        out += [f"- {c}" for c in comp] + [""]
    notes = sorted({f"{p}: {n}" for r in results for p, n in r.get("notes", {}).items()})
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def write(json_paths, md_path: Path) -> Path:
    """Write ``md_path`` from the JSON at ``json_paths`` (one path, or a list of `make
    bench` runs: one section each) and their charts where there (beside each JSON:
    ratios.png for `make bench`, the JSON's name with .png for `make bench-gpu`)."""
    if isinstance(json_paths, (str, Path)):
        json_paths = [json_paths]
    md_path = Path(md_path)

    def rel(p: Path) -> str:
        return Path(os.path.relpath(p.resolve(), md_path.parent.resolve())).as_posix()
    runs = []
    for jp in map(Path, json_paths):
        doc = json.loads(jp.read_text())
        if (jp.parent / "dropin.json").is_file() and "gpu" not in doc:
            doc["dropin"] = json.loads((jp.parent / "dropin.json").read_text())
        if (jp.parent / "keras.json").is_file() and "gpu" not in doc:
            doc["keras"] = json.loads((jp.parent / "keras.json").read_text())
        png = jp.with_suffix(".png") if "gpu" in doc else jp.parent / "ratios.png"
        runs.append((doc, rel(jp), rel(png) if png.is_file() else None))
    if len(runs) == 1 and "gpu" in runs[0][0]:
        text = render_gpu(*runs[0])
    else:
        archived = tuple(sorted(p.name for p in md_path.parent.glob("RESULTS-20*.md")))
        text = render_runs(runs, archived)
    md_path.write_text(text)
    return md_path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="*",
                    help="the benchmark's JSON files (default: benchmarks/results/*/results.json)")
    ap.add_argument("-o", "--output", default=str(HERE / "RESULTS.md"),
                    help="the markdown to write (default: benchmarks/RESULTS.md)")
    a = ap.parse_args(argv)
    paths = a.json or sorted((HERE / "results").glob("*/results.json"), reverse=True)
    if not paths:
        ap.error("no JSON given and none under benchmarks/results/*/")
    print(f"wrote {write(paths, Path(a.output))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
