"""The online softmax of a score tile and the epilogue, written once for every
tensor-core kernel.

Scores are kept in base 2 (already multiplied by ``softmax_scale * log2(e)``) and each
thread holds two rows, a and b, of a warp's 16-row tile in the quad layout that mma.sync's
C fragment and wgmma's accumulator share: registers ``4k, 4k+1`` belong to row a and
``4k+2, 4k+3`` to row b; a row is spread over the 4 lanes of a quad (reduced with
``shfl(x, 1)`` and ``shfl(x, 2)``). The factories check a kernel's layout against this.

* :func:`online_softmax`: ``update(s, m_a, m_b, l_a, l_b)`` turns a tile of scores into P
  in place and returns the new running maxima and (per-lane partial) row sums and the
  factors ``alpha`` that rescale the output accumulator (:func:`rescale`);
* :func:`rescale` / :func:`rescale_if`: the accumulator's rows times their ``alpha`` (with
  ``rescale_if`` only where some row of the warp has ``alpha != 1``: a lazy softmax's
  maxima rarely move);
* :func:`epilogue`: full row sums, ``1 / l`` and lse (rows that saw no key: 0 and -inf),
  the normalised 16-bit output pairs and lse, stored from the registers.

``exp2`` and ``shfl`` are device functions given by the kernel (``ex2.approx`` and a full-warp
butterfly shuffle on a GPU; models on the simulator).
"""
import numpy as np
from numba import cuda

from .common import NEG_INF, finish_row, store_lse

ZERO = np.float32(0.0)
ONE = np.float32(1.0)
#: the lazy softmax's threshold (base 2): a row's running maximum moves only when a tile's
#: maximum exceeds it by more than this, so P stays at most 2^8 (fp16 and bf16 hold it; the
#: sums and O stay in fp32), and the maximum kept is the one the sums and the lse use
LAZY_THRESHOLD = np.float32(8.0)


def check_quad_layout(frag_rc, n_regs):
    """Raise unless ``frag_rc`` (a device function of ``(lane, i) -> (row, col)``) puts
    registers ``4k, 4k+1`` on row a (< 8) and ``4k+2, 4k+3`` on row b, one row per quad."""
    rc = getattr(frag_rc, "py_func", frag_rc)
    for lane in range(32):
        for i in range(n_regs):
            row, _ = rc(lane, i)
            if row != (lane >> 2) + 8 * ((i >> 1) & 1):
                raise ValueError(f"frag_rc: register {i} of lane {lane} is on row {row}, "
                                 f"not in the quad layout")


def _quad_max(n_regs, shfl):
    """Device function ``row_max(s) -> (mx_a, mx_b)``: the largest score of rows a and b
    over the quad (the 4 lanes that share a row)."""
    N4 = n_regs // 4

    @cuda.jit(device=True, inline=True, cache=True)
    def row_max(s):
        mx_a = NEG_INF
        mx_b = NEG_INF
        for i4 in range(N4):
            mx_a = max(mx_a, max(s[4 * i4], s[4 * i4 + 1]))
            mx_b = max(mx_b, max(s[4 * i4 + 2], s[4 * i4 + 3]))
        mx_a = max(mx_a, shfl(mx_a, 1))
        mx_a = max(mx_a, shfl(mx_a, 2))
        mx_b = max(mx_b, shfl(mx_b, 1))
        mx_b = max(mx_b, shfl(mx_b, 2))
        return mx_a, mx_b
    return row_max


def _keep_or_move(lazy, exp2):
    """Device functions ``moved(m, cand) -> new maximum`` (``cand`` = max(m, the tile's
    maximum)) and ``factor(m, new, base) -> alpha``; with ``lazy``, ``m`` stays unless
    ``cand`` exceeds it by more than ``LAZY_THRESHOLD`` (a row with no key yet, ``m =
    -inf``, always moves), and a maximum that stays gives ``alpha = 1`` exactly."""
    if lazy:
        @cuda.jit(device=True, inline=True, cache=True)
        def moved(m, cand):
            return cand if cand > m + LAZY_THRESHOLD else m

        @cuda.jit(device=True, inline=True, cache=True)
        def factor(m, new, base):
            return ONE if new == m else exp2(m - base)
    else:
        @cuda.jit(device=True, inline=True, cache=True)
        def moved(m, cand):
            return cand

        @cuda.jit(device=True, inline=True, cache=True)
        def factor(m, new, base):
            return exp2(m - base)
    return moved, factor


def online_softmax(n_regs, exp2, shfl, fused=False, lazy=False):
    """Device function ``update(s, m_a, m_b, l_a, l_b) -> (m_a, m_b, l_a, l_b, alpha_a,
    alpha_b)`` over the ``n_regs`` scores ``s`` (masked scores are -inf), already in base 2.

    ``fused``: ``update(s, m_a, m_b, l_a, l_b, scale)`` takes the raw scores and the base-2
    scale (``softmax_scale * log2(e)``, positive): the maxima are taken on the raw scores
    and scaled once per row, and each score's scale folds into the exponent's ``fma``, which
    saves one multiply per score. The maxima and sums are the same quantities (in base 2).

    ``lazy``: a row's maximum moves only by more than ``LAZY_THRESHOLD`` (FlashAttention-4's
    conditional rescaling), else its ``alpha`` is exactly 1 and O need not be rescaled
    (:func:`rescale_if`). The result is the same softmax: P, l and O share the stale
    maximum, which the epilogue's lse uses too."""
    N4 = n_regs // 4
    row_max = _quad_max(n_regs, shfl)
    moved, factor = _keep_or_move(lazy, exp2)

    @cuda.jit(device=True, inline=True, cache=True)
    def update(s, m_a, m_b, l_a, l_b):
        mx_a, mx_b = row_max(s)
        new_a = moved(m_a, max(m_a, mx_a))
        new_b = moved(m_b, max(m_b, mx_b))
        base_a = ZERO if new_a == NEG_INF else new_a   # no key yet: avoid -inf - -inf
        base_b = ZERO if new_b == NEG_INF else new_b
        alpha_a = factor(m_a, new_a, base_a)
        alpha_b = factor(m_b, new_b, base_b)
        sum_a = ZERO
        sum_b = ZERO
        for i4 in range(N4):
            s[4 * i4] = exp2(s[4 * i4] - base_a)
            s[4 * i4 + 1] = exp2(s[4 * i4 + 1] - base_a)
            s[4 * i4 + 2] = exp2(s[4 * i4 + 2] - base_b)
            s[4 * i4 + 3] = exp2(s[4 * i4 + 3] - base_b)
            sum_a += s[4 * i4] + s[4 * i4 + 1]
            sum_b += s[4 * i4 + 2] + s[4 * i4 + 3]
        # per-lane partial sums; the epilogue reduces them over the quad
        return new_a, new_b, l_a * alpha_a + sum_a, l_b * alpha_b + sum_b, alpha_a, alpha_b

    @cuda.jit(device=True, inline=True, cache=True)
    def update_fused(s, m_a, m_b, l_a, l_b, scale):
        mx_a, mx_b = row_max(s)
        new_a = moved(m_a, max(m_a, mx_a * scale))     # -inf stays -inf (scale > 0)
        new_b = moved(m_b, max(m_b, mx_b * scale))
        base_a = ZERO if new_a == NEG_INF else new_a
        base_b = ZERO if new_b == NEG_INF else new_b
        alpha_a = factor(m_a, new_a, base_a)
        alpha_b = factor(m_b, new_b, base_b)
        nb_a = -base_a
        nb_b = -base_b
        sum_a = ZERO
        sum_b = ZERO
        for i4 in range(N4):
            s[4 * i4] = exp2(cuda.fma(s[4 * i4], scale, nb_a))
            s[4 * i4 + 1] = exp2(cuda.fma(s[4 * i4 + 1], scale, nb_a))
            s[4 * i4 + 2] = exp2(cuda.fma(s[4 * i4 + 2], scale, nb_b))
            s[4 * i4 + 3] = exp2(cuda.fma(s[4 * i4 + 3], scale, nb_b))
            sum_a += s[4 * i4] + s[4 * i4 + 1]
            sum_b += s[4 * i4 + 2] + s[4 * i4 + 3]
        return new_a, new_b, l_a * alpha_a + sum_a, l_b * alpha_b + sum_b, alpha_a, alpha_b

    return update_fused if fused else update


def rescale(n_regs):
    """Device function ``rescale(acc, alpha_a, alpha_b)``: the output accumulator's rows
    times their ``alpha``."""
    N4 = n_regs // 4

    @cuda.jit(device=True, inline=True, cache=True)
    def rescale_acc(acc, alpha_a, alpha_b):
        for i4 in range(N4):
            acc[4 * i4] *= alpha_a
            acc[4 * i4 + 1] *= alpha_a
            acc[4 * i4 + 2] *= alpha_b
            acc[4 * i4 + 3] *= alpha_b
    return rescale_acc


def rescale_if(n_regs, vote_any):
    """Device function ``rescale(acc, alpha_a, alpha_b)`` as :func:`rescale`'s, skipped
    unless some lane of the warp has a row with ``alpha != 1`` (``vote_any``: a warp vote,
    so that the branch is uniform). With the lazy softmax a row's ``alpha`` is exactly 1
    while its maximum stays."""
    plain = rescale(n_regs)

    @cuda.jit(device=True, inline=True, cache=True)
    def rescale_acc(acc, alpha_a, alpha_b):
        if vote_any(alpha_a != ONE or alpha_b != ONE):
            plain(acc, alpha_a, alpha_b)
    return rescale_acc


def finish_rows(shfl):
    """Device function ``rows(m_a, m_b, l_a, l_b) -> (inv_a, lse_a, inv_b, lse_b)``: each
    row's sum reduced over its quad (the four lanes that hold its columns), then
    ``finish_row``'s ``1 / l`` and lse."""

    @cuda.jit(device=True, inline=True, cache=True)
    def rows(m_a, m_b, l_a, l_b):
        l_a += shfl(l_a, 1)
        l_a += shfl(l_a, 2)
        l_b += shfl(l_b, 1)
        l_b += shfl(l_b, 2)
        inv_a, lse_a = finish_row(l_a, m_a)
        inv_b, lse_b = finish_row(l_b, m_b)
        return inv_a, lse_a, inv_b, lse_b
    return rows


@cuda.jit(device=True, inline=True, cache=True)
def store_lse_rows(lse, lse_batched, b, h, q0, row_a, row_b, sq, t, lse_a, lse_b):
    """Rows a and b's lse, from lane ``t == 0`` of the quad, rows past ``sq`` skipped."""
    if t == 0:
        if row_a < sq:
            store_lse(lse, lse_batched, b, h, q0, row_a, lse_a)
        if row_b < sq:
            store_lse(lse, lse_batched, b, h, q0, row_b, lse_b)


def epilogue(n_regs, words, pack, shfl):
    """Device function ``finish(acc, m_a, m_b, l_a, l_b, out, lse, b, h, q0, row_a, row_b,
    sq, t, lse_batched)``: normalise the ``n_regs`` output registers of rows a and b and
    store them as 16-bit pairs, ``out[q0 + row, h, 4 * k + t]`` (``out`` a uint32 view, of
    which the first ``words`` of a row hold data: the rest is the padding of head sizes that
    are not multiples of 16), and their lse (lane ``t == 0`` of the quad)."""
    N4 = n_regs // 4
    rows = finish_rows(shfl)

    @cuda.jit(device=True, inline=True, cache=True)
    def finish(acc, m_a, m_b, l_a, l_b, out, lse, b, h, q0, row_a, row_b, sq, t, lse_batched):
        inv_a, lse_a, inv_b, lse_b = rows(m_a, m_b, l_a, l_b)
        if row_a < sq:
            for i4 in range(N4):
                w = 4 * i4 + t
                if w < words:
                    out[q0 + row_a, h, w] = pack(acc[4 * i4] * inv_a, acc[4 * i4 + 1] * inv_a)
        if row_b < sq:
            for i4 in range(N4):
                w = 4 * i4 + t
                if w < words:
                    out[q0 + row_b, h, w] = pack(acc[4 * i4 + 2] * inv_b,
                                                 acc[4 * i4 + 3] * inv_b)
        store_lse_rows(lse, lse_batched, b, h, q0, row_a, row_b, sq, t, lse_a, lse_b)
    return finish
