"""dK/dV pass of the Hopper backward (sm_90a, warpgroup MMA): one warpgroup (128 threads) per
64-key tile of one KV head.

The K and V tiles of the block's keys stay in 128B-swizzled shared memory; the block loops
over the query heads of its GQA group and, per head, over the ``BM``-query tiles its keys'
band reaches (:func:`tile_range.query_rows`, tiles starting at the band's first row), Q and
dO tiles through a two-stage cp.async ring (tile j+1 in flight during tile j). Per tile,
with keys as the wgmma M dimension (warp ``w`` owns keys ``16w .. 16w+15``):

1. ``S^T = K Q^T`` and ``dP^T = V dO^T``: two groups of ``D / 16`` ``wgmma m64n{BM}k16``
   (A and B from shared memory), one commit, waited at once;
2. ``P^T = exp2(S^T scale_log2 - lse_log2[q])`` (masked to 0 outside each key's query rows
   unless every key sees the whole tile) and ``dS^T = P^T (dP^T - delta[q])``, per query
   column: the block stages the tile's lse and delta in shared memory (held in registers,
   they pushed the D = 128 kernel past 255 registers into spills);
3. ``dV += P^T dO`` and ``dK += dS^T Q``: ``BM / 16`` ``wgmma m64n{D}k16`` each, A from
   registers (P^T and dS^T packed), B = the dO and Q tiles read MN-major.

``dK *= scale`` at the end; keys past the sequence are not stored. Rows that see no key
have lse = -inf and are read as +inf, so their P is 0, as is P of query columns past the
sequence (their Q and dO rows are zero-filled).
"""
import functools

import numpy as np
from numba import config as numba_config
from numba import cuda, float32, types, uint32

from . import ptx_sm90 as px
from .bwd_tc_device import row_delta, row_lse_log2
from .bwd_wgmma_steps import THREADS, ZERO, steps
from .common import seq_span
from .mask import band_mask, wgmma_acc_rc
from .pipeline import ring, wait_for_tile
from .tile_range import query_rows

#: keys per block: the M of every wgmma of the pass
BLOCK_K = 64
#: FlashAttention-3's intra-warpgroup overlap in the tile loop (opt-in: ``overlapped``)
OVERLAP = False


@functools.lru_cache(maxsize=None)
def build_dkdv(head_size, kind, bm, overlap=OVERLAP):
    """The dK/dV kernel for ``head_size`` (64 or 128), ``kind`` ('f16' / 'bf16') and ``bm``
    queries per tile (a multiple of 64), two stages; ``overlap``: the tile of
    :func:`overlapped` instead of the plain one."""
    D, BM, OVERLAP_ = int(head_size), int(bm), bool(overlap)
    assert D % 64 == 0 and BM % 64 == 0 and BM <= 256
    st = steps(D, BM, kind)
    KT = 2 * BLOCK_K * D            # bytes of the K (or V) tile
    QT = 2 * BM * D                 # bytes of a Q (or dO) tile
    S_LEN = BM // 2
    O_LEN = D // 2
    A_LEN = 4 * (BM // 16)
    stage, _ = ring(2)
    cp_wait1 = wait_for_tile(1)
    wait0 = px.wgmma_wait(0)
    wait1 = px.wgmma_wait(1)
    mask = band_mask(wgmma_acc_rc, S_LEN)
    load_rows, load_pair, issue_ss, issue_rs = st.load_rows, st.load_pair, st.issue_ss, st.issue_rs
    pack, store, fence_c, fence_o = st.pack, st.store, st.fence_c, st.fence_o

    jit_kw = dict(cache=True)
    if not numba_config.ENABLE_CUDASIM:
        jit_kw["launch_bounds"] = (THREADS, 1)

    @cuda.jit(device=True, inline=True, cache=True)
    def stage_q(sK, j):
        """Shared address of tile j's Q; its dO follows at + QT."""
        return sK + uint32(2 * KT + stage(j) * 2 * QT)

    @cuda.jit(device=True, inline=True, cache=True)
    def overlapped(s, dp, pa, da, dka, dva, s_lq, s_dl, sK, sV, sQt, sOt, m0, masked, lane,
                   t, ra_lo, ra_hi, rb_lo, rb_hi, scale_log2):
        """One tile with FlashAttention-3's intra-warpgroup overlap: S^T and dP^T in two
        groups, P^T computed while dP^T runs, dV += P^T dO issued before dS^T is computed,
        dK += dS^T Q last; one wait for all at the end."""
        # ---- S^T, then dP^T: two groups
        px.wgmma_fence()
        issue_ss(s, sK, sQt)
        px.wgmma_commit()
        issue_ss(dp, sV, sOt)
        px.wgmma_commit()
        wait1()                         # S^T landed; dP^T may still run
        fence_c(s)
        # ---- P^T while dP^T runs
        if masked:
            mask(s, m0, lane, ra_lo, ra_hi, rb_lo, rb_hi)
        for c4 in range(S_LEN // 4):
            for e in range(2):
                lqv = s_lq[8 * c4 + 2 * t + e]
                for half in range(2):
                    i = 4 * c4 + 2 * half + e
                    s[i] = px.ex2(s[i] * scale_log2 - lqv)
        pack(s, pa)
        fence_o(dva)
        # ---- dV += P^T dO, issued before dS^T exists
        px.wgmma_fence()
        issue_rs(dva, pa, sOt)
        px.wgmma_commit()
        wait1()                         # dP^T landed; dV may still run
        fence_c(dp)
        # ---- dS^T while dV runs, then dK += dS^T Q
        for c4 in range(S_LEN // 4):
            for e in range(2):
                dlv = s_dl[8 * c4 + 2 * t + e]
                for half in range(2):
                    i = 4 * c4 + 2 * half + e
                    dp[i] = s[i] * (dp[i] - dlv)
        pack(dp, da)
        fence_o(dka)
        px.wgmma_fence()
        issue_rs(dka, da, sQt)
        px.wgmma_commit()
        wait0()
        fence_o(dva)
        fence_o(dka)

    @cuda.jit(**jit_kw)
    def bwd_wgmma_dkdv_kernel(dout, q, k, v, lse, delta, dk, dv, cu_q, cu_k, scale_log2,
                              scale, left, right, lse_batched):
        """dout, q, k, v: uint16 (total, heads, D); lse float32; delta float32 (H, total_q);
        dk, dv: uint32 (total_k, Hkv, D/2). Block (x, y, z) = (keys x*64.., KV head y,
        sequence z)."""
        tid = cuda.threadIdx.x
        warp = tid >> 5
        lane = tid & 31
        t = lane & 3
        hk = cuda.blockIdx.y
        b = cuda.blockIdx.z
        k0, sk = seq_span(cu_k, b)
        n0 = cuda.blockIdx.x * BLOCK_K
        if n0 >= sk:
            return
        q0, sq = seq_span(cu_q, b)
        nh = q.shape[1]
        nkv = k.shape[1]
        group = nh // nkv

        smem = cuda.shared.array(0, types.uint8)
        sK = (px.smem_addr(smem) + uint32(1023)) & uint32(0xFFFFFC00)
        sV = sK + uint32(KT)
        qbase = px.data_ptr(q)
        obase = px.data_ptr(dout)

        # the query rows any key of the block sees, and those every key sees (no mask)
        kend = min(n0 + BLOCK_K, sk) - 1
        i_lo, f_hi = query_rows(n0, n0, sq, sk, left, right)
        f_lo, i_hi = query_rows(kend, kend, sq, sk, left, right)
        ntiles = 0
        if i_lo <= i_hi:
            ntiles = (i_hi - i_lo) // BM + 1
        total = group * ntiles
        # this thread's two keys (rows of the accumulators) and their query rows
        key_a = n0 + 16 * warp + (lane >> 2)
        key_b = key_a + 8
        ra_lo, ra_hi = query_rows(min(key_a, sk - 1), min(key_a, sk - 1), sq, sk, left, right)
        rb_lo, rb_hi = query_rows(min(key_b, sk - 1), min(key_b, sk - 1), sq, sk, left, right)

        dka = cuda.local.array(O_LEN, float32)
        dva = cuda.local.array(O_LEN, float32)
        for i in range(O_LEN):
            dka[i] = ZERO
            dva[i] = ZERO
        s = cuda.local.array(S_LEN, float32)
        dp = cuda.local.array(S_LEN, float32)
        # lse (base 2) and delta of the tile's query columns, staged by the block
        s_lq = cuda.shared.array(BM, float32)
        s_dl = cuda.shared.array(BM, float32)
        pa = cuda.local.array(A_LEN, uint32)
        da = cuda.local.array(A_LEN, uint32)

        if total > 0:
            # K, V and tile 0: cp.async group 0
            load_rows(px.data_ptr(k), sK, n0, k0, sk, hk, nkv, tid)
            load_rows(px.data_ptr(v), sV, n0, k0, sk, hk, nkv, tid)
            load_pair(qbase, obase, stage_q(sK, 0), i_lo, q0, sq, hk * group, nh, tid)
            px.cp_async_commit()

        for it in range(total):
            h = hk * group + it // ntiles
            m0 = i_lo + (it % ntiles) * BM
            # ---- load: tile it + 1 into the other stage (freed at the end of tile it - 1)
            if it + 1 < total:
                load_pair(qbase, obase, stage_q(sK, it + 1), i_lo + ((it + 1) % ntiles) * BM,
                          q0, sq, hk * group + (it + 1) // ntiles, nh, tid)
            px.cp_async_commit()        # possibly empty: keeps the group count uniform
            # lse (base 2) and delta of the tile's columns, staged while tile it lands (their
            # readers of tile it - 1 passed the barrier that ended it)
            for c in range(tid, 2 * BM, THREADS):
                if c < BM:
                    s_lq[c] = row_lse_log2(lse, lse_batched, b, h, q0, m0 + c, sq)
                else:
                    s_dl[c - BM] = row_delta(delta, h, q0, m0 + c - BM, sq)
            cp_wait1()                  # all but the newest group: tile it (and K, V) landed
            px.fence_proxy_async()
            cuda.syncthreads()
            sQt = stage_q(sK, it)
            sOt = sQt + uint32(QT)
            if OVERLAP_:
                overlapped(s, dp, pa, da, dka, dva, s_lq, s_dl, sK, sV, sQt, sOt, m0,
                           not (f_lo <= m0 and m0 + BM - 1 <= f_hi), lane, t, ra_lo, ra_hi,
                           rb_lo, rb_hi, scale_log2)
            else:
                # ---- S^T = K Q^T, dP^T = V dO^T
                px.wgmma_fence()
                issue_ss(s, sK, sQt)
                issue_ss(dp, sV, sOt)
                px.wgmma_commit()
                wait0()
                fence_c(s)
                fence_c(dp)
                # ---- P^T and dS^T
                if not (f_lo <= m0 and m0 + BM - 1 <= f_hi):
                    mask(s, m0, lane, ra_lo, ra_hi, rb_lo, rb_hi)
                for c4 in range(S_LEN // 4):
                    for e in range(2):
                        col = 8 * c4 + 2 * t + e       # register 4 c4 + e: key a, + 2: key b
                        lqv = s_lq[col]
                        dlv = s_dl[col]
                        for half in range(2):
                            i = 4 * c4 + 2 * half + e
                            pv = px.ex2(s[i] * scale_log2 - lqv)
                            s[i] = pv
                            dp[i] = pv * (dp[i] - dlv)
                pack(s, pa)
                pack(dp, da)
                fence_o(dva)
                fence_o(dka)
                # ---- dV += P^T dO, dK += dS^T Q
                px.wgmma_fence()
                issue_rs(dva, pa, sOt)
                issue_rs(dka, da, sQt)
                px.wgmma_commit()
                wait0()
                fence_o(dva)
                fence_o(dka)
            cuda.syncthreads()          # stage (it mod 2) is free for tile it + 2

        # nothing is in flight here: the last group waited for was the newest but one, empty
        store(dka, dk, key_a - n0, key_b - n0, sk - n0, k0 + n0, hk, t, scale)
        store(dva, dv, key_a - n0, key_b - n0, sk - n0, k0 + n0, hk, t, np.float32(1.0))

    return bwd_wgmma_dkdv_kernel
