"""Every layout and schedule choice, forced, computes what the default computes.

The layout (rnngen.layout.compute_layout) and the C backend's schedule (Schedule) are
decided in Python; each optimisation can be turned off or forced, and the kernels built
that way must give the default's forward, dx and weight gradients (with and without a
mask, with truncation, on two threads)."""
import numpy as np
import pytest

import rnngen
from rnngen import layers
from rnngen.ir import compute_ir
from rnngen.layout import Schedule, compute_layout
from rnngen.pipeline import EXAMPLES, compile_cell, generate
from rnngen.spec import load_spec

T, D, H = 6, 3, 32   # H = 32: two threads of 16 units each in the unit split
# On two threads the runtime takes the unit split and x @ W before the loop at B = 4, the
# batch split and x @ W per step at B = 16: each forced choice differs from it at one.
BATCHES = (4, 16)


def _weights(spec, rng):
    ir = compute_ir(spec)
    return [rng.normal(scale=0.3, size=w.dims(D, H)) for w in ir.weights]


def _run(kernel, x, mask, ws, dy, truncate):
    y, save, _ = kernel.forward(x, mask, ws, H, True)
    dx, grads, _ = kernel.backward(x, mask, ws, save, dy, truncate)
    return [y.copy(), dx.copy()] + [g.copy() for g in grads]


CHOICES = [
    ("SimpleDeepRNN", {"share_lags": False}, Schedule()),
    ("SimpleDeepRNN", {"alias_new_state": False}, Schedule()),
    ("SimpleRNN", {"xw_in_ds": False}, Schedule()),
    ("LSTM", {"xw_in_ds": False}, Schedule(split="unit")),
    ("LSTM", {}, Schedule(split="batch", xw_first=False)),
    ("GRU", {}, Schedule(split="unit", xw_first=True)),
    ("GRU", {}, Schedule(split="batch")),
    ("JZS1", {}, Schedule(xw_first=False)),
    ("GRU", {"recompute": False}, Schedule()),
    ("JZS3", {"recompute": False}, Schedule(split="unit")),
]


@pytest.fixture
def two_threads():
    old = rnngen.get_num_threads()
    rnngen.set_num_threads(2)
    yield
    rnngen.set_num_threads(old)


@pytest.mark.parametrize("name,layout,schedule", CHOICES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CHOICES])
def test_a_forced_choice_computes_the_same(two_threads, name, layout, schedule):
    spec = getattr(layers, name).spec
    default_src = generate(spec)[2]
    forced_src = generate(spec, layout=layout, schedule=schedule)[2]
    assert forced_src != default_src          # the choice reached the generated code
    default = compile_cell(spec)
    forced = compile_cell(spec, layout=layout, schedule=schedule)
    rng = np.random.default_rng(1)
    ws = _weights(spec, rng)
    for B in BATCHES:
        x = rng.normal(size=(B, T, D))
        dy = rng.normal(size=(B, T, H))
        mask = np.ones((B, T), np.uint8)
        mask[1, :2] = 0
        mask[2, 3] = 0
        if schedule.split:   # forward notes its layout: 1 slice (batch split) or 1 per thread
            save = forced.forward(x, None, ws, H, True)[1]
            assert save[-3] == (1 if schedule.split == "batch" else 2)
        for m, truncate in ((None, -1), (None, 3), (mask, -1), (mask, 3)):
            ref = _run(default, x, m, ws, dy, truncate)
            got = _run(forced, x, m, ws, dy, truncate)
            for a, b in zip(ref, got):
                np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", [{"transient_slots": False}, {"recompute": False}])
@pytest.mark.parametrize("split", ["unit", "batch"])
def test_transient_and_recomputed_values_compute_the_same(two_threads, layout, split):
    """The LayerNorm LSTM keeps its means' operands for two steps and recomputes
    `a1 * (r - mean)` in backward: each of these off gives the default's results."""
    spec = load_spec(EXAMPLES / "layernorm_lstm.yaml")
    ir = compute_ir(spec)
    lay = compute_layout(ir)
    mean_operands = {g.operand for g in ir.groups if g.mean}
    assert lay.transient and lay.transient <= mean_operands      # sum of (r_k - mr) ** 2, ...
    assert len(lay.recomputed) == 8                              # a1_f * (rf - mr), ...
    assert all(n.op == "mul" for n in lay.recomputed)
    default = compile_cell(spec, schedule=Schedule(split=split))
    forced = compile_cell(spec, layout=layout, schedule=Schedule(split=split))
    rng = np.random.default_rng(2)
    ws = _weights(spec, rng)
    B = 4
    x = rng.normal(size=(B, T, D))
    dy = rng.normal(size=(B, T, H))
    mask = np.ones((B, T), np.uint8)
    mask[1, :2] = 0
    mask[2, 3] = 0
    for m, truncate in ((None, -1), (mask, -1), (mask, 3)):
        for a, b in zip(_run(default, x, m, ws, dy, truncate), _run(forced, x, m, ws, dy, truncate)):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


def test_the_layout_is_what_the_cells_need():
    """Which optimisation applies to which seed cell (the layout decides; the frames
    follow)."""
    def lay(name, **kw):
        return compute_layout(compute_ir(getattr(layers, name).spec), **kw)
    assert lay("LSTM").sample_major and lay("SimpleRNN").sample_major
    assert not lay("GRU").sample_major and not lay("SimpleDeepRNN").sample_major
    assert [k for _, k in lay("SimpleDeepRNN").lag_alias.values()] == [2, 3]
    assert not lay("SimpleDeepRNN", share_lags=False).lag_alias
    assert lay("SimpleRNN").new_state_alias and not lay("SimpleRNN", alias_new_state=False).new_state_alias
    assert not lay("LSTM", xw_in_ds=False).sample_major


def test_schedule_choices_are_checked():
    with pytest.raises(ValueError, match="split must be"):
        Schedule(split="threads")
    with pytest.raises(ValueError, match="the CUDA backend has no schedule"):
        generate(layers.GRU.spec, backend="cuda-emulated", schedule=Schedule(split="unit"))
    with pytest.raises(ValueError, match="share_lags must be False"):
        generate(layers.SimpleDeepRNN.spec, backend="cuda-emulated", layout={"share_lags": True})
