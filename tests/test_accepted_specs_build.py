"""Specs that load_cell accepted but whose generated code did not compile (-Werror: unused
variables; an undeclared adjoint), found by fuzzing (issue 20, item 5): each now builds on
the C and the emulated CUDA backend and computes its equations (float64, against an own
numpy step and central differences of it)."""
from __future__ import annotations

import numpy as np
import pytest

import rnngen
from helpers import check_layer_against

B, T, D = 2, 4, 3
H = D   # x read elementwise needs input_dim == output_dim

CASES = {
    # no matrix weight at all (the batch split's k-split flag was unused)
    "NoMatrix": ("""
weights:
  v: {shape: [output_dim], init: one}
state: [h]
step: |
  h = tanh(h * v + x)
""", lambda W, x, h, t: np.tanh(h * W[0] + x)),
    # no recurrent product (no per-step slots: their pointers were unused)
    "NoRecurrent": ("""
weights:
  W: {shape: [input_dim, output_dim], init: glorot_uniform}
state: [h]
step: |
  h = tanh(x @ W)
""", lambda W, x, h, t: np.tanh(x @ W[0])),
    # the mean of a vector weight (the root's adjoint was loaded and never used)
    "MeanOfWeight": ("""
weights:
  W: {shape: [input_dim, output_dim], init: glorot_uniform}
  U: {shape: [output_dim, output_dim], init: orthogonal}
  v: {shape: [output_dim], init: one}
state: [h]
step: |
  h = tanh(x @ W + h @ U + mean(v))
""", lambda W, x, h, t: np.tanh(x @ W[0] + h @ W[1] + W[2].mean())),
    # the mean of started() (its backward product wrote the adjoint of a constant)
    "MeanOfStarted": ("""
weights:
  W: {shape: [input_dim, output_dim], init: glorot_uniform}
state: [h]
step: |
  h = tanh(mean(started(h[-1])) + x @ W)
""", lambda W, x, h, t: np.tanh((1.0 if t >= 1 else 0.0) + x @ W[0])),
}


def _reference(step, W, x):
    h = np.zeros((x.shape[0], H))
    ys = []
    for t in range(x.shape[1]):
        h = step(W, x[:, t], h, t)
        ys.append(h)
    return np.stack(ys, 1)


@pytest.mark.parametrize("backend", ["c", "cuda-emulated"])
@pytest.mark.parametrize("name", list(CASES))
def test_an_accepted_spec_builds_and_computes_its_equations(tmp_path, name, backend):
    body, step = CASES[name]
    path = tmp_path / f"{name.lower()}.yaml"
    path.write_text(f"name: {name}\n{body}output: h\n")
    Cell = rnngen.load_cell(path)
    rng = np.random.default_rng(1)
    layer = Cell(H, input_dim=D, return_sequences=True, dtype="float64", seed=0, backend=backend)
    W = [w + rng.normal(scale=0.3, size=w.shape) for w in layer.get_weights()]
    layer.set_weights(W)
    x = rng.normal(size=(B, T, D))
    check_layer_against(layer, lambda W, x, mask: _reference(step, W, x), W, x, rng=rng,
                        atol=1e-8)
