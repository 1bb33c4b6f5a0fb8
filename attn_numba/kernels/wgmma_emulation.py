"""NumPy model of what a warpgroup MMA reads and writes, written from the PTX ISA's text
(matrix descriptors, canonical 128B-swizzled layouts, fragment figures), independently of
how :mod:`attn_numba.kernels.v5_flash_wgmma` lays its tiles out. Tests and ``notebooks/07_hopper``
use it to check that the kernel's shared-memory layout (wgmma_layout.smem_offset), its
descriptors and its fragment maps (wgmma_layout.acc_rc / a_rc / p_regs) fit together.

Hardware model (16-bit element types, one k16 step):

* a descriptor gives start address, LBO, SBO and the swizzle mode;
* K-major operand, 128B swizzle: element (mn, k) is at
  ``start + (mn % 8) * 128 + (mn // 8) * SBO + 2k`` (LBO unused: the 32-byte k-step never
  leaves the 128-byte row);
* MN-major operand, 128B swizzle: element (mn, k) is at
  ``start + 2 * (mn % 64) + (mn // 64) * LBO + (k % 8) * 128 + (k // 8) * SBO``;
* the 128B swizzle then XORs address bits [4:6] with bits [7:9];
* D (64 x N) is spread over the warpgroup as wgmma_layout.acc_rc says, A-from-registers as
  wgmma_layout.a_rc says.
"""
import numpy as np

from . import wgmma_layout as wl


def swizzle128(addr):
    """The 128B swizzle applied to byte addresses (array or int)."""
    return addr ^ (((addr >> 7) & 7) << 4)


def operand(smem, desc, rows, major):
    """The ``rows`` x 16 operand (uint16) that descriptor ``desc`` designates in the byte
    buffer ``smem`` (shared memory from address 0): ``major`` is 'K' or 'MN'."""
    start, lbo, sbo, mode = wl.desc_decode(int(desc))
    mn = np.arange(rows)[:, None]
    k = np.arange(16)[None, :]
    if major == "K":
        addr = start + (mn % 8) * 128 + (mn // 8) * sbo + 2 * k
    else:
        addr = start + 2 * (mn % 64) + (mn // 64) * lbo + (k % 8) * 128 + (k // 8) * sbo
    if mode == wl.SWIZZLE_MODE["128B"]:
        addr = swizzle128(addr)
    elif mode != 0:
        raise NotImplementedError(f"swizzle mode {mode}")
    lo = smem[addr].astype(np.uint16)
    hi = smem[addr + 1].astype(np.uint16)
    return lo | (hi << 8)


def _float(bits, dtype):
    return np.asarray(bits, np.uint16).view(dtype).astype(np.float64)


def acc_index(n):
    """(rows, cols) int arrays of shape (128, n // 2): acc_rc for every thread and register."""
    tid = np.arange(128)[:, None]
    i = np.arange(n // 2)[None, :]
    return wl.acc_rc(tid >> 5, tid & 31, i)


def fragments(mat):
    """Spread a 64 x N float matrix over the warpgroup's accumulators: (128, N // 2)."""
    r, c = acc_index(mat.shape[1])
    return mat[r, c]


def gather(frags):
    """Inverse of :func:`fragments`: the 64 x N matrix held by (128, N // 2) accumulators."""
    n = 2 * frags.shape[1]
    r, c = acc_index(n)
    out = np.full((64, n), np.nan)
    out[r, c] = frags
    return out


def wgmma_ss(acc, smem, desc_a, desc_b, dtype, trans_b=False, scale_d=True):
    """One ``wgmma m64nNk16`` with A and B from shared memory; ``acc``: (128, N // 2)
    float64 fragments, updated and returned. B is K-major unless ``trans_b``."""
    n = 2 * acc.shape[1]
    a = _float(operand(smem, desc_a, 64, "K"), dtype)              # 64 x 16
    b = _float(operand(smem, desc_b, n, "MN" if trans_b else "K"), dtype)  # n x 16
    d = fragments(a @ b.T)
    return acc + d if scale_d else d


def a_from_regs(regs, dtype):
    """The 64 x 16 A tile held by A registers ``regs`` (128, 4) uint32 of packed pairs."""
    a = np.full((64, 16), np.nan)
    tid = np.arange(128)
    for j in range(4):
        r, c = wl.a_rc(tid >> 5, tid & 31, j)
        lo = (regs[:, j] & 0xFFFF).astype(np.uint16)
        hi = (regs[:, j] >> 16).astype(np.uint16)
        a[r, c] = _float(lo, dtype)
        a[r, c + 1] = _float(hi, dtype)
    return a


def wgmma_rs(acc, regs, smem, desc_b, dtype, trans_b=True, scale_d=True):
    """One ``wgmma m64nNk16`` with A from registers (``regs`` (128, 4) uint32)."""
    n = 2 * acc.shape[1]
    a = a_from_regs(regs, dtype)
    b = _float(operand(smem, desc_b, n, "MN" if trans_b else "K"), dtype)
    d = fragments(a @ b.T)
    return acc + d if scale_d else d


def pack_pairs(lo, hi, dtype):
    """uint32 words holding (lo, hi) rounded to ``dtype`` (lo in the low half)."""
    lo16 = np.asarray(lo).astype(dtype).view(np.uint16).astype(np.uint32)
    hi16 = np.asarray(hi).astype(dtype).view(np.uint16).astype(np.uint32)
    return lo16 | (hi16 << 16)


def store_tile(smem, base, mat):
    """Write a rows x cols (cols % 64 == 0) 16-bit matrix at byte ``base`` of ``smem`` in the
    kernel's layout (wgmma_layout.chunk_offset per 16-byte chunk, as its cp.async do)."""
    rows, cols = mat.shape
    bits = np.ascontiguousarray(mat).view(np.uint16)
    for r in range(rows):
        for ch in range(cols // 8):
            off = base + wl.chunk_offset(r, ch, rows)
            smem[off:off + 16] = bits[r, 8 * ch:8 * ch + 8].view(np.uint8)
