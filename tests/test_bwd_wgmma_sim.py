"""The Hopper backward (bwd_flash_wgmma: delta, the wgmma dK/dV and dQ passes) run whole on
Numba's simulator, with the inline-PTX intrinsics replaced by their models
(attn_numba.kernels.ptx_sm90_sim: wgmma through the ISA-level descriptor model, cp.async as
immediate copies), against float64 gradients from NaN-poisoned outputs. Checks tiles, masks,
GQA packing, varlen, both lse layouts and rows with no key; not the asynchronous hazards (the
GPU suite and compute-sanitizer do that)."""
import ml_dtypes
import numpy as np
import pytest

from attn_numba.kernels import bwd_flash_wgmma as bw
from attn_numba.kernels import bwd_wgmma_steps

from conftest import SIM
from test_bwd_tc_fragments import _sim_case

pytestmark = pytest.mark.skipif(not SIM, reason="simulator models of the intrinsics")
BF16 = ml_dtypes.bfloat16


def _slow(*case):
    return pytest.param(*case, marks=pytest.mark.slow)


CASES = [  # seqlens_q, seqlens_k, H, Hkv, D, window, causal, lse_batched, dtype, plan options
    ([20], [27], 2, 1, 64, (-1, -1), True, True, np.float16, {}),        # GQA 2 packed, causal
    _slow([21, 0, 70], [50, 9, 33], 2, 2, 64, (-1, -1), False, False, np.float16, {}),
    _slow([75], [30], 2, 1, 64, (0, 0), False, True, BF16, {}),       # rows with no key
    _slow([70], [70], 8, 1, 64, (20, 0), False, True, np.float16, {}),     # GQA 8, (W, 0)
    _slow([90], [70], 2, 1, 128, (16, 8), False, True, BF16, dict(heads=1)),
    _slow([66], [66], 4, 2, 64, (9, 4), False, True, np.float16, dict(bm=128, bn=128)),
    _slow([70, 0, 33], [90, 5, 33], 4, 1, 64, (20, 0), False, False, BF16,
          dict(overlap=True)),                                          # the overlapped loop
]


@pytest.mark.parametrize("seq_q,seq_k,nh,hkv,d,window,causal,batched,dtype,options", CASES)
def test_wgmma_backward_on_simulator(monkeypatch, rng, seq_q, seq_k, nh, hkv, d, window,
                                     causal, batched, dtype, options):
    _sim_case(monkeypatch, rng, seq_q, seq_k, nh, hkv, d, window, causal, batched, dtype,
              module=bw, **options)


def test_plan_contract():
    """Three launches with the tensor-core backward's argument lists; shared memory within
    the 227 KiB of an sm_90 block; head size 256 left to flash_tc."""
    from attn_numba.problem import Problem
    p = Problem(batch=1, total_q=8192, total_k=8192, max_seqlen_q=8192, max_seqlen_k=8192,
                num_heads=32, num_kv_heads=8, head_size=128, dtype=np.dtype(np.float16),
                softmax_scale=0.088, window_left=128, window_right=128, causal=False,
                lse_batched=True, on_simulator=True)
    plans = bw.plan(p)
    assert [pl.arrays[-1] for pl in plans] == ["delta", "cu_seqlens_k", "cu_seqlens_k"]
    assert plans[1].griddim == (128, 8, 1) and plans[2].griddim == (512, 8, 1)
    assert all(pl.blockdim == 128 for pl in plans[1:])
    assert bwd_wgmma_steps.shared_bytes(128, 64, 2) <= 227 * 1024
    assert bw.compile_targets(256, "float16") == []
    assert [s.name for s in bw.scratch(p)] == ["delta"]
