"""Property-based tests (hypothesis): random shapes, windows, causal, GQA ratios and varlen
layouts against the float64 reference, for every kernel that runs here. The example budget
keeps the simulator run inside CI's time; raise it with ATTN_NUMBA_HYPOTHESIS_EXAMPLES."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attn_numba
from attn_numba import kernels
from attn_numba.problem import Problem
from attn_numba.testing import check_mha_fwd, check_mha_varlen_fwd

from conftest import SIM

pytestmark = pytest.mark.slow  # minutes on the simulator; tests/test_kernels.py is the quick run's
EXAMPLES = int(os.environ.get("ATTN_NUMBA_HYPOTHESIS_EXAMPLES", "12" if SIM else "60"))
MAX_LEN = 24 if SIM else 300
KERNELS = attn_numba.available_kernels()
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

side = st.one_of(st.just(-1), st.integers(0, MAX_LEN))
heads = st.sampled_from([(1, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 8)])
head_size = st.sampled_from([8, 16] if SIM else [64, 128, 256, 40])


def _runnable(kernel, problem):
    return kernels.get(kernel).supports(problem) is None


@pytest.mark.parametrize("kernel", KERNELS)
@SETTINGS
@given(data=st.data(), batch=st.integers(1, 2), sq=st.integers(1, MAX_LEN),
       sk=st.integers(1, MAX_LEN), hh=heads, d=head_size, left=side, right=side,
       causal=st.booleans(), fp16=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_batched_property(kernel, data, batch, sq, sk, hh, d, left, right, causal, fp16, seed):
    h, hkv = hh
    dtype = np.float16 if fp16 else np.float32
    l_, r_ = attn_numba.normalize_window((left, right), causal)
    p = Problem(batch=batch, total_q=batch * sq, total_k=batch * sk, max_seqlen_q=sq,
                max_seqlen_k=sk, num_heads=h, num_kv_heads=hkv, head_size=d, dtype=np.dtype(dtype),
                softmax_scale=1.0, window_left=l_, window_right=r_, causal=causal,
                lse_batched=True, on_simulator=SIM)
    if not _runnable(kernel, p):
        return
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, sq, h, d)).astype(dtype)
    k = rng.standard_normal((batch, sk, hkv, d)).astype(dtype)
    v = rng.standard_normal((batch, sk, hkv, d)).astype(dtype)
    check_mha_fwd(q, k, v, kernel, causal=causal, window_size=(left, right))


@pytest.mark.parametrize("kernel", KERNELS)
@SETTINGS
@given(lens=st.lists(st.tuples(st.integers(0, MAX_LEN), st.integers(0, MAX_LEN)), min_size=1,
                     max_size=4),
       hh=heads, left=side, right=side, causal=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_varlen_property(kernel, lens, hh, left, right, causal, seed):
    h, hkv = hh
    d = 16 if SIM else 128
    lq = [a for a, _ in lens]
    lk = [b for _, b in lens]
    cu_q = np.concatenate([[0], np.cumsum(lq)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lk)]).astype(np.int32)
    l_, r_ = attn_numba.normalize_window((left, right), causal)
    p = Problem(batch=len(lens), total_q=int(cu_q[-1]), total_k=int(cu_k[-1]),
                max_seqlen_q=max(lq), max_seqlen_k=max(lk), num_heads=h, num_kv_heads=hkv,
                head_size=d, dtype=np.dtype(np.float16), softmax_scale=1.0, window_left=l_,
                window_right=r_, causal=causal, lse_batched=False, on_simulator=SIM)
    if not _runnable(kernel, p):
        return
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((int(cu_q[-1]), h, d)).astype(np.float16)
    k = rng.standard_normal((int(cu_k[-1]), hkv, d)).astype(np.float16)
    v = rng.standard_normal((int(cu_k[-1]), hkv, d)).astype(np.float16)
    check_mha_varlen_fwd(q, k, v, cu_q, cu_k, kernel, causal=causal, window_size=(left, right))
