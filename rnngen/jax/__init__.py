"""rnngen's kernels in JAX: :class:`Recurrent` (``init`` / ``apply``) and the function
:func:`recurrent`, through XLA's FFI (handlers compiled against ``jax.ffi.include_dir()``)
with a ``jax.custom_vjp`` that runs the generated backward.  CPU (the C backend) only.

    import jax, jax.numpy as jnp, rnngen.jax
    layer = rnngen.jax.Recurrent("GRU", 64, 128, return_sequences=True)
    params = layer.init(jax.random.key(0))
    y = jax.jit(layer.apply)(params, x)                       # x (B, T, 64)
    grads = jax.grad(lambda p: layer.apply(p, x).sum())(params)
"""
from ._layer import Recurrent
from ._ops import recurrent

__all__ = ["Recurrent", "recurrent"]
