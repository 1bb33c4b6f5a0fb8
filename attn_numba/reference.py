"""The specification: a float64 NumPy implementation of the API's semantics.

Written independently of the kernels and of ``interface.py``: the window mask comes straight
from the formula in the docstrings. Tests and notebooks compare every kernel with it.
"""
from __future__ import annotations

import math

import numpy as np


def _mask(seqlen_q, seqlen_k, left, right, causal, rows=None):
    """Boolean (rows, seqlen_k): row i sees key j iff
    i + sk - sq - left <= j <= i + sk - sq + right (-1 = unbounded, causal => right = 0)."""
    if causal:
        right = 0
    i = np.arange(seqlen_q)[:, None] if rows is None else np.asarray(rows)[:, None]
    j = np.arange(seqlen_k)[None, :]
    shift = i + seqlen_k - seqlen_q
    ok = np.ones((i.shape[0], seqlen_k), dtype=bool)
    if left >= 0:
        ok &= j >= shift - left
    if right >= 0:
        ok &= j <= shift + right
    return ok


def _attend_one(q, k, v, scale, left, right, causal, p_dtype=None, chunk=None):
    """One sequence. q (sq, H, D), k/v (sk, Hkv, D) -> out (sq, H, D) float64, lse (H, sq).

    ``p_dtype`` rounds the probabilities to that dtype before P.V (used for the
    low-precision reference that sets test tolerances)."""
    sq, num_heads, d = q.shape
    sk, num_kv_heads, _ = k.shape
    out = np.zeros((sq, num_heads, d), np.float64)
    lse = np.full((num_heads, sq), -np.inf, np.float64)
    if sq == 0 or sk == 0:
        return out, lse
    group = num_heads // num_kv_heads
    kh = np.asarray(k, np.float64)[:, np.arange(num_heads) // group, :]  # (sk, H, D)
    vh = np.asarray(v, np.float64)[:, np.arange(num_heads) // group, :]
    qf = np.asarray(q, np.float64)
    if chunk is None:
        chunk = max(1, min(sq, (1 << 24) // max(1, num_heads * sk)))
    for r0 in range(0, sq, chunk):
        rows = np.arange(r0, min(sq, r0 + chunk))
        mask = _mask(sq, sk, left, right, causal, rows)  # (r, sk)
        cols = np.flatnonzero(mask.any(axis=0))
        if cols.size == 0:
            continue
        c0, c1 = cols[0], cols[-1] + 1
        mask = mask[:, c0:c1]
        # batched BLAS matmuls over heads: (H, r, D) @ (H, D, k) -> (H, r, k)
        s = np.matmul(qf[rows].transpose(1, 0, 2), kh[c0:c1].transpose(1, 2, 0)) * scale
        s = np.where(mask[None], s, -np.inf)
        m = s.max(axis=-1, keepdims=True)
        seen = np.isfinite(m)
        p = np.exp(s - np.where(seen, m, 0.0))
        denom = p.sum(axis=-1, keepdims=True)
        if p_dtype is not None:
            p = p.astype(p_dtype).astype(np.float64)
        o = np.matmul(p, vh[c0:c1].transpose(1, 0, 2)).transpose(1, 0, 2)  # (r, H, D)
        with np.errstate(invalid="ignore", divide="ignore"):
            o = np.where(seen.transpose(1, 0, 2), o / denom.transpose(1, 0, 2), 0.0)
            row_lse = np.where(seen, m + np.log(denom), -np.inf)[..., 0]
        out[rows] = o
        lse[:, rows] = row_lse
    return out, lse


def _scale(softmax_scale, head_size):
    return 1.0 / math.sqrt(head_size) if softmax_scale is None else float(softmax_scale)


def mha_fwd_ref(q, k, v, *, softmax_scale=None, causal=False, window_size=(-1, -1),
                p_dtype=None):
    """Float64 reference for :func:`attn_numba.mha_fwd`.

    q (B, Sq, H, D), k/v (B, Sk, Hkv, D) -> out (B, Sq, H, D) float64, lse (B, H, Sq) float64.
    A row that sees no key gets output 0 and lse -inf.
    """
    batch, sq, num_heads, d = q.shape
    scale = _scale(softmax_scale, d)
    left, right = window_size
    outs, lses = [], []
    for b in range(batch):
        o, l_ = _attend_one(q[b], k[b], v[b], scale, left, right, causal, p_dtype)
        outs.append(o)
        lses.append(l_)
    if batch == 0:
        return np.zeros(q.shape), np.zeros((0, num_heads, sq))
    return np.stack(outs), np.stack(lses)


def mha_varlen_fwd_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, *, softmax_scale=None,
                       causal=False, window_size=(-1, -1), p_dtype=None):
    """Float64 reference for :func:`attn_numba.mha_varlen_fwd`.

    q (total_q, H, D), k/v (total_k, Hkv, D) -> out (total_q, H, D), lse (H, total_q).
    """
    total_q, num_heads, d = q.shape
    scale = _scale(softmax_scale, d)
    left, right = window_size
    out = np.zeros((total_q, num_heads, d), np.float64)
    lse = np.full((num_heads, total_q), -np.inf, np.float64)
    for b in range(len(cu_seqlens_q) - 1):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        k0, k1 = int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])
        o, l_ = _attend_one(q[q0:q1], k[k0:k1], v[k0:k1], scale, left, right, causal, p_dtype)
        out[q0:q1] = o
        lse[:, q0:q1] = l_
    return out, lse


# ---- backward ------------------------------------------------------------------------------
# With S = scale Q K^T (masked), P = softmax(S) by rows and O = P V, the gradients of a loss
# whose gradient with respect to O is dO are
#   dV = P^T dO,  dP = dO V^T,  delta = rowsum(dO * O) = rowsum(P * dP),
#   dS = P * (dP - delta),  dQ = scale dS K,  dK = scale dS^T Q.
# A row that sees no key has P = 0, so it contributes nothing and its dQ is 0.


def _grad_one(dout, q, k, v, scale, left, right, causal, p_dtype=None, chunk=None):
    """One sequence. dout/q (sq, H, D), k/v (sk, Hkv, D) -> dq (sq, H, D), dk/dv (sk, Hkv, D),
    float64. GQA: dk and dv of a KV head sum over the query heads that share it.

    ``p_dtype`` rounds O (hence delta), P and dS to that dtype before the products that read
    them (the rounding a kernel with low-precision inputs cannot avoid; sets tolerances)."""
    sq, num_heads, d = q.shape
    sk, num_kv_heads, _ = k.shape
    group = num_heads // max(num_kv_heads, 1)
    dq = np.zeros((sq, num_heads, d), np.float64)
    dk = np.zeros((num_heads, sk, d), np.float64)   # per query head, summed over groups below
    dv = np.zeros((num_heads, sk, d), np.float64)
    if sq and sk:
        heads = np.arange(num_heads) // group
        kh = np.asarray(k, np.float64)[:, heads, :].transpose(1, 0, 2)   # (H, sk, D)
        vh = np.asarray(v, np.float64)[:, heads, :].transpose(1, 0, 2)
        qh = np.asarray(q, np.float64).transpose(1, 0, 2)                # (H, sq, D)
        doh = np.asarray(dout, np.float64).transpose(1, 0, 2)
        rnd = (lambda x: x) if p_dtype is None else (lambda x: x.astype(p_dtype).astype(np.float64))
        if chunk is None:
            chunk = max(1, min(sq, (1 << 22) // max(1, num_heads * sk)))
        for r0 in range(0, sq, chunk):
            rows = np.arange(r0, min(sq, r0 + chunk))
            mask = _mask(sq, sk, left, right, causal, rows)              # (r, sk)
            cols = np.flatnonzero(mask.any(axis=0))
            if cols.size == 0:
                continue
            c0, c1 = cols[0], cols[-1] + 1
            mask = mask[None, :, c0:c1]
            s = np.where(mask, np.matmul(qh[:, rows], kh[:, c0:c1].transpose(0, 2, 1)) * scale,
                         -np.inf)                                        # (H, r, c)
            m = s.max(axis=-1, keepdims=True)
            p = np.exp(s - np.where(np.isfinite(m), m, 0.0))
            denom = p.sum(axis=-1, keepdims=True)
            p = p / np.where(denom > 0, denom, 1.0)                      # empty rows: P = 0
            o = rnd(np.matmul(p, vh[:, c0:c1]))                          # (H, r, D)
            delta = np.sum(doh[:, rows] * o, axis=-1, keepdims=True)
            dp = np.matmul(doh[:, rows], vh[:, c0:c1].transpose(0, 2, 1))
            ds = rnd(p * (dp - delta))
            p = rnd(p)
            dv[:, c0:c1] += np.matmul(p.transpose(0, 2, 1), doh[:, rows])
            dk[:, c0:c1] += scale * np.matmul(ds.transpose(0, 2, 1), qh[:, rows])
            dq[rows] = scale * np.matmul(ds, kh[:, c0:c1]).transpose(1, 0, 2)

    def per_kv(x):
        return x.reshape(num_kv_heads, group, sk, d).sum(axis=1).transpose(1, 0, 2)
    return dq, per_kv(dk), per_kv(dv)


def mha_bwd_ref(dout, q, k, v, *, softmax_scale=None, causal=False, window_size=(-1, -1),
                p_dtype=None):
    """Float64 reference for :func:`attn_numba.mha_bwd`: the gradients of
    ``sum(dout * mha_fwd_ref(q, k, v)[0])``.

    dout/q (B, Sq, H, D), k/v (B, Sk, Hkv, D) -> dq (B, Sq, H, D), dk/dv (B, Sk, Hkv, D),
    all float64. Rows that see no key contribute nothing (their dq is 0; never NaN).
    """
    scale = _scale(softmax_scale, q.shape[-1])
    left, right = window_size
    dq = np.zeros(q.shape, np.float64)
    dk = np.zeros(k.shape, np.float64)
    dv = np.zeros(v.shape, np.float64)
    for b in range(q.shape[0]):
        dq[b], dk[b], dv[b] = _grad_one(dout[b], q[b], k[b], v[b], scale, left, right, causal,
                                        p_dtype)
    return dq, dk, dv


def mha_varlen_bwd_ref(dout, q, k, v, cu_seqlens_q, cu_seqlens_k, *, softmax_scale=None,
                       causal=False, window_size=(-1, -1), p_dtype=None):
    """Float64 reference for :func:`attn_numba.mha_varlen_bwd`.

    dout/q (total_q, H, D), k/v (total_k, Hkv, D) -> dq (total_q, H, D), dk/dv (total_k, Hkv, D).
    """
    scale = _scale(softmax_scale, q.shape[-1])
    left, right = window_size
    dq = np.zeros(q.shape, np.float64)
    dk = np.zeros(k.shape, np.float64)
    dv = np.zeros(v.shape, np.float64)
    for b in range(len(cu_seqlens_q) - 1):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        k0, k1 = int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])
        dq[q0:q1], dk[k0:k1], dv[k0:k1] = _grad_one(
            dout[q0:q1], q[q0:q1], k[k0:k1], v[k0:k1], scale, left, right, causal, p_dtype)
    return dq, dk, dv
