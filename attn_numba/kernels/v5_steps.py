"""The per-step device functions of flash_wgmma (attn_numba.kernels.v5_flash_wgmma), built per
specialisation: descriptors and stage addresses, the cp.async copies of Q and of K/V tiles,
issuing the QK^T and PV wgmma groups, the online softmax on the S fragments, rescaling O and
packing P, and the epilogue. Layout maps: attn_numba.kernels.wgmma_layout."""
import functools
from collections import namedtuple

import numpy as np
from numba import cuda, int32, uint32, uint64

from . import ptx_sm90 as px
from . import wgmma_layout as wl
from .mask import band_mask, band_mask_bits, wgmma_acc_rc
from .pipeline import ring
from .softmax import epilogue, online_softmax, rescale, rescale_if

THREADS = 128
BLOCK_M = 64
ZERO = np.float32(0.0)
U0 = np.uint32(0)

_smem_offset = cuda.jit(device=True, inline=True, cache=True)(wl.smem_offset)
_kmajor_step = cuda.jit(device=True, inline=True, cache=True)(wl.kmajor_step_offset)
_p_regs = cuda.jit(device=True, inline=True, cache=True)(wl.p_regs)

Steps = namedtuple("Steps", "desc stage_k load_q load_kv issue_qk issue_pv softmax "
                            "rescale_pack finish rescale pack_p")


def desc_hi(lbo, sbo):
    """The constant upper fields of a 128B-swizzle descriptor (start address 0)."""
    return np.uint64(wl.desc_encode(0, lbo, sbo, wl.SWIZZLE_MODE["128B"]))


@functools.lru_cache(maxsize=None)
def steps(D, BN, kind, heads, v_swap, S, groups=1, lean=False, lazy=False):
    """The device functions for head size ``D``, key tile ``BN``, ``kind`` ('f16'/'bf16'),
    ``heads`` per warpgroup, V descriptor variant ``v_swap``, ``S`` K/V stages and
    ``groups`` consumer warpgroups per block (each with its own 64-row Q tile); ``lean``:
    the softmax folds the scale into its exponent (``softmax.online_softmax(fused=True)``)
    and masks through 32-bit keep-masks (``mask.band_mask_bits``), and the wgmma descriptors are
    built once per tile (``issue_qk_lean``); ``lazy``: the running maxima move only by
    more than ``softmax.LAZY_THRESHOLD``, and O is rescaled only where a row of the warp's
    moved (``softmax.rescale_if``)."""
    PB = BLOCK_M // heads
    NT = THREADS * groups               # threads of the block (all of them copy)
    CH = D // 8                         # 16-byte chunks per row
    Q_TILE = 2 * BLOCK_M * D            # one warpgroup's Q tile
    Q_BYTES = Q_TILE * groups
    KV_BYTES = 2 * BN * D
    Q_LOADS = BLOCK_M * CH // THREADS
    KV_LOADS = BN * CH // NT
    assert BN * CH % NT == 0
    QK_STEPS = D // 16
    PV_STEPS = BN // 16
    S_LEN = BN // 2
    O_LEN = D // 2
    DQ = desc_hi(16, wl.ATOM_BYTES)             # K-major Q and K: SBO 1024, LBO unused
    DV = (desc_hi(wl.ATOM_BYTES, BN * wl.SWIZZLE_BYTES) if v_swap else
          desc_hi(BN * wl.SWIZZLE_BYTES, wl.ATOM_BYTES))  # MN-major V: LBO = column block
    ROW_BYTES = np.int64(2 * D)
    wg_s = px.wgmma_ss(BN, kind, False)
    wg_o = px.wgmma_rs(D, kind, True)
    fence_o = px.fence_acc(O_LEN)
    pack = px.pack2(kind)
    stage, _ = ring(S)
    mask = (band_mask_bits(wgmma_acc_rc, S_LEN, px.shl_clamp) if lean else
            band_mask(wgmma_acc_rc, S_LEN))
    update = online_softmax(S_LEN, px.ex2, px.shfl_xor, lean, lazy)
    rescale_o = rescale_if(O_LEN, px.vote_any) if lazy else rescale(O_LEN)
    finish = epilogue(O_LEN, O_LEN, pack, px.shfl_xor)

    @cuda.jit(device=True, inline=True, cache=True)
    def desc(addr, hi):
        return uint64((addr >> 4) & 0x3FFF) | hi

    @cuda.jit(device=True, inline=True, cache=True)
    def stage_k(sQ, j):
        """Shared address of stage (j mod S)'s K tile; its V tile follows at + KV_BYTES."""
        return sQ + uint32(Q_BYTES + stage(j) * 2 * KV_BYTES)

    @cuda.jit(device=True, inline=True, cache=True)
    def load_kv(kbase, vbase, sk_, n0, k0, sk, hkv, hkv_n, tid):
        """cp.async of the K and V rows of the tile at key n0 (zero past the sequence)."""
        sv_ = sk_ + uint32(KV_BYTES)
        for it in range(KV_LOADS):
            idx = it * NT + tid
            n = idx // CH
            c = idx - n * CH
            key = n0 + n
            nbytes = uint32(16) if key < sk else U0
            row = k0 + min(key, sk - 1)
            off = uint64((np.int64(row) * hkv_n + hkv) * ROW_BYTES + 16 * c)
            so = uint32(_smem_offset(n, 8 * c, BN))
            px.cp_async_16(sk_ + so, kbase + off, nbytes)
            px.cp_async_16(sv_ + so, vbase + off, nbytes)

    @cuda.jit(device=True, inline=True, cache=True)
    def issue_qk(s, sQ, sK):
        """S = Q K^T: D/16 wgmma (not committed, not waited)."""
        for kk in range(QK_STEPS):
            wg_s(s, desc(sQ + uint32(_kmajor_step(kk, BLOCK_M)), DQ),
                 desc(sK + uint32(_kmajor_step(kk, BN)), DQ), int32(1 if kk > 0 else 0))

    @cuda.jit(device=True, inline=True, cache=True)
    def issue_qk_lean(s, sQ, sK):
        """As ``issue_qk``, the descriptors of the two tile bases built once and each k-step's
        one added to them: a descriptor's address field is ``addr >> 4`` (14 bits), so
        ``desc(a + off) == desc(a) + off / 16`` for 16-byte multiples while ``a + off`` stays
        under 2^18, which every shared address does."""
        dq = desc(sQ, DQ)
        dk = desc(sK, DQ)
        for kk in range(QK_STEPS):
            wg_s(s, dq + uint64(_kmajor_step(kk, BLOCK_M) >> 4),
                 dk + uint64(_kmajor_step(kk, BN) >> 4), int32(1 if kk > 0 else 0))

    @cuda.jit(device=True, inline=True, cache=True)
    def issue_pv_lean(o, pa, sV):
        """As ``issue_pv``, with the descriptor arithmetic of ``issue_qk_lean``."""
        dv = desc(sV, DV)
        for kk in range(PV_STEPS):
            wg_o(o, pa[4 * kk], pa[4 * kk + 1], pa[4 * kk + 2], pa[4 * kk + 3],
                 dv + uint64((wl.ATOM_BYTES * 2 * kk) >> 4), int32(1))

    @cuda.jit(device=True, inline=True, cache=True)
    def issue_pv(o, pa, sV):
        """O += P V: BN/16 wgmma, P from registers (not committed, not waited)."""
        for kk in range(PV_STEPS):
            wg_o(o, pa[4 * kk], pa[4 * kk + 1], pa[4 * kk + 2], pa[4 * kk + 3],
                 desc(sV + uint32(wl.ATOM_BYTES * 2 * kk), DV), int32(1))

    @cuda.jit(device=True, inline=True, cache=True)
    def softmax(s, n0, masked, lane, lo_a, hi_a, lo_b, hi_b, m_a, m_b, l_a, l_b, scale_log2):
        """Online softmax of the S fragments in place (s becomes P, base 2). Returns the new
        (m_a, m_b, l_a, l_b, alpha_a, alpha_b) of the thread's two rows."""
        for i in range(S_LEN):
            s[i] = s[i] * scale_log2
        if masked:
            mask(s, n0, lane, lo_a, hi_a, lo_b, hi_b)
        return update(s, m_a, m_b, l_a, l_b)

    @cuda.jit(device=True, inline=True, cache=True)
    def softmax_lean(s, n0, masked, lane, lo_a, hi_a, lo_b, hi_b, m_a, m_b, l_a, l_b,
                     scale_log2):
        """As ``softmax``, the scale folded into the exponent (masked raw scores: -inf)."""
        if masked:
            mask(s, n0, lane, lo_a, hi_a, lo_b, hi_b)
        return update(s, m_a, m_b, l_a, l_b, scale_log2)

    @cuda.jit(device=True, inline=True, cache=True)
    def rescale_pack(o, s, pa, alpha_a, alpha_b):
        """O *= alpha per row; P registers packed from the S fragments (wgmma_layout.p_regs);
        then the fence that keeps these writes before the next wgmma."""
        rescale_o(o, alpha_a, alpha_b)
        for kk in range(PV_STEPS):
            for jj in range(4):
                ri = _p_regs(kk, jj)
                pa[4 * kk + jj] = pack(s[ri], s[ri + 1])
        fence_o(o)

    @cuda.jit(device=True, inline=True, cache=True)
    def pack_p(s, pa):
        """The P registers packed from the S fragments alone (a loop that rescales O
        elsewhere: flash_ws's overlapped loop)."""
        for kk in range(PV_STEPS):
            for jj in range(4):
                ri = _p_regs(kk, jj)
                pa[4 * kk + jj] = pack(s[ri], s[ri + 1])


    @cuda.jit(device=True, inline=True, cache=True)
    def load_q(qbase, sQ, row0, q0, sq, hbase, nh, tid):
        """cp.async of the block's Q rows: warpgroup g's tile at sQ + g * Q_TILE holds row r
        = head hbase + r // PB, position row0 + g * PB + r % PB (zero past the sequence)."""
        for it in range(Q_LOADS):
            idx = it * THREADS + (tid & (THREADS - 1))
            r = idx // CH
            c = idx - r * CH
            grp = tid // THREADS
            pos = row0 + grp * PB + r % PB
            hq = hbase + r // PB
            nbytes = uint32(16) if pos < sq else U0
            row = q0 + min(pos, sq - 1)
            off = uint64((np.int64(row) * nh + hq) * ROW_BYTES + 16 * c)
            px.cp_async_16(sQ + uint32(grp * Q_TILE + _smem_offset(r, 8 * c, BLOCK_M)),
                           qbase + off, nbytes)

    if lean:
        return Steps(desc, stage_k, load_q, load_kv, issue_qk_lean, issue_pv_lean,
                     softmax_lean, rescale_pack, finish, rescale_o, pack_p)
    return Steps(desc, stage_k, load_q, load_kv, issue_qk, issue_pv, softmax, rescale_pack,
                 finish, rescale_o, pack_p)
