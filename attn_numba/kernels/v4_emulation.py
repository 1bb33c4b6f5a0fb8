"""NumPy emulation of kernel v4 (flash_tc), lane by lane, for CPUs.

Mirrors ``v4_tensor_core.build(D, heads, block_n)`` for one sequence and one head: per-lane
register arrays, a flat uint32 "shared memory" laid out by the kernel's own index helpers,
and the mma emulated by ``mma_bridge.mma_f16_16816_py`` (which reassembles the matrices with
the PTX fragment layout, independently of those helpers). Used by tests/test_v4_fragments.py
and notebooks/04_tensor_cores.ipynb; slow (pure Python loops), so keep sizes small.
"""
import numpy as np

from ..problem import key_range_host
from . import mma_bridge
from . import v4_tensor_core as v4


def _quad_reduce(x, op):
    """Reduce a per-lane (32,) value over the 4 lanes of each quad (shfl_xor 1, 2)."""
    return np.repeat(op(x.reshape(8, 4), axis=1), 4)


def emulate_flash_tc(q, k, v, scale, left, right, head, kv_head, block_n, heads=1):
    """Mirror of ``v4.build(D, heads, block_n)`` for one sequence and one head, in NumPy.

    q: (sq, H, D) fp16, k/v: (sk, Hkv, D) fp16. Returns out (sq, D) float32 and lse (sq,).
    Each block of BLOCK_M rows and each of its warps is emulated with per-lane register
    arrays; shared memory is a flat uint32 array laid out by the kernel's helpers.
    """
    sq, sk, D = q.shape[0], k.shape[0], q.shape[2]
    BN, DW = block_n, D // 2
    K_STRIDE, V_STRIDE = DW + v4.K_PAD, D + v4.V_PAD
    qw = np.ascontiguousarray(q[:, head]).view(np.uint32)        # (sq, DW)
    kw = np.ascontiguousarray(k[:, kv_head]).view(np.uint32)
    vw = np.ascontiguousarray(v[:, kv_head]).view(np.uint32)
    scale_log2 = np.float32(scale * np.log2(np.e))
    out = np.full((sq, D), np.nan, np.float32)
    lse = np.full(sq, np.nan, np.float32)
    kr = lambda i: key_range_host(i, sq, sk, left, right)  # noqa: E731
    pb = v4.BLOCK_M // heads                                     # positions per block
    for row0 in range(0, sq, pb):
        blo, bhi = kr(row0)[0], kr(min(row0 + pb, sq) - 1)[1]
        tiles = list(range((blo // BN) * BN, bhi + 1, BN))
        staged = []
        for n0 in tiles:
            ks = np.zeros(BN * K_STRIDE, np.uint32)
            vs = np.zeros((BN // 2) * V_STRIDE, np.uint32)
            for n in range(BN):
                for w in range(DW):
                    ks[v4.k_smem_word(n, w, K_STRIDE)] = kw[n0 + n, w] if n0 + n < sk else 0
            for p in range(BN // 2):
                for w in range(DW):
                    key = n0 + 2 * p
                    x = kw.dtype.type(vw[key, w] if key < sk else 0)
                    y = kw.dtype.type(vw[key + 1, w] if key + 1 < sk else 0)
                    lo, hi = v4.interleave_v(x, y)
                    vs[v4.v_smem_word(p, 2 * w, V_STRIDE)] = lo
                    vs[v4.v_smem_word(p, 2 * w + 1, V_STRIDE)] = hi
            staged.append((n0, ks, vs))
        for warp in range(v4.WARPS):
            if warp % heads != head % heads:                     # another head's warp
                continue
            wrow0 = row0 + 16 * (warp // heads)
            if wrow0 >= sq:
                continue
            wlo_first, whi_first = kr(wrow0)
            wlo_last, whi_last = kr(min(wrow0 + 15, sq - 1))
            rows = np.stack([wrow0 + v4.c_frag_rc(lane, 0)[0] for lane in range(32)])
            rng_a = np.array([kr(r) for r in rows])
            rng_b = np.array([kr(r + 8) for r in rows])
            qf = np.zeros((32, 4 * (D // 16)), np.uint32)
            for lane in range(32):
                for kk in range(D // 16):
                    for r in range(4):
                        rr, cc = v4.a_frag_rc(lane, r)
                        if wrow0 + rr < sq:
                            qf[lane, 4 * kk + r] = qw[wrow0 + rr, 8 * kk + (cc >> 1)]
            acc = np.zeros((32, 4 * (D // 8)), np.float32)
            m = np.full((32, 2), -np.inf, np.float32)
            lsum = np.zeros((32, 2), np.float32)
            for n0, ks, vs in staged:
                if not (n0 <= whi_last and n0 + BN - 1 >= wlo_first):
                    continue
                s = np.zeros((32, 4 * (BN // 8)), np.float32)
                for nt in range(BN // 8):
                    c = np.zeros((32, 4), np.float32)
                    for kk in range(D // 16):
                        b = np.zeros((32, 2), np.uint32)
                        for lane in range(32):
                            for reg in range(2):
                                kn, nn = v4.b_frag_kn(lane, reg)
                                b[lane, reg] = ks[v4.k_smem_word(8 * nt + nn, 8 * kk + (kn >> 1),
                                                                 K_STRIDE)]
                        c = mma_bridge.mma_f16_16816_py(qf[:, 4 * kk:4 * kk + 4], b, c)
                    s[:, 4 * nt:4 * nt + 4] = c * scale_log2
                if not (wlo_last <= n0 and n0 + BN - 1 <= whi_first):
                    for lane in range(32):
                        for nt in range(BN // 8):
                            for r in range(4):
                                rr, cc = v4.c_frag_rc(lane, r)
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
                            nt, creg = v4.p_from_s(kk, reg)
                            a[lane, reg] = mma_bridge.pack_f16x2_py(
                                s[lane, 4 * nt + creg], s[lane, 4 * nt + creg + 1])
                    for nt in range(D // 8):
                        b = np.zeros((32, 2), np.uint32)
                        for lane in range(32):
                            for reg in range(2):
                                kp, nn = v4.b_frag_kn(lane, reg)
                                b[lane, reg] = vs[v4.v_smem_word(8 * kk + (kp >> 1), 8 * nt + nn,
                                                                 V_STRIDE)]
                        acc[:, 4 * nt:4 * nt + 4] = mma_bridge.mma_f16_16816_py(
                            a, b, acc[:, 4 * nt:4 * nt + 4])
            lsum = np.stack([_quad_reduce(lsum[:, 0], np.sum), _quad_reduce(lsum[:, 1], np.sum)], 1)
            inv = np.where(lsum > 0, 1 / np.where(lsum > 0, lsum, 1), 0).astype(np.float32)
            row_lse = np.where(lsum > 0, m * np.log(2) + np.log(np.where(lsum > 0, lsum, 1)),
                               -np.inf)
            for lane in range(32):
                for reg in range(4):
                    rr, cc = v4.c_frag_rc(lane, reg)
                    for nt in range(D // 8):
                        if wrow0 + rr < sq:
                            val = acc[lane, 4 * nt + reg] * inv[lane, reg >> 1]
                            out[wrow0 + rr, 8 * nt + cc] = np.float16(val)
                            lse[wrow0 + rr] = row_lse[lane, reg >> 1]
    return out, lse
