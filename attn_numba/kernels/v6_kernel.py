"""The kernel body of flash_ws (v6): the block's set-up, its producer warpgroup and two
consumer warpgroups (their roles: :mod:`attn_numba.kernels.v6_roles`), on a one-block-per-tile
or a persistent grid. The design, the defaults and the module contract are in
:mod:`attn_numba.kernels.v6_flash_ws`, which builds this through ``build``.
"""
import functools

import numpy as np
from numba import config as numba_config
from numba import cuda, types, uint32, uint64

from . import ptx_sm90 as px
from . import ptx_tma as pt
from . import v6_layout as lay
from . import v6_roles
from .common import array_type, seq_span
from .tile_range import full_key_tiles, key_tiles

THREADS = 128 * (1 + lay.CONSUMERS)
PRODUCER_REGS = 24
CONSUMER_REGS = 240
#: the budgets add up to the entry allocation of 384 threads at one block per SM (3 x 168)
assert PRODUCER_REGS + lay.CONSUMERS * CONSUMER_REGS == 3 * ((65536 // THREADS) // 8 * 8)
HEAD_SIZES = (64, 128)
MAX_SHARED = 227 * 1024
#: maps per block (Q, K, V), 128 bytes each, in the call's ``maps`` scratch; with ``tma_out``
#: an O map follows them (``maps_per_block``)
MAPS_PER_BLOCK = 3


def maps_per_block(tma_out=False):
    """Maps in each block's slot of the ``maps`` scratch: Q, K, V (and O with ``tma_out``)."""
    return MAPS_PER_BLOCK + bool(tma_out)
#: with ``split_maps``: the producer thread that writes and releases the block's maps (warp 1
#: of the producer warpgroup) while thread 0 loads the work tile; thread 0 acquires them
MAP_WRITER = 32


@functools.lru_cache(maxsize=None)
def _build(D, kind, HB, BN, S, overlap=False, debug_waits=False, pingpong=False,
           lean=False, persistent=False, param_maps=False, staged=False, split_maps=False,
           prefetch_maps=False, tma_out=False, lazy=False, maps_ready=False):
    assert D in HEAD_SIZES and BN in (64, 128) and S >= 2 and HB in (1, 2, 4)
    assert staged or not tma_out
    # split_maps: the one-block-per-tile kernel with the template as parameters only
    assert not split_maps or (param_maps and not persistent)
    assert not (maps_ready and split_maps)
    assert lay.shared_bytes(D, BN, S, staged, tma_out) <= MAX_SHARED
    PB = lay.positions_per_tile(HB)
    ROWS = lay.CONSUMERS * PB            # positions per work tile (of HB heads, one sequence)
    r = v6_roles.roles(D, BN, kind, HB, S, overlap, debug_waits, pingpong, lean, staged,
                       prefetch_maps, tma_out, lazy)
    SLOT = 128 * maps_per_block(tma_out)
    init_barriers, produce_tile, consume = r.init_barriers, r.produce_tile, r.consume
    # each block's maps: from the template in global memory (``tmpl`` its address), or from
    # its words passed as parameters (``tmpl`` the tuple), then set up first thing
    acquire = r.acquire_words if param_maps else r.acquire
    release_words, acquire_slot = r.release_words, r.acquire_slot
    if maps_ready:
        # the reuse plan's kernel (v6_flash_ws.reuse_plan): the slot already holds this
        # call's maps (an earlier call with the same problem, pointers and scratch wrote
        # them), so the block only acquires them
        @cuda.jit(device=True, inline=True, cache=True)
        def acquire(slot, tmpl, q, k, v, out):   # noqa: F811
            return acquire_slot(slot)
    EARLY = param_maps
    SPLIT = split_maps
    sched_init = r.sched_init
    dec = pt.setmaxnreg_dec(PRODUCER_REGS)
    inc = pt.setmaxnreg_inc(CONSUMER_REGS)

    jit_kw = dict(cache=True)
    if not numba_config.ENABLE_CUDASIM:
        jit_kw["launch_bounds"] = (THREADS, 1)   # the 1 makes ptxas honour setmaxnreg

    @cuda.jit(device=True, inline=True, cache=True)
    def work_tile(q, k, cu_q, cu_k, left, right, x, y, b, uq, uk):
        """Work tile (positions x*ROWS.., heads y*HB.., sequence b): (q0, sq, row0, k0, sk,
        hbase, hkv, n_lo, ntiles); ``row0 >= sq`` when it lies past its sequence. ``uq``,
        ``uk`` >= 0: every sequence has that many queries and keys (a batched call), so
        ``cu_seqlens`` is not read (no load before the block's first TMA)."""
        if uq >= 0:
            q0 = b * uq
            sq = uq
            k0 = b * uk
            sk = uk
        else:
            q0, sq = seq_span(cu_q, b)
            k0, sk = seq_span(cu_k, b)
        row0 = x * ROWS
        hbase = y * HB
        hkv = hbase // (q.shape[1] // k.shape[1])
        last = min(row0 + ROWS, sq) - 1
        n_lo, n_hi = key_tiles(row0, last, sq, sk, left, right, BN)
        ntiles = max(n_hi - n_lo, 0) // BN
        return q0, sq, row0, k0, sk, hbase, hkv, n_lo, ntiles

    @cuda.jit(device=True, inline=True, cache=True)
    def block_id(b):
        """The linear index of this block of a one-block-per-tile grid (z = ``b``)."""
        return cuda.blockIdx.x + cuda.gridDim.x * (cuda.blockIdx.y + cuda.gridDim.y * b)

    @cuda.jit(device=True, inline=True, cache=True)
    def slot(maps, blk):
        """Address of block ``blk``'s maps in the call's scratch ``maps`` (its O map, with
        ``tma_out``, at + 384)."""
        return px.data_ptr(maps) + uint64(SLOT) * uint64(blk)

    @cuda.jit(device=True, inline=True, cache=True)
    def block_base(tid):
        """The block's 1024-aligned shared base, its mbarriers initialised (thread 0) and
        visible to every thread."""
        smem = cuda.shared.array(0, types.uint8)
        base = (px.smem_addr(smem) + uint32(1023)) & uint32(0xFFFFFC00)
        if tid == 0:
            init_barriers(base)
        cuda.syncthreads()
        return base

    if not persistent:
        @cuda.jit(**jit_kw)
        def flash_ws_kernel(q, k, v, out, lse, cu_q, cu_k, maps, scale_log2, left, right,
                            lse_batched, uq, uk, tmpl):
            """q, k, v: uint16 (total, heads, D) views, read through the block's own maps
            (Q, K, V: 384 bytes of ``maps``, the call's scratch, made from the template maps
            at ``tmpl``); out: uint32 (total_q, H, D/2); ``uq``, ``uk``: the sequences'
            lengths when they are all equal, else -1 (``cu_seqlens`` read). Block (x, y, z) =
            (positions x*ROWS.., heads y*HB.., sequence z)."""
            tid = cuda.threadIdx.x
            wg = tid >> 7
            b = cuda.blockIdx.z
            if EARLY:   # no load to wait for: the maps before the work tile's loads
                mq = mk = mv = uint64(0)
                if SPLIT:   # written and released by another thread, under those loads
                    if tid == MAP_WRITER:
                        release_words(slot(maps, block_id(b)), tmpl, q, k, v, out)
                elif tid == 0:
                    mq, mk, mv = acquire(slot(maps, block_id(b)), tmpl, q, k, v, out)
            q0, sq, row0, k0, sk, hbase, hkv, n_lo, ntiles = work_tile(
                q, k, cu_q, cu_k, left, right, cuda.blockIdx.x, cuda.blockIdx.y, b, uq, uk)
            if row0 >= sq:
                return
            base = block_base(tid)   # (with SPLIT: the writer's release before the acquire)
            if wg == 0:
                if SPLIT:
                    if tid == 0 and ntiles > 0:
                        mq, mk, mv = acquire_slot(slot(maps, block_id(b)))
                elif not EARLY:
                    # the maps before setmaxnreg.dec: their copy needs more than 24 registers
                    mq = mk = mv = uint64(0)
                    if tid == 0 and ntiles > 0:
                        mq, mk, mv = acquire(slot(maps, block_id(b)), tmpl, q, k, v, out)
                dec()
                if tid == 0 and ntiles > 0:
                    produce_tile(base, mq, mk, mv, q0, sq, row0, hbase, k0, hkv, n_lo,
                                 ntiles, 0, 0)
            else:
                inc()
                last = min(row0 + ROWS, sq) - 1
                f_lo, f_hi = full_key_tiles(row0, last, sq, sk, left, right, BN)
                sched_init(wg - 1)
                consume(base, wg - 1, tid & 127, out, lse, b, q0, sq, sk, row0, hbase, n_lo,
                        ntiles, f_lo, f_hi, left, right, scale_log2, lse_batched, 0, 0,
                        slot(maps, block_id(b)) + uint64(384))

        return flash_ws_kernel

    @cuda.jit(**jit_kw)
    def flash_ws_persistent(q, k, v, out, lse, cu_q, cu_k, maps, scale_log2, left, right,
                            lse_batched, uq, uk, tmpl, nx, ny, n_work):
        """As flash_ws_kernel, each block taking work tiles w = blockIdx.x, + gridDim.x, ...
        of the ``n_work`` = nx * ny * batch tiles (w = x + nx (y + ny b)): the producer
        loads the next tile's Q and K/V while the consumers finish this one."""
        tid = cuda.threadIdx.x
        wg = tid >> 7
        if EARLY:   # no load to wait for: the maps before the barriers' set-up
            mq = mk = mv = uint64(0)
            if tid == 0:
                mq, mk, mv = acquire(slot(maps, cuda.blockIdx.x), tmpl, q, k, v, out)
        base = block_base(tid)
        if wg == 0:
            if not EARLY:
                # the maps before setmaxnreg.dec: their copy needs more than 24 registers
                mq = mk = mv = uint64(0)
                if tid == 0:
                    mq, mk, mv = acquire(slot(maps, cuda.blockIdx.x), tmpl, q, k, v, out)
            dec()
            if tid == 0:
                c = 0
                qn = 0
                for w in range(cuda.blockIdx.x, n_work, cuda.gridDim.x):
                    r = w // nx
                    q0, sq, row0, k0, sk, hbase, hkv, n_lo, ntiles = work_tile(
                        q, k, cu_q, cu_k, left, right, w - r * nx, r % ny, r // ny, uq, uk)
                    if row0 < sq and ntiles > 0:
                        produce_tile(base, mq, mk, mv, q0, sq, row0, hbase, k0, hkv, n_lo,
                                     ntiles, c, qn)
                        c += ntiles
                        qn += 1
        else:
            inc()
            grp = wg - 1
            sched_init(grp)
            c = 0
            qn = 0
            for w in range(cuda.blockIdx.x, n_work, cuda.gridDim.x):
                r = w // nx
                b = r // ny
                q0, sq, row0, k0, sk, hbase, hkv, n_lo, ntiles = work_tile(
                    q, k, cu_q, cu_k, left, right, w - r * nx, r % ny, b, uq, uk)
                if row0 < sq:
                    last = min(row0 + ROWS, sq) - 1
                    f_lo, f_hi = full_key_tiles(row0, last, sq, sk, left, right, BN)
                    consume(base, grp, tid & 127, out, lse, b, q0, sq, sk, row0, hbase,
                            n_lo, ntiles, f_lo, f_hi, left, right, scale_log2, lse_batched,
                            c, qn, slot(maps, cuda.blockIdx.x) + uint64(384))
                    if ntiles > 0:
                        c += ntiles
                        qn += 1

    return flash_ws_persistent


def signature(persistent=False, param_maps=False):
    """The argument types of the persistent (``persistent``) or one-block-per-tile kernel,
    with the template maps' address or (``param_maps``) their 48 words."""
    u2 = array_type(np.uint16, 3)
    tmpl = types.UniTuple(types.int64, 16 * MAPS_PER_BLOCK) if param_maps else types.int64
    return ((u2, u2, u2, array_type(np.uint32, 3), array_type(np.float32, 3),
             array_type(np.int32, 1), array_type(np.int32, 1), array_type(np.int64, 1),
             types.float32, types.int32, types.int32, types.boolean, types.int32, types.int32,
             tmpl) +
            ((types.int32,) * 3 if persistent else ()))
