"""NumPy emulation of the tensor-core backward (:mod:`bwd_flash_tc`), lane by lane, for CPUs.

Mirrors the dK/dV pass (:mod:`bwd_tc_dkdv`) and the dQ pass (:mod:`bwd_tc_dq`) for one
sequence: 2-D uint16 "shared" tiles with the kernels' padded rows, fragments loaded by
:func:`v4_layout.ldmatrix_py` at the addresses the kernels' index maps give (A operands
through :func:`bwd_tc_layout.a_ldsm_rc`), mma by :func:`v4_layout.mma_py` (which rebuilds
the matrices from the PTX fragment tables independently of those maps), P^T / dS^T packed
with :func:`v4_layout.p_from_s`. A map that disagrees with the hardware layout makes the
emulated gradients wrong. Slow (Python loops over lanes): keep sizes small.
"""
import numpy as np

from . import v4_layout as L
from .bwd_tc_layout import a_ldsm_rc, padded
from .tile_range import full_key_tiles_host, key_range_host, key_tiles_host, query_rows_host
from .v4_emulation import _tile

LOG2E = np.float32(np.log2(np.e))


def _bits(x, d16):
    """(rows, D) of one head as zero-padded 16-bit columns (rows, d16)."""
    out = np.zeros((x.shape[0], d16), np.uint16)
    out[:, :x.shape[1]] = np.ascontiguousarray(x).view(np.uint16)
    return out


def _lse_log2(lse_row):
    return np.float32(np.inf) if lse_row == -np.inf else np.float32(lse_row) * LOG2E


def _a_regs(tile, row0, kk):
    return L.ldmatrix_py(tile, lambda ln: (row0 + a_ldsm_rc(ln, kk)[0], a_ldsm_rc(ln, kk)[1]), 4)


def _scores(a_tile, a_row0, b_tile, steps, ntiles, dtype):
    """C accumulators (32, 4 * ntiles) of A (16 rows of a_tile from a_row0) times B^T, B's
    rows through ldmatrix (``k_ldsm_rc``), contracted over ``steps`` k16 steps."""
    c = np.zeros((32, 4 * ntiles), np.float32)
    for kk in range(steps):
        a = _a_regs(a_tile, a_row0, kk)
        for p in range(ntiles // 2):
            b = L.ldmatrix_py(b_tile, lambda ln: L.k_ldsm_rc(ln, p, kk), 4)
            for j in range(2):
                nt = 2 * p + j
                c[:, 4 * nt:4 * nt + 4] = L.mma_py(a, b[:, 2 * j:2 * j + 2],
                                                   c[:, 4 * nt:4 * nt + 4], dtype)
    return c


def _accumulate(acc, c, b_tile, ksteps, pairs, dtype):
    """acc (32, 8 * len(pairs)) += pack(c) @ B, B's rows through ldmatrix.trans
    (``v_ldsm_rc``), over ``ksteps`` k16 steps; ``pairs``: the 16-column pairs of B."""
    for kk in range(ksteps):
        a = np.zeros((32, 4), np.uint32)
        for lane in range(32):
            for reg in range(4):
                nt, creg = L.p_from_s(kk, reg)
                a[lane, reg] = L.pack_py(c[lane, 4 * nt + creg], c[lane, 4 * nt + creg + 1],
                                         dtype)
        for i, pp in enumerate(pairs):
            b = L.ldmatrix_py(b_tile, lambda ln: L.v_ldsm_rc(ln, kk, pp), 4, trans=True)
            for j in range(2):
                sl = slice(8 * i + 4 * j, 8 * i + 4 * j + 4)
                acc[:, sl] = L.mma_py(a, b[:, 2 * j:2 * j + 2], acc[:, sl], dtype)


def _store(dst, acc, row0, nrows, pairs, scale, dtype):
    for lane in range(32):
        for reg in range(4):
            rr, cc = L.c_frag_rc(lane, reg)
            if row0 + rr >= nrows:
                continue
            for i, pp in enumerate(pairs):
                for j in range(2):
                    col = 16 * pp + 8 * j + cc
                    if col < dst.shape[1]:
                        val = acc[lane, 8 * i + 4 * j + reg] * np.float32(scale)
                        dst[row0 + rr, col] = np.float32(dtype.type(val))


def emulate_dkdv(dout, q, k, v, lse, delta, scale, left, right, kv_head, bnk, bm, dsplit=1,
                 dtype=np.float16):
    """dK, dV (sk, D) of KV head ``kv_head`` for one sequence, as the dK/dV pass computes
    them: warp w owns keys n0 + 16 (w // dsplit) and head-size slice w % dsplit.
    q, dout: (sq, H, D); k, v: (sk, Hkv, D), all ``dtype``; lse, delta: (H, sq) float32."""
    dtype = np.dtype(dtype)
    sq, nh, D = q.shape
    sk, hkv = k.shape[0], k.shape[1]
    group, d16 = nh // hkv, padded(D)
    steps, pairs_all = d16 // 16, d16 // 16
    slp = -(-pairs_all // dsplit)
    dk = np.full((sk, D), np.nan, np.float32)
    dv = np.full((sk, D), np.nan, np.float32)
    k16, v16 = _bits(k[:, kv_head], d16), _bits(v[:, kv_head], d16)
    for n0 in range(0, sk, bnk):
        kt, vt = _tile(k16, n0, bnk, d16), _tile(v16, n0, bnk, d16)
        kend = min(n0 + bnk, sk) - 1
        i_lo, i_hi = query_rows_host(n0, n0, sq, sk, left, right)[0], \
            query_rows_host(kend, kend, sq, sk, left, right)[1]
        m_first = (i_lo // bm) * bm
        m_tiles = list(range(m_first, i_hi + 1, bm)) if i_lo <= i_hi else []
        for kgrp in range(bnk // 16):
            wk0 = n0 + 16 * kgrp
            if wk0 >= sk:
                continue
            wlast = min(wk0 + 15, sk - 1)
            wf = query_rows_host(wk0, wk0, sq, sk, left, right)
            wl = query_rows_host(wlast, wlast, sq, sk, left, right)
            for ds in range(dsplit):
                pairs = [pp for pp in range(ds * slp, ds * slp + slp) if pp < pairs_all]
                dka = np.zeros((32, 8 * len(pairs)), np.float32)
                dva = np.zeros((32, 8 * len(pairs)), np.float32)
                for h in range(kv_head * group, kv_head * group + group):
                    q16, o16 = _bits(q[:, h], d16), _bits(dout[:, h], d16)
                    for m0 in m_tiles:
                        if not (m0 <= wl[1] and m0 + bm - 1 >= wf[0]):
                            continue
                        qt, ot = _tile(q16, m0, bm, d16), _tile(o16, m0, bm, d16)
                        s = _scores(kt, 16 * kgrp, qt, steps, bm // 8, dtype)
                        dp = _scores(vt, 16 * kgrp, ot, steps, bm // 8, dtype)
                        full = wl[0] <= m0 and m0 + bm - 1 <= wf[1]
                        for lane in range(32):
                            for reg in range(4):
                                rr, cc = L.c_frag_rc(lane, reg)
                                key = min(wk0 + rr, sk - 1)
                                rlo, rhi = query_rows_host(key, key, sq, sk, left, right)
                                for nt in range(bm // 8):
                                    col = m0 + 8 * nt + cc
                                    lq = np.float32(np.inf) if col >= sq else _lse_log2(lse[h, col])
                                    dl = np.float32(0) if col >= sq else np.float32(delta[h, col])
                                    x = s[lane, 4 * nt + reg] * np.float32(scale * LOG2E) - lq
                                    if not full and (col < rlo or col > rhi):
                                        x = -np.inf
                                    pv = np.exp2(np.float32(x))
                                    s[lane, 4 * nt + reg] = pv
                                    dp[lane, 4 * nt + reg] = pv * (dp[lane, 4 * nt + reg] - dl)
                        _accumulate(dva, s, ot, bm // 16, pairs, dtype)
                        _accumulate(dka, dp, qt, bm // 16, pairs, dtype)
                _store(dk[wk0:], dka, 0, sk - wk0, pairs, scale, dtype)
                _store(dv[wk0:], dva, 0, sk - wk0, pairs, 1.0, dtype)
    return dk, dv


def emulate_dq(dout, q, k, v, lse, delta, scale, left, right, head, bmq, bn, dtype=np.float16):
    """dQ (sq, D) of query head ``head`` for one sequence, as the dQ pass computes it:
    warp w owns queries row0 + 16 w; key tiles from ``tile_range.key_tiles``."""
    dtype = np.dtype(dtype)
    sq, nh, D = q.shape
    sk, hkv = k.shape[0], k.shape[1]
    hk, d16 = head // (nh // hkv), padded(D)
    steps, pairs = d16 // 16, list(range(d16 // 16))
    dq = np.full((sq, D), np.nan, np.float32)
    q16, o16 = _bits(q[:, head], d16), _bits(dout[:, head], d16)
    k16, v16 = _bits(k[:, hk], d16), _bits(v[:, hk], d16)
    for row0 in range(0, sq, bmq):
        qt, ot = _tile(q16, row0, bmq, d16), _tile(o16, row0, bmq, d16)
        n_lo, n_hi = key_tiles_host(row0, min(row0 + bmq, sq) - 1, sq, sk, left, right, bn)
        for warp in range(bmq // 16):
            wrow0 = row0 + 16 * warp
            if wrow0 >= sq:
                continue
            wlast = min(wrow0 + 15, sq - 1)
            w_lo, w_hi = key_tiles_host(wrow0, wlast, sq, sk, left, right, bn)
            f_lo, f_hi = full_key_tiles_host(wrow0, wlast, sq, sk, left, right, bn)
            acc = np.zeros((32, 8 * len(pairs)), np.float32)
            for n0 in range(n_lo, n_hi, bn):
                if not (w_lo <= n0 < w_hi):
                    continue
                kt, vt = _tile(k16, n0, bn, d16), _tile(v16, n0, bn, d16)
                s = _scores(qt, 16 * warp, kt, steps, bn // 8, dtype)
                dp = _scores(ot, 16 * warp, vt, steps, bn // 8, dtype)
                full = f_lo <= n0 < f_hi
                for lane in range(32):
                    for reg in range(4):
                        rr, cc = L.c_frag_rc(lane, reg)
                        row = wrow0 + rr
                        lo, hi = key_range_host(min(row, sq - 1), sq, sk, left, right)
                        lq = np.float32(np.inf) if row >= sq else _lse_log2(lse[head, row])
                        dl = np.float32(0) if row >= sq else np.float32(delta[head, row])
                        for nt in range(bn // 8):
                            col = n0 + 8 * nt + cc
                            x = s[lane, 4 * nt + reg] * np.float32(scale * LOG2E) - lq
                            if not full and (col < lo or col > hi):
                                x = -np.inf
                            dp[lane, 4 * nt + reg] = np.exp2(np.float32(x)) * (
                                dp[lane, 4 * nt + reg] - dl)
                _accumulate(acc, dp, kt, bn // 16, pairs, dtype)
            _store(dq[wrow0:], acc, 0, sq - wrow0, pairs, scale, dtype)
    return dq
