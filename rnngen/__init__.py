"""rnngen: recurrent cells written as YAML equations, compiled to fused C kernels.

    import rnngen
    from rnngen.layers import LSTM
    Cell = rnngen.load_cell("my_cell.yaml")
"""
from .errors import BuildError, DeviceError, KernelError, SpecError

__version__ = "0.1.0"
__all__ = ["load_cell", "load_example", "set_num_threads", "get_num_threads", "SpecError", "BuildError",
           "KernelError", "DeviceError", "__version__"]


def load_cell(path):
    """Return a layer class for the cell spec at ``path`` (used like rnngen.layers.GRU)."""
    from .layers import load_cell as _load
    return _load(path)


def load_example(name):
    """The layer class of a shipped example cell, by file stem: ``load_example("torch_gru")``
    reads examples/torch_gru.yaml (``mgu``, ``mingru``, ``indrnn``, ``slstm``,
    ``layernorm_lstm``, ``layernorm_gru``, ``torch_gru``)."""
    from .pipeline import EXAMPLES
    from .spec import is_identifier
    path = EXAMPLES / f"{name}.yaml" if isinstance(name, str) and is_identifier(name) else None
    if path is None or not path.is_file():
        known = ", ".join(sorted(p.stem for p in EXAMPLES.glob("*.yaml")))
        raise ValueError(f"no example cell {name!r}; the examples are: {known}")
    return load_cell(path)


def set_num_threads(n):
    """Threads the kernels use: n > 0, or 0 for OpenMP's count (the default)."""
    from .pipeline import set_num_threads as _set
    _set(n)


def get_num_threads():
    """The count set by set_num_threads (0: OpenMP's count)."""
    from .pipeline import get_num_threads as _get
    return _get()
