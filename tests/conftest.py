import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "numpy")   # Keras 3, where a test uses it: numpy

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only where backend='cuda' can: skipped, with the reason."""
    try:
        from rnngen.backends import check_cuda
        check_cuda()
        return
    except Exception as e:   # noqa: BLE001 - any reason the GPU backend cannot run
        reason = f"needs a CUDA GPU ({e})"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def keras(monkeypatch):
    """Keras 3 on its numpy backend, computing in float64.  Keras 3.15 maps float64 to
    float32 in its type promotion on every backend but TensorFlow (BIT64_TO_BIT32_DTYPE,
    "to be aligned with JAX"), so its float64 layers compute in float32 (tests/test_keras.py
    sees 7e-8); mapping float64 to itself for these tests makes them float64 throughout."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "numpy":  # pragma: no cover - imported earlier elsewhere
        pytest.skip("keras was loaded with another backend")
    try:
        from keras.src.backend.common import dtypes
        monkeypatch.setitem(dtypes.BIT64_TO_BIT32_DTYPE, "float64", "float64")
    except (ImportError, AttributeError):   # pragma: no cover - a Keras without the map
        pass
    floatx = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield keras
    keras.config.set_floatx(floatx)
