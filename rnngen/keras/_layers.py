"""Keras 3 layers over rnngen's kernels: :class:`Recurrent` (any cell, weights named by its
spec) and :class:`SimpleRNN`, :class:`GRU`, :class:`LSTM` with Keras's own constructor
arguments and weights (kernel, recurrent_kernel, bias: ``set_weights(keras_layer.get_weights())``
works).  On the jax backend they run through rnngen.jax, on the torch backend through
rnngen.torch's operators; other backends raise."""
from __future__ import annotations

import keras
import numpy as np

from .. import validation as V
from ..layers import cell_from_ref, cell_ref, resolve_cell
from ..pipeline import compile_cell

BACKENDS = ("jax", "torch")
# Keras activation names and the spec's names of the same functions (Keras 3's
# hard_sigmoid is relu6(x + 3) / 6, not the seed's clip(0.2 x + 0.5): not listed)
ACTIVATIONS = {"tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu", "softplus": "softplus",
               "linear": "linear", None: "linear"}


def _backend() -> str:
    be = keras.backend.backend()
    if be not in BACKENDS:
        raise RuntimeError(f"rnngen.keras runs on Keras's jax and torch backends, not on "
                           f"{be!r}: set KERAS_BACKEND=jax or KERAS_BACKEND=torch before "
                           f"importing keras")
    return be


def _activation(name, what):
    if not isinstance(name, (str, type(None))) or name not in ACTIVATIONS:
        raise ValueError(f"{what} must be one of {', '.join(repr(k) for k in ACTIVATIONS)} "
                         f"for rnngen's kernels, got {name!r}")
    return ACTIVATIONS[name]


class _Base(keras.layers.Layer):
    """What the layers share: the options, the kernels' call on either backend, masks,
    shapes.  A subclass sets ``self._cell`` (a cell class), ``self._code`` (its compiled-in
    parameters), makes its weights in ``build`` and lists the spec's weights, in spec order,
    in ``_spec_weights``."""

    def __init__(self, units, return_sequences=False, return_state=False, go_backwards=False,
                 truncate_gradient=-1, **kwargs):
        _backend()
        super().__init__(**kwargs)
        opts = V.layer_options(units, None, return_sequences, truncate_gradient, return_state,
                               go_backwards)
        self.units = opts["output_dim"]
        self.return_sequences = opts["return_sequences"]
        self.return_state = opts["return_state"]
        self.go_backwards = opts["go_backwards"]
        self.truncate_gradient = opts["truncate_gradient"]
        self.supports_masking = True
        self.stateful = False            # (keras.layers.Bidirectional asks)
        # Keras's RNN attribute: outputs at padded steps are zero instead of repeating the
        # last output (keras.layers.Bidirectional sets it on the layers it wraps)
        self.zero_output_for_mask = False
        self._kernels = {}               # backend -> its kernel of the cell

    # -- the cell ------------------------------------------------------------------------
    def _kernel(self, backend: str = "c"):
        k = self._kernels.get(backend)
        if k is None:
            k = self._kernels[backend] = compile_cell(self._cell.spec, self._code, backend)
        return k

    @property
    def state_names(self) -> tuple:
        return tuple(self._kernel().ir.states)

    def _check_build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"{self.__class__.__name__} takes inputs of shape (batch, "
                             f"timesteps, features) with features known, got {input_shape}")
        dt = keras.backend.standardize_dtype(self.compute_dtype)
        if dt not in ("float32", "float64"):
            raise ValueError(f"rnngen's kernels compute in float32 or float64, not {dt} "
                             f"(the layer's dtype policy)")
        return int(input_shape[-1])

    # -- running -------------------------------------------------------------------------
    def call(self, sequences, initial_state=None, mask=None, training=False):
        be = _backend()
        H, k = self.units, self._kernel()
        weights = self._spec_weights()
        S = len(k.ir.states)
        states = None
        if initial_state is not None:
            states = list(initial_state) if isinstance(initial_state, (list, tuple)) \
                else [initial_state]
            if len(states) != S:
                raise ValueError(f"initial_state must list {S} arrays of shape (batch, "
                                 f"{H}), one per state ({', '.join(k.ir.states)})")
        if be == "jax":
            y, last = self._run_jax(sequences, mask, states, weights)
        else:
            y, last = self._run_torch(sequences, mask, states, weights)
        if self.zero_output_for_mask and mask is not None:
            keep = keras.ops.cast(keras.ops.not_equal(mask, 0), y.dtype)
            y = y * keras.ops.expand_dims(keras.ops.flip(keep, 1) if self.go_backwards
                                          else keep, -1)
        out = y if self.return_sequences else y[:, -1]
        if self.return_state:
            return [out] + [last[i] for i in range(S)]
        return out

    def _run_jax(self, x, mask, states, weights):
        import jax.numpy as jnp
        from ..jax._ops import default_backend, run
        m = None if mask is None else (jnp.asarray(mask) != 0).astype(jnp.uint8)
        s0 = None if states is None else jnp.stack([jnp.asarray(s, x.dtype) for s in states])
        return run(self._kernel(default_backend()), x, m, s0, weights, self.units,
                   self.truncate_gradient, self.go_backwards)

    def _run_torch(self, x, mask, states, weights):
        import torch
        from ..torch._ops import register_cell, run
        key = register_cell(self._cell.spec, self._code)
        m = None if mask is None else (mask != 0).to(torch.uint8).contiguous()
        s0 = None if states is None else torch.stack([s.to(x.dtype) for s in states])
        return run(key, x, m, s0, weights, self.units, self.truncate_gradient,
                   self.go_backwards)

    def compute_mask(self, sequences, mask=None):
        out = mask if self.return_sequences else None
        if self.return_state:
            return [out] + [None] * len(self.state_names)
        return out

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        B, T = sequences_shape[0], sequences_shape[1]
        out = (B, T, self.units) if self.return_sequences else (B, self.units)
        if self.return_state:
            return [out] + [(B, self.units)] * len(self.state_names)
        return out

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "return_sequences": self.return_sequences, "return_state": self.return_state,
                "go_backwards": self.go_backwards, "truncate_gradient": self.truncate_gradient}


@keras.saving.register_keras_serializable(package="rnngen")
class Recurrent(_Base):
    """A Keras 3 layer of any rnngen cell: ``Recurrent(cell, units, return_sequences=False,
    return_state=False, go_backwards=False, truncate_gradient=-1, seed=None,
    **cell_params)``; ``cell`` a built-in name, a spec path or a class from load_cell.
    Its weights are the spec's, by name and in spec order, drawn by the spec's
    initializers from ``seed``.  Other keyword arguments go to keras.layers.Layer (name,
    dtype, trainable).  A user spec's text is part of the layer's config, so a saved model
    loads where only the .keras file is."""

    def __init__(self, cell, units, return_sequences=False, return_state=False,
                 go_backwards=False, truncate_gradient=-1, seed=None, **kwargs):
        if isinstance(cell, dict) and set(cell) == {"spec_path", "spec_text"}:
            cls = cell_from_ref(("spec", cell["spec_path"], cell["spec_text"]))
        else:
            cls = resolve_cell(cell)
        names = {p.name for p in cls.spec.params}
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        super().__init__(units, return_sequences, return_state, go_backwards,
                         truncate_gradient, **kwargs)
        self._cell = cls
        self.cell_params = given
        self._params = V.cell_params(cls.spec, given)
        self._code = V.code_params(cls.spec, self._params)
        self.seed = seed

    def build(self, input_shape):
        D = self._check_build(input_shape)
        ir = self._kernel().ir
        V.check_x_elementwise(ir, D, self.units, self._cell.__name__)
        seed = self.seed if self.seed is not None else np.random.SeedSequence().entropy
        first = V.initial_weights(ir, self._params, D, self.units, np.random.default_rng(seed))
        self._vars = [self.add_weight(shape=a.shape, name=w.name,
                                      initializer=lambda shape, dtype=None, a=a: a.astype(
                                          keras.backend.standardize_dtype(dtype or "float32")))
                      for w, a in zip(ir.weights, first)]

    def _spec_weights(self):
        return [v.value for v in self._vars]

    def get_config(self):
        ref = cell_ref(self._cell)
        cell = ref if isinstance(ref, str) else {"spec_path": ref[1], "spec_text": ref[2]}
        return {**super().get_config(), "cell": cell, "seed": self.seed, **self.cell_params}


class _KerasCell(_Base):
    """SimpleRNN, GRU and LSTM with Keras 3's arguments and weights: kernel (input_dim,
    n*units), recurrent_kernel (units, n*units) and bias, gates in Keras's order; each call
    hands the kernels the spec's per-gate blocks (slices of these)."""
    _gates = 1

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid",
                 use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros",
                 kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None,
                 kernel_constraint=None, recurrent_constraint=None, bias_constraint=None,
                 dropout=0.0, recurrent_dropout=0.0, seed=None, return_sequences=False,
                 return_state=False, go_backwards=False, stateful=False, unroll=False,
                 use_cudnn="auto", truncate_gradient=-1, **kwargs):
        super().__init__(units, return_sequences, return_state, go_backwards,
                         truncate_gradient, **kwargs)
        if dropout or recurrent_dropout:
            raise ValueError("rnngen.keras layers have no dropout or recurrent_dropout yet: "
                             "put a keras.layers.Dropout before or after the layer")
        if stateful:
            raise ValueError("rnngen.keras layers are not stateful: pass initial_state "
                             "(and return_state=True) instead")
        self.activation = activation
        self.recurrent_activation = recurrent_activation
        self.use_bias = V.check_flag("use_bias", use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = keras.regularizers.get(recurrent_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.recurrent_constraint = keras.constraints.get(recurrent_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.seed = seed
        self.unroll, self.use_cudnn = unroll, use_cudnn      # accepted; nothing to choose

    _order = ""     # Keras's gates in order, as the spec's weights name them (W_<g>, ...)

    def _bias_shape(self):
        return (self._gates * self.units,)

    def _blocks(self, W, U, b, gate) -> dict:
        """The spec's weights from Keras's: W_<g>, U_<g>, b_<g> of each gate g."""
        return {f"{p}_{g}": gate(a, i) for i, g in enumerate(self._order)
                for p, a in (("W", W), ("U", U), ("b", b))}

    def _bias_init(self):
        return self.bias_initializer

    def build(self, input_shape):
        D = self._check_build(input_shape)
        n, H = self._gates, self.units
        self.kernel = self.add_weight(shape=(D, n * H), name="kernel",
                                      initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer,
                                      constraint=self.kernel_constraint)
        self.recurrent_kernel = self.add_weight(shape=(H, n * H), name="recurrent_kernel",
                                                initializer=self.recurrent_initializer,
                                                regularizer=self.recurrent_regularizer,
                                                constraint=self.recurrent_constraint)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(shape=self._bias_shape(), name="bias",
                                        initializer=self._bias_init(),
                                        regularizer=self.bias_regularizer,
                                        constraint=self.bias_constraint)

    def _spec_weights(self):
        H = self.units
        W, U = self.kernel.value, self.recurrent_kernel.value
        if self.bias is not None:
            b = self.bias.value
        else:
            b = keras.ops.zeros(self._bias_shape(), dtype=W.dtype)
        gate = lambda a, g: a[..., g * H:(g + 1) * H]  # noqa: E731
        blocks = self._blocks(W, U, b, gate)
        return [blocks[w.name] for w in self._kernel().ir.weights]

    def get_config(self):
        ser = keras.saving.serialize_keras_object
        return {**super().get_config(), "activation": self.activation,
                "recurrent_activation": self.recurrent_activation, "use_bias": self.use_bias,
                "kernel_initializer": ser(self.kernel_initializer),
                "recurrent_initializer": ser(self.recurrent_initializer),
                "bias_initializer": ser(self.bias_initializer),
                "kernel_regularizer": ser(self.kernel_regularizer),
                "recurrent_regularizer": ser(self.recurrent_regularizer),
                "bias_regularizer": ser(self.bias_regularizer),
                "kernel_constraint": ser(self.kernel_constraint),
                "recurrent_constraint": ser(self.recurrent_constraint),
                "bias_constraint": ser(self.bias_constraint), "seed": self.seed}


@keras.saving.register_keras_serializable(package="rnngen")
class SimpleRNN(_KerasCell):
    """keras.layers.SimpleRNN's arguments and weights (kernel, recurrent_kernel, bias) on
    rnngen's SimpleRNN: h = activation(x @ kernel + h @ recurrent_kernel + bias)."""
    _gates = 1

    def __init__(self, units, activation="tanh", **kwargs):
        kwargs.pop("recurrent_activation", None)
        super().__init__(units, activation=activation, **kwargs)
        self._cell = resolve_cell("SimpleRNN")
        self._code = {"activation": _activation(activation, "activation")}

    def _blocks(self, W, U, b, gate):
        return {"W": W, "U": U, "b": b}

    def get_config(self):
        config = super().get_config()
        config.pop("recurrent_activation")
        return config


@keras.saving.register_keras_serializable(package="rnngen")
class GRU(_KerasCell):
    """keras.layers.GRU's arguments and weights (gates z, r, h).  reset_after=False is the
    seed's GRU (specs/gru.yaml) with any of the listed activations; reset_after=True (Keras's
    default) is examples/torch_gru.yaml (the reset gate after the recurrent product, the
    bias of shape (2, 3 * units): input side, recurrent side), with Keras's default
    activations only (tanh, sigmoid)."""
    _gates = 3
    _order = "zrh"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid",
                 reset_after=True, **kwargs):
        super().__init__(units, activation=activation,
                         recurrent_activation=recurrent_activation, **kwargs)
        self.reset_after = V.check_flag("reset_after", reset_after)
        act = _activation(activation, "activation")
        inner = _activation(recurrent_activation, "recurrent_activation")
        if self.reset_after:
            if (act, inner) != ("tanh", "sigmoid"):
                raise ValueError("GRU(reset_after=True) runs with activation='tanh' and "
                                 "recurrent_activation='sigmoid' only; other activations "
                                 "need reset_after=False")
            from .. import load_example
            self._cell, self._code = load_example("torch_gru"), {}
        else:
            self._cell = resolve_cell("GRU")
            self._code = {"activation": act, "inner_activation": inner}

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _blocks(self, W, U, b, gate):
        if not self.reset_after:
            return super()._blocks(W, U, b, gate)
        out = {}
        for i, g in enumerate("zrn"):           # Keras's z, r, h blocks; torch's r, z, n names
            out[f"W_i{g}"], out[f"W_h{g}"] = gate(W, i), gate(U, i)
            out[f"b_i{g}"], out[f"b_h{g}"] = gate(b[0], i), gate(b[1], i)
        return out

    def get_config(self):
        return {**super().get_config(), "reset_after": self.reset_after}


@keras.saving.register_keras_serializable(package="rnngen")
class LSTM(_KerasCell):
    """keras.layers.LSTM's arguments and weights (gates i, f, c, o; unit_forget_bias) on
    the seed's LSTM (specs/lstm.yaml): c = f * c + i * activation(...),
    h = o * activation(c)."""
    _gates = 4
    _order = "ifco"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid",
                 unit_forget_bias=True, **kwargs):
        super().__init__(units, activation=activation,
                         recurrent_activation=recurrent_activation, **kwargs)
        self.unit_forget_bias = V.check_flag("unit_forget_bias", unit_forget_bias)
        self._cell = resolve_cell("LSTM")
        self._code = {"activation": _activation(activation, "activation"),
                      "inner_activation": _activation(recurrent_activation,
                                                      "recurrent_activation")}

    def _bias_init(self):
        if not self.unit_forget_bias:
            return self.bias_initializer
        init, H = self.bias_initializer, self.units

        def bias(shape, dtype=None):             # Keras's: ones for the forget gate
            ops = keras.ops
            return ops.concatenate([init((H,), dtype=dtype), ops.ones((H,), dtype=dtype),
                                    init((2 * H,), dtype=dtype)])
        return bias

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}
