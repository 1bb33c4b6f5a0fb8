"""GPU-only tests: the log's sizes, interop with CuPy/PyTorch, streams, compile-once.

Skipped under the simulator (tests/conftest.py). On a GPU machine: ``python -m pytest``.
"""

import numpy as np
import pytest

import attn_numba
from attn_numba import kernels
from attn_numba.compile_check import kernel_targets
from attn_numba.testing import check_mha_fwd, check_mha_varlen_fwd, random_qkv, random_varlen

pytestmark = pytest.mark.gpu
KERNELS = attn_numba.available_kernels()
LOG_KW = dict(window_size=(128, 128))


def _runs(kernel, dtype=np.float16):
    return kernel != "flash_tc" or np.dtype(dtype) == np.float16


def _check_or_skip(check, *args, **kw):
    """Run a check; a kernel that refuses the case (its supports(), before any launch: flash_ws
    takes head sizes 64 and 128 only) skips it with the reason."""
    try:
        check(*args, **kw)
    except ValueError as exc:
        if "cannot run this call" not in str(exc):
            raise
        pytest.skip(str(exc))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("seq_len", [512, 8192])
@pytest.mark.parametrize("causal", [False, True])
def test_log_sizes(rng, kernel, seq_len, causal):
    if kernel == "naive" and seq_len == 8192 and causal:
        pytest.skip("one naive 8192 case is enough")
    q, k, v = random_qkv(rng, 1, seq_len, seq_len, 32, 8, 128, np.float16)
    check_mha_fwd(q, k, v, kernel, causal=causal, **LOG_KW)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", [
    (2, 97, 1025, 8, 1, 128, (-1, -1), False),
    (1, 1025, 97, 8, 8, 64, (-1, -1), True),
    (3, 1, 1, 4, 1, 128, (0, 0), False),
    (1, 1025, 1025, 8, 2, 256, (128, 0), False),
    (1, 513, 700, 4, 4, 128, (0, 0), True),
])
def test_awkward_sizes(rng, kernel, case):
    b, sq, sk, h, hkv, d, window, causal = case
    q, k, v = random_qkv(rng, b, sq, sk, h, hkv, d, np.float16)
    _check_or_skip(check_mha_fwd, q, k, v, kernel, causal=causal, window_size=window)


@pytest.mark.parametrize("kernel", KERNELS)
def test_varlen_with_empty_sequences(rng, kernel):
    q, k, v, cu_q, cu_k = random_varlen(rng, [300, 0, 1025, 1, 64], [280, 17, 1025, 0, 700],
                                        8, 2, 128, np.float16)
    check_mha_varlen_fwd(q, k, v, cu_q, cu_k, kernel, causal=True, window_size=(128, 128))
    check_mha_varlen_fwd(q, k, v, cu_q, cu_k, kernel)


@pytest.mark.parametrize("kernel", [k for k in KERNELS
                                    if k not in ("flash_tc", "flash_wgmma", "flash_ws")])
def test_fp32(rng, kernel):
    q, k, v = random_qkv(rng, 1, 600, 600, 8, 2, 128, np.float32)
    check_mha_fwd(q, k, v, kernel, causal=True, window_size=(128, 128))


def test_compiles_once_per_specialization(rng):
    from numba import cuda
    q, k, v = (cuda.to_device(x) for x in random_qkv(rng, 1, 512, 512, 32, 8, 128, np.float16))
    for kernel in KERNELS:
        attn_numba.mha_fwd(q, k, v, kernel=kernel, **LOG_KW)
    counts = {(n, f): len(fn.overloads) for n in KERNELS
              for f, fn, *_ in kernel_targets(kernels.get(n))}
    for _ in range(3):
        for kernel in KERNELS:
            attn_numba.mha_fwd(q, k, v, kernel=kernel, **LOG_KW)
    cuda.synchronize()
    assert counts == {(n, f): len(fn.overloads) for n in KERNELS
                      for f, fn, *_ in kernel_targets(kernels.get(n))}


def test_runs_on_the_callers_stream(rng):
    from numba import cuda
    q, k, v = random_qkv(rng, 1, 512, 512, 32, 8, 128, np.float16)
    stream = cuda.stream()
    dq, dk, dv = (cuda.to_device(x, stream=stream) for x in (q, k, v))
    out = attn_numba.mha_fwd(dq, dk, dv, stream=stream, **LOG_KW)
    host = out.copy_to_host(stream=stream)
    stream.synchronize()
    np.testing.assert_array_equal(host, attn_numba.mha_fwd(q, k, v, **LOG_KW))


def test_torch_tensors_in_torch_tensor_out(rng):
    torch = pytest.importorskip("torch")
    q, k, v = random_qkv(rng, 1, 512, 512, 32, 8, 128, np.float16)
    tq, tk, tv = (torch.from_numpy(x).cuda() for x in (q, k, v))
    out = attn_numba.mha_fwd(tq, tk, tv, **LOG_KW)
    assert isinstance(out, torch.Tensor) and out.device == tq.device
    np.testing.assert_array_equal(out.cpu().numpy(), attn_numba.mha_fwd(q, k, v, **LOG_KW))
    with pytest.raises(ValueError, match="contiguous"):
        attn_numba.mha_fwd(tq.transpose(1, 2), tk.transpose(1, 2), tv.transpose(1, 2))


def test_cupy_arrays(rng):
    cp = pytest.importorskip("cupy")
    q, k, v = random_qkv(rng, 1, 512, 512, 32, 8, 128, np.float16)
    out = attn_numba.mha_fwd(cp.asarray(q), cp.asarray(k), cp.asarray(v), **LOG_KW)
    assert isinstance(out, cp.ndarray)
    np.testing.assert_array_equal(out.get(), attn_numba.mha_fwd(q, k, v, **LOG_KW))


@pytest.mark.parametrize("kernel", KERNELS)
def test_no_seqlen_squared_allocation(rng, kernel):
    """At 8192 tokens the call allocates its outputs and little else (an S x S score matrix
    per head would be 8.6 GB in fp32)."""
    from numba import cuda
    from attn_numba.problem import min_bytes
    q, k, v = (cuda.to_device(x) for x in random_qkv(rng, 1, 8192, 8192, 32, 8, 128, np.float16))
    attn_numba.mha_fwd(q, k, v, kernel=kernel, **LOG_KW)  # compile and warm up
    cuda.synchronize()
    ctx = cuda.current_context()
    ctx.deallocations.clear()
    free_before = ctx.get_memory_info().free
    out, lse = attn_numba.mha_fwd(q, k, v, kernel=kernel, return_lse=True, **LOG_KW)
    cuda.synchronize()
    used = free_before - ctx.get_memory_info().free
    outputs = out.nbytes + lse.nbytes
    print(f"{kernel}: {used / 2**20:.1f} MiB allocated by the call, outputs {outputs / 2**20:.1f} MiB")
    assert used < outputs + 64 * 2**20, (used, outputs)
    assert min_bytes(8192, 8192, 32, 8, 128, 2) > 0
