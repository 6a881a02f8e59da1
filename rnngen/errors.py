"""Exceptions raised by rnngen."""
from __future__ import annotations


class SpecError(ValueError):
    """A cell spec is malformed.  ``problems`` lists every (file, line, message)."""

    partial = None          # the spec as far as it could be read (rnngen.spec)
    invalid_names = frozenset()

    def __init__(self, path: str, problems: list[tuple[int, str]]):
        self.path = str(path)
        # the same problem found twice (a bad term in each step of a sum) is listed once
        self.problems = sorted(dict.fromkeys(problems), key=lambda p: p[0])
        lines = [f"{self.path}:{line}: {msg}" if line else f"{self.path}: {msg}"
                 for line, msg in self.problems]
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in cell spec {self.path}:\n  "
                         + "\n  ".join(lines))


class BuildError(RuntimeError):
    """Generating, compiling or loading a kernel library failed."""


class KernelError(RuntimeError):
    """A generated C entry point returned a non-zero status."""


class DeviceError(RuntimeError):
    """A backend cannot run here: no NVIDIA driver, no CUDA device, no cuBLAS or no nvcc
    for ``backend="cuda"``.  The message says which and what to install."""
