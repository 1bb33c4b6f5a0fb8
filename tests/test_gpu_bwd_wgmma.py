"""GPU tests of the Hopper backward (bwd_flash_wgmma, ``kernel="flash_wgmma"``, sm_90 only):
gradients against torch float64 autograd of the math path with FlashAttention's rule (each of
dq, dk, dv: error at most 2x that of torch's own math path in the input dtype, plus 1e-4),
outputs poisoned first, two runs bit-identical; the cases of tests/test_gpu_bwd.py at the
head sizes this kernel takes (64, 128). Skipped under the simulator and off Hopper.
"""
import os
import sys

import pytest

import test_gpu_bwd
from test_gpu_bwd import CASES, _torch

pytestmark = pytest.mark.gpu

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "scripts"))
KERNEL = "flash_wgmma"


def _hopper():
    torch = _torch()
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the wgmma backward needs sm_90")
    return torch


def _run(*case):
    return test_gpu_bwd._run(*case, kernel=KERNEL)


@pytest.mark.parametrize("seq_len", [512, 2048])
@pytest.mark.parametrize("causal", [False, True])
def test_log_shapes(seq_len, causal):
    """1 sequence, 32 query heads over 8 KV heads, D = 128, window (128, 128), fp16."""
    torch = _hopper()
    _run(seq_len + causal, [seq_len], [seq_len], 32, 8, 128, torch.float16, (128, 128), causal)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", [c for c in CASES if c[4] in (64, 128)],
                         ids=lambda c: "-".join(map(str, c[:5])))
def test_sizes_gqa_windows(case, dtype_name):
    torch = _hopper()
    sq, sk, nh, hkv, d, window, causal = case
    _run(sq * 7 + sk, [sq], [sk], nh, hkv, d, getattr(torch, dtype_name), window, causal)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("window,causal", [((-1, -1), False), ((128, 128), True)])
def test_varlen_with_empty_sequences(dtype_name, window, causal):
    torch = _hopper()
    _run(5, [300, 0, 1025, 1, 64], [280, 17, 1025, 0, 700], 8, 2, 128,
         getattr(torch, dtype_name), window, causal)


def test_matches_flash_tc_and_auto_picks_it():
    """The same gradients as flash_tc's within fp16 rounding, on the log's shape; ``auto``
    takes this kernel on sm_90 at head size 128."""
    torch = _hopper()
    import gpu_bwd_check as g
    q, k, v, dout, cu_q, cu_k, mq, mk = g.make_case(3, [1024], [1024], 32, 8, 128,
                                                    torch.float16)
    scale = 128 ** -0.5
    out, lse = g.run_fwd(q, k, v, cu_q, cu_k, mq, mk, scale, False, (128, 128))
    ours = g.run_ours(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, scale, False, (128, 128),
                      kernel=KERNEL)
    tc = g.run_ours(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, scale, False, (128, 128),
                    kernel="flash_tc")
    auto = g.run_ours(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, scale, False, (128, 128),
                      kernel="auto")
    for a, b, c in zip(ours, tc, auto):
        assert float((a.float() - b.float()).abs().max()) < 2e-2 * max(1.0, float(b.abs().max()))
        assert torch.equal(a, c)
