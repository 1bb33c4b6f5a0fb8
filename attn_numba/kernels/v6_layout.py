"""Plain-Python index maps of flash_ws (v6, :mod:`attn_numba.kernels.v6_flash_ws`): where each
TMA box lands in shared memory, the shared-memory plan (tiles, then mbarriers) and the rows a
consumer thread owns. Compiled into the kernel and run by the NumPy emulation of
``tests/test_v6_layout.py``; the tile layout is :mod:`attn_numba.kernels.wgmma_layout`'s.

A block has ``CONSUMERS`` = 2 consumer warpgroups, each owning a 64-row Q tile; a row is a
(head, position) pair of one GQA group: ``heads`` query heads x ``PB = 64 / heads``
positions, row ``r`` = head ``r // PB``, position ``r % PB``; consumer ``c`` takes the
positions ``row0 + c PB ..``. So a block covers ``2 PB`` positions of ``heads`` heads.

TMA boxes (:func:`attn_numba.tensormap.tiled_spec`): ``(64, 1, PB)`` for Q (PB positions of
one head, 64 elements of D) and ``(64, 1, BN)`` for K and V. With the 128B swizzle a box of
``n`` rows lands as ``n`` 128-byte rows, 16-byte chunk ``c`` of row ``r`` at chunk
``c ^ (r % 8)`` counted from a 1024-byte aligned address, which is exactly rows
``r0 .. r0 + n - 1`` of a column block of a wgmma tile when ``r0 % 8 == 0``.
"""

SWIZZLE_BYTES = 128
ATOM_BYTES = 1024
BLOCK_M = 64          # rows per consumer warpgroup
CONSUMERS = 2
BOX_COLS = 64         # elements of D per box (128 bytes)
BAR_BYTES = 8


def positions_per_tile(heads):
    """PB: positions per 64-row tile when it packs ``heads`` heads of a GQA group."""
    return BLOCK_M // heads


def q_tile_bytes(head_size):
    return 2 * BLOCK_M * head_size


def kv_tile_bytes(head_size, block_n):
    return 2 * block_n * head_size


def q_box_offset(consumer, head_slot, cb, head_size, heads):
    """Byte offset from the (1024-aligned) shared base of the Q box of ``head_slot`` (0 ..
    heads-1) and column block ``cb`` (elements ``64 cb ..`` of D) of ``consumer``'s tile
    (a leaf function: the kernel compiles it)."""
    pb = 64 // heads
    return (consumer * 128 * head_size + cb * 64 * SWIZZLE_BYTES +
            head_slot * pb * SWIZZLE_BYTES)


def kv_box_offset(cb, block_n):
    """Byte offset, inside a K (or V) tile of ``block_n`` keys, of column block ``cb``."""
    return cb * block_n * SWIZZLE_BYTES


def stage_offset(stage, head_size, block_n):
    """Byte offset of stage ``stage``'s K tile (its V tile follows at + kv_tile_bytes)."""
    return CONSUMERS * q_tile_bytes(head_size) + stage * 2 * kv_tile_bytes(head_size, block_n)


def barrier_offsets(head_size, block_n, stages):
    """(q_full, k_full, v_full, k_empty, v_empty, q_empty) byte offsets: the Q barrier, then
    ``stages`` each of K-full, V-full, K-empty and V-empty barriers (stage ``s`` at + 8 s),
    then Q-empty, after the tiles. K and V have their own empty barriers so that a stage's K
    can be refilled as soon as QK^T has read it, while PV still reads its V; Q-empty lets
    the persistent kernel load its next tile's Q once the consumers are done with this one."""
    base = stage_offset(stages, head_size, block_n)
    return (base,) + tuple(base + BAR_BYTES * (1 + i * stages) for i in range(5))


def o_stage_offset(head_size, block_n, stages, boxed=False):
    """Byte offset of the staged epilogue's O tiles (consumer ``c``'s at + ``c``
    q_tile_bytes) after the barriers: 128-byte aligned, or (``boxed``: TMA stores read
    them with the 128B swizzle) 1024-byte aligned."""
    end = barrier_offsets(head_size, block_n, stages)[5] + BAR_BYTES
    a = ATOM_BYTES if boxed else 128
    return (end + a - 1) // a * a


def shared_bytes(head_size, block_n, stages, staged=False, boxed=False):
    """Dynamic shared memory of a block: tiles, barriers, (``staged``) the epilogue's O
    tiles (``boxed``: 1024-byte aligned), and 1024 bytes of slack for the base's alignment
    to the swizzle atom."""
    if staged:
        end = (o_stage_offset(head_size, block_n, stages, boxed)
               + CONSUMERS * q_tile_bytes(head_size))
    else:
        end = barrier_offsets(head_size, block_n, stages)[5] + BAR_BYTES
    return end + ATOM_BYTES


def o_stage_word(row, word, head_size, heads):
    """Byte offset, inside a consumer's staged O tile, of 32-bit word ``word`` (columns
    ``2 word, 2 word + 1``) of accumulator row ``row`` (head ``row // PB``, position
    ``row % PB``). The tile holds the rows in the output's order, position-major
    (``position * heads + head``, ``2 head_size`` bytes each), so that each position's
    ``heads`` rows are one contiguous run of the output; the 16-byte chunks of a row are
    swizzled by the position (chunk ``c`` at ``c ^ (position % 8)``), so that the eight rows
    of a quad's stores (eight positions) and the eight chunks of a 128-byte read fall in
    distinct banks."""
    pb = 64 // heads
    pos, head = row % pb, row // pb
    chunk = word >> 2
    return ((pos * heads + head) * 2 * head_size + ((chunk ^ (pos & 7)) << 4)
            + ((word & 3) << 2))


def o_stage_chunk(r, c, head_size, heads):
    """Byte offset, inside a staged O tile, of 16-byte chunk ``c`` of stored row ``r``
    (= position ``r // heads``, head ``r % heads``): the reading side of
    :func:`o_stage_word`."""
    return r * 2 * head_size + ((c ^ ((r // heads) & 7)) << 4)


def o_box_word(row, word, head_size, heads):
    """Byte offset, inside a consumer's O tile of the boxed epilogue, of 32-bit word
    ``word`` (columns ``2 word, 2 word + 1``) of accumulator row ``row`` (head ``row //
    PB``, position ``row % PB``). The tile is laid out as the consumer's Q tile
    (:func:`q_box_offset`): one 128B-swizzled box per head and 64 columns, position-rows,
    so that a TMA store through the Q map's geometry writes it out."""
    pb = 64 // heads
    pos, head = row % pb, row // pb
    e = (2 * word) & 63
    # q_box_offset(0, head, word >> 5, ...), written out: a leaf function for the kernel
    return ((word >> 5) * 64 * SWIZZLE_BYTES + head * pb * SWIZZLE_BYTES
            + pos * SWIZZLE_BYTES + (((e >> 3) ^ (pos & 7)) << 4) + (e & 7) * 2)


def o_box_chunk(g, head_size, heads):
    """(byte offset in the boxed O tile, position, head, 16-byte column chunk of the output
    row) of chunk ``g`` (0 .. 64 D / 8 - 1) of a consumer's boxed O tile, in the copy-out
    order of a tile that reaches past its sequence: eight consecutive ``g`` read one
    128-byte box row (conflict-free) and write 128 contiguous bytes of the output; then the
    row's next 64 columns, then the next head of the same position."""
    cb_n = head_size // 64
    c8 = g & 7
    rest = g >> 3
    cb = rest % cb_n
    rr = rest // cb_n
    pos = rr // heads
    head = rr - pos * heads
    off = ((cb * 64 + head * (64 // heads) + pos) * SWIZZLE_BYTES   # q_box_offset(0, ...)
           + ((c8 ^ (pos & 7)) << 4))
    return off, pos, head, cb * 8 + c8


def box_swizzled_offset(r, e):
    """Byte offset, from a box's (1024-aligned) landing address, of element ``e`` (0..63) of
    row ``r`` of a 128-byte-wide box loaded with the 128B swizzle (the TMA's layout)."""
    return r * SWIZZLE_BYTES + (((e >> 3) ^ (r & 7)) << 4) + (e & 7) * 2


def consumer_rows(warp, lane, heads):
    """(head slot, position offset of row a) of thread (warp 0..3, lane) of a consumer
    warpgroup: warp ``w`` has rows ``16 w .. 16 w + 15`` (one head); row b is 8 positions
    further (the accumulator layout of wgmma_layout.acc_rc)."""
    pb = 64 // heads
    return (16 * warp) // pb, (16 * warp) % pb + (lane >> 2)


def stage_phase(j, stages):
    """(stage, parity) of key tile ``j``: its full barriers complete phase ``j // stages``."""
    return j % stages, (j // stages) & 1


def check_nreg(n):
    """``setmaxnreg``'s count: a multiple of 8 in 24..256 (ValueError otherwise)."""
    if not isinstance(n, int) or n % 8 or not 24 <= n <= 256:
        raise ValueError(f"setmaxnreg count must be a multiple of 8 in 24..256, got {n!r}")
