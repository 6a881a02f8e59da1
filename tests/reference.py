"""An own numpy implementation of SEMANTICS.md, written from that page alone.

It shares no code with rnngen's generator or kernels.  ``run`` can start from
given registers at a given step, which is how the tests check truncated
gradients with finite differences.
"""
from __future__ import annotations

import numpy as np


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


ACT = {
    "sigmoid": sigmoid,
    "hard_sigmoid": lambda v: np.clip(0.2 * v + 0.5, 0.0, 1.0),
    "tanh": np.tanh,
    "relu": lambda v: np.maximum(v, 0.0),
    "softplus": lambda v: np.logaddexp(0.0, v),
    "linear": lambda v: v,
}

DEFAULTS = {
    "SimpleRNN": dict(activation="sigmoid"),
    "SimpleDeepRNN": dict(activation="sigmoid", inner_activation="hard_sigmoid", depth=3),
    "GRU": dict(activation="sigmoid", inner_activation="hard_sigmoid"),
    "LSTM": dict(activation="tanh", inner_activation="hard_sigmoid"),
    "JZS1": dict(activation="tanh", inner_activation="sigmoid"),
    "JZS2": dict(activation="tanh", inner_activation="sigmoid"),
    "JZS3": dict(activation="tanh", inner_activation="sigmoid"),
}


def weight_shapes(name, D, H, depth=3):
    i, r, v = (D, H), (H, H), (H,)
    return {
        "SimpleRNN": [i, r, v],
        "SimpleDeepRNN": [i] + [r] * depth + [v],
        "GRU": [i, r, v] * 3,
        "LSTM": [i, r, v] * 4,
        "JZS1": [i, v, i, r, v, r, v, i],
        "JZS2": [i, r, v, r, v, i, r, v, i],
        "JZS3": [i, r, v] * 3,
    }[name]


def _step(name, p, W, xt, regs, nreal):
    """New state vectors from x_t and the registers (regs["h"][k-1] = h, k real steps back)."""
    act = ACT[p["activation"]]
    inner = ACT.get(p.get("inner_activation"))
    h = regs["h"][0]
    if name == "SimpleRNN":
        Wx, U, b = W
        return {"h": act(xt @ Wx + b + h @ U)}
    if name == "SimpleDeepRNN":
        depth = p["depth"]
        Wx, Us, b = W[0], W[1:1 + depth], W[1 + depth]
        s = xt @ Wx + b
        for k in range(1, depth + 1):
            started = (nreal >= k).astype(float)[:, None]      # lag before the start: zero
            s = s + started * inner(regs["h"][k - 1] @ Us[k - 1])
        return {"h": act(s)}
    if name == "GRU":
        W_z, U_z, b_z, W_r, U_r, b_r, W_h, U_h, b_h = W
        z = inner(xt @ W_z + b_z + h @ U_z)
        r = inner(xt @ W_r + b_r + h @ U_r)
        hh = act(xt @ W_h + b_h + (r * h) @ U_h)
        return {"h": z * h + (1 - z) * hh}
    if name == "LSTM":
        W_i, U_i, b_i, W_c, U_c, b_c, W_f, U_f, b_f, W_o, U_o, b_o = W
        c = regs["c"][0]
        i = inner(xt @ W_i + b_i + h @ U_i)
        f = inner(xt @ W_f + b_f + h @ U_f)
        c_new = f * c + i * act(xt @ W_c + b_c + h @ U_c)
        o = inner(xt @ W_o + b_o + h @ U_o)
        return {"h": o * act(c_new), "c": c_new}
    if name == "JZS1":
        W_z, b_z, W_r, U_r, b_r, U_h, b_h, Pmat = W
        z = inner(xt @ W_z + b_z)
        r = inner(xt @ W_r + b_r + h @ U_r)
        hh = act(np.tanh(xt @ Pmat) + b_h + (r * h) @ U_h)
        return {"h": hh * z + h * (1 - z)}
    if name == "JZS2":
        W_z, U_z, b_z, U_r, b_r, W_h, U_h, b_h, Pmat = W
        z = inner(xt @ W_z + b_z + h @ U_z)
        r = inner(xt @ Pmat + b_r + h @ U_r)
        hh = act(xt @ W_h + b_h + (r * h) @ U_h)
        return {"h": hh * z + h * (1 - z)}
    if name == "JZS3":
        W_z, U_z, b_z, W_r, U_r, b_r, W_h, U_h, b_h = W
        z = inner(xt @ W_z + b_z + np.tanh(h) @ U_z)
        r = inner(xt @ W_r + b_r + h @ U_r)
        hh = act(xt @ W_h + b_h + (r * h) @ U_h)
        return {"h": hh * z + h * (1 - z)}
    raise KeyError(name)


def initial_state(name, p, B, H):
    depth = p.get("depth", 1) if name == "SimpleDeepRNN" else 1
    regs = {"h": [np.zeros((B, H)) for _ in range(depth)]}
    if name == "LSTM":
        regs["c"] = [np.zeros((B, H))]
    return regs, np.zeros(B, dtype=int)


def run(name, p, W, x, mask=None, start=None, t_start=0):
    """Outputs y[:, t_start:] (B, T - t_start, H) and the final (registers, counts).

    A masked step is absent: every register (and the lag history) carries over
    and the output repeats the carried h."""
    B, T, _ = x.shape
    H = W[1].shape[-1]   # the second weight is [H, H] or [H] in every layer
    regs, nreal = start if start is not None else initial_state(name, p, B, H)
    regs = {k: [a.copy() for a in v] for k, v in regs.items()}
    nreal = nreal.copy()
    ys = []
    for t in range(t_start, T):
        m = np.ones(B, dtype=bool) if mask is None else np.asarray(mask[:, t], dtype=bool)
        new = _step(name, p, W, x[:, t], regs, nreal)
        for s, v in new.items():
            hist = regs[s]
            shifted = [v] + hist[:-1]
            regs[s] = [np.where(m[:, None], a, old) for a, old in zip(shifted, hist)]
        nreal = nreal + m
        ys.append(regs["h"][0].copy())
    return np.stack(ys, axis=1), (regs, nreal)
