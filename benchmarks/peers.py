"""The seed cells written for the benchmark's peers: numpy, a PyTorch eager
step loop with autograd, and jax.jit of jax.lax.scan with jax.grad.

Every peer is written the way a careful user would write it: the input
products x @ W of all steps are one matrix product before the loop (as in
rnngen), and only the recurrent products run per step.  The step functions are
written once against a small namespace ``F`` of the framework's functions, so
the three peers compute the same equations; bench.py checks each peer's output
against rnngen's before timing it.

The two cells of examples/ in `make bench` (the LayerNorm LSTM and xLSTM's sLSTM) are
written the way their reference implementations write them (Haste's LayerNormLSTM,
xLSTM's sLSTM): the four recurrent products are one product with the concatenated
matrix, and what depends on x alone is done for all steps before the loop (the
LayerNorm of the input pre-activations, the biases).  The torch peer normalises with
``torch.nn.functional.layer_norm``; sLSTM's ``log(sigmoid(a))`` is the framework's
``log_sigmoid``, the same function.

The PyTorch peers run with denormals flushed (``torch.set_flush_denormal(True)`` during
their calls), as XLA's CPU code runs and as rnngen's kernels compute (its exp does not
return denormals): sLSTM's stabilised gates exp(lf + m - m') underflow into them often,
and unflushed they made the eager loop's training about 5x slower on x86, a cost of the
CPU's microcode, not of the framework.

None of this is imported by rnngen.
"""
from __future__ import annotations

import contextlib
import importlib
from types import SimpleNamespace

import numpy as np

# which weights are input matrices (hoisted x @ W), per cell, in a fixed order
INPUT_WEIGHTS = {
    "SimpleRNN": ["W"],
    "SimpleDeepRNN": ["W"],
    "GRU": ["W_z", "W_r", "W_h"],
    "LSTM": ["W_i", "W_f", "W_c", "W_o"],
    "JZS1": ["W_z", "W_r", "Pmat"],
    "JZS2": ["W_z", "Pmat", "W_h"],
    "JZS3": ["W_z", "W_r", "W_h"],
    # two cells of examples/ (bench_gpu.py): the minimal gated unit, and torch's GRU
    "MGU": ["W_f", "W_h"],
    "TorchGRU": ["W_ir", "W_iz", "W_in"],
    # examples/layernorm_lstm.yaml and examples/slstm.yaml (bench.py), and the rest of
    # the gallery: minGRU, IndRNN, the LayerNorm GRU
    "LayerNormLSTM": ["W_f", "W_i", "W_o", "W_g"],
    "SLSTM": ["W_z", "W_i", "W_f", "W_o"],
    "MinGRU": ["W_z", "W_h"],
    "IndRNN": ["W"],
    "LayerNormGRU": ["W_z", "W_r", "W_h"],
}
# registers carried between steps, h first, where a cell has more than h
N_STATES = {"LSTM": 2, "LayerNormLSTM": 2, "SLSTM": 4}


def n_states(cell: str, params: dict) -> int:
    """Registers carried between steps (h first; SimpleDeepRNN keeps depth lags of h)."""
    if cell == "SimpleDeepRNN":
        return params["depth"]
    return N_STATES.get(cell, 1)


def prepare(cell: str, F, w: dict) -> dict:
    """The weights as the step uses them, made once per call (inside autograd's or jit's
    trace, so gradients reach the spec's weights): for the two cells of examples/, the
    four recurrent matrices as one and the gate vectors in the same order."""
    def cat(names):
        return F.cat([w[n] for n in names])
    if cell == "LayerNormLSTM":
        gates = "fiog"
        return dict(w, U=cat([f"U_{g}" for g in gates]), a1=cat([f"a1_{g}" for g in gates]),
                    a2=cat([f"a2_{g}" for g in gates]), b=cat([f"b_{g}" for g in gates]))
    if cell == "SLSTM":
        return dict(w, R=cat([f"R_{g}" for g in "zifo"]), b=cat([f"b_{g}" for g in "zifo"]))
    if cell == "LayerNormGRU":   # z and r normalised together over their 2H units
        return dict(w, U=cat(["U_z", "U_r"]), a1=cat(["a1_z", "a1_r"]),
                    a2=cat(["a2_z", "a2_r"]), b=cat(["b_z", "b_r"]))
    return w


def hoisted(cell: str, F, w: dict, xw):
    """x @ W of all steps, [B*T, n*H] (the input matrices side by side), with what depends
    on x alone applied before the loop: LayerNorm's input half and biases."""
    if cell == "LayerNormLSTM":      # LN over the 4H input pre-activations of a sample
        return F.layer_norm(xw, w["a2"], w["b"], F.eps)
    if cell == "SLSTM":
        return xw + w["b"]
    if cell == "LayerNormGRU":       # LN over x @ [W_z | W_r] (2H units), and over x @ W_h
        H = w["a3"].shape[-1]
        return F.cat([F.layer_norm(xw[:, :2 * H], w["a1"], w["b"], F.eps),
                      F.layer_norm(xw[:, 2 * H:], w["a3"], w["b_h"], F.eps)])
    return xw


def step(cell: str, F, w: dict, xw: list, st: tuple, t):
    """One step: the new registers from x @ W of this step (xw) and the old ones (st)."""
    act, inner = F.act, F.inner
    h = st[0]
    if cell == "SimpleRNN":
        return (act(xw[0] + w["b"] + h @ w["U"]),)
    if cell == "SimpleDeepRNN":
        s = xw[0] + w["b"]
        for k in range(1, len(st) + 1):   # a lag before the first step contributes zero
            s = s + F.started(t, k) * inner(st[k - 1] @ w[f"U_{k}"])
        return (act(s),) + tuple(st[:-1])
    if cell == "GRU":
        z = inner(xw[0] + w["b_z"] + h @ w["U_z"])
        r = inner(xw[1] + w["b_r"] + h @ w["U_r"])
        hh = act(xw[2] + w["b_h"] + (r * h) @ w["U_h"])
        return (z * h + (1 - z) * hh,)
    if cell == "LSTM":
        c = st[1]
        i = inner(xw[0] + w["b_i"] + h @ w["U_i"])
        f = inner(xw[1] + w["b_f"] + h @ w["U_f"])
        c = f * c + i * act(xw[2] + w["b_c"] + h @ w["U_c"])
        o = inner(xw[3] + w["b_o"] + h @ w["U_o"])
        return (o * act(c), c)
    if cell == "JZS1":
        z = inner(xw[0] + w["b_z"])
        r = inner(xw[1] + w["b_r"] + h @ w["U_r"])
        hh = act(F.tanh(xw[2]) + w["b_h"] + (r * h) @ w["U_h"])
        return (hh * z + h * (1 - z),)
    if cell == "JZS2":
        z = inner(xw[0] + w["b_z"] + h @ w["U_z"])
        r = inner(xw[1] + w["b_r"] + h @ w["U_r"])
        hh = act(xw[2] + w["b_h"] + (r * h) @ w["U_h"])
        return (hh * z + h * (1 - z),)
    if cell == "JZS3":
        z = inner(xw[0] + w["b_z"] + F.tanh(h) @ w["U_z"])
        r = inner(xw[1] + w["b_r"] + h @ w["U_r"])
        hh = act(xw[2] + w["b_h"] + (r * h) @ w["U_h"])
        return (hh * z + h * (1 - z),)
    if cell == "MGU":          # examples/mgu.yaml
        f = inner(xw[0] + w["b_f"] + h @ w["U_f"])
        hh = act(xw[1] + w["b_h"] + (f * h) @ w["U_h"])
        return ((1 - f) * h + f * hh,)
    if cell == "TorchGRU":     # examples/torch_gru.yaml: the reset gate after the product
        r = F.sigmoid(xw[0] + w["b_ir"] + h @ w["W_hr"] + w["b_hr"])
        z = F.sigmoid(xw[1] + w["b_iz"] + h @ w["W_hz"] + w["b_hz"])
        n = F.tanh(xw[2] + w["b_in"] + r * (h @ w["W_hn"] + w["b_hn"]))
        return ((1 - z) * n + z * h,)
    if cell == "MinGRU":       # examples/mingru.yaml (Feng et al. 2024): no recurrent product
        z = F.sigmoid(xw[0] + w["b_z"])
        return ((1 - z) * h + z * (xw[1] + w["b_h"]),)
    if cell == "IndRNN":       # examples/indrnn.yaml (Li et al. 2018): u * h, elementwise
        return (act(xw[0] + w["u"] * h + w["b"]),)
    if cell == "LayerNormGRU":   # examples/layernorm_gru.yaml
        H = h.shape[-1]
        g = F.layer_norm(h @ w["U"], w["a2"], None, F.eps)
        z = F.sigmoid(xw[0] + g[:, :H])
        r = F.sigmoid(xw[1] + g[:, H:])
        hh = F.tanh(xw[2] + F.layer_norm((r * h) @ w["U_h"], w["a4"], None, F.eps))
        return (z * h + (1 - z) * hh,)
    if cell == "LayerNormLSTM":  # examples/layernorm_lstm.yaml (Ba et al. 2016)
        c = st[1]
        H = h.shape[-1]
        r = F.layer_norm(h @ w["U"], w["a1"], None, F.eps)   # LN over the 4H units
        f = F.sigmoid(r[:, :H] + xw[0])
        i = F.sigmoid(r[:, H:2 * H] + xw[1])
        o = F.sigmoid(r[:, 2 * H:3 * H] + xw[2])
        g = F.tanh(r[:, 3 * H:] + xw[3])
        c = f * c + i * g
        return (o * F.tanh(F.layer_norm(c, w["a3"], w["b3"], F.eps)), c)
    if cell == "SLSTM":          # examples/slstm.yaml (Beck et al. 2024)
        c, n, m = st[1:]
        H = h.shape[-1]
        r = h @ w["R"]
        z = F.tanh(xw[0] + r[:, :H])
        ii = xw[1] + r[:, H:2 * H]
        lf = F.log_sigmoid(xw[2] + r[:, 2 * H:3 * H])
        o = F.sigmoid(xw[3] + r[:, 3 * H:])
        m_new = F.maximum(lf + m, ii)
        i = F.exp(ii - m_new)
        f = F.exp(lf + m - m_new)
        c = f * c + i * z
        n = f * n + i
        return (o * c / n, c, n, m_new)
    raise KeyError(cell)


def _namespace(cell_params: dict, sigmoid, clip, tanh, relu, softplus, started, **more):
    """The functions a step uses.  ``more``: exp, log_sigmoid, maximum, cat (a list along
    the last axis) and layer_norm(v, gain, bias or None, eps) over the last axis, for the
    cells of examples/."""
    funcs = {
        "sigmoid": sigmoid,
        "hard_sigmoid": lambda v: clip(0.2 * v + 0.5, 0.0, 1.0),
        "tanh": tanh,
        "relu": relu,
        "softplus": softplus,
        "linear": lambda v: v,
    }
    return SimpleNamespace(act=funcs.get(cell_params.get("activation")),
                           inner=funcs.get(cell_params.get("inner_activation")),
                           tanh=tanh, started=started, sigmoid=sigmoid,
                           eps=cell_params.get("eps"), **more)


def _layer_norm(mean, rsqrt):
    """LayerNorm over the last axis from a framework's mean and 1/sqrt: the biased
    variance, eps inside the root (as the spec writes it, and as torch's layer_norm)."""
    def layer_norm(v, gain, bias, eps):
        d = v - mean(v)
        out = d * rsqrt(mean(d * d) + eps) * gain
        return out if bias is None else out + bias
    return layer_norm


def available(name: str):
    """The module if it imports, else None (a missing peer is reported, not hidden)."""
    try:
        return importlib.import_module(name)
    except Exception:   # noqa: BLE001 - any failure to import means "missing"
        return None


# ---------------------------------------------------------------- numpy
class NumpyPeer:
    name = "numpy"
    trains = False    # forward only: a hand-written numpy backward per cell is not a peer users have

    def __init__(self, cell, params, weights: dict):
        self.cell, self.params = cell, params
        self.w = weights
        self.Wcat = np.concatenate([weights[n] for n in INPUT_WEIGHTS[cell]], axis=1)
        self.F = _namespace(params, lambda v: 1 / (1 + np.exp(-v)), np.clip, np.tanh,
                            lambda v: np.maximum(v, 0), lambda v: np.logaddexp(0, v),
                            lambda t, k: np.float32(t >= k), exp=np.exp,
                            log_sigmoid=lambda v: -np.logaddexp(0, -v), maximum=np.maximum,
                            cat=lambda vs: np.concatenate(vs, axis=-1),
                            layer_norm=_layer_norm(lambda v: v.mean(-1, keepdims=True),
                                                   lambda v: 1 / np.sqrt(v)))
        self.w = prepare(cell, self.F, weights)

    def forward(self, x):
        B, T, D = x.shape
        H = self.Wcat.shape[1] // len(INPUT_WEIGHTS[self.cell])
        n = len(INPUT_WEIGHTS[self.cell])
        xw = hoisted(self.cell, self.F, self.w, x.reshape(B * T, D) @ self.Wcat)
        xw = xw.reshape(B, T, n, H)
        st = tuple(np.zeros((B, H), x.dtype) for _ in range(n_states(self.cell, self.params)))
        y = np.empty((B, T, H), x.dtype)
        for t in range(T):
            st = step(self.cell, self.F, self.w, [xw[:, t, k] for k in range(n)], st, t)
            y[:, t] = st[0]
        return y


# ---------------------------------------------------------------- PyTorch
@contextlib.contextmanager
def flushing(torch):
    """Denormals flushed to zero in torch's CPU code while inside (see the docstring)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


FLUSH_NOTE = ("denormals flushed to zero during its calls (torch.set_flush_denormal), as "
              "XLA's CPU code runs; see benchmarks/peers.py")


class TorchEagerPeer:
    name = "torch eager"
    trains = True
    note = FLUSH_NOTE

    def __init__(self, cell, params, weights: dict):
        import torch
        self.torch = torch
        self.cell, self.params = cell, params
        self.w = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
        self.inputs = INPUT_WEIGHTS[cell]
        nnf = torch.nn.functional
        self.F = _namespace(params, torch.sigmoid, torch.clamp, torch.tanh, torch.relu,
                            nnf.softplus, lambda t, k: float(t >= k), exp=torch.exp,
                            log_sigmoid=nnf.logsigmoid, maximum=torch.maximum,
                            cat=lambda vs: torch.cat(vs, dim=-1),
                            layer_norm=lambda v, g, b, eps: nnf.layer_norm(
                                v, v.shape[-1:], g, b, eps))

    def _run(self, x):
        torch = self.torch
        B, T, D = x.shape
        H = self.w[self.inputs[0]].shape[1]
        Wcat = torch.cat([self.w[n] for n in self.inputs], dim=1)
        n = len(self.inputs)
        w = prepare(self.cell, self.F, self.w)
        xw = hoisted(self.cell, self.F, w, x.reshape(B * T, D) @ Wcat).reshape(B, T, n, H)
        st = tuple(x.new_zeros((B, H)) for _ in range(n_states(self.cell, self.params)))
        ys = []
        for t in range(T):
            st = step(self.cell, self.F, w, [xw[:, t, k] for k in range(n)], st, t)
            ys.append(st[0])
        return torch.stack(ys, dim=1)

    def forward(self, x):
        with self.torch.no_grad(), flushing(self.torch):
            return self._run(self.torch.from_numpy(x)).numpy()

    def train(self, x, dy):
        """Forward, then backward of sum(y * dy); returns dx (weight grads stay in .grad)."""
        torch = self.torch
        xt = torch.from_numpy(x).requires_grad_(True)
        for v in self.w.values():
            v.grad = None
        with flushing(torch):
            y = self._run(xt)
            y.backward(torch.from_numpy(dy))
        return xt.grad.numpy()


class TorchLSTMPeer:
    """torch.nn.LSTM (oneDNN on the CPU).  Its gates use sigmoid; it computes the seed
    LSTM exactly when inner_activation='sigmoid' (and activation='tanh')."""
    name = "nn.LSTM"
    trains = True
    note = FLUSH_NOTE

    def __init__(self, cell, params, weights: dict):
        import torch
        self.torch = torch
        D, H = weights["W_i"].shape
        self.mod = torch.nn.LSTM(D, H, batch_first=True)
        order = ["i", "f", "c", "o"]      # PyTorch's gate order i, f, g, o
        with torch.no_grad():
            self.mod.weight_ih_l0.copy_(torch.tensor(
                np.concatenate([weights[f"W_{g}"].T for g in order], axis=0)))
            self.mod.weight_hh_l0.copy_(torch.tensor(
                np.concatenate([weights[f"U_{g}"].T for g in order], axis=0)))
            self.mod.bias_ih_l0.copy_(torch.tensor(
                np.concatenate([weights[f"b_{g}"] for g in order])))
            self.mod.bias_hh_l0.zero_()
        self.exact = params.get("inner_activation") == "sigmoid" and params["activation"] == "tanh"

    def forward(self, x):
        with self.torch.no_grad(), flushing(self.torch):
            return self.mod(self.torch.from_numpy(x))[0].numpy()

    def train(self, x, dy):
        torch = self.torch
        xt = torch.from_numpy(x).requires_grad_(True)
        self.mod.zero_grad(set_to_none=True)
        with flushing(torch):
            y = self.mod(xt)[0]
            y.backward(torch.from_numpy(dy))
        return xt.grad.numpy()


class TorchGRUPeer(TorchLSTMPeer):
    """torch.nn.GRU (cuDNN on a GPU, oneDNN on the CPU).  It is not the seed GRU (whose
    reset gate applies before the recurrent product) but exactly examples/torch_gru.yaml
    (TorchGRU): the reset gate after the product, an input and a recurrent bias per gate."""
    name = "nn.GRU"
    trains = True
    exact = True

    def __init__(self, cell, params, weights: dict):
        import torch
        self.torch = torch
        D, H = weights["W_ir"].shape
        self.mod = torch.nn.GRU(D, H, batch_first=True)
        order = ["r", "z", "n"]           # PyTorch's gate order
        cat = lambda names: torch.tensor(np.concatenate(names, axis=0))  # noqa: E731
        with torch.no_grad():
            self.mod.weight_ih_l0.copy_(cat([weights[f"W_i{g}"].T for g in order]))
            self.mod.weight_hh_l0.copy_(cat([weights[f"W_h{g}"].T for g in order]))
            self.mod.bias_ih_l0.copy_(cat([weights[f"b_i{g}"] for g in order]))
            self.mod.bias_hh_l0.copy_(cat([weights[f"b_h{g}"] for g in order]))


# ---------------------------------------------------------------- JAX
class JaxPeer:
    name = "jax scan"
    trains = True

    def __init__(self, cell, params, weights: dict):
        import jax
        import jax.numpy as jnp
        self.jax = jax
        self.cell, self.params = cell, params
        self.w = {k: jnp.asarray(v) for k, v in weights.items()}
        inputs = INPUT_WEIGHTS[cell]
        F = _namespace(params, jax.nn.sigmoid, jnp.clip, jnp.tanh, jax.nn.relu,
                       jax.nn.softplus, lambda t, k: (t >= k).astype(jnp.float32),
                       exp=jnp.exp, log_sigmoid=jax.nn.log_sigmoid, maximum=jnp.maximum,
                       cat=lambda vs: jnp.concatenate(vs, axis=-1),
                       layer_norm=_layer_norm(lambda v: jnp.mean(v, -1, keepdims=True),
                                              jax.lax.rsqrt))
        nst = n_states(cell, params)

        def run(w, x):
            B, T, D = x.shape
            H = w[inputs[0]].shape[1]
            n = len(inputs)
            Wcat = jnp.concatenate([w[k] for k in inputs], axis=1)
            w = prepare(cell, F, w)
            xw = hoisted(cell, F, w, x.reshape(B * T, D) @ Wcat)
            xw = xw.reshape(B, T, n, H).transpose(1, 2, 0, 3)

            def body(carry, xw_t):
                st, t = carry
                st = step(cell, F, w, [xw_t[k] for k in range(n)], st, t)
                return (st, t + 1), st[0]

            st0 = tuple(jnp.zeros((B, H), x.dtype) for _ in range(nst))
            _, ys = jax.lax.scan(body, (st0, jnp.int32(0)), xw)
            return ys.transpose(1, 0, 2)

        def loss(w, x, dy):
            return jnp.sum(run(w, x) * dy)

        self._fwd = jax.jit(run)
        self._grad = jax.jit(jax.grad(loss, argnums=(0, 1)))

    def forward(self, x):
        return np.asarray(self._fwd(self.w, x).block_until_ready())

    def train(self, x, dy):
        gw, gx = self._grad(self.w, x, dy)
        self.jax.block_until_ready(gw)
        return np.asarray(gx)
