"""Issue 10, part 4: threads that share a layer, sizes checked before anything is
allocated, and a cached library found without rendering its sources."""
import dataclasses
import threading

import numpy as np
import pytest

import rnngen
from rnngen import backends, build, layers, pipeline


@pytest.mark.parametrize("backend", ["c", "cuda-emulated"])
def test_one_layer_used_from_two_python_threads_gives_each_its_own_gradients(backend):
    """Each thread's backward pairs with that thread's last forward (it took another
    thread's saved values before: 11-138 of 200 results per thread were wrong)."""
    layer = layers.GRU(16, input_dim=8, return_sequences=True, dtype="float64", seed=0,
                       backend=backend)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(4, 9, 8)) for _ in range(2)]
    dys = [rng.normal(size=(4, 9, 16)) for _ in range(2)]
    serial = []
    for x, dy in zip(xs, dys):
        y = layer(x).copy()
        dx = layer.backward(dy).copy()
        serial.append((y, dx, [g.copy() for g in layer.grads]))
    wrong = [0, 0]
    start = threading.Barrier(2)

    def work(i):
        start.wait()
        for _ in range(200 if backend == "c" else 8):
            y = layer(xs[i])
            dx = layer.backward(dys[i])
            want = serial[i]
            if not (np.array_equal(y, want[0]) and np.array_equal(dx, want[1])
                    and all(np.array_equal(g, w) for g, w in zip(layer.grads, want[2]))):
                wrong[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [0, 0]


def test_sizes_are_checked_before_anything_is_allocated():
    with pytest.raises(ValueError, match="number of threads .* at most 1024"):
        rnngen.set_num_threads(2 ** 40)
    assert rnngen.get_num_threads() == 0
    with pytest.raises(ValueError, match=r"truncate_gradient .* \(at most 2147483647\)"):
        layers.LSTM(4, truncate_gradient=2 ** 40)
    with pytest.raises(ValueError, match="output_dim must be a positive integer at most"):
        layers.LSTM(2 ** 31)
    with pytest.raises(ValueError, match="input_dim must be a positive integer at most"):
        layers.LSTM(4, input_dim=2 ** 40)
    with pytest.raises(MemoryError, match="weights .* GiB"):
        layers.LSTM(1 << 20, input_dim=4)      # 4 x 4 TiB of recurrent weights
    layer = layers.LSTM(32, input_dim=1)
    x = np.zeros((1 << 16, 1 << 10, 1), np.float32)   # B*T*H = 2^31: tens of GiB of work
    with pytest.raises(MemoryError, match=r"LSTM at T=1024, B=65536, D=1, H=32 needs .* GiB"):
        layer(x)
    layers.LSTM(4, input_dim=3)(np.ones((2, 3, 3), np.float32))   # and later builds still work


def test_a_cached_library_is_found_without_rendering(monkeypatch):
    spec = layers.JZS2.spec
    pipeline.compile_cell(spec, {"activation": "relu"})     # built (or found) once

    def no_render(*a, **k):
        raise AssertionError("rendered again")
    monkeypatch.setitem(backends.BACKENDS, "c", dataclasses.replace(backends.BACKENDS["c"],
                                                                     render=no_render))
    monkeypatch.setattr(pipeline, "_kernels", {})
    k = pipeline.compile_cell(spec, {"activation": "relu"})       # through the cache's index
    assert k is pipeline.compile_cell(spec, {"activation": "relu"})   # and in this process
    layers.JZS2(4, activation="relu", input_dim=3)(np.ones((1, 2, 3), np.float32))


def test_a_damaged_index_entry_only_costs_a_render(monkeypatch):
    spec = layers.JZS3.spec
    pipeline.compile_cell(spec)
    index = build.cache_dir() / "index"
    for p in index.iterdir():
        p.write_text("../../etc nothing\n")
    monkeypatch.setattr(pipeline, "_kernels", {})
    k = pipeline.compile_cell(spec)
    y, _, _ = k.forward(np.ones((1, 2, 3)), None, [np.full(s, 0.1) for s in
                                                  [w.dims(3, 4) for w in k.ir.weights]], 4, False)
    assert np.all(np.isfinite(y))
