"""The backward reference is the specification of the gradients, so it is checked against
central finite differences of the forward reference in float64, plus the properties that a
difference quotient cannot see: rows that see no key, the GQA sum and varlen with empty
sequences."""
import numpy as np
import pytest

from attn_numba.reference import (_grad_one, _mask, mha_bwd_ref, mha_fwd_ref, mha_varlen_bwd_ref,
                                  mha_varlen_fwd_ref)


def finite_diff(dout, q, k, v, eps=1e-6, **kw):
    """Central differences of L = sum(dout * out(q, k, v)) with respect to every input element."""
    def loss(q_, k_, v_):
        return float(np.sum(dout * mha_fwd_ref(q_, k_, v_, **kw)[0]))
    grads = []
    for which, x in enumerate((q, k, v)):
        g = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            args = [q.copy(), k.copy(), v.copy()]
            args[which][idx] += eps
            up = loss(*args)
            args[which][idx] -= 2 * eps
            down = loss(*args)
            g[idx] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


@pytest.mark.parametrize("sq,sk,H,Hkv,window,causal", [
    (4, 4, 2, 2, (-1, -1), False),
    (3, 6, 4, 2, (-1, -1), False),     # sq < sk, GQA 2
    (6, 3, 4, 1, (-1, -1), True),      # sq > sk causal: the first rows see no key, GQA 4
    (5, 5, 2, 1, (0, 0), False),       # diagonal only: P = 1, the gradient of a softmax of one
    (5, 7, 2, 2, (2, 0), False),       # sliding window
    (6, 4, 2, 1, (1, 1), False),       # window with sq > sk: empty rows
])
def test_gradients_match_finite_differences(rng, sq, sk, H, Hkv, window, causal):
    q = rng.standard_normal((1, sq, H, 3))
    k = rng.standard_normal((1, sk, Hkv, 3))
    v = rng.standard_normal((1, sk, Hkv, 3))
    dout = rng.standard_normal((1, sq, H, 3))
    kw = dict(softmax_scale=0.7, causal=causal, window_size=window)
    got = mha_bwd_ref(dout, q, k, v, **kw)
    want = finite_diff(dout, q, k, v, **kw)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert g.shape == w.shape and g.dtype == np.float64
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-8, err_msg=name)


def test_rows_that_see_no_key_have_zero_gradient(rng):
    # sq > sk causal: rows 0..sq-sk-1 see no key; window (1, 1) with sq >> sk leaves rows out
    for sq, sk, window, causal in ((9, 4, (-1, -1), True), (12, 3, (1, 1), False)):
        q, dout = rng.standard_normal((2, 1, sq, 4, 8))
        k, v = rng.standard_normal((2, 1, sk, 2, 8))
        kw = dict(causal=causal, window_size=window)
        dq, dk, dv = mha_bwd_ref(dout, q, k, v, **kw)
        _, lse = mha_fwd_ref(q, k, v, **kw)
        empty = np.isneginf(lse[0]).T          # (sq, H)
        assert empty.any() and not empty.all()
        assert all(np.all(np.isfinite(g)) for g in (dq, dk, dv))
        assert np.all(dq[0][empty] == 0.0)
        # a row that sees one key has P = 1 whatever q is, so dq is 0 there too
        many = (_mask(sq, sk, *window, causal).sum(axis=1) > 1)[:, None].repeat(4, axis=1)
        assert many.any() and np.all(np.abs(dq[0][many]).sum(axis=-1) > 1e-8)


def test_unseen_keys_have_zero_gradient(rng):
    # causal with sq < sk: bottom-right aligned, so every key is seen; window (0, 0) with
    # sq < sk: only the last sq keys are seen
    q, dout = rng.standard_normal((2, 1, 3, 2, 8))
    k, v = rng.standard_normal((2, 1, 8, 2, 8))
    _, dk, dv = mha_bwd_ref(dout, q, k, v, window_size=(0, 0))
    assert np.all(dk[0, :5] == 0) and np.all(dv[0, :5] == 0)
    assert np.all(np.abs(dv[0, 5:]).sum(axis=-1) > 0)


def test_gqa_sums_over_the_heads_of_a_group(rng):
    """dk/dv with 2 KV heads for 8 query heads == the sums over groups of 4 of the gradients
    with the KV heads repeated (MHA)."""
    q, dout = rng.standard_normal((2, 1, 7, 8, 8))
    k, v = rng.standard_normal((2, 1, 9, 2, 8))
    kw = dict(causal=True, window_size=(3, -1))
    dq, dk, dv = mha_bwd_ref(dout, q, k, v, **kw)
    rep = np.repeat(np.arange(2), 4)
    dq_m, dk_m, dv_m = mha_bwd_ref(dout, q, k[:, :, rep], v[:, :, rep], **kw)
    np.testing.assert_allclose(dq, dq_m, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dk, dk_m.reshape(1, 9, 2, 4, 8).sum(3), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dv, dv_m.reshape(1, 9, 2, 4, 8).sum(3), rtol=1e-12, atol=1e-12)


def test_varlen_with_empty_sequences_matches_batched(rng):
    lens_q, lens_k = [0, 5, 3, 0, 4], [3, 0, 6, 0, 4]
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    q, dout = rng.standard_normal((2, cu_q[-1], 4, 8))
    k, v = rng.standard_normal((2, cu_k[-1], 2, 8))
    kw = dict(causal=True, window_size=(2, -1))
    dq, dk, dv = mha_varlen_bwd_ref(dout, q, k, v, cu_q, cu_k, **kw)
    assert all(np.all(np.isfinite(g)) for g in (dq, dk, dv))
    assert np.all(dk[cu_k[0]:cu_k[1]] == 0)      # sequence 0 has keys but no query
    assert np.all(dq[cu_q[1]:cu_q[2]] == 0)      # sequence 1 has queries but no key
    for b in (2, 4):
        sl_q, sl_k = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        one = mha_bwd_ref(dout[None, sl_q], q[None, sl_q], k[None, sl_k], v[None, sl_k], **kw)
        for g, g1, sl in zip((dq, dk, dv), one, (sl_q, sl_k, sl_k)):
            np.testing.assert_allclose(g[sl], g1[0], rtol=1e-12, atol=1e-12)
    # and the varlen forward/backward pair agree with a difference quotient of one element
    eps = 1e-6
    qp, qm = q.copy(), q.copy()
    qp[6, 1, 2] += eps
    qm[6, 1, 2] -= eps
    fd = (np.sum(dout * mha_varlen_fwd_ref(qp, k, v, cu_q, cu_k, **kw)[0])
          - np.sum(dout * mha_varlen_fwd_ref(qm, k, v, cu_q, cu_k, **kw)[0])) / (2 * eps)
    assert abs(fd - dq[6, 1, 2]) < 1e-6 * max(1.0, abs(fd))


def test_chunking_is_invisible(rng):
    q, dout = rng.standard_normal((2, 40, 2, 4))
    k, v = rng.standard_normal((2, 33, 1, 4))
    a = _grad_one(dout, q, k, v, 0.5, 5, 2, False, chunk=3)
    b = _grad_one(dout, q, k, v, 0.5, 5, 2, False, chunk=40)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-13)


def test_low_precision_reference_rounds(rng):
    """p_dtype=float16 changes the gradients by about fp16's rounding, not more, not zero."""
    q, dout = rng.standard_normal((2, 1, 20, 2, 16))
    k, v = rng.standard_normal((2, 1, 20, 2, 16))
    exact = mha_bwd_ref(dout, q, k, v)
    lowp = mha_bwd_ref(dout, q, k, v, p_dtype=np.float16)
    for e, lo in zip(exact, lowp):
        err = np.max(np.abs(e - lo)) / np.max(np.abs(e))
        assert 1e-6 < err < 1e-2
