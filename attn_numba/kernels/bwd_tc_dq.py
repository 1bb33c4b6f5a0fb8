"""dQ pass and preprocess of the tensor-core backward.

* ``bwd_tc_delta_kernel``: ``delta[h, row] = sum_d dO[row, h, d] * O[row, h, d]`` in fp32,
  one warp per (row, head).
* ``bwd_tc_dq_kernel``: one block per ``BMQ``-query tile (16 queries per warp, the mma M
  dimension) of one head, over the key tiles its band reaches (:func:`tile_range.key_tiles`),
  K and V tiles through a two-stage cp.async pipeline; Q and dO stay in shared memory for the
  whole block (A fragments through ``ldmatrix``, :func:`bwd_tc_layout.a_ldsm_rc`). Per tile:
  ``S = Q K^T``, ``P = exp2(S scale_log2 - lse_log2)``, ``dP = dO V^T``,
  ``dS = P (dP - delta)``, ``dQ += dS K``; ``dQ *= scale`` at the end. Deterministic: each
  dQ element is summed by one thread in a fixed order, no atomics.
"""
import functools

from numba import config as numba_config
from numba import cuda, float32, uint8, uint32

from . import ptx
from .bwd_tc_device import (NEG_INF, ZERO, _a_ldsm_rc, mma_pair, pack_a, row_delta,
                            row_lse_log2, scores_loop)
from .bwd_tc_layout import WARPS, padded, row_bytes
from .bwd_tc_ptx import unpack_bf16x2, unpack_f16x2
from .common import key_range, seq_span
from .tile_range import full_key_tiles, key_tiles
from .v4_device import _c_frag_rc, _k_ldsm_rc, _pack, _v_ldsm_rc, tile_loader

#: warps per block of the preprocess (one (row, head) each)
DELTA_WARPS = 8


@cuda.jit(device=True, inline=True, cache=True)
def _dot2(bf16, x, y):
    """x . y of two packed 16-bit pairs, in fp32."""
    if bf16:
        x0, x1 = unpack_bf16x2(x)
        y0, y1 = unpack_bf16x2(y)
    else:
        x0, x1 = unpack_f16x2(x)
        y0, y1 = unpack_f16x2(y)
    return x0 * y0 + x1 * y1


@functools.lru_cache(maxsize=None)
def build_delta(head_size, bf16):
    """The preprocess kernel ``delta = rowsum(dO * O)`` for ``head_size``, fp16 or ``bf16``."""
    DW = head_size // 2
    BF16 = bool(bf16)
    NT = 32 * DELTA_WARPS
    jit_kw = dict(cache=True)
    if not numba_config.ENABLE_CUDASIM:
        jit_kw["launch_bounds"] = (NT,)

    @cuda.jit(**jit_kw)
    def bwd_tc_delta_kernel(dout, out, delta):
        """dout, out: uint32 (total_q, H, D/2); delta float32 (H, total_q)."""
        lane = cuda.threadIdx.x & 31
        item = cuda.blockIdx.x * DELTA_WARPS + (cuda.threadIdx.x >> 5)
        nh = out.shape[1]
        if item >= out.shape[0] * nh:
            return
        row = item // nh
        h = item - row * nh
        acc = ZERO
        for w in range(lane, DW, 32):
            acc += _dot2(BF16, dout[row, h, w], out[row, h, w])
        for sh in (16, 8, 4, 2, 1):
            acc += cuda.shfl_xor_sync(0xFFFFFFFF, acc, sh)
        if lane == 0:
            delta[h, row] = acc

    return bwd_tc_delta_kernel


def build_dq(head_size, bf16, bmq, bn, nstages):
    """The dQ kernel for ``head_size``, fp16 or ``bf16``, ``bmq`` queries per block (16 per
    warp), ``bn`` keys per tile and ``nstages`` (1 or 2) K/V pipeline stages; lru-cached."""
    return _build_dq(int(head_size), bool(bf16), int(bmq), int(bn), int(nstages))


@functools.lru_cache(maxsize=None)
def _build_dq(head_size, bf16, bmq, bn, nstages):
    D = head_size
    D16 = padded(D)
    NW = WARPS
    NT = 32 * NW
    assert bmq == 16 * NW and bn % 16 == 0 and nstages in (1, 2)
    BMQ, BN, STAGES, BF16 = bmq, bn, nstages, bf16
    RSB = row_bytes(D)
    DW = D // 2
    QK_STEPS = D16 // 16
    S_TILES = BN // 8
    S_LEN = 4 * S_TILES
    PV_STEPS = BN // 16
    PAIRS = D16 // 16
    ACC_LEN = 8 * PAIRS
    Q_BYTES = BMQ * RSB
    TILE_BYTES = BN * RSB
    STAGE_BYTES = 2 * TILE_BYTES
    load_q = tile_loader(D, BMQ, NT)
    load_kv = tile_loader(D, BN, NT)
    scores = scores_loop(QK_STEPS, S_TILES, RSB)

    jit_kw = dict(cache=True)
    if not numba_config.ENABLE_CUDASIM:
        jit_kw["launch_bounds"] = (NT,)

    @cuda.jit(**jit_kw)
    def bwd_tc_dq_kernel(dout, q, k, v, lse, delta, dq, cu_q, cu_k, scale_log2, scale, left,
                         right, lse_batched):
        """dout, q, k, v: 16-bit (total, heads, D); dq uint32 (total_q, H, D/2). Block
        (x, y, z) = (queries x*BMQ.., head y, sequence z); warp w takes 16 queries from
        x*BMQ + 16w."""
        tid = cuda.threadIdx.x
        warp = tid >> 5
        lane = tid & 31
        t = lane & 3
        h = cuda.blockIdx.y
        b = cuda.blockIdx.z
        q0, sq = seq_span(cu_q, b)
        row0 = cuda.blockIdx.x * BMQ
        if row0 >= sq:
            return
        k0, sk = seq_span(cu_k, b)
        nh = q.shape[1]
        hkv = k.shape[1]
        hk = h // (nh // hkv)

        smem = cuda.shared.array(0, uint8)
        qb = ptx.smem_u32(smem)
        ob = qb + uint32(Q_BYTES)
        kb = ob + uint32(Q_BYTES)
        vb = kb + uint32(TILE_BYTES)
        kg = ptx.gaddr(k)
        vg = ptx.gaddr(v)
        load_q(qb, ptx.gaddr(q), row0, q0, sq, h, nh, tid)
        load_q(ob, ptx.gaddr(dout), row0, q0, sq, h, nh, tid)

        n_lo, n_hi = key_tiles(row0, min(row0 + BMQ, sq) - 1, sq, sk, left, right, BN)
        if n_lo < n_hi:
            load_kv(kb, kg, n_lo, k0, sk, hk, hkv, tid)
            load_kv(vb, vg, n_lo, k0, sk, hk, hkv, tid)
        wrow0 = row0 + 16 * warp
        has_rows = wrow0 < sq
        wlast = min(wrow0 + 15, sq - 1)
        w_lo, w_hi = key_tiles(wrow0, wlast, sq, sk, left, right, BN)
        f_lo, f_hi = full_key_tiles(wrow0, wlast, sq, sk, left, right, BN)
        row_a = wrow0 + (lane >> 2)
        row_b = row_a + 8
        lo_a, hi_a = key_range(min(row_a, sq - 1), sq, sk, left, right)
        lo_b, hi_b = key_range(min(row_b, sq - 1), sq, sk, left, right)
        lse_a = row_lse_log2(lse, lse_batched, b, h, q0, row_a, sq)
        lse_b = row_lse_log2(lse, lse_batched, b, h, q0, row_b, sq)
        del_a = row_delta(delta, h, q0, row_a, sq)
        del_b = row_delta(delta, h, q0, row_b, sq)

        ar, ac = _a_ldsm_rc(lane, 0)
        a_off = uint32((16 * warp + ar) * RSB + 2 * ac)
        br, bc = _k_ldsm_rc(lane, 0, 0)
        b_off = uint32(br * RSB + 2 * bc)
        tr, tc = _v_ldsm_rc(lane, 0, 0)
        t_off = uint32(tr * RSB + 2 * tc)

        acc = cuda.local.array(ACC_LEN, float32)
        for i in range(ACC_LEN):
            acc[i] = ZERO
        s = cuda.local.array(S_LEN, float32)
        dp = cuda.local.array(S_LEN, float32)

        for n0 in range(n_lo, n_hi, BN):
            j = (n0 - n_lo) // BN
            st = uint32(0)
            if STAGES == 2:
                st = uint32(j & 1) * uint32(STAGE_BYTES)
            ptx.cp_async_wait_all()
            cuda.syncthreads()          # tile j landed for all; tile j-1's stage is free
            if STAGES == 2 and n0 + BN < n_hi:
                nxt = uint32(STAGE_BYTES) - st
                load_kv(kb + nxt, kg, n0 + BN, k0, sk, hk, hkv, tid)
                load_kv(vb + nxt, vg, n0 + BN, k0, sk, hk, hkv, tid)
            if has_rows and w_lo <= n0 and n0 < w_hi:
                # S = Q K^T and dP = dO V^T
                scores(BF16, ptx.opaque_u32(qb + a_off), ptx.opaque_u32(kb + st + b_off), s,
                       ptx.opaque_u32(ob + a_off), ptx.opaque_u32(vb + st + b_off), dp)
                full = f_lo <= n0 and n0 < f_hi
                for nt in range(S_TILES):
                    for r in range(4):
                        rr, cc = _c_frag_rc(lane, r)
                        col = n0 + 8 * nt + cc
                        if rr < 8:
                            x = s[4 * nt + r] * scale_log2 - lse_a
                            dl = del_a
                            if not full and (col < lo_a or col > hi_a):
                                x = NEG_INF
                        else:
                            x = s[4 * nt + r] * scale_log2 - lse_b
                            dl = del_b
                            if not full and (col < lo_b or col > hi_b):
                                x = NEG_INF
                        dp[4 * nt + r] = ptx.ex2(x) * (dp[4 * nt + r] - dl)
                # dQ += dS K (K through ldmatrix.trans)
                kt = ptx.opaque_u32(kb + st + t_off)
                for kk in range(PV_STEPS):
                    e0, e1, e2, e3 = pack_a(BF16, dp, kk)
                    for p in range(PAIRS):
                        b0, b1, b2, b3 = ptx.ldmatrix_x4_trans(
                            kt + uint32(16 * kk * RSB + 32 * p))
                        mma_pair(BF16, e0, e1, e2, e3, b0, b1, b2, b3, acc, 8 * p)
            if STAGES == 1:
                cuda.syncthreads()
                if n0 + BN < n_hi:
                    load_kv(kb, kg, n0 + BN, k0, sk, hk, hkv, tid)
                    load_kv(vb, vg, n0 + BN, k0, sk, hk, hkv, tid)

        ptx.cp_async_wait_all()        # nothing in flight at exit (empty loops)
        for nt in range(2 * PAIRS):
            w = 4 * nt + t
            if w < DW:
                if row_a < sq:
                    dq[q0 + row_a, h, w] = _pack(BF16, acc[4 * nt] * scale,
                                                 acc[4 * nt + 1] * scale)
                if row_b < sq:
                    dq[q0 + row_b, h, w] = _pack(BF16, acc[4 * nt + 2] * scale,
                                                 acc[4 * nt + 3] * scale)

    return bwd_tc_dq_kernel
