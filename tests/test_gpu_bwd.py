"""GPU tests of the tensor-core backward (bwd_flash_tc, ``kernel="flash_tc"``): gradients
against torch float64 autograd of the math path, with FlashAttention's rule (each of dq, dk,
dv: error at most 2x that of torch's own math path in the input dtype, plus 1e-4); outputs
start as NaN; two runs bit-identical. Skipped under the simulator (tests/conftest.py).

The helpers live in scripts/gpu_bwd_check.py (the same sweep, compactly, with timing).
"""
import os
import sys

import pytest

pytestmark = pytest.mark.gpu

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "scripts"))


def _torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    return torch


def _run(seed, sq, sk, nh, hkv, d, dtype, window, causal, kernel=None):
    """One case through ``kernel`` (default: the check script's, flash_tc), asserted."""
    import gpu_bwd_check as g
    res = g.check_case(seed, sq, sk, nh, hkv, d, dtype, window, causal, kernel=kernel)
    for name in ("dq", "dk", "dv"):
        r = res[name]
        assert r["finite"], (name, res)
        assert r["err"] <= 2 * r["torch_err"] + 1e-4, (name, res)
    assert res["deterministic"], res
    return res


@pytest.mark.parametrize("seq_len", [512, 2048])
@pytest.mark.parametrize("causal", [False, True])
def test_log_shapes(seq_len, causal):
    """1 sequence, 32 query heads over 8 KV heads, D = 128, window (128, 128), fp16."""
    torch = _torch()
    _run(seq_len + causal, [seq_len], [seq_len], 32, 8, 128, torch.float16, (128, 128), causal)


CASES = [  # sq, sk, nh, hkv, d, window, causal
    (1, 1, 4, 1, 128, (-1, -1), False),
    (97, 97, 8, 8, 64, (-1, -1), False),
    (1025, 1025, 8, 2, 128, (-1, -1), True),
    (97, 1025, 8, 1, 128, (-1, -1), True),      # sq < sk, causal bottom-right
    (1025, 97, 8, 8, 128, (0, 0), False),       # sq > sk: rows that see no key
    (513, 700, 8, 4, 256, (128, 0), False),
    (700, 513, 4, 4, 64, (128, 0), True),
    (300, 300, 8, 1, 72, (0, 0), False),        # padded head size
]


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c[:5])))
def test_sizes_gqa_windows(case, dtype_name):
    torch = _torch()
    sq, sk, nh, hkv, d, window, causal = case
    _run(sq * 7 + sk, [sq], [sk], nh, hkv, d, getattr(torch, dtype_name), window, causal)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("window,causal", [((-1, -1), False), ((128, 128), True)])
def test_varlen_with_empty_sequences(dtype_name, window, causal):
    torch = _torch()
    _run(5, [300, 0, 1025, 1, 64], [280, 17, 1025, 0, 700], 8, 2, 128,
         getattr(torch, dtype_name), window, causal)


def test_batched_call_matches_varlen():
    """Through ``attn_numba.mha_bwd`` (batched layout, lse (B, H, S)) where main has it:
    the same bits as the varlen call on the same rows."""
    torch = _torch()
    import attn_numba
    if not hasattr(attn_numba, "mha_bwd"):
        pytest.skip("mha_bwd is not on this branch yet")
    import gpu_bwd_check as g
    b, s, nh, hkv, d = 3, 257, 8, 2, 128
    q, k, v, dout, cu_q, cu_k, mq, mk = g.make_case(9, [s] * b, [s] * b, nh, hkv, d,
                                                    torch.float16)
    out, lse = g.run_fwd(q, k, v, cu_q, cu_k, mq, mk, d ** -0.5, True, (128, 0))
    var = g.run_ours(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, d ** -0.5, True, (128, 0))
    r4 = lambda x: x.view(b, s, *x.shape[1:])  # noqa: E731
    lse_b = lse.view(nh, b, s).transpose(0, 1).contiguous()
    bat = attn_numba.mha_bwd(r4(dout), r4(q), r4(k), r4(v), r4(out), lse_b, causal=True,
                             window_size=(128, 0), kernel="flash_tc")
    for x, y in zip(var, bat):
        assert torch.equal(r4(x), y)
