"""The reference is the specification, so it is checked against a second, deliberately dumb
implementation: explicit Python loops over rows and keys, straight from the docstring formula."""
import math

import numpy as np
import pytest

from attn_numba.problem import count_pairs, key_range_host, normalize_window, windowed_flops
from attn_numba.reference import mha_fwd_ref, mha_varlen_fwd_ref


def loop_attention(q, k, v, scale, left, right, causal):
    sq, num_heads, d = q.shape
    sk, num_kv_heads, _ = k.shape
    if causal:
        right = 0
    out = np.zeros((sq, num_heads, d))
    lse = np.full((num_heads, sq), -np.inf)
    for h in range(num_heads):
        hk = h // (num_heads // num_kv_heads)
        for i in range(sq):
            keys = [j for j in range(sk)
                    if (left < 0 or j >= i + sk - sq - left) and (right < 0 or j <= i + sk - sq + right)]
            if not keys:
                continue
            s = np.array([scale * float(np.dot(q[i, h].astype(np.float64), k[j, hk].astype(np.float64)))
                          for j in keys])
            m = s.max()
            p = np.exp(s - m)
            out[i, h] = (p[:, None] * v[keys, hk].astype(np.float64)).sum(0) / p.sum()
            lse[h, i] = m + math.log(p.sum())
    return out, lse


@pytest.mark.parametrize("sq,sk,H,Hkv,window,causal", [
    (7, 7, 4, 4, (-1, -1), False),
    (5, 11, 4, 1, (2, 1), False),
    (11, 5, 8, 2, (-1, -1), True),   # sq > sk: the first rows see no key
    (6, 9, 2, 2, (0, 0), False),
    (9, 9, 4, 2, (3, 0), False),
    (9, 4, 4, 2, (1, -1), True),
])
def test_reference_matches_loops(rng, sq, sk, H, Hkv, window, causal):
    q = rng.standard_normal((1, sq, H, 8))
    k = rng.standard_normal((1, sk, Hkv, 8))
    v = rng.standard_normal((1, sk, Hkv, 8))
    out, lse = mha_fwd_ref(q, k, v, causal=causal, window_size=window, softmax_scale=0.3)
    out2, lse2 = loop_attention(q[0], k[0], v[0], 0.3, *window, causal)
    np.testing.assert_allclose(out[0], out2, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isneginf(lse[0]), np.isneginf(lse2))
    fin = np.isfinite(lse2)
    np.testing.assert_allclose(lse[0][fin], lse2[fin], rtol=1e-12)


def test_reference_chunking_is_invisible(rng):
    q, k, v = (rng.standard_normal(s) for s in [(1, 300, 2, 4), (1, 280, 1, 4), (1, 280, 1, 4)])
    from attn_numba.reference import _attend_one
    a = _attend_one(q[0], k[0], v[0], 0.5, 20, 3, False, chunk=7)
    b = _attend_one(q[0], k[0], v[0], 0.5, 20, 3, False, chunk=300)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-13)


def test_varlen_reference_equals_per_sequence_batched(rng):
    lens_q, lens_k = [3, 0, 5, 2], [4, 3, 0, 6]
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    q = rng.standard_normal((cu_q[-1], 4, 8))
    k = rng.standard_normal((cu_k[-1], 2, 8))
    v = rng.standard_normal((cu_k[-1], 2, 8))
    out, lse = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, causal=True, window_size=(2, -1))
    for b in range(4):
        o, l_ = mha_fwd_ref(q[None, cu_q[b]:cu_q[b + 1]], k[None, cu_k[b]:cu_k[b + 1]],
                            v[None, cu_k[b]:cu_k[b + 1]], causal=True, window_size=(2, -1))
        np.testing.assert_allclose(out[cu_q[b]:cu_q[b + 1]], o[0])
        np.testing.assert_array_equal(lse[:, cu_q[b]:cu_q[b + 1]], l_[0])
    # sequence 1 has queries but no keys: zeros and -inf, never NaN
    assert np.all(out[cu_q[1]:cu_q[2]] == 0) and not np.any(np.isnan(out))


def test_normalize_window():
    assert normalize_window((-1, -1), False) == (-1, -1)
    assert normalize_window((128, 128), True) == (128, 0)
    assert normalize_window((-1, -1), True) == (-1, 0)
    assert normalize_window([3, 4], False) == (3, 4)


def test_key_range_and_pair_count_agree_with_mask():
    for sq, sk, left, right in [(512, 512, 128, 128), (5, 9, 2, 0), (9, 5, -1, 0), (4, 4, 0, 0)]:
        brute = sum(max(0, hi - lo + 1) for lo, hi in
                    (key_range_host(i, sq, sk, left, right) for i in range(sq)))
        assert count_pairs([sq], [sk], left, right) == brute


def test_windowed_flops_for_the_log():
    # 512 tokens, window (128, 128): rows near the edges see fewer than 257 keys
    pairs = count_pairs([512], [512], 128, 128)
    assert pairs == 512 * 257 - 2 * sum(range(1, 129))
    assert windowed_flops([512], [512], 32, 128, 128, 128) == 4 * 128 * 32 * pairs
