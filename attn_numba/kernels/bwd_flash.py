"""bwd_flash: FlashAttention-2's backward on CUDA cores (the teaching step).

Spec
----
With the forward's ``lse`` (natural log) the probabilities are recomputed tile by tile,
``P = exp(scale Q K^T - lse)`` (0 outside the band and in rows with ``lse = -inf``), so nothing
of size ``seq x seq`` exists anywhere. Three launches, all on the caller's stream:

1. **preprocess** (one thread per query row and head): ``delta = rowsum(dout * out)`` into the
   float32 scratch ``delta (H, total_q)``; every element of it is written.
2. **dK, dV** (one program per ``BN``-key tile and KV head): K and V of the tile stay in shared
   memory; the program loops over the ``G`` query heads of its GQA group and, for each, over
   the ``BM``-row query tiles that see any of its keys (:func:`tile_range.query_rows`):
   ``dP = dO V^T``, ``dS = P * (dP - delta)``, ``dV += P^T dO``, ``dK += dS^T Q``. The sum over
   the group's heads happens inside one program, in a fixed order: deterministic.
3. **dQ** (one program per ``BM``-row query tile and query head): the same ``P`` and ``dS``,
   recomputed over the key tiles the rows see (:func:`tile_range.key_tiles`),
   ``dQ += dS K``. A second pass instead of atomics: deterministic, and no dQ scratch.

Every element of dq, dk and dv is written (0 where nothing reaches it). Tiles are staged in
shared memory as float32 (rows padded by one word against bank conflicts); thread ``tid`` of
``NT`` owns the score-tile elements ``tid + t*NT`` and the accumulator elements
``tid + t*NT`` of its output tile. Accumulation is float32 whatever the input dtype.
The head dim is a compile-time constant (:func:`v3_flash.padded_head_size`); columns past the
head size are zero-filled on load and skipped on store.
"""
import functools
import math

import numpy as np
from numba import cuda, float32

from . import BWD_ARRAYS, FLAT, Plan, Scratch
from .common import NEG_INF, array_type, key_range, seq_span, supports_cuda_core
from .tile_range import key_tiles, query_rows
from .v3_flash import padded_head_size

NAME = "flash"
MAX_HEAD_SIZE = 256
ZERO = np.float32(0.0)

#: (BM query rows, BN keys, NT threads) per padded head size: the four staged tiles
#: (Q, dO, K, V, float32, rows padded by one) and the two score tiles fit 48 KiB of static
#: shared memory. Chosen to fit, not measured.
GPU_TILES = {64: (32, 32, 128), 128: (16, 16, 128), 256: (8, 8, 64)}
#: tiny tiles for the simulator (one Python thread per CUDA thread)
SIM_TILES = (8, 8, 16)
#: threads per block of the preprocess launch (one row each)
PRE_THREADS, SIM_PRE_THREADS = 128, 16
MAX_SHARED = 48 * 1024

# the kernels' array arguments, in order (names from kernels.BWD_ARRAYS plus the scratch)
PRE_ARRAYS = ("dout", "out", "delta")
DKDV_ARRAYS = ("q", "k", "v", "dout", "lse", "delta", "dk", "dv", "cu_seqlens_q",
               "cu_seqlens_k")
DQ_ARRAYS = ("q", "k", "v", "dout", "lse", "delta", "dq", "cu_seqlens_q", "cu_seqlens_k")
assert set(DKDV_ARRAYS + DQ_ARRAYS + PRE_ARRAYS) <= set(BWD_ARRAYS) | {"delta"}


def shared_bytes(D, tiles):
    """Static shared memory of the dK/dV program (the dQ program uses less), in bytes."""
    BM, BN, _ = tiles
    return 4 * ((2 * BM + 2 * BN) * (D + 1) + 2 * BM * BN + 2 * BM)


def check_tiles(D, tiles):
    BM, BN, NT = tiles
    if (BN * D) % NT or (BM * D) % NT:
        raise ValueError(f"bad tiles {tiles!r} for D={D}: NT must divide BN*D and BM*D")
    if shared_bytes(D, tiles) > MAX_SHARED:
        raise ValueError(f"bad tiles {tiles!r} for D={D}: {shared_bytes(D, tiles)} bytes of "
                         f"shared memory, more than {MAX_SHARED}")


@functools.lru_cache(maxsize=None)
def build_preprocess(NT):
    """``delta[h, r] = sum_d dout[r, h, d] * out[r, h, d]`` (float32), one thread per row."""

    @cuda.jit(cache=True)
    def bwd_preprocess(dout, out, delta, num_heads, hs):
        h = cuda.blockIdx.y
        r = cuda.blockIdx.x * NT + cuda.threadIdx.x
        if r < delta.shape[1]:
            base = (r * num_heads + h) * hs
            acc = ZERO
            for d in range(hs):
                acc += float32(dout[base + d]) * float32(out[base + d])
            delta[h, r] = acc

    return bwd_preprocess


@functools.lru_cache(maxsize=None)
def _device_stages(D, tiles):
    """The stages shared by the dK/dV and dQ programs, as device functions closed over the
    compile-time sizes."""
    BM, BN, NT = tiles

    @cuda.jit(device=True, inline=True, cache=True)
    def stage_rows(x, dst, row0, nrows, head, heads, hs, tid, ROWS):
        """Rows ``row0 .. row0 + nrows - 1`` of head ``head`` of the flat ``(rows, heads, hs)``
        array ``x`` into ``dst[r, d]`` as float32; rows past ``nrows`` and columns past ``hs``
        are 0."""
        for e in range(tid, ROWS * D, NT):
            r = e // D
            d = e % D
            val = ZERO
            if r < nrows and d < hs:
                val = float32(x[((row0 + r) * heads + head) * hs + d])
            dst[r, d] = val

    @cuda.jit(device=True, inline=True, cache=True)
    def stage_row_stats(lse, delta, ls, dl, b, h, q_start, m0, nq, lse_batched, tid):
        """The forward's lse and the preprocess's delta of the tile's rows (lse -inf past nq)."""
        for i in range(tid, BM, NT):
            lv = NEG_INF
            dv = ZERO
            if i < nq:
                if lse_batched:
                    lv = lse[b, h, m0 + i]
                else:
                    lv = lse[0, h, q_start + m0 + i]
                dv = delta[h, q_start + m0 + i]
            ls[i] = lv
            dl[i] = dv

    @cuda.jit(device=True, inline=True, cache=True)
    def probs_and_dscores(qs, ks, vs, dos, ls, dl, ps, dss, m0, n0, sq, sk, scale, left,
                          right, tid):
        """The (BM, BN) tiles ``P = exp(scale q.k - lse)`` (0 where the row does not see the
        key, or sees none) and ``dS = P * (dO.v - delta)``, for query rows ``m0 + i`` and keys
        ``n0 + j`` of the sequence."""
        for e in range(tid, BM * BN, NT):
            i = e // BN
            j = e % BN
            s = ZERO
            dp = ZERO
            for d in range(D):
                s += qs[i, d] * ks[j, d]
                dp += dos[i, d] * vs[j, d]
            qi = m0 + i
            kj = n0 + j
            lo, hi = key_range(qi, sq, sk, left, right)
            p = ZERO
            if qi < sq and lo <= kj and kj <= hi and ls[i] != NEG_INF:
                p = math.exp(s * scale - ls[i])
            ps[i, j] = p
            dss[i, j] = p * (dp - dl[i])

    return stage_rows, stage_row_stats, probs_and_dscores


@functools.lru_cache(maxsize=None)
def build_dkdv(D, tiles):
    """The dK/dV program for padded head dim ``D`` and ``tiles = (BM, BN, NT)``."""
    check_tiles(D, tiles)
    BM, BN, NT = tiles
    DP = D + 1
    ACC = BN * D // NT
    stage_rows, stage_row_stats, probs_and_dscores = _device_stages(D, tiles)

    @cuda.jit(cache=True)
    def bwd_dkdv(q, k, v, dout, lse, delta, dk, dv, cu_q, cu_k, num_heads, num_kv_heads, hs,
                 scale, left, right, lse_batched):
        tid = cuda.threadIdx.x
        b = cuda.blockIdx.z
        hk = cuda.blockIdx.y
        k_start, sk = seq_span(cu_k, b)
        n0 = cuda.blockIdx.x * BN
        if n0 >= sk:
            return
        q_start, sq = seq_span(cu_q, b)
        group = num_heads // num_kv_heads
        nk = min(BN, sk - n0)
        ks = cuda.shared.array((BN, DP), float32)
        vs = cuda.shared.array((BN, DP), float32)
        qs = cuda.shared.array((BM, DP), float32)
        dos = cuda.shared.array((BM, DP), float32)
        ps = cuda.shared.array((BM, BN), float32)
        dss = cuda.shared.array((BM, BN), float32)
        ls = cuda.shared.array(BM, float32)
        dl = cuda.shared.array(BM, float32)
        stage_rows(k, ks, k_start + n0, nk, hk, num_kv_heads, hs, tid, BN)
        stage_rows(v, vs, k_start + n0, nk, hk, num_kv_heads, hs, tid, BN)
        acc_k = cuda.local.array(ACC, float32)
        acc_v = cuda.local.array(ACC, float32)
        for t in range(ACC):
            acc_k[t] = ZERO
            acc_v[t] = ZERO
        i_lo, i_hi = query_rows(n0, n0 + nk - 1, sq, sk, left, right)
        for h in range(hk * group, hk * group + group):   # the GQA group, in order
            for m0 in range(i_lo, i_hi + 1, BM):
                nq = min(BM, sq - m0)
                cuda.syncthreads()    # the previous tile's reads of qs, dos, ps, dss are done
                stage_rows(q, qs, q_start + m0, nq, h, num_heads, hs, tid, BM)
                stage_rows(dout, dos, q_start + m0, nq, h, num_heads, hs, tid, BM)
                stage_row_stats(lse, delta, ls, dl, b, h, q_start, m0, nq, lse_batched, tid)
                cuda.syncthreads()
                probs_and_dscores(qs, ks, vs, dos, ls, dl, ps, dss, m0, n0, sq, sk, scale,
                                  left, right, tid)
                cuda.syncthreads()
                # dV += P^T dO, dK += dS^T Q: element tid + t*NT of the (BN, D) tiles (the
                # short loop over t innermost: it unrolls, so the accumulators stay in registers)
                for i in range(BM):
                    for t in range(ACC):
                        e = tid + t * NT
                        acc_v[t] += ps[i, e // D] * dos[i, e % D]
                        acc_k[t] += dss[i, e // D] * qs[i, e % D]
        for t in range(ACC):
            e = tid + t * NT
            j = e // D
            d = e % D
            if j < nk and d < hs:
                off = ((k_start + n0 + j) * num_kv_heads + hk) * hs + d
                dk[off] = acc_k[t] * scale
                dv[off] = acc_v[t]

    return bwd_dkdv


@functools.lru_cache(maxsize=None)
def build_dq(D, tiles):
    """The dQ program for padded head dim ``D`` and ``tiles = (BM, BN, NT)``."""
    check_tiles(D, tiles)
    BM, BN, NT = tiles
    DP = D + 1
    ACC = BM * D // NT
    stage_rows, stage_row_stats, probs_and_dscores = _device_stages(D, tiles)

    @cuda.jit(cache=True)
    def bwd_dq(q, k, v, dout, lse, delta, dq, cu_q, cu_k, num_heads, num_kv_heads, hs,
               scale, left, right, lse_batched):
        tid = cuda.threadIdx.x
        b = cuda.blockIdx.z
        h = cuda.blockIdx.y
        q_start, sq = seq_span(cu_q, b)
        m0 = cuda.blockIdx.x * BM
        if m0 >= sq:
            return
        k_start, sk = seq_span(cu_k, b)
        hk = h // (num_heads // num_kv_heads)
        nq = min(BM, sq - m0)
        qs = cuda.shared.array((BM, DP), float32)
        dos = cuda.shared.array((BM, DP), float32)
        ks = cuda.shared.array((BN, DP), float32)
        vs = cuda.shared.array((BN, DP), float32)
        ps = cuda.shared.array((BM, BN), float32)
        dss = cuda.shared.array((BM, BN), float32)
        ls = cuda.shared.array(BM, float32)
        dl = cuda.shared.array(BM, float32)
        stage_rows(q, qs, q_start + m0, nq, h, num_heads, hs, tid, BM)
        stage_rows(dout, dos, q_start + m0, nq, h, num_heads, hs, tid, BM)
        stage_row_stats(lse, delta, ls, dl, b, h, q_start, m0, nq, lse_batched, tid)
        acc = cuda.local.array(ACC, float32)
        for t in range(ACC):
            acc[t] = ZERO
        n_lo, n_hi = key_tiles(m0, m0 + nq - 1, sq, sk, left, right, BN)
        for n0 in range(n_lo, n_hi, BN):
            cuda.syncthreads()        # the previous tile's reads of ks, dss are done
            stage_rows(k, ks, k_start + n0, min(BN, sk - n0), hk, num_kv_heads, hs, tid, BN)
            stage_rows(v, vs, k_start + n0, min(BN, sk - n0), hk, num_kv_heads, hs, tid, BN)
            cuda.syncthreads()
            probs_and_dscores(qs, ks, vs, dos, ls, dl, ps, dss, m0, n0, sq, sk, scale,
                              left, right, tid)
            cuda.syncthreads()
            # dQ += dS K: element tid + t*NT of the (BM, D) tile
            for j in range(BN):
                for t in range(ACC):
                    e = tid + t * NT
                    acc[t] += dss[e // D, j] * ks[j, e % D]
        for t in range(ACC):
            e = tid + t * NT
            i = e // D
            d = e % D
            if i < nq and d < hs:
                dq[((q_start + m0 + i) * num_heads + h) * hs + d] = acc[t] * scale

    return bwd_dq


def tiles_for(head_size, on_simulator):
    """``(D, (BM, BN, NT))``: the compiled head dim and the tiles that run ``head_size``."""
    D = padded_head_size(head_size, on_simulator)
    return D, (SIM_TILES if on_simulator else GPU_TILES[D])


def supports(problem):
    return supports_cuda_core(problem, MAX_HEAD_SIZE)


def scratch(problem):
    """``delta = rowsum(dout * out)``, float32 ``(H, total_q)``, written by the preprocess."""
    return (Scratch("delta", (problem.num_heads, problem.total_q), np.float32),)


def plan(problem, tiles=None):
    """Three launches: the preprocess, the dK/dV programs, the dQ programs."""
    sim = bool(problem.on_simulator)
    D, default = tiles_for(problem.head_size, sim)
    tiles = tuple(tiles or default)
    BM, BN, NT = tiles
    nt_pre = SIM_PRE_THREADS if sim else PRE_THREADS
    H, hs = problem.num_heads, problem.head_size
    common = (np.int64(H), np.int64(problem.num_kv_heads), np.int64(hs),
              np.float32(problem.softmax_scale), np.int64(problem.window_left),
              np.int64(problem.window_right), bool(problem.lse_batched))
    flat4 = (FLAT, FLAT, FLAT, FLAT, None, None, FLAT)
    return (
        Plan(build_preprocess(nt_pre), (max(1, -(-problem.total_q // nt_pre)), H), nt_pre,
             (FLAT, FLAT, None), (np.int64(H), np.int64(hs)), arrays=PRE_ARRAYS),
        Plan(build_dkdv(D, tiles),
             (max(1, -(-problem.max_seqlen_k // BN)), problem.num_kv_heads, problem.batch), NT,
             flat4 + (FLAT,), common, arrays=DKDV_ARRAYS),
        Plan(build_dq(D, tiles), (max(1, -(-problem.max_seqlen_q // BM)), H, problem.batch),
             NT, flat4, common, arrays=DQ_ARRAYS),
    )


def _signatures(dtype):
    from numba import types
    a1 = array_type(dtype, 1)
    lse, delta, cu = array_type(np.float32, 3), array_type(np.float32, 2), array_type(np.int32, 1)
    i64 = types.int64
    tail = (i64, i64, i64, types.float32, i64, i64, types.boolean)
    return ((a1, a1, delta, i64, i64),
            (a1, a1, a1, a1, lse, delta, a1, a1, cu, cu) + tail,
            (a1, a1, a1, a1, lse, delta, a1, cu, cu) + tail)


def compile_targets(head_size, dtype):
    """``[(label, kernel, signature)]`` of the three kernels that run ``head_size`` on a GPU,
    for ``cuda.compile_ptx``."""
    D, tiles = tiles_for(head_size, False)
    pre, dkdv, dq = _signatures(dtype)
    return [("bwd_preprocess", build_preprocess(PRE_THREADS), pre),
            (f"bwd_dkdv_d{D}", build_dkdv(D, tiles), dkdv),
            (f"bwd_dq_d{D}", build_dq(D, tiles), dq)]
