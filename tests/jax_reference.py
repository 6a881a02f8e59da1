"""A float64 ``jax.lax.scan`` reference of the cells rnngen.jax is checked against: the step
equations of benchmarks/peers.py (written from SEMANTICS.md and the YAML files, sharing no
code with the generator), run with the layer's rules around them: masked steps carry every
state and repeat the output, SimpleDeepRNN's lags count real steps only, initial states,
and truncate_gradient=k as SEMANTICS.md states it (steps before T - k pass no gradient,
not even their own outputs')."""
from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import peers  # noqa: E402

# the weight names of rnngen's spec for each cell peers.py knows, and its registers
CELLS = ["SimpleRNN", "SimpleDeepRNN", "GRU", "LSTM", "JZS1", "JZS2", "JZS3", "MGU",
         "LayerNormLSTM"]


def namespace(params):
    return peers._namespace(
        params, jax.nn.sigmoid, jnp.clip, jnp.tanh, jax.nn.relu, jax.nn.softplus,
        lambda t, k: (t >= k).astype(jnp.float64), exp=jnp.exp,
        log_sigmoid=jax.nn.log_sigmoid, maximum=jnp.maximum,
        cat=lambda vs: jnp.concatenate(vs, axis=-1),
        layer_norm=peers._layer_norm(lambda v: jnp.mean(v, -1, keepdims=True), jax.lax.rsqrt))


def run(cell, params, w: dict, x, mask=None, state0=None, truncate=-1):
    """(y [B,T,H], final states [S,B,H]) of ``cell`` on x [B,T,D]."""
    F = namespace(params)
    B, T, D = x.shape
    inputs = peers.INPUT_WEIGHTS[cell]
    H = w[inputs[0]].shape[1]
    n = len(inputs)
    S = peers.n_states(cell, params)
    first = 0 if truncate == -1 else max(T - truncate, 0)

    def body(carry, inp):
        st, nreal = carry
        x_t, m_t, t = inp
        keep = t >= first
        sg = lambda a: jnp.where(keep, a, jax.lax.stop_gradient(a))  # noqa: E731
        wt = peers.prepare(cell, F, {k: sg(v) for k, v in w.items()})
        st_in = tuple(sg(s) for s in st)
        xw = peers.hoisted(cell, F, wt, sg(x_t) @ jnp.concatenate([wt[k] for k in inputs], 1))
        new = peers.step(cell, F, wt, [xw[:, k * H:(k + 1) * H] for k in range(n)], st_in,
                         nreal[:, None])
        m = m_t[:, None]
        st = tuple(jnp.where(m, a, old) for a, old in zip(new, st_in))
        return (st, nreal + m_t.astype(nreal.dtype)), st[0]

    mask = jnp.ones((B, T), bool) if mask is None else jnp.asarray(mask, bool)
    if state0 is None:
        st0 = tuple(jnp.zeros((B, H), x.dtype) for _ in range(S))
    else:
        st0 = tuple(state0)
    (st, _), ys = jax.lax.scan(body, (st0, jnp.zeros(B, jnp.int32)),
                               (x.transpose(1, 0, 2), mask.T, jnp.arange(T)))
    return ys.transpose(1, 0, 2), jnp.stack(st)
