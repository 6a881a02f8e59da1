"""The whole chain, stage by stage: spec -> IR -> sources -> library -> kernel.

    load_spec (spec.py) -> compute_ir (ir/) -> render_c / render_cuda (render.py)
        -> build_library (build.py) -> Kernel / CudaKernel (runtime/cpu.py, runtime/cuda.py)

The backend (backends.py: c, cuda, cuda-emulated) picks the render function,
the compile command and the kernel class.  ``make`` and the layers both go
through :func:`compile_cell`; nothing else reaches across stages.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Optional

from .backends import get_backend
from .build import build_library, input_key, lookup, record, runtime_header
from .ir import CellIR, compute_ir
from .layout import Schedule
from .render import generator_digest, render_c, render_cuda
from .runtime import Kernel, in_forked_child
from .spec import CellSpec, is_identifier, load_spec
from .targets import cpu_target, cuda_target

ROOT = Path(__file__).resolve().parent.parent      # the checkout (installed: site-packages)
# The built-in specs: inside the package where a wheel or `pip install .` put them
# (rnngen/_data/specs), else the checkout's top-level specs/ (the source of truth).
SPECS = next((d for d in (Path(__file__).resolve().parent / "_data" / "specs", ROOT / "specs")
              if d.is_dir()), ROOT / "specs")
# The example cells (examples/*.yaml), found the same way; rnngen.load_example reads them.
EXAMPLES = next((d for d in (Path(__file__).resolve().parent / "_data" / "examples",
                             ROOT / "examples") if d.is_dir()), ROOT / "examples")
GENERATED = ROOT / "generated"                     # a checkout's only (make generate)

_kernels: dict = {}
_lock = threading.Lock()
_threads = 0     # 0: OpenMP's count


def source_name(spec: CellSpec) -> str:
    """How the banner of the generated sources names the spec file: ``specs/<stem>.yaml``
    for a built-in spec, ``<stem>.yaml`` for another whose stem is an identifier, else
    ``a spec file``.  Only text that passed the identifier whitelist reaches generated
    code: a directory or file name may hold anything, `*/` and backslash-newlines
    included, and a path pasted into a C comment could close it."""
    p = Path(spec.path)
    stem, suffix = p.stem, p.suffix
    if not is_identifier(stem) or suffix not in (".yaml", ".yml"):
        return "a spec file"
    try:
        builtin = p.resolve().parent == SPECS.resolve()
    except (OSError, RuntimeError):
        builtin = False
    return f"specs/{stem}{suffix}" if builtin else f"{stem}{suffix}"


def generate(spec: CellSpec, params: Optional[dict] = None, backend: str = "c", *,
             layout: Optional[dict] = None,
             schedule: Schedule = Schedule()) -> tuple[CellIR, str, str]:
    """(ir, header, source) for a spec and parameter values (defaults where missing).
    ``layout``: choices for rnngen.layout.compute_layout (e.g. {"xw_in_ds": False});
    ``schedule``: a rnngen.layout.Schedule; both default to the backend's own."""
    be = get_backend(backend)
    ir = compute_ir(spec, params)
    header, source = be.render(ir, source_name(spec), be.layout(ir, **(layout or {})), schedule)
    return ir, header, source


def _identify(be, spec: CellSpec, params, layout, schedule) -> tuple:
    """(ikey, ir, layout, source name): what finds a built library before rendering (the
    spec, parameters, choices, the generator's code and templates, the build environment)."""
    ir = compute_ir(spec, params)
    lay = be.layout(ir, **(layout or {}))
    name = source_name(spec)
    inputs = (be.name, spec.digest, repr(sorted(ir.params.items())),
              repr(sorted((layout or {}).items())), repr(schedule), name, generator_digest())
    return input_key(inputs, be.key_extra(), command=be.command, suffix=be.suffix), ir, lay, name


def _library(be, spec: CellSpec, ikey, ir, lay, name, schedule) -> tuple[Path, str]:
    """(library, header text): found through the cache's index, or rendered and built;
    nothing loaded, no device needed."""
    found = lookup(ikey)
    if found is not None:
        return found
    header, source = be.render(ir, name, lay, schedule)
    lib = build_library(
        be.library_name(ir), header, source, suffix=be.suffix, command=be.command,
        key_extra=be.key_extra(),
        describe=spec.name + ("" if be.name == "c" else f" for {be.name}") + " ("
        + ", ".join(["float32+float64"] + [f"{p.name}={ir.params[p.name]}"
                                           for p in spec.params if p.kind != "init"])
        + ")" + (f" for {cpu_target().describe()}" if be.name == "c" else
                 f" for {cuda_target().describe()}" if be.name == "cuda" else ""))
    record(ikey, lib)
    return lib, header


def built_library(spec: CellSpec, params: Optional[dict] = None, backend: str = "c", *,
                  layout: Optional[dict] = None,
                  schedule: Schedule = Schedule()) -> tuple[Path, CellIR, str]:
    """(library, ir, header text) of ``spec``'s library for ``backend``, built into the
    cache (or found there) without loading it.  Needs the backend's compiler (for cuda:
    nvcc and cuBLAS), not its device, so libraries can be prebuilt on a machine without a
    GPU."""
    be = get_backend(backend)
    ikey, ir, lay, name = _identify(be, spec, params, layout, schedule)
    lib, header = _library(be, spec, ikey, ir, lay, name, schedule)
    return lib, ir, header


def build_cell(spec: CellSpec, params: Optional[dict] = None, backend: str = "c", *,
               layout: Optional[dict] = None, schedule: Schedule = Schedule()) -> Path:
    """Build ``spec``'s library for ``backend`` into the cache without loading it: what
    `rnngen build` does (see :func:`built_library`)."""
    return built_library(spec, params, backend, layout=layout, schedule=schedule)[0]


def compile_cell(spec: CellSpec, params: Optional[dict] = None, backend: str = "c", *,
                 layout: Optional[dict] = None, schedule: Schedule = Schedule()) -> Kernel:
    """The loaded kernel for ``spec`` with ``params`` on ``backend``; built at most once
    per process.  A backend that cannot run here raises DeviceError before anything else.
    ``layout`` and ``schedule`` force choices, as in :func:`generate` (for tests).

    A library is found by what its sources are rendered from (the spec, parameters,
    choices, the generator's code and templates, the build environment) before anything
    is rendered: in this process, or through the cache's index."""
    be = get_backend(backend)
    be.check()
    ikey, ir, lay, name = _identify(be, spec, params, layout, schedule)
    with _lock:
        k = _kernels.get(ikey)
        if k is None:
            lib, header = _library(be, spec, ikey, ir, lay, name, schedule)
            k = _kernels[ikey] = be.kernel(ir, lib, runtime_header(), header)
            k.backend = be.name
            k.set_threads(_threads)
    return k


MAX_THREADS = 1024


def _after_fork_in_child() -> None:
    """A forked child (multiprocessing's fork, DataLoader workers, Hogwild) runs every kernel
    on one thread: libgomp's threads do not survive fork, and a parallel region of more
    than one thread would wait for them forever.  The lock may have been held by another
    thread of the parent at the fork: the child gets a new one."""
    global _threads, _lock
    _lock = threading.Lock()
    _threads = 1
    for k in _kernels.values():
        try:
            k.set_threads(1)
        except Exception:   # noqa: BLE001 - a kernel that cannot run here is never called
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)


def set_num_threads(n: int) -> None:
    """Threads every kernel uses from now on: 0 < n <= 1024, or 0 for OpenMP's count
    (OMP_NUM_THREADS, else one per core).  A kernel never uses more than 64 threads, nor
    more than one per 16 hidden units.  A backward uses the layout its forward saved
    in, whatever the count is when it runs.  In a process forked from one that imported
    rnngen, every kernel runs on one thread whatever is asked (with a RuntimeWarning for
    more): OpenMP cannot start threads after fork."""
    global _threads
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_THREADS:
        raise ValueError(f"the number of threads must be 0 (automatic) or a positive int at "
                         f"most {MAX_THREADS}, got {n!r}")
    if in_forked_child():
        if n != 1:
            warnings.warn(f"set_num_threads({n}) in a forked process: its kernels run on one "
                          f"thread (OpenMP's threads do not survive fork; start worker "
                          f"processes with the 'spawn' or 'forkserver' method for more)",
                          RuntimeWarning, stacklevel=2)
        n = 1
    with _lock:
        _threads = n
        for k in _kernels.values():
            k.set_threads(n)


def get_num_threads() -> int:
    """The count set by set_num_threads (0: OpenMP's)."""
    return _threads


def builtin_specs() -> list[Path]:
    return sorted(SPECS.glob("*.yaml"))


def framework_variants() -> list[tuple[Path, dict]]:
    """(spec, parameters) of the cells the framework layers run with their default
    arguments, beside the built-ins' own defaults: rnngen.torch's LSTM / GRU / RNN and
    rnngen.keras's LSTM / GRU / SimpleRNN (sigmoid gates, tanh; torch's and Keras's default
    GRU is examples/torch_gru.yaml).  `rnngen build` prebuilds them."""
    gates = {"activation": "tanh", "inner_activation": "sigmoid"}
    return [(SPECS / "lstm.yaml", gates), (SPECS / "gru.yaml", gates),
            (SPECS / "simple_rnn.yaml", {"activation": "tanh"}),
            (SPECS / "simple_rnn.yaml", {"activation": "relu"}),
            (EXAMPLES / "torch_gru.yaml", {})]


def write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def stale_generated(files: dict[Path, str]) -> tuple[list[Path], list[Path]]:
    """(files in generated/ that differ from ``files`` or are missing, files not in ``files``)."""
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    extra = [p for p in GENERATED.iterdir() if p.suffix in (".c", ".h", ".cu")
             and p not in files]
    return stale, extra


def generated_files() -> dict[Path, str]:
    """What generated/ must contain: every spec in specs/ with default parameters, for
    the C backend (<cell>.c, <cell>.h) and the CUDA backend (<cell>.cu, <cell>_cuda.h)."""
    out = {}
    for p in builtin_specs():
        spec = load_spec(p)
        ir = compute_ir(spec)
        name = source_name(spec)
        header, source = render_c(ir, name)
        out[GENERATED / f"{ir.name}.h"] = header
        out[GENERATED / f"{ir.name}.c"] = source
        header, source = render_cuda(ir, name)
        out[GENERATED / f"{ir.name}_cuda.h"] = header
        out[GENERATED / f"{ir.name}.cu"] = source
    return out
