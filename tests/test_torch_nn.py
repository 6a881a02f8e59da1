"""rnngen.torch.LSTM / GRU / RNN as drop-ins for torch.nn's, RNN(cell=...) for any cell, and
convert(): every output, final state and gradient against torch.nn's own modules (or, for a
cell torch lacks, an eager torch loop written here) in float64."""
import copy
import pickle
import warnings

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

import rnngen.torch as rt  # noqa: E402

D, H, B, T = 5, 7, 4, 6
LENGTHS = [6, 3, 5, 1]          # unsorted; one sequence of a single step
TOL = dict(rtol=1e-10, atol=1e-10)


def pair(kind, layers=1, bidirectional=False, batch_first=False, bias=True, dropout=0.0,
         dtype=torch.float64):
    """A torch.nn module and rnngen's, with the torch module's weights."""
    args = dict(num_layers=layers, bias=bias, batch_first=batch_first, dropout=dropout,
                bidirectional=bidirectional, dtype=dtype)
    if kind.startswith("RNN"):
        nl = "relu" if kind == "RNN_relu" else "tanh"
        ours, theirs = rt.RNN(D, H, nonlinearity=nl, **args), nn.RNN(D, H, nonlinearity=nl,
                                                                     **args)
    else:
        ours, theirs = getattr(rt, kind)(D, H, **args), getattr(nn, kind)(D, H, **args)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def flat(o):
    if isinstance(o, PackedSequence):
        return [o.data]
    if isinstance(o, (tuple, list)):
        return [t for i in o for t in flat(i)]
    return [o]


def run(m, inputs, leaves):
    """Outputs, then the gradients of a fixed random loss w.r.t. leaves and the
    parameters."""
    out = flat(m(*inputs))
    g = torch.Generator().manual_seed(11)
    loss = sum((o * torch.randn(o.shape, dtype=o.dtype, generator=g)).sum() for o in out)
    grads = torch.autograd.grad(loss, leaves + list(m.parameters()), allow_unused=True,
                                retain_graph=True)
    return [o.detach() for o in out], grads


def make_input(kind, batch_first, nstates, layers, dirs, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, D, dtype=dtype, generator=g).requires_grad_(True)
    h = [torch.randn(layers * dirs, B, H, dtype=dtype, generator=g).requires_grad_(True)
         for _ in range(nstates)]
    hx = (tuple(h) if nstates > 1 else h[0])
    leaves = [x]
    if kind == "tensor":
        inp = (x if batch_first else x.transpose(0, 1),)
    elif kind == "tensor_h0":
        inp, leaves = (x if batch_first else x.transpose(0, 1), hx), [x] + h
    elif kind == "unbatched_h0":
        h1 = [t[:, 1] for t in h]
        inp, leaves = (x[1], tuple(h1) if nstates > 1 else h1[0]), [x] + h
    else:
        lengths = torch.tensor(sorted(LENGTHS, reverse=True) if kind == "packed_sorted"
                               else LENGTHS)
        xs = x if batch_first else x.transpose(0, 1)
        p = pack_padded_sequence(xs, lengths, batch_first=batch_first,
                                 enforce_sorted=kind == "packed_sorted")
        inp = (p, hx) if kind == "packed_h0" else (p,)
        leaves = [x] + (h if kind == "packed_h0" else [])
    return inp, leaves


CONFIGS = [(1, False, False), (2, True, True), (3, True, False)]
INPUTS = ["tensor", "tensor_h0", "unbatched_h0", "packed_sorted", "packed_h0"]


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "RNN_relu"])
@pytest.mark.parametrize("layers,bidirectional,batch_first", CONFIGS)
@pytest.mark.parametrize("inputs", INPUTS)
def test_agrees_with_torch_nn(kind, layers, bidirectional, batch_first, inputs):
    """Outputs, h_n (and c_n), and the gradients of x, h_0 (c_0) and every parameter."""
    theirs, ours = pair(kind, layers, bidirectional, batch_first)
    nstates = 2 if kind == "LSTM" else 1
    inp, leaves = make_input(inputs, batch_first, nstates, layers, 2 if bidirectional else 1)
    out_t, g_t = run(theirs, inp, leaves)
    out_o, g_o = run(ours, inp, leaves)
    assert len(out_t) == len(out_o) == 1 + nstates
    for a, b in zip(out_o, out_t):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **TOL)
    for a, b in zip(g_o, g_t):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_packed_output_keeps_the_inputs_order_and_batch_sizes(kind):
    theirs, ours = pair(kind, 2, True)
    x = torch.randn(T, B, D, dtype=torch.float64)
    p = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    o_t, o_o = theirs(p)[0], ours(p)[0]
    assert isinstance(o_o, PackedSequence)
    assert torch.equal(o_o.batch_sizes, o_t.batch_sizes)
    assert torch.equal(o_o.sorted_indices, o_t.sorted_indices)
    assert torch.equal(o_o.unsorted_indices, o_t.unsorted_indices)


def test_bias_false_and_float32():
    for kind in ("LSTM", "GRU", "RNN"):
        theirs, ours = pair(kind, 2, True, bias=False)
        assert set(ours.state_dict()) == set(theirs.state_dict())
        assert not any("bias" in k for k in ours.state_dict())
        x = torch.randn(T, B, D, dtype=torch.float64)
        for a, b in zip(flat(ours(x)), flat(theirs(x))):
            torch.testing.assert_close(a, b, **TOL)
        theirs, ours = pair(kind, 2, True, dtype=torch.float32)
        x = x.float()
        for a, b in zip(flat(ours(x)), flat(theirs(x))):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_state_dict_both_ways_and_torchs_initialisation(kind):
    torch.manual_seed(5)
    theirs = getattr(nn, kind)(D, H, 2, bidirectional=True)
    torch.manual_seed(5)
    ours = getattr(rt, kind)(D, H, 2, bidirectional=True)
    sd_t, sd_o = theirs.state_dict(), ours.state_dict()
    assert list(sd_t) == list(sd_o)                     # same keys, same order
    for k in sd_t:
        assert torch.equal(sd_t[k], sd_o[k]), k         # same draws from the same seed
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.25)
    theirs.load_state_dict(ours.state_dict())           # and back
    x = torch.randn(T, B, D)
    for a, b in zip(flat(ours(x)), flat(theirs(x))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert [n for n, _ in ours.named_parameters()] == list(theirs._flat_weights_names)
    assert len(ours.all_weights) == 4 and ours.all_weights[1][0] is ours.weight_ih_l0_reverse
    ours.flatten_parameters()                           # code written for torch.nn calls it


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("packed", [False, True])
def test_dropout_draws_torchs_mask_from_the_same_generator(kind, packed):
    theirs, ours = pair(kind, 3, True, dropout=0.4)
    x = torch.randn(T, B, D, dtype=torch.float64)
    inp = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False) if packed else x
    torch.manual_seed(3)
    a = flat(theirs(inp))
    torch.manual_seed(3)
    b = flat(ours(inp))
    for u, v in zip(b, a):
        torch.testing.assert_close(u, v, **TOL)
    # the mask changes with the generator, and eval() switches dropout off
    torch.manual_seed(4)
    assert not torch.allclose(flat(ours(inp))[0], b[0])
    theirs.eval()
    ours.eval()
    torch.testing.assert_close(flat(ours(inp))[0], flat(theirs(inp))[0], **TOL)


def test_dropout_rate_between_layers():
    """Statistically: with dropout p, a fraction p of the second layer's inputs is zero."""
    m = rt.RNN(D, 400, 2, dropout=0.3, nonlinearity="relu", dtype=torch.float64)
    seen = []
    m.register_forward_hook(lambda *a: None)
    orig = m._run

    def spy(x, mask, s0, w, rev):
        seen.append(x.detach().clone())
        return orig(x, mask, s0, w, rev)

    m._run = spy
    with torch.no_grad():
        for p in m.parameters():
            p.abs_()                               # relu outputs away from zero
    m(torch.rand(T, 64, D, dtype=torch.float64))
    frac = (seen[1] == 0).double().mean().item()
    assert abs(frac - 0.3) < 0.01, frac


# -- any cell through the same front end -----------------------------------------------------
def mgu_loop(x, mask, h0, weights, reverse):
    """examples/mgu.yaml (sigmoid, tanh) written as an eager loop; a masked step keeps h."""
    W_f, U_f, b_f, W_h, U_h, b_h = weights
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    h, ys = h0, {}
    for t in steps:
        f = torch.sigmoid(x[:, t] @ W_f + b_f + h @ U_f)
        hh = torch.tanh(x[:, t] @ W_h + b_h + (f * h) @ U_h)
        new = (1 - f) * h + f * hh
        h = torch.where(mask[:, t:t + 1], new, h)
        ys[t] = h
    return torch.stack([ys[t] for t in range(x.shape[1])], 1), h


def test_a_cell_of_ones_own_stacked_bidirectional_packed():
    m = rt.RNN(D, H, 2, cell="examples/mgu.yaml", bidirectional=True, seed=2,
               dtype=torch.float64)
    assert [n for n, _ in m.named_parameters()][:7] == [
        "W_f_l0", "U_f_l0", "b_f_l0", "W_h_l0", "U_h_l0", "b_h_l0", "W_f_l0_reverse"]
    assert m.W_f_l1.shape == (2 * H, H) and m.state_names == ("h",)
    x = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, B, H, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor(LENGTHS)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    p = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, h_n = m(p, h0)

    # the reference: the loop, layer by layer
    inp, finals = x, []
    for k in range(2):
        ys = []
        for d in range(2):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            w = [getattr(m, n + sfx) for n in ("W_f", "U_f", "b_f", "W_h", "U_h", "b_h")]
            y, h = mgu_loop(inp, mask, h0[2 * k + d], w, bool(d))
            ys.append(y)
            finals.append(h)
        inp = torch.cat(ys, -1)
    ref_out = pack_padded_sequence(inp, lengths, batch_first=True, enforce_sorted=False)
    ref_h = torch.stack(finals)
    torch.testing.assert_close(out.data, ref_out.data, **TOL)
    torch.testing.assert_close(h_n, ref_h, **TOL)
    g = torch.Generator().manual_seed(1)
    wo, wh = (torch.randn(out.data.shape, dtype=torch.float64, generator=g),
              torch.randn(h_n.shape, dtype=torch.float64, generator=g))
    leaves = [x, h0] + list(m.parameters())
    ga = torch.autograd.grad((out.data * wo).sum() + (h_n * wh).sum(), leaves)
    gb = torch.autograd.grad((ref_out.data * wo).sum() + (ref_h * wh).sum(), leaves)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, **TOL)


def test_a_cell_of_several_states_takes_and_returns_the_tuple():
    """The seed LSTM with sigmoid gates, as a cell: its (h, c) in spec order, and the same
    function as nn.LSTM once the weights are mapped (rnngen.interop)."""
    from rnngen import interop
    m = rt.RNN(D, H, cell="LSTM", inner_activation="sigmoid", dtype=torch.float64)
    assert m.state_names == ("h", "c")
    ref = nn.LSTM(D, H, dtype=torch.float64)
    with torch.no_grad():
        for n, w in zip(m.weight_names, interop.from_torch_lstm(ref)):
            getattr(m, n + "_l0").copy_(torch.as_tensor(w))
    x = torch.randn(T, B, D, dtype=torch.float64)
    h0 = (torch.randn(1, B, H, dtype=torch.float64), torch.randn(1, B, H, dtype=torch.float64))
    y, (h, c) = m(x, h0)
    y2, (h2, c2) = ref(x, h0)
    for a, b in ((y, y2), (h, h2), (c, c2)):
        torch.testing.assert_close(a, b, **TOL)
    with pytest.raises(TypeError, match="tuple of 2"):
        m(x, h0[0])


def test_gradcheck_packed_with_initial_states():
    torch.manual_seed(0)
    m = rt.LSTM(3, 2, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 4, 1])

    def f(x, h0, c0, *ws):
        names = [n for n, _ in m.named_parameters()]
        p = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, ws)), (p, (h0, c0)))
        return out.data, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0, *m.parameters()))


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    m = rt.GRU(D, H, 2, bidirectional=True, batch_first=True)
    compiled = torch.compile(m, fullgraph=True)
    x = torch.randn(B, T, D)
    res = []
    for fn in (m, compiled):
        m.zero_grad()
        xi = x.clone().requires_grad_(True)
        y, h = fn(xi)
        (y.sum() + h.pow(2).sum()).backward()
        res.append([y.detach(), h.detach(), xi.grad] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a PackedSequence: its packing runs eagerly (torch.compiler.disable), the rest compiled
    p = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
    out = [flat(fn(p)) for fn in (m, torch.compile(m))]
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_pickle_deepcopy_and_to():
    m = rt.RNN(D, H, 2, cell="examples/mgu.yaml", seed=1, dtype=torch.float64)
    x = torch.randn(T, B, D, dtype=torch.float64)
    for other in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        torch.testing.assert_close(other(x)[0], m(x)[0], rtol=0, atol=0)
    g = rt.GRU(D, H).to(torch.float64)
    assert g(x)[0].dtype == torch.float64
    g2 = pickle.loads(pickle.dumps(g))
    torch.testing.assert_close(g2(x)[1], g(x)[1], rtol=0, atol=0)


def test_the_cuda_path_on_the_cuda_emulation(monkeypatch):
    theirs, ours = pair("LSTM", 2, True)
    x = torch.randn(T, B, D, dtype=torch.float64)
    p = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    monkeypatch.setitem(rt._BACKENDS, "cpu", "cuda-emulated")
    out, (h, c) = ours(p)
    assert type(rt._kernel(ours._key, "cpu")).__name__ == "CudaKernel"
    out2, (h2, c2) = theirs(p)
    for a, b in ((out.data, out2.data), (h, h2), (c, c2)):
        torch.testing.assert_close(a, b, **TOL)


# -- convert ---------------------------------------------------------------------------------
class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, D)
        self.enc = nn.LSTM(D, H, 2, bidirectional=True, batch_first=True)
        self.heads = nn.ModuleList([nn.GRU(2 * H, 3), nn.RNN(3, 3, nonlinearity="relu")])
        self.shared = self.enc                       # one module in two places
        self.proj = nn.LSTM(3, 4, proj_size=2)       # cannot be converted

    def forward(self, tokens):
        y, _ = self.enc(self.embed(tokens))
        y, _ = self.heads[0](y.transpose(0, 1))
        y, _ = self.heads[1](y)
        return self.proj(y)[0]


def test_convert_replaces_every_module_with_the_same_weights():
    torch.manual_seed(0)
    model = Tagger().double().eval()
    tokens = torch.randint(0, 20, (B, T))
    before = model(tokens)
    with pytest.warns(UserWarning, match=r"proj: proj_size=2"):
        out = rt.convert(model)
    assert out is model
    assert isinstance(model.enc, rt.LSTM) and model.shared is model.enc
    assert isinstance(model.heads[0], rt.GRU) and isinstance(model.heads[1], rt.RNN)
    assert model.heads[1].nonlinearity == "relu"
    assert type(model.proj) is nn.LSTM
    assert not model.enc.training and model.enc.weight_ih_l0.dtype == torch.float64
    torch.testing.assert_close(model(tokens), before, **TOL)


def test_convert_keeps_the_parameter_objects_hooks_and_ties():
    """An optimizer made before convert still trains the model; a weight tied between two
    modules stays tied; a forward hook still runs."""
    model = nn.Sequential(nn.LSTM(3, 4), nn.GRU(4, 4))
    params = list(model.parameters())
    model[1].weight_hh_l0 = nn.Parameter(torch.randn(12, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    calls = []
    model[0].register_forward_hook(lambda *a: calls.append(1))
    rt.convert(model)
    assert isinstance(model[0], rt.LSTM) and model[0].weight_ih_l0 is params[0]
    w0 = model[0].weight_ih_l0.detach().clone()
    y, _ = model[1](model[0](torch.randn(5, 2, 3))[0])
    y.sum().backward()
    opt.step()
    assert not torch.equal(w0, model[0].weight_ih_l0) and calls == [1]
    a, b = nn.LSTM(3, 3), nn.LSTM(3, 3)
    b.weight_hh_l0 = a.weight_hh_l0
    pair_ = rt.convert(nn.ModuleList([a, b]))
    assert pair_[0].weight_hh_l0 is pair_[1].weight_hh_l0


def test_empty_batch_meta_device_and_flat_weights():
    for m in (rt.GRU(3, 4), rt.LSTM(3, 4, 2, bidirectional=True, batch_first=True)):
        ref = getattr(nn, type(m).__name__)(3, 4, m.num_layers, bidirectional=m.bidirectional,
                                            batch_first=m.batch_first)
        x = torch.randn(0, 5, 3) if m.batch_first else torch.randn(5, 0, 3)
        for a, b in zip(flat(m(x)), flat(ref(x))):
            assert a.shape == b.shape
    with torch.device("meta"):
        m = rt.LSTM(3, 4, bidirectional=True)
        y, (h, c) = m(torch.randn(5, 2, 3))
    assert y.device.type == "meta" and y.shape == (5, 2, 8) and c.shape == (2, 2, 4)
    m = rt.GRU(3, 4)
    assert [w is getattr(m, n) for w, n in zip(m._flat_weights, m._flat_weights_names)] == \
        [True] * 4


def test_convert_a_bare_module_returns_its_replacement():
    m = nn.GRU(D, H)
    m.weight_hh_l0.requires_grad_(False)
    new = rt.convert(m)
    assert isinstance(new, rt.GRU) and not new.weight_hh_l0.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rt.convert(nn.Linear(2, 2))                 # nothing to convert: no warning


# -- errors ----------------------------------------------------------------------------------
def test_bad_arguments_and_inputs_say_what_is_expected():
    with pytest.raises(ValueError, match="proj_size"):
        rt.LSTM(D, H, proj_size=2)
    with pytest.raises(ValueError, match="nonlinearity"):
        rt.RNN(D, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="nonlinearity and bias"):
        rt.RNN(D, H, nonlinearity="relu", cell="GRU")
    with pytest.raises(TypeError, match="only a cell of one's own"):
        rt.RNN(D, H, activation="relu")
    with pytest.raises(ValueError, match="dropout"):
        rt.GRU(D, H, 2, dropout=1.5)
    with pytest.raises(ValueError, match="hidden_size"):
        rt.GRU(D, 0)
    with pytest.raises(TypeError, match="hidden_size should be of type int"):
        rt.GRU(D, 4.0)
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        rt.GRU(D, H, dropout=0.5)
    m = rt.LSTM(D, H, 2)
    x = torch.randn(T, B, D)
    with pytest.raises(RuntimeError, match="input_size"):
        m(torch.randn(T, B, D + 1))
    with pytest.raises(ValueError, match="2D .* or 3D"):
        m(torch.randn(2, T, B, D))
    for error in (TypeError, ValueError):      # torch.nn raises a ValueError
        with pytest.raises(error, match="float64 but the module's parameters are"):
            m(x.double())
    with pytest.raises(RuntimeError, match=r"\(2, 4, 7\)"):
        m(x, (torch.zeros(2, 3, H), torch.zeros(2, 3, H)))
    with pytest.raises(TypeError, match="tuple of 2"):
        m(x, torch.zeros(2, B, H))


def test_the_convert_example_trains_both_models_to_the_same_losses(capsys):
    """examples/convert_model.py --quick: an nn.LSTM classifier (2 layers, bidirectional,
    dropout, packed unsorted batches) and its converted copy train to the same float64
    losses (the script exits with an error otherwise)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "examples" / "convert_model.py"
    spec = importlib.util.spec_from_file_location("convert_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with torch.random.fork_rng():
        mod.main(["--quick"])
    out = capsys.readouterr().out
    assert "rnngen.torch._nn.LSTM" in out
    assert "largest difference" in out and "seconds per epoch" in out
