"""NumPy emulation of kernel v4 (flash_tc), lane by lane, for CPUs.

Mirrors ``v4_flash_tc.build(Config(D, dtype, heads, bn))`` for one sequence and one head: per-lane
register arrays, 2-D uint16 "shared memory" tiles with the kernel's padded rows, fragments
loaded by :func:`v4_layout.ldmatrix_py` at the addresses the kernel's index maps give, and
the mma emulated by :func:`v4_layout.mma_py` (which reassembles the matrices from the PTX
fragment tables, independently of those maps). Used by tests/test_v4_fragments.py and
notebook 04; slow (pure Python loops), so keep sizes small.
"""
import numpy as np

from ..problem import key_range_host
from . import v4_layout as L
from . import v4_flash_tc as v4


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
    """Mirror of ``v4.build(v4.Config(D, dtype, heads, block_n))`` for one sequence and one head: each warp
    holds one m16 tile of 16 query rows (:class:`_MTile`).

    q: (sq, H, D), k/v: (sk, Hkv, D), all ``dtype`` (float16 or ml_dtypes.bfloat16). Returns
    out (sq, D) float32 (rounded to ``dtype``) and lse (sq,).
    """
    dtype = np.dtype(dtype)
    sq, sk, D = q.shape[0], k.shape[0], q.shape[2]
    BN, D16, RW = block_n, v4.padded(D), 16                      # RW: rows per warp
    q16 = np.zeros((sq, D16), np.uint16)
    q16[:, :D] = np.ascontiguousarray(q[:, head]).view(np.uint16)
    k16 = np.ascontiguousarray(k[:, kv_head]).view(np.uint16)
    v16 = np.ascontiguousarray(v[:, kv_head]).view(np.uint16)
    scale_log2 = np.float32(scale * np.log2(np.e))
    out = np.full((sq, D), np.nan, np.float32)
    lse = np.full(sq, np.nan, np.float32)
    kr = lambda i: key_range_host(i, sq, sk, left, right)  # noqa: E731
    pb = RW * v4.WARPS // heads                                   # positions per block
    for row0 in range(0, sq, pb):
        blo, bhi = kr(row0)[0], kr(min(row0 + pb, sq) - 1)[1]
        staged = [(n0, _tile(k16, n0, BN, D16), _tile(v16, n0, BN, D16))
                  for n0 in range((blo // BN) * BN, bhi + 1, BN)]
        for warp in range(v4.WARPS):
            if warp % heads != head % heads:                      # another head's warp
                continue
            wrow0 = row0 + RW * (warp // heads)
            if wrow0 >= sq:
                continue
            wlo_first, whi_first = kr(wrow0)
            wlo_last, whi_last = kr(min(wrow0 + RW - 1, sq - 1))
            mt = _MTile(wrow0, q16, sq, kr, D16)
            for n0, ks, vs in staged:
                if not (n0 <= whi_last and n0 + BN - 1 >= wlo_first):
                    continue
                mt.s = np.zeros((32, 4 * (BN // 8)), np.float32)
                for p in range(BN // 16):
                    for kk in range(D16 // 16):
                        b = L.ldmatrix_py(ks, lambda ln: L.k_ldsm_rc(ln, p, kk), 4)
                        for j in range(2):
                            nt = 2 * p + j
                            mt.s[:, 4 * nt:4 * nt + 4] = L.mma_py(
                                mt.qf[:, 4 * kk:4 * kk + 4], b[:, 2 * j:2 * j + 2],
                                mt.s[:, 4 * nt:4 * nt + 4], dtype)
                mt.softmax(scale_log2, n0, BN, not (wlo_last <= n0 and n0 + BN - 1 <= whi_first))
                for kk in range(BN // 16):
                    am = mt.p_fragment(kk, dtype)
                    for p in range(D16 // 16):
                        b = L.ldmatrix_py(vs, lambda ln: L.v_ldsm_rc(ln, kk, p), 4, trans=True)
                        for j in range(2):
                            nt = 2 * p + j
                            mt.acc[:, 4 * nt:4 * nt + 4] = L.mma_py(
                                am, b[:, 2 * j:2 * j + 2], mt.acc[:, 4 * nt:4 * nt + 4], dtype)
            mt.store(out, lse, sq, D, dtype)
    return out, lse


class _MTile:
    """One m16 tile of a warp: Q fragments, S and O accumulators, running (m, l) per lane
    row (rows ``row0 + g`` and ``row0 + g + 8``, ``g = lane // 4``)."""

    def __init__(self, row0, q16, sq, kr, d16):
        self.row0 = row0
        rows = np.stack([row0 + L.c_frag_rc(lane, 0)[0] for lane in range(32)])
        self.rng = [np.array([kr(r) for r in rows]), np.array([kr(r + 8) for r in rows])]
        self.qf = np.zeros((32, 4 * (d16 // 16)), np.uint32)
        for lane in range(32):
            for kk in range(d16 // 16):
                for r in range(4):
                    rr, cc = L.a_frag_rc(lane, r)
                    if row0 + rr < sq:
                        c = 16 * kk + cc
                        self.qf[lane, 4 * kk + r] = (int(q16[row0 + rr, c])
                                                     | int(q16[row0 + rr, c + 1]) << 16)
        self.acc = np.zeros((32, 4 * (d16 // 8)), np.float32)
        self.m = np.full((32, 2), -np.inf, np.float32)
        self.lsum = np.zeros((32, 2), np.float32)

    def softmax(self, scale_log2, n0, bn, masked):
        """Scale S to base 2, mask per row when ``masked``, online softmax update; S becomes P."""
        s = self.s * scale_log2
        if masked:
            for lane in range(32):
                for nt in range(bn // 8):
                    for r in range(4):
                        rr, cc = L.c_frag_rc(lane, r)
                        col = n0 + 8 * nt + cc
                        lo, hi = self.rng[rr // 8][lane]
                        if col < lo or col > hi:
                            s[lane, 4 * nt + r] = -np.inf
        sa, sb = s.reshape(32, -1, 4)[:, :, 0:2], s.reshape(32, -1, 4)[:, :, 2:4]
        mx = np.stack([_quad_reduce(sa.reshape(32, -1).max(1), np.max),
                       _quad_reduce(sb.reshape(32, -1).max(1), np.max)], 1)
        new = np.maximum(self.m, mx)
        base = np.where(new == -np.inf, np.float32(0), new)
        alpha = np.exp2(self.m - base)
        self.m = new
        p = np.exp2(s.reshape(32, -1, 2, 2) - base[:, None, :, None]).astype(np.float32)
        self.lsum = self.lsum * alpha + p.sum(axis=(1, 3))
        self.acc = (self.acc.reshape(32, -1, 2, 2) * alpha[:, None, :, None]).reshape(32, -1)
        self.s = p.reshape(32, -1)

    def p_fragment(self, kk, dtype):
        """P's A registers (32, 4) for P.V k-step ``kk``, packed from S (``p_from_s``)."""
        a = np.zeros((32, 4), np.uint32)
        for lane in range(32):
            for reg in range(4):
                nt, creg = L.p_from_s(kk, reg)
                a[lane, reg] = L.pack_py(self.s[lane, 4 * nt + creg],
                                         self.s[lane, 4 * nt + creg + 1], dtype)
        return a

    def store(self, out, lse, sq, D, dtype):
        """Epilogue: quad-reduced row sums, normalised rows rounded to ``dtype``, lse."""
        lsum = np.stack([_quad_reduce(self.lsum[:, 0], np.sum),
                         _quad_reduce(self.lsum[:, 1], np.sum)], 1)
        inv = np.where(lsum > 0, 1 / np.where(lsum > 0, lsum, 1), 0).astype(np.float32)
        row_lse = np.where(lsum > 0, self.m * np.log(2) + np.log(np.where(lsum > 0, lsum, 1)),
                           -np.inf)
        for lane in range(32):
            for reg in range(4):
                rr, cc = L.c_frag_rc(lane, reg)
                row = self.row0 + rr
                if row < sq:
                    for nt in range(D // 8):
                        val = self.acc[lane, 4 * nt + reg] * inv[lane, reg >> 1]
                        out[row, 8 * nt + cc] = np.float32(dtype.type(val))
                    lse[row] = row_lse[lane, reg >> 1]
