"""The cells of examples/, each against an own float64 reference written from its paper's
equations: forward to 1e-12, dx and every weight gradient against central finite
differences of the reference, with a mask, on the C and the emulated CUDA backends; float32
to 1e-4.  The PyTorch-style GRU also against torch.nn.GRU where torch is installed."""
import numpy as np
import pytest

import rnngen
from helpers import check_layer_against
from rnngen.pipeline import ROOT

B, T, D, H = 2, 5, 3, 4
sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731


def _run(step, states, x, mask):
    """Apply step(x_t, *states) -> (new states, output) with the seed's masking: a padded
    step keeps every state and repeats the output."""
    ys = []
    out = np.zeros((x.shape[0], H))
    for t in range(x.shape[1]):
        new, y = step(x[:, t], *states)
        keep = mask[:, t:t + 1]
        states = [np.where(keep, n, s) for n, s in zip(new, states)]
        out = np.where(keep, y, out)
        ys.append(out)
    return np.stack(ys, 1)


def mingru(W, x, mask):
    W_z, b_z, W_h, b_h = W

    def step(xt, h):
        z = sig(xt @ W_z + b_z)
        hn = (1 - z) * h + z * (xt @ W_h + b_h)
        return [hn], hn
    return _run(step, [np.zeros((x.shape[0], H))], x, mask)


def indrnn(W, x, mask):
    Wx, u, b = W

    def step(xt, h):
        hn = np.maximum(xt @ Wx + u * h + b, 0)
        return [hn], hn
    return _run(step, [np.zeros((x.shape[0], H))], x, mask)


def torch_gru(W, x, mask):
    W_ir, W_iz, W_in, W_hr, W_hz, W_hn, b_ir, b_iz, b_in, b_hr, b_hz, b_hn = W

    def step(xt, h):
        r = sig(xt @ W_ir + b_ir + h @ W_hr + b_hr)
        z = sig(xt @ W_iz + b_iz + h @ W_hz + b_hz)
        n = np.tanh(xt @ W_in + b_in + r * (h @ W_hn + b_hn))
        hn = (1 - z) * n + z * h
        return [hn], hn
    return _run(step, [np.zeros((x.shape[0], H))], x, mask)


def slstm(W, x, mask):
    W_z, W_i, W_f, W_o, R_z, R_i, R_f, R_o, b_z, b_i, b_f, b_o = W

    def step(xt, h, c, n, m):
        z = np.tanh(xt @ W_z + h @ R_z + b_z)
        it = xt @ W_i + h @ R_i + b_i
        lf = np.log(sig(xt @ W_f + h @ R_f + b_f))
        o = sig(xt @ W_o + h @ R_o + b_o)
        mn = np.maximum(lf + m, it)
        i = np.exp(it - mn)
        f = np.exp(lf + m - mn)
        cn = f * c + i * z
        nn = f * n + i
        hn = o * cn / nn
        return [hn, cn, nn, mn], hn
    zero = np.zeros((x.shape[0], H))
    return _run(step, [zero] * 4, x, mask)


CELLS = {"mingru": mingru, "indrnn": indrnn, "torch_gru": torch_gru, "slstm": slstm}


@pytest.mark.parametrize("backend", ["c", "cuda-emulated"])
@pytest.mark.parametrize("name", ["indrnn", "mingru", "slstm", "torch_gru"])
def test_example_cell_against_its_papers_equations(name, backend):
    cls = rnngen.load_cell(ROOT / "examples" / f"{name}.yaml")
    reference = CELLS[name]
    rng = np.random.default_rng(4)
    layer = cls(H, input_dim=D, return_sequences=True, dtype="float64", seed=1, backend=backend)
    W = [w + rng.normal(scale=0.3, size=w.shape) for w in layer.get_weights()]
    layer.set_weights(W)
    x = rng.normal(size=(B, T, D))
    mask = rng.random((B, T)) > 0.3
    mask[0] = True
    y = check_layer_against(layer, reference, W, x, mask, rng=rng)
    l32 = cls(H, input_dim=D, return_sequences=True, seed=1, backend=backend)
    l32.set_weights(W)
    np.testing.assert_allclose(l32(x.astype(np.float32), mask=mask), y, rtol=1e-4, atol=1e-5)


def test_torch_gru_example_is_torch_nn_gru():
    torch = pytest.importorskip("torch")
    cls = rnngen.load_cell(ROOT / "examples" / "torch_gru.yaml")
    gru = torch.nn.GRU(D, H, batch_first=True).double()
    wi, wh = gru.weight_ih_l0.detach().numpy(), gru.weight_hh_l0.detach().numpy()
    bi, bh = gru.bias_ih_l0.detach().numpy(), gru.bias_hh_l0.detach().numpy()
    # torch stacks r, z, n row blocks of W (out x in); ours are x @ W (in x out)
    W = ([wi[k * H:(k + 1) * H].T for k in range(3)] + [wh[k * H:(k + 1) * H].T for k in range(3)]
         + [bi[k * H:(k + 1) * H] for k in range(3)] + [bh[k * H:(k + 1) * H] for k in range(3)])
    layer = cls(H, input_dim=D, return_sequences=True, dtype="float64", weights=W)
    x = np.random.default_rng(0).normal(size=(B, T, D))
    xt = torch.tensor(x, requires_grad=True)
    yt, _ = gru(xt)
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    yt.sum().backward()
    np.testing.assert_allclose(layer.backward(np.ones((B, T, H))), xt.grad.numpy(), rtol=1e-12,
                               atol=1e-12)


def _ln(a, eps, gain=1.0, bias=0.0):
    """LayerNorm over the last axis."""
    mu = a.mean(-1, keepdims=True)
    return gain * (a - mu) / np.sqrt(((a - mu) ** 2).mean(-1, keepdims=True) + eps) + bias


def layernorm_lstm(W, x, mask, eps=1e-5):
    (W_f, W_i, W_o, W_g, U_f, U_i, U_o, U_g, a1_f, a1_i, a1_o, a1_g, a2_f, a2_i, a2_o, a2_g,
     b_f, b_i, b_o, b_g, a3, b3) = W
    Wx = np.concatenate([W_f, W_i, W_o, W_g], 1)
    Uh = np.concatenate([U_f, U_i, U_o, U_g], 1)
    a1 = np.concatenate([a1_f, a1_i, a1_o, a1_g])
    a2 = np.concatenate([a2_f, a2_i, a2_o, a2_g])
    b = np.concatenate([b_f, b_i, b_o, b_g])

    def step(xt, h, c):   # Ba et al. 2016, eqs. 20-22: LN over all 4H gate units
        pre = _ln(h @ Uh, eps, a1) + _ln(xt @ Wx, eps, a2) + b
        f, i, o, g = (pre[:, k * H:(k + 1) * H] for k in range(4))
        cn = sig(f) * c + sig(i) * np.tanh(g)
        hn = sig(o) * np.tanh(_ln(cn, eps, a3, b3))
        return [hn, cn], hn
    zero = np.zeros((x.shape[0], H))
    return _run(step, [zero, zero], x, mask)


CELLS["layernorm_lstm"] = layernorm_lstm


@pytest.mark.parametrize("backend", ["c", "cuda-emulated"])
def test_layernorm_lstm_against_the_paper(backend):
    test_example_cell_against_its_papers_equations("layernorm_lstm", backend)


def layernorm_gru(W, x, mask, eps=1e-5):
    W_z, W_r, W_h, U_z, U_r, U_h, a1_z, a1_r, a2_z, a2_r, a3, a4, b_z, b_r, b_h = W

    def step(xt, h):
        gx = _ln(np.concatenate([xt @ W_z, xt @ W_r], 1), eps, np.concatenate([a1_z, a1_r]))
        gh = _ln(np.concatenate([h @ U_z, h @ U_r], 1), eps, np.concatenate([a2_z, a2_r]))
        pre = gx + gh + np.concatenate([b_z, b_r])
        z, r = sig(pre[:, :H]), sig(pre[:, H:])
        hh = np.tanh(_ln(xt @ W_h, eps, a3) + _ln((r * h) @ U_h, eps, a4) + b_h)
        hn = z * h + (1 - z) * hh
        return [hn], hn
    return _run(step, [np.zeros((x.shape[0], H))], x, mask)


CELLS["layernorm_gru"] = layernorm_gru


@pytest.mark.parametrize("backend", ["c", "cuda-emulated"])
def test_layernorm_gru_against_the_paper(backend):
    test_example_cell_against_its_papers_equations("layernorm_gru", backend)


@pytest.mark.parametrize("split,threads,Hn", [("unit", 2, 32), ("batch", 2, 32), ("unit", 3, 64)])
def test_means_are_right_when_threads_split_the_units_or_the_samples(split, threads, Hn):
    """In the unit split each thread holds some units of every sample: a mean reads all of
    them after the step's barrier.  Two threads, each split forced, against one thread;
    and three threads for 64 units (four blocks of 16, two per thread): the third holds
    none."""
    from rnngen.layout import Schedule
    from rnngen.pipeline import compile_cell
    spec = rnngen.load_cell(ROOT / "examples" / "layernorm_lstm.yaml").spec
    Bn = 16
    rng = np.random.default_rng(0)
    one = compile_cell(spec)
    forced = compile_cell(spec, schedule=Schedule(split=split))
    ws = [rng.normal(scale=0.3, size=w.dims(D, Hn)) for w in one.ir.weights]
    x, dy = rng.normal(size=(Bn, T, D)), rng.normal(size=(Bn, T, Hn))
    mask = (rng.random((Bn, T)) > 0.3).astype(np.uint8)
    old = rnngen.get_num_threads()
    try:
        rnngen.set_num_threads(1)
        y1, s1, _ = one.forward(x, mask, ws, Hn, True)
        dx1, g1, _ = one.backward(x, mask, ws, s1, dy, -1)
        y1, dx1, g1 = y1.copy(), dx1.copy(), [g.copy() for g in g1]
        rnngen.set_num_threads(threads)
        y2, s2, _ = forced.forward(x, mask, ws, Hn, True)
        assert s2[-3] == (1 if split == "batch" else threads)     # the split it ran
        dx2, g2, _ = forced.backward(x, mask, ws, s2, dy, -1)
    finally:
        rnngen.set_num_threads(old)
    np.testing.assert_allclose(y2, y1, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dx2, dx1, rtol=1e-12, atol=1e-13)
    for a, b in zip(g2, g1):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
