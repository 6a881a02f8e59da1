"""The recurrence as a JAX function: ``recurrent(kernel, x, mask, state0, weights, H,
truncate) -> (y [B,T,H], last [S,B,H])`` through the kernels' XLA FFI handlers, with a
``jax.custom_vjp`` whose backward is the generated backward kernel.

What the CPU path copies: nothing of x, y, the weights or the gradients (XLA hands the
handlers its own buffers, row-major, in place); the mask becomes uint8 (B*T bytes) and the
initial states one stacked [S,B,H] array.  ``save`` (what forward keeps for backward) is a
residual XLA allocates; the kernels' scratch is a buffer each calling thread keeps in the
handler library between calls (grown to the largest call it made, freed with the thread).
"""
from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from ..runtime.ffi import DTYPES
from . import _ffi


def _call(kernel, entry, dtype, values, shapes, ints):
    """One handler call: the results by member name."""
    ir = kernel.ir
    res, names = _ffi.results(ir, entry, shapes)
    target = f"{_ffi.targets(kernel, kernel.backend)}_{entry}{DTYPES[np.dtype(dtype)][1]}"
    attrs = {k: np.int64(v) for k, v in ints.items()}
    attrs.update(_ffi.flags(ir, entry, {**values, **shapes}))
    outs = jax.ffi.ffi_call(target, res, vmap_method="sequential")(
        *_ffi.operands(ir, entry, values), **attrs)
    return dict(zip(names, outs))


def _forward(kernel, H, x, mask, state0, weights, training):
    ir = kernel.ir
    B, T, D = x.shape
    n_save = kernel.sizes(T, B, D, H)[0]
    sds = lambda *shape: jax.ShapeDtypeStruct(shape, x.dtype)  # noqa: E731
    values = dict(x=x, mask=mask, state0=state0)
    values.update((f"w_{w.name}", a) for w, a in zip(ir.weights, weights))
    shapes = dict(y=sds(B, T, H), state_last=sds(len(ir.states), B, H),
                  save=sds(max(n_save, 1)) if training else None)
    out = _call(kernel, "forward", x.dtype, values, shapes, dict(T=T, B=B, D=D, H=H))
    return out["y"], out["state_last"], out.get("save")


def _backward(kernel, H, truncate, x, mask, state0_grad, weights, save, dy, dlast):
    ir = kernel.ir
    B, T, D = x.shape
    sds = lambda *shape: jax.ShapeDtypeStruct(shape, x.dtype)  # noqa: E731
    values = dict(x=x, mask=mask, save=save, dy=dy, dstate_last=dlast)
    values.update((f"w_{w.name}", a) for w, a in zip(ir.weights, weights))
    S = len(ir.states)
    shapes = dict(dx=sds(B, T, D), dstate0=sds(S, B, H) if state0_grad else None)
    shapes.update((f"dw_{w.name}", sds(*a.shape)) for w, a in zip(ir.weights, weights))
    out = _call(kernel, "backward", x.dtype, values, shapes,
                dict(T=T, B=B, D=D, H=H, truncate=truncate))
    return out["dx"], out.get("dstate0"), [out[f"dw_{w.name}"] for w in ir.weights]


def _zero(ct) -> bool:
    return ct is None or isinstance(ct, SymbolicZero)


@lru_cache(maxsize=None)
def _op(kernel, H: int, truncate: int):
    """The differentiable recurrence of ``kernel`` for output_dim H and truncation."""

    @jax.custom_vjp
    def rec(x, mask, state0, weights):
        y, last, _ = _forward(kernel, H, x, mask, state0, weights, training=False)
        return y, last

    def fwd(x, mask, state0, weights):
        y, last, save = _forward(kernel, H, x.value, mask.value if mask is not None else None,
                                 None if state0 is None else state0.value,
                                 [w.value for w in weights], training=True)
        need_state0 = state0 is not None and state0.perturbed
        res = (x.value, None if mask is None else mask.value, need_state0,
               [w.value for w in weights], save)
        return (y, last), res

    def bwd(res, cts):
        x, mask, need_state0, weights, save = res
        dy, dlast = cts
        if _zero(dy):
            dy = jnp.zeros((x.shape[0], x.shape[1], H), x.dtype)
        dx, ds0, dws = _backward(kernel, H, truncate, x, mask, need_state0, weights, save, dy,
                                 None if _zero(dlast) else dlast)
        return dx, None, ds0, dws

    # symbolic zeros: no zero dlast when the final states are not used, no gradient for
    # initial states nobody differentiates
    rec.defvjp(fwd, bwd, symbolic_zeros=True)
    return rec


def recurrent(kernel, x, mask, state0, weights, H: int, truncate: int = -1):
    """(y [B,T,H], last [S,B,H]) of ``kernel``'s cell on x [B,T,D] (a float32 or float64
    JAX array; float64 needs jax_enable_x64), ``mask`` uint8 [B,T] or None, ``state0``
    [S,B,H] or None (zeros), ``weights`` in spec order.  Differentiable (reverse mode) in
    x, state0 and the weights; ``truncate``: truncate_gradient."""
    return _op(kernel, int(H), int(truncate))(x, mask, state0, list(weights))


def run(kernel, x, mask, state0, weights, H: int, truncate: int = -1, reverse: bool = False):
    """:func:`recurrent` on x read from its end with ``reverse`` (mask too; y then in that
    reading order)."""
    if reverse:
        x = jnp.flip(x, 1)
        mask = None if mask is None else jnp.flip(mask, 1)
    return recurrent(kernel, x, mask, state0, weights, H, truncate)


def default_backend() -> str:
    """The kernels for JAX's default device: "cuda" where it is a GPU, else "c"."""
    return "cuda" if jax.default_backend() == "gpu" else "c"
