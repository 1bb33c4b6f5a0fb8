"""dK/dV pass of the tensor-core backward: one block per ``BNK``-key tile of one KV head.

Warp ``w`` owns keys ``n0 + 16 * (w // DSPLIT) ..`` (the mma M dimension) and the head-size
slice ``w % DSPLIT`` of their dK and dV accumulators. The block loops over the query heads of
its GQA group and, per head, over the ``BM``-query tiles that its keys' band reaches
(:func:`tile_range.query_rows`); Q and dO tiles come through a two-stage cp.async pipeline
(tile j+1 in flight during tile j's work; one stage as a variant). Per tile (see
:mod:`bwd_tc_layout` for the fragment maps):

``S^T = K Q^T``, ``P^T = exp2(S^T scale_log2 - lse_log2)``, ``dP^T = V dO^T``,
``dS^T = P^T (dP^T - delta)``, ``dV += P^T dO``, ``dK += dS^T Q``; ``dK *= scale`` at the end.

Rows that see no key have lse = -inf; their P is 0 (lse_log2 is taken as +inf), as is P of
query columns past the sequence.

``atomic=True`` (``deterministic=False``): after a tile's dV / dK products the warps store
dS^T to shared memory and add the tile's ``dS K`` into the fp32 ``dq_accum`` with
``red.global.add.f32`` (:func:`dq_atomic_tile`); the default kernel's code is the same body
with that branch compiled out.
"""
import functools

from numba import config as numba_config
from numba import cuda, float32, uint8, uint32, uint64

from . import ptx
from .bwd_tc_device import (NEG_INF, ZERO, _a_ldsm_rc, mma_pair, pack_a, row_delta,
                            row_lse_log2, scores_loop)
from .bwd_tc_layout import WARPS, ds_ldsm_rc, ds_row_bytes, dsplit, padded, row_bytes
from .bwd_tc_ptx import red_add_f32, st_shared_u32
from .common import seq_span
from .tile_range import query_rows
from .v4_device import _c_frag_rc, _k_ldsm_rc, _pack, _v_ldsm_rc, tile_loader

_ds_ldsm_rc = cuda.jit(device=True, inline=True, cache=True)(ds_ldsm_rc)


def build_dkdv(head_size, bf16, bnk, bm, nstages, atomic=False):
    """The dK/dV kernel for ``head_size``, fp16 or ``bf16``, ``bnk`` keys per block (16 per
    warp group of :func:`bwd_tc_layout.dsplit` warps), ``bm`` queries per tile and ``nstages``
    (1 or 2) Q/dO pipeline stages; lru-cached per configuration. ``atomic``: the variant that
    also adds ``dS K`` into the fp32 ``dq_accum`` (an extra argument after ``dv``)."""
    return _build_dkdv(int(head_size), bool(bf16), int(bnk), int(bm), int(nstages),
                       bool(atomic))


@functools.lru_cache(maxsize=None)
def _build_dkdv(head_size, bf16, bnk, bm, nstages, atomic):
    D = head_size
    D16 = padded(D)
    DS = dsplit(D)
    NW = WARPS
    NT = 32 * NW
    assert bnk == 16 * NW // DS and bm % 16 == 0 and nstages in (1, 2)
    BNK, BM, STAGES, BF16 = bnk, bm, nstages, bf16
    RSB = row_bytes(D)
    DW = D // 2
    QK_STEPS = D16 // 16             # k-steps of the contractions over the head size
    S_TILES = BM // 8                # query n-tiles of S^T and dP^T
    S_LEN = 4 * S_TILES
    L_LEN = 2 * S_TILES
    PV_STEPS = BM // 16              # k-steps of dV / dK over the tile's queries
    PAIRS = D16 // 16                # 16-column pairs of n-tiles over the head size
    SLP = -(-PAIRS // DS)            # ... of one warp's slice
    ACC_LEN = 8 * SLP
    KV_BYTES = BNK * RSB
    TILE_BYTES = BM * RSB
    STAGE_BYTES = 2 * TILE_BYTES
    load_kv = tile_loader(D, BNK, NT)
    load_q = tile_loader(D, BM, NT)
    scores = scores_loop(QK_STEPS, S_TILES, RSB)
    ATOMIC = atomic
    DSR = ds_row_bytes(BM)
    dq_tile = dq_atomic_tile(D, BF16, BNK, BM, RSB, DSR)

    jit_kw = dict(cache=True)
    if not numba_config.ENABLE_CUDASIM:
        jit_kw["launch_bounds"] = (NT,)

    @cuda.jit(device=True, inline=True, cache=True)
    def store_ds(dsb, dp, act, kgrp, lane, ok_a, ok_b):
        """This warp's 16 keys of dS^T as packed 16-bit pairs (row key, columns 2t, 2t+1 of
        each query n-tile), zeros where the warp was idle or the key is past the sequence."""
        g = lane >> 2
        t = lane & 3
        for nt in range(S_TILES):
            wa = uint32(0)
            wb = uint32(0)
            if act:
                if ok_a:
                    wa = _pack(BF16, dp[4 * nt], dp[4 * nt + 1])
                if ok_b:
                    wb = _pack(BF16, dp[4 * nt + 2], dp[4 * nt + 3])
            addr = dsb + uint32((16 * kgrp + g) * DSR + 16 * nt + 4 * t)
            st_shared_u32(addr, wa)
            st_shared_u32(addr + uint32(8 * DSR), wb)

    @cuda.jit(device=True, inline=True, cache=True)
    def dkdv_body(dout, q, k, v, lse, delta, dk, dv, dq_accum, cu_q, cu_k, scale_log2, scale,
                  left, right, lse_batched):
        """The kernel (both variants); ``dq_accum`` is only touched when ATOMIC."""
        tid = cuda.threadIdx.x
        warp = tid >> 5
        lane = tid & 31
        t = lane & 3
        kgrp = warp // DS
        ds = warp % DS
        hk = cuda.blockIdx.y
        b = cuda.blockIdx.z
        k0, sk = seq_span(cu_k, b)
        n0 = cuda.blockIdx.x * BNK
        if n0 >= sk:
            return
        q0, sq = seq_span(cu_q, b)
        nh = q.shape[1]
        hkv = k.shape[1]
        group = nh // hkv

        smem = cuda.shared.array(0, uint8)
        kb = ptx.smem_u32(smem)
        vb = kb + uint32(KV_BYTES)
        qb = vb + uint32(KV_BYTES)
        ob = qb + uint32(TILE_BYTES)
        dsb = qb + uint32(STAGES * STAGE_BYTES)     # atomic variant: dS^T (BNK x BM)
        qg = ptx.gaddr(q)
        og = ptx.gaddr(dout)
        load_kv(kb, ptx.gaddr(k), n0, k0, sk, hk, hkv, tid)
        load_kv(vb, ptx.gaddr(v), n0, k0, sk, hk, hkv, tid)

        # the block's query rows, this warp's (both bounds are non-decreasing in the key)
        kend = min(n0 + BNK, sk) - 1
        i_lo, _ = query_rows(n0, n0, sq, sk, left, right)
        _, i_hi = query_rows(kend, kend, sq, sk, left, right)
        wk0 = n0 + 16 * kgrp
        has_keys = wk0 < sk
        wlast = min(wk0 + 15, sk - 1)
        wf_lo, wf_hi = query_rows(wk0, wk0, sq, sk, left, right)
        wl_lo, wl_hi = query_rows(wlast, wlast, sq, sk, left, right)
        key_a = wk0 + (lane >> 2)
        key_b = key_a + 8
        ra_lo, ra_hi = query_rows(min(key_a, sk - 1), min(key_a, sk - 1), sq, sk, left, right)
        rb_lo, rb_hi = query_rows(min(key_b, sk - 1), min(key_b, sk - 1), sq, sk, left, right)

        m_first = (i_lo // BM) * BM
        ntiles = 0
        if i_lo <= i_hi:
            ntiles = (i_hi - m_first) // BM + 1
        total = group * ntiles
        if total > 0:
            load_q(qb, qg, m_first, q0, sq, hk * group, nh, tid)
            load_q(ob, og, m_first, q0, sq, hk * group, nh, tid)

        # per-lane ldmatrix offsets (tile rows and columns; k-steps and pairs add constants)
        ar, ac = _a_ldsm_rc(lane, 0)
        a_off = uint32((16 * kgrp + ar) * RSB + 2 * ac)
        br, bc = _k_ldsm_rc(lane, 0, 0)
        b_off = uint32(br * RSB + 2 * bc)
        tr, tc = _v_ldsm_rc(lane, 0, 0)
        t_off = uint32(tr * RSB + 2 * tc)

        dka = cuda.local.array(ACC_LEN, float32)
        dva = cuda.local.array(ACC_LEN, float32)
        for i in range(ACC_LEN):
            dka[i] = ZERO
            dva[i] = ZERO
        s = cuda.local.array(S_LEN, float32)
        dp = cuda.local.array(S_LEN, float32)
        lq = cuda.local.array(L_LEN, float32)
        dl = cuda.local.array(L_LEN, float32)

        for it in range(total):
            h = hk * group + it // ntiles
            m0 = m_first + (it % ntiles) * BM
            st = uint32(0)
            if STAGES == 2:
                st = uint32(it & 1) * uint32(STAGE_BYTES)
            ptx.cp_async_wait_all()
            cuda.syncthreads()          # tile it landed for all; tile it-1's stage is free
            if STAGES == 2 and it + 1 < total:
                nxt = uint32(STAGE_BYTES) - st
                h1 = hk * group + (it + 1) // ntiles
                m1 = m_first + ((it + 1) % ntiles) * BM
                load_q(qb + nxt, qg, m1, q0, sq, h1, nh, tid)
                load_q(ob + nxt, og, m1, q0, sq, h1, nh, tid)
            act = has_keys and m0 <= wl_hi and m0 + BM - 1 >= wf_lo
            if act:
                for nt in range(S_TILES):
                    col = m0 + 8 * nt + 2 * t
                    lq[2 * nt] = row_lse_log2(lse, lse_batched, b, h, q0, col, sq)
                    lq[2 * nt + 1] = row_lse_log2(lse, lse_batched, b, h, q0, col + 1, sq)
                    dl[2 * nt] = row_delta(delta, h, q0, col, sq)
                    dl[2 * nt + 1] = row_delta(delta, h, q0, col + 1, sq)
                # S^T = K Q^T and dP^T = V dO^T (keys x queries)
                scores(BF16, ptx.opaque_u32(kb + a_off), ptx.opaque_u32(qb + st + b_off), s,
                       ptx.opaque_u32(vb + a_off), ptx.opaque_u32(ob + st + b_off), dp)
                # P^T (masked outside each key's rows unless every key sees the whole tile)
                full = wl_lo <= m0 and m0 + BM - 1 <= wf_hi
                for nt in range(S_TILES):
                    for r in range(4):
                        rr, cc = _c_frag_rc(lane, r)
                        col = m0 + 8 * nt + cc
                        x = s[4 * nt + r] * scale_log2 - lq[2 * nt + (r & 1)]
                        if not full:
                            if rr < 8:
                                if col < ra_lo or col > ra_hi:
                                    x = NEG_INF
                            else:
                                if col < rb_lo or col > rb_hi:
                                    x = NEG_INF
                        pv = ptx.ex2(x)
                        s[4 * nt + r] = pv
                        dp[4 * nt + r] = pv * (dp[4 * nt + r] - dl[2 * nt + (r & 1)])
                # dV += P^T dO, dK += dS^T Q over the tile's queries (B through ldmatrix.trans)
                ot = ptx.opaque_u32(ob + st + t_off)
                qt = ptx.opaque_u32(qb + st + t_off)
                for kk in range(PV_STEPS):
                    p0, p1, p2, p3 = pack_a(BF16, s, kk)
                    e0, e1, e2, e3 = pack_a(BF16, dp, kk)
                    for p in range(SLP):
                        pp = ds * SLP + p
                        if pp < PAIRS:
                            off = uint32(16 * kk * RSB + 32 * pp)
                            b0, b1, b2, b3 = ptx.ldmatrix_x4_trans(ot + off)
                            mma_pair(BF16, p0, p1, p2, p3, b0, b1, b2, b3, dva, 8 * p)
                            b0, b1, b2, b3 = ptx.ldmatrix_x4_trans(qt + off)
                            mma_pair(BF16, e0, e1, e2, e3, b0, b1, b2, b3, dka, 8 * p)
            if ATOMIC:
                # dS^T to shared memory (0 for idle warps and keys past sk), then dQ += dS K
                if ds == 0:
                    store_ds(dsb, dp, act, kgrp, lane, key_a < sk, key_b < sk)
                cuda.syncthreads()
                dq_tile(dq_accum, dsb, kb, warp, lane, m0, q0, sq, h, nh)
            if STAGES == 1:
                cuda.syncthreads()      # everyone is done with the tile before it is replaced
                if it + 1 < total:
                    h1 = hk * group + (it + 1) // ntiles
                    m1 = m_first + ((it + 1) % ntiles) * BM
                    load_q(qb, qg, m1, q0, sq, h1, nh, tid)
                    load_q(ob, og, m1, q0, sq, h1, nh, tid)

        ptx.cp_async_wait_all()        # nothing in flight at exit (empty loops)
        # epilogue: 16-bit pairs of dK (scaled) and dV for this warp's keys and slice
        for p in range(SLP):
            pp = ds * SLP + p
            for j in range(2):
                w = 4 * (2 * pp + j) + t
                i = 8 * p + 4 * j
                if pp < PAIRS and w < DW:
                    if key_a < sk:
                        dk[k0 + key_a, hk, w] = _pack(BF16, dka[i] * scale, dka[i + 1] * scale)
                        dv[k0 + key_a, hk, w] = _pack(BF16, dva[i], dva[i + 1])
                    if key_b < sk:
                        dk[k0 + key_b, hk, w] = _pack(BF16, dka[i + 2] * scale,
                                                      dka[i + 3] * scale)
                        dv[k0 + key_b, hk, w] = _pack(BF16, dva[i + 2], dva[i + 3])

    if ATOMIC:
        @cuda.jit(**jit_kw)
        def bwd_tc_dkdv_atomic_kernel(dout, q, k, v, lse, delta, dk, dv, dq_accum, cu_q, cu_k,
                                      scale_log2, scale, left, right, lse_batched):
            """As ``bwd_tc_dkdv_kernel``, plus ``dq_accum`` float32 (total_q, H, D) += dS K
            (unscaled) through ``red.global.add.f32``."""
            dkdv_body(dout, q, k, v, lse, delta, dk, dv, dq_accum, cu_q, cu_k, scale_log2,
                      scale, left, right, lse_batched)
        return bwd_tc_dkdv_atomic_kernel

    @cuda.jit(**jit_kw)
    def bwd_tc_dkdv_kernel(dout, q, k, v, lse, delta, dk, dv, cu_q, cu_k, scale_log2, scale,
                           left, right, lse_batched):
        """dout, q, k, v: 16-bit (total, heads, D); lse float32; delta float32 (H, total_q);
        dk, dv: uint32 (total_k, Hkv, D/2). Block (x, y, z) = (keys x*BNK.., KV head y,
        sequence z)."""
        dkdv_body(dout, q, k, v, lse, delta, dk, dv, delta, cu_q, cu_k, scale_log2, scale,
                  left, right, lse_batched)

    return bwd_tc_dkdv_kernel


def dq_atomic_tile(head_size, bf16, bnk, bm, rsb, dsr):
    """Device function ``dq_tile(dq_accum, dsb, kb, warp, lane, m0, q0, sq, h, nh)`` of the
    atomic variant: ``dq_accum[q0 + m0 .., h, :] += dS K`` for one query tile, from the dS^T
    tile at shared ``dsb`` (``bnk`` keys x ``bm`` queries, ``dsr`` bytes per key) and the
    block's K tile at ``kb`` (``rsb`` bytes per key).

    The (16-query m-tile, 16-column pair) units of the tile's output are dealt to the
    warps round-robin; a unit is ``bnk / 16`` k-steps of two mma (A = dS through
    ``ldmatrix.trans`` at :func:`bwd_tc_layout.ds_ldsm_rc`, B = K through ``ldmatrix.trans``
    as Q in dK += dS^T Q) from zero, then 8 ``red.global.add.f32`` per lane at the C
    fragment's (row, column)s: no two threads of a block add to one address in a tile."""
    D, BF16, RSB, DSR = head_size, bf16, rsb, dsr
    MT = bm // 16
    PAIRS = padded(D) // 16
    UNITS = MT * PAIRS
    UPW = -(-UNITS // WARPS)
    KQ = bnk // 16

    @cuda.jit(device=True, inline=True, cache=True)
    def dq_tile(dq_accum, dsb, kb, warp, lane, m0, q0, sq, h, nh):
        g = lane >> 2
        t = lane & 3
        dr, dc = _ds_ldsm_rc(lane, 0, 0)
        a_base = ptx.opaque_u32(dsb + uint32(dr * DSR + 2 * dc))
        tr, tc = _v_ldsm_rc(lane, 0, 0)
        b_base = ptx.opaque_u32(kb + uint32(tr * RSB + 2 * tc))
        gbase = ptx.gaddr(dq_accum)
        acc = cuda.local.array(8, float32)
        for j in range(UPW):
            u = warp + WARPS * j
            if u < UNITS:
                mq = u % MT
                p = u // MT
                for i in range(8):
                    acc[i] = ZERO
                for kk in range(KQ):
                    a0, a1, a2, a3 = ptx.ldmatrix_x4_trans(
                        a_base + uint32(16 * kk * DSR) + uint32(32 * mq))
                    b0, b1, b2, b3 = ptx.ldmatrix_x4_trans(
                        b_base + uint32(16 * kk * RSB) + uint32(32 * p))
                    mma_pair(BF16, a0, a1, a2, a3, b0, b1, b2, b3, acc, 0)
                row = m0 + 16 * mq + g
                for jj in range(2):
                    col = 16 * p + 8 * jj + 2 * t
                    if col < D:
                        for half in range(2):
                            r = row + 8 * half
                            if r < sq:
                                off = uint64(((q0 + r) * nh + h) * D + col) * uint64(4)
                                red_add_f32(gbase + off, acc[4 * jj + 2 * half])
                                red_add_f32(gbase + off + uint64(4), acc[4 * jj + 2 * half + 1])
    return dq_tile
