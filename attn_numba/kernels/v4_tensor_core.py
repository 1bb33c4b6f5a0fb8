"""v4: flash attention on the tensor cores: Q.K^T and P.V with mma.sync m16n8k16 (fp16 in,
fp32 accumulate) through a thin CUDA C++ bridge, online softmax in fp32 registers.

Numba has no tensor-core intrinsics; :mod:`attn_numba.kernels.mma_bridge` links three one-
instruction wrappers (mma, fp32->fp16x2 packing, ex2.approx). All of the logic is here.

Work decomposition (FlashAttention-2 style): a block of ``WARPS`` = 4 warps owns ``BLOCK_M`` =
64 (query position, head) rows of one sequence; each warp owns 16 positions of one head, as
the M dimension of its mma tiles. GQA: the block's warps cover ``HB`` heads of one group
(4 when the group size allows, else 2 or 1) and ``64 / HB`` positions, so every K/V tile a
block stages serves ``HB`` heads. The block walks the key tiles (``block_n`` keys each) that
intersect its positions' band, staging K and V in shared memory:

* K is stored row-major as fp16 pairs (uint32 words), rows padded by 4 words, so the B
  fragment of Q.K^T (``B[k, n] = K[n, k]``, pairs along the head dimension) is one 32-bit
  load per register, free of bank conflicts.
* V is stored "pair-interleaved": word ``(p, d)`` holds ``(V[2p, d], V[2p+1, d])``, rows
  padded by 8 words, so the B fragment of P.V (pairs along the key dimension) is also one
  conflict-free 32-bit load. The interleave is done with integer ops while staging.
* Q fragments stay in registers for the whole key loop; the S accumulator of Q.K^T is turned
  into the A fragment of P.V in registers (the C layout of two n8 tiles is the A layout of
  one k16 step), so P never touches shared memory.

Staging: K and V come in with 64-bit, branch-free global loads (row clamped, value zeroed
past the sequence), issued in batches before their shared-memory stores; for D <= 128 the
loads of tile i+1 go into registers before the mma work of tile i (``PREFETCH_TILES``).
Measured speeds and what was tried: notes/v4_tensor_core.md.

Masking: the tile loop covers only key tiles that intersect the block's band; a warp skips
tiles outside its own 16 rows' band, and applies the per-element mask only on tiles that
are not fully inside the band of all of its rows. Rows that see no key get out 0 and
lse -inf. Scores are kept in base 2 (``scale * log2(e)`` folded in) for ex2.approx.

Compiled per head size by an lru_cached factory. ``cache=True`` is impossible with linked
foreign code in numba-cuda 0.30.4 (see mma_bridge), so each specialisation compiles once
per process. fp16 only; not runnable on the simulator (foreign functions).
"""
import functools
import math

import numpy as np
from numba import config as numba_config
from numba import cuda, float32, types, uint32, uint64

from . import mma_bridge
from .common import NEG_INF, array_type, key_range, seq_span

NAME = "flash_tc"

#: query rows per block, warps per block (16 rows per warp), threads per block
BLOCK_M = 64
WARPS = 4
THREADS = 32 * WARPS
#: head sizes with a compiled specialisation, and the key-tile size each uses. 128: 32 was
#: fastest on the H100 (notes/v4_tensor_core.md: 64 with prefetch spills, 255 registers +
#: 528 B local); 256: 32 keeps the static shared memory under 48 KiB. 64: not tuned.
HEAD_SIZES = (64, 128, 256)
BLOCK_N = {64: 64, 128: 32, 256: 32}
#: prefetch the next K/V tile into registers during the current tile's mma work (costs
#: registers: off for 256, whose O accumulator alone takes 128 registers per thread)
PREFETCH_TILES = {64: True, 128: True, 256: False}
#: launch-bounds minimum blocks per SM (None: no register cap beyond 255)
MIN_BLOCKS = {64: None, 128: None, 256: None}
#: share K/V tiles between the heads of a GQA group (see heads_per_block)
GQA_PACK = True
#: padding (in 32-bit words) of one shared-memory row of K and of pair-interleaved V
K_PAD = 4
V_PAD = 8

LOG2E = np.float32(math.log2(math.e))
LN2 = np.float32(math.log(2.0))
ZERO = np.float32(0.0)
ONE = np.float32(1.0)
LO16 = np.uint32(0x0000FFFF)
HI16 = np.uint32(0xFFFF0000)
SIXTEEN = np.uint32(16)
U0 = np.uint32(0)
U64_0 = np.uint64(0)
LO32 = np.uint64(0xFFFFFFFF)
THIRTYTWO = np.uint64(32)


# --------------------------------------------------------------------------- fragment layout
# Plain Python functions, used as-is by the NumPy emulation in tests/test_v4_fragments.py and
# compiled as inline device functions for the kernel (the same source, not a twin).

def a_frag_rc(lane, reg):
    """(row, col) in the 16x16 A tile of the *first* fp16 of A register ``reg`` (0..3) of
    ``lane``; the second fp16 is at (row, col + 1)."""
    g = lane >> 2
    t = lane & 3
    return g + 8 * (reg & 1), 2 * t + 8 * (reg >> 1)


def b_frag_kn(lane, reg):
    """(k, n) in the 16x8 B tile of the first fp16 of B register ``reg`` (0..1) of ``lane``;
    the second fp16 is at (k + 1, n)."""
    g = lane >> 2
    t = lane & 3
    return 2 * t + 8 * reg, g


def c_frag_rc(lane, reg):
    """(row, col) in the 16x8 C/D tile of fp32 accumulator register ``reg`` (0..3) of ``lane``."""
    g = lane >> 2
    t = lane & 3
    return g + 8 * (reg >> 1), 2 * t + (reg & 1)


def p_from_s(kstep, reg):
    """Which S accumulator registers form A register ``reg`` of P for P.V k-step ``kstep``.

    Returns ``(ntile, creg)``: A register ``reg`` packs S n-tile ``ntile``'s registers ``creg``
    (low half) and ``creg + 1`` (high half). Follows from a_frag_rc and c_frag_rc: k-step
    ``kstep`` covers keys ``16*kstep .. 16*kstep+15``, i.e. S n-tiles ``2*kstep`` (A cols 0-7)
    and ``2*kstep+1`` (A cols 8-15).
    """
    return 2 * kstep + (reg >> 1), 2 * (reg & 1)


def interleave_v(x, y):
    """Pair-interleave two fp16x2 words of consecutive keys: ``x = (V[2p, d], V[2p, d+1])``,
    ``y = (V[2p+1, d], V[2p+1, d+1])`` -> ``((V[2p, d], V[2p+1, d]), (V[2p, d+1], V[2p+1, d+1]))``.
    Arguments and results are uint32 (np.uint32 on the host)."""
    return (x & LO16) | (y << SIXTEEN), (x >> SIXTEEN) | (y & HI16)


def k_smem_word(n, w, k_stride):
    """Shared-memory word of K's (key ``n`` of the tile, fp16 pair ``w`` of the head dim)."""
    return n * k_stride + w


def v_smem_word(p, d, v_stride):
    """Shared-memory word holding (V[2p, d], V[2p+1, d]) of the tile (pair-interleaved V)."""
    return p * v_stride + d


_a_frag_rc = cuda.jit(device=True, inline=True, cache=True)(a_frag_rc)
_b_frag_kn = cuda.jit(device=True, inline=True, cache=True)(b_frag_kn)
_c_frag_rc = cuda.jit(device=True, inline=True, cache=True)(c_frag_rc)
_p_from_s = cuda.jit(device=True, inline=True, cache=True)(p_from_s)
_interleave_v = cuda.jit(device=True, inline=True, cache=True)(interleave_v)
_k_smem_word = cuda.jit(device=True, inline=True, cache=True)(k_smem_word)
_v_smem_word = cuda.jit(device=True, inline=True, cache=True)(v_smem_word)


# --------------------------------------------------------------------------- the kernel

def shared_bytes(head_size, block_n):
    """Static shared memory of one block: K tile + pair-interleaved V tile, padded."""
    return 4 * (block_n * (head_size // 2 + K_PAD) + (block_n // 2) * (head_size + V_PAD))


def heads_per_block(group_size):
    """Query heads of one GQA group that share a block (and its K/V tiles): 4, 2 or 1
    (always 1 when GQA_PACK is off)."""
    if not GQA_PACK:
        return 1
    for hb in (4, 2, 1):
        if group_size % hb == 0:
            return hb


def build(head_size, heads=1, block_n=None, prefetch=None, min_blocks=None):
    """The ``flash_tc`` kernel specialised for ``head_size``, ``heads`` query heads per block
    (of one GQA group; 1, 2 or 4), key tile ``block_n``, whether the next tile's K/V
    loads are issued before the current tile's mma work (``prefetch``) and the launch-bounds
    minimum of resident blocks per SM (``min_blocks``: caps registers at ~65536 /
    (128 * min_blocks)); None = the module default for that head size."""
    return _build(head_size, heads, BLOCK_N[head_size] if block_n is None else block_n,
                  PREFETCH_TILES[head_size] if prefetch is None else prefetch,
                  MIN_BLOCKS[head_size] if min_blocks is None else min_blocks)


@functools.lru_cache(maxsize=None)
def _build(head_size, heads, block_n, prefetch, min_blocks=None):
    D = head_size
    BN = block_n
    HB = heads
    PB = BLOCK_M // HB          # query positions per block (16 per warp, HB warps per position)
    assert D % 16 == 0 and BN % 16 == 0 and WARPS % HB == 0
    DW = D // 2                 # fp16 pairs (words) per head row
    QK_STEPS = D // 16          # k-steps of Q.K^T
    S_TILES = BN // 8           # n8 tiles of S per warp
    PV_STEPS = BN // 16         # k-steps of P.V
    O_TILES = D // 8            # n8 tiles of O per warp
    K_STRIDE = DW + K_PAD
    V_STRIDE = D + V_PAD
    K_WORDS = BN * K_STRIDE
    V_WORDS = (BN // 2) * V_STRIDE
    KQ = D // 4                           # 64-bit words (4 fp16) per head row
    K_LOADS = BN * KQ // THREADS          # K 64-bit words each thread stages per tile
    V_LOADS = (BN // 2) * KQ // THREADS   # V 64-bit word pairs each thread stages per tile
    assert BN * KQ % THREADS == 0 and (BN // 2) * KQ % THREADS == 0
    PREFETCH = prefetch
    K_CHUNK = min(4, K_LOADS)             # without prefetch: loads in flight per chunk
    V_CHUNK = min(2, V_LOADS)
    assert K_LOADS % K_CHUNK == 0 and V_LOADS % V_CHUNK == 0
    QF_LEN = 4 * QK_STEPS       # registers of Q fragments per thread
    ACC_LEN = 4 * O_TILES       # fp32 O accumulators per thread
    S_LEN = 4 * S_TILES         # fp32 S accumulators per thread

    @cuda.jit(device=True, inline=True)
    def _load_k(k, it, n0, k0, sk, hk, tid):
        """Global -> register: this thread's ``it``-th K word (4 fp16) of the tile at key n0,
        zero past the sequence (row index clamped, no branch)."""
        idx = it * THREADS + tid
        n = idx // KQ
        c = idx - n * KQ
        key = n0 + n
        val = k[k0 + min(key, sk - 1), hk, c]
        return val if key < sk else U64_0

    @cuda.jit(device=True, inline=True)
    def _store_k(ks, it, val, tid):
        """Register -> shared: K row-major fp16 pairs."""
        idx = it * THREADS + tid
        n = idx // KQ
        c = idx - n * KQ
        ks[_k_smem_word(n, 2 * c, K_STRIDE)] = uint32(val & LO32)
        ks[_k_smem_word(n, 2 * c + 1, K_STRIDE)] = uint32(val >> THIRTYTWO)

    @cuda.jit(device=True, inline=True)
    def _load_v(v, it, n0, k0, sk, hk, tid):
        """Global -> registers: this thread's ``it``-th V word pair (rows 2p and 2p+1)."""
        idx = it * THREADS + tid
        p = idx // KQ
        c = idx - p * KQ
        key = n0 + 2 * p
        x = v[k0 + min(key, sk - 1), hk, c]
        y = v[k0 + min(key + 1, sk - 1), hk, c]
        return (x if key < sk else U64_0), (y if key + 1 < sk else U64_0)

    @cuda.jit(device=True, inline=True)
    def _store_v(vs, it, x, y, tid):
        """Registers -> shared: V pair-interleaved."""
        idx = it * THREADS + tid
        p = idx // KQ
        c = idx - p * KQ
        lo, hi = _interleave_v(uint32(x & LO32), uint32(y & LO32))
        vs[_v_smem_word(p, 4 * c, V_STRIDE)] = uint32(lo)
        vs[_v_smem_word(p, 4 * c + 1, V_STRIDE)] = uint32(hi)
        lo, hi = _interleave_v(uint32(x >> THIRTYTWO), uint32(y >> THIRTYTWO))
        vs[_v_smem_word(p, 4 * c + 2, V_STRIDE)] = uint32(lo)
        vs[_v_smem_word(p, 4 * c + 3, V_STRIDE)] = uint32(hi)

    @cuda.jit(device=True, inline=True)
    def _load_tile(k, v, kx, vx, vy, n0, k0, sk, hk, tid):
        """All of this thread's loads of a tile, into registers (the prefetch)."""
        for it in range(K_LOADS):
            kx[it] = _load_k(k, it, n0, k0, sk, hk, tid)
        for it in range(V_LOADS):
            vx[it], vy[it] = _load_v(v, it, n0, k0, sk, hk, tid)

    @cuda.jit(device=True, inline=True)
    def _store_tile(ks, vs, kx, vx, vy, tid):
        for it in range(K_LOADS):
            _store_k(ks, it, kx[it], tid)
        for it in range(V_LOADS):
            _store_v(vs, it, vx[it], vy[it], tid)

    @cuda.jit(device=True, inline=True)
    def _stage_chunked(k, v, ks, vs, kx, vx, vy, n0, k0, sk, hk, tid):
        """Without prefetch: loads in chunks of K_CHUNK (V_CHUNK), each chunk's loads issued
        before its stores, so few registers are live but loads still overlap."""
        for c0 in range(0, K_LOADS, K_CHUNK):
            for j in range(K_CHUNK):
                kx[j] = _load_k(k, c0 + j, n0, k0, sk, hk, tid)
            for j in range(K_CHUNK):
                _store_k(ks, c0 + j, kx[j], tid)
        for c0 in range(0, V_LOADS, V_CHUNK):
            for j in range(V_CHUNK):
                vx[j], vy[j] = _load_v(v, c0 + j, n0, k0, sk, hk, tid)
            for j in range(V_CHUNK):
                _store_v(vs, c0 + j, vx[j], vy[j], tid)

    mma = mma_bridge.mma_f16_16816
    pack = mma_bridge.pack_f16x2
    exp2 = mma_bridge.exp2_approx

    # the simulator's cuda.jit takes no launch_bounds (it cannot run this kernel anyway)
    jit_kw = {} if numba_config.ENABLE_CUDASIM else dict(
        launch_bounds=(THREADS,) if min_blocks is None else (THREADS, min_blocks))

    @cuda.jit(**jit_kw)
    def flash_tc_kernel(q, k, v, out, lse, cu_q, cu_k, scale_log2, left, right, lse_batched):
        """q, out: uint32 (total_q, H, D/2) views of fp16; k, v: uint64 (total_k, Hkv, D/4);
        lse float32; scale_log2 = softmax_scale * log2(e). Block (x, y, z) = (positions
        x*PB.., heads y*HB.., sequence z); warp w takes head y*HB + w % HB and the 16
        positions from x*PB + 16*(w // HB)."""
        tid = cuda.threadIdx.x
        warp = tid >> 5
        lane = tid & 31
        g = lane >> 2
        t = lane & 3
        h = cuda.blockIdx.y * HB + warp % HB
        b = cuda.blockIdx.z
        q0, sq = seq_span(cu_q, b)
        row0 = cuda.blockIdx.x * PB
        if row0 >= sq:
            return
        k0, sk = seq_span(cu_k, b)
        hk = (cuda.blockIdx.y * HB) // (q.shape[1] // k.shape[1])

        ks = cuda.shared.array(K_WORDS, uint32)
        vs = cuda.shared.array(V_WORDS, uint32)

        # the block's key band: lo and hi are non-decreasing in the row
        blo, _ = key_range(row0, sq, sk, left, right)
        _, bhi = key_range(min(row0 + PB, sq) - 1, sq, sk, left, right)
        # this warp's rows and band
        wrow0 = row0 + 16 * (warp // HB)
        has_rows = wrow0 < sq
        wlo_first, whi_first = key_range(wrow0, sq, sk, left, right)
        wlo_last, whi_last = key_range(min(wrow0 + 15, sq - 1), sq, sk, left, right)
        # the two rows this thread holds accumulators for (C registers 0,1 and 2,3)
        row_a = wrow0 + g
        row_b = row_a + 8
        lo_a, hi_a = key_range(row_a, sq, sk, left, right)
        lo_b, hi_b = key_range(row_b, sq, sk, left, right)

        # Q fragments, in registers for the whole key loop (zero past the sequence)
        qf = cuda.local.array(QF_LEN, uint32)
        for kk in range(QK_STEPS):
            for r in range(4):
                rr, cc = _a_frag_rc(lane, r)
                qf[4 * kk + r] = U0
                if wrow0 + rr < sq:
                    qf[4 * kk + r] = q[q0 + wrow0 + rr, h, 8 * kk + (cc >> 1)]

        acc = cuda.local.array(ACC_LEN, float32)
        for i in range(ACC_LEN):
            acc[i] = ZERO
        s = cuda.local.array(S_LEN, float32)
        m_a = NEG_INF
        m_b = NEG_INF
        l_a = ZERO
        l_b = ZERO

        # K/V staging with 64-bit, branch-free global loads, issued in batches before their
        # shared-memory stores. With PREFETCH all loads of tile i+1 go into registers before
        # the mma work of tile i, hiding their latency behind it (costs K_LOADS + 2 V_LOADS
        # 64-bit registers); without, a tile is staged in chunks of K_CHUNK / V_CHUNK.
        kx = cuda.local.array(K_LOADS, uint64)
        vx = cuda.local.array(V_LOADS, uint64)
        vy = cuda.local.array(V_LOADS, uint64)
        n_first = (blo // BN) * BN
        if PREFETCH and n_first <= bhi:
            _load_tile(k, v, kx, vx, vy, n_first, k0, sk, hk, tid)
        for n0 in range(n_first, bhi + 1, BN):
            cuda.syncthreads()  # everyone is done with the previous tile
            if PREFETCH:
                _store_tile(ks, vs, kx, vx, vy, tid)
            else:
                _stage_chunked(k, v, ks, vs, kx, vx, vy, n0, k0, sk, hk, tid)
            cuda.syncthreads()
            if PREFETCH and n0 + BN <= bhi:
                _load_tile(k, v, kx, vx, vy, n0 + BN, k0, sk, hk, tid)

            # skip tiles that miss all of this warp's rows (warp-uniform branch)
            if has_rows and n0 <= whi_last and n0 + BN - 1 >= wlo_first:
                # S = Q K^T (base-2 scaled)
                for nt in range(S_TILES):
                    c0 = ZERO
                    c1 = ZERO
                    c2 = ZERO
                    c3 = ZERO
                    for kk in range(QK_STEPS):
                        kn0, nn0 = _b_frag_kn(lane, 0)
                        kn1, nn1 = _b_frag_kn(lane, 1)
                        b0 = ks[_k_smem_word(8 * nt + nn0, 8 * kk + (kn0 >> 1), K_STRIDE)]
                        b1 = ks[_k_smem_word(8 * nt + nn1, 8 * kk + (kn1 >> 1), K_STRIDE)]
                        c0, c1, c2, c3 = mma(qf[4 * kk], qf[4 * kk + 1], qf[4 * kk + 2],
                                             qf[4 * kk + 3], b0, b1, c0, c1, c2, c3)
                    s[4 * nt] = c0 * scale_log2
                    s[4 * nt + 1] = c1 * scale_log2
                    s[4 * nt + 2] = c2 * scale_log2
                    s[4 * nt + 3] = c3 * scale_log2

                # mask unless the tile lies inside the band of every row of the warp
                if not (wlo_last <= n0 and n0 + BN - 1 <= whi_first):
                    for nt in range(S_TILES):
                        for r in range(4):
                            rr, cc = _c_frag_rc(lane, r)
                            col = n0 + 8 * nt + cc
                            if rr < 8:
                                if col < lo_a or col > hi_a:
                                    s[4 * nt + r] = NEG_INF
                            else:
                                if col < lo_b or col > hi_b:
                                    s[4 * nt + r] = NEG_INF

                # online softmax; a row is held by the 4 lanes of a quad
                mx_a = NEG_INF
                mx_b = NEG_INF
                for nt in range(S_TILES):
                    mx_a = max(mx_a, max(s[4 * nt], s[4 * nt + 1]))
                    mx_b = max(mx_b, max(s[4 * nt + 2], s[4 * nt + 3]))
                mx_a = max(mx_a, cuda.shfl_xor_sync(0xFFFFFFFF, mx_a, 1))
                mx_a = max(mx_a, cuda.shfl_xor_sync(0xFFFFFFFF, mx_a, 2))
                mx_b = max(mx_b, cuda.shfl_xor_sync(0xFFFFFFFF, mx_b, 1))
                mx_b = max(mx_b, cuda.shfl_xor_sync(0xFFFFFFFF, mx_b, 2))
                new_a = max(m_a, mx_a)
                new_b = max(m_b, mx_b)
                # a row that has seen no key yet subtracts 0 (avoids -inf - -inf)
                base_a = ZERO if new_a == NEG_INF else new_a
                base_b = ZERO if new_b == NEG_INF else new_b
                alpha_a = exp2(m_a - base_a)
                alpha_b = exp2(m_b - base_b)
                m_a = new_a
                m_b = new_b
                sum_a = ZERO
                sum_b = ZERO
                for nt in range(S_TILES):
                    s[4 * nt] = exp2(s[4 * nt] - base_a)
                    s[4 * nt + 1] = exp2(s[4 * nt + 1] - base_a)
                    s[4 * nt + 2] = exp2(s[4 * nt + 2] - base_b)
                    s[4 * nt + 3] = exp2(s[4 * nt + 3] - base_b)
                    sum_a += s[4 * nt] + s[4 * nt + 1]
                    sum_b += s[4 * nt + 2] + s[4 * nt + 3]
                l_a = l_a * alpha_a + sum_a     # per-lane partial sums, reduced at the end
                l_b = l_b * alpha_b + sum_b
                for nt in range(O_TILES):
                    acc[4 * nt] *= alpha_a
                    acc[4 * nt + 1] *= alpha_a
                    acc[4 * nt + 2] *= alpha_b
                    acc[4 * nt + 3] *= alpha_b

                # O += P V, P's A fragments packed straight from the S registers
                for kk in range(PV_STEPS):
                    t0, r0 = _p_from_s(kk, 0)
                    t1, r1 = _p_from_s(kk, 1)
                    t2, r2 = _p_from_s(kk, 2)
                    t3, r3 = _p_from_s(kk, 3)
                    a0 = pack(s[4 * t0 + r0], s[4 * t0 + r0 + 1])
                    a1 = pack(s[4 * t1 + r1], s[4 * t1 + r1 + 1])
                    a2 = pack(s[4 * t2 + r2], s[4 * t2 + r2 + 1])
                    a3 = pack(s[4 * t3 + r3], s[4 * t3 + r3 + 1])
                    kp0, np0 = _b_frag_kn(lane, 0)
                    kp1, np1 = _b_frag_kn(lane, 1)
                    for nt in range(O_TILES):
                        b0 = vs[_v_smem_word(8 * kk + (kp0 >> 1), 8 * nt + np0, V_STRIDE)]
                        b1 = vs[_v_smem_word(8 * kk + (kp1 >> 1), 8 * nt + np1, V_STRIDE)]
                        d0, d1, d2, d3 = mma(a0, a1, a2, a3, b0, b1, acc[4 * nt],
                                             acc[4 * nt + 1], acc[4 * nt + 2], acc[4 * nt + 3])
                        acc[4 * nt] = d0
                        acc[4 * nt + 1] = d1
                        acc[4 * nt + 2] = d2
                        acc[4 * nt + 3] = d3

        # epilogue: full row sums, normalise, write fp16 pairs and lse
        l_a += cuda.shfl_xor_sync(0xFFFFFFFF, l_a, 1)
        l_a += cuda.shfl_xor_sync(0xFFFFFFFF, l_a, 2)
        l_b += cuda.shfl_xor_sync(0xFFFFFFFF, l_b, 1)
        l_b += cuda.shfl_xor_sync(0xFFFFFFFF, l_b, 2)
        inv_a = ZERO
        inv_b = ZERO
        lse_a = NEG_INF
        lse_b = NEG_INF
        if l_a > ZERO:
            inv_a = ONE / l_a
            lse_a = m_a * LN2 + math.log(l_a)
        if l_b > ZERO:
            inv_b = ONE / l_b
            lse_b = m_b * LN2 + math.log(l_b)
        if row_a < sq:
            for nt in range(O_TILES):
                out[q0 + row_a, h, 4 * nt + t] = pack(acc[4 * nt] * inv_a,
                                                      acc[4 * nt + 1] * inv_a)
        if row_b < sq:
            for nt in range(O_TILES):
                out[q0 + row_b, h, 4 * nt + t] = pack(acc[4 * nt + 2] * inv_b,
                                                      acc[4 * nt + 3] * inv_b)
        if t == 0:
            if row_a < sq:
                if lse_batched:
                    lse[b, h, row_a] = lse_a
                else:
                    lse[0, h, q0 + row_a] = lse_a
            if row_b < sq:
                if lse_batched:
                    lse[b, h, row_b] = lse_b
                else:
                    lse[0, h, q0 + row_b] = lse_b

    return flash_tc_kernel


# --------------------------------------------------------------------------- module contract

#: No module-level kernel: every kernel comes from ``build(head_size)``; see compile_targets.
KERNEL_FUNCS = {}


def _signature(head_size):
    u3 = array_type(np.uint32, 3)
    w3 = array_type(np.uint64, 3)
    return (u3, w3, w3, u3, array_type(np.float32, 3), array_type(np.int32, 1),
            array_type(np.int32, 1), types.float32, types.int32, types.int32, types.boolean)


def compile_targets(head_size, dtype, heads=(1, 4)):
    """``[(label, python function, signature)]`` to compile with ``cuda.compile_ptx`` for
    this specialisation, one per heads-per-block in ``heads`` (empty when it is not
    supported; see attn_numba.compile_check).
    The PTX holds ``call``s to the bridge functions, which are linked (with LTO) only when
    the kernel is compiled for a GPU."""
    if np.dtype(dtype) != np.float16 or head_size not in HEAD_SIZES:
        return []
    return [(f"flash_tc_kernel_d{head_size}_h{hb}", build(head_size, hb).py_func,
             _signature(head_size)) for hb in heads]


def ptx_signatures(head_size, dtype):
    """Contract shim: the kernels are factory-built, so there is nothing in KERNEL_FUNCS to
    sign; use :func:`compile_targets` instead."""
    return {}


def supports(problem):
    if problem.on_simulator:
        return "the CUDA simulator cannot run the tensor-core bridge (foreign functions)"
    if np.dtype(problem.dtype) != np.float16:
        return f"tensor-core kernel is fp16 only, got {np.dtype(problem.dtype)}"
    if problem.head_size not in HEAD_SIZES:
        return f"head_size {problem.head_size} not in {HEAD_SIZES}"
    return None


def launch(problem, q, k, v, out, lse, cu_q, cu_k, stream, heads=None, prefetch=None,
           block_n=None, min_blocks=None):
    """Contract launch; ``heads`` / ``prefetch`` / ``block_n`` override the defaults (for
    experiments)."""
    hb = heads_per_block(problem.group_size) if heads is None else heads
    kernel = build(problem.head_size, hb, block_n, prefetch, min_blocks)
    pb = BLOCK_M // hb
    grid = ((max(problem.max_seqlen_q, 1) + pb - 1) // pb, problem.num_heads // hb,
            problem.batch)
    kernel[grid, THREADS, stream](
        q.view(np.uint32), k.view(np.uint64), v.view(np.uint64), out.view(np.uint32), lse,
        cu_q, cu_k, np.float32(problem.softmax_scale * math.log2(math.e)),
        np.int32(problem.window_left), np.int32(problem.window_right),
        bool(problem.lse_batched))
