"""Test configuration: use Numba's CUDA simulator unless a real GPU is present, and the quick
run unless ``--full``.

Set before numba is imported. Override with ATTN_NUMBA_TEST_GPU=1 (force the GPU) or
NUMBA_ENABLE_CUDASIM=1 (force the simulator).

``python -m pytest`` is the quick run: tests marked ``@pytest.mark.slow`` are skipped.
``python -m pytest --full`` (or ATTN_NUMBA_FULL_TESTS=1, or a ``-m`` expression naming
``slow``) runs them too: every specialisation to PTX, the property sweeps, every notebook, the
long simulator runs. ``-n auto`` (pytest-xdist) spreads either over every core, as the README
and .ci/run do. Mark a test, or one ``pytest.param(..., marks=pytest.mark.slow)`` case of
a parametrised test, slow when it takes more than a few seconds on 2 CPU cores and a cheaper
test or case already covers its code in the quick run.
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


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="also run the tests marked slow (every specialisation to PTX, the "
                          "property sweeps, every notebook, the long simulator runs)")


def full_run(config):
    """Does this run include the tests marked slow?"""
    return (config.getoption("--full") or os.environ.get("ATTN_NUMBA_FULL_TESTS") == "1"
            or "slow" in (config.getoption("markexpr") or ""))


def pytest_collection_modifyitems(config, items):
    gpu = pytest.mark.skip(reason="needs a real CUDA GPU")
    slow = pytest.mark.skip(reason="slow: part of the full run (python -m pytest --full)")
    full = full_run(config)
    for item in items:
        if SIM and "gpu" in item.keywords:
            item.add_marker(gpu)
        elif not full and item.get_closest_marker("slow") is not None:
            item.add_marker(slow)


def pytest_report_header(config):
    return ("attn_numba: " + ("full run (slow tests included)" if full_run(config) else
                              "quick run (slow tests skipped; --full runs them)")
            + (", Numba's CUDA simulator" if SIM else ", a real GPU"))


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
