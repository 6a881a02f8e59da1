"""The command line (rnngen / python -m rnngen), each subcommand as a user runs it, the
line a compile prints, and the README's examples run as written."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

import rnngen
from rnngen import __main__ as cli
from rnngen.pipeline import ROOT, SPECS, generate
from rnngen.spec import load_spec

MGU = ROOT / "examples" / "mgu.yaml"
COMMANDS = ["list", "show", "build", "new", "cache", "demo", "generate", "check", "bench"]


def rnngen_cli(*args, cwd=None, env=None, timeout=300):
    """`python -m rnngen ARGS` in a subprocess: (exit status, stdout, stderr)."""
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.pop("RNNGEN_QUIET", None)      # the tests that want it quiet say so
    e.update(env or {})
    res = subprocess.run([sys.executable, "-m", "rnngen", *map(str, args)], cwd=cwd, env=e,
                         capture_output=True, text=True, timeout=timeout)
    return res.returncode, res.stdout, res.stderr


def unique_cell(tmp_path, name="Cli"):
    """MGU under a name (and text) no cache has seen: its first use compiles."""
    name = f"{name}{uuid.uuid4().hex[:8]}"
    p = tmp_path / f"{name.lower()}.yaml"
    p.write_text(MGU.read_text().replace("name: MGU", f"name: {name}"))
    return name, p


# -- help -------------------------------------------------------------------------------
def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rnngen")
    for c in COMMANDS:
        assert re.search(rf"^\s+{c}\s+\S", out, re.M), c     # each with a line of help


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rnngen {command}")
    assert len(out.split("\n\n")[1]) > 60           # a description, not just the usage line


def test_python_m_rnngen_is_the_same_program():
    rc, out, _ = rnngen_cli("--help")
    assert rc == 0 and out.startswith("usage: rnngen") and "show" in out


def test_unknown_options_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["list", "--bogus"])
    assert e.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


# -- list, show -----------------------------------------------------------------------------
def test_list_shows_builtins_and_given_specs(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for p in SPECS.glob("*.yaml"):
        assert f"{load_spec(p).name} (built-in, specs/{p.name})" in out
    deep = out[out.index("SimpleDeepRNN (built-in"):]
    assert "U_1..U_depth [output_dim, output_dim]" in deep and "depth=3" in deep
    assert cli.main(["list", str(MGU)]) == 0          # given specs: those alone
    out = capsys.readouterr().out
    assert "(built-in" not in out
    mgu = out[out.index(f"MGU ({MGU})"):]
    assert "W_f [input_dim, output_dim], U_f [output_dim, output_dim], b_f [output_dim]" in \
        " ".join(mgu.split())
    assert "parameters: init=glorot_uniform, inner_init=orthogonal, activation=tanh," in mgu


def test_list_of_a_broken_spec_reports_its_problems(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MGU.read_text().replace("output: h", "output: hhh"))
    assert cli.main(["list", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err
    # equation errors too, as load_cell finds them (issue 20, item 7: listed, exit 0)
    for eq, msg in (("h = (1 - f) * h + f * hh", "unknown name 'q'"),
                    ("f = inner_activation(", "unknown function 'tanhh'")):
        wrong = {"unknown name 'q'": "h = (1 - f) * h + f * hh + q",
                 "unknown function 'tanhh'": "f = tanhh("}[msg]
        bad.write_text(MGU.read_text().replace(eq, wrong))
        assert cli.main(["list", str(bad)]) == 2
        assert msg in capsys.readouterr().err


def test_show_prints_the_generated_c_and_cuda_source(capsys):
    spec = load_spec(MGU)
    assert cli.main(["show", str(MGU)]) == 0
    assert capsys.readouterr().out == generate(spec, None, "c")[2]
    assert cli.main(["show", str(MGU), "--backend", "cuda", "--param", "activation=relu"]) == 0
    out = capsys.readouterr().out
    assert out == generate(spec, {"activation": "relu"}, "cuda")[2]
    assert "__global__" in out and "activation=relu" in out
    assert cli.main(["show", str(MGU), "--header"]) == 0
    assert capsys.readouterr().out == generate(spec, None, "c")[1]


def test_show_finds_builtins_by_name_and_integer_params(capsys):
    assert cli.main(["show", "simpledeeprnn", "--param", "depth=2"]) == 0
    out = capsys.readouterr().out
    assert out == generate(load_spec(SPECS / "simple_deep_rnn.yaml"), {"depth": 2}, "c")[2]
    assert "depth=2" in out.split("*/")[0]


@pytest.mark.parametrize("args, message", [
    (["show", "no_such.yaml"], "no spec file 'no_such.yaml'"),
    (["show", str(MGU), "--param", "activation=softmax"], "softmax"),
    (["show", str(MGU), "--param", "nonsense=1"], "has no parameter(s) 'nonsense'"),
    (["show", str(MGU), "--param", "activation"], "--param takes NAME=VALUE"),
])
def test_show_reports_bad_arguments(args, message, capsys):
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


# -- build, new, and the compile line ----------------------------------------------------
def test_build_any_path_relative_to_the_current_directory(tmp_path):
    name, p = unique_cell(tmp_path)
    rc, out, err = rnngen_cli("build", p.name, cwd=tmp_path)
    assert rc == 0, err
    assert re.search(rf"built {name}\s+\({p.name}\) for c in [\d.]+ s", out)
    from rnngen.targets import cpu_target
    line = (f"compiling {name} (float32+float64, activation=tanh, inner_activation=sigmoid) "
            f"for {cpu_target().describe()} ... ")     # the target it is built for
    assert re.fullmatch(re.escape(line) + r"\d+\.\d s\n", err), err
    # built: found in the cache, nothing compiled, nothing printed
    rc, out, err = rnngen_cli("build", p.name, cwd=tmp_path)
    assert rc == 0 and err == "" and f"built {name}" in out
    # another parameter value is another library, and says so
    rc, out, err = rnngen_cli("build", p.name, "--param", "activation=relu", cwd=tmp_path,
                              env={"RNNGEN_QUIET": "1"})
    assert rc == 0 and err == "", err


def test_build_jax_prebuilds_the_handlers(tmp_path):
    """`rnngen build SPEC --jax`: the cell's XLA FFI handlers too, so that rnngen.jax's first
    call compiles nothing."""
    pytest.importorskip("jax")
    name, p = unique_cell(tmp_path, "Jax")
    rc, out, err = rnngen_cli("build", p.name, "--jax", cwd=tmp_path)
    assert rc == 0, err
    assert re.search(rf"built {name}\s+\({p.name}\) for c with its XLA FFI handlers", out)
    assert f"compiling {name}'s XLA FFI handlers" in err
    code = ("import jax, jax.numpy as jnp, rnngen.jax as rj\n"
            f"l = rj.Recurrent({p.name!r}, 3, 4)\n"
            "print(l.apply(l.init(jax.random.key(0)), jnp.ones((2, 5, 3))).shape)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300,
                         env={**{k: v for k, v in os.environ.items() if k != "RNNGEN_QUIET"},
                              "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0 and res.stdout.strip() == "(2, 4)", res.stderr
    assert "compiling" not in res.stderr, res.stderr


def test_the_first_use_of_a_layer_prints_one_line_unless_quiet(tmp_path, capfd, monkeypatch):
    name, p = unique_cell(tmp_path, "Loud")
    Cell = rnngen.load_cell(p)
    monkeypatch.delenv("RNNGEN_QUIET", raising=False)
    x = np.ones((2, 3, 4), np.float32)
    Cell(8, activation="linear", seed=0)(x)
    err = capfd.readouterr().err
    assert re.fullmatch(rf"compiling {name} \(float32\+float64, activation=linear, "
                        rf"inner_activation=sigmoid\) for native \(\w+ kernels: [^)]*\) "
                        rf"\.\.\. \d+\.\d s\n", err), err
    Cell(8, activation="linear", seed=1)(x)                   # the same library: silent
    assert capfd.readouterr().err == ""
    monkeypatch.setenv("RNNGEN_QUIET", "1")
    Cell(8, activation="softplus", seed=0)(x)                 # compiled, but quietly
    assert capfd.readouterr().err == ""


def test_new_writes_a_skeleton_that_builds_and_trains(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = f"Fresh{uuid.uuid4().hex[:6]}"
    assert cli.main(["new", name]) == 0
    path = tmp_path / f"{name.lower()}.yaml"
    assert f"wrote {path.name}" in capsys.readouterr().out
    text = path.read_text()
    assert f"name: {name}" in text and text.count("\n#") >= 5       # commented
    Cell = rnngen.load_cell(path.name)
    layer = Cell(16, return_sequences=True, seed=0)
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    y = layer(x)
    dx = layer.backward(np.ones_like(y))
    assert y.shape == (3, 5, 16) and np.isfinite(dx).all() and np.abs(dx).sum() > 0
    assert layer.weight_names() == ["W_g", "U_g", "b_g", "W_h", "U_h", "b_h"]
    # no overwriting, names must be identifiers, -o chooses the file
    assert cli.main(["new", name]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main(["new", "my-cell"]) == 2
    assert "identifier" in capsys.readouterr().err
    assert cli.main(["new", "Other", "-o", "sub.yaml"]) == 0
    assert load_spec(tmp_path / "sub.yaml").name == "Other"


# -- cache ---------------------------------------------------------------------------------
def test_cache_reports_size_and_failed_builds_and_clears(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RNNGEN_CACHE_DIR", str(cache))
    ok, bad = cache / ("gru-" + "a" * 20), cache / ("mgu-" + "b" * 20)
    for d in (ok, bad):
        d.mkdir(parents=True)
    (ok / "libgru.so").write_bytes(b"\0" * 1_500_000)
    (ok / "done").write_text("key\nsha256 x\n")
    (bad / "failed").write_text("$ cc ...\nerror: oops\n")
    (cache / "index").mkdir()
    (cache / "index" / "0123").write_text(f"{ok.name} gru\n")
    (cache / "notes.txt").write_text("not rnngen's")
    assert cli.main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"cache: {cache} (RNNGEN_CACHE_DIR)" in out
    assert "1 libraries built, 2 folders, 1.5 MB; index: 1 entries" in out
    assert f"failed builds (1; " in out and str(bad / "failed") in out
    assert cli.main(["cache", "--clear"]) == 0
    assert "cleared" in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]   # only its own entries
    assert cli.main(["cache"]) == 0
    assert "0 libraries built" in capsys.readouterr().out


# -- demo, bench, checkout-only commands ------------------------------------------------------
def test_demo_prints_medians(capsys):
    assert cli.main(["demo", "--calls", "3"]) == 0
    out = capsys.readouterr().out
    assert "the median of 3 calls" in out
    rows = [ln.split() for ln in out.splitlines()
            if ln.split()[:1] and ln.split()[0] in rnngen.layers.__dict__]
    assert [r[0] for r in rows] == ["SimpleRNN", "SimpleDeepRNN", "GRU", "LSTM", "JZS1",
                                    "JZS2", "JZS3"]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)


def test_bench_runs_the_benchmark_and_writes_results_md(tmp_path):
    rc, out, err = rnngen_cli("bench", "--cells", "GRU", "--configs", "3,2,4,16", "--peers",
                              "numpy", "--rounds", "1", "--per-round", "1", "--settle", "0",
                              "--out", tmp_path)
    assert rc == 0, err
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [r["cell"] for r in doc["results"]] == ["GRU"]
    md = (tmp_path / "RESULTS.md").read_text()
    assert "| GRU | 3,2,4,16 |" in " ".join(md.split()).replace("  ", " ")
    assert f"{doc['results'][0]['inference']['ratio']['numpy']:.2f}" in md


def test_results_md_runs_on_an_existing_json_and_links_the_chart(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("results_md", None)
    import results_md
    row = {"cell": "LSTM", "config": [100, 32, 128, 256], "notes": {},
           "inference": {"ms": {"rnngen": 6.2}, "gflops": {"rnngen": 406.0},
                         "ratio": {"nn.LSTM": 1.03, "numpy": 2.29}},
           "training": {"ms": {"rnngen": 20.73}, "gflops": {"rnngen": 364.0},
                        "ratio": {"nn.LSTM": 1.5}}}
    doc = {"machine": {"cpu": "Some CPU", "cores": 2, "python": "3.11",
                       "versions": {"torch": "2.13.0"}},
           "sgemm_gflops": {"scipy-openblas32": 458.0, "numpy": 440.0, "kernel": "SkylakeX"},
           "results": [row], "date": "2026-11-25 10:00:00",
           "targets": [{"target": "LSTM training >= 1.5x nn.LSTM", "met": True,
                        "worst": "worst 1.50 (LSTM [100, 32, 128, 256])"}]}
    res = tmp_path / "results"
    res.mkdir()
    (res / "results.json").write_text(json.dumps(doc))
    md = tmp_path / "RESULTS.md"
    assert results_md.main([str(res / "results.json"), "-o", str(md)]) == 0
    text = md.read_text()
    assert "No chart" in text and "2026-11-25 10:00:00" in text and "Some CPU" in text
    assert "| LSTM | 100,32,128,256 | 6.20 | 406     | 89%   | 1.03      | 2.29    |" in text
    assert "| LSTM | 100,32,128,256 | 20.73 | 364     | 79%   | 1.50      | -       |" in text
    assert "[ok] LSTM training >= 1.5x nn.LSTM: worst 1.50" in text
    (res / "ratios.png").write_bytes(b"png")
    results_md.main([str(res / "results.json"), "-o", str(md)])
    assert "](results/ratios.png)" in md.read_text()


@pytest.mark.parametrize("command", ["generate", "check", "bench"])
def test_checkout_commands_say_so_elsewhere(command, monkeypatch, capsys):
    monkeypatch.setattr(cli, "in_checkout", lambda: False)
    assert cli.main([command]) == 2
    assert "works in a checkout" in capsys.readouterr().err



# -- the README, as a newcomer runs it ----------------------------------------------------------
README = (ROOT / "README.md").read_text()


def readme_blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_readme_stays_short_and_inside_the_repository():
    assert len(README.encode()) < 12_000
    links = re.findall(r"\]\(([^)#]+)", README)
    assert links and not any(link.startswith(("..", "/")) for link in links)
    for link in links:
        if not link.startswith("http"):
            assert (ROOT / link).is_file(), link
    first = README.split("\n\n")[1]      # the two commands open it, as CI runs them
    assert "pip install -e '.[test,cuda,torch,examples]' && make PYTHON=.venv/bin/python" in first
    assert first.splitlines()[1].strip() == ".venv/bin/python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert first.splitlines()[1].strip() in ci


def test_readme_usage_example_runs(tmp_path):
    (code,) = [b for b in readme_blocks("python") if "Embedding" in b]
    res = subprocess.run([sys.executable, "-c", code + "\nprint(y.shape, emb.grads[0].shape)"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["(32,", "50,", "128)", "(1000,", "64)"]


def test_readme_walkthrough_runs_as_written(tmp_path):
    (spec,) = readme_blocks("yaml")
    # the walkthrough's file is examples/mgu.yaml, less its comment line
    assert spec == "".join(ln for ln in MGU.read_text().splitlines(True)
                           if not ln.startswith("#"))
    (code,) = [b for b in readme_blocks("python") if "load_cell" in b]
    (tmp_path / "mgu.yaml").write_text(spec)
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[(8, 32), (32, 32), (32,), (8, 32), (32, 32), (32,)]"
    # and from the root of a checkout, as the README says
    res = subprocess.run([sys.executable, "-c", code.replace('"mgu.yaml"',
                                                              '"examples/mgu.yaml"')],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr


def test_readme_torch_example_runs():
    pytest.importorskip("torch")
    (code,) = [b for b in readme_blocks("python") if "rnngen.torch" in b]
    code += "\nprint(tuple(y.shape), rnn.W_f.grad.shape)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["(16,", "64)", "torch.Size([8,", "64])"]


def test_readme_lists_every_command():
    section = README[README.index("## Command line"):README.index("## Performance")]
    for c in COMMANDS:
        assert re.search(rf"`(rnngen )?{c}\b", section), c


def test_command_line_mistakes_are_messages_not_tracebacks(tmp_path, monkeypatch, capsys):
    """Issue 20, item 8: each was a raw traceback (or a wrong refusal) before."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    cases = [
        (["new", "Foo", "-o", "missing/dir/foo.yaml"], "its directory does not exist"),
        (["new", "Foo", "-o", "d", "--force"], "give -o a file path, not a directory"),
        (["list", "loop1"], "no spec file 'loop1'"),
        (["show", str(MGU), "--param", "activation=*a"], "'*a' is not a value"),
    ]
    for argv, msg in cases:
        assert cli.main(argv) == 2, argv
        assert msg in capsys.readouterr().err, argv
    # 1e-3 is a number (YAML 1.1 reads it as text)
    assert cli.main(["show", str(ROOT / "examples" / "layernorm_lstm.yaml"), "--param",
                     "eps=1e-3"]) == 0
    assert "eps=0.001" in capsys.readouterr().out
    long = tmp_path / "long.yaml"
    long.write_text(MGU.read_text().replace("name: MGU", "name: " + "A" * 5000))
    assert cli.main(["list", str(long)]) == 2
    assert "the name has 5000 characters; at most 100" in capsys.readouterr().err


def test_build_for_cuda_needs_nvcc_not_a_gpu(tmp_path, capsys, monkeypatch):
    """Issue 20, item 12: `rnngen build --backend cuda` refused on a machine with nvcc and no
    GPU; prebuilding needs only the compiler and cuBLAS."""
    from rnngen.backends import cublas_dirs, nvcc_path
    from rnngen.errors import DeviceError
    try:
        nvcc_path(), cublas_dirs()
    except DeviceError as e:
        pytest.skip(f"no CUDA toolchain: {e}")
    monkeypatch.setenv("RNNGEN_CACHE_DIR", str(tmp_path / "cache"))
    assert cli.main(["build", str(MGU), "--backend", "cuda"]) == 0, capsys.readouterr().err
    assert "built MGU" in capsys.readouterr().out
    assert list((tmp_path / "cache").glob("mgu_cuda-*/libmgu_cuda.so"))
