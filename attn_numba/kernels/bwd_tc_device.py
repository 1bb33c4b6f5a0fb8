"""Device functions shared by the passes of the tensor-core backward (:mod:`bwd_tc_dkdv`,
:mod:`bwd_tc_dq`): the new A-fragment ldmatrix map compiled inline, a pair of mma into
adjacent accumulator n-tiles, and the per-row lse / delta reads."""
import math

import numpy as np
from numba import cuda

from .bwd_tc_layout import a_ldsm_rc
from .v4_device import _mma

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
