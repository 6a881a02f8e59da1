"""Elementwise functions a cell spec may call, and their derivatives.

Each function is described once: its value and derivative as C expression
templates (shared by every C-like dialect; the dialect supplies the math
function names) and as numpy callables (used by the layers' pure-Python
helpers and by nothing in the kernels).

``{fmax}``/``{fmin}`` are the runtime's rnngen_max/rnngen_min, which return
their first argument when it is NaN (so NaN propagates as in numpy's clip and
maximum) and, unlike libm's fmax, vectorise.

Derivatives are written in terms of the input ``{x}`` and/or the output ``{y}``
so that the forward pass only saves what the backward pass reads.  At the
kinks of hard_sigmoid and relu we use the one-sided value Theano used: the
slope inside the open interval, 0 outside it (so relu'(0) = 0 and
hard_sigmoid' = 0 where 0.2x + 0.5 is exactly 0 or 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Function:
    name: str
    value: str          # C expression in {x}; math calls written as {exp}(..) etc.
    deriv: str          # C expression in {x} and/or {y}
    uses_x: bool        # derivative reads the input
    uses_y: bool        # derivative reads the output
    doc: str

    def numpy(self, x: np.ndarray) -> np.ndarray:
        return _NUMPY[self.name](x)


def _softplus(x):
    # log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


_NUMPY = {
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "softplus": _softplus,
    "linear": lambda x: x,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "log": np.log,
    "abs": np.abs,
}

FUNCTIONS: dict[str, Function] = {
    f.name: f
    for f in [
        Function("sigmoid", "{one} / ({one} + {exp}(-({x})))", "{y} * ({one} - {y})",
                 False, True, "1 / (1 + exp(-x))"),
        # Theano's hard_sigmoid; derivative 0.2 strictly inside (0, 1), else 0.
        Function("hard_sigmoid",
                 "{fmin}({fmax}({c0_2} * ({x}) + {c0_5}, {zero}), {one})",
                 "(({y}) > {zero} && ({y}) < {one} ? {c0_2} : {zero})",
                 False, True, "clip(0.2 * x + 0.5, 0, 1)"),
        Function("tanh", "{tanh}({x})", "({one} - {y} * {y})", False, True, "tanh(x)"),
        # relu'(0) = 0, as in Theano.
        Function("relu", "{fmax}({x}, {zero})", "(({y}) > {zero} ? {one} : {zero})",
                 False, True, "max(x, 0)"),
        # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)); derivative sigmoid(x) = 1 - exp(-y).
        Function("softplus", "({fmax}({x}, {zero}) + {log1p}({exp}(-{fabs}({x}))))",
                 "(-{expm1}(-({y})))", False, True, "log(1 + exp(x)), without overflow"),
        Function("linear", "({x})", "{one}", False, False, "x"),
        Function("exp", "{exp}({x})", "({y})", False, True, "exp(x)"),
        # sqrt'(x) = 0.5 / sqrt(x): infinite at 0 (as in numpy, torch and JAX)
        Function("sqrt", "{sqrt}({x})", "({c0_5} / ({y}))", False, True, "sqrt(x)"),
        Function("log", "{log}({x})", "({one} / ({x}))", True, False, "natural log of x"),
        # abs'(0) = 0 (the subgradient torch and JAX use): sign(x)
        Function("abs", "{fabs}({x})",
                 "(({x}) > {zero} ? {one} : (({x}) < {zero} ? -{one} : {zero}))",
                 True, False, "|x|; derivative sign(x), 0 at 0"),
    ]
}

# Functions of two arguments: lowered to their own nodes (see rnngen.program).  At a tie
# the first argument takes the whole gradient: d max(a, b) = da where a >= b, else db;
# d min(a, b) = da where a <= b, else db (NaN in a: the gradient goes to b).
BINARY = {"max": "max(a, b), elementwise", "min": "min(a, b), elementwise"}

# The names that may be given as a layer's activation / inner_activation.
ACTIVATIONS = ("sigmoid", "hard_sigmoid", "tanh", "relu", "softplus", "linear")

# Names that exist in Keras but are not elementwise: a clear error, not "unknown".
NOT_ELEMENTWISE = {"softmax": "softmax normalises over the feature axis, so it is not elementwise"}


def check_activation(name: object, what: str = "activation") -> str:
    """Return ``name`` if it is a usable recurrent activation, else raise ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be the name of an activation (one of "
                        f"{', '.join(ACTIVATIONS)}), got {type(name).__name__} {name!r}")
    if name in NOT_ELEMENTWISE:
        raise ValueError(f"{what}={name!r} cannot be a recurrent activation: "
                         f"{NOT_ELEMENTWISE[name]}; use one of {', '.join(ACTIVATIONS)}")
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown {what} {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return name
