"""The kernels' own float exp, tanh and log (templates/rnngen_runtime.h, vectorisable
where libm's are scalar calls) follow IEEE as numpy and torch do (issue 20, item 4): within
2 ulp over their ranges, overflow to inf, gradual underflow through the subnormals to 0,
NaN and the infinities as libm; checked in vectorised loops at every x86 level
(tests/c/check_math.c), and through a cell against float64.  Before, exp was clamped:
2^-126 below -87.34 and 2.4e38 above 88.38."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

import rnngen
from rnngen import build, targets
from rnngen.render import TEMPLATES
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEVELS = targets.runnable_x86_levels() or ["native"]


@pytest.mark.parametrize("march", LEVELS)
def test_exp_tanh_log_are_ieee_at_every_level(march, tmp_path):
    t = targets.cpu_target(march, "auto")
    exe = tmp_path / "check_math"
    subprocess.run(build.compile_command(HERE / "c" / "check_math.c", exe, TEMPLATES,
                                         shared=False, target=t), check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout
    assert out.stdout.startswith(f"kernel {t.kernel}:") and " 0 failures" in out.stdout


SPEC = """
name: Softish
params: {init: glorot_uniform}
weights:
  W: {shape: [input_dim, output_dim], init: init}
  U: {shape: [output_dim, output_dim], init: init}
state: [h]
step: |
  a = x @ W + h @ U
  h = exp(a) / (exp(a) + exp(a - 1))
output: h
"""


def test_a_cell_far_into_exp_underflow_and_overflow_agrees_with_float64(tmp_path):
    """exp(a) / (exp(a) + exp(a - 1)) is 1 / (1 + e^-1) = 0.731 for every a where the
    exponentials are finite and not both 0: in float32 for a down to -95 (subnormals) and up
    to 88; beyond, numpy's float32 gives the same NaN (inf / inf) or NaN (0 / 0)."""
    p = tmp_path / "softish.yaml"
    p.write_text(SPEC)
    Cell = rnngen.load_cell(p)
    a = np.array([-95.0, -90.0, -87.5, -10.0, 0.0, 50.0, 88.0, 88.5, 90.0, -110.0], np.float32)
    x = a.reshape(-1, 1, 1)                               # one sample per value: (10, 1, 1)
    layer = Cell(1, input_dim=1, weights=[np.ones((1, 1), np.float32), np.zeros((1, 1), np.float32)], return_sequences=True)
    y = layer(x)[:, 0, 0]
    with np.errstate(all="ignore"):
        e = np.exp(a)
        want = e / (e + np.exp(a - np.float32(1)))
    finite = np.isfinite(want)
    np.testing.assert_allclose(y[finite], want[finite], rtol=2e-3)
    assert np.all(np.isnan(y[~finite]))
    assert abs(y[0] - 0.7310586) < 1e-3                   # was 0.5 with the clamped exp
