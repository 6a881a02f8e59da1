"""The CUDA backend: the same results as the C backend, through its host emulation
(backend="cuda-emulated", everywhere) and on a GPU (tests marked gpu, skipped without one);
the generated .cu compiles with nvcc, warnings as errors, with no register spills; what
the emulation rejects; errors that say what is missing."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnngen
from rnngen import DeviceError, KernelError, build, layers
from rnngen.backends import cublas_dirs, get_backend, nvcc_path
from rnngen.pipeline import GENERATED, ROOT
from rnngen.render import TEMPLATES
from test_custom_cells import ODD

CELLS = ["SimpleRNN", "SimpleDeepRNN", "GRU", "LSTM", "JZS1", "JZS2", "JZS3"]
B, T, D, H = 3, 7, 4, 5


def _has_gpu() -> bool:
    try:
        from rnngen.backends import check_cuda
        check_cuda()
        return True
    except Exception:   # noqa: BLE001 - any reason the GPU backend cannot run
        return False


def _user_cells(tmp):
    p = Path(tmp) / "odd.yaml"
    p.write_text(ODD)
    return {"MGU": rnngen.load_cell(ROOT / "examples" / "mgu.yaml"), "Odd": rnngen.load_cell(p)}


@pytest.fixture(scope="module")
def cell_classes(tmp_path_factory):
    out = {n: getattr(layers, n) for n in CELLS}
    out.update(_user_cells(tmp_path_factory.mktemp("specs")))
    return out


def _mask(kind, rng):
    if kind == "none":
        return None
    m = rng.random((B, T)) > 0.35
    if kind == "start":
        m[:, :2] = False
    m[0, :] = True
    return m


def _pair(cls, backend, dtype, **kw):
    a = cls(H, dtype=dtype, seed=3, input_dim=D, **kw)
    b = cls(H, dtype=dtype, seed=3, input_dim=D, backend=backend, **kw)
    b.set_weights(a.get_weights())
    return a, b


def _compare(cls, backend, dtype, mask_kind, truncate, return_sequences, tol):
    rng = np.random.default_rng(7)
    a, b = _pair(cls, backend, dtype, truncate_gradient=truncate,
                 return_sequences=return_sequences)
    x = rng.normal(size=(B, T, D)).astype(dtype)
    mask = _mask(mask_kind, rng)
    ya, yb = a(x, mask=mask), b(x, mask=mask)
    scale = 1 + np.abs(ya).max()
    assert np.abs(ya - yb).max() <= tol * scale, "forward"
    dy = rng.normal(size=ya.shape).astype(dtype)
    da, db = a.backward(dy), b.backward(dy)
    assert np.abs(da - db).max() <= tol * (1 + np.abs(da).max()), "dx"
    for name, ga, gb in zip(a.weight_names(), a.grads, b.grads):
        assert np.abs(ga - gb).max() <= tol * (1 + np.abs(ga).max()), name
    # inference (nothing saved) computes the same forward
    yi = b.forward(x, mask=mask, training=False)
    assert np.abs(yi - yb).max() <= tol * scale, "inference"


CASES = [("float64", "none", -1, True), ("float64", "holes", -1, True),
         ("float64", "start", 3, True), ("float64", "none", 2, False),
         ("float32", "holes", 3, True)]


@pytest.mark.parametrize("name", CELLS + ["MGU", "Odd"])
def test_emulated_cuda_agrees_with_c(cell_classes, name):
    """Forward, dx and every weight gradient, with masks, truncation, both dtypes."""
    for dtype, mask_kind, truncate, rs in CASES:
        tol = 1e-12 if dtype == "float64" else 1e-5
        _compare(cell_classes[name], "cuda-emulated", dtype, mask_kind, truncate, rs, tol)


@pytest.mark.gpu
@pytest.mark.parametrize("name", CELLS + ["MGU", "Odd"])
def test_cuda_agrees_with_c(cell_classes, name):
    for dtype, mask_kind, truncate, rs in CASES:
        tol = 1e-12 if dtype == "float64" else 1e-5
        _compare(cell_classes[name], "cuda", dtype, mask_kind, truncate, rs, tol)


@pytest.mark.parametrize("backend", ["cuda-emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_gradients_are_bit_identical_between_runs(backend):
    rng = np.random.default_rng(0)
    layer = layers.LSTM(32, return_sequences=True, input_dim=8, seed=0, backend=backend)
    x = rng.normal(size=(16, 9, 8)).astype(np.float32)
    dy = rng.normal(size=(16, 9, 32)).astype(np.float32)
    runs = []
    for _ in range(2):
        layer(x)
        layer.backward(dy)
        runs.append([g.copy() for g in layer.grads])
    for g1, g2 in zip(*runs):
        assert np.array_equal(g1, g2)


def test_backend_names():
    assert get_backend("cpu").name == "c"
    with pytest.raises(ValueError, match="backend must be one of 'c', 'cuda', 'cuda-emulated'"):
        layers.GRU(4, backend="gpu")
    layer = layers.GRU(4, input_dim=3, backend="cuda-emulated")
    assert layer.get_config()["backend"] == "cuda-emulated"
    assert layers.from_config(layer.get_config()).backend == "cuda-emulated"


def _has_driver():
    import ctypes
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


@pytest.mark.skipif(_has_driver(), reason="this machine has an NVIDIA driver")
def test_cuda_without_a_driver_says_so_before_anything_runs():
    with pytest.raises(DeviceError, match="no NVIDIA driver"):
        layers.GRU(4, backend="cuda")          # not even built yet
    with pytest.raises(DeviceError, match="no NVIDIA driver"):
        rnngen.load_cell(ROOT / "examples" / "mgu.yaml")(4, backend="cuda")


def test_a_cuda_failure_becomes_a_kernel_error_with_its_meaning():
    from rnngen.runtime import DeviceBuffer
    layer = layers.SimpleRNN(4, input_dim=3, backend="cuda-emulated")
    with pytest.raises(KernelError, match="cudaErrorMemoryAllocation: out of memory"):
        DeviceBuffer(layer._kernel, 1 << 62)


# -- the emulation itself ---------------------------------------------------------------
EMU_PROBE = r"""
#include "rnngen_cuda.h"
#include <cstdio>
static __global__ void order(int *out, int *next)
{
    out[(*next)++] = (int)(blockIdx.x + gridDim.x * blockIdx.y);
}
static __global__ void nothing(int *out) { out[0] = 1; }
int main()
{
    int out[64] = {0}, next = 0;
    RNNGEN_LAUNCH(order, dim3(8, 8), dim3(1), 0, out, &next);
    int inorder = 1;
    for (int i = 0; i < 64; i++) inorder &= out[i] == i;
    std::printf("launch ok %d in order %d\n", cudaGetLastError() == cudaSuccess, inorder);
    RNNGEN_LAUNCH(nothing, dim3(1), dim3(2048), 0, out);
    std::printf("block 2048 %s\n", cudaGetErrorName(cudaGetLastError()));
    RNNGEN_LAUNCH(nothing, dim3(1, 70000), dim3(32), 0, out);
    std::printf("grid y 70000 %s\n", cudaGetErrorName(cudaGetLastError()));
    RNNGEN_LAUNCH(nothing, dim3(0), dim3(32), 0, out);
    std::printf("empty grid %s\n", cudaGetErrorName(cudaGetLastError()));
    cublasHandle_t h;
    cublasCreate(&h);
    /* column-major: A [2,3] (lda 2), B [3,2] (ldb 3), C = A B [2,2] */
    const float A[6] = {1, 2, 3, 4, 5, 6}, Bm[6] = {1, 0, 1, 0, 1, 1};
    float C[4] = {0}, one = 1, zero = 0;
    cublasStatus_t s = cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, A, 2, Bm, 3, &zero, C, 2);
    std::printf("gemm %s %g %g %g %g\n", cublasGetStatusName(s), C[0], C[1], C[2], C[3]);
    s = cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, A, 1, Bm, 3, &zero, C, 2);
    std::printf("lda 1 %s\n", cublasGetStatusName(s));
    s = cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, 2, 2, 3, &one, A, 2, Bm, 3, &zero, C, 2);
    std::printf("transposed lda 2 %s\n", cublasGetStatusName(s));
    cublasDestroy(h);
    return 0;
}
"""


def test_the_emulation_rejects_what_a_gpu_rejects(tmp_path):
    src = tmp_path / "probe.cu"
    src.write_text(EMU_PROBE)
    exe = tmp_path / "probe"
    inc, libdir, lib = build.blas_paths()
    cmd = ["c++", "-x", "c++", "-std=c++17", "-Wall", "-Wextra", "-Werror",
           "-DRNNGEN_CUDA_EMULATION", f"-I{TEMPLATES}", f"-I{inc}", str(src), "-o", str(exe),
           f"-L{libdir}", f"-l{lib}", f"-Wl,-rpath,{libdir}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    assert "launch ok 1 in order 0" in out          # blocks run, not in order
    assert "block 2048 cudaErrorInvalidConfiguration" in out
    assert "grid y 70000 cudaErrorInvalidConfiguration" in out
    assert "empty grid cudaErrorInvalidConfiguration" in out
    assert "gemm CUBLAS_STATUS_SUCCESS 6 8 8 10" in out   # [[1,3,5],[2,4,6]] @ [[1,0],[0,1],[1,1]], by columns
    assert "lda 1 CUBLAS_STATUS_INVALID_VALUE" in out
    assert "transposed lda 2 CUBLAS_STATUS_INVALID_VALUE" in out   # op(A) = A^T needs lda >= k


def test_emulated_cuda_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    """One build of two cells under ASan and UBSan, run forward and backward (masks,
    truncation), in a child process with the sanitizer runtime preloaded."""
    asan = subprocess.run(["c++", "-print-file-name=libasan.so"], capture_output=True,
                          text=True).stdout.strip()
    if not asan or not os.path.isabs(asan):
        pytest.skip("the compiler has no AddressSanitizer runtime")
    script = tmp_path / "run.py"
    script.write_text(
        "import numpy as np, rnngen\n"
        "from rnngen import layers\n"
        "rng = np.random.default_rng(0)\n"
        "for cls in (layers.GRU, layers.SimpleDeepRNN):\n"
        "    for dt in ('float32', 'float64'):\n"
        "        l = cls(5, return_sequences=True, truncate_gradient=3, dtype=dt, seed=0,\n"
        "                backend='cuda-emulated')\n"
        "        x = rng.normal(size=(3, 6, 4)).astype(dt)\n"
        "        m = rng.random((3, 6)) > 0.3\n"
        "        y = l(x, mask=m)\n"
        "        l.backward(np.ones_like(y))\n"
        "        l(x, training=False)\n"
        "print('sanitized ok')\n")
    env = dict(os.environ, RNNGEN_SANITIZE="1", LD_PRELOAD=asan,
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
               PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0 and "sanitized ok" in res.stdout, res.stderr[-3000:]


# -- nvcc -----------------------------------------------------------------------------
def _nvcc_and_cublas():
    try:
        return nvcc_path(), cublas_dirs()[0]
    except DeviceError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("source", sorted(p.name for p in GENERATED.glob("*.cu")))
def test_generated_cu_compiles_with_nvcc_without_warnings_or_spills(tmp_path, source):
    nvcc, cublas_inc = _nvcc_and_cublas()
    cmd = [nvcc, "-O3", "-std=c++17", "-gencode", "arch=compute_90,code=[sm_90,compute_90]",
           "-Werror", "all-warnings", "-Xcompiler", "-fPIC,-Wall,-Wextra",
           "-Xptxas", "-v,-warn-spills", "-c", str(GENERATED / source), "-o",
           str(tmp_path / "x.o"), f"-I{GENERATED}", f"-I{TEMPLATES}", f"-I{cublas_inc}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    report = res.stdout + res.stderr
    # ptxas -v: one "Used N registers" line per kernel, spills per function
    used = re.findall(r"Used (\d+) registers", report)
    assert used, report
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    assert not any(spills), report
    record = ROOT / "build" / "ptxas"
    record.mkdir(parents=True, exist_ok=True)
    (record / f"{source}.txt").write_text(report)


def test_generated_cu_compiles_as_cxx_for_the_emulation(tmp_path):
    inc, _, _ = build.blas_paths()
    for src in sorted(GENERATED.glob("*.cu")):
        cmd = ["c++", "-x", "c++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-Wshadow",
               "-O1", "-DRNNGEN_CUDA_EMULATION", "-c", str(src), "-o", str(tmp_path / "x.o"),
               f"-I{GENERATED}", f"-I{TEMPLATES}", f"-I{inc}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, f"{src.name}: {res.stderr}"


# -- device arrays in and out ---------------------------------------------------------
class HostAsDevice:
    """Host memory behind __cuda_array_interface__: in the emulation, device memory is host
    memory, so this stands for a CuPy array or a torch CUDA tensor."""

    def __init__(self, a, stream=None):
        self.a = np.ascontiguousarray(a)
        self.stream = stream

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.a.shape, "typestr": self.a.dtype.str, "strides": None,
                "data": (self.a.ctypes.data, False), "version": 3, "stream": self.stream}


@pytest.mark.parametrize("return_sequences", [True, False])
def test_device_arrays_are_read_in_place_and_results_stay_on_the_device(return_sequences):
    rng = np.random.default_rng(5)
    a, b = _pair(layers.GRU, "cuda-emulated", "float64", return_sequences=return_sequences,
                 truncate_gradient=4)
    x = rng.normal(size=(B, T, D))
    mask = _mask("holes", rng)
    y_host = a(x, mask=mask)
    dev = b._kernel._local.__dict__.setdefault("dev", {})   # the kernel's upload buffers
    dev.pop("x", None), dev.pop("mask", None)
    y_dev = b(HostAsDevice(x), mask=HostAsDevice(mask))
    assert isinstance(y_dev, rnngen.runtime.DeviceArray) and y_dev.shape == y_host.shape
    assert "x" not in dev and "mask" not in dev   # read in place: nothing uploaded
    np.testing.assert_allclose(np.asarray(y_dev), y_host, rtol=1e-12, atol=1e-13)
    iface = y_dev.__cuda_array_interface__
    assert iface["typestr"] == "<f8" and iface["shape"] == y_host.shape
    dy = rng.normal(size=y_host.shape)
    dx_host = a.backward(dy)
    dx_dev = b.backward(HostAsDevice(dy))
    assert isinstance(dx_dev, rnngen.runtime.DeviceArray)
    np.testing.assert_allclose(dx_dev.get(), dx_host, rtol=1e-12, atol=1e-13)
    for ga, gb in zip(a.grads, b.grads):
        assert isinstance(gb, np.ndarray)
        np.testing.assert_allclose(gb, ga, rtol=1e-12, atol=1e-13)
    if return_sequences:   # a result handed on to the next layer, on the device
        n1 = layers.SimpleRNN(3, input_dim=H, dtype="float64", seed=1)
        n2 = layers.SimpleRNN(3, input_dim=H, dtype="float64", seed=1, backend="cuda-emulated")
        np.testing.assert_allclose(n2(y_dev).get(), n1(y_host), rtol=1e-12, atol=1e-13)


def test_device_arrays_are_checked():
    layer = layers.GRU(H, input_dim=D, backend="cuda-emulated", dtype="float64")
    with pytest.raises(TypeError, match="layer's dtype float64"):
        layer(HostAsDevice(np.zeros((B, T, D), np.float32)))
    with pytest.raises(ValueError, match="input_dim"):
        layer(HostAsDevice(np.zeros((B, T, D + 1))))
    with pytest.raises(ValueError, match="C-contiguous"):
        v = HostAsDevice(np.zeros((B, T, D)))
        iface = dict(v.__cuda_array_interface__, strides=(8, 8 * B, 8 * B * T))
        layer(type("Strided", (), {"__cuda_array_interface__": iface})())
    with pytest.raises(TypeError, match="backend is 'c'"):
        layers.GRU(H, input_dim=D)(HostAsDevice(np.zeros((B, T, D), np.float32)))


class DLPackOnDevice:
    """Host memory behind DLPack, saying it is on CUDA device 0 (in the emulation device
    memory is host memory): stands for an array that offers DLPack only.  The capsule is
    numpy's (its own device field says CPU; rnngen goes by __dlpack_device__)."""

    def __init__(self, a):
        self.a = a

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        return self.a.__dlpack__()


def test_dlpack_arrays_are_read_in_place():
    rng = np.random.default_rng(6)
    a, b = _pair(layers.LSTM, "cuda-emulated", "float64", return_sequences=True,
                 return_state=True)
    x = rng.normal(size=(B, T, D))
    mask = _mask("holes", rng)
    init = [rng.normal(size=(B, H)) for _ in range(2)]
    host = a(x, mask=mask, initial_state=init)
    dev = b._kernel._local.__dict__.setdefault("dev", {})
    dev.pop("x", None), dev.pop("mask", None), dev.pop("state0", None)
    got = b(DLPackOnDevice(x), mask=DLPackOnDevice(mask.astype(np.uint8)),
            initial_state=DLPackOnDevice(np.stack(init)))
    assert "x" not in dev and "mask" not in dev and "state0" not in dev   # read in place
    assert all(isinstance(g, rnngen.runtime.DeviceArray) for g in got)
    for g, h in zip(got, host):
        np.testing.assert_allclose(g.get(), h, rtol=1e-12, atol=1e-13)
    dy = rng.normal(size=host[0].shape)
    dx = b.backward(DLPackOnDevice(dy))
    np.testing.assert_allclose(dx.get(), a.backward(dy), rtol=1e-12, atol=1e-13)
    for g, h in zip(b.initial_state_grads, a.initial_state_grads):
        np.testing.assert_allclose(g.get(), h, rtol=1e-12, atol=1e-13)


def test_dlpack_arrays_are_checked():
    from rnngen.runtime import DeviceView, is_device_array
    x = np.zeros((B, T, D))
    assert not is_device_array(x)                 # numpy's DLPack device is the CPU
    assert is_device_array(DLPackOnDevice(x))
    v = DeviceView.of(DLPackOnDevice(x), "x")
    assert v.ptr == x.ctypes.data and v.shape == x.shape and v.dtype == np.float64
    layer = layers.GRU(H, input_dim=D, backend="cuda-emulated", dtype="float64")
    with pytest.raises(TypeError, match="float32 or float64"):
        layer(DLPackOnDevice(np.zeros((B, T, D), np.int32)))
    with pytest.raises(ValueError, match="C-contiguous"):
        layer(DLPackOnDevice(np.zeros((D, T, B)).transpose(2, 1, 0)))
    with pytest.raises(TypeError, match="layer's dtype float64"):
        layer(DLPackOnDevice(np.zeros((B, T, D), np.float32)))
    with pytest.raises(TypeError, match="backend is 'c'"):
        layers.GRU(H, input_dim=D)(DLPackOnDevice(x))


def test_results_into_given_device_arrays():
    """A framework's own device memory as y, dx and every weight gradient: written in
    place on the stream, nothing copied to the host (no dw upload buffers made)."""
    from rnngen.runtime import DeviceBuffer
    rng = np.random.default_rng(8)
    a, b = _pair(layers.GRU, "cuda-emulated", "float64", return_sequences=True)
    x, mask = rng.normal(size=(B, T, D)), _mask("holes", rng)
    y_ref = a(x, mask=mask)
    dy = rng.normal(size=y_ref.shape)
    dx_ref = a.backward(dy)
    k = b._kernel
    ws = [HostAsDevice(w) for w in a.get_weights()]
    y = HostAsDevice(np.zeros((B, T, H)))
    save = HostAsDevice(np.zeros(k.sizes(T, B, D, H)[0]))
    got, _, _ = k.forward(HostAsDevice(x), HostAsDevice(mask.astype(np.uint8)), ws, H, True,
                          save=DeviceBuffer.over(k, save), out=y)
    assert got is y
    np.testing.assert_allclose(y.a, y_ref, rtol=1e-12, atol=1e-13)
    dx = HostAsDevice(np.zeros((B, T, D)))
    grads = [HostAsDevice(np.zeros_like(w.a)) for w in ws]
    dev = k._local.__dict__.setdefault("dev", {})
    for name in [n for n in dev if n.startswith("dw")]:
        dev.pop(name)
    got_dx, got_grads, _ = k.backward(HostAsDevice(x), HostAsDevice(mask.astype(np.uint8)), ws,
                                      DeviceBuffer.over(k, save), HostAsDevice(dy), -1,
                                      out=dx, grads_out=grads)
    assert got_dx is dx and all(g is h for g, h in zip(got_grads, grads))
    assert not any(n.startswith("dw") for n in dev)
    np.testing.assert_allclose(dx.a, dx_ref, rtol=1e-12, atol=1e-13)
    for g, ref in zip(grads, a.grads):
        np.testing.assert_allclose(g.a, ref, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="grads_out"):
        k.backward(HostAsDevice(x), None, ws, DeviceBuffer.over(k, save), HostAsDevice(dy), -1,
                   grads_out=[HostAsDevice(np.zeros((1, 1)))] * len(ws))


def test_the_emulation_fills_fresh_device_memory_with_nan():
    """A kernel that reads device memory nobody wrote sees NaN in the emulation (as it
    would see garbage on a GPU), not the zeros a fresh host page holds."""
    from rnngen.layers import BUILTIN
    from rnngen.pipeline import compile_cell
    k = compile_cell(BUILTIN["GRU"].spec, {}, "cuda-emulated")
    pp = k.ffi.new("void **")
    assert k._fn("cuda_alloc")(64, pp) == 0
    host = np.zeros(8, np.float64)
    assert k._fn("cuda_copy")(k.ffi.from_buffer(host), pp[0], 64, 0) == 0
    assert k._fn("cuda_free")(pp[0]) == 0
    assert np.isnan(host).all()


@pytest.mark.parametrize("name", ["LSTM", "GRU", "layernorm_lstm"])
@pytest.mark.parametrize("B,H", [(9, 33), (17, 65)])
def test_launches_over_several_os_threads_at_ragged_sizes_agree_with_c(name, B, H):
    """The emulation runs each launch's blocks on RNNGEN_EMU_WORKERS OS threads at once;
    at sizes whose grids span several blocks with ragged edges, forward and backward (T=20,
    a mask, float64) still give the C backend's results (a race between blocks would not)."""
    import rnngen
    from rnngen.layers import BUILTIN
    cls = BUILTIN[name] if name in BUILTIN else rnngen.load_example(name)
    rng = np.random.default_rng(B)
    x = rng.normal(size=(B, 20, 7))
    mask = rng.random((B, 20)) > 0.2
    dy = rng.normal(size=(B, 20, H))
    out = []
    for backend in ("c", "cuda-emulated"):
        layer = cls(H, input_dim=7, return_sequences=True, dtype="float64", seed=3,
                    backend=backend)
        y = layer(x, mask=mask)
        out.append([y, layer.backward(dy)] + [g.copy() for g in layer.grads])
    for a, b in zip(*out):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)


# -- the GPU command (make gpu-check) -----------------------------------------------------
def test_the_sanitizers_program_agrees_with_c_in_the_emulation():
    """tests/gpu_small.py, which `make gpu-check` runs under compute-sanitizer, run here on
    the emulation: every cell and dtype agrees with C and it exits 0."""
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "gpu_small.py"), "--backend",
                        "cuda-emulated"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("(ok)") == 6 and "MISMATCH" not in r.stdout


@pytest.mark.skipif(_has_gpu(), reason="a GPU is here: make gpu-check would run it all")
def test_gpu_check_without_a_gpu_says_so_and_exits_2(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "gpu_check.py"), "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no usable GPU here" in r.stderr and "backend='cuda'" in r.stdout
    assert (tmp_path / "environment.log").is_file()


def test_the_lstm_takes_two_launches_per_step_each_way():
    """Issue 21's target: per step, the LSTM's forward is one GEMM and one kernel (phase 0,
    the states into their slots, runs at the top of phase 1's kernel; the GEMM reads the
    state register) and its backward one kernel and one GEMM."""
    source = (GENERATED / "lstm.cu").read_text()
    loops = re.findall(r"\n    for \(int t = .*?\n    \}\n", source, re.S)
    assert len(loops) == 2                                  # forward, backward (one dtype)
    for loop in loops:
        assert len(re.findall(r"RNNGEN_CU_LAUNCH|RNNGEN_CUBLAS", loop)) == 2, loop
    assert "rnngen_lstm_fwd0" not in source
