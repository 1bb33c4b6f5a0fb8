"""Device functions of the v4 kernel (:mod:`v4_flash_tc`):
the index maps of :mod:`v4_layout` compiled as inline device functions, the mma and pack
wrappers, and the cp.async tile loader."""
import numpy as np
from numba import cuda, uint32

from . import ptx
from .v4_layout import a_frag_rc, c_frag_rc, k_ldsm_rc, kv_chunk, p_from_s, v_ldsm_rc

#: 16-byte padding of each shared-memory row (in 16-bit elements)
ROW_PAD = 8


def padded(head_size):
    """Head size rounded up to the mma's k16."""
    return (head_size + 15) // 16 * 16


_a_frag_rc = cuda.jit(device=True, inline=True, cache=True)(a_frag_rc)
_c_frag_rc = cuda.jit(device=True, inline=True, cache=True)(c_frag_rc)
_p_from_s = cuda.jit(device=True, inline=True, cache=True)(p_from_s)
_k_ldsm_rc = cuda.jit(device=True, inline=True, cache=True)(k_ldsm_rc)
_v_ldsm_rc = cuda.jit(device=True, inline=True, cache=True)(v_ldsm_rc)
_kv_chunk = cuda.jit(device=True, inline=True, cache=True)(kv_chunk)


# Numba's cache key pickles a kernel's closure; a plain intrinsic pickles differently in
# every process, which turned every disk-cache lookup into a miss (notes/kernel_layer.md).
# ptx.fixed_intrinsic gives each intrinsic a fixed identity; the kernels also
# reach intrinsics through module globals, which the key does not pickle.

@cuda.jit(device=True, inline=True, cache=True)
def _mma(bf16, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
    """mma.sync m16n8k16, bf16 or fp16 inputs (``bf16`` is a compile-time constant)."""
    if bf16:
        return ptx.mma_bf16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)
    return ptx.mma_f16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)


@cuda.jit(device=True, inline=True, cache=True)
def _pack(bf16, lo, hi):
    """Two fp32 values -> one bf16x2 / f16x2 word, ``lo`` in the low half."""
    if bf16:
        return ptx.pack_bf16x2(lo, hi)
    return ptx.pack_f16x2(lo, hi)


def tile_loader(head_size, bn, threads):
    """Device function ``load_tile(sbase, gbase, n0, k0, sk, hk, hkv, tid)`` of a block of
    ``threads`` threads: cp.async of ``bn``-key tiles into padded shared rows."""
    D, NT = head_size, threads
    CH = padded(D) // 8              # 16-byte chunks per padded row
    CHD = D // 8                     # chunks holding data
    RSB = 2 * (padded(D) + ROW_PAD)  # shared row stride, bytes
    TILE_CHUNKS = bn * CH
    LOAD_ITERS = (TILE_CHUNKS + NT - 1) // NT
    WHOLE = TILE_CHUNKS % NT == 0

    @cuda.jit(device=True, inline=True, cache=True)
    def _load_tile(sbase, gbase, n0, k0, sk, hk, hkv, tid):
        """cp.async of keys n0..n0+bn-1 of KV head hk into the tile at shared address sbase;
        rows past the sequence and columns past D are zero-filled. The thread index goes
        through ptx.opaque_u32 so that the per-thread offsets are recomputed here rather
        than hoisted out of the tile loop into registers."""
        tid = ptx.opaque_u32(tid)
        for it in range(LOAD_ITERS):
            idx = it * NT + tid
            if WHOLE or idx < TILE_CHUNKS:
                r, c = _kv_chunk(idx, CH)
                key = n0 + r
                ok = key < sk and c < CHD
                row = k0 + min(key, sk - 1)
                col = min(c, CHD - 1)
                src = gbase + np.uint64(((row * hkv + hk) * D + 8 * col) * 2)
                ptx.cp_async16(sbase + uint32(r * RSB + 16 * c), src, uint32(16 if ok else 0))
        ptx.cp_async_commit()
    return _load_tile
