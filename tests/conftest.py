"""Test configuration: use Numba's CUDA simulator unless a real GPU is present.

Set before numba is imported. Override with ATTN_NUMBA_TEST_GPU=1 (force the GPU) or
NUMBA_ENABLE_CUDASIM=1 (force the simulator).
"""
import os
import zlib


def _has_gpu():
    if os.environ.get("ATTN_NUMBA_TEST_GPU") == "1":
        return True
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl"))


if not _has_gpu():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from attn_numba import on_simulator  # noqa: E402

SIM = on_simulator()


def pytest_collection_modifyitems(config, items):
    if SIM:
        skip = pytest.mark.skip(reason="needs a real CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def rng(request):
    # a fresh, reproducible-per-test seed: different tests draw different inputs
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture
def qkv(rng):
    """Small float32 batched q, k, v (batch 2, sq 5, sk 7, 4 heads over 2, head size 8)."""
    from attn_numba.testing import random_qkv
    return random_qkv(rng, 2, 5, 7, 4, 2, 8, np.float32)


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if anything reaches a kernel."""
    from attn_numba import callpath

    def boom(*a, **k):
        raise AssertionError("a kernel was launched for bad input")
    monkeypatch.setattr(callpath, "_run", boom)
