"""v5: flash attention for Hopper (sm_90a) with warpgroup MMA (``wgmma.mma_async``) and
asynchronous copies, written in Numba through the inline-PTX intrinsics of
:mod:`attn_numba.kernels.ptx_sm90`.

Work decomposition: a warpgroup (128 threads) owns 64 query rows; rows are (position,
head) pairs of one GQA group: ``HB`` heads (4, 2 or 1) x ``64 / HB`` positions, row ``r`` =
head ``r // PB``, position ``r % PB`` (``PB = 64 / HB`` >= 16, so each warp's 16 rows are one
head). A block has ``groups`` such consumer warpgroups (1 by default, or 2 taking the next
``PB`` positions); every K/V tile it stages serves all of them and their ``HB`` heads.

Per block:

* Q (64 x D) is copied once into 128B-swizzled shared memory (K-major), K and V tiles of
  ``BN`` keys go into 2 or 3 buffers, with 16-byte ``cp.async`` (zero-filled past the
  sequence), the next tile's copies in flight while the current tile is computed (commit /
  wait_group). After the wait: ``fence.proxy.async.shared::cta`` (the copies must be
  visible to wgmma's async proxy) and a block barrier.
* S = Q.K^T: ``D / 16`` x ``wgmma m64n{BN}k16``, A = Q and B = K both from shared memory
  by descriptor (K-major), f32 accumulators, one commit group, waited at once.
* Online softmax in fp32 on the accumulator fragments (wgmma_layout.acc_rc: a thread holds
  two rows, reduced across the 4 lanes of a quad), base 2 with ``ex2.approx``.
* O += P.V: ``BN / 16`` x ``wgmma m64n{D}k16`` with A = P from registers (the S fragments,
  packed to fp16/bf16 pairs: wgmma_layout.p_regs) and B = V from shared memory, MN-major
  (the transpose bit), the same swizzled tile layout as K.
* Epilogue: normalise, write fp16/bf16 pairs and lse straight from the registers.

Two loops: the plain one (QK^T, wait, softmax, PV, wait per tile) and, with ``overlap``,
FlashAttention-3's intra-warpgroup pipelining: QK^T of tile j and PV of tile j-1 are issued
together, the softmax of tile j runs while PV of tile j-1 is still on the tensor cores.

Semantics as every kernel: GQA, window (bottom-right), causal, varlen, lse, rows without a
key give 0 and -inf. Tiles outside the block's key band are skipped; the per-element mask
runs only on tiles not inside every row's band. Not runnable on the simulator (inline PTX);
PTX checked on the CPU with ``compile_ptx(..., cc=(9, 0, "a"))``. Notes: notes/v5_wgmma.md.
"""
import dataclasses
import functools
import os

import numpy as np
from numba import config as numba_config
from numba import cuda, float32, types, uint32

from . import Plan
from . import ptx_sm90 as px
from . import v5_steps
from .pipeline import wait_for_tile
from . import wgmma_layout as wl
from .occupancy import opt_in_shared
from .common import NEG_INF, array_type, key_range, seq_span, supports_hopper
from .config import TileConfig, band_scalars, dtype_name, heads_per_block, with_overrides
from .tile_range import full_key_tiles, key_tiles

NAME = "flash_wgmma"
#: q, k, v and out must be 16-byte aligned (cp.async of 16 bytes): the call path refuses others
POINTER_ALIGN = 16

THREADS = 128
BLOCK_M = 64
#: largest dynamic shared memory a block may opt in to on sm_90 (227 KiB)
MAX_SHARED = 227 * 1024
HEAD_SIZES = (64, 128, 256)
#: keys per tile (the N of S = Q.K^T) per head size; 256: 64 keeps O (128 regs) + S in budget;
#: 128 and 64: 64 (more resident blocks, and a band of 257-272 keys walks less masked work;
#: the measurements: notes/kernel_layer.md, notes/v5_wgmma.md)
BLOCK_N = {64: 64, 128: 64, 256: 64}
GQA_PACK = True
#: overlap the softmax of key tile j with the P.V wgmma of tile j-1 (FlashAttention-3's
#: intra-warpgroup pipelining; needs a third K/V buffer to keep loads one tile ahead)
OVERLAP = False
#: V's descriptor (MN-major, 128B swizzle): LBO = next 64 columns of D, SBO = next 8 keys
#: (CUTLASS's canonical form). True swaps the two: a fallback that scripts/gpu_wgmma_check.py
#: selects if its microtest finds the hardware reads them the other way round.
V_DESC_SWAP = False
#: consumer warpgroups per block (each 64 rows, sharing every K/V tile)
GROUPS = 1

ZERO = np.float32(0.0)


def kind_of(dtype):
    """'f16' or 'bf16' for a Problem dtype or its name (bf16 = ml_dtypes.bfloat16), else
    None."""
    return {"float16": "f16", "bfloat16": "bf16"}.get(dtype_name(dtype))


def shared_bytes(head_size, block_n, stages, groups=1):
    """Dynamic shared memory of one block: Q (one 64-row tile per consumer warpgroup) +
    stages x (K + V) tiles, plus 1024 bytes of slack to align to the 1024-byte atom."""
    return (2 * BLOCK_M * head_size * groups + stages * 2 * (2 * block_n * head_size) +
            wl.ATOM_BYTES)


@dataclasses.dataclass(frozen=True)
class Config(TileConfig):
    """One flash_wgmma specialisation (:mod:`attn_numba.kernels.config` names the fields);
    ``heads_per_block`` is per warpgroup (1, 2 or 4), ``stages`` :func:`default_stages`."""

    #: consumer warpgroups per block (each 64 rows, sharing every K/V tile)
    groups: int = GROUPS
    overlap: bool = OVERLAP
    v_swap: bool = V_DESC_SWAP

    @property
    def block_m(self):
        """Score rows of a block: 64 per consumer warpgroup."""
        return BLOCK_M * self.groups

    @property
    def warps(self):
        return 4 * self.groups


def config_for(problem, **overrides):
    """The default configuration for ``problem`` (``overrides``: Config fields; the stage
    count follows the overridden fields unless given)."""
    d = problem.head_size
    hb = heads_per_block(problem.group_size, (4, 2, 1) if GQA_PACK else (1,))
    cfg = with_overrides(Config(d, dtype_name(problem.dtype), hb, BLOCK_N.get(d, 64)),
                         overrides)
    if overrides.get("stages") is None:
        cfg = dataclasses.replace(cfg, stages=default_stages(d, cfg.block_n, cfg.overlap,
                                                             cfg.groups))
    return cfg


def default_stages(head_size, block_n, overlap, groups=1):
    """K/V buffers: 2 for the plain loop; 3 for the overlapped one when they fit in 227 KiB."""
    if not overlap:
        return 2
    return 3 if shared_bytes(head_size, block_n, 3, groups) <= MAX_SHARED else 2


@functools.lru_cache(maxsize=None)
def build(config):
    """The kernel of ``config`` (compiled once per configuration, cached on disk)."""
    head_size, kind, heads, block_n = (config.head_size, kind_of(config.dtype),
                                       config.heads_per_block, config.block_n)
    v_swap, overlap, stages, groups = (config.v_swap, config.overlap, config.stages,
                                       config.groups)
    D = head_size
    BN = block_n
    HB = heads
    PB = BLOCK_M // HB
    S = stages
    WG = groups
    NT = THREADS * WG
    Q_TILE = 2 * BLOCK_M * D
    assert D % 64 == 0 and BN % 64 == 0 and D <= 256 and BN <= 256 and PB >= 16
    assert S >= 2
    KV_BYTES = 2 * BN * D
    S_LEN = BN // 2
    PA_LEN = 4 * (BN // 16)
    O_LEN = D // 2
    OVERLAP_ = overlap
    # overlapped loop: tile t is cp.async group t; waiting for tile j leaves S - 2 pending.
    # With 2 stages the next tile can only be loaded after P.V of the previous: 0 pending.
    ov_wait = wait_for_tile(S - 2)
    cp_wait1 = wait_for_tile(1)         # plain loop: tile j + 1 is issued before the wait

    fence_s = px.fence_acc(S_LEN)
    fence_o = px.fence_acc(O_LEN)
    wait0 = px.wgmma_wait(0)
    wait1 = px.wgmma_wait(1)

    st = v5_steps.steps(D, BN, kind, HB, v_swap, S, WG)
    stage_k, load_q, load_kv = st.stage_k, st.load_q, st.load_kv
    issue_qk, issue_pv, softmax = st.issue_qk, st.issue_pv, st.softmax
    rescale_pack, finish = st.rescale_pack, st.finish

    jit_kw = dict(cache=True)
    if not numba_config.ENABLE_CUDASIM:
        jit_kw["launch_bounds"] = (NT, 1)

    @cuda.jit(**jit_kw)
    def flash_wgmma_kernel(q, k, v, out, lse, cu_q, cu_k, scale_log2, left, right,
                           lse_batched):
        """q, k, v: uint16 (total, heads, D) views of fp16/bf16; out: uint32 (total_q, H,
        D/2); lse float32; scale_log2 = softmax_scale * log2(e). Block (x, y, z) =
        (positions x*PB.., heads y*HB.., sequence z)."""
        tid = cuda.threadIdx.x
        grp = tid // THREADS                # consumer warpgroup: rows grp*PB.. of the block
        warp = (tid & (THREADS - 1)) >> 5
        lane = tid & 31
        g = lane >> 2
        t = lane & 3
        b = cuda.blockIdx.z
        q0, sq = seq_span(cu_q, b)
        row0 = cuda.blockIdx.x * (PB * WG)
        if row0 >= sq:
            return
        k0, sk = seq_span(cu_k, b)
        nh = q.shape[1]
        nkv = k.shape[1]
        hbase = cuda.blockIdx.y * HB
        hkv = hbase // (nh // nkv)

        smem = cuda.shared.array(0, types.uint8)
        sQ = (px.smem_addr(smem) + uint32(1023)) & uint32(0xFFFFFC00)
        qbase = px.data_ptr(q)
        kbase = px.data_ptr(k)
        vbase = px.data_ptr(v)

        # the band's key tiles start at the band, not at multiples of BN: tile_range at key
        # granularity; [f_lo, f_hi) holds the keys that every row of the block sees
        last = min(row0 + PB * WG, sq) - 1
        n_first, n_end = key_tiles(row0, last, sq, sk, left, right, 1)
        f_lo, f_hi = full_key_tiles(row0, last, sq, sk, left, right, 1)
        ntiles = (n_end - n_first + BN - 1) // BN

        # this thread's rows: warp w has rows 16w..16w+15 = one head
        hw = hbase + (16 * warp) // PB
        pos_a = row0 + grp * PB + (16 * warp) % PB + g
        sQw = sQ + uint32(grp * Q_TILE)     # this warpgroup's Q tile
        pos_b = pos_a + 8
        lo_a, hi_a = key_range(pos_a, sq, sk, left, right)
        lo_b, hi_b = key_range(pos_b, sq, sk, left, right)

        s = cuda.local.array(S_LEN, float32)
        o = cuda.local.array(O_LEN, float32)
        pa = cuda.local.array(PA_LEN, uint32)
        for i in range(O_LEN):
            o[i] = ZERO
        m_a = NEG_INF
        m_b = NEG_INF
        l_a = ZERO
        l_b = ZERO

        if ntiles > 0:
            # Q tile and K/V tile 0: cp.async group 0
            load_q(qbase, sQ, row0, q0, sq, hbase, nh, tid)
            load_kv(kbase, vbase, stage_k(sQ, 0), n_first, k0, sk, hkv, nkv, tid)
            px.cp_async_commit()
            if OVERLAP_:
                for jt in range(1, S - 1):          # tiles 1 .. S-2: groups 1 .. S-2
                    if jt < ntiles:
                        load_kv(kbase, vbase, stage_k(sQ, jt), n_first + jt * BN, k0, sk,
                                hkv, nkv, tid)
                    px.cp_async_commit()

        if OVERLAP_ and ntiles > 0:
            # FlashAttention-3's intra-warpgroup overlap: while P.V of tile j-1 runs on the
            # tensor cores, the softmax of tile j runs on the other units.
            ov_wait()
            px.fence_proxy_async()
            cuda.syncthreads()
            px.wgmma_fence()
            issue_qk(s, sQw, stage_k(sQ, 0))
            px.wgmma_commit()
            wait0()
            fence_s(s)
            m_a, m_b, l_a, l_b, al_a, al_b = softmax(
                s, n_first, not (f_lo <= n_first and n_first + BN <= f_hi), lane,
                lo_a, hi_a, lo_b, hi_b, m_a, m_b, l_a, l_b, scale_log2)
            rescale_pack(o, s, pa, al_a, al_b)
            for j in range(1, ntiles):
                # tile j + S - 2 -> stage (j - 2) mod S, free once P.V of tile j - 2 is done
                if S == 2:
                    cuda.syncthreads()
                jn = j + S - 2
                if jn < ntiles:
                    load_kv(kbase, vbase, stage_k(sQ, jn), n_first + jn * BN, k0, sk, hkv,
                            nkv, tid)
                px.cp_async_commit()
                n0 = n_first + j * BN
                ov_wait()                           # tile j landed
                px.fence_proxy_async()
                cuda.syncthreads()
                px.wgmma_fence()
                issue_qk(s, sQw, stage_k(sQ, j))
                px.wgmma_commit()
                issue_pv(o, pa, stage_k(sQ, j - 1) + uint32(KV_BYTES))
                px.wgmma_commit()
                wait1()                             # S of tile j is ready; P.V still runs
                fence_s(s)
                m_a, m_b, l_a, l_b, al_a, al_b = softmax(
                    s, n0, not (f_lo <= n0 and n0 + BN <= f_hi), lane, lo_a, hi_a,
                    lo_b, hi_b, m_a, m_b, l_a, l_b, scale_log2)
                wait0()
                fence_o(o)
                rescale_pack(o, s, pa, al_a, al_b)
                if S > 2:
                    cuda.syncthreads()              # stage (j - 1) mod S is free
            px.wgmma_fence()                        # P.V of the last tile
            issue_pv(o, pa, stage_k(sQ, ntiles - 1) + uint32(KV_BYTES))
            px.wgmma_commit()
            wait0()
            fence_o(o)
        else:
            for j in range(ntiles):
                n0 = n_first + j * BN
                if j + 1 < ntiles:
                    load_kv(kbase, vbase, stage_k(sQ, j + 1), n0 + BN, k0, sk, hkv, nkv, tid)
                px.cp_async_commit()        # possibly empty: keeps the group count uniform
                cp_wait1()                  # all but the newest group: tile j (and Q) landed
                px.fence_proxy_async()
                cuda.syncthreads()
                px.wgmma_fence()
                issue_qk(s, sQw, stage_k(sQ, j))
                px.wgmma_commit()
                wait0()
                fence_s(s)
                m_a, m_b, l_a, l_b, al_a, al_b = softmax(
                    s, n0, not (f_lo <= n0 and n0 + BN <= f_hi), lane, lo_a, hi_a,
                    lo_b, hi_b, m_a, m_b, l_a, l_b, scale_log2)
                rescale_pack(o, s, pa, al_a, al_b)
                px.wgmma_fence()
                issue_pv(o, pa, stage_k(sQ, j) + uint32(KV_BYTES))
                px.wgmma_commit()
                wait0()
                fence_o(o)
                cuda.syncthreads()          # stage j is free for tile j + 2

        finish(o, m_a, m_b, l_a, l_b, out, lse, b, hw, q0, pos_a, pos_b, sq, t, lse_batched)

    return flash_wgmma_kernel


# --------------------------------------------------------------------------- module contract

#: q, k, v, out are viewed as these dtypes before launch
VIEWS = (np.uint16, np.uint16, np.uint16, np.uint32)


def _signature():
    u2 = array_type(np.uint16, 3)
    return (u2, u2, u2, array_type(np.uint32, 3), array_type(np.float32, 3),
            array_type(np.int32, 1), array_type(np.int32, 1), types.float32, types.int32,
            types.int32, types.boolean)


def compile_targets(head_size, dtype, heads=(1, 4)):
    """``[(label, kernel, signature)]`` for ``compile_ptx(..., cc=(9, 0, "a"))``."""
    kind = kind_of(dtype)
    if kind is None or head_size not in HEAD_SIZES:
        return []
    name = dtype_name(dtype)
    return [(f"flash_wgmma_kernel_{kind}_d{head_size}_h{hb}",
             build(Config(head_size, name, hb, BLOCK_N[head_size],
                          default_stages(head_size, BLOCK_N[head_size], OVERLAP))),
             _signature()) for hb in heads]


def supports(problem):
    """Why this kernel cannot run ``problem`` (None when it can). ``auto`` picks it first on
    sm_90; ``ATTN_NUMBA_NO_WGMMA=1`` refuses it (``auto`` then takes flash_tc). What checked
    it on the GPU: notes/kernel_layer.md."""
    if os.environ.get("ATTN_NUMBA_NO_WGMMA", "0") not in ("", "0"):
        return "disabled by ATTN_NUMBA_NO_WGMMA"
    return supports_hopper(problem, NAME, HEAD_SIZES, "wgmma")


def plan(problem, config=None):
    """One launch of ``config`` (default :func:`config_for`). The dynamic shared memory
    exceeds 48 KiB, so on a GPU this compiles the kernel for its signature and raises its
    dynamic shared-memory limit (:func:`opt_in_shared`) before returning."""
    cfg = config_for(problem) if config is None else config
    kernel = build(cfg)
    shared = shared_bytes(cfg.head_size, cfg.block_n, cfg.stages, cfg.groups)
    if not problem.on_simulator:
        opt_in_shared(kernel, _signature(), shared)
    pb = cfg.positions
    grid = ((max(problem.max_seqlen_q, 1) + pb - 1) // pb,
            problem.num_heads // cfg.heads_per_block, problem.batch)
    return (Plan(kernel, grid, THREADS * cfg.groups, VIEWS, band_scalars(problem), shared),)
