"""The two roles of flash_ws (v6) as device functions, built per specialisation: the producer
(one thread issuing every TMA load of a block) and a consumer warpgroup (QK^T, online
softmax, PV and the epilogue on 64 rows). They meet only at mbarriers in shared memory:

* ``q_full``: one arrival (the producer's ``arrive.expect_tx``) plus the bytes of the Q
  tiles it loads (a consumer whose rows all lie past the sequence gets none); completes
  phase 0 once.
* ``k_full[s]``, ``v_full[s]``: one arrival plus a K (V) tile's bytes; phase ``j // S``
  completes when tile ``j`` has landed in stage ``s = j % S``.
* ``k_empty[s]``, ``v_empty[s]``: ``EMPTY_ARRIVALS`` = 8 arrivals, lane 0 of every consumer
  warp once its QK^T (PV) wgmma of the stage's tile has completed; the producer waits for
  phase ``j // S - 1`` of each before loading tile ``j``'s K (V) into stage ``s``.
* ``q_empty``: 8 arrivals once a consumer warp's key loop is over; the persistent kernel's
  producer waits for it before loading the next work tile's Q (Q load ``n`` waits for phase
  ``n - 1``; ``q_full`` completes phase ``n``).

Key tiles are counted over the block's whole life (``c0``: the tiles of its earlier work
tiles), so the ring and its parities run on from one work tile to the next.

A consumer's key loop is the plain one (wait K, QK^T, softmax, wait V, PV) or the
overlapped one (QK^T of tile j issued with PV of tile j-1). With ``pingpong`` the two
consumer warpgroups also take turns at the tensor cores on two named barriers
(FlashAttention-3's warp-scheduler barriers, :mod:`v6_turns`): the wgmma a warpgroup
issues between ``sched_sync`` and ``sched_arrive`` run while the other one does its
softmax. The maths steps (QK^T / PV issue, softmax, rescale and pack, epilogue) are
flash_wgmma's (:func:`attn_numba.kernels.v5_steps.steps` with two warpgroups per block),
unchanged: the tile layout the TMA writes is the one v5's cp.async wrote. Index maps:
``v6_layout``.
"""
import functools
from collections import namedtuple

import numpy as np
from numba import cuda, float32, uint32, uint64

from . import ptx_sm90 as px
from . import ptx_tma as pt
from . import v5_steps
from . import v6_epilogue
from . import v6_layout as lay
from .common import NEG_INF, key_range
from .v6_turns import SCHED_BAR, SCHED_THREADS, scheduler as _scheduler  # noqa: F401

ZERO = np.float32(0.0)
EMPTY_ARRIVALS = 4 * lay.CONSUMERS
#: try_wait attempts before a debug build reports a wait as hung (each attempt waits a
#: hardware-chosen time: a few microseconds, so about seconds in all)
WAIT_LIMIT = 1 << 20
Roles = namedtuple("Roles",
                   "init_barriers acquire acquire_words release_words acquire_slot produce_tile "
                   "consume sched_init")

_stage_phase = cuda.jit(device=True, inline=True, cache=True)(lay.stage_phase)
_consumer_rows = cuda.jit(device=True, inline=True, cache=True)(lay.consumer_rows)
_q_box_offset = cuda.jit(device=True, inline=True, cache=True)(lay.q_box_offset)
_kv_box_offset = cuda.jit(device=True, inline=True, cache=True)(lay.kv_box_offset)


@functools.lru_cache(maxsize=None)
def _wait(debug_waits):
    """``wait(bar, parity, what, j)``: an mbarrier wait; with ``debug_waits`` bounded to
    ``WAIT_LIMIT`` attempts, printing which one ran out."""
    if debug_waits:
        @cuda.jit(device=True, inline=True, cache=True)
        def wait(bar, parity, what, j):
            """Wait for barrier ``what`` (0 Q, 1 K, 2 V, 3 K empty, 4 V empty, 5 Q empty) of
            tile ``j``."""
            if pt.mbarrier_wait_bounded(bar, parity, WAIT_LIMIT) == 0:
                print("flash_ws: wait timed out: barrier", what, "tile", j, "parity", parity,
                      "block", cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z, "thread",
                      cuda.threadIdx.x)
    else:
        @cuda.jit(device=True, inline=True, cache=True)
        def wait(bar, parity, what, j):
            pt.mbarrier_wait(bar, parity)

    return wait


def _producer(D, BN, HB, S, wait, stage_k, prefetch=False, o_map=False):
    """(init_barriers, acquire, acquire_words, release_words, acquire_slot, produce) for one
    specialisation; with ``o_map`` each block also gets an O map (the Q map's geometry, the
    output's address) after its V map, for the boxed epilogue's TMA stores."""
    copy3 = pt.tensormap_copy(3)
    copy1 = pt.tensormap_copy(1)
    store_q, store_k, store_v = (pt.tensormap_store(16 * i) for i in range(3))
    PB = lay.positions_per_tile(HB)
    CB = D // lay.BOX_COLS
    BC = lay.BOX_COLS
    NC = lay.CONSUMERS
    Q_TILE = lay.q_tile_bytes(D)
    KV_BYTES = lay.kv_tile_bytes(D, BN)
    QF, KF, VF, KE, VE, QE = lay.barrier_offsets(D, BN, S)

    @cuda.jit(device=True, inline=True, cache=True)
    def init_barriers(base):
        """Thread 0: every mbarrier of the block, then the init fence (a block barrier must
        follow before any use)."""
        pt.mbarrier_init(base + uint32(QF), 1)
        for s in range(S):
            pt.mbarrier_init(base + uint32(KF + 8 * s), 1)
            pt.mbarrier_init(base + uint32(VF + 8 * s), 1)
            pt.mbarrier_init(base + uint32(KE + 8 * s), EMPTY_ARRIVALS)
            pt.mbarrier_init(base + uint32(VE + 8 * s), EMPTY_ARRIVALS)
        pt.mbarrier_init(base + uint32(QE), EMPTY_ARRIVALS)
        pt.fence_mbarrier_init()

    @cuda.jit(device=True, inline=True, cache=True)
    def release_maps(mq, mk, mv, q, k, v, out):
        """The call's q, k, v (``o_map``: and out) addresses written into the maps at
        ``mq``, ``mk``, ``mv`` (and ``mv + 128``) and released
        (``fence.proxy.tensormap::generic.release.gpu``)."""
        pt.tensormap_replace_address(mq, px.data_ptr(q))
        pt.tensormap_replace_address(mk, px.data_ptr(k))
        pt.tensormap_replace_address(mv, px.data_ptr(v))
        if o_map:
            pt.tensormap_replace_address(mv + uint64(128), px.data_ptr(out))
        pt.fence_tensormap_release()

    @cuda.jit(device=True, inline=True, cache=True)
    def acquire_slot(slot):
        """The three maps at ``slot`` acquired by the thread that issues their TMA (after
        :func:`release_maps` in this thread, or in another one of the block before a block
        barrier). Returns their addresses."""
        mq = uint64(slot)
        mk = mq + uint64(128)
        mv = mq + uint64(256)
        pt.fence_tensormap_acquire(mq)
        pt.fence_tensormap_acquire(mk)
        pt.fence_tensormap_acquire(mv)
        return mq, mk, mv

    if prefetch:
        plain_acquire_slot = acquire_slot

        @cuda.jit(device=True, inline=True, cache=True)
        def acquire_slot(slot):   # noqa: F811
            """As above, then each map fetched into the TMA unit's descriptor cache (the
            acquire invalidated it; ``prefetch_maps``), ahead of the first TMA."""
            mq, mk, mv = plain_acquire_slot(slot)
            pt.prefetch_tensormap(mq)
            pt.prefetch_tensormap(mk)
            pt.prefetch_tensormap(mv)
            return mq, mk, mv

    @cuda.jit(device=True, inline=True, cache=True)
    def acquire(slot, tmpl, q, k, v, out):
        """The block's own Q, K and V (and O) maps at ``slot`` (128 bytes each, of the
        call's scratch): the specialisation's template maps at ``tmpl`` copied there (O:
        Q's), the call's addresses written, released and acquired by this thread (once per
        block, before any TMA; the O map's user acquires it itself)."""
        mq = uint64(slot)
        mk = mq + uint64(128)
        mv = mq + uint64(256)
        copy3(mq, uint64(tmpl))
        if o_map:
            copy1(mq + uint64(384), uint64(tmpl))
        release_maps(mq, mk, mv, q, k, v, out)
        return acquire_slot(slot)

    @cuda.jit(device=True, inline=True, cache=True)
    def release_words(slot, words, q, k, v, out):
        """The maps at ``slot`` written from the template's 48 words ``words`` (kernel
        parameters: stores, no load; O from Q's), the call's addresses in them, released."""
        mq = uint64(slot)
        mk = mq + uint64(128)
        mv = mq + uint64(256)
        store_q(mq, words)
        store_k(mk, words)
        store_v(mv, words)
        if o_map:
            store_q(mq + uint64(384), words)
        release_maps(mq, mk, mv, q, k, v, out)

    @cuda.jit(device=True, inline=True, cache=True)
    def acquire_words(slot, words, q, k, v, out):
        """As :func:`acquire`, from the template's words (:func:`release_words`)."""
        release_words(slot, words, q, k, v, out)
        return acquire_slot(slot)

    @cuda.jit(device=True, inline=True, cache=True)
    def produce_tile(base, mq, mk, mv, q0, sq, row0, hbase, k0, hkv, n_lo, ntiles, c0, qn):
        """One thread, one work tile: Q of both consumers (load ``qn`` of the block: after
        the consumers released load ``qn - 1``), then K/V tile j (keys n_lo + j BN ..) into
        stage (c0 + j) % S, K as soon as that stage's K is free, then V likewise. Box rows
        past the tensor are zero-filled (and still counted in the barrier's bytes); no box
        starts past it."""
        qbar = base + uint32(QF)
        if qn > 0:
            wait(base + uint32(QE), uint32((qn - 1) & 1), 5, qn)
        # a consumer whose rows all lie past the sequence gets no Q (its box would start
        # past the tensor); its rows are never written. Every other box starts inside it.
        nq = 0
        for c in range(NC):
            if row0 + c * PB < sq:
                nq += 1
        pt.mbarrier_arrive_expect_tx(qbar, uint32(nq * Q_TILE))
        for c in range(nq):
            for hi in range(HB):
                for cb in range(CB):
                    pt.tma_load_3d(base + uint32(_q_box_offset(c, hi, cb, D, HB)), mq,
                                   uint32(cb * BC), uint32(hbase + hi),
                                   uint32(q0 + row0 + c * PB), qbar)
        for j in range(ntiles):
            ju = uint32(c0 + j)     # unsigned: j % S and j // S without a sign fix-up
            s, ph = _stage_phase(ju, S)
            sk_ = stage_k(base, ju)
            key = uint32(k0 + n_lo + j * BN)
            if ju >= S:
                wait(base + uint32(KE + 8 * s), uint32(ph ^ 1), 3, j)
            kb = base + uint32(KF + 8 * s)
            pt.mbarrier_arrive_expect_tx(kb, uint32(KV_BYTES))
            for cb in range(CB):
                pt.tma_load_3d(sk_ + uint32(_kv_box_offset(cb, BN)), mk,
                               uint32(cb * BC), uint32(hkv), key, kb)
            if ju >= S:
                wait(base + uint32(VE + 8 * s), uint32(ph ^ 1), 4, j)
            vb = base + uint32(VF + 8 * s)
            pt.mbarrier_arrive_expect_tx(vb, uint32(KV_BYTES))
            for cb in range(CB):
                pt.tma_load_3d(sk_ + uint32(KV_BYTES + _kv_box_offset(cb, BN)), mv,
                               uint32(cb * BC), uint32(hkv), key, vb)

    return init_barriers, acquire, acquire_words, release_words, acquire_slot, produce_tile


def _loops(D, BN, S, st, wait, pingpong):
    """(loop_plain, loop_overlap, sched_init): a consumer's key loop, from v5's steps
    ``st``, and the once-per-block start of the turns (:func:`_scheduler`)."""
    KV_BYTES = lay.kv_tile_bytes(D, BN)
    _, KF, VF, KE, VE, _ = lay.barrier_offsets(D, BN, S)
    stage_k, issue_qk, issue_pv = st.stage_k, st.issue_qk, st.issue_pv
    softmax, rescale_pack = st.softmax, st.rescale_pack
    rescale_o, pack_p = st.rescale, st.pack_p
    fence_s = px.fence_acc(BN // 2)
    fence_o = px.fence_acc(D // 2)
    wait0 = px.wgmma_wait(0)
    wait1 = px.wgmma_wait(1)
    sched_init, sched_sync, sched_arrive = _scheduler(pingpong)

    @cuda.jit(device=True, inline=True, cache=True)
    def release(base, bar, stg, lane):
        if lane == 0:
            pt.mbarrier_arrive(base + uint32(bar + 8 * stg))

    @cuda.jit(device=True, inline=True, cache=True)
    def loop_plain(base, grp, sQw, s, o, pa, n_lo, ntiles, c0, f_lo, f_hi, t, lane, lo_a,
                   hi_a, lo_b, hi_b, scale_log2):
        """The simplest pipeline: per tile wait K, S = QK^T, release K, softmax, wait V,
        O += PV, release V. With pingpong a warpgroup's turn at the tensor cores is PV of
        tile j-1 and QK^T of tile j. Returns the rows' (m_a, m_b, l_a, l_b)."""
        m_a = NEG_INF
        m_b = NEG_INF
        l_a = ZERO
        l_b = ZERO
        sched_sync(grp)
        for j in range(ntiles):
            ju = uint32(c0 + j)
            stg, ph = _stage_phase(ju, S)
            n0 = n_lo + j * BN
            sk_ = stage_k(base, ju)
            wait(base + uint32(KF + 8 * stg), uint32(ph), 1, j)
            px.wgmma_fence()
            issue_qk(s, sQw, sk_)
            px.wgmma_commit()
            sched_arrive(grp)
            wait0()
            fence_s(s)
            release(base, KE, stg, lane)
            masked = not (f_lo <= n0 and n0 + BN <= f_hi)
            m_a, m_b, l_a, l_b, al_a, al_b = softmax(
                s, n0, masked, t, lo_a, hi_a, lo_b, hi_b, m_a, m_b, l_a, l_b, scale_log2)
            rescale_pack(o, s, pa, al_a, al_b)
            wait(base + uint32(VF + 8 * stg), uint32(ph), 2, j)
            sched_sync(grp)
            px.wgmma_fence()
            issue_pv(o, pa, sk_ + uint32(KV_BYTES))
            px.wgmma_commit()
            wait0()
            fence_o(o)
            release(base, VE, stg, lane)
        sched_arrive(grp)
        return m_a, m_b, l_a, l_b

    @cuda.jit(device=True, inline=True, cache=True)
    def loop_overlap(base, grp, sQw, s, o, pa, n_lo, ntiles, c0, f_lo, f_hi, t, lane, lo_a,
                     hi_a, lo_b, hi_b, scale_log2):
        """FlashAttention-3's intra-warpgroup overlap, in its order: per tile j >= 1, issue
        QK^T of tile j, rescale O by tile j-1's correction while it runs, issue PV of tile
        j-1, then the softmax of tile j while PV still runs; K of tile j is released once
        QK^T has completed, V of tile j-1 once PV has, and P of tile j is packed after that.
        With pingpong a warpgroup's turn at the tensor cores is that pair of issues.
        ``ntiles >= 1``; the first QK^T and the last PV are peeled (no accumulator is a phi
        across a wgmma)."""
        n0 = n_lo
        first = uint32(c0)
        stg, ph = _stage_phase(first, S)
        wait(base + uint32(KF + 8 * stg), uint32(ph), 1, 0)
        sched_sync(grp)
        px.wgmma_fence()
        issue_qk(s, sQw, stage_k(base, first))
        px.wgmma_commit()
        sched_arrive(grp)
        wait0()
        fence_s(s)
        release(base, KE, stg, lane)
        m_a, m_b, l_a, l_b, al_a, al_b = softmax(
            s, n0, not (f_lo <= n0 and n0 + BN <= f_hi), t, lo_a, hi_a, lo_b, hi_b, NEG_INF,
            NEG_INF, ZERO, ZERO, scale_log2)
        pack_p(s, pa)
        for j in range(1, ntiles):
            ju = uint32(c0 + j)
            stg, ph = _stage_phase(ju, S)
            prv, pph = _stage_phase(ju - uint32(1), S)
            n0 = n_lo + j * BN
            wait(base + uint32(KF + 8 * stg), uint32(ph), 1, j)
            sched_sync(grp)
            px.wgmma_fence()
            issue_qk(s, sQw, stage_k(base, ju))
            px.wgmma_commit()
            rescale_o(o, al_a, al_b)            # under QK^T of tile j
            wait(base + uint32(VF + 8 * prv), uint32(pph), 2, ju - uint32(1))
            px.wgmma_fence()
            issue_pv(o, pa, stage_k(base, ju - uint32(1)) + uint32(KV_BYTES))
            px.wgmma_commit()
            sched_arrive(grp)
            wait1()                             # S of tile j is ready; PV of j-1 still runs
            fence_s(s)
            release(base, KE, stg, lane)
            m_a, m_b, l_a, l_b, al_a, al_b = softmax(
                s, n0, not (f_lo <= n0 and n0 + BN <= f_hi), t, lo_a, hi_a, lo_b, hi_b, m_a,
                m_b, l_a, l_b, scale_log2)
            wait0()
            fence_o(o)
            release(base, VE, prv, lane)
            pack_p(s, pa)
        last = uint32(c0 + ntiles - 1)
        stg, ph = _stage_phase(last, S)
        rescale_o(o, al_a, al_b)
        wait(base + uint32(VF + 8 * stg), uint32(ph), 2, last)
        px.wgmma_fence()
        issue_pv(o, pa, stage_k(base, last) + uint32(KV_BYTES))
        px.wgmma_commit()
        wait0()
        fence_o(o)
        release(base, VE, stg, lane)
        return m_a, m_b, l_a, l_b

    return loop_plain, loop_overlap, sched_init


@functools.lru_cache(maxsize=None)
def roles(D, BN, kind, HB, S, overlap=False, debug_waits=False, pingpong=False, lean=False,
          staged=False, prefetch=False, tma_out=False, lazy=False):
    """Device functions for head size ``D``, key tile ``BN``, ``kind`` ('f16'/'bf16'),
    ``HB`` heads per tile, ``S`` K/V stages and the consumer loop (``overlap``: QK^T of tile
    j with PV of tile j-1), ``pingpong`` (the consumers take turns at the tensor cores:
    :mod:`v6_turns`), ``lean`` (the softmax folds the scale into its exponent and masks
    on 32-bit offsets: ``v5_steps.steps``), ``staged`` (O leaves through shared memory in
    16-byte chunks: ``v6_epilogue``), ``prefetch`` (the maps fetched into the TMA unit's
    descriptor cache once acquired), ``tma_out`` (with ``staged``: the boxed epilogue,
    whole tiles written by TMA stores through each block's O map), ``lazy`` (the running
    maxima move only by more than ``softmax.LAZY_THRESHOLD``, and O is rescaled only where
    a row of the warp's moved: ``v5_steps.steps``). ``debug_waits``: every mbarrier wait
    gives up after ``WAIT_LIMIT`` attempts and prints which one (a hang becomes a wrong
    result and a line on stdout)."""
    PB = lay.positions_per_tile(HB)
    Q_TILE = lay.q_tile_bytes(D)
    QF = lay.barrier_offsets(D, BN, S)[0]
    S_LEN = BN // 2
    PA_LEN = 4 * (BN // 16)
    O_LEN = D // 2
    st = v5_steps.steps(D, BN, kind, HB, False, S, lay.CONSUMERS, lean, lazy)
    assert staged or not tma_out
    if tma_out:
        store = v6_epilogue.boxed(D, kind, HB, lay.o_stage_offset(D, BN, S, True))
    elif staged:
        store = v6_epilogue.staged(D, kind, HB, lay.o_stage_offset(D, BN, S))
    else:
        store = v6_epilogue.direct(D, kind)
    O_MAP = tma_out
    wait = _wait(debug_waits)
    (init_barriers, acquire, acquire_words, release_words, acquire_slot,
     produce_tile) = _producer(D, BN, HB, S, wait, st.stage_k, prefetch, tma_out)
    plain, overlapped, sched_init = _loops(D, BN, S, st, wait, pingpong)
    loop = overlapped if overlap else plain
    QE = lay.barrier_offsets(D, BN, S)[5]

    @cuda.jit(device=True, inline=True, cache=True)
    def consume(base, grp, ctid, out, lse, b, q0, sq, sk, row0, hbase, n_lo, ntiles,
                f_lo, f_hi, left, right, scale_log2, lse_batched, c0, qn, mo):
        """Consumer warpgroup ``grp`` (thread ``ctid`` 0..127 of it), one work tile: its
        rows, the key loop (key tiles ``c0 ..`` of the block, Q load ``qn``), the release of
        Q, the epilogue. ``mo``: the block's O map (``tma_out``); its TMA stores come after
        a Q load, which orders them after the producer's release of the map: a tile with no
        key tile copies its rows out instead (``mo`` 0 to the epilogue)."""
        warp = ctid >> 5
        lane = ctid & 31
        t = lane & 3
        slot, prow = _consumer_rows(warp, lane, HB)
        pos0 = row0 + grp * PB
        pos_a = pos0 + prow
        pos_b = pos_a + 8
        lo_a, hi_a = key_range(pos_a, sq, sk, left, right)
        lo_b, hi_b = key_range(pos_b, sq, sk, left, right)
        sQw = base + uint32(grp * Q_TILE)
        s = cuda.local.array(S_LEN, float32)
        o = cuda.local.array(O_LEN, float32)
        pa = cuda.local.array(PA_LEN, uint32)
        for i in range(O_LEN):
            o[i] = ZERO
        m_a = NEG_INF
        m_b = NEG_INF
        l_a = ZERO
        l_b = ZERO
        mo_ok = uint64(0)
        if ntiles > 0:
            wait(base + uint32(QF), uint32(qn & 1), 0, qn)
            if O_MAP:
                mo_ok = uint64(mo)
                if ctid == 0 and qn == 0:   # once per block, fetched under the key loop
                    pt.fence_tensormap_acquire(mo_ok)
                    pt.prefetch_tensormap(mo_ok)
            m_a, m_b, l_a, l_b = loop(base, grp, sQw, s, o, pa, n_lo, ntiles, c0, f_lo, f_hi,
                                      t, lane, lo_a, hi_a, lo_b, hi_b, scale_log2)
            if lane == 0:
                pt.mbarrier_arrive(base + uint32(QE))
        store(o, m_a, m_b, l_a, l_b, out, lse, b, q0, sq, t, lse_batched, base, grp, ctid,
              slot, hbase, prow, pos0, mo_ok)

    return Roles(init_barriers, acquire, acquire_words, release_words, acquire_slot,
                 produce_tile, consume, sched_init)
