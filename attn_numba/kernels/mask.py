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
"""
from numba import cuda

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
