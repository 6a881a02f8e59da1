"""Weight initializations (SEMANTICS.md, "Initializations"), in numpy."""
from __future__ import annotations

import math

import numpy as np


def _fans(shape):
    if len(shape) == 2:
        return shape[0], shape[1]
    return shape[0], shape[0]


def glorot_uniform(shape, rng):
    fan_in, fan_out = _fans(shape)
    s = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-s, s, size=shape)


def glorot_normal(shape, rng):
    fan_in, fan_out = _fans(shape)
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def he_uniform(shape, rng):
    s = math.sqrt(6.0 / _fans(shape)[0])
    return rng.uniform(-s, s, size=shape)


def he_normal(shape, rng):
    return rng.normal(0.0, math.sqrt(2.0 / _fans(shape)[0]), size=shape)


def lecun_uniform(shape, rng):
    s = math.sqrt(3.0 / _fans(shape)[0])
    return rng.uniform(-s, s, size=shape)


def uniform(shape, rng):
    return rng.uniform(-0.05, 0.05, size=shape)


def normal(shape, rng):
    return rng.normal(0.0, 0.05, size=shape)


def orthogonal(shape, rng):
    """SVD of a Gaussian matrix, scaled by 1.1 (the Theano-era Keras value)."""
    if len(shape) != 2:
        raise ValueError(f"orthogonal init needs a 2-D shape, got {shape}")
    a = rng.normal(0.0, 1.0, size=shape)
    u, _, v = np.linalg.svd(a, full_matrices=False)
    q = u if u.shape == tuple(shape) else v
    return 1.1 * q


def identity(shape, rng):
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"identity init needs a square 2-D shape, got {tuple(shape)}")
    return np.eye(shape[0])


def zero(shape, rng):
    return np.zeros(shape)


def one(shape, rng):
    return np.ones(shape)


def identity_or_random_sign(shape, rng):
    """JZS1/JZS2's Pmat: identity when square, else entries +-1/sqrt(fan_in)."""
    if len(shape) == 2 and shape[0] == shape[1]:
        return np.eye(shape[0])
    signs = rng.integers(0, 2, size=shape) * 2.0 - 1.0
    return signs / math.sqrt(shape[0])


INITS = {f.__name__: f for f in [glorot_uniform, glorot_normal, he_uniform, he_normal,
                                 lecun_uniform, uniform, normal, orthogonal, identity,
                                 zero, one, identity_or_random_sign]}


def check_init(name: object, what: str = "init") -> str:
    if not isinstance(name, str) or name not in INITS:
        raise ValueError(f"unknown {what} {name!r}; expected one of {', '.join(INITS)}")
    return name


def initialize(name: str, shape, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(INITS[check_init(name)](tuple(shape), rng), dtype=np.float64)
