"""Index maps and tile configuration of the tensor-core backward (:mod:`bwd_flash_tc`).

The backward reuses every fragment map of the forward (:mod:`v4_layout`) by choosing which
side of each product a warp owns:

* **dK/dV pass**: a warp owns 16 *keys* (the mma M dimension) and computes the transposed
  scores ``S^T = K Q^T`` and ``dP^T = V dO^T`` directly as C accumulators (keys x queries).
  Then ``P^T`` and ``dS^T`` are already in the C layout that :func:`v4_layout.p_from_s`
  packs into A fragments, so ``dV += P^T dO`` and ``dK += dS^T Q`` need no transpose through
  shared memory. Q and dO are B operands twice each: as ``B[d, q] = Q[q, d]`` through
  ``ldmatrix`` (:func:`v4_layout.k_ldsm_rc`, as K in the forward) and as ``B[q, d]`` through
  ``ldmatrix.trans`` (:func:`v4_layout.v_ldsm_rc`, as V in the forward).
* **dQ pass**: a warp owns 16 queries: ``S = Q K^T`` and ``dP = dO V^T`` as in the forward
  (V takes K's ``ldmatrix`` map), and ``dQ += dS K`` with K through ``ldmatrix.trans``.

The one new map is :func:`a_ldsm_rc`: A fragments (K and V in the dK/dV pass, Q and dO in the
dQ pass) are read from shared memory with ``ldmatrix.x4`` instead of being held in registers,
which keeps the accumulators of head size 256 under 255 registers. The lse and delta of a
C-fragment column come from :func:`v4_layout.c_frag_rc`.
"""
from .v4_device import ROW_PAD, padded  # noqa: F401  (re-exported for the kernels)


def a_ldsm_rc(lane, kstep):
    """(row, column) in a row-major 16-row tile whose address ``lane`` gives to
    ``ldmatrix.x4`` for the A fragments (a0, a1, a2, a3) of mma k-step ``kstep``.

    Matrices: 0 = rows 0..7 x cols 16k..16k+7 (a0 = A[g, 2t:2t+2]), 1 = rows 8..15 x the same
    cols (a1), 2 = rows 0..7 x cols +8 (a2), 3 = rows 8..15 x cols +8 (a3).
    """
    i = lane >> 3
    return (lane & 7) + 8 * (i & 1), 16 * kstep + 8 * (i >> 1)


def ds_ldsm_rc(lane, kstep, mtile):
    """(key row, query column) in the block's row-major dS^T tile (keys x queries) whose
    address ``lane`` gives to ``ldmatrix.x4.trans`` for the A fragments of ``dQ += dS K``
    (A = dS: 16 queries of m-tile ``mtile`` x the 16 keys of k-step ``kstep``).

    ``.trans`` hands lane l elements (2 (l % 4), l // 4) and (2 (l % 4) + 1, l // 4) of each
    stored 8 x 8 matrix, i.e. dS[g, 2t..2t+1] when the matrix's rows are keys: matrix 0 =
    keys 0..7 x queries 0..7 (a0 = dS[g, 2t:2t+2]), 1 = keys 0..7 x queries 8..15 (a1), 2 =
    keys 8..15 x queries 0..7 (a2), 3 = keys 8..15 x queries 8..15 (a3); the transpose of
    :func:`a_ldsm_rc`'s matrix order.
    """
    i = lane >> 3
    return 16 * kstep + (lane & 7) + 8 * (i >> 1), 16 * mtile + 8 * (i & 1)


def c_col_pair(ntile, lane):
    """Column (within a tile of 8-column C n-tiles) of accumulators 0 and 2 of ``lane`` in
    n-tile ``ntile``; accumulators 1 and 3 are the next column."""
    return 8 * ntile + 2 * (lane & 3)


# --------------------------------------------------------------------------- configuration

#: warps per block of both passes
WARPS = 4


def dsplit(head_size):
    """Warps sharing 16 keys in the dK/dV pass, each accumulating a slice of the head
    dimension: 2 above a padded head size of 128 (so the dK and dV accumulators stay at
    most 128 registers), else 1."""
    return 1 if padded(head_size) <= 128 else 2


def dkdv_config(head_size):
    """``(keys per block, queries per tile, stages)`` of the dK/dV pass."""
    return 16 * WARPS // dsplit(head_size), 32, 2


def ds_row_bytes(bm):
    """Bytes of one row (one key) of the shared dS^T tile of the atomic variant: ``bm``
    16-bit queries plus 16 bytes, so that the 8 rows an ``ldmatrix`` reads and the 8 rows a
    warp's packed stores write fall in distinct banks."""
    return 2 * bm + 16


def dq_config(head_size):
    """``(queries per block, keys per tile, stages)`` of the dQ pass."""
    return 16 * WARPS, 32, 2


def row_bytes(head_size):
    """Bytes of one padded shared-memory row (16-bit elements, 16 bytes of padding)."""
    return 2 * (padded(head_size) + ROW_PAD)


def dkdv_shared(head_size, bnk=None, bm=None, nstages=None):
    """Dynamic shared bytes of the dK/dV pass: the K and V tiles of the block's keys, then
    per stage a Q and a dO tile."""
    d_bnk, d_bm, d_st = dkdv_config(head_size)
    bnk, bm, nstages = bnk or d_bnk, bm or d_bm, nstages or d_st
    return (2 * bnk + 2 * bm * nstages) * row_bytes(head_size)


def dkdv_atomic_shared(head_size, bnk=None, bm=None, nstages=None):
    """Dynamic shared bytes of the atomic-dQ dK/dV pass: :func:`dkdv_shared` plus the
    block's dS^T tile (``bnk`` keys x ``bm`` queries, :func:`ds_row_bytes` per key)."""
    d_bnk, d_bm, _ = dkdv_config(head_size)
    bnk, bm = bnk or d_bnk, bm or d_bm
    return dkdv_shared(head_size, bnk, bm, nstages) + bnk * ds_row_bytes(bm)


def dq_shared(head_size, bmq=None, bn=None, nstages=None):
    """Dynamic shared bytes of the dQ pass: the block's Q and dO tiles, then per stage a K
    and a V tile."""
    d_bmq, d_bn, d_st = dq_config(head_size)
    bmq, bn, nstages = bmq or d_bmq, bn or d_bn, nstages or d_st
    return (2 * bmq + 2 * bn * nstages) * row_bytes(head_size)
