"""The per-step device functions of flash_tc (:mod:`attn_numba.kernels.v4_flash_tc`), built
per specialisation: Q's A fragments into registers, S = Q K^T from ldmatrix'd K fragments,
and O += P V with P packed from the S registers. Index maps: :mod:`v4_layout`."""
import functools
from collections import namedtuple

import numpy as np
from numba import cuda, uint32

from . import ptx
from .v4_device import _a_frag_rc, _mma, _p_from_s, _pack, padded, ROW_PAD

ZERO = np.float32(0.0)
U0 = np.uint32(0)

Steps = namedtuple("Steps", "load_q qk pv")


@functools.lru_cache(maxsize=None)
def steps(head_size, block_n, bf16):
    """The device functions for ``head_size``, ``block_n`` keys per tile, fp16 or ``bf16``."""
    D16 = padded(head_size)
    RSB = 2 * (D16 + ROW_PAD)        # shared row stride, bytes
    DW = head_size // 2              # 32-bit words per global row of q / out
    QK_STEPS = D16 // 16
    S_TILES = block_n // 8
    PV_STEPS = block_n // 16
    O_TILES = D16 // 8
    BF16 = bool(bf16)

    @cuda.jit(device=True, inline=True, cache=True)
    def load_q(qf, q, q0, wrow0, sq, h, lane):
        """The warp's 16 rows of Q as A fragments (zero past the sequence and past D)."""
        for kk in range(QK_STEPS):
            for r in range(4):
                rr, cc = _a_frag_rc(lane, r)
                w = 8 * kk + (cc >> 1)
                qf[4 * kk + r] = U0
                if wrow0 + rr < sq and w < DW:
                    qf[4 * kk + r] = q[q0 + wrow0 + rr, h, w]

    @cuda.jit(device=True, inline=True, cache=True)
    def qk(s, qf, kl, scale_log2):
        """S = Q K^T of the tile whose K starts at the lane's shared address ``kl``, times
        ``scale_log2`` (base-2 scores)."""
        for p in range(S_TILES // 2):
            c0 = ZERO
            c1 = ZERO
            c2 = ZERO
            c3 = ZERO
            c4 = ZERO
            c5 = ZERO
            c6 = ZERO
            c7 = ZERO
            for kk in range(QK_STEPS):
                b0, b1, b2, b3 = ptx.ldmatrix_x4(kl + uint32(16 * p * RSB + 32 * kk))
                c0, c1, c2, c3 = _mma(BF16, qf[4 * kk], qf[4 * kk + 1], qf[4 * kk + 2],
                                     qf[4 * kk + 3], b0, b1, c0, c1, c2, c3)
                c4, c5, c6, c7 = _mma(BF16, qf[4 * kk], qf[4 * kk + 1], qf[4 * kk + 2],
                                     qf[4 * kk + 3], b2, b3, c4, c5, c6, c7)
            s[8 * p] = c0 * scale_log2
            s[8 * p + 1] = c1 * scale_log2
            s[8 * p + 2] = c2 * scale_log2
            s[8 * p + 3] = c3 * scale_log2
            s[8 * p + 4] = c4 * scale_log2
            s[8 * p + 5] = c5 * scale_log2
            s[8 * p + 6] = c6 * scale_log2
            s[8 * p + 7] = c7 * scale_log2

    @cuda.jit(device=True, inline=True, cache=True)
    def pv(acc, s, vl):
        """O += P V of the tile whose V starts at the lane's shared address ``vl``; P's A
        fragments are packed from the S registers."""
        for kk in range(PV_STEPS):
            t0, r0 = _p_from_s(kk, 0)
            t1, r1 = _p_from_s(kk, 1)
            t2, r2 = _p_from_s(kk, 2)
            t3, r3 = _p_from_s(kk, 3)
            a0 = _pack(BF16, s[4 * t0 + r0], s[4 * t0 + r0 + 1])
            a1 = _pack(BF16, s[4 * t1 + r1], s[4 * t1 + r1 + 1])
            a2 = _pack(BF16, s[4 * t2 + r2], s[4 * t2 + r2 + 1])
            a3 = _pack(BF16, s[4 * t3 + r3], s[4 * t3 + r3 + 1])
            for p in range(O_TILES // 2):
                b0, b1, b2, b3 = ptx.ldmatrix_x4_trans(vl + uint32(16 * kk * RSB + 32 * p))
                d0, d1, d2, d3 = _mma(BF16, a0, a1, a2, a3, b0, b1, acc[8 * p],
                                     acc[8 * p + 1], acc[8 * p + 2], acc[8 * p + 3])
                acc[8 * p] = d0
                acc[8 * p + 1] = d1
                acc[8 * p + 2] = d2
                acc[8 * p + 3] = d3
                d0, d1, d2, d3 = _mma(BF16, a0, a1, a2, a3, b2, b3, acc[8 * p + 4],
                                     acc[8 * p + 5], acc[8 * p + 6], acc[8 * p + 7])
                acc[8 * p + 4] = d0
                acc[8 * p + 5] = d1
                acc[8 * p + 6] = d2
                acc[8 * p + 7] = d3

    return Steps(load_q, qk, pv)
