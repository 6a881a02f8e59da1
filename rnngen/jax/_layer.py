"""rnngen.jax.Recurrent: one recurrent layer of any cell as a pair of pure functions,
``init(key)`` and ``apply(params, x, ...)``, in the style of JAX's functional libraries."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import validation as V
from ..layers import resolve_cell
from ..pipeline import compile_cell
from ._ops import default_backend, run

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class Recurrent:
    """A recurrent layer over rnngen's kernels, for JAX.

    ``cell``: a built-in name ("GRU", "LSTM", ...), a path to a YAML spec, or a class from
    :func:`rnngen.load_cell`; ``**cell_params``: the cell's parameters (``activation``,
    ``init``, ...).  ``params = layer.init(key, dtype=jnp.float32)`` draws the weights as
    the spec's initializers say, a dict named by the spec's weights in spec order;
    ``layer.apply(params, x, mask=None, initial_state=None)`` is a pure function of JAX
    arrays: x (B, T, input_dim); mask (B, T) bool or 0/1; initial_state one (B, output_dim)
    array per state, in spec order (``layer.state_names``).  It returns y ((B, T, H) with
    return_sequences, else (B, H)), or with return_state the tuple (y, s_1, ..., s_n).
    go_backwards=True reads the sequence from its end and returns the outputs in that
    (reversed) order, as Keras.  Works under ``jax.jit``, ``jax.grad`` (the generated
    backward, through ``jax.custom_vjp``) and ``jax.vmap`` (one kernel call per mapped
    element); float64 needs ``jax.config.update("jax_enable_x64", True)``.

    ``backend``: which kernels the layer's calls run: "c" (XLA's CPU platform), "cuda"
    (XLA's CUDA platform, on XLA's stream; arrays on the GPU), or "cuda-emulated" (the CUDA
    kernels' host emulation on XLA's CPU platform, for testing); None: "cuda" where
    ``jax.default_backend()`` is "gpu", else "c".
    """

    def __init__(self, cell, input_dim: int, output_dim: int, return_sequences: bool = False,
                 truncate_gradient: int = -1, return_state: bool = False,
                 go_backwards: bool = False, *, backend=None, **cell_params):
        cls = resolve_cell(cell)
        if backend is None:
            backend = default_backend()
        if backend not in ("c", "cuda", "cuda-emulated"):
            raise ValueError(f"backend must be 'c', 'cuda' or 'cuda-emulated' (or None: "
                             f"'cuda' where JAX's default backend is a GPU, else 'c'), got "
                             f"{backend!r}")
        self.backend = backend
        opts = V.layer_options(output_dim, input_dim, return_sequences, truncate_gradient,
                               return_state, go_backwards, input_dim_optional=False)
        self.cell_class = cls
        for name, v in opts.items():
            setattr(self, name, v)
        self.cell_params = dict(cell_params)
        self.params = V.cell_params(cls.spec, cell_params)
        self.kernel = compile_cell(cls.spec, V.code_params(cls.spec, self.params), backend)
        ir = self.kernel.ir
        V.check_x_elementwise(ir, self.input_dim, self.output_dim, cls.__name__)
        self.state_names = tuple(ir.states)
        self.weight_names = tuple(w.name for w in ir.weights)

    def __repr__(self):
        s = (f"rnngen.jax.Recurrent({self.cell_class.__name__}, input_dim={self.input_dim}, "
             f"output_dim={self.output_dim}")
        for name, default in (("return_sequences", False), ("truncate_gradient", -1),
                              ("return_state", False), ("go_backwards", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + "".join(f", {k}={v!r}" for k, v in self.cell_params.items()) + ")"

    # -- weights -----------------------------------------------------------------------------
    def init(self, key, dtype=jnp.float32) -> dict:
        """The weights the spec's initializers draw, as a dict in spec order; ``key`` (a JAX
        PRNG key) seeds them, so the same key gives the same weights."""
        dtype = np.dtype(dtype)
        if dtype not in _FLOATS:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        if dtype == np.float64 and not jax.config.jax_enable_x64:
            raise TypeError("float64 weights need jax.config.update('jax_enable_x64', True)")
        seed = np.asarray(jax.random.key_data(key) if jnp.issubdtype(
            getattr(key, "dtype", None), jax.dtypes.prng_key) else key).astype(np.uint64)
        rng = np.random.default_rng(seed.ravel().tolist())
        first = V.initial_weights(self.kernel.ir, self.params, self.input_dim, self.output_dim,
                                  rng)
        return {n: jnp.asarray(w, dtype=dtype) for n, w in zip(self.weight_names, first)}

    # -- checks -------------------------------------------------------------------------------
    def _weights(self, params) -> list:
        if not isinstance(params, dict) or set(params) != set(self.weight_names):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(f"params must be a dict with the weights {list(self.weight_names)} "
                             f"(from layer.init), got {got}")
        ws = [jnp.asarray(params[n]) for n in self.weight_names]
        D, H = self.input_dim, self.output_dim
        for w, a in zip(self.kernel.ir.weights, ws):
            if tuple(a.shape) != tuple(w.dims(D, H)):
                raise ValueError(f"weight {w.name} has shape {tuple(a.shape)}, expected "
                                 f"{tuple(w.dims(D, H))}")
            if a.dtype != ws[0].dtype or a.dtype not in _FLOATS:
                raise TypeError(f"every weight must be float32 or float64 and of one dtype: "
                                f"{self.weight_names[0]} is {ws[0].dtype}, {w.name} {a.dtype}")
        return ws

    def _x(self, x, dtype):
        x = jnp.asarray(x)
        V.check_x_shape(x.shape, self.input_dim, "layer",
                        " (jax.vmap maps over a leading axis of its own)")
        if x.dtype != dtype:
            raise TypeError(f"x is {x.dtype} but the weights are {dtype}: convert one of them")
        return x

    @staticmethod
    def _mask(mask, x):
        if mask is None:
            return None
        mask = jnp.asarray(mask)
        if mask.shape != x.shape[:2]:
            raise ValueError(f"mask must have shape (batch, timesteps) = {x.shape[:2]}, got "
                             f"{mask.shape}")
        if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.integer)
                or jnp.issubdtype(mask.dtype, jnp.floating)):
            raise TypeError(f"mask must be boolean or 0/1, got {mask.dtype}")
        return (mask != 0).astype(jnp.uint8)

    def _state(self, initial_state, x):
        if initial_state is None:
            return None
        S, B, H = len(self.state_names), x.shape[0], self.output_dim
        states = initial_state
        if not isinstance(states, (list, tuple)) and S == 1:
            states = [states]
        if not isinstance(states, (list, tuple)) or len(states) != S:
            raise ValueError(f"initial_state must be a list of {S} arrays of shape "
                             f"(batch, output_dim) = {(B, H)}, one per state "
                             f"({', '.join(self.state_names)})")
        states = [jnp.asarray(s) for s in states]
        for name, s in zip(self.state_names, states):
            if s.shape != (B, H) or s.dtype != x.dtype:
                raise ValueError(f"initial state {name} must be a {x.dtype} array of shape "
                                 f"{(B, H)}, got {s.dtype} of shape {s.shape}")
        return jnp.stack(states)

    # -- running ------------------------------------------------------------------------------
    def apply(self, params, x, mask=None, initial_state=None):
        """The layer's output for x (see the class); a pure function of its arguments."""
        weights = self._weights(params)
        x = self._x(x, weights[0].dtype)
        mask = self._mask(mask, x)
        state0 = self._state(initial_state, x)
        y, last = run(self.kernel, x, mask, state0, weights, self.output_dim,
                      self.truncate_gradient, self.go_backwards)
        out = y if self.return_sequences else y[:, -1]
        if self.return_state:
            return (out, *(last[i] for i in range(last.shape[0])))
        return out

    __call__ = apply
