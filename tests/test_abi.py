"""The call ABI (rnngen.abi): one schema gives the argument structs of both headers, the
kernels' parameters and the Python call; every entry point takes a context."""
import re

import numpy as np
import pytest

import rnngen
from rnngen import layers
from rnngen import abi
from rnngen.errors import KernelError
from rnngen.pipeline import compile_cell
from rnngen.render import render_c, render_cuda

CELLS = ["LSTM", "GRU", "SimpleDeepRNN"]


def members(header: str, struct: str) -> list:
    body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (struct, struct), header, re.S)
    assert body, struct
    return re.findall(r"\b(\w+);", re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S))


@pytest.mark.parametrize("name", CELLS)
def test_both_headers_print_the_schema(name):
    from rnngen.ir import compute_ir
    ir = compute_ir(layers.BUILTIN[name].spec)
    prefix = f"rnngen_{ir.name}"
    for render, ctx in ((render_c, "rnngen_ctx"), (render_cuda, "rnngen_cuda_ctx")):
        header, source = render(ir, "x.yaml")
        for entry in abi.ENTRIES:
            want = [f.name for f in abi.fields(ir, entry)]
            assert want[:4] == ["T", "B", "D", "H"]
            assert [f"w_{w.name}" for w in ir.weights] == [n for n in want if n.startswith("w_")]
            for sfx in ("_f32", "_f64"):
                struct = abi.struct_name(prefix, entry, sfx)
                assert members(header, struct) == want
                assert f"int {prefix}_{entry}{sfx}(const {ctx} *ctx, const {struct} *args);" \
                    in header
                # the kernel behind it is called with every member, in order
                kernel = {"c": f"{entry}_kernel{sfx}",
                          "rnngen_cuda_ctx": rf"{entry}_kernel<{'float' if sfx == '_f32' else 'double'}>"}
                call = re.search(rf"(?:return|int st =) {kernel.get(ctx, kernel['c'])}\((.*?)\);",
                                 source, re.S).group(1)
                assert [a.strip() for a in call.split(",")][1:] == [f"args->{n}" for n in want]


def lstm_kernel(backend="c"):
    return compile_cell(layers.BUILTIN["LSTM"].spec, {}, backend)


def problem(k, B=3, T=4, D=5, H=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, D))
    ws = [rng.normal(size=w.dims(D, H)) * 0.3 for w in k.ir.weights]
    return x, ws, H


def test_the_call_fills_the_struct_by_name():
    k = lstm_kernel()
    x, ws, H = problem(k)
    y, _, _ = k.forward(x, None, ws, H, False)
    B, T, D = x.shape
    n_save, n_work = k.sizes(T, B, D, H)
    p = lambda a: k.ffi.from_buffer("double[]", a)  # noqa: E731
    y2, work = np.empty_like(y), np.empty(n_work)
    values = dict(T=T, B=B, D=D, H=H, x=p(x), mask=k.ffi.NULL, state0=k.ffi.NULL, y=p(y2),
                  state_last=k.ffi.NULL, save=k.ffi.NULL, work=p(work))
    values.update((f"w_{w.name}", p(a)) for w, a in zip(k.ir.weights, ws))
    assert k._call("forward", "_f64", k.ffi.NULL, values) == 0      # NULL context: defaults
    np.testing.assert_array_equal(y2, y)
    del values["w_b_o"]
    with pytest.raises(KeyError, match="w_b_o"):
        k._call("forward", "_f64", k.ffi.NULL, values)


def test_the_context_sets_the_calls_threads():
    k = lstm_kernel()
    x, ws, H = problem(k, B=16, H=64)
    B, T, D = x.shape
    n_save, n_work = k.sizes(T, B, D, H)
    p = lambda a: k.ffi.from_buffer("double[]", a)  # noqa: E731
    outs = {}
    for threads in (1, 2, -1):
        y, work = np.zeros((B, T, H)), np.empty(n_work)
        values = dict(T=T, B=B, D=D, H=H, x=p(x), mask=k.ffi.NULL, state0=k.ffi.NULL,
                      y=p(y), state_last=k.ffi.NULL, save=k.ffi.NULL, work=p(work))
        values.update((f"w_{w.name}", p(a)) for w, a in zip(k.ir.weights, ws))
        outs[threads] = (k._call("forward", "_f64", k._context(threads=threads), values), y)
    assert outs[1][0] == 0 and outs[2][0] == 0
    np.testing.assert_allclose(outs[2][1], outs[1][1], rtol=1e-12, atol=1e-12)
    assert outs[-1][0] == -10                     # RNNGEN_ECTX
    with pytest.raises(KernelError, match="context is wrong"):
        k._check(outs[-1][0], "forward")


CUDA_BACKENDS = ["cuda-emulated", pytest.param("cuda", marks=pytest.mark.gpu)]


def device_count(backend) -> int:
    """The emulation's two devices (its "device" memory is host memory, reachable from
    both); on a GPU one, the current device, where the Python runtime keeps its buffers."""
    return 2 if backend == "cuda-emulated" else 1


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_a_cuda_call_runs_on_the_device_of_its_context(monkeypatch, backend):
    """The emulation has two devices.  A context for device 1 runs the call there (with
    device 1's own cuBLAS handle: the emulated cuBLAS fails a GEMM on another device's
    handle, so a handle shared by both devices would fail here) and leaves the caller's
    device current; a device that does not exist gets RNNGEN_ECTX before any work."""
    k = lstm_kernel(backend)
    n = device_count(backend)
    x, ws, H = problem(k)
    y, save, _ = k.forward(x, None, ws, H, True)     # the context of the current device
    dy = np.random.default_rng(1).normal(size=y.shape)
    dx, grads = k.backward(x, None, ws, save, dy, -1)[:2]
    real = k._context
    for device in (1, 0, 1) if n > 1 else (0,):
        monkeypatch.setattr(k, "_context", lambda stream=0, device=device: real(stream, device))
        y1, save1, _ = k.forward(x, None, ws, H, True)
        np.testing.assert_array_equal(y1, y)
        dx1, grads1 = k.backward(x, None, ws, save1, dy, -1)[:2]
        np.testing.assert_array_equal(dx1, dx)
        for g1, g in zip(grads1, grads):
            np.testing.assert_array_equal(g1, g)
    monkeypatch.setattr(k, "_context", lambda stream=0, device=-1: real(stream, 99))
    with pytest.raises(KernelError, match="device that does not exist"):
        k.forward(x, None, ws, H, False)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_calls_from_several_threads_on_two_devices_agree(monkeypatch, backend):
    """Four host threads, two per emulated device, each calling forward and backward in a
    loop (no Python lock: the library holds a lock per device while a call queues its
    work, and each device has its own handle): every result equals the serial one."""
    import threading
    k = lstm_kernel(backend)
    devices = (0, 1, 0, 1) if device_count(backend) > 1 else (0, 0, 0, 0)
    x, ws, H = problem(k, B=5, T=6)
    y, save, _ = k.forward(x, None, ws, H, True)
    dy = np.random.default_rng(1).normal(size=y.shape)
    dx = k.backward(x, None, ws, save, dy, -1)[0]
    real, local = k._context, threading.local()
    monkeypatch.setattr(k, "_context", lambda stream=0, device=-1: real(stream, local.device))
    failures = []

    def work(device):
        local.device = device
        try:
            for _ in range(5):
                y1, save1, _ = k.forward(x, None, ws, H, True)
                dx1 = k.backward(x, None, ws, save1, dy, -1)[0]
                np.testing.assert_array_equal(y1, y)
                np.testing.assert_array_equal(dx1, dx)
        except Exception as e:   # noqa: BLE001 (reported below)
            failures.append(e)

    threads = [threading.Thread(target=work, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]


@pytest.mark.parametrize("name", ["LSTM", "layernorm_lstm", "SimpleDeepRNN"])
def test_work_size_and_carving_come_from_one_table(name):
    """<cell>_sizes adds up exactly the arrays each kernel carves out of work, in order
    (rnngen.frame), on both backends (before, the two were written separately and the
    size formula could fall short of the carving: a mean group at T = 1)."""
    from rnngen import frame
    from rnngen.ir import compute_ir
    spec = layers.BUILTIN[name].spec if name in layers.BUILTIN else \
        rnngen.load_example(name).spec
    ir = compute_ir(spec)
    for render, table in ((render_c, frame.c_work), (render_cuda, frame.cuda_work)):
        _, source = render(ir, "x.yaml")
        sizes = source[source.index("_sizes(int T"):]
        sizes = sizes[:sizes.index("\n}\n")]
        added = re.findall(r"n \+= (.*?);   /\* (\w+) \*/", sizes)
        want = [(b.count, b.name) for b in table(ir)]
        assert added == want
        carved = re.findall(r"\*(\w+) = p; p \+= (.*?);", source)
        per_kernel = len(want)
        # forward and backward, in C for each dtype, in CUDA once (templates over the type)
        kernels = 4 if render is render_c else 2
        assert len(carved) == kernels * per_kernel
        for k in range(kernels):
            assert carved[k * per_kernel:(k + 1) * per_kernel] == [(n, c) for c, n in want]
