"""flash_ws's three epilogues for a consumer warpgroup's 64 rows, built per specialisation,
with one signature (``store(acc, m_a, m_b, l_a, l_b, out, lse, b, q0, sq, t, lse_batched,
base, grp, ctid, slot, hbase, prow, pos0, mo)``; ``mo``: the block's O map, used by
``boxed`` alone):

* ``direct``: flash_wgmma's (``softmax.epilogue``): every thread stores its rows' 32-bit
  pairs straight to the output, ``D / 4`` stores per row and thread, each warp store
  touching eight 16-byte pieces of eight rows.
* ``staged``: the normalised pairs go to the consumer's O tile in shared memory (in the
  output's row order, swizzled: ``v6_layout.o_stage_word``), the warpgroup meets on its own
  named barrier, and each thread then copies whole 16-byte chunks out (``D / 16`` loads and
  stores per thread), so a warp writes 512 contiguous bytes per store; rows past the
  sequence are never written. A second barrier before the tile is written keeps a
  persistent block's next work tile from overwriting chunks still being copied out.
* ``boxed``: as ``staged``, but the tile is laid out as the consumer's Q tile (one
  128B-swizzled box per head and 64 columns: ``v6_layout.o_box_word``), so that when all
  its positions lie inside the sequence one thread writes it with ``HB * D / 64`` TMA
  stores through the block's O map (the Q map's geometry, the output's address) and waits
  only until they have read the tile. A tile that reaches past its sequence is copied out
  in 16-byte chunks as ``staged`` does (``o_box_chunk``): a TMA store would write its rows
  past the sequence into the next one.

Both write the lse from lane ``t == 0`` of each quad. Layout maps: ``v6_layout``."""
import functools

from numba import cuda, uint32, uint64

from . import ptx_sm90 as px
from . import ptx_tma as pt
from . import v6_layout as lay
from .common import store_lse
from .softmax import epilogue, finish_rows

#: the staged epilogue's named barriers: consumer ``g`` meets on ``EPI_BAR + g`` (ids 1 and 2
#: are the consumers' tensor-core turns, v6_turns.SCHED_BAR)
EPI_BAR = 3
EPI_THREADS = 128

_word = cuda.jit(device=True, inline=True, cache=True)(lay.o_stage_word)
_chunk = cuda.jit(device=True, inline=True, cache=True)(lay.o_stage_chunk)
_box_word = cuda.jit(device=True, inline=True, cache=True)(lay.o_box_word)
_box_chunk = cuda.jit(device=True, inline=True, cache=True)(lay.o_box_chunk)
_q_box_offset = cuda.jit(device=True, inline=True, cache=True)(lay.q_box_offset)


@functools.lru_cache(maxsize=None)
def direct(D, kind):
    """The per-thread epilogue, in the common signature."""
    finish = epilogue(D // 2, D // 2, px.pack2(kind), px.shfl_xor)

    @cuda.jit(device=True, inline=True, cache=True)
    def store(acc, m_a, m_b, l_a, l_b, out, lse, b, q0, sq, t, lse_batched, base, grp, ctid,
              slot, hbase, prow, pos0, mo):
        pos_a = pos0 + prow
        finish(acc, m_a, m_b, l_a, l_b, out, lse, b, hbase + slot, q0, pos_a, pos_a + 8, sq,
               t, lse_batched)
    return store


@functools.lru_cache(maxsize=None)
def staged(D, kind, HB, o_offset):
    """The epilogue through shared memory: consumer ``grp``'s O tile at ``base + o_offset +
    grp * q_tile_bytes(D)``."""
    PB = lay.positions_per_tile(HB)
    CH = D // 8                              # 16-byte chunks per row = word quads
    COPIES = lay.BLOCK_M * CH // EPI_THREADS
    WORDS = 4 * COPIES
    RSTEP = EPI_THREADS // CH                # stored rows between a thread's chunks
    PSTEP = RSTEP // HB                      # positions between them
    assert RSTEP % HB == 0
    Q_TILE = lay.q_tile_bytes(D)
    pack = px.pack2(kind)
    rows = finish_rows(px.shfl_xor)

    @cuda.jit(device=True, inline=True, cache=True)
    def store(acc, m_a, m_b, l_a, l_b, out, lse, b, q0, sq, t, lse_batched, base, grp, ctid,
              slot, hbase, prow, pos0, mo):
        inv_a, lse_a, inv_b, lse_b = rows(m_a, m_b, l_a, l_b)
        s_o = base + uint32(o_offset + grp * Q_TILE)
        bar = uint32(EPI_BAR + grp)
        ra = slot * PB + prow
        # 1. the rows into the tile (after the previous work tile's copy-out read it)
        pt.bar_sync_data(bar, uint32(EPI_THREADS))
        for i4 in range(CH):
            w = 4 * i4 + t
            pt.st_shared_u32(s_o + uint32(_word(ra, w, D, HB)),
                             pack(acc[4 * i4] * inv_a, acc[4 * i4 + 1] * inv_a))
            pt.st_shared_u32(s_o + uint32(_word(ra + 8, w, D, HB)),
                             pack(acc[4 * i4 + 2] * inv_b, acc[4 * i4 + 3] * inv_b))
        pos_a = pos0 + prow
        # softmax.store_lse_rows' stores, written out: through it flash_ws's PTX differed from
        # that of its last GPU run (734b58f, run 50) in 13 lines of index arithmetic
        if t == 0:
            if pos_a < sq:
                store_lse(lse, lse_batched, b, hbase + slot, q0, pos_a, lse_a)
            if pos_a + 8 < sq:
                store_lse(lse, lse_batched, b, hbase + slot, q0, pos_a + 8, lse_b)
        pt.bar_sync_data(bar, uint32(EPI_THREADS))
        # 2. 16-byte chunks out: chunk g = it * EPI_THREADS + ctid of the tile is chunk
        #    ctid % CH of stored row it * RSTEP + ctid // CH (position row // HB, head
        #    row % HB), so each thread's chunks lie PSTEP positions apart in one column of
        #    the output: one address, then a constant step per store, each predicated on
        #    its position lying inside the sequence; all loads first, then the stores
        cu = uint32(ctid)
        r0 = cu // uint32(CH)
        c = cu - r0 * uint32(CH)
        pos_t = r0 // uint32(HB)
        head_t = r0 - pos_t * uint32(HB)
        words = cuda.local.array(WORDS, uint32)
        for it in range(COPIES):
            w0, w1, w2, w3 = pt.ld_shared_v4(s_o + uint32(_chunk(r0 + uint32(it * RSTEP), c,
                                                                 D, HB)))
            words[4 * it] = w0
            words[4 * it + 1] = w1
            words[4 * it + 2] = w2
            words[4 * it + 3] = w3
        s_row = out.strides[0]
        addr = px.data_ptr(out) + uint64((q0 + pos0 + pos_t) * s_row
                                         + (hbase + head_t) * out.strides[1] + 16 * c)
        inside = sq - pos0 - pos_t      # this thread's positions inside the sequence
        for it in range(COPIES):
            pt.st_global_v4_if(addr + uint64(it * PSTEP * s_row), words[4 * it],
                               words[4 * it + 1], words[4 * it + 2], words[4 * it + 3],
                               uint32(it * PSTEP < inside))
    return store


@functools.lru_cache(maxsize=None)
def boxed(D, kind, HB, o_offset):
    """The epilogue through a Q-shaped tile and TMA stores: consumer ``grp``'s O tile at
    ``base + o_offset + grp * q_tile_bytes(D)`` (1024-byte aligned)."""
    PB = lay.positions_per_tile(HB)
    CH = D // 8
    CB = D // lay.BOX_COLS
    BC = lay.BOX_COLS
    COPIES = lay.BLOCK_M * CH // EPI_THREADS
    WORDS = 4 * COPIES
    Q_TILE = lay.q_tile_bytes(D)
    pack = px.pack2(kind)
    rows = finish_rows(px.shfl_xor)

    @cuda.jit(device=True, inline=True, cache=True)
    def store(acc, m_a, m_b, l_a, l_b, out, lse, b, q0, sq, t, lse_batched, base, grp, ctid,
              slot, hbase, prow, pos0, mo):
        inv_a, lse_a, inv_b, lse_b = rows(m_a, m_b, l_a, l_b)
        s_o = base + uint32(o_offset + grp * Q_TILE)
        bar = uint32(EPI_BAR + grp)
        ra = slot * PB + prow
        # 1. the rows into the tile, once the previous work tile's copy-out (or its TMA
        #    stores: their issuer waited for their reads) is done with it
        pt.bar_sync_data(bar, uint32(EPI_THREADS))
        for i4 in range(CH):
            w = 4 * i4 + t
            pt.st_shared_u32(s_o + uint32(_box_word(ra, w, D, HB)),
                             pack(acc[4 * i4] * inv_a, acc[4 * i4 + 1] * inv_a))
            pt.st_shared_u32(s_o + uint32(_box_word(ra + 8, w, D, HB)),
                             pack(acc[4 * i4 + 2] * inv_b, acc[4 * i4 + 3] * inv_b))
        pos_a = pos0 + prow
        if t == 0:
            if pos_a < sq:
                store_lse(lse, lse_batched, b, hbase + slot, q0, pos_a, lse_a)
            if pos_a + 8 < sq:
                store_lse(lse, lse_batched, b, hbase + slot, q0, pos_a + 8, lse_b)
        whole = mo != 0 and pos0 + PB <= sq
        if whole:   # the tile's stores, visible to the TMA unit (the async proxy)
            pt.fence_proxy_async()
        pt.bar_sync_data(bar, uint32(EPI_THREADS))
        if whole:
            # 2a. one thread: a TMA store per (head, 64 columns), then a wait until they
            #     have read the tile (it is written again by the next work tile)
            if ctid == 0:
                for hi in range(HB):
                    for cb in range(CB):
                        pt.tma_store_3d(mo, s_o + uint32(_q_box_offset(0, hi, cb, D, HB)),
                                        uint32(cb * BC), uint32(hbase + hi),
                                        uint32(q0 + pos0))
                pt.bulk_commit()
                pt.bulk_wait_read()
        else:
            # 2b. the rows inside the sequence in 16-byte chunks: all loads, then the stores
            words = cuda.local.array(WORDS, uint32)
            for it in range(COPIES):
                off, _, _, _ = _box_chunk(it * EPI_THREADS + ctid, D, HB)
                w0, w1, w2, w3 = pt.ld_shared_v4(s_o + uint32(off))
                words[4 * it] = w0
                words[4 * it + 1] = w1
                words[4 * it + 2] = w2
                words[4 * it + 3] = w3
            obase = px.data_ptr(out)
            s_row = out.strides[0]
            s_head = out.strides[1]
            for it in range(COPIES):
                _, pos, head, col = _box_chunk(it * EPI_THREADS + ctid, D, HB)
                if pos0 + pos < sq:
                    addr = obase + uint64((q0 + pos0 + pos) * s_row + (hbase + head) * s_head
                                          + 16 * col)
                    pt.st_global_v4(addr, words[4 * it], words[4 * it + 1],
                                    words[4 * it + 2], words[4 * it + 3])
    return store
