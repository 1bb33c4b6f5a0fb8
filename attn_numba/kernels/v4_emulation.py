"""NumPy emulation of kernel v4 (flash_tc), lane by lane, for CPUs.

Mirrors ``v4_tensor_core.build(D, heads, bf16, bn)`` for one sequence and one head: per-lane
register arrays, 2-D uint16 "shared memory" tiles with the kernel's padded rows, fragments
loaded by :func:`v4_layout.ldmatrix_py` at the addresses the kernel's index maps give, and
the mma emulated by :func:`v4_layout.mma_py` (which reassembles the matrices from the PTX
fragment tables, independently of those maps). Used by tests/test_v4_fragments.py and
notebook 04; slow (pure Python loops), so keep sizes small.
"""
import numpy as np

from ..problem import key_range_host
from . import v4_layout as L
from . import v4_tensor_core as v4


def _quad_reduce(x, op):
    """Reduce a per-lane (32,) value over the 4 lanes of each quad (shfl_xor 1, 2)."""
    return np.repeat(op(x.reshape(8, 4), axis=1), 4)


def _tile(x16, n0, bn, d16):
    """Keys n0..n0+bn-1 of one head's (sk, D) 16-bit rows as a zero-padded (bn, d16 + pad)
    shared tile (rows past the sequence and columns past D are 0, as cp.async's zero-fill)."""
    t = np.zeros((bn, d16 + v4.ROW_PAD), np.uint16)
    rows = x16[n0:n0 + bn]
    t[:rows.shape[0], :rows.shape[1]] = rows
    return t


def emulate_flash_tc(q, k, v, scale, left, right, head, kv_head, block_n, heads=1,
                     dtype=np.float16):
    """Mirror of ``v4.build(D, heads, bn=block_n)`` for one sequence and one head.

    q: (sq, H, D), k/v: (sk, Hkv, D), all ``dtype`` (float16 or ml_dtypes.bfloat16). Returns
    out (sq, D) float32 (rounded to ``dtype``) and lse (sq,).
    """
    dtype = np.dtype(dtype)
    sq, sk, D = q.shape[0], k.shape[0], q.shape[2]
    BN, D16 = block_n, v4.padded(D)
    q16 = np.zeros((sq, D16), np.uint16)
    q16[:, :D] = np.ascontiguousarray(q[:, head]).view(np.uint16)
    k16 = np.ascontiguousarray(k[:, kv_head]).view(np.uint16)
    v16 = np.ascontiguousarray(v[:, kv_head]).view(np.uint16)
    scale_log2 = np.float32(scale * np.log2(np.e))
    out = np.full((sq, D), np.nan, np.float32)
    lse = np.full(sq, np.nan, np.float32)
    kr = lambda i: key_range_host(i, sq, sk, left, right)  # noqa: E731
    pb = 16 * v4.WARPS // heads                                   # positions per block
    for row0 in range(0, sq, pb):
        blo, bhi = kr(row0)[0], kr(min(row0 + pb, sq) - 1)[1]
        staged = [(n0, _tile(k16, n0, BN, D16), _tile(v16, n0, BN, D16))
                  for n0 in range((blo // BN) * BN, bhi + 1, BN)]
        for warp in range(v4.WARPS):
            if warp % heads != head % heads:                      # another head's warp
                continue
            wrow0 = row0 + 16 * (warp // heads)
            if wrow0 >= sq:
                continue
            wlo_first, whi_first = kr(wrow0)
            wlo_last, whi_last = kr(min(wrow0 + 15, sq - 1))
            rows = np.stack([wrow0 + L.c_frag_rc(lane, 0)[0] for lane in range(32)])
            rng_a = np.array([kr(r) for r in rows])
            rng_b = np.array([kr(r + 8) for r in rows])
            qf = np.zeros((32, 4 * (D16 // 16)), np.uint32)
            for lane in range(32):
                for kk in range(D16 // 16):
                    for r in range(4):
                        rr, cc = L.a_frag_rc(lane, r)
                        if wrow0 + rr < sq:
                            c = 16 * kk + cc
                            qf[lane, 4 * kk + r] = (int(q16[wrow0 + rr, c])
                                                    | int(q16[wrow0 + rr, c + 1]) << 16)
            acc = np.zeros((32, 4 * (D16 // 8)), np.float32)
            m = np.full((32, 2), -np.inf, np.float32)
            lsum = np.zeros((32, 2), np.float32)
            for n0, ks, vs in staged:
                if not (n0 <= whi_last and n0 + BN - 1 >= wlo_first):
                    continue
                s = np.zeros((32, 4 * (BN // 8)), np.float32)
                for p in range(BN // 16):
                    for kk in range(D16 // 16):
                        b = L.ldmatrix_py(ks, lambda ln: L.k_ldsm_rc(ln, p, kk), 4)
                        for j in range(2):
                            nt = 2 * p + j
                            s[:, 4 * nt:4 * nt + 4] = L.mma_py(
                                qf[:, 4 * kk:4 * kk + 4], b[:, 2 * j:2 * j + 2],
                                s[:, 4 * nt:4 * nt + 4], dtype)
                s *= scale_log2
                if not (wlo_last <= n0 and n0 + BN - 1 <= whi_first):
                    for lane in range(32):
                        for nt in range(BN // 8):
                            for r in range(4):
                                rr, cc = L.c_frag_rc(lane, r)
                                col = n0 + 8 * nt + cc
                                lo, hi = (rng_a if rr < 8 else rng_b)[lane]
                                if col < lo or col > hi:
                                    s[lane, 4 * nt + r] = -np.inf
                sa, sb = s.reshape(32, -1, 4)[:, :, 0:2], s.reshape(32, -1, 4)[:, :, 2:4]
                mx = np.stack([_quad_reduce(sa.reshape(32, -1).max(1), np.max),
                               _quad_reduce(sb.reshape(32, -1).max(1), np.max)], 1)
                new = np.maximum(m, mx)
                base = np.where(new == -np.inf, np.float32(0), new)
                alpha = np.exp2(m - base)
                m = new
                p = s.reshape(32, -1, 2, 2) - base[:, None, :, None]
                p = np.exp2(p).astype(np.float32)
                lsum = lsum * alpha + p.sum(axis=(1, 3))
                acc = (acc.reshape(32, -1, 2, 2) * alpha[:, None, :, None]).reshape(32, -1)
                s = p.reshape(32, -1)
                for kk in range(BN // 16):
                    a = np.zeros((32, 4), np.uint32)
                    for lane in range(32):
                        for reg in range(4):
                            nt, creg = L.p_from_s(kk, reg)
                            a[lane, reg] = L.pack_py(s[lane, 4 * nt + creg],
                                                     s[lane, 4 * nt + creg + 1], dtype)
                    for p in range(D16 // 16):
                        b = L.ldmatrix_py(vs, lambda ln: L.v_ldsm_rc(ln, kk, p), 4, trans=True)
                        for j in range(2):
                            nt = 2 * p + j
                            acc[:, 4 * nt:4 * nt + 4] = L.mma_py(
                                a, b[:, 2 * j:2 * j + 2], acc[:, 4 * nt:4 * nt + 4], dtype)
            lsum = np.stack([_quad_reduce(lsum[:, 0], np.sum), _quad_reduce(lsum[:, 1], np.sum)], 1)
            inv = np.where(lsum > 0, 1 / np.where(lsum > 0, lsum, 1), 0).astype(np.float32)
            row_lse = np.where(lsum > 0, m * np.log(2) + np.log(np.where(lsum > 0, lsum, 1)),
                               -np.inf)
            for lane in range(32):
                for reg in range(4):
                    rr, cc = L.c_frag_rc(lane, reg)
                    for nt in range(D // 8):
                        if wrow0 + rr < sq:
                            val = acc[lane, 4 * nt + reg] * inv[lane, reg >> 1]
                            out[wrow0 + rr, 8 * nt + cc] = np.float32(dtype.type(val))
                            lse[wrow0 + rr] = row_lse[lane, reg >> 1]
    return out, lse
