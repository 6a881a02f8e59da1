"""Every instruction-set level this machine can run, by name (RNNGEN_MARCH), and aarch64.

* The target table: each x86 level gets its micro-kernel (x86-64-v2: sse2, v3: avx2, v4:
  avx512), the flags and the cache key name it, bad values are refused.
* Per level (and the portable fallback): the seven seed cells and two user specs (MGU; the
  LayerNorm LSTM, with mean) against the own float64 reference: forward, and every gradient
  (dx and each weight) as directional derivatives of the reference; float32 against float64;
  B = 1, 3 and 16 on two threads (the unit split at 1 and 3, the batch split at 16, checked
  through forward's note), masks at B > 1; H = 37, so thread slices and panels end partial.
* The micro-kernels alone (tests/c/check_kernels.c, odd sizes against a triple loop) at
  every level, and for aarch64 NEON under qemu-user; the generated C of every built-in cell
  compiles for aarch64 with -Werror.  The aarch64 checks are skipped where the cross
  compiler or qemu is missing, unless RNNGEN_REQUIRE_AARCH64=1 (CI sets it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import reference as ref
import rnngen
from rnngen import build, layers, targets
from rnngen.errors import BuildError
from rnngen.pipeline import EXAMPLES, GENERATED, compile_cell
from rnngen.render import TEMPLATES

HERE = Path(__file__).resolve().parent
LEVELS = targets.runnable_x86_levels()
KERNEL_OF = {"x86-64-v2": "sse2", "x86-64-v3": "avx2", "x86-64-v4": "avx512"}
T, D, H = 5, 7, 37
SEED = ["SimpleRNN", "SimpleDeepRNN", "GRU", "LSTM", "JZS1", "JZS2", "JZS3"]
USER = ["mgu", "layernorm_lstm"]
# (march, kernel): every x86 level, and the portable fallback on the native one
VARIANTS = [(m, "auto") for m in LEVELS] + [("native", "portable")]
REQUIRE_AARCH64 = os.environ.get("RNNGEN_REQUIRE_AARCH64") == "1"


# -- the table and the key -----------------------------------------------------------------
@pytest.mark.skipif(not LEVELS, reason="not an x86-64 machine")
def test_each_x86_level_gets_its_kernel_and_flags():
    assert LEVELS[:2] == ["x86-64-v2", "x86-64-v3"] or LEVELS == ["x86-64-v2"]
    for march in LEVELS:
        t = targets.cpu_target(march, "auto")
        assert t.kernel == KERNEL_OF[march] and t.flags[0] == f"-march={march}"
        assert ("-mprefer-vector-width=512" in t.flags) == (t.kernel == "avx512")
        assert t.mr_f32 > 0 and t.panel_f32 * 4 == t.panel_f64 * 8 == 2 * t.vector_bytes
        assert march in t.describe() and t.kernel in t.describe()
    p = targets.cpu_target("native", "portable")
    assert p.kernel == "portable" and "-DRNNGEN_KERNEL_PORTABLE" in p.flags


def test_the_register_blocks_fit_the_registers():
    """Accumulators, the panel's vectors and a broadcast within the register file (16 on
    avx2 and sse2, which without FMA also needs a temporary; 32 on avx512 and neon)."""
    regs = {"avx512": 32, "avx2": 16, "sse2": 15, "neon": 32}
    for march in LEVELS:
        t = targets.cpu_target(march, "auto")
        for mr, panel, size in ((t.mr_f32, t.panel_f32, 4), (t.mr_f64, t.panel_f64, 8)):
            nv = panel * size // t.vector_bytes
            assert mr * nv + nv + 1 <= regs[t.kernel], (march, mr, panel)


@pytest.mark.parametrize("bad", ["", "native -fplugin=x", "-O0", "x86-64;rm", "a" * 80, "v3\n"])
def test_march_values_that_are_not_one_are_refused(bad, monkeypatch):
    monkeypatch.setenv("RNNGEN_MARCH", bad)
    if bad == "":   # unset: native
        assert targets.cpu_target().march == "native"
        return
    with pytest.raises(BuildError, match="RNNGEN_MARCH must be a -march value"):
        targets.cpu_target()


def test_an_unknown_march_or_kernel_is_refused(monkeypatch):
    with pytest.raises(BuildError, match="refuses the target -march=no-such-cpu"):
        targets.cpu_target("no-such-cpu", "auto")
    monkeypatch.setenv("RNNGEN_KERNEL", "avx9")
    with pytest.raises(BuildError, match="RNNGEN_KERNEL must be one of auto, portable"):
        targets.cpu_target()


@pytest.mark.skipif(not LEVELS or "x86-64-v4" in LEVELS, reason="needs x86 without AVX-512")
def test_a_level_this_cpu_cannot_run_is_refused():
    with pytest.raises(BuildError, match="lacks .*avx512f.*illegal instruction"):
        targets.cpu_target("x86-64-v4", "auto")


@pytest.mark.skipif(len(LEVELS) < 2, reason="one x86 level")
def test_the_key_and_the_compile_line_name_the_target(monkeypatch, tmp_path):
    keys, lines = set(), set()
    for march in LEVELS:
        monkeypatch.setenv("RNNGEN_MARCH", march)
        keys.add(build.build_key("c", "h", "s"))
        line = build.compile_command(tmp_path / "a.c", tmp_path / "a.so", tmp_path)
        assert f"-march={march}" in line and "-march=native" not in line
        lines.add(" ".join(line))
    assert len(keys) == len(lines) == len(LEVELS)


# -- the cells at every level --------------------------------------------------------------
def _sig(v):
    return 1 / (1 + np.exp(-v))


def _ln(a, eps, gain):
    mu = a.mean(-1, keepdims=True)
    return gain * (a - mu) / np.sqrt(((a - mu) ** 2).mean(-1, keepdims=True) + eps)


def _scan(step, nstates, W, x, mask):
    """Run step(x_t, W, *states) -> (new states, output) with the seed's masking."""
    B = x.shape[0]
    states = [np.zeros((B, H))] * nstates
    out, ys = np.zeros((B, H)), []
    for t in range(x.shape[1]):
        new, y = step(x[:, t], W, *states)
        keep = np.ones((B, 1), bool) if mask is None else mask[:, t:t + 1]
        states = [np.where(keep, n, s) for n, s in zip(new, states)]
        out = np.where(keep, y, out)
        ys.append(out)
    return np.stack(ys, 1)


def _mgu(xt, W, h):   # examples/mgu.yaml, written from its equations
    W_f, U_f, b_f, W_h, U_h, b_h = W
    f = _sig(xt @ W_f + b_f + h @ U_f)
    hn = (1 - f) * h + f * np.tanh(xt @ W_h + b_h + (f * h) @ U_h)
    return [hn], hn


def _layernorm_lstm(xt, W, h, c, eps=1e-5):   # Ba et al. 2016, eqs. 20-22
    (W_f, W_i, W_o, W_g, U_f, U_i, U_o, U_g, a1_f, a1_i, a1_o, a1_g, a2_f, a2_i, a2_o, a2_g,
     b_f, b_i, b_o, b_g, a3, b3) = W
    cat = lambda *a: np.concatenate(a, -1)  # noqa: E731
    pre = (_ln(h @ cat(U_f, U_i, U_o, U_g), eps, cat(a1_f, a1_i, a1_o, a1_g))
           + _ln(xt @ cat(W_f, W_i, W_o, W_g), eps, cat(a2_f, a2_i, a2_o, a2_g))
           + cat(b_f, b_i, b_o, b_g))
    f, i, o, g = (pre[:, k * H:(k + 1) * H] for k in range(4))
    cn = _sig(f) * c + _sig(i) * np.tanh(g)
    hn = _sig(o) * np.tanh(_ln(cn, eps, a3) + b3)
    return [hn, cn], hn


def _cell(name):
    """(layer class, reference y(W, x, mask))."""
    if name in SEED:
        return getattr(layers, name), lambda W, x, m: ref.run(name, ref.DEFAULTS[name], W, x, m)[0]
    step, nstates = {"mgu": (_mgu, 1), "layernorm_lstm": (_layernorm_lstm, 2)}[name]
    return rnngen.load_cell(EXAMPLES / f"{name}.yaml"), lambda W, x, m: _scan(step, nstates, W,
                                                                              x, m)


@pytest.fixture
def target(request, monkeypatch):
    march, kernel = request.param
    monkeypatch.setenv("RNNGEN_MARCH", march)
    monkeypatch.setenv("RNNGEN_KERNEL", kernel)
    old = rnngen.get_num_threads()
    rnngen.set_num_threads(2)
    yield targets.cpu_target()
    rnngen.set_num_threads(old)


# every cell at every x86 level; the portable kernel (the BLAS per panel, no vector code
# of its own) with three of them
CELL_CASES = [(v, n) for v in VARIANTS for n in SEED + USER
              if v[1] == "auto" or n in ("LSTM", "GRU", "layernorm_lstm")]


@pytest.mark.parametrize("target,name", CELL_CASES, indirect=["target"],
                         ids=[f"{m}-{k}-{n}" for (m, k), n in CELL_CASES])
def test_every_cell_against_the_reference_at_every_level(target, name):
    cls, reference = _cell(name)
    rng = np.random.default_rng(7)
    layer = cls(H, input_dim=D, return_sequences=True, dtype="float64", seed=3)
    W = [w + rng.normal(scale=0.25, size=w.shape) for w in layer.get_weights()]
    layer.set_weights(W)
    l32 = cls(H, input_dim=D, return_sequences=True, seed=3)
    l32.set_weights(W)
    for B in (1, 3, 16):
        x = rng.normal(size=(B, T, D))
        mask = None if B == 1 else rng.random((B, T)) > 0.3
        if mask is not None:
            mask[0] = True
        y = layer(x, mask=mask)
        np.testing.assert_allclose(y, reference(W, x, mask), rtol=1e-10, atol=1e-12,
                                   err_msg=f"forward B={B}")
        dy = rng.normal(size=y.shape)
        dx = layer.backward(dy)
        grads = [g.copy() for g in layer.grads]

        def loss(W=W, x=x):
            return float(np.sum(reference(W, x, mask) * dy))
        eps = 1e-6
        for k, g in enumerate([dx] + grads):   # one directional derivative each
            v = rng.normal(size=g.shape)
            if k == 0:
                fd = (loss(x=x + eps * v) - loss(x=x - eps * v)) / (2 * eps)
            else:
                Wp = [w + eps * v if j == k - 1 else w for j, w in enumerate(W)]
                Wm = [w - eps * v if j == k - 1 else w for j, w in enumerate(W)]
                fd = (loss(W=Wp) - loss(W=Wm)) / (2 * eps)
            an = float(np.sum(g * v))
            assert abs(an - fd) <= 1e-6 * (abs(fd) + 1), (B, k, an, fd)
        # float32 against float64
        y32 = l32(x.astype(np.float32), mask=mask)
        np.testing.assert_allclose(y32, y, rtol=1e-4, atol=2e-5, err_msg=f"float32 B={B}")
        dx32 = l32.backward(dy.astype(np.float32))
        for a, b in zip([dx32] + l32.grads, [dx] + grads):
            scale = np.abs(b).max() + 1
            assert np.abs(a - b).max() <= 2e-4 * scale
    assert layer._kernel.micro_kernel.startswith(target.kernel + " ")   # built for the level
    assert l32._kernel is layer._kernel


@pytest.mark.parametrize("target", VARIANTS, indirect=True, ids=[f"{m}-{k}" for m, k in VARIANTS])
def test_both_thread_splits_run_at_every_level(target):
    """Two threads: B = 16 takes the batch split (forward notes one slice), B = 1 and 3 the
    unit split (one slice per thread); the library reports the level's kernel."""
    k = compile_cell(layers.LSTM.spec)
    assert k.micro_kernel.split()[0] == target.kernel
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=w.dims(D, H)) for w in k.ir.weights]
    for B, slices in ((1, 2), (3, 2), (16, 1)):
        save = k.forward(rng.normal(size=(B, T, D)), None, ws, H, True)[1]
        assert save[-3] == slices, B


# -- the micro-kernels alone, and aarch64 --------------------------------------------------
@pytest.mark.parametrize("march,kernel", VARIANTS)
def test_micro_kernels_against_a_triple_loop(march, kernel, tmp_path):
    t = targets.cpu_target(march, kernel)
    exe = tmp_path / "check"
    subprocess.run(build.compile_command(HERE / "c" / "check_kernels.c", exe, TEMPLATES,
                                         shared=False, target=t), check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout
    assert out.stdout.startswith(f"kernel {t.kernel}:") and " 0 mismatches" in out.stdout


def _tool(name):
    path = shutil.which(name)
    if path is None:
        if REQUIRE_AARCH64:
            pytest.fail(f"{name} is missing (RNNGEN_REQUIRE_AARCH64=1): "
                        f"apt-get install gcc-aarch64-linux-gnu qemu-user")
        pytest.skip(f"no {name}")
    return path


AARCH64_FLAGS = ["-march=armv8.2-a"]


def _aarch64_command(cc, src, out, *extra):
    """The cross compiler with the kernels' own flags (build.BASE_CFLAGS) for aarch64."""
    return [cc, *build.BASE_CFLAGS, *AARCH64_FLAGS, *extra, str(src), "-o", str(out),
            f"-I{GENERATED}", f"-I{TEMPLATES}", f"-I{build.blas_paths()[0]}", "-lm"]


def test_aarch64_neon_kernels_under_qemu(tmp_path):
    cc, qemu = _tool("aarch64-linux-gnu-gcc"), _tool("qemu-aarch64")
    exe = tmp_path / "check"
    subprocess.run(_aarch64_command(cc, HERE / "c" / "check_kernels.c", exe, "-static"),
                   check=True)
    out = subprocess.run([qemu, str(exe)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("kernel neon: float 6x16, double 6x8;")
    assert " 0 mismatches" in out.stdout


def test_generated_c_compiles_for_aarch64_warning_free(tmp_path):
    cc = _tool("aarch64-linux-gnu-gcc")
    sources = sorted(GENERATED.glob("*.c"))
    assert len(sources) >= 7
    for src in sources:
        res = subprocess.run(_aarch64_command(cc, src, tmp_path / (src.stem + ".o"), "-c"),
                             capture_output=True, text=True)
        assert res.returncode == 0, f"{src.name}:\n{res.stderr}"
        syms = subprocess.run([_tool("aarch64-linux-gnu-nm"), str(tmp_path / (src.stem + ".o"))],
                              capture_output=True, text=True, check=True).stdout
        assert "_kernel" in syms and "forward_f32" in syms
