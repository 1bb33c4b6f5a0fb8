"""Pure-Python index maps of Hopper warpgroup MMA (PTX ISA 8.x, ``wgmma``): the 128-byte
swizzled shared-memory layout, the matrix-descriptor fields and the per-thread fragment
layouts. The same functions are compiled into :mod:`attn_numba.kernels.v5_flash_wgmma` and run by
the NumPy emulation in ``tests/test_v5_wgmma_layout.py`` and ``notebooks/07_hopper.py``.

Shared-memory tiles (fp16/bf16, 2 bytes per element)
----------------------------------------------------
A tile of ``rows`` x ``cols`` elements (cols a multiple of 64) is stored as ``cols // 64``
*column blocks*, each ``rows`` x 64 elements = ``rows`` rows of 128 bytes. Within a block,
row ``r``'s 16-byte chunk ``c`` (elements ``8c .. 8c+7``) sits at chunk ``c ^ (r % 8)``:
the 128B swizzle, which the hardware undoes from address bits [7:9] when the tile base is
1024-byte aligned. One 8-row x 128-byte group is a *swizzle atom* (1024 bytes).

* Q (A of S = Q.K^T, 64 x D) and K (B of S, stored as keys x D): *K-major* (the reduction
  dimension D is contiguous). Descriptor: SBO = 1024 (next 8 rows), LBO unused (1); the
  k-step ``kk`` (16 elements = 32 bytes) starts ``32 * (kk % 4)`` bytes into column block
  ``kk // 4``.
* V (B of O = P.V, keys x D, stored exactly like K): *MN-major* (N = D contiguous), used
  with the transpose bit. Descriptor: LBO = the column-block size (next 64 values of D),
  SBO = 1024 (next 8 keys); k-step ``kk`` (16 keys) starts ``2048 * kk`` bytes in.

Fragments (per warpgroup of 128 threads; warp ``w`` owns rows ``16w .. 16w+15``)
---------------------------------------------------------------------------------
* Accumulator D (64 x N, f32): thread register ``i`` (0 .. N/2-1) holds row
  ``16w + lane//4 + 8*((i >> 1) & 1)``, column ``8*(i // 4) + 2*(lane % 4) + (i & 1)``.
* A from registers (64 x 16, fp16/bf16 pairs): register ``j`` (0..3) holds row
  ``16w + lane//4 + 8*(j & 1)``, columns ``2*(lane % 4) + 8*(j >> 1)`` and ``+1``.
"""

SWIZZLE_BYTES = 128
ATOM_BYTES = 1024
#: descriptor swizzle-mode codes (bits 62-63)
SWIZZLE_MODE = {"none": 0, "128B": 1, "64B": 2, "32B": 3}


def smem_offset(r, c, rows):
    """Byte offset of element (r, c) in a ``rows`` x cols tile of 2-byte elements, 128B
    swizzled column blocks of 64 elements (see the module docstring)."""
    cb = c >> 6
    cc = c & 63
    chunk = (cc >> 3) ^ (r & 7)
    return cb * (rows * SWIZZLE_BYTES) + r * SWIZZLE_BYTES + chunk * 16 + (cc & 7) * 2


def chunk_offset(r, chunk, rows):
    """Byte offset of the 16-byte chunk ``chunk`` (elements ``8*chunk .. +7``) of row ``r``:
    where a 16-byte ``cp.async`` of those elements must land."""
    return smem_offset(r, 8 * chunk, rows)


def desc_encode(addr, lbo, sbo, swizzle=1):
    """64-bit matrix descriptor: start address (bits 0-13, ``addr >> 4``), leading-dimension
    byte offset (16-29, ``lbo >> 4``), stride-dimension byte offset (32-45, ``sbo >> 4``),
    base offset 0 (49-51), swizzle mode (62-63; 1 = 128B)."""
    return (((addr & 0x3FFFF) >> 4) | ((lbo >> 4) << 16) | ((sbo >> 4) << 32) |
            (swizzle << 62))


def desc_decode(desc):
    """(addr, lbo, sbo, swizzle) of a descriptor made by :func:`desc_encode`."""
    return ((desc & 0x3FFF) << 4, ((desc >> 16) & 0x3FFF) << 4,
            ((desc >> 32) & 0x3FFF) << 4, desc >> 62)


def kmajor_step_offset(kk, rows):
    """Byte offset of k-step ``kk`` (16 elements of the reduction dim) in a K-major tile of
    ``rows`` rows: column block ``kk // 4``, 32 bytes per step inside it."""
    return (kk >> 2) * (rows * SWIZZLE_BYTES) + (kk & 3) * 32


def mnmajor_step_offset(kk):
    """Byte offset of k-step ``kk`` (16 rows of the reduction dim) in an MN-major tile."""
    return kk * 2 * ATOM_BYTES


def acc_rc(warp, lane, i):
    """(row, col) in the 64 x N accumulator of register ``i`` of thread (warp, lane)."""
    return 16 * warp + (lane >> 2) + 8 * ((i >> 1) & 1), 8 * (i >> 2) + 2 * (lane & 3) + (i & 1)


def a_rc(warp, lane, j):
    """(row, col) in the 64 x 16 A tile of the first element of A register ``j``; the second
    element is at (row, col + 1)."""
    return 16 * warp + (lane >> 2) + 8 * (j & 1), 2 * (lane & 3) + 8 * (j >> 1)


def p_regs(kk, j):
    """Accumulator registers ``(i, i + 1)`` of S that pack into A register ``j`` of P for
    P.V k-step ``kk`` (keys ``16kk .. 16kk+15``): returns ``i``. From acc_rc and a_rc: the
    A register's row half is ``j & 1``, its 8-column half ``j >> 1`` = S n8-tile ``2kk + (j >> 1)``."""
    return 4 * (2 * kk + (j >> 1)) + 2 * (j & 1)
