import sys
from pathlib import Path

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
