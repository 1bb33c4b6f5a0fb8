"""Device functions shared by the passes of the tensor-core backward (:mod:`bwd_tc_dkdv`,
:mod:`bwd_tc_dq`): the new A-fragment ldmatrix map compiled inline, a pair of mma into
adjacent accumulator n-tiles, A fragments packed from accumulators, the two score
contractions of a tile (:func:`scores_loop`), and the per-row lse / delta reads."""
import math

import numpy as np
from numba import cuda, uint32

from . import ptx
from .bwd_tc_layout import a_ldsm_rc
from .v4_device import _mma, _p_from_s, _pack

LOG2E = np.float32(math.log2(math.e))
POS_INF = np.float32(np.inf)
NEG_INF = np.float32(-np.inf)
ZERO = np.float32(0.0)

_a_ldsm_rc = cuda.jit(device=True, inline=True, cache=True)(a_ldsm_rc)


@cuda.jit(device=True, inline=True, cache=True)
def mma_pair(bf16, a0, a1, a2, a3, b0, b1, b2, b3, acc, i):
    """``acc[i:i+4] += A B(b0, b1)`` and ``acc[i+4:i+8] += A B(b2, b3)``: the two n-tiles
    of one ``ldmatrix.x4`` of B (``i`` a compile-time constant after unrolling, so ``acc``
    stays in registers)."""
    d0, d1, d2, d3 = _mma(bf16, a0, a1, a2, a3, b0, b1, acc[i], acc[i + 1], acc[i + 2],
                          acc[i + 3])
    acc[i] = d0
    acc[i + 1] = d1
    acc[i + 2] = d2
    acc[i + 3] = d3
    d0, d1, d2, d3 = _mma(bf16, a0, a1, a2, a3, b2, b3, acc[i + 4], acc[i + 5], acc[i + 6],
                          acc[i + 7])
    acc[i + 4] = d0
    acc[i + 5] = d1
    acc[i + 6] = d2
    acc[i + 7] = d3


@cuda.jit(device=True, inline=True, cache=True)
def pack_a(bf16, c, kk):
    """The A registers of mma k-step ``kk`` packed from C accumulators ``c`` (16-bit pairs;
    :func:`v4_layout.p_from_s`): P^T / dS^T in the dK/dV pass, dS in the dQ pass."""
    t0, r0 = _p_from_s(kk, 0)
    t1, r1 = _p_from_s(kk, 1)
    t2, r2 = _p_from_s(kk, 2)
    t3, r3 = _p_from_s(kk, 3)
    return (_pack(bf16, c[4 * t0 + r0], c[4 * t0 + r0 + 1]),
            _pack(bf16, c[4 * t1 + r1], c[4 * t1 + r1 + 1]),
            _pack(bf16, c[4 * t2 + r2], c[4 * t2 + r2 + 1]),
            _pack(bf16, c[4 * t3 + r3], c[4 * t3 + r3 + 1]))


def scores_loop(ksteps, ntiles, row_bytes):
    """Device function ``scores(bf16, a1, b1, c1, a2, b2, c2)``: ``c1 = A1 B1^T`` and
    ``c2 = A2 B2^T`` over ``ksteps`` k16 steps, for one warp's 16 A rows and ``ntiles`` 8-row
    n-tiles of B; ``a*`` / ``b*`` are the lanes' ldmatrix addresses (``a_ldsm_rc`` /
    ``k_ldsm_rc`` at k-step 0) of row-major tiles with ``row_bytes`` per row. The two
    products share the loop (S and dP of both passes)."""
    NP = ntiles // 2
    N = 4 * ntiles
    RSB = row_bytes

    @cuda.jit(device=True, inline=True, cache=True)
    def scores(bf16, a1, b1, c1, a2, b2, c2):
        for i in range(N):
            c1[i] = ZERO
            c2[i] = ZERO
        for kk in range(ksteps):
            x0, x1, x2, x3 = ptx.ldmatrix_x4(a1 + uint32(32 * kk))
            for p in range(NP):
                y0, y1, y2, y3 = ptx.ldmatrix_x4(b1 + uint32(16 * p * RSB + 32 * kk))
                mma_pair(bf16, x0, x1, x2, x3, y0, y1, y2, y3, c1, 8 * p)
            x0, x1, x2, x3 = ptx.ldmatrix_x4(a2 + uint32(32 * kk))
            for p in range(NP):
                y0, y1, y2, y3 = ptx.ldmatrix_x4(b2 + uint32(16 * p * RSB + 32 * kk))
                mma_pair(bf16, x0, x1, x2, x3, y0, y1, y2, y3, c2, 8 * p)
    return scores


@cuda.jit(device=True, inline=True, cache=True)
def row_lse_log2(lse, lse_batched, b, h, q0, row, sq):
    """lse of query ``row`` in base 2, +inf for a row past the sequence or one that sees no
    key (lse = -inf), so that ``exp2(s - lse_log2)`` is 0 there."""
    if row >= sq:
        return POS_INF
    x = lse[b, h, row] if lse_batched else lse[0, h, q0 + row]
    if x == NEG_INF:
        return POS_INF
    return x * LOG2E


@cuda.jit(device=True, inline=True, cache=True)
def row_delta(delta, h, q0, row, sq):
    """delta = rowsum(dO * O) of query ``row`` (0 past the sequence)."""
    if row >= sq:
        return ZERO
    return delta[h, q0 + row]
