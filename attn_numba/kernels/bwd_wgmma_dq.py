"""dQ pass of the Hopper backward (sm_90a, warpgroup MMA): one warpgroup (128 threads) per
64 query rows, deterministic (each dQ element is summed by one thread in a fixed order).

The rows are packed as the forward's (:mod:`v5_flash_wgmma`): ``HB`` query heads of one GQA
group x ``64 / HB`` positions, so one K/V tile serves the ``HB`` heads. Q and dO of the
rows stay in 128B-swizzled shared memory; the block walks the key tiles of its band
(:func:`tile_range.key_tiles`, starting at the band's first key) with K and V through a
two-stage cp.async ring. Per tile of ``BN`` keys:

1. ``S = Q K^T`` and ``dP = dO V^T``: two groups of ``D / 16`` ``wgmma m64n{BN}k16``;
2. ``P = exp2(S scale_log2 - lse_log2[row])`` (the band's partial tiles masked,
   :func:`tile_range.full_key_tiles`) and ``dS = P (dP - delta[row])``;
3. ``dQ += dS K``: ``BN / 16`` ``wgmma m64n{D}k16``, dS from registers, K read MN-major
   (the forward's P V with K in V's place).

``dQ *= scale`` at the end. S and dP are recomputed here rather than stored by the dK/dV
pass: nothing of size seqlen x seqlen exists.
"""
import functools

from numba import config as numba_config
from numba import cuda, float32, types, uint32

from . import ptx_sm90 as px
from .bwd_tc_device import row_delta, row_lse_log2
from .bwd_wgmma_steps import THREADS, ZERO, steps
from .common import key_range, seq_span
from .mask import band_mask, wgmma_acc_rc
from .pipeline import ring, wait_for_tile
from .tile_range import full_key_tiles, key_tiles

BLOCK_M = 64


@functools.lru_cache(maxsize=None)
def build_dq(head_size, kind, heads, bn):
    """The dQ kernel for ``head_size`` (64 or 128), ``kind`` ('f16' / 'bf16'), ``heads`` query
    heads per block (1, 2 or 4) and ``bn`` keys per tile (a multiple of 64), two stages."""
    D, HB, BN = int(head_size), int(heads), int(bn)
    assert D % 64 == 0 and BN % 64 == 0 and BN <= 256 and HB in (1, 2, 4)
    PB = BLOCK_M // HB
    st = steps(D, BN, kind, HB)
    QT = 2 * BLOCK_M * D            # bytes of the Q (or dO) tile
    KV_BYTES = 2 * BN * D           # bytes of a K (or V) tile
    S_LEN = BN // 2
    O_LEN = D // 2
    A_LEN = 4 * (BN // 16)
    stage, _ = ring(2)
    cp_wait1 = wait_for_tile(1)
    wait0 = px.wgmma_wait(0)
    mask = band_mask(wgmma_acc_rc, S_LEN)
    load_rows, load_pair, issue_ss, issue_rs = st.load_rows, st.load_pair, st.issue_ss, st.issue_rs
    pack, store, fence_c, fence_o = st.pack, st.store, st.fence_c, st.fence_o

    jit_kw = dict(cache=True)
    if not numba_config.ENABLE_CUDASIM:
        jit_kw["launch_bounds"] = (THREADS, 1)

    @cuda.jit(device=True, inline=True, cache=True)
    def stage_k(sQ, j):
        """Shared address of tile j's K; its V follows at + KV_BYTES."""
        return sQ + uint32(2 * QT + stage(j) * 2 * KV_BYTES)

    @cuda.jit(**jit_kw)
    def bwd_wgmma_dq_kernel(dout, q, k, v, lse, delta, dq, cu_q, cu_k, scale_log2, scale,
                            left, right, lse_batched):
        """dout, q, k, v: uint16 (total, heads, D); lse float32; delta float32 (H, total_q);
        dq: uint32 (total_q, H, D/2). Block (x, y, z) = (positions x*PB.., heads y*HB..,
        sequence z)."""
        tid = cuda.threadIdx.x
        warp = tid >> 5
        lane = tid & 31
        t = lane & 3
        b = cuda.blockIdx.z
        q0, sq = seq_span(cu_q, b)
        row0 = cuda.blockIdx.x * PB
        if row0 >= sq:
            return
        k0, sk = seq_span(cu_k, b)
        nh = q.shape[1]
        nkv = k.shape[1]
        hbase = cuda.blockIdx.y * HB
        hkv = hbase // (nh // nkv)

        smem = cuda.shared.array(0, types.uint8)
        sQ = (px.smem_addr(smem) + uint32(1023)) & uint32(0xFFFFFC00)
        sO = sQ + uint32(QT)
        kbase = px.data_ptr(k)
        vbase = px.data_ptr(v)

        last = min(row0 + PB, sq) - 1
        n_first, n_end = key_tiles(row0, last, sq, sk, left, right, 1)
        f_lo, f_hi = full_key_tiles(row0, last, sq, sk, left, right, 1)
        ntiles = (n_end - n_first + BN - 1) // BN

        # this thread's rows: warp w has rows 16w..16w+15 = one head
        hw = hbase + (16 * warp) // PB
        pos_a = row0 + (16 * warp) % PB + (lane >> 2)
        pos_b = pos_a + 8
        lo_a, hi_a = key_range(pos_a, sq, sk, left, right)
        lo_b, hi_b = key_range(pos_b, sq, sk, left, right)
        lq_a = row_lse_log2(lse, lse_batched, b, hw, q0, pos_a, sq)
        lq_b = row_lse_log2(lse, lse_batched, b, hw, q0, pos_b, sq)
        dl_a = row_delta(delta, hw, q0, pos_a, sq)
        dl_b = row_delta(delta, hw, q0, pos_b, sq)

        dqa = cuda.local.array(O_LEN, float32)
        for i in range(O_LEN):
            dqa[i] = ZERO
        s = cuda.local.array(S_LEN, float32)
        dp = cuda.local.array(S_LEN, float32)
        da = cuda.local.array(A_LEN, uint32)

        if ntiles > 0:
            # Q, dO and K/V tile 0: cp.async group 0
            load_rows(px.data_ptr(q), sQ, row0, q0, sq, hbase, nh, tid)
            load_rows(px.data_ptr(dout), sO, row0, q0, sq, hbase, nh, tid)
            load_pair(kbase, vbase, stage_k(sQ, 0), n_first, k0, sk, hkv, nkv, tid)
            px.cp_async_commit()

        for j in range(ntiles):
            n0 = n_first + j * BN
            # ---- load: tile j + 1 into the other stage (freed at the end of tile j - 1)
            if j + 1 < ntiles:
                load_pair(kbase, vbase, stage_k(sQ, j + 1), n0 + BN, k0, sk, hkv, nkv, tid)
            px.cp_async_commit()        # possibly empty: keeps the group count uniform
            cp_wait1()                  # all but the newest group: tile j (and Q, dO) landed
            px.fence_proxy_async()
            cuda.syncthreads()
            sKt = stage_k(sQ, j)
            # ---- S = Q K^T, dP = dO V^T
            px.wgmma_fence()
            issue_ss(s, sQ, sKt)
            issue_ss(dp, sO, sKt + uint32(KV_BYTES))
            px.wgmma_commit()
            wait0()
            fence_c(s)
            fence_c(dp)
            # ---- dS = P (dP - delta), P from the forward's lse
            if not (f_lo <= n0 and n0 + BN <= f_hi):
                mask(s, n0, lane, lo_a, hi_a, lo_b, hi_b)
            for i in range(S_LEN):
                if (i >> 1) & 1 == 0:
                    dp[i] = px.ex2(s[i] * scale_log2 - lq_a) * (dp[i] - dl_a)
                else:
                    dp[i] = px.ex2(s[i] * scale_log2 - lq_b) * (dp[i] - dl_b)
            pack(dp, da)
            fence_o(dqa)
            # ---- dQ += dS K
            px.wgmma_fence()
            issue_rs(dqa, da, sKt)
            px.wgmma_commit()
            wait0()
            fence_o(dqa)
            cuda.syncthreads()          # stage (j mod 2) is free for tile j + 2

        store(dqa, dq, pos_a, pos_b, sq, q0, hw, t, scale)

    return bwd_wgmma_dq_kernel
