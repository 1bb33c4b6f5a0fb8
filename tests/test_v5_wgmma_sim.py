"""flash_wgmma's whole kernel on Numba's CUDA simulator, with the inline-PTX intrinsics
replaced by their pure-Python models (attn_numba.kernels.ptx_sm90_sim: wgmma through the
ISA-level descriptor model, cp.async as immediate copies). Checks tiles, masks, GQA rows,
varlen, lse, the overlapped loop and two warpgroups against the float64 reference; not the
asynchronous hazards (the GPU script does that: scripts/gpu_wgmma_check.py)."""
import math

import ml_dtypes
import numpy as np
import pytest

from attn_numba.kernels import FWD_ARRAYS, launch_plans, named
from attn_numba.kernels import v5_flash_wgmma as v5
from attn_numba.problem import Problem
from attn_numba.reference import mha_varlen_fwd_ref
from attn_numba.testing import LSE_ATOL, LSE_RTOL

from conftest import SIM

pytestmark = pytest.mark.skipif(not SIM, reason="simulator models of the intrinsics")
BF16 = np.dtype(ml_dtypes.bfloat16)
FLOOR = {np.dtype(np.float16): 2e-3, BF16: 1.6e-2}


def _run(rng, seq_q, seq_k, h, hkv, d, dtype, window, causal, **kw):
    dtype = np.dtype(dtype)
    cu_q = np.concatenate([[0], np.cumsum(seq_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(seq_k)]).astype(np.int32)
    q = rng.standard_normal((cu_q[-1], h, d)).astype(dtype)
    k = rng.standard_normal((cu_k[-1], hkv, d)).astype(dtype)
    v = rng.standard_normal((cu_k[-1], hkv, d)).astype(dtype)
    left, right = window[0], 0 if causal else window[1]
    p = Problem(batch=len(seq_q), total_q=int(cu_q[-1]), total_k=int(cu_k[-1]),
                max_seqlen_q=max(seq_q), max_seqlen_k=max(seq_k), num_heads=h,
                num_kv_heads=hkv, head_size=d, dtype=dtype, softmax_scale=1 / math.sqrt(d),
                window_left=left, window_right=right, causal=causal, lse_batched=False,
                on_simulator=True)
    plans = v5.plan(p, v5.config_for(p, **kw))
    out = np.full(q.shape, 0xFFFF, np.uint16)                 # NaN in fp16 and bf16
    lse = np.full((1, h, p.total_q), np.nan, np.float32)
    launch_plans(plans, named(FWD_ARRAYS, q, k, v, out, lse, cu_q, cu_k))
    ref, ref_lse = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, causal=causal, window_size=window)
    low, _ = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, causal=causal, window_size=window,
                                p_dtype=dtype)
    tol = 2 * np.abs(low.astype(dtype).astype(np.float64) - ref).max() + FLOOR[dtype]
    return out.view(dtype).astype(np.float64), lse[0], ref, ref_lse, tol


def _slow(*case):  # seconds each on the simulator: the full run's
    return pytest.param(case, marks=pytest.mark.slow)


CASES = [  # seq_q, seq_k, H, Hkv, D, dtype, window, causal, options
    ([20], [20], 4, 1, 64, np.float16, (-1, -1), False, dict(block_n=64)),
    _slow([37], [37], 8, 1, 64, np.float16, (-1, -1), True, dict(block_n=64)),
    ([40], [90], 2, 2, 64, BF16, (16, 8), False, dict(block_n=64, overlap=True)),
    _slow([80], [40], 4, 1, 128, np.float16, (-1, -1), True, dict(overlap=True)),
    _slow([30, 0, 5, 66], [40, 3, 0, 66], 8, 2, 64, np.float16, (20, 20), False,
          dict(block_n=64, groups=2, overlap=True)),
    _slow([50], [140], 4, 4, 64, BF16, (-1, -1), False, dict(block_n=64, groups=2)),
    ([1], [1], 4, 1, 256, np.float16, (-1, -1), False, {}),
    _slow([33], [33], 2, 1, 256, BF16, (0, 0), False, dict(overlap=True)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"sq{c[0]}-sk{c[1]}-h{c[2]}/{c[3]}-d{c[4]}"
                         f"-{np.dtype(c[5]).name}-w{c[6]}-c{int(c[7])}-{c[8]}")
def test_kernel_matches_reference_on_the_simulator(case):
    seq_q, seq_k, h, hkv, d, dtype, window, causal, kw = case
    out, lse, ref, ref_lse, tol = _run(np.random.default_rng(len(seq_q) * d + h), seq_q,
                                       seq_k, h, hkv, d, dtype, window, causal, **kw)
    assert np.all(np.isfinite(out)), "an output element was never written"
    assert np.abs(out - ref).max() <= tol
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse)) and not np.isnan(lse).any()
    fin = np.isfinite(ref_lse)
    assert np.all(np.abs(lse[fin] - ref_lse[fin]) <= LSE_ATOL + LSE_RTOL * np.abs(ref_lse[fin]))


@pytest.mark.slow
def test_the_simulated_kernel_can_fail():
    """V's descriptor with LBO and SBO swapped (D = 128 spans two column blocks) is caught."""
    out, _, ref, _, tol = _run(np.random.default_rng(1), [40], [40], 2, 1, 128, np.float16,
                               (-1, -1), False, block_n=64, v_swap=True)
    assert np.abs(out - ref).max() > tol
