"""The element mask of a score tile, written once for every kernel.

A thread holds ``n_regs`` scores of a warp's 16-row tile; the fragment layout says where
each sits: ``frag_rc(lane, i) -> (row, col)``, row in ``0..15`` of the warp's rows and col
the key offset from the tile's first key ``n0``. The thread's two rows are ``row < 8``
(row a) and ``row >= 8`` (row b), each with its inclusive key range ``(lo, hi)`` from
:func:`attn_numba.kernels.common.key_range`, which already holds the whole rule: the
window (bottom-right aligned, so ``sq != sk`` shifts it), causal (``right == 0``) and the
sequence end (``hi <= sk - 1``). A score outside its row's range becomes ``-inf``.

Which tiles need this mask at all is :func:`attn_numba.kernels.tile_range.full_key_tiles`'s
answer (or the kernel's own test for tiles that do not start at multiples of the tile size).
Layouts: mma.sync's C fragment (:func:`mma_c_rc`), wgmma's accumulator (:func:`wgmma_acc_rc`).
:func:`band_mask_bits` is the same mask for layouts whose column is a lane part plus a
register part: each row's range becomes a 32-bit keep-mask first, so that a score costs a
bit test and a select instead of two compares and a select.
"""
import numpy as np
from numba import cuda, int32, uint32

from .common import NEG_INF
from .v4_layout import c_frag_rc
from .wgmma_layout import acc_rc

_c_frag_rc = cuda.jit(device=True, inline=True, cache=True)(c_frag_rc)
_acc_rc = cuda.jit(device=True, inline=True, cache=True)(acc_rc)


@cuda.jit(device=True, inline=True, cache=True)
def mma_c_rc(lane, i):
    """mma.sync m16n8k16: register ``i`` of a row of ``n / 8`` C tiles, ``4 * tile + reg``."""
    rr, cc = _c_frag_rc(lane, i & 3)
    return rr, 8 * (i >> 2) + cc


@cuda.jit(device=True, inline=True, cache=True)
def wgmma_acc_rc(lane, i):
    """wgmma m64nNk16: register ``i`` of the accumulator, row within the warp's 16 rows."""
    return _acc_rc(0, lane, i)


def band_mask(frag_rc, n_regs):
    """Device function ``mask(s, n0, lane, lo_a, hi_a, lo_b, hi_b)``: ``s[i] = -inf`` for
    every score of the tile at key ``n0`` outside its row's key range."""

    @cuda.jit(device=True, inline=True, cache=True)
    def mask(s, n0, lane, lo_a, hi_a, lo_b, hi_b):
        for i in range(n_regs):
            rr, cc = frag_rc(lane, i)
            col = n0 + cc
            if rr < 8:
                if col < lo_a or col > hi_a:
                    s[i] = NEG_INF
            else:
                if col < lo_b or col > hi_b:
                    s[i] = NEG_INF
    return mask


def _host_rc(frag_rc):
    """The plain-Python twin of a layout's device function (:func:`mma_c_rc`,
    :func:`wgmma_acc_rc`), or the function itself when it is plain Python."""
    if frag_rc is wgmma_acc_rc:
        return lambda lane, i: acc_rc(0, lane, i)
    if frag_rc is mma_c_rc:
        def rc(lane, i):
            row, col = c_frag_rc(lane, i & 3)
            return row, 8 * (i >> 2) + col
        return rc
    return getattr(frag_rc, "py_func", frag_rc)


def check_separable(frag_rc, n_regs):
    """Raise unless ``frag_rc``'s column is ``col(lane, 0) + col(0, i)`` and its row half
    (a: < 8, b: >= 8) depends on ``i`` alone, for every lane and register."""
    rc = _host_rc(frag_rc)
    for lane in range(32):
        for i in range(n_regs):
            row, col = rc(lane, i)
            if col != rc(lane, 0)[1] + rc(0, i)[1] or (row < 8) != (rc(0, i)[0] < 8):
                raise ValueError(f"frag_rc: register {i} of lane {lane} at ({row}, {col}) "
                                 f"is not a lane part plus a register part")


def check_quad_columns(frag_rc, n_regs):
    """Raise unless register ``i``'s column is ``col(lane, 0) + 8 (i // 4) + i % 2`` and its
    row half is ``(i // 2) % 2`` (mma.sync's C fragment and wgmma's accumulator)."""
    check_separable(frag_rc, n_regs)
    rc = _host_rc(frag_rc)
    for i in range(n_regs):
        row, col = rc(0, i)
        if col != 8 * (i >> 2) + (i & 1) or (row >= 8) != bool((i >> 1) & 1):
            raise ValueError(f"frag_rc: register {i} at ({row}, {col}) is not in the quad "
                             f"column layout")


def band_mask_bits(frag_rc, n_regs, shl):
    """:func:`band_mask` through keep-masks: a thread's ``n_regs / 2`` scores of a row sit at
    columns ``8 m + e`` (e = 0, 1) from its first column, so the scores of a row at columns
    below ``L`` number ``2 (L // 8) + min(L % 8, 2)``; each row's range becomes the bits
    ``[count(lo), count(hi + 1))`` of a 32-bit word (``shl``: a shift that gives 0 at 32,
    ``ptx.shl_clamp``), and score ``b`` of the row is kept where bit ``b`` is set."""
    check_quad_columns(frag_rc, n_regs)
    NE = n_regs // 2                      # scores per row
    assert NE <= 32, "one keep-mask word per row"
    W = np.int32(4 * NE)                  # columns spanned, from the thread's first one
    ONES = np.uint32(0xFFFFFFFF)
    Z = np.int32(0)

    @cuda.jit(device=True, inline=True, cache=True)
    def below(lim):
        """How many of a row's scores lie at relative columns < ``lim``."""
        c = min(max(lim, Z), W)
        return (c >> 3) * 2 + min(c & 7, 2)

    @cuda.jit(device=True, inline=True, cache=True)
    def keep(lo, hi):
        return shl(ONES, uint32(below(lo))) & ~shl(ONES, uint32(below(hi + 1)))

    @cuda.jit(device=True, inline=True, cache=True)
    def mask(s, n0, lane, lo_a, hi_a, lo_b, hi_b):
        _, c_lane = frag_rc(lane, 0)
        c0 = n0 + c_lane
        ka = keep(int32(lo_a - c0), int32(hi_a - c0))
        kb = keep(int32(lo_b - c0), int32(hi_b - c0))
        for b in range(NE):
            i = 4 * (b >> 1) + (b & 1)
            if (ka >> b) & 1 == 0:
                s[i] = NEG_INF
            if (kb >> b) & 1 == 0:
                s[i + 2] = NEG_INF
    return mask
