"""Keras-style layers (the seed's constructor arguments) on top of the kernels.

``SimpleRNN, SimpleDeepRNN, GRU, LSTM, JZS1, JZS2, JZS3`` are made from the
specs in ``specs/`` exactly as :func:`rnngen.load_cell` makes a class from a
user's own spec.  Every input is checked here, before any C code runs.
"""
from __future__ import annotations

import inspect
import sys
import threading
from pathlib import Path
from typing import Optional, Union

import numpy as np

from . import validation as V
from .backends import get_backend
from .initializers import check_init, initialize
from .pipeline import SPECS, builtin_specs, compile_cell
from .runtime import DeviceView, check_memory, is_device_array
from .errors import SpecError
from .spec import CellSpec, load_spec

_DTYPES = V.DTYPES
CUDA_BACKENDS = ("cuda", "cuda-emulated")
# the checks of every front end (rnngen/validation.py)
_check_dtype, _check_pos_int = V.check_dtype, V.check_pos_int
MAX_OUTPUT_DIM, MAX_INPUT_DIM, MAX_STEPS = V.MAX_OUTPUT_DIM, V.MAX_INPUT_DIM, V.MAX_STEPS


def _as_float_array(a, what, dtype):
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except Exception:   # noqa: BLE001 - anything numpy cannot read
            raise TypeError(f"{what} must be a numpy array, got {type(a).__name__}") from None
    if a.dtype.kind != "f":
        raise TypeError(f"{what} must hold floating-point numbers (float32 or float64), "
                        f"got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


class Recurrent:
    """Base class of the recurrent layers; subclasses set ``spec``."""

    spec: CellSpec = None  # type: ignore[assignment]

    def __init__(self, output_dim, *args, **kwargs):
        try:
            bound = self.__signature__.bind(output_dim, *args, **kwargs)
        except TypeError as e:   # say which names there are, and the nearest one
            import difflib
            names = list(self.__signature__.parameters)
            unknown = [k for k in kwargs if k not in names]
            hint = ""
            if unknown:
                near = difflib.get_close_matches(unknown[0], names, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise TypeError(f"{type(self).__name__}: {e}{hint}; its arguments are "
                            f"{', '.join(names)}") from None
        bound.apply_defaults()
        a = dict(bound.arguments)
        output_dim = a.pop("output_dim")
        V.check_pos_int(output_dim, "output_dim", maximum=MAX_OUTPUT_DIM)
        self.dtype = V.check_dtype(a.pop("dtype"))
        be = get_backend(a.pop("backend"))
        be.check()     # no GPU, driver or cuBLAS for backend="cuda": say so now
        self.backend = be.name
        seed = a.pop("seed")
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        opts = V.layer_options(output_dim, a.pop("input_dim"), a.pop("return_sequences"),
                               a.pop("truncate_gradient"), a.pop("return_state"),
                               a.pop("go_backwards"))
        for name, v in opts.items():
            setattr(self, name, v)
        self.input_length = V.check_pos_int(a.pop("input_length"), "input_length",
                                            allow_none=True)
        weights = a.pop("weights")
        self.params = V.cell_params(self.spec, a)      # checks activations, inits, ints
        self._kernel = None
        self._weights: Optional[list] = None
        # what a backward pairs with, per calling thread: each thread's backward reads its
        # own last forward, and each thread has its own grads
        self._tl = threading.local()
        if weights is not None:
            if not isinstance(weights, (list, tuple)):
                raise TypeError("weights must be a list of numpy arrays "
                                f"({self._expected_text()})")
            if self.input_dim is None:
                self.input_dim = self._infer_input_dim(weights)
            self.build(self.input_dim)
            self.set_weights(weights)
        elif self.input_dim is not None:
            self.build(self.input_dim)

    # -- per-thread state ------------------------------------------------------------
    @property
    def _last(self):
        return getattr(self._tl, "last", None)

    @_last.setter
    def _last(self, value):
        self._tl.last = value

    @property
    def _outputs(self) -> dict:
        """Last y and dx, reused when no one else holds them."""
        return self._tl.__dict__.setdefault("outputs", {})

    @property
    def grads(self) -> Optional[list]:
        """The weight gradients of this thread's last backward, in get_weights() order."""
        return getattr(self._tl, "grads", None)

    @grads.setter
    def grads(self, value):
        self._tl.grads = value

    @property
    def initial_state_grads(self) -> Optional[list]:
        """After a backward whose forward had ``initial_state``: the gradient w.r.t. each
        initial state, (B, H) arrays in state order (this thread's last backward); else
        None."""
        return getattr(self._tl, "initial_state_grads", None)

    @property
    def state_names(self) -> list[str]:
        """The states, in the order of ``initial_state`` and of the states return_state
        gives (the spec's ``state:`` list)."""
        return list(self.spec.states)

    # -- construction --------------------------------------------------------
    @property
    def _code_params(self) -> dict:
        return V.code_params(self.spec, self.params)

    def _ir(self):
        from .ir import compute_ir
        return compute_ir(self.spec, self._code_params)

    def weight_names(self) -> list[str]:
        """Names of the weights, in the order of get_weights() / weights=."""
        return [w.name for w in (self._kernel.ir if self._kernel else self._ir()).weights]

    def weight_shapes(self, input_dim: Optional[int] = None) -> list[tuple]:
        d = input_dim if input_dim is not None else self.input_dim
        ir = self._kernel.ir if self._kernel else self._ir()
        return [w.dims(d if d is not None else "input_dim", self.output_dim) for w in ir.weights]

    def _expected_text(self, input_dim=None) -> str:
        names = self.weight_names()
        shapes = self.weight_shapes(input_dim)
        return (f"{type(self).__name__} expects {len(names)} arrays: "
                + ", ".join(f"{n} {tuple(s)}" for n, s in zip(names, shapes)))

    def _infer_input_dim(self, weights):
        ir = self._ir()
        for w, arr in zip(ir.weights, weights):
            if w.role == "input matrix" and np.ndim(arr) == 2:
                return int(np.shape(arr)[0])
        raise ValueError("cannot tell input_dim from weights; " + self._expected_text())

    def build(self, input_dim: int) -> None:
        self.input_dim = V.check_pos_int(input_dim, "input_dim", maximum=MAX_INPUT_DIM)
        ir = self._ir()
        V.check_x_elementwise(ir, self.input_dim, self.output_dim, type(self).__name__)
        itemsize = np.dtype(_DTYPES[self.dtype]).itemsize
        shapes = [w.dims(self.input_dim, self.output_dim) for w in ir.weights]
        check_memory(sum(int(np.prod(s)) for s in shapes) * itemsize * 3,
                     f"{type(self).__name__}'s weights (with gradients and a copy)")
        self._kernel = compile_cell(self.spec, self._code_params, self.backend)
        ws = V.initial_weights(self._kernel.ir, self.params, self.input_dim, self.output_dim,
                               self._rng)
        self._weights = [np.ascontiguousarray(w, dtype=_DTYPES[self.dtype]) for w in ws]

    @property
    def built(self) -> bool:
        return self._kernel is not None

    # -- weights ----------------------------------------------------------------
    def get_weights(self) -> list:
        if not self.built:
            raise ValueError(f"{type(self).__name__} has no weights yet: give input_dim, "
                             "weights=, or call it on an input first")
        return [w.copy() for w in self._weights]

    def set_weights(self, weights) -> None:
        if not self.built:
            self.build(self._infer_input_dim(weights))
        names = self.weight_names()
        shapes = self.weight_shapes()
        if not isinstance(weights, (list, tuple)) or len(weights) != len(names):
            n = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
            raise ValueError(f"wrong number of weights: got {n}; {self._expected_text()}")
        out = []
        for name, shape, w in zip(names, shapes, weights):
            arr = _as_float_array(w, f"weight {name}", _DTYPES[self.dtype]) \
                if not (isinstance(w, np.ndarray) and w.dtype.kind in "iu") else \
                np.ascontiguousarray(w, dtype=_DTYPES[self.dtype])
            if arr.shape != tuple(shape):
                raise ValueError(f"weight {name} has shape {arr.shape}, expected {tuple(shape)}; "
                                 f"{self._expected_text()}")
            out.append(arr.copy())
        self._weights = out

    # -- config -------------------------------------------------------------------
    def get_config(self) -> dict:
        cfg = {"class_name": type(self).__name__, "output_dim": self.output_dim}
        cfg.update(self.params)
        cfg.update(truncate_gradient=self.truncate_gradient,
                   return_sequences=self.return_sequences, return_state=self.return_state,
                   go_backwards=self.go_backwards, input_dim=self.input_dim,
                   input_length=self.input_length, dtype=self.dtype, backend=self.backend)
        if not _is_builtin(self.spec):
            cfg["spec_path"] = str(Path(self.spec.path).resolve())
        return cfg

    @property
    def output_shape(self):
        """The output's shape (None: any); with return_state, a list: the output's, then
        one (None, output_dim) per state."""
        out = (None, self.input_length, self.output_dim) if self.return_sequences \
            else (None, self.output_dim)
        if self.return_state:
            return [out] + [(None, self.output_dim)] * len(self.spec.states)
        return out

    def compute_mask(self, x=None, mask=None):
        """The mask passed on: the input mask with return_sequences, else None."""
        return mask if self.return_sequences else None

    # -- running ---------------------------------------------------------------------
    def _require_cuda_backend(self, what):
        if self.backend not in CUDA_BACKENDS:
            raise TypeError(f"{what} is a CUDA device array, but the layer's backend is "
                            f"{self.backend!r}: use backend='cuda', or pass a numpy array")

    def _check_device_input(self, x, mask):
        """x (and mask) in CUDA device memory: checked as _check_input does, read in place."""
        self._require_cuda_backend("x")
        v = DeviceView.of(x, "x")
        if len(v.shape) != 3:
            raise ValueError(f"x must have 3 dimensions (nb_samples, timesteps, input_dim), "
                             f"got shape {v.shape}")
        if v.dtype != np.dtype(self.dtype):
            raise TypeError(f"x on the device must have the layer's dtype {self.dtype} (no "
                            f"conversion is made on the device), got {v.dtype}")
        B, T, D = v.shape
        self._check_sizes(v.shape)
        if mask is not None and is_device_array(mask):
            m = DeviceView.of(mask, "mask")
            if m.shape != (B, T) or m.dtype not in (np.uint8, np.bool_):
                raise ValueError(f"a mask on the device must be bool or uint8 of shape "
                                 f"(nb_samples, timesteps) = {(B, T)}, got {m.dtype} {m.shape}")
            return x, mask
        return x, self._check_mask(mask, B, T)

    def _check_sizes(self, shape):
        B, T, D = shape
        if B < 1 or T < 1:
            raise ValueError(f"x must have at least one sample and one step, got shape {shape}")
        if self.input_dim is not None and D != self.input_dim:
            raise ValueError(f"x has input_dim {D}, but the layer was built for input_dim "
                             f"{self.input_dim}: expected shape (nb_samples, timesteps, "
                             f"{self.input_dim})")
        if self.input_length is not None and T != self.input_length:
            raise ValueError(f"x has {T} timesteps, but input_length={self.input_length}")

    @staticmethod
    def _check_mask(mask, B, T):
        if mask is None:
            return None
        m = np.asarray(mask)
        if m.shape != (B, T):
            raise ValueError(f"mask must have shape (nb_samples, timesteps) = {(B, T)}, got "
                             f"{m.shape}")
        if m.dtype != np.bool_:
            if m.dtype.kind not in "iuf" or not np.all((m == 0) | (m == 1)):
                raise ValueError("mask must be boolean or hold only 0 and 1")
        return np.ascontiguousarray(m != 0, dtype=np.uint8)

    def _check_input(self, x, mask):
        if is_device_array(x):
            return self._check_device_input(x, mask)
        if mask is not None and is_device_array(mask):
            raise TypeError("the mask is a CUDA device array but x is not: pass both on the "
                            "device or both on the host")
        if not isinstance(x, np.ndarray):
            x = np.asarray(x) if isinstance(x, (list, tuple)) else x
            if not isinstance(x, np.ndarray):
                raise TypeError(f"x must be a numpy array (nb_samples, timesteps, input_dim), "
                                f"got {type(x).__name__}")
        if x.ndim != 3:
            raise ValueError(f"x must have 3 dimensions (nb_samples, timesteps, input_dim), "
                             f"got shape {x.shape}")
        if x.dtype.kind != "f":
            raise TypeError(f"x must be a float32 or float64 array, got dtype {x.dtype}")
        self._check_sizes(x.shape)
        B, T, _ = x.shape
        return x, self._check_mask(mask, B, T)

    def _check_states(self, states, B, what, device_ok):
        """A list of one (B, H) array per state (a bare array for a one-state cell), or one
        [S, B, H] device array, as one contiguous [S, B, H] array; None stays None."""
        if states is None:
            return None
        S, H = len(self.spec.states), self.output_dim
        names = ", ".join(self.spec.states)
        if is_device_array(states):
            if not device_ok:
                raise TypeError(f"{what} is a CUDA device array but x is not: pass both on the "
                                "device or both on the host")
            v = DeviceView.of(states, what)
            if v.shape != (S, B, H) or v.dtype != np.dtype(self.dtype):
                raise ValueError(f"{what} on the device must be one {self.dtype} array of shape "
                                 f"(states, nb_samples, output_dim) = {(S, B, H)} ({names}), "
                                 f"got {v.dtype} {v.shape}")
            return states
        if isinstance(states, np.ndarray) and S == 1 and states.ndim == 2:
            states = [states]
        if not isinstance(states, (list, tuple)) or len(states) != S:
            n = len(states) if isinstance(states, (list, tuple)) else type(states).__name__
            raise ValueError(f"{what} must be a list of {S} arrays of shape (nb_samples, "
                             f"output_dim) = {(B, H)}, one per state ({names}); got {n}")
        out = np.empty((S, B, H), _DTYPES[self.dtype])
        for i, (name, a) in enumerate(zip(self.spec.states, states)):
            if is_device_array(a):
                raise TypeError(f"{what}: pass numpy arrays, or one [S, B, H] device array")
            arr = _as_float_array(a, f"{what} for {name}", _DTYPES[self.dtype])
            if arr.shape != (B, H):
                raise ValueError(f"{what} for {name} has shape {arr.shape}, expected (nb_samples, "
                                 f"output_dim) = {(B, H)}")
            out[i] = arr
        return out

    def forward(self, x, mask=None, initial_state=None, *, training: bool = True):
        """Run the layer on x (nb_samples, timesteps, input_dim); see output_shape.

        ``initial_state``: one (nb_samples, output_dim) array per state, in state_names
        order (zeros when absent): each state's value before the first step.  With
        return_state the result is ``[output, final state 1, ..., final state S]``."""
        x, mask = self._check_input(x, mask)
        device = is_device_array(x)
        if not self.built:
            self.build(DeviceView.of(x, "x").shape[2] if device else x.shape[2])
        B, T = (DeviceView.of(x, "x").shape if device else x.shape)[:2]
        state0 = self._check_states(initial_state, B, "initial_state", device)
        if self.go_backwards:   # the steps in reverse: x and mask reversed in time
            if device:
                raise TypeError("go_backwards takes numpy arrays (reversing a device array is "
                                "not supported); use rnngen.torch for tensors on the GPU")
            x, mask = x[:, ::-1], (mask[:, ::-1].copy() if mask is not None else None)
        if not device:
            given = x
            x = np.ascontiguousarray(x, dtype=_DTYPES[self.dtype])
            if training and np.shares_memory(x, given):
                # backward reads x again: a copy, so that the caller may change its array
                # in between without changing the gradients
                x = x.copy()
        old = self._last[2] if self._last is not None else None   # backward only reads the last
        y, save, last = self._kernel.forward(x, mask, self._weights, self.output_dim, training,
                                             old, self._reusable("y"), state0,
                                             self.return_state)
        self._outputs["y"] = y
        self._last = (x, mask, save, [w for w in self._weights], state0 is not None) \
            if training else None
        if self.return_sequences:
            out = y
        else:
            out = y.last_step() if device else y[:, -1, :].copy()
        if self.return_state:
            return [out] + [last.index(i) if device else last[i]
                            for i in range(len(self.spec.states))]
        return out

    __call__ = forward

    def backward(self, dy, dstates=None):
        """Gradient of the loss w.r.t. the last forward's input; fills self.grads (and,
        when that forward had initial_state, self.initial_state_grads).

        ``dstates``: with return_state, the gradients w.r.t. the final states, one
        (nb_samples, output_dim) array per state (None: zero)."""
        if self._last is None:
            raise ValueError("backward() needs a forward(x) with training=True first")
        x, mask, save, weights, had_state0 = self._last
        B, T, _ = DeviceView.of(x, "x").shape if is_device_array(x) else x.shape
        expected = (B, T, self.output_dim) if self.return_sequences else (B, self.output_dim)
        if dstates is not None and not self.return_state:
            raise ValueError("dstates are the gradients of the final states, which the layer "
                             "returns only with return_state=True")
        if is_device_array(dy):
            self._require_cuda_backend("dy")
            v = DeviceView.of(dy, "dy")
            if v.shape != expected or v.dtype != np.dtype(self.dtype):
                raise ValueError(f"dy must have the shape of the last output {expected} and "
                                 f"dtype {self.dtype}, got {v.shape} {v.dtype}")
            if not self.return_sequences:
                dy = self._kernel.expand_last(dy, T)
        else:
            dy = _as_float_array(dy, "dy", _DTYPES[self.dtype])
            if dy.shape != expected:
                raise ValueError(f"dy must have the shape of the last output {expected}, got "
                                 f"{dy.shape}")
            if not self.return_sequences:
                full = np.zeros((B, T, self.output_dim), dtype=dy.dtype)
                full[:, -1, :] = dy
                dy = full
        dstates = self._check_states(dstates, B, "dstates", is_device_array(dy))
        dx, grads, d0 = self._kernel.backward(x, mask, weights, save, dy, self.truncate_gradient,
                                              self._reusable("dx"), self._reusable_grads(),
                                              dstates, had_state0)
        self._outputs["dx"] = dx
        self.grads = grads
        self._tl.initial_state_grads = None if d0 is None else [
            d0.index(i) if is_device_array(d0) else d0[i] for i in range(len(self.spec.states))]
        if self.go_backwards:   # dx of the reversed x, back in x's order
            dx = dx[:, ::-1].copy()
        return dx

    def _reusable(self, name):
        """Last call's output array if nothing outside this layer refers to it any more
        (no variable, view or exported buffer), else None.  Writing into memory that is
        already mapped saves the page faults of a fresh array (measured 4% of a training
        step of the benchmark's LSTM); a result the caller still holds is never touched."""
        arr = self._outputs.get(name)
        # references: the dict entry, `arr`, getrefcount's argument
        if arr is not None and sys.getrefcount(arr) == 3:
            return arr
        return None

    def _reusable_grads(self):
        """The last backward's gradient arrays, to write into, if neither the list nor any
        of its arrays is referred to from outside this layer."""
        grads = self.grads
        # references: the attribute, `grads`, getrefcount's argument (for an array: the
        # list's slot, the loop variable, the argument)
        if grads is None or sys.getrefcount(grads) != 3:
            return None
        if any(sys.getrefcount(g) != 3 for g in grads):
            return None
        return grads

    def __repr__(self):
        return (f"{type(self).__name__}(output_dim={self.output_dim}, input_dim={self.input_dim}, "
                f"return_sequences={self.return_sequences}, dtype={self.dtype!r}"
                + (f", backend={self.backend!r})" if self.backend != "c" else ")"))


def _signature(spec: CellSpec) -> inspect.Signature:
    P = inspect.Parameter
    params = [P("output_dim", P.POSITIONAL_OR_KEYWORD)]
    params += [P(p.name, P.POSITIONAL_OR_KEYWORD, default=p.default) for p in spec.params]
    params += [P("weights", P.POSITIONAL_OR_KEYWORD, default=None),
               P("truncate_gradient", P.POSITIONAL_OR_KEYWORD, default=-1),
               P("return_sequences", P.POSITIONAL_OR_KEYWORD, default=False),
               P("input_dim", P.POSITIONAL_OR_KEYWORD, default=None),
               P("input_length", P.POSITIONAL_OR_KEYWORD, default=None),
               P("return_state", P.KEYWORD_ONLY, default=False),
               P("go_backwards", P.KEYWORD_ONLY, default=False),
               P("dtype", P.KEYWORD_ONLY, default="float32"),
               P("seed", P.KEYWORD_ONLY, default=None),
               P("backend", P.KEYWORD_ONLY, default="c")]
    return inspect.Signature(params)


def layer_class(spec: CellSpec) -> type:
    """A Recurrent subclass for a loaded spec."""
    sig = _signature(spec)
    doc = (f"{spec.doc}\n\n{spec.name}{sig}\n\n"
           f"Generated by rnngen from {spec.path}.")
    cls = type(spec.name, (Recurrent,), {"spec": spec, "__doc__": doc, "__signature__": sig,
                                         "__module__": __name__})
    return cls


def check_spec(path: Union[str, Path]) -> CellSpec:
    """Load and check a spec; one SpecError lists every problem of the file: those of its
    declarations and, where the equations could still be read, those of the equations."""
    from .ir import compute_ir
    try:
        spec = load_spec(path)
    except SpecError as e:
        if e.partial is None:
            raise
        try:
            compute_ir(e.partial)
        except SpecError as more:   # less what only follows from a declaration's problem
            extra = [(line, msg) for line, msg in more.problems
                     if not any(f"{n!r}" in msg for n in e.invalid_names)]
            raise SpecError(e.path, e.problems + extra) from None
        except (ValueError, TypeError):
            pass
        raise
    compute_ir(spec)          # every problem of the equations is reported now
    return spec


def load_cell(path: Union[str, Path]) -> type:
    """The layer class for a cell spec file (checked now; compiled on first use)."""
    return layer_class(check_spec(path))


def _is_builtin(spec: CellSpec) -> bool:
    try:
        return Path(spec.path).resolve().parent == SPECS.resolve()
    except OSError:
        return False


class Embedding:
    """Turns indices (nb_samples, timesteps) into vectors; mask_zero=True masks index 0."""

    def __init__(self, input_dim, output_dim, init="uniform", mask_zero=False, weights=None, *,
                 dtype="float32", seed=None):
        self.input_dim = _check_pos_int(input_dim, "input_dim")
        self.output_dim = _check_pos_int(output_dim, "output_dim")
        self.init = check_init(init)
        self.mask_zero = bool(mask_zero)
        self.dtype = _check_dtype(dtype)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.W = initialize(self.init, (self.input_dim, self.output_dim), rng).astype(self.dtype)
        self.grads = None
        self._last = None
        if weights is not None:
            self.set_weights(weights)

    def get_weights(self):
        return [self.W.copy()]

    def set_weights(self, weights):
        shape = (self.input_dim, self.output_dim)
        if not isinstance(weights, (list, tuple)) or len(weights) != 1:
            raise ValueError(f"Embedding expects 1 weight array: W {shape}")
        w = np.asarray(weights[0])
        if w.shape != shape:
            raise ValueError(f"Embedding weight W has shape {w.shape}, expected {shape}")
        self.W = np.array(w, dtype=self.dtype)

    def _check(self, indices):
        idx = np.asarray(indices)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"Embedding indices must be integers, got dtype {idx.dtype}")
        if idx.ndim != 2:
            raise ValueError(f"Embedding indices must have shape (nb_samples, timesteps), got "
                             f"{idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.input_dim):
            raise ValueError(f"Embedding indices must be in [0, {self.input_dim}), got "
                             f"{idx.min()} .. {idx.max()}")
        return idx

    def forward(self, indices):
        idx = self._check(indices)
        self._last = idx
        return self.W[idx]

    __call__ = forward

    def compute_mask(self, indices):
        if not self.mask_zero:
            return None
        return self._check(indices) != 0

    def backward(self, dy):
        if self._last is None:
            raise ValueError("backward() needs a forward(indices) first")
        dy = np.asarray(dy)
        if dy.shape != self._last.shape + (self.output_dim,):
            raise ValueError(f"dy must have shape {self._last.shape + (self.output_dim,)}, got "
                             f"{dy.shape}")
        g = np.zeros_like(self.W)
        np.add.at(g, self._last, dy.astype(self.dtype))
        self.grads = [g]
        return None

    def get_config(self):
        return {"class_name": "Embedding", "input_dim": self.input_dim,
                "output_dim": self.output_dim, "init": self.init, "mask_zero": self.mask_zero,
                "dtype": self.dtype}

    @property
    def output_shape(self):
        return (None, None, self.output_dim)


MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def check_pair(layer, backward_layer, same: tuple) -> None:
    """A Bidirectional's two layers (numpy or torch): the attributes ``same`` equal, the
    other go_backwards."""
    for a in same:
        if getattr(backward_layer, a) != getattr(layer, a):
            raise ValueError(f"the backward layer's {a} ({getattr(backward_layer, a)!r}) "
                             f"differs from the forward layer's ({getattr(layer, a)!r})")
    if backward_layer.go_backwards == layer.go_backwards:
        raise ValueError("the backward layer must have the other go_backwards")


class Bidirectional:
    """Runs ``layer`` forward in time and a copy of it backward (go_backwards flipped, its
    own weights), as Keras 3's Bidirectional: the backward copy's output sequence is put
    back in time order, then the two are merged (``merge_mode``: "concat" on the last
    axis, "sum", "mul", "ave", or None for the list [forward, backward]).  With
    return_sequences and a mask, both outputs are zero at padded steps (as in Keras 3,
    where Bidirectional sets zero_output_for_mask: a padded step's carried output would
    otherwise come from different steps in the two directions).

    With return_state the result is ``[output, *forward states, *backward states]``;
    ``initial_state`` is the forward layer's states, then the backward one's.  Weights:
    the forward layer's, then the backward one's."""

    def __init__(self, layer, merge_mode="concat", backward_layer=None):
        if not isinstance(layer, Recurrent):
            raise TypeError(f"Bidirectional wraps a recurrent layer (rnngen.layers.GRU(...), a "
                            f"load_cell class instance), got {type(layer).__name__}")
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {MERGE_MODES}, got {merge_mode!r}")
        self.merge_mode = merge_mode
        self.forward_layer = layer
        if backward_layer is None:
            cfg = layer.get_config()
            cfg["go_backwards"] = not layer.go_backwards
            backward_layer = from_config(cfg)
        elif not isinstance(backward_layer, Recurrent):
            raise TypeError("backward_layer must be a recurrent layer")
        check_pair(layer, backward_layer, ("return_sequences", "return_state", "output_dim",
                                           "dtype"))
        self.backward_layer = backward_layer
        self.return_sequences, self.return_state = layer.return_sequences, layer.return_state
        self._tl = threading.local()

    @property
    def grads(self) -> Optional[list]:
        """The forward layer's weight gradients, then the backward one's (last backward)."""
        f, b = self.forward_layer.grads, self.backward_layer.grads
        return None if f is None or b is None else list(f) + list(b)

    @property
    def initial_state_grads(self) -> Optional[list]:
        f, b = self.forward_layer.initial_state_grads, self.backward_layer.initial_state_grads
        return None if f is None or b is None else list(f) + list(b)

    def get_weights(self) -> list:
        return self.forward_layer.get_weights() + self.backward_layer.get_weights()

    def set_weights(self, weights) -> None:
        n = len(self.forward_layer.weight_names())
        if not isinstance(weights, (list, tuple)) or len(weights) != 2 * n:
            raise ValueError(f"Bidirectional expects {2 * n} weight arrays: the forward layer's "
                             f"{n}, then the backward layer's {n}")
        self.forward_layer.set_weights(list(weights[:n]))
        self.backward_layer.set_weights(list(weights[n:]))

    def get_config(self) -> dict:
        return {"class_name": "Bidirectional", "merge_mode": self.merge_mode,
                "layer": self.forward_layer.get_config(),
                "backward_layer": self.backward_layer.get_config()}

    def _split_states(self, states, what):
        if states is None:
            return None, None
        n = len(self.forward_layer.spec.states)
        if not isinstance(states, (list, tuple)) or len(states) != 2 * n:
            raise ValueError(f"{what} must be a list of {2 * n} arrays: the forward layer's "
                             f"{n} states, then the backward layer's")
        return list(states[:n]), list(states[n:])

    def forward(self, x, mask=None, initial_state=None, *, training: bool = True):
        if is_device_array(x):
            raise TypeError("Bidirectional takes numpy arrays (its backward layer reverses "
                            "x in time on the host)")
        s_f, s_b = self._split_states(initial_state, "initial_state")
        out_f = self.forward_layer.forward(x, mask, s_f, training=training)
        out_b = self.backward_layer.forward(x, mask, s_b, training=training)
        states = []
        if self.return_state:
            (out_f, *st_f), (out_b, *st_b) = out_f, out_b
            states = st_f + st_b
        if self.return_sequences:   # the backward layer's sequence, back in time order
            out_b = out_b[:, ::-1]
        keep = None
        if self.return_sequences and mask is not None:   # padded steps output zero
            keep = (np.asarray(mask) != 0)[:, :, None]
            out_f, out_b = out_f * keep, out_b * keep
        self._tl.keep = keep
        self._tl.outs = (out_f, out_b) if self.merge_mode == "mul" else None
        if self.merge_mode is None:
            out = [out_f, np.ascontiguousarray(out_b)]
        elif self.merge_mode == "concat":
            out = np.concatenate([out_f, out_b], axis=-1)
        elif self.merge_mode == "sum":
            out = out_f + out_b
        elif self.merge_mode == "mul":
            out = out_f * out_b
        else:
            out = (out_f + out_b) / 2
        if self.return_state:
            return (out if isinstance(out, list) else [out]) + states
        return out

    __call__ = forward

    def backward(self, dy, dstates=None):
        """dy: the gradient of the merged output (with merge_mode=None, a list of two);
        returns dx; fills grads (and initial_state_grads)."""
        H = self.forward_layer.output_dim
        if self.merge_mode is None:
            if not isinstance(dy, (list, tuple)) or len(dy) != 2:
                raise ValueError("with merge_mode=None dy is a list of two: the gradients of "
                                 "the forward and the backward outputs")
            dy_f, dy_b = (np.asarray(d) for d in dy)
        else:
            dy = np.asarray(dy)
            if self.merge_mode == "concat":
                if dy.shape[-1] != 2 * H:
                    raise ValueError(f"dy's last axis must be 2 * output_dim = {2 * H}, got "
                                     f"shape {dy.shape}")
                dy_f, dy_b = dy[..., :H], dy[..., H:]
            elif self.merge_mode == "sum":
                dy_f = dy_b = dy
            elif self.merge_mode == "ave":
                dy_f = dy_b = dy / 2
            else:
                outs = getattr(self._tl, "outs", None)
                if outs is None:
                    raise ValueError("backward() needs a forward(x) with training=True first")
                out_f, out_b = outs
                dy_f, dy_b = dy * out_b, dy * out_f
        keep = getattr(self._tl, "keep", None)
        if keep is not None:   # padded steps output a constant zero
            dy_f, dy_b = dy_f * keep, dy_b * keep
        if self.return_sequences:   # into the backward layer's own (reversed) order
            dy_b = dy_b[:, ::-1]
        d_f, d_b = self._split_states(dstates, "dstates")
        dx = self.forward_layer.backward(dy_f, d_f)
        return dx + self.backward_layer.backward(dy_b, d_b)

    @property
    def output_shape(self):
        out = self.forward_layer.output_shape
        seq = out[0] if self.return_state else out
        if self.merge_mode == "concat":
            seq = seq[:-1] + (2 * seq[-1],)
        first = [seq, seq] if self.merge_mode is None else [seq]
        if self.return_state:
            return first + out[1:] * 2
        return first if self.merge_mode is None else seq

    def __repr__(self):
        return f"Bidirectional({self.forward_layer!r}, merge_mode={self.merge_mode!r})"


BUILTIN: dict[str, type] = {}
for _p in builtin_specs():
    _cls = load_cell(_p)
    BUILTIN[_cls.__name__] = _cls
    globals()[_cls.__name__] = _cls

SimpleRNN = BUILTIN["SimpleRNN"]
SimpleDeepRNN = BUILTIN["SimpleDeepRNN"]
GRU = BUILTIN["GRU"]
LSTM = BUILTIN["LSTM"]
JZS1 = BUILTIN["JZS1"]
JZS2 = BUILTIN["JZS2"]
JZS3 = BUILTIN["JZS3"]


# -- naming a cell: every front end (rnngen.torch, rnngen.jax, rnngen.keras) --------------
def resolve_cell(cell):
    """The numpy layer class for a built-in name, a spec path, or a class from load_cell."""
    if isinstance(cell, type) and issubclass(cell, Recurrent) and cell.spec is not None:
        return cell
    if isinstance(cell, str) and cell in BUILTIN:
        return BUILTIN[cell]
    if isinstance(cell, (str, Path)):
        p = Path(cell)
        if p.suffix in (".yaml", ".yml") or p.exists():
            return load_cell(p)
        raise ValueError(f"cell {str(cell)!r} is neither a built-in cell ("
                         + ", ".join(BUILTIN) + ") nor a spec file (.yaml)")
    raise TypeError("cell must be a built-in name ('GRU'), a path to a YAML spec, or a class "
                    f"from rnngen.load_cell, got {cell!r}")


def cell_ref(cls):
    """What pickles a cell class: a built-in by name; a user cell by its spec's text (and
    path, for messages), so that unpickling makes the very cell that was pickled, wherever
    and whenever, whatever became of the file."""
    if BUILTIN.get(cls.__name__) is cls:
        return cls.__name__
    return ("spec", str(cls.spec.path), cls.spec.text)


def cell_from_ref(ref):
    """The cell class that :func:`cell_ref` describes."""
    if isinstance(ref, tuple) and len(ref) == 3 and ref[0] == "spec":
        from .ir import compute_ir
        from .spec import parse_spec
        spec = parse_spec(ref[2], ref[1])
        compute_ir(spec)                     # its equations' checks, as load_cell's
        return layer_class(spec)
    return resolve_cell(ref)


def from_config(config: dict):
    """Rebuild a layer (without its weights) from get_config()'s dictionary."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError("config must be a dict from get_config() with a 'class_name' key")
    cfg = dict(config)
    name = cfg.pop("class_name")
    if name == "Embedding":
        return Embedding(**cfg)
    if name == "Bidirectional":
        return Bidirectional(from_config(cfg["layer"]), cfg.get("merge_mode", "concat"),
                             from_config(cfg["backward_layer"]) if "backward_layer" in cfg
                             else None)
    spec_path = cfg.pop("spec_path", None)
    if spec_path is not None:
        cls = load_cell(spec_path)
    elif name in BUILTIN:
        cls = BUILTIN[name]
    else:
        raise ValueError(f"unknown layer class {name!r}; built-in: {', '.join(BUILTIN)}, "
                         "Embedding (a custom cell's config carries its spec_path)")
    return cls(**cfg)
