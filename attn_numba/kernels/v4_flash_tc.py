"""v4: flash attention on the tensor cores (mma.sync m16n8k16, fp16 or bf16 in, fp32
accumulate), FlashAttention-2's structure, written in Numba with inline-PTX intrinsics.

* **Instructions** come from :mod:`attn_numba.kernels.ptx` (``mma.sync``, ``ldmatrix``,
  ``cp.async``, ``cvt``, ``ex2``): no linked CUDA C++, so every specialisation is compiled
  once and cached on disk (``cache=True``).
* **Work**: a block of ``WARPS`` = 4 warps; each warp owns 16 query positions of one head
  (the mma M dimension). With GQA the block's warps take ``HB`` = 4, 2 or 1 heads of one KV
  group, so each K/V tile staged in shared memory serves ``HB`` heads.
* **K/V tiles** (``BN`` keys) are copied global -> shared with 16-byte ``cp.async`` (no
  register staging), rows padded by 16 bytes so that the 8 rows read by one ``ldmatrix``
  fall into 8 different bank groups. Pipeline: two stages where they fit in 48 KiB (tile
  j+1's K and V in flight during all of tile j's work, one barrier per tile), else
  FlashAttention-2's split (V_j in flight during Q K_j^T, K_j+1 during P V_j).
* **Fragments**: K through ``ldmatrix.x4`` (K's rows are B's columns), V through
  ``ldmatrix.x4.trans``; Q stays in registers; P is packed from the S accumulators straight
  into A fragments, never touching shared memory (``v4_layout.p_from_s``).
* **Band**: the block visits only key tiles that meet its rows' band; a warp skips tiles
  outside its own band and masks only tiles not fully inside it. Rows that see no key get
  out 0 and lse -inf. Scores are kept in base 2 for ``ex2.approx``.
* **Head sizes**: any multiple of 8 up to 256; the tile is padded to a multiple of 16 columns
  and the padding is zero-filled by ``cp.async`` (source size 0).

Index maps and their NumPy emulation: :mod:`attn_numba.kernels.v4_layout`. Measurements,
predictions and what was tried: notes/v4_tensor_core.md.
"""
import dataclasses
import functools

import numpy as np
from numba import config as numba_config
from numba import cuda, float32, types, uint16, uint32

from . import Plan, occupancy, ptx, v4_steps
from ..problem import MAX_HEAD_SIZE
from .common import NEG_INF, array_type, key_range, seq_span, supports_mma_sync
from .config import TileConfig, band_scalars, dtype_name, heads_per_block, with_overrides
from .mask import band_mask, mma_c_rc
from .pipeline import ring
from .ptx_sm90 import shfl_xor
from .softmax import epilogue, online_softmax, rescale
from .tile_range import key_tiles
from .v4_device import ROW_PAD, _k_ldsm_rc, _v_ldsm_rc, padded, tile_loader

NAME = "flash_tc"
#: q, k, v and out must be 16-byte aligned (cp.async of 16 bytes): the call path refuses others
POINTER_ALIGN = 16
#: dtypes this kernel accepts (by NumPy name; bfloat16 is ml_dtypes.bfloat16)
DTYPE_NAMES = ("float16", "bfloat16")
WARPS = 4
ZERO = np.float32(0.0)
#: an SM's relative throughput with 1, 2, 3 blocks of this kernel resident, for the wave rule
#: (:func:`attn_numba.kernels.occupancy.best_cap`): fitted to run 26 on the H200
#: (notes/occupancy.md)
SM_RATE = (1.0, 2.0, 2.38)


@dataclasses.dataclass(frozen=True)
class Config(TileConfig):
    """One flash_tc specialisation (:mod:`attn_numba.kernels.config` names the fields).
    ``block_n``: 32 keys per tile (band efficiency: 272 keys of a 16-row band cover 288 keys
    of 32-key tiles, against 320 of 64-key tiles). ``stages``: 2 (tile j+1 in flight during
    all of tile j's work, one barrier per tile) when two stages of K and V fit in 48 KiB of
    static shared memory, else 1 (FlashAttention-2's split: V_j in flight during Q K_j^T,
    K_j+1 during P V_j); :func:`config_for` picks it."""

    block_n: int = 32
    warps: int = WARPS
    #: at most this many blocks per SM (0: as many as fit; None: the wave rule of
    #: :mod:`attn_numba.kernels.occupancy` picks), a launch parameter only: the kernel is
    #: built without it
    blocks_per_sm: int | None = None

    @property
    def block_m(self):
        """Score rows of a block: 16 per warp (positions x heads)."""
        return 16 * self.warps


def stages(head_size, block_n=32):
    """2 when two stages of K and V tiles fit in 48 KiB of static shared memory, else 1."""
    return 2 if 4 * block_n * (padded(head_size) + ROW_PAD) * 2 <= 48 * 1024 else 1


def shared_bytes(config):
    """Static shared memory of one block: K and V tiles per stage, rows padded."""
    return config.stages * 2 * config.block_n * (padded(config.head_size) + ROW_PAD) * 2


def config_for(problem, **overrides):
    """The default configuration for ``problem`` (``overrides``: Config fields; the stage
    count follows an overridden ``block_n`` unless given)."""
    cfg = with_overrides(Config(problem.head_size, dtype_name(problem.dtype),
                                heads_per_block(problem.group_size)), overrides)
    if overrides.get("stages") is None:
        cfg = dataclasses.replace(cfg, stages=stages(cfg.head_size, cfg.block_n))
    return cfg


@functools.lru_cache(maxsize=None)
def build(config):
    """The kernel of ``config`` (compiled once per configuration, cached on disk)."""
    head_size, heads, bn = config.head_size, config.heads_per_block, config.block_n
    bf16, warps, nstages = config.dtype == "bfloat16", config.warps, config.stages
    D = head_size
    STAGES = nstages
    assert STAGES in (1, 2)
    NW = warps
    NT = 32 * NW                     # threads per block
    D16 = padded(D)
    BN = bn
    HB = heads
    PB = 16 * NW // HB               # query positions per block
    assert D % 8 == 0 and BN % 16 == 0 and NW % HB == 0
    RS = D16 + ROW_PAD               # shared row stride, elements
    RSB = 2 * RS                     # ... in bytes
    DW = D // 2                      # 32-bit words per global row of q / out
    TILE_ELEMS = BN * RS             # 16-bit elements of one shared tile
    STAGE_BYTES = 2 * TILE_ELEMS
    SMEM_ELEMS = STAGES * TILE_ELEMS
    QK_STEPS = D16 // 16
    S_TILES = BN // 8
    PV_STEPS = BN // 16
    O_TILES = D16 // 8
    QF_LEN = 4 * QK_STEPS
    ACC_LEN = 4 * O_TILES
    S_LEN = 4 * S_TILES
    BF16 = bf16

    _load_tile = tile_loader(D, BN, NT)
    _load_q, _qk, _pv = v4_steps.steps(D, BN, BF16)
    stage, _ = ring(2)
    _mask = band_mask(mma_c_rc, S_LEN)
    _update = online_softmax(S_LEN, ptx.ex2, shfl_xor)
    _rescale = rescale(ACC_LEN)
    _finish = epilogue(ACC_LEN, DW, ptx.pack_bf16x2 if BF16 else ptx.pack_f16x2, shfl_xor)

    jit_kw = dict(cache=True)
    if not numba_config.ENABLE_CUDASIM:
        jit_kw["launch_bounds"] = (NT,)

    @cuda.jit(**jit_kw)
    def flash_tc_kernel(q, k, v, out, lse, cu_q, cu_k, scale_log2, left, right, lse_batched):
        """q, out: uint32 (total_q, H, D/2) views; k, v: 16-bit (total_k, Hkv, D); lse
        float32; scale_log2 = softmax_scale * log2(e). Block (x, y, z) = (positions x*PB..,
        heads y*HB.., sequence z); warp w takes head y*HB + w % HB and positions from
        x*PB + 16*(w // HB)."""
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

        # the key tiles of the block's rows (tile_range); this warp's rows: the first and
        # last row's key ranges (both bounds are non-decreasing in the row), which say whether
        # the warp sees a tile at all and whether every row sees all of it (no element mask).
        # (tile_range's warp-level tiles cost flash_tc at D=256 16-24 more bytes of register
        # spills: notes/kernel_layer.md)
        n_first, n_end = key_tiles(row0, min(row0 + PB, sq) - 1, sq, sk, left, right, BN)
        wrow0 = row0 + 16 * (warp // HB)
        has_rows = wrow0 < sq
        wlo_first, whi_first = key_range(wrow0, sq, sk, left, right)
        wlo_last, whi_last = key_range(min(wrow0 + 15, sq - 1), sq, sk, left, right)
        row_a = wrow0 + (lane >> 2)
        row_b = row_a + 8
        lo_a, hi_a = key_range(row_a, sq, sk, left, right)
        lo_b, hi_b = key_range(row_b, sq, sk, left, right)

        # per-lane ldmatrix offsets; tile (p, kk) adds a constant (see k_ldsm_rc, v_ldsm_rc)
        kr0, kc0 = _k_ldsm_rc(lane, 0, 0)
        vr0, vc0 = _v_ldsm_rc(lane, 0, 0)
        k_lane = kb + uint32(kr0 * RSB + 2 * kc0)
        v_lane = vb + uint32(vr0 * RSB + 2 * vc0)

        if n_first < n_end:
            _load_tile(kb, kg, n_first, k0, sk, hk, hkv, tid)
            if STAGES == 2:
                _load_tile(vb, vg, n_first, k0, sk, hk, hkv, tid)

        # Q fragments stay in registers (zero past the sequence and past D)
        qf = cuda.local.array(QF_LEN, uint32)
        _load_q(qf, q, q0, wrow0, sq, h, lane)

        acc = cuda.local.array(ACC_LEN, float32)
        for i in range(ACC_LEN):
            acc[i] = ZERO
        s = cuda.local.array(S_LEN, float32)
        m_a = NEG_INF
        m_b = NEG_INF
        l_a = ZERO
        l_b = ZERO

        for n0 in range(n_first, n_end, BN):
            st = uint32(0)
            if STAGES == 2:
                st = stage(uint32((n0 - n_first) // BN)) * uint32(STAGE_BYTES)
                ptx.cp_async_wait_all()
                cuda.syncthreads()      # tile j landed for all; tile j-1's stage is free
                if n0 + BN < n_end:
                    nxt = uint32(STAGE_BYTES) - st
                    _load_tile(kb + nxt, kg, n0 + BN, k0, sk, hk, hkv, tid)
                    _load_tile(vb + nxt, vg, n0 + BN, k0, sk, hk, hkv, tid)
            else:
                ptx.cp_async_wait_all()
                cuda.syncthreads()      # K_j landed for all; V buffer free (P.V_{j-1} done)
                _load_tile(vb, vg, n0, k0, sk, hk, hkv, tid)
            active = has_rows and n0 <= whi_last and n0 + BN - 1 >= wlo_first
            if active:
                _qk(s, qf, ptx.opaque_u32(k_lane + st), scale_log2)   # S = Q K^T, base 2

                # mask unless the tile lies inside the band of every row of the warp
                if not (wlo_last <= n0 and n0 + BN - 1 <= whi_first):
                    _mask(s, n0, lane, lo_a, hi_a, lo_b, hi_b)
                m_a, m_b, l_a, l_b, alpha_a, alpha_b = _update(s, m_a, m_b, l_a, l_b)
                _rescale(acc, alpha_a, alpha_b)

            if STAGES == 1:
                ptx.cp_async_wait_all()
                cuda.syncthreads()      # V_j landed for all; K buffer free (Q K_j^T done)
                if n0 + BN < n_end:
                    _load_tile(kb, kg, n0 + BN, k0, sk, hk, hkv, tid)
            if active:
                _pv(acc, s, ptx.opaque_u32(v_lane + st))           # O += P V

        _finish(acc, m_a, m_b, l_a, l_b, out, lse, b, h, q0, row_a, row_b, sq, t, lse_batched)

    return flash_tc_kernel


# --------------------------------------------------------------------------- module contract

#: q, k, v, out are viewed as these dtypes before launch (16-bit data either way)
VIEWS = (np.uint32, np.uint16, np.uint16, np.uint32)


def _signature():
    u32, u16 = array_type(np.uint32, 3), array_type(np.uint16, 3)
    return (u32, u16, u16, u32, array_type(np.float32, 3), array_type(np.int32, 1),
            array_type(np.int32, 1), types.float32, types.int32, types.int32, types.boolean)


def compile_targets(head_size, dtype, heads=(1, 4)):
    """``[(label, kernel, signature)]`` for ``cuda.compile_ptx`` (empty when this
    specialisation is not supported); see attn_numba.compile_check."""
    name = dtype_name(dtype)
    if name not in DTYPE_NAMES or head_size % 8 or not 8 <= head_size <= MAX_HEAD_SIZE:
        return []
    return [(f"flash_tc_kernel_d{head_size}_h{hb}_{name}",
             build(Config(head_size, name, hb, stages=stages(head_size))), _signature())
            for hb in heads]


def supports(problem):
    return supports_mma_sync(problem, "tensor-core kernel", DTYPE_NAMES, MAX_HEAD_SIZE)


def plan(problem, config=None):
    """One launch of ``config`` (default :func:`config_for`)."""
    cfg = config_for(problem) if config is None else config
    kernel = build(dataclasses.replace(cfg, blocks_per_sm=None))
    pb = cfg.positions
    grid = ((max(problem.max_seqlen_q, 1) + pb - 1) // pb,
            problem.num_heads // cfg.heads_per_block, problem.batch)
    shared = 0
    if not problem.on_simulator:
        cap = cfg.blocks_per_sm
        if cap is None:
            cap = occupancy.auto_cap(kernel, _signature(), 32 * cfg.warps,
                                     grid[0] * grid[1] * grid[2], SM_RATE)
        shared = occupancy.launch_shared(kernel, _signature(), shared_bytes(cfg), cap)
    return (Plan(kernel, grid, 32 * cfg.warps, VIEWS, band_scalars(problem), shared),)
