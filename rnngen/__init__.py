"""rnngen: recurrent cells written as YAML equations, compiled to fused C kernels.

    import rnngen
    from rnngen.layers import LSTM
    Cell = rnngen.load_cell("my_cell.yaml")
"""
from .errors import BuildError, KernelError, SpecError

__version__ = "0.1.0"
__all__ = ["load_cell", "SpecError", "BuildError", "KernelError", "__version__"]


def load_cell(path):
    """Return a layer class for the cell spec at ``path`` (used like rnngen.layers.GRU)."""
    from .layers import load_cell as _load
    return _load(path)
