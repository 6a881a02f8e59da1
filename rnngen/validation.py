"""A layer's arguments, checked in one place for every front end (rnngen.layers,
rnngen.torch): sizes, flags, truncation, dtype names, the cell's parameters, and the
initial weights a seed draws.  Each check raises a ValueError or TypeError that says what
was wrong and what is expected; nothing here touches a framework's tensors (those are
checked by ``runtime.check_arguments`` at the kernels' door, and the front ends check their
own containers)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .initializers import check_init, initialize
from .ir import CellIR, resolve_params

# Largest sizes a layer accepts (checked before anything is allocated or built).
MAX_OUTPUT_DIM = 1 << 20
MAX_INPUT_DIM = 1 << 24
MAX_STEPS = (1 << 31) - 1      # truncate_gradient, input_length: a C int

DTYPES = {"float32": np.float32, "float64": np.float64}


def check_dtype(dtype) -> str:
    """'float32' or 'float64' (a numpy dtype or its name)."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return name


def check_pos_int(v, what, allow_none=False, maximum=MAX_STEPS) -> Optional[int]:
    if v is None and allow_none:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{what} must be a positive integer, got {v!r}")
    if v > maximum:
        raise ValueError(f"{what} must be a positive integer at most {maximum}, got {v!r}")
    return int(v)


def check_flag(name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def check_truncate(tg) -> int:
    """truncate_gradient: -1 (full BPTT) or a positive number of steps."""
    if isinstance(tg, bool) or not isinstance(tg, (int, np.integer)) or (tg < 1 and tg != -1) \
            or tg > MAX_STEPS:
        raise ValueError(f"truncate_gradient must be -1 (full BPTT) or a positive number "
                         f"of steps (at most {MAX_STEPS}), got {tg!r}")
    return int(tg)


def layer_options(output_dim, input_dim, return_sequences, truncate_gradient, return_state,
                  go_backwards, *, input_dim_optional: bool = True) -> dict:
    """The options every recurrent layer takes, checked and normalised."""
    return {
        "output_dim": check_pos_int(output_dim, "output_dim", maximum=MAX_OUTPUT_DIM),
        "input_dim": check_pos_int(input_dim, "input_dim", allow_none=input_dim_optional,
                                   maximum=MAX_INPUT_DIM),
        "truncate_gradient": check_truncate(truncate_gradient),
        "return_sequences": check_flag("return_sequences", return_sequences),
        "return_state": check_flag("return_state", return_state),
        "go_backwards": check_flag("go_backwards", go_backwards)}


def cell_params(spec, given: dict) -> dict:
    """The cell's parameters: the spec's defaults overridden by ``given``, each checked
    (activations, initializers, integers, floats); an unknown name is a TypeError that
    lists the known ones."""
    known = {p.name for p in spec.params}
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"{spec.name} has no parameter {', '.join(map(repr, unknown))}; "
                        f"its parameters: {', '.join(sorted(known)) or 'none'}")
    return resolve_params(spec, given)


def check_x_shape(shape, input_dim: int, owner: str = "layer", hint: str = "") -> tuple:
    """(B, T, D) of an input of ``shape``: 3 dimensions, the ``owner``'s input_dim, at
    least one sample and one step; else a ValueError saying what is expected (``hint``
    added to the first)."""
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(f"x must have 3 dimensions (batch, timesteps, input_dim), got "
                         f"shape {shape}{hint}")
    B, T, D = shape
    if D != input_dim:
        raise ValueError(f"x has input_dim {D}, but the {owner} was made for input_dim "
                         f"{input_dim}: expected shape (batch, timesteps, {input_dim})")
    if B < 1 or T < 1:
        raise ValueError(f"x must have at least one sample and one step, got shape {shape}")
    return B, T, D


def code_params(spec, params: dict) -> dict:
    """The parameters compiled into the kernels (all but the initializers)."""
    return {p.name: params[p.name] for p in spec.params if p.kind != "init"}


def check_x_elementwise(ir: CellIR, input_dim: int, output_dim: int, name: str) -> None:
    if input_dim != output_dim and ir.x_elementwise:
        raise ValueError(f"{name} uses x elementwise (not only as x @ W), so input_dim must "
                         f"equal output_dim ({output_dim}), got {input_dim}")


def initial_weights(ir: CellIR, params: dict, input_dim: int, output_dim: int,
                    rng: np.random.Generator) -> list:
    """The weights a layer starts from, in spec order, drawn from ``rng`` by the spec's
    initializers (float64); a MemoryError first if they cannot fit this machine."""
    from .runtime import check_memory
    check_memory(sum(int(np.prod(w.dims(input_dim, output_dim))) for w in ir.weights) * 8 * 3,
                 f"{ir.spec.name}'s weights (with gradients and a copy)")
    return [initialize(check_init(params.get(w.init, w.init)), w.dims(input_dim, output_dim),
                       rng) for w in ir.weights]
