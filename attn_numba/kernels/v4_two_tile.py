"""Kernel v4 with 32 query rows per warp (opt-in ``rows_per_warp=32`` of
:func:`v4_tensor_core.build`): two m16 tiles per warp, FlashAttention-2's split.

Everything else is v4's (tiles, pipeline, band, masking, fragments; see
:mod:`v4_tensor_core`); what changes:

* **Fragment reuse**: each K fragment (``ldmatrix.x4``) and each V fragment
  (``ldmatrix.x4.trans``) feeds 4 mma (2 n8 tiles x 2 m16 tiles) instead of 2, so shared-memory
  loads per mma halve.
* **Registers**: two sets of Q fragments, S accumulators, O accumulators and (m, l) pairs; a
  lane holds rows ``row_a + 8 * i`` for ``i < 4`` (m-tile ``i // 2``).
* **Work**: ``PB = 32 * warps / heads`` positions per block; a warp's band covers its 32 rows
  (it skips tiles outside it, masks tiles not fully inside it, per row).

Kept apart from :mod:`v4_tensor_core` so that the default kernel's code is unchanged (its
PTX is byte-identical). Emulated by ``v4_emulation.emulate_flash_tc(..., rows_per_warp=32)``.
"""

import numpy as np
from numba import config as numba_config
from numba import cuda, float32, uint16, uint32

from . import ptx
from .common import NEG_INF, finish_row, key_range, seq_span, store_lse
from .v4_device import (ROW_PAD, _a_frag_rc, _c_frag_rc, _k_ldsm_rc, _mma, _p_from_s, _pack,
                        _v_ldsm_rc, padded, tile_loader)

ZERO = np.float32(0.0)
U0 = np.uint32(0)
ROWS_PER_WARP = 32


def build_two_tile(head_size, heads, bf16, bn, warps, nstages):
    """The kernel (same signature and launch contract as v4's, ``32 * warps // heads``
    positions per block); call through ``v4_tensor_core.build(..., rows_per_warp=32)``."""
    D = head_size
    STAGES = nstages
    NW = warps
    NT = 32 * NW                     # threads per block
    D16 = padded(D)
    BN = bn
    HB = heads
    MT = ROWS_PER_WARP // 16         # m16 tiles per warp
    WR = 16 * MT                     # query rows per warp
    PB = WR * NW // HB               # query positions per block
    assert STAGES in (1, 2) and D % 8 == 0 and BN % 16 == 0 and NW % HB == 0
    RSB = 2 * (D16 + ROW_PAD)        # shared row stride, bytes
    DW = D // 2                      # 32-bit words per global row of q / out
    TILE_ELEMS = BN * (D16 + ROW_PAD)
    STAGE_BYTES = 2 * TILE_ELEMS
    SMEM_ELEMS = STAGES * TILE_ELEMS
    QK_STEPS = D16 // 16
    S_TILES = BN // 8
    PV_STEPS = BN // 16
    O_TILES = D16 // 8
    QF_LEN = 4 * QK_STEPS            # per m-tile
    ACC_LEN = 4 * O_TILES
    S_LEN = 4 * S_TILES
    R2 = 2 * MT                      # rows per lane
    QF_ALL, ACC_ALL, S_ALL, C_LEN, A_LEN = MT * QF_LEN, MT * ACC_LEN, MT * S_LEN, 8 * MT, 4 * MT
    BF16 = bf16
    _load_tile = tile_loader(D, BN, NT)

    jit_kw = dict(cache=True)
    if not numba_config.ENABLE_CUDASIM:
        jit_kw["launch_bounds"] = (NT,)

    @cuda.jit(**jit_kw)
    def flash_tc_kernel(q, k, v, out, lse, cu_q, cu_k, scale_log2, left, right, lse_batched):
        """As v4's kernel; warp w takes head y*HB + w % HB and positions from
        x*PB + WR*(w // HB); lane rows row_a + 8*i (i < R2), m-tile i // 2."""
        tid = cuda.threadIdx.x
        warp = tid >> 5
        lane = tid & 31
        t = lane & 3
        h = cuda.blockIdx.y * HB + warp % HB
        b = cuda.blockIdx.z
        q0, sq = seq_span(cu_q, b)
        row0 = cuda.blockIdx.x * PB
        if row0 >= sq:
            return
        k0, sk = seq_span(cu_k, b)
        hkv = k.shape[1]
        hk = (cuda.blockIdx.y * HB) // (q.shape[1] // hkv)

        ks = cuda.shared.array(SMEM_ELEMS, uint16)
        vs = cuda.shared.array(SMEM_ELEMS, uint16)
        kb = ptx.smem_u32(ks)
        vb = ptx.smem_u32(vs)
        kg = ptx.gaddr(k)
        vg = ptx.gaddr(v)

        # the block's key band (lo and hi are non-decreasing in the row), this warp's rows
        blo, _ = key_range(row0, sq, sk, left, right)
        _, bhi = key_range(min(row0 + PB, sq) - 1, sq, sk, left, right)
        wrow0 = row0 + WR * (warp // HB)
        has_rows = wrow0 < sq
        wlo_first, whi_first = key_range(wrow0, sq, sk, left, right)
        wlo_last, whi_last = key_range(min(wrow0 + WR - 1, sq - 1), sq, sk, left, right)
        row_a = wrow0 + (lane >> 2)

        # per-lane ldmatrix offsets; tile (p, kk) adds a constant (see k_ldsm_rc, v_ldsm_rc)
        kr0, kc0 = _k_ldsm_rc(lane, 0, 0)
        vr0, vc0 = _v_ldsm_rc(lane, 0, 0)
        k_lane = kb + uint32(kr0 * RSB + 2 * kc0)
        v_lane = vb + uint32(vr0 * RSB + 2 * vc0)

        n_first = (blo // BN) * BN
        if n_first <= bhi:
            _load_tile(kb, kg, n_first, k0, sk, hk, hkv, tid)
            if STAGES == 2:
                _load_tile(vb, vg, n_first, k0, sk, hk, hkv, tid)

        # Q fragments of both m-tiles stay in registers (zero past the sequence and past D)
        qf = cuda.local.array(QF_ALL, uint32)
        for mi in range(MT):
            for kk in range(QK_STEPS):
                for r in range(4):
                    rr, cc = _a_frag_rc(lane, r)
                    w = 8 * kk + (cc >> 1)
                    row = wrow0 + 16 * mi + rr
                    qf[QF_LEN * mi + 4 * kk + r] = U0
                    if row < sq and w < DW:
                        qf[QF_LEN * mi + 4 * kk + r] = q[q0 + row, h, w]

        acc = cuda.local.array(ACC_ALL, float32)
        for i in range(ACC_ALL):
            acc[i] = ZERO
        s = cuda.local.array(S_ALL, float32)
        c = cuda.local.array(C_LEN, float32)            # S accumulators of one n-tile pair
        a = cuda.local.array(A_LEN, uint32)             # P's A fragments of one k-step
        m = cuda.local.array(R2, float32)               # running max (base 2) per lane row
        el = cuda.local.array(R2, float32)              # per-lane partial row sums
        mx = cuda.local.array(R2, float32)
        base = cuda.local.array(R2, float32)
        alpha = cuda.local.array(R2, float32)
        for i in range(R2):
            m[i] = NEG_INF
            el[i] = ZERO

        for n0 in range(n_first, bhi + 1, BN):
            st = uint32(0)
            if STAGES == 2:
                st = uint32(((n0 - n_first) // BN) & 1) * uint32(STAGE_BYTES)
                ptx.cp_async_wait_all()
                cuda.syncthreads()      # tile j landed for all; tile j-1's stage is free
                if n0 + BN <= bhi:
                    nxt = uint32(STAGE_BYTES) - st
                    _load_tile(kb + nxt, kg, n0 + BN, k0, sk, hk, hkv, tid)
                    _load_tile(vb + nxt, vg, n0 + BN, k0, sk, hk, hkv, tid)
            else:
                ptx.cp_async_wait_all()
                cuda.syncthreads()      # K_j landed for all; V buffer free (P.V_{j-1} done)
                _load_tile(vb, vg, n0, k0, sk, hk, hkv, tid)
            active = has_rows and n0 <= whi_last and n0 + BN - 1 >= wlo_first
            if active:
                # S = Q K^T, base-2 scaled; each K fragment feeds 2 * MT mma
                kl = ptx.opaque_u32(k_lane + st)
                for p in range(S_TILES // 2):
                    for j in range(C_LEN):
                        c[j] = ZERO
                    for kk in range(QK_STEPS):
                        b0, b1, b2, b3 = ptx.ldmatrix_x4(kl + uint32(16 * p * RSB + 32 * kk))
                        for mi in range(MT):
                            f = QF_LEN * mi + 4 * kk
                            o = 8 * mi
                            d0, d1, d2, d3 = _mma(BF16, qf[f], qf[f + 1], qf[f + 2], qf[f + 3],
                                                  b0, b1, c[o], c[o + 1], c[o + 2], c[o + 3])
                            c[o], c[o + 1], c[o + 2], c[o + 3] = d0, d1, d2, d3
                            d0, d1, d2, d3 = _mma(BF16, qf[f], qf[f + 1], qf[f + 2], qf[f + 3],
                                                  b2, b3, c[o + 4], c[o + 5], c[o + 6], c[o + 7])
                            c[o + 4], c[o + 5], c[o + 6], c[o + 7] = d0, d1, d2, d3
                    for j in range(C_LEN):
                        s[S_LEN * (j >> 3) + 8 * p + (j & 7)] = c[j] * scale_log2

                # mask unless the tile lies inside the band of every row of the warp
                if not (wlo_last <= n0 and n0 + BN - 1 <= whi_first):
                    for i in range(R2):     # lane row row_a + 8 * i, recomputed here
                        lo, hi = key_range(row_a + 8 * i, sq, sk, left, right)
                        for nt in range(S_TILES):
                            for r in range(2 * (i & 1), 2 * (i & 1) + 2):
                                _, cc = _c_frag_rc(lane, r)
                                col = n0 + 8 * nt + cc
                                if col < lo or col > hi:
                                    s[S_LEN * (i >> 1) + 4 * nt + r] = NEG_INF

                # online softmax; a row is held by the 4 lanes of a quad
                for i in range(R2):
                    mx[i] = NEG_INF
                for nt in range(S_TILES):
                    for i in range(R2):
                        e = S_LEN * (i >> 1) + 4 * nt + 2 * (i & 1)
                        mx[i] = max(mx[i], max(s[e], s[e + 1]))
                for i in range(R2):
                    mx[i] = max(mx[i], cuda.shfl_xor_sync(0xFFFFFFFF, mx[i], 1))
                    mx[i] = max(mx[i], cuda.shfl_xor_sync(0xFFFFFFFF, mx[i], 2))
                    new = max(m[i], mx[i])
                    base[i] = ZERO if new == NEG_INF else new   # no -inf - -inf
                    alpha[i] = ptx.ex2(m[i] - base[i])
                    m[i] = new
                    mx[i] = ZERO                                # now: this tile's row sum
                for nt in range(S_TILES):
                    for mi in range(MT):
                        e = S_LEN * mi + 4 * nt
                        for r in range(4):
                            s[e + r] = ptx.ex2(s[e + r] - base[2 * mi + (r >> 1)])
                        mx[2 * mi] += s[e] + s[e + 1]
                        mx[2 * mi + 1] += s[e + 2] + s[e + 3]
                for i in range(R2):
                    el[i] = el[i] * alpha[i] + mx[i]        # reduced over the quad at the end
                for nt in range(O_TILES):
                    for j in range(A_LEN):
                        acc[ACC_LEN * (j >> 2) + 4 * nt + (j & 3)] *= alpha[j >> 1]

            if STAGES == 1:
                ptx.cp_async_wait_all()
                cuda.syncthreads()      # V_j landed for all; K buffer free (Q K_j^T done)
                if n0 + BN <= bhi:
                    _load_tile(kb, kg, n0 + BN, k0, sk, hk, hkv, tid)
            if active:
                # O += P V, P's A fragments packed from the S registers; each V fragment
                # feeds 2 * MT mma
                vl = ptx.opaque_u32(v_lane + st)
                for kk in range(PV_STEPS):
                    for mi in range(MT):
                        for r in range(4):
                            nt, cr = _p_from_s(kk, r)
                            e = S_LEN * mi + 4 * nt + cr
                            a[4 * mi + r] = _pack(BF16, s[e], s[e + 1])
                    for p in range(O_TILES // 2):
                        b0, b1, b2, b3 = ptx.ldmatrix_x4_trans(
                            vl + uint32(16 * kk * RSB + 32 * p))
                        for mi in range(MT):
                            f = 4 * mi
                            o = ACC_LEN * mi + 8 * p
                            d0, d1, d2, d3 = _mma(BF16, a[f], a[f + 1], a[f + 2], a[f + 3], b0,
                                                  b1, acc[o], acc[o + 1], acc[o + 2], acc[o + 3])
                            acc[o], acc[o + 1], acc[o + 2], acc[o + 3] = d0, d1, d2, d3
                            d0, d1, d2, d3 = _mma(BF16, a[f], a[f + 1], a[f + 2], a[f + 3], b2,
                                                  b3, acc[o + 4], acc[o + 5], acc[o + 6],
                                                  acc[o + 7])
                            acc[o + 4], acc[o + 5], acc[o + 6], acc[o + 7] = d0, d1, d2, d3

        # epilogue: full row sums; alpha becomes 1 / sum and base the lse, per lane row
        for i in range(R2):
            el[i] += cuda.shfl_xor_sync(0xFFFFFFFF, el[i], 1)
            el[i] += cuda.shfl_xor_sync(0xFFFFFFFF, el[i], 2)
            alpha[i], base[i] = finish_row(el[i], m[i])
        for mi in range(MT):
            ra = row_a + 16 * mi
            rb = ra + 8
            for nt in range(O_TILES):
                w = 4 * nt + t
                e = ACC_LEN * mi + 4 * nt
                if w < DW:
                    if ra < sq:
                        out[q0 + ra, h, w] = _pack(BF16, acc[e] * alpha[2 * mi],
                                                   acc[e + 1] * alpha[2 * mi])
                    if rb < sq:
                        out[q0 + rb, h, w] = _pack(BF16, acc[e + 2] * alpha[2 * mi + 1],
                                                   acc[e + 3] * alpha[2 * mi + 1])
        if t == 0:
            for i in range(R2):
                row = row_a + 8 * i
                if row < sq:
                    store_lse(lse, lse_batched, b, h, q0, row, base[i])

    return flash_tc_kernel
