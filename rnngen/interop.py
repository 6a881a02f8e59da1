"""Weights between rnngen's layers and torch.nn / Keras 3 recurrent layers.

    from_torch_lstm(module) -> list      torch.nn.LSTM / LSTMCell -> rnngen.layers.LSTM
    to_torch_lstm(weights, module=None)  ... and back (into the module, or a state_dict)
    from_torch_gru(module) -> list       torch.nn.GRU / GRUCell -> load_example("torch_gru")
    to_torch_gru(weights, module=None)
    from_keras(layer) -> list            Keras 3 SimpleRNN / GRU / LSTM -> rnngen's layer
    to_keras(weights, layer) -> layer
    to_rnngen(module_or_layer, **kw)     the rnngen layer that computes the same function

A conversion only splits, transposes, reorders and joins arrays (and adds torch LSTM's two
biases, which enter its equations only as their sum), so it is exact in every dtype.
Whether the two layers then compute the same function depends on their activations:
``to_rnngen`` sets those itself, ``to_*`` check them when given an rnngen layer instead of
a weight list, and docs/interop.md lists the settings under which the math coincides.

torch and keras are imported only here, inside the functions: neither is needed to import
rnngen.  Shape letters: D input_dim, H output_dim (torch's input_size and hidden_size,
Keras's units).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

# -- rnngen's weight lists ---------------------------------------------------------------
# The weights= order of each layer that a foreign layer converts to, with each weight's
# role: "in" (D, H), "rec" (H, H), "bias" (H,).
LISTS = {
    "SimpleRNN": (("W", "in"), ("U", "rec"), ("b", "bias")),
    "GRU": (("W_z", "in"), ("U_z", "rec"), ("b_z", "bias"),
            ("W_r", "in"), ("U_r", "rec"), ("b_r", "bias"),
            ("W_h", "in"), ("U_h", "rec"), ("b_h", "bias")),
    "LSTM": (("W_i", "in"), ("U_i", "rec"), ("b_i", "bias"),
             ("W_c", "in"), ("U_c", "rec"), ("b_c", "bias"),
             ("W_f", "in"), ("U_f", "rec"), ("b_f", "bias"),
             ("W_o", "in"), ("U_o", "rec"), ("b_o", "bias")),
    "TorchGRU": (("W_ir", "in"), ("W_iz", "in"), ("W_in", "in"),
                 ("W_hr", "rec"), ("W_hz", "rec"), ("W_hn", "rec"),
                 ("b_ir", "bias"), ("b_iz", "bias"), ("b_in", "bias"),
                 ("b_hr", "bias"), ("b_hz", "bias"), ("b_hn", "bias")),
}
# Each gate's (input matrix, recurrent matrix, input bias, recurrent bias or None) in the
# list.  A list without a recurrent bias takes the sum of a foreign layer's two biases.
GATES = {
    "SimpleRNN": {"h": ("W", "U", "b", None)},
    "GRU": {g: (f"W_{g}", f"U_{g}", f"b_{g}", None) for g in "zrh"},
    "LSTM": {g: (f"W_{g}", f"U_{g}", f"b_{g}", None) for g in "icfo"},
    "TorchGRU": {g: (f"W_i{g}", f"W_h{g}", f"b_i{g}", f"b_h{g}") for g in "rzn"},
}
# How each list is made in rnngen (for messages).
MAKE = {"SimpleRNN": "rnngen.layers.SimpleRNN", "GRU": "rnngen.layers.GRU",
        "LSTM": "rnngen.layers.LSTM", "TorchGRU": "rnngen.load_example('torch_gru')"}
_ROLE_SHAPE = {"in": "(input_dim, output_dim)", "rec": "(output_dim, output_dim)",
               "bias": "(output_dim,)"}

# The gate blocks of the fused foreign matrices, in their order (our gate names).
TORCH_ORDER = {"LSTM": "ifco",      # torch: i, f, g, o; its g is our c
               "GRU": "rzn"}
KERAS_ORDER = {"SimpleRNN": "h", "GRU": "zrh", "LSTM": "ifco", "TorchGRU": "zrn"}
# Keras's activation names whose functions are rnngen's functions of the same name.
# (Keras 3's hard_sigmoid is clip(x/6 + 0.5, 0, 1), rnngen's is Theano's
# clip(0.2 x + 0.5, 0, 1): a different function.)
KERAS_SAME_ACTIVATIONS = ("sigmoid", "tanh", "relu", "softplus", "linear")

TORCH_EXTRA = "pip install -e '.[torch]'"


# -- the rnngen side ---------------------------------------------------------------------
def _expected(kind: str) -> str:
    return (f"the {len(LISTS[kind])} weights of {MAKE[kind]}: "
            + ", ".join(f"{n} {_ROLE_SHAPE[r]}" for n, r in LISTS[kind]))


def _layer_class(kind: str):
    if kind == "TorchGRU":
        from . import load_example
        return load_example("torch_gru")
    from . import layers
    return layers.BUILTIN[kind]


def _same_spec(layer, kind: str) -> bool:
    try:
        return Path(layer.spec.path).resolve() == Path(_layer_class(kind).spec.path).resolve()
    except (AttributeError, OSError, TypeError):
        return False


def _check_list(weights, kind: str):
    """The weight list as float arrays, checked against ``kind``'s names and roles;
    returns (arrays, D, H)."""
    names = LISTS[kind]
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights must be a list of numpy arrays or an rnngen layer, got "
                        f"{type(weights).__name__}; expected {_expected(kind)}")
    if len(weights) != len(names):
        raise ValueError(f"wrong number of weights: got {len(weights)}, expected "
                         f"{_expected(kind)}")
    arrays = []
    for (name, _), w in zip(names, weights):
        try:
            a = np.asarray(w)
        except Exception:   # noqa: BLE001 - anything numpy cannot read
            raise TypeError(f"weight {name} must be a numpy array, got "
                            f"{type(w).__name__}") from None
        if a.dtype.kind != "f":
            raise TypeError(f"weight {name} must hold floating-point numbers, got dtype "
                            f"{a.dtype}")
        arrays.append(a)
    first = arrays[0]
    if first.ndim != 2:
        raise ValueError(f"weight {names[0][0]} must be a matrix {_ROLE_SHAPE['in']}, got "
                         f"shape {first.shape}; expected {_expected(kind)}")
    D, H = first.shape
    want = {"in": (D, H), "rec": (H, H), "bias": (H,)}
    for (name, role), a in zip(names, arrays):
        if a.shape != want[role]:
            raise ValueError(f"weight {name} has shape {a.shape}, expected {want[role]} = "
                             f"{_ROLE_SHAPE[role]}, with input_dim={D} and output_dim={H} "
                             f"read from {names[0][0]}'s shape; expected {_expected(kind)}")
    return arrays, D, H


def _weights_arg(weights, kind: str, settings: dict, target: str):
    """The arrays of ``weights`` (a list, or an rnngen layer whose math must be the
    target's: the same spec and ``settings`` among its parameters); (arrays, D, H)."""
    from .layers import Recurrent
    if isinstance(weights, Recurrent):
        layer = weights
        got = {k: layer.params.get(k) for k in settings}
        if not _same_spec(layer, kind) or got != settings:
            what = type(layer).__name__ + (f"({', '.join(f'{k}={v!r}' for k, v in got.items())})"
                                           if settings else "")
            want = MAKE[kind] + (f"(..., {', '.join(f'{k}={v!r}' for k, v in settings.items())})"
                                 if settings else "")
            hint = ""
            if kind == "TorchGRU" and _same_spec(layer, "GRU"):
                hint = (" (rnngen.layers.GRU applies the reset gate before the recurrent "
                        "product, torch's and Keras's reset_after=True GRU after it)")
            raise ValueError(f"{target} computes what {want} computes; this layer is "
                             f"{what}, a different function{hint}. Pass layer.get_weights() "
                             "to convert the weights anyway")
        weights = layer.get_weights()
    return _check_list(weights, kind)


def _gates(arrays, kind):
    """{gate: [input matrix, recurrent matrix, input bias, recurrent bias or None]}."""
    index = {name: a for (name, _), a in zip(LISTS[kind], arrays)}
    return {g: [index[n] if n is not None else None for n in names]
            for g, names in GATES[kind].items()}


def _list(gates, kind):
    """The weight list of ``kind`` from {gate: (Wx, Wh, bx, bh or None)}; where the list has
    no recurrent bias, bx + bh goes into its bias."""
    values = {}
    for g, (nx, nh, nbx, nbh) in GATES[kind].items():
        Wx, Wh, bx, bh = gates[g]
        values[nx], values[nh] = Wx, Wh
        if nbh is None:
            values[nbx] = bx + bh if bh is not None else bx
        else:
            values[nbx], values[nbh] = bx, bh if bh is not None else np.zeros_like(bx)
    return [np.array(values[n], order="C") for n, _ in LISTS[kind]]    # copies, own memory


# -- torch -------------------------------------------------------------------------------
def _import_torch(what):
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"rnngen.interop.{what} needs PyTorch, an optional extra of rnngen: "
                          f"{TORCH_EXTRA}") from e
    return torch


def _torch_module(torch, module, kind, what):
    """Check a torch.nn.LSTM/GRU (or its Cell); (parameter name suffix, D, H, has bias)."""
    full, cell = ((torch.nn.LSTM, torch.nn.LSTMCell) if kind == "LSTM"
                  else (torch.nn.GRU, torch.nn.GRUCell))
    if isinstance(module, full):
        problems = []
        if module.num_layers != 1:
            problems.append(f"num_layers={module.num_layers} (stack one rnngen layer per "
                            "torch layer instead)")
        if module.bidirectional:
            problems.append("bidirectional=True")
        if getattr(module, "proj_size", 0):
            problems.append(f"proj_size={module.proj_size} (rnngen's LSTM has no projection)")
        if problems:
            raise ValueError(f"{what} converts a one-layer, one-direction torch.nn.{kind}; "
                             f"this one has {', '.join(problems)}")
        suffix = "_l0"
    elif isinstance(module, cell):
        suffix = ""
    else:
        raise TypeError(f"{what} expects a torch.nn.{kind} (or torch.nn.{kind}Cell), got "
                        f"{type(module).__module__}.{type(module).__name__}")
    return suffix, int(module.input_size), int(module.hidden_size), bool(module.bias)


def _to_numpy(torch, t):
    t = t.detach().cpu()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)           # float16 and bfloat16 widen exactly
    return t.numpy().copy()


def _from_torch(module, kind, what):
    torch = _import_torch(what)
    suffix, _, H, bias = _torch_module(torch, module, kind, what)
    p = {n: _to_numpy(torch, getattr(module, f"{n}{suffix}"))
         for n in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if bias else ())}
    order = TORCH_ORDER[kind]
    n = len(order)
    wi, wh = np.split(p["weight_ih"], n, 0), np.split(p["weight_hh"], n, 0)
    zero = np.zeros(H, dtype=p["weight_ih"].dtype)
    bi = np.split(p["bias_ih"], n, 0) if bias else [zero] * n
    bh = np.split(p["bias_hh"], n, 0) if bias else [zero] * n
    gates = {g: (wi[k].T, wh[k].T, bi[k], bh[k]) for k, g in enumerate(order)}
    return _list(gates, "LSTM" if kind == "LSTM" else "TorchGRU")


def _to_torch(weights, module, kind, what):
    torch = _import_torch(what)
    ours = "LSTM" if kind == "LSTM" else "TorchGRU"
    settings = {"activation": "tanh", "inner_activation": "sigmoid"} if kind == "LSTM" else {}
    arrays, D, H = _weights_arg(weights, ours, settings, f"torch.nn.{kind}")
    gates = _gates(arrays, ours)
    order = TORCH_ORDER[kind]
    dtype = np.result_type(*arrays)
    sd = {"weight_ih": np.concatenate([gates[g][0].T for g in order], 0),
          "weight_hh": np.concatenate([gates[g][1].T for g in order], 0),
          "bias_ih": np.concatenate([gates[g][2] for g in order]),
          "bias_hh": np.concatenate([gates[g][3] if gates[g][3] is not None
                                     else np.zeros(H, dtype) for g in order])}
    sd = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in sd.items()}
    if module is None:
        return {f"{k}_l0": torch.from_numpy(v) for k, v in sd.items()}
    suffix, mD, mH, bias = _torch_module(torch, module, kind, what)
    if (mD, mH) != (D, H):
        raise ValueError(f"the weights are for input_dim={D}, output_dim={H}, but the module "
                         f"has input_size={mD}, hidden_size={mH}: make it "
                         f"torch.nn.{kind}({D}, {H})")
    if not bias:
        if np.any(sd["bias_ih"]) or np.any(sd["bias_hh"]):
            raise ValueError("the module has bias=False, but the weights' biases are not all "
                             "zero: make it with bias=True")
        del sd["bias_ih"], sd["bias_hh"]
    with torch.no_grad():
        for k, v in sd.items():
            getattr(module, f"{k}{suffix}").copy_(torch.from_numpy(v))
    return module


def from_torch_lstm(module) -> list:
    """The 12 weights of ``rnngen.layers.LSTM(H, inner_activation="sigmoid")`` (``weights=``
    / ``set_weights`` order W_i, U_i, b_i, W_c, U_c, b_c, W_f, U_f, b_f, W_o, U_o, b_o) from
    a one-layer, one-direction ``torch.nn.LSTM`` (or ``torch.nn.LSTMCell``), in the
    module's dtype: torch's gates i, f, g, o, its matrices transposed, b_* = b_ih + b_hh."""
    return _from_torch(module, "LSTM", "from_torch_lstm")


def to_torch_lstm(weights, module=None):
    """Load rnngen LSTM weights (a list in ``get_weights()`` order, or the layer itself:
    then it must have activation="tanh", inner_activation="sigmoid") into ``module``, a
    ``torch.nn.LSTM(D, H)`` (one layer, one direction) or ``torch.nn.LSTMCell``, in place,
    and return the module.  Without a module: return the state_dict of a
    ``torch.nn.LSTM(D, H)`` (tensors in the weights' dtype).  The biases go to ``bias_ih``;
    ``bias_hh`` is zero."""
    return _to_torch(weights, module, "LSTM", "to_torch_lstm")


def from_torch_gru(module) -> list:
    """The 12 weights of ``rnngen.load_example("torch_gru")`` (W_ir, W_iz, W_in, W_hr,
    W_hz, W_hn, b_ir, b_iz, b_in, b_hr, b_hz, b_hn) from a one-layer, one-direction
    ``torch.nn.GRU`` (or ``torch.nn.GRUCell``), in the module's dtype."""
    return _from_torch(module, "GRU", "from_torch_gru")


def to_torch_gru(weights, module=None):
    """Load TorchGRU weights (a list in its ``get_weights()`` order, or the layer from
    ``load_example("torch_gru")``) into ``module``, a ``torch.nn.GRU(D, H)`` or
    ``torch.nn.GRUCell``, in place, and return it; without a module, return the state_dict
    of a ``torch.nn.GRU(D, H)``."""
    return _to_torch(weights, module, "GRU", "to_torch_gru")


# -- Keras 3 -------------------------------------------------------------------------------
def _keras_cell(layer, what):
    """(keras, the cell, our list kind) of a Keras 3 SimpleRNN/GRU/LSTM layer or cell."""
    keras = sys.modules.get("keras")    # a Keras layer exists only once keras is imported
    expected = (f"{what} expects a Keras 3 SimpleRNN, GRU or LSTM layer (or its cell), got "
                f"{type(layer).__module__}.{type(layer).__name__}")
    if keras is None:
        raise TypeError(expected)
    cell = getattr(layer, "cell", layer)
    L = keras.layers
    if isinstance(cell, L.SimpleRNNCell):
        kind = "SimpleRNN"
    elif isinstance(cell, L.GRUCell):
        kind = "TorchGRU" if cell.reset_after else "GRU"
    elif isinstance(cell, L.LSTMCell):
        kind = "LSTM"
    else:
        raise TypeError(expected)
    return keras, cell, kind


def _keras_activation(keras, fn, what):
    """rnngen's name for a Keras activation function, or ValueError where none computes it."""
    for name in KERAS_SAME_ACTIVATIONS:
        if fn is keras.activations.get(name):
            return name
    if fn is keras.activations.get("hard_sigmoid"):
        raise ValueError(f"{what} is Keras 3's hard_sigmoid, clip(x/6 + 0.5, 0, 1); rnngen's "
                         "hard_sigmoid is Theano's clip(0.2*x + 0.5, 0, 1), a different "
                         "function. Use sigmoid on both sides for the same math")
    name = getattr(fn, "__name__", repr(fn))
    raise ValueError(f"{what} is {name}, which no rnngen activation computes; those that "
                     f"coincide: {', '.join(KERAS_SAME_ACTIVATIONS)}")


def _keras_settings(keras, cell, kind):
    """rnngen's class parameters under which it computes what the Keras cell computes."""
    act = _keras_activation(keras, cell.activation, "the Keras layer's activation")
    if kind == "SimpleRNN":
        return {"activation": act}
    rec = _keras_activation(keras, cell.recurrent_activation,
                            "the Keras layer's recurrent_activation")
    if kind == "TorchGRU":
        if (act, rec) != ("tanh", "sigmoid"):
            raise ValueError("a Keras GRU with reset_after=True computes rnngen's TorchGRU "
                             "(load_example('torch_gru')) only with activation='tanh' and "
                             f"recurrent_activation='sigmoid', got {act!r} and {rec!r}; with "
                             "reset_after=False it is rnngen.layers.GRU for any of "
                             f"{', '.join(KERAS_SAME_ACTIVATIONS)}")
        return {}
    return {"activation": act, "inner_activation": rec}


def _keras_array(v):
    return np.array(v.numpy() if hasattr(v, "numpy") else v)


def from_keras(layer) -> list:
    """The weights of the rnngen layer that matches a built Keras 3 layer (or cell), in its
    ``weights=`` order and the layer's dtype: SimpleRNN -> rnngen.layers.SimpleRNN (3),
    GRU(reset_after=False) -> rnngen.layers.GRU (9), GRU(reset_after=True, Keras's
    default) -> load_example("torch_gru") (12), LSTM -> rnngen.layers.LSTM (12)."""
    keras, cell, kind = _keras_cell(layer, "from_keras")
    if not cell.built:
        raise ValueError("the Keras layer has no weights yet: call it on an input, or "
                         "layer.build((None, None, input_dim)), first")
    order = KERAS_ORDER[kind]
    n = len(order)
    K, R = _keras_array(cell.kernel), _keras_array(cell.recurrent_kernel)
    H = R.shape[0]
    if cell.use_bias:
        b = _keras_array(cell.bias)
        bx, bh = (b[0], b[1]) if kind == "TorchGRU" else (b, None)
    else:
        bx, bh = np.zeros(n * H, K.dtype), None
    bxs = np.split(bx, n, 0)
    bhs = np.split(bh, n, 0) if bh is not None else [None] * n
    gates = {g: (Wx, Wh, b1, b2) for g, Wx, Wh, b1, b2 in
             zip(order, np.split(K, n, 1), np.split(R, n, 1), bxs, bhs)}
    return _list(gates, kind)


def to_keras(weights, layer):
    """Load rnngen weights into a Keras 3 SimpleRNN, GRU or LSTM layer (or cell), in place,
    and return it; an unbuilt layer is built for the weights' input_dim.  ``weights`` is a
    list (the layout ``from_keras`` returns for this layer) or an rnngen layer, which must
    then compute what the Keras layer computes (class and activations)."""
    keras, cell, kind = _keras_cell(layer, "to_keras")
    from .layers import Recurrent
    settings = (_keras_settings(keras, cell, kind) if isinstance(weights, Recurrent) else {})
    arrays, D, H = _weights_arg(weights, kind, settings, f"this Keras {type(layer).__name__}")
    if int(cell.units) != H:
        raise ValueError(f"the weights are for output_dim={H}, but the Keras layer has "
                         f"units={cell.units}")
    if not cell.built:
        if cell is layer:
            layer.build((None, D))
        else:
            layer.build((None, None, D))
    if cell.kernel.shape[0] != D:
        raise ValueError(f"the weights are for input_dim={D}, but the Keras layer was built "
                         f"for input_dim={cell.kernel.shape[0]}")
    gates = _gates(arrays, kind)
    order = KERAS_ORDER[kind]
    kernel = np.concatenate([gates[g][0] for g in order], 1)
    recurrent = np.concatenate([gates[g][1] for g in order], 1)
    bias = np.concatenate([gates[g][2] for g in order])
    if kind == "TorchGRU":
        bias = np.stack([bias, np.concatenate([gates[g][3] for g in order])])
    values = [(cell.kernel, kernel), (cell.recurrent_kernel, recurrent)]
    if cell.use_bias:
        values.append((cell.bias, bias))
    elif np.any(bias):
        raise ValueError("the Keras layer has use_bias=False, but the weights' biases are "
                         "not all zero: make it with use_bias=True")
    for var, value in values:
        var.assign(np.asarray(value, dtype=np.dtype(str(var.dtype))))
    return layer


# -- both ----------------------------------------------------------------------------------
_SET_HERE = ("output_dim", "weights", "input_dim", "activation", "inner_activation")


def to_rnngen(source, **kwargs):
    """The rnngen layer that computes what ``source`` computes, with its weights:

    - ``torch.nn.LSTM``/``LSTMCell``: ``rnngen.layers.LSTM(H, activation="tanh",
      inner_activation="sigmoid")``;
    - ``torch.nn.GRU``/``GRUCell``: ``load_example("torch_gru")(H)``;
    - a Keras 3 ``SimpleRNN``/``GRU``/``LSTM`` (or cell): rnngen's layer of that name with
      Keras's activations (``GRU(reset_after=True)``: TorchGRU), or ValueError where no
      rnngen activation computes Keras's (e.g. Keras 3's hard_sigmoid).

    ``kwargs`` go to the layer's constructor (``return_sequences``, ``dtype``, ``backend``,
    ``truncate_gradient``, ...); ``dtype`` defaults to float64 for float64 weights, else
    float32, and ``return_sequences`` to True for torch (its output is the sequence) and to
    the Keras layer's own (``return_state`` and ``go_backwards`` too).  The rnngen layer
    takes x as (nb_samples, timesteps, input_dim): torch's batch_first=True layout."""
    clash = [k for k in _SET_HERE if k in kwargs]
    if clash:
        raise TypeError(f"to_rnngen sets {', '.join(clash)} itself (from the source layer, so "
                        "that the math coincides); pass only the layer's other arguments")
    torch = sys.modules.get("torch")
    keras = sys.modules.get("keras")
    if torch is not None and isinstance(source, (torch.nn.LSTM, torch.nn.LSTMCell)):
        kind, arrays = "LSTM", from_torch_lstm(source)
        settings = {"activation": "tanh", "inner_activation": "sigmoid"}
        kwargs.setdefault("return_sequences", True)
    elif torch is not None and isinstance(source, (torch.nn.GRU, torch.nn.GRUCell)):
        kind, arrays, settings = "TorchGRU", from_torch_gru(source), {}
        kwargs.setdefault("return_sequences", True)
    elif keras is not None and isinstance(getattr(source, "cell", source), keras.layers.Layer):
        _, cell, kind = _keras_cell(source, "to_rnngen")
        settings = _keras_settings(keras, cell, kind)
        arrays = from_keras(source)
        if source is not cell:
            kwargs.setdefault("return_sequences", bool(source.return_sequences))
            kwargs.setdefault("return_state", bool(getattr(source, "return_state", False)))
            kwargs.setdefault("go_backwards", bool(getattr(source, "go_backwards", False)))
    else:
        raise TypeError("to_rnngen expects a torch.nn.LSTM, LSTMCell, GRU or GRUCell, or a "
                        "Keras 3 SimpleRNN, GRU or LSTM layer (or cell), got "
                        f"{type(source).__module__}.{type(source).__name__}")
    kwargs.setdefault("dtype", "float64" if arrays[0].dtype == np.float64 else "float32")
    return _layer_class(kind)(arrays[0].shape[1], weights=arrays, **settings, **kwargs)
