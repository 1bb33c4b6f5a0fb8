"""flash_ws (v6) index maps, emulated in NumPy: the TMA boxes land in the tile layout the wgmma
descriptors read (wgmma_layout), the shared-memory plan is consistent, each consumer thread
owns the rows the accumulator layout gives it, and the full/empty mbarrier protocol of the
producer and the two consumers never lets a consumer read a stage before its tile landed or
the producer overwrite one still in use (a model of the barriers under random schedules)."""
import numpy as np
import pytest

from attn_numba import tensormap
from attn_numba.kernels import v6_roles
from attn_numba.kernels import v6_layout as lay
from attn_numba.kernels import wgmma_layout as wl


def tma_box(x, c0, c1, c2, box):
    """What a TMA tile load reads: ``x[c2 + r, c1, c0 + e]`` for the box ``(cols, 1, rows)``,
    zero where the coordinates leave the tensor."""
    cols, _, rows = box
    out = np.zeros((rows, cols), x.dtype)
    for r in range(rows):
        for e in range(cols):
            p, d = c2 + r, c0 + e
            if 0 <= p < x.shape[0] and 0 <= c1 < x.shape[1] and 0 <= d < x.shape[2]:
                out[r, e] = x[p, c1, d]
    return out


def land(smem, offset, box_data):
    """Write a box into a uint16 shared-memory image with the 128B swizzle (TMA's layout)."""
    assert offset % 1024 == 0
    for r in range(box_data.shape[0]):
        for e in range(box_data.shape[1]):
            smem[(offset + lay.box_swizzled_offset(r, e)) // 2] = box_data[r, e]


def read_tile(smem, offset, rows, cols):
    """The tile that wgmma's descriptors see at ``offset`` (wgmma_layout.smem_offset)."""
    return np.array([[smem[(offset + wl.smem_offset(r, c, rows)) // 2] for c in range(cols)]
                     for r in range(rows)], dtype=smem.dtype)


@pytest.mark.parametrize("rows", [16, 32, 64, 128])
def test_a_swizzled_box_is_rows_of_a_wgmma_column_block(rows):
    for r0 in range(0, rows, 8):
        for r in range(8):
            for e in range(64):
                assert (wl.smem_offset(r0 + r, e, rows) - wl.smem_offset(r0, 0, rows) ==
                        lay.box_swizzled_offset(r, e))


@pytest.mark.parametrize("heads,d", [(4, 128), (2, 64), (1, 128)])
def test_q_boxes_fill_both_consumer_tiles(rng, heads, d):
    pb = lay.positions_per_tile(heads)
    total, nh = 150, 8
    x = rng.integers(1, 60000, size=(total, nh, d)).astype(np.uint16)
    spec = tensormap.tiled_spec("f16", x.shape, pb)
    q0, row0, hbase = 7, 2 * pb, 4 if heads < 8 else 0
    smem = np.zeros(lay.shared_bytes(d, 64, 2) // 2, np.uint16)
    for c in range(lay.CONSUMERS):
        for hi in range(heads):
            for cb in range(d // 64):
                box = tma_box(x, 64 * cb, hbase + hi, q0 + row0 + c * pb, spec.box)
                land(smem, lay.q_box_offset(c, hi, cb, d, heads), box)
    for c in range(lay.CONSUMERS):
        tile = read_tile(smem, c * lay.q_tile_bytes(d), 64, d)
        for r in range(64):
            pos = q0 + row0 + c * pb + r % pb
            want = x[pos, hbase + r // pb] if pos < total else np.zeros(d, np.uint16)
            np.testing.assert_array_equal(tile[r], want)


@pytest.mark.parametrize("bn,d", [(64, 128), (128, 64), (64, 64)])
def test_kv_boxes_fill_a_stage_and_zero_past_the_tensor(rng, bn, d):
    total, nkv, hkv = 200, 2, 1
    x = rng.integers(1, 60000, size=(total, nkv, d)).astype(np.uint16)
    spec = tensormap.tiled_spec("bf16", x.shape, bn)
    smem = np.zeros(lay.shared_bytes(d, bn, 2) // 2, np.uint16)
    key = total - bn // 2                     # the tile reaches past the last key
    st = lay.stage_offset(1, d, bn)
    for cb in range(d // 64):
        land(smem, st + lay.kv_box_offset(cb, bn), tma_box(x, 64 * cb, hkv, key, spec.box))
    tile = read_tile(smem, st, bn, d)
    np.testing.assert_array_equal(tile[:bn // 2], x[key:, hkv])
    assert not tile[bn // 2:].any()


@pytest.mark.parametrize("d,bn,s", [(128, 64, 2), (128, 128, 2), (64, 64, 3), (64, 128, 2)])
def test_shared_plan_matches_v5_steps_and_fits(d, bn, s):
    kv = lay.kv_tile_bytes(d, bn)
    for j in range(2 * s):
        # v5_steps.stage_k with two warpgroups: Q_BYTES + (j % S) * 2 * KV_BYTES
        assert lay.stage_offset(j % s, d, bn) == 2 * lay.q_tile_bytes(d) + (j % s) * 2 * kv
    qf, kf, vf, ke, ve, qe = lay.barrier_offsets(d, bn, s)
    assert qf == lay.stage_offset(s, d, bn)          # barriers after the last V tile
    offs = [qf, qe] + [b + 8 * i for b in (kf, vf, ke, ve) for i in range(s)]
    assert len(set(offs)) == len(offs) and all(o % 8 == 0 for o in offs)
    assert max(offs) + 8 + 1024 == lay.shared_bytes(d, bn, s) <= 227 * 1024
    assert all(lay.stage_offset(i, d, bn) % 1024 == 0 for i in range(s + 1))


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_consumer_rows_follow_the_accumulator_layout(heads):
    pb = lay.positions_per_tile(heads)
    for warp in range(4):
        for lane in range(32):
            slot, prow = lay.consumer_rows(warp, lane, heads)
            for i, off in ((0, 0), (2, 8)):   # registers 0 and 2: rows a and b
                r, _ = wl.acc_rc(warp, lane, i)
                assert (slot, prow + off) == (r // pb, r % pb)


class Barrier:
    """An mbarrier: ``count`` arrivals and the expected transaction bytes complete a phase."""

    def __init__(self, count):
        self.count, self.pending, self.tx, self.phase = count, count, 0, 0

    def arrive(self, expect_tx=0):
        self.tx += expect_tx
        self.pending -= 1
        self._maybe_flip()

    def complete_tx(self, n):
        self.tx -= n
        self._maybe_flip()

    def _maybe_flip(self):
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = self.count

    def done(self, parity):   # try_wait.parity: the phase with this parity has completed
        return (self.phase & 1) != parity


class NamedBarrier:
    """``bar.sync`` / ``bar.arrive`` with ``count`` threads, counted per warp (32 each): a
    phase completes when ``count / 32`` warps have arrived or synced; a sync waits for it."""

    def __init__(self, count, log, bar_id):
        self.warps, self.arrived, self.phase = count // 32, 0, 0
        self.log, self.id = log, bar_id

    def arrive(self):
        self.arrived += 1
        if self.arrived == self.warps:
            self.arrived, self.phase = 0, self.phase + 1
            self.log.append(self.id)
        return self.phase

    def sync(self):
        """A generator: arrive, then wait until the phase this warp arrived in completes."""
        mine = self.phase
        self.arrive()
        while self.phase == mine:
            yield


def _protocol(work, stages, rng, overlap=False, pingpong=False, q_wait=True):
    """Run the producer and 4 warps x 2 consumers of v6_roles against the barrier models in
    a random order, over a block's ``work`` tiles (a list of key-tile counts, or one count):
    the consumers' plain loop or the overlapped one (K of tile j with V of tile j-1), with
    or without their tensor-core turns on named barriers (``pingpong``, in the places
    v6_roles puts ``sched_init``, ``sched_sync`` and ``sched_arrive``), key tiles counted on
    across work tiles, Q reloaded per work tile after Q-empty. Returns, per consumer warp,
    the K and V tiles and the Q loads it read, in order, and the sequence of turns (which
    consumer's barrier completed a phase)."""
    work = [work] if isinstance(work, int) else list(work)
    full = {"K": [Barrier(1) for _ in range(stages)], "V": [Barrier(1) for _ in range(stages)]}
    empty = {kind: [Barrier(v6_roles.EMPTY_ARRIVALS) for _ in range(stages)] for kind in "KV"}
    q_full, q_empty = Barrier(1), Barrier(v6_roles.EMPTY_ARRIVALS)
    data = {}
    in_use = {kind: [set() for _ in range(stages)] for kind in "KVQ"}
    flights = []                                    # TMA loads in flight
    seen = {w: {"K": [], "V": [], "Q": []} for w in range(v6_roles.EMPTY_ARRIVALS)}
    turns = []
    sched = [NamedBarrier(v6_roles.SCHED_THREADS, turns, g) for g in range(lay.CONSUMERS)]

    def producer():
        c = 0
        for qn, ntiles in enumerate(work):
            if qn > 0 and q_wait:
                while not q_empty.done((qn - 1) & 1):
                    yield
            assert not in_use["Q"][0], f"Q load {qn} overwrites Q in use"
            q_full.arrive(expect_tx=100)
            flights.append(("Q", 0, qn))
            yield
            for j in range(c, c + ntiles):
                s, ph = lay.stage_phase(j, stages)
                for kind in "KV":
                    if j >= stages:
                        while not empty[kind][s].done(ph ^ 1):
                            yield
                    assert not in_use[kind][s], f"tile {j} overwrites {kind} of stage {s}"
                    full[kind][s].arrive(expect_tx=100)
                    flights.append((kind, s, j))
                    yield
            c += ntiles

    def use(w, kind, j):
        s, ph = lay.stage_phase(j, stages)
        while not full[kind][s].done(ph):
            yield
        in_use[kind][s].add(w)
        seen[w][kind].append(data[kind, s])

    def release(w, kind, j):
        s, _ = lay.stage_phase(j, stages)
        in_use[kind][s].discard(w)
        empty[kind][s].arrive()

    def turn(g):
        if pingpong:
            yield from sched[g].sync()

    def done(g):
        if pingpong:
            sched[1 - g].arrive()

    def key_loop(w, g, c, ntiles):
        if not overlap:
            yield from turn(g)
            for j in range(c, c + ntiles):
                yield from use(w, "K", j)
                yield
                done(g)
                release(w, "K", j)
                yield from use(w, "V", j)
                yield from turn(g)
                yield
                release(w, "V", j)
            done(g)
            return
        yield from use(w, "K", c)
        yield
        release(w, "K", c)
        for j in range(c + 1, c + ntiles):
            yield from use(w, "K", j)
            yield from use(w, "V", j - 1)
            yield from turn(g)
            yield
            done(g)
            release(w, "K", j)
            yield
            release(w, "V", j - 1)
        yield from use(w, "V", c + ntiles - 1)
        yield
        release(w, "V", c + ntiles - 1)

    def consumer(w):
        g = w // 4
        if pingpong and g == 0:                     # sched_init, once per block
            sched[0].arrive()
        c = 0
        for qn, ntiles in enumerate(work):
            while not q_full.done(qn & 1):
                yield
            in_use["Q"][0].add(w)
            seen[w]["Q"].append(data["Q", 0])
            yield from key_loop(w, g, c, ntiles)
            in_use["Q"][0].discard(w)
            q_empty.arrive()
            c += ntiles
            yield                                   # the epilogue

    actors = [producer()] + [consumer(w) for w in seen]
    steps = 0
    while actors or flights:
        steps += 1
        assert steps < 200000, "deadlock"
        if flights and rng.random() < 0.3:
            kind, s, j = flights.pop(rng.integers(len(flights)))
            data[kind, s] = j
            (q_full if kind == "Q" else full[kind][s]).complete_tx(100)
            continue
        if actors:
            a = actors[rng.integers(len(actors))]
            try:
                next(a)
            except StopIteration:
                actors.remove(a)
    return seen, turns


@pytest.mark.parametrize("pingpong", [False, True])
@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("work,stages", [(1, 2), (5, 2), (9, 3), (2, 3), ([5, 4, 6], 2),
                                         ([1, 3, 1, 2], 2), ([4, 5], 3)])
def test_mbarrier_protocol_orders_every_tile(rng, work, stages, overlap, pingpong):
    """Every consumer warp reads every key tile in order and each work tile's Q; no stage
    and no Q is overwritten in use; the turns alternate."""
    tiles = [work] if isinstance(work, int) else work
    for _ in range(10):
        seen, turns = _protocol(work, stages, rng, overlap, pingpong)
        for w, got in seen.items():
            assert got == {"K": list(range(sum(tiles))), "V": list(range(sum(tiles))),
                           "Q": list(range(len(tiles)))}, (w, got)
        # the consumers' turns alternate, consumer 0 first, one per key tile and work tile
        # (the plain loop: one more per work tile, its first QK^T; the overlapped: one less)
        n = sum(t + 1 if not overlap else t - 1 for t in tiles) if pingpong else 0
        assert turns == [i % 2 for i in range(2 * n)], turns


def test_a_producer_that_skips_the_q_empty_wait_is_caught(rng):
    """The model can fail: loading the next work tile's Q without waiting for Q-empty
    overwrites a Q that a consumer still reads, in some of the random schedules."""
    caught = 0
    for _ in range(20):
        try:
            _protocol([3, 3, 3], 2, rng, q_wait=False)
        except AssertionError as exc:
            caught += "overwrites Q" in str(exc)
    assert caught > 0


def test_a_consumer_without_its_init_arrive_deadlocks(rng, monkeypatch):
    """The turn model can fail: without consumer 0's first arrive neither consumer starts."""
    real = NamedBarrier.arrive
    calls = []

    def skip_first(self):
        calls.append(self.id)
        if len(calls) == 1:
            return self.phase
        return real(self)

    monkeypatch.setattr(NamedBarrier, "arrive", skip_first)
    with pytest.raises(AssertionError, match="deadlock"):
        _protocol(5, 2, rng, overlap=False, pingpong=True)


def test_stage_phase_cycles_stages_and_flips_parity_per_round():
    assert [lay.stage_phase(j, 3) for j in range(7)] == [
        (0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 0)]


@pytest.mark.parametrize("d,heads", [(128, 4), (128, 2), (128, 1), (64, 4), (64, 1)])
def test_staged_o_tile_holds_the_output_rows_in_order(rng, d, heads):
    """The staged epilogue (v6_epilogue.staged), emulated: every thread's 32-bit pairs written
    at ``o_stage_word``, then 16-byte chunks read at ``o_stage_chunk``, give the output's
    rows in order (stored row r = position r // heads, head r % heads); the tile is filled
    exactly once and stays inside ``q_tile_bytes``."""
    pb = lay.positions_per_tile(heads)
    words = rng.integers(0, 2 ** 32, (64, d // 2), dtype=np.uint64).astype(np.uint32)
    tile = np.zeros(lay.q_tile_bytes(d) // 4, np.uint32)
    seen = np.zeros_like(tile, dtype=np.int64)
    for warp in range(4):
        for lane in range(32):
            slot, prow = lay.consumer_rows(warp, lane, heads)
            for row in (slot * pb + prow, slot * pb + prow + 8):
                for i4 in range(d // 8):
                    w = 4 * i4 + (lane & 3)
                    off = lay.o_stage_word(row, w, d, heads)
                    assert off % 4 == 0 and 0 <= off < lay.q_tile_bytes(d)
                    tile[off // 4] = words[row, w]
                    seen[off // 4] += 1
    assert (seen == 1).all()
    for r in range(64):
        pos, head = r // heads, r % heads
        got = np.concatenate([tile[lay.o_stage_chunk(r, c, d, heads) // 4:][:4]
                              for c in range(d // 8)])
        np.testing.assert_array_equal(got, words[head * pb + pos])


@pytest.mark.parametrize("d,heads", [(128, 4), (128, 1), (64, 2)])
def test_staged_o_tile_stores_and_reads_avoid_bank_conflicts(d, heads):
    """A quad-row store instruction (32 lanes, one word each) hits 32 distinct banks; each
    8-lane phase of a 16-byte read covers 8 distinct 16-byte bank groups."""
    pb = lay.positions_per_tile(heads)
    for warp in range(4):
        for i4 in range(d // 8):
            for b in (0, 8):
                banks = set()
                for lane in range(32):
                    slot, prow = lay.consumer_rows(warp, lane, heads)
                    off = lay.o_stage_word(slot * pb + prow + b, 4 * i4 + (lane & 3), d,
                                           heads)
                    banks.add((off // 4) % 32)
                assert len(banks) == 32
    ch = d // 8
    for g0 in range(0, 64 * ch, 8):
        groups = {(lay.o_stage_chunk(g // ch, g % ch, d, heads) // 16) % 8
                  for g in range(g0, g0 + 8)}
        assert len(groups) == 8


def test_staged_shared_plan_fits_and_follows_the_barriers():
    for d, bn, s in ((128, 128, 2), (128, 64, 4), (64, 128, 3)):
        o = lay.o_stage_offset(d, bn, s)
        assert o % 128 == 0 and o >= lay.barrier_offsets(d, bn, s)[5] + 8
        assert lay.shared_bytes(d, bn, s, staged=True) == o + 2 * lay.q_tile_bytes(d) + 1024
        assert lay.shared_bytes(d, bn, s, staged=True) <= 227 * 1024


@pytest.mark.parametrize("d,heads", [(128, 4), (128, 2), (128, 1), (64, 4), (64, 1)])
def test_boxed_o_tile_is_what_a_q_load_would_leave(rng, d, heads):
    """The boxed epilogue (v6_epilogue.boxed), emulated: every thread's pairs written at
    ``o_box_word`` make the tile a load of the output's rows through the Q map would leave
    (the TMA store's source layout: boxes at ``q_box_offset``, ``box_swizzled_offset``
    inside), each word once; and the copy-out of ``o_box_chunk`` reads every chunk once,
    at the output column it names."""
    pb = lay.positions_per_tile(heads)
    words = rng.integers(0, 2 ** 32, (64, d // 2), dtype=np.uint64).astype(np.uint32)
    tile = np.zeros(lay.q_tile_bytes(d) // 4, np.uint32)
    seen = np.zeros_like(tile, dtype=np.int64)
    for warp in range(4):
        for lane in range(32):
            slot, prow = lay.consumer_rows(warp, lane, heads)
            for row in (slot * pb + prow, slot * pb + prow + 8):
                for i4 in range(d // 8):
                    w = 4 * i4 + (lane & 3)
                    off = lay.o_box_word(row, w, d, heads)
                    assert off % 4 == 0 and 0 <= off < lay.q_tile_bytes(d)
                    tile[off // 4] = words[row, w]
                    seen[off // 4] += 1
    assert (seen == 1).all()
    half = tile.view(np.uint16)
    elems = words.view(np.uint16)            # (64 rows, d): row = head * pb + position
    for head in range(heads):
        for cb in range(d // 64):
            start = lay.q_box_offset(0, head, cb, d, heads)
            assert start % 1024 == 0
            for pos in range(pb):
                for e in range(64):
                    got = half[(start + lay.box_swizzled_offset(pos, e)) // 2]
                    assert got == elems[head * pb + pos, 64 * cb + e]
    read = np.zeros(lay.q_tile_bytes(d) // 16, np.int64)
    for g in range(64 * d // 8):
        off, pos, head, col = lay.o_box_chunk(g, d, heads)
        assert off % 16 == 0
        read[off // 16] += 1
        np.testing.assert_array_equal(tile[off // 4:off // 4 + 4],
                                      words[head * pb + pos, 4 * col:4 * col + 4])
    assert (read == 1).all()


@pytest.mark.parametrize("d,heads", [(128, 4), (128, 1), (64, 2)])
def test_boxed_o_tile_stores_and_reads_avoid_bank_conflicts(d, heads):
    """As the staged tile: a quad-row store hits 32 distinct banks, each 8-lane phase of the
    copy-out's 16-byte reads 8 distinct bank groups, and those 8 lanes write 128 contiguous
    bytes of one output row."""
    pb = lay.positions_per_tile(heads)
    for warp in range(4):
        for i4 in range(d // 8):
            for b in (0, 8):
                banks = {(lay.o_box_word(slot * pb + prow + b, 4 * i4 + (lane & 3), d,
                                         heads) // 4) % 32
                         for lane in range(32)
                         for slot, prow in [lay.consumer_rows(warp, lane, heads)]}
                assert len(banks) == 32
    for g0 in range(0, 64 * d // 8, 8):
        got = [lay.o_box_chunk(g, d, heads) for g in range(g0, g0 + 8)]
        assert len({(off // 16) % 8 for off, *_ in got}) == 8
        assert len({(pos, head) for _, pos, head, _ in got}) == 1
        assert sorted(col for *_, col in got) == list(range(got[0][3] // 8 * 8,
                                                            got[0][3] // 8 * 8 + 8))


def test_boxed_shared_plan_aligns_the_o_tiles_to_the_swizzle_atom():
    for d, bn, s in ((128, 64, 3), (128, 128, 2), (64, 64, 2)):
        o = lay.o_stage_offset(d, bn, s, boxed=True)
        assert o % 1024 == 0 and o >= lay.o_stage_offset(d, bn, s)
        assert lay.shared_bytes(d, bn, s, True, True) == o + 2 * lay.q_tile_bytes(d) + 1024
        assert lay.shared_bytes(d, bn, s, True, True) <= 227 * 1024
