"""v3: flash. One pass over the K/V tiles of the band with an online softmax, register-tiled on CUDA cores.

Spec
----
One thread block handles ``BM`` score rows of one sequence: ``BM // gh`` consecutive queries
times ``gh`` query heads that share one KV head (GQA: the group's heads are stacked as extra
rows, so every K/V tile staged in shared memory serves all of them). The block walks the
band of keys its rows can see, ``BN`` keys at a time, starting at the first visible key
(tiles wholly outside the window/causal band are never visited; partial tiles are masked).

For each key tile:

1. ``S = Q K^T`` (``BM x BN``): Q and K are staged through shared memory in chunks of ``DK``
   head-dim columns, transposed (``[d, row]``, ``[d, key]``), converted to float32 once, Q
   pre-scaled by ``softmax_scale * log2(e)`` so the softmax uses ``exp2``. Global loads are
   unconditional (rows past the block clamped to a valid row and masked later) and issued
   one chunk ahead into registers, across phases and tiles, so their latency overlaps the
   arithmetic; staging alternates between two shared buffers, one barrier per chunk.
   Thread ``(ty, tx)`` owns a ``TM x TN`` register patch of S: rows ``ty*TM + i`` and keys in groups of 4 consecutive
   ones, ``(j//4)*4*CG + tx*4 + j%4``, so each step of the inner loop is a few 128-bit
   shared loads (16-byte aligned arrays) feeding ``TM*TN`` FMAs.
2. Online softmax: the tile's row maxima are reduced through shared memory (no warp
   shuffles: the simulator runs the same code), the running max ``m`` of each row is
   updated, the accumulator and the running partial sums are rescaled by
   ``alpha = exp2(m_old - m_new)``, and ``P = exp2(S - m_new)`` goes to shared memory
   (transposed, ``[key, row]``).
3. ``O += P V``: V is staged in chunks of ``BK`` keys; thread ``(ty, tx)`` owns the same
   ``TM`` rows and ``TD = D / CG`` head-dim columns (groups of 4, like the keys) of the
   float32 accumulator.

Each thread keeps a partial row sum over its own keys; they are reduced once at the end.
Nothing of size ``seq x seq`` exists anywhere. Rows that see no key get out 0 and
lse -inf. Every element of ``out`` and ``lse`` is written. Every shared/global index is cast
to unsigned (``U``) so Numba emits no negative-index wraparound in the inner loops.

``head_size`` is a compile-time constant: kernels come from an lru_cached factory per
(padded head size, tile configuration, stacked heads ``gh``, launch bounds, exact head size).
64, 128 and 256 are specialised exactly; any other
size up to 256 runs on the next of them with the extra columns zero-filled (loads return 0,
stores are skipped). On the simulator the head dim is padded to a multiple of 16 only.
"""
import functools
import math

import numpy as np
from numba import config as numba_config
from numba import cuda, float32, types

from ..problem import MAX_HEAD_SIZE
from . import FLAT, Plan
from .common import NEG_INF, array_type, key_range, seq_span, supports_cuda_core
from .config import band_scalars
from .v3_config import (ALIGN, GPU_CONFIG, GPU_TILES, MAX_SHARED, PAD, SIM_TILES,  # noqa: F401
                        VEC, Config, Tiles, config_for, derived, padded_head_size,
                        shared_bytes, stacked_heads, tiles_for)  # (re-exported: the ladder's API)

NAME = "flash"
LOG2E = np.float32(math.log2(math.e))
LN2 = np.float32(math.log(2.0))
ZERO = np.float32(0.0)
ONE = np.float32(1.0)
#: unsigned index cast: Numba skips the negative-index wraparound for unsigned indices, which
#: otherwise costs a compare-and-add on every shared/global access of the inner loops
U = types.uint64


@functools.lru_cache(maxsize=None)
def build(config):
    """The kernel of ``config`` (compiled once per configuration, cached on disk). Every
    size is a closure constant, so loops over tiles unroll, the per-thread patches
    (``cuda.local.array``) live in registers, and the row -> (query, head) mapping is a shift.
    ``sim`` drops the 16-byte alignment of the shared arrays (which lets the compiler use
    128-bit shared loads) since the simulator does not support it. ``min_blocks`` > 0 asks
    the compiler (launch bounds) to fit that many blocks per SM in the register file.
    ``exact`` means head_size == D: no column of Q, K, V needs bounds checks or zero fill.
    """
    D, tiles, gh = config.head_size, Tiles(*config.tiles), config.heads_per_block
    sim, min_blocks, exact = config.sim, config.min_blocks, config.exact
    BM, BN, NT, TM, TN, DK, BK = tiles
    c = derived(D, tiles)
    if shared_bytes(D, tiles) > MAX_SHARED:
        raise ValueError(f"tiles {tiles!r} need {shared_bytes(D, tiles)} bytes of shared memory "
                         f"for D={D}, more than {MAX_SHARED}")
    if BM % gh or TM % gh and gh % TM:
        raise ValueError(f"gh={gh} must divide BM={BM}, and divide or be a multiple of TM={TM}")
    RG, CG, TD, VN, VD = c["RG"], c["CG"], c["TD"], c["VN"], c["VD"]
    NDC, NKC = c["NDC"], c["NKC"]
    Q_TPR, Q_E, Q_PASS, Q_RSTEP = c["Q_TPR"], c["Q_E"], c["Q_PASS"], c["Q_RSTEP"]
    K_TPR, K_E, K_PASS, K_RSTEP = c["K_TPR"], c["K_E"], c["K_PASS"], c["K_RSTEP"]
    V_TPR, V_E = c["V_TPR"], c["V_E"]
    UNROLL_S, UNROLL_PV = c["UNROLL_S"], c["UNROLL_PV"]
    BMP, BNP = BM + PAD, BN + PAD  # padded rows: fewer bank conflicts, 16-byte aligned
    TMTD, TMTN = TM * TD, TM * TN
    QSZ = DK * BMP                                   # floats of a staged Q chunk
    XW = -(-max(QSZ + DK * BNP, BK * D) // 16) * 16  # floats per staging buffer
    XW2 = 2 * XW
    QE_ALL, KE_ALL = Q_PASS * Q_E, K_PASS * K_E
    SIM = bool(sim)
    EXACT = bool(exact)
    BIG = 1 << 40                  # "unbounded" window side
    jit_kw = dict(cache=True)
    if min_blocks and not sim and not numba_config.ENABLE_CUDASIM:  # (simulator: no bounds)
        jit_kw["launch_bounds"] = (NT, min_blocks)

    @cuda.jit(device=True, inline=True, cache=True)
    def _load_qk(q, k, qr, kr, q_off, d0, tid, kt, hi, k_start, k_row, hk, hs, scale_log2):
        """Q and K values of the chunk starting at column d0 into registers. Thread tid loads
        columns tid % TPR + x*TPR of rows tid // TPR + p*RSTEP. Rows past the block's queries
        or keys read a clamped (valid) row instead: their scores are masked out later."""
        for pp in range(Q_PASS):
            off = q_off[pp]
            for x in range(Q_E):
                d = d0 + tid % Q_TPR + x * Q_TPR
                if EXACT:
                    qr[pp * Q_E + x] = float32(q[U(off + d)]) * scale_log2
                else:
                    val = float32(q[U(off + min(d, hs - 1))]) * scale_log2
                    qr[pp * Q_E + x] = val if d < hs else ZERO
        for pp in range(K_PASS):
            j = min(kt + tid // K_TPR + pp * K_RSTEP, hi)
            off = (k_start + j) * k_row + hk * hs
            for x in range(K_E):
                d = d0 + tid % K_TPR + x * K_TPR
                if EXACT:
                    kr[pp * K_E + x] = float32(k[U(off + d)])
                else:
                    val = float32(k[U(off + min(d, hs - 1))])
                    kr[pp * K_E + x] = val if d < hs else ZERO

    @cuda.jit(device=True, inline=True, cache=True)
    def _load_v(v, vr, tid, kt, hi, k_start, k_row, hk, hs):
        """V values of the BK keys starting at kt into registers (0 past the last key, so
        that 0-probability keys can never bring a non-finite value into P V)."""
        j = kt + tid // V_TPR
        off = (k_start + min(j, hi)) * k_row + hk * hs
        for x in range(V_E):
            d = tid % V_TPR + x * V_TPR
            if EXACT:
                val = float32(v[U(off + d)])
                vr[x] = val if j <= hi else ZERO
            else:
                val = float32(v[U(off + min(d, hs - 1))])
                vr[x] = val if j <= hi and d < hs else ZERO

    @cuda.jit(**jit_kw)
    def flash_kernel(q, k, v, out, lse, cu_q, cu_k, num_heads, num_kv_heads, hs, scale_log2,
                     left, right, lse_batched):
        tid = cuda.threadIdx.x
        b = cuda.blockIdx.z
        q_start, sq = seq_span(cu_q, b)
        qbeg = cuda.blockIdx.x * (BM // gh)  # first query of the block
        if qbeg >= sq:
            return
        k_start, sk = seq_span(cu_k, b)
        h0 = cuda.blockIdx.y * gh            # first query head of the block
        hk = h0 // (num_heads // num_kv_heads)
        q_row = num_heads * hs               # elements per token row of q / out
        k_row = num_kv_heads * hs            # ... of k / v

        if SIM:
            # two staging buffers; each holds a Q chunk transposed [d, row] followed by a K
            # chunk transposed [d, key], or a V chunk [key, d]
            buf = cuda.shared.array(XW2, float32)
            Pt = cuda.shared.array((BN, BMP), float32)   # P tile, transposed: [key, row]
            red = cuda.shared.array((BM, CG), float32)   # row max / row sum partials
        else:
            buf = cuda.shared.array(XW2, float32, ALIGN)
            Pt = cuda.shared.array((BN, BMP), float32, ALIGN)
            red = cuda.shared.array((BM, CG), float32, ALIGN)

        # S phase: rows ty*TM + i, keys in groups of VN: (j//VN)*VN*CG + tx*VN + j%VN.
        # PV phase: the same rows, head-dim columns (x//VD)*VD*CG + tx*VD + x%VD.
        # Row r is query qbeg + r // gh of head h0 + r % gh.
        ty = tid // CG
        tx = tid % CG

        # keys visible to the block: the union of its rows' ranges
        nq = min(BM // gh, sq - qbeg)        # queries of this block inside the sequence
        lo, _ = key_range(qbeg, sq, sk, left, right)
        _, hi = key_range(qbeg + nq - 1, sq, sk, left, right)
        # row (query qi) sees key j iff dlo <= j - qi <= dhi, and j <= hi
        dlo = sk - sq - left if left >= 0 else -BIG
        dhi = sk - sq + right if right >= 0 else BIG

        # element offset of each q row this thread stages (rows past the sequence read the
        # block's last query instead; they are never written)
        q_off = cuda.local.array(Q_PASS, types.int64)
        for pp in range(Q_PASS):
            r = tid // Q_TPR + pp * Q_RSTEP
            q_off[pp] = (q_start + qbeg + min(r // gh, nq - 1)) * q_row + (h0 + r % gh) * hs

        m = cuda.local.array(TM, float32)        # running max (log2 units)
        lsum = cuda.local.array(TM, float32)     # partial row sum over this thread's keys
        for i in range(TM):
            m[i] = NEG_INF
            lsum[i] = ZERO
        o = cuda.local.array(TMTD, float32)
        for x in range(TMTD):
            o[x] = ZERO
        s = cuda.local.array(TMTN, float32)
        qa = cuda.local.array(TM, float32)
        kb = cuda.local.array(TN, float32)
        vb = cuda.local.array(TD, float32)
        alpha = cuda.local.array(TM, float32)    # per-row rescale factor, later 1/l
        mu = cuda.local.array(TM, float32)       # per-row max used for exp2, later lse
        qr = cuda.local.array(QE_ALL, float32)   # staged values in flight (next chunk)
        kr = cuda.local.array(KE_ALL, float32)
        vr = cuda.local.array(V_E, float32)

        # Global loads run one staging chunk ahead, across phases and tiles (the next tile's
        # first Q/K chunk is loaded during the PV phase, V's first chunk during the last S
        # chunk), and staging alternates between two shared buffers, so each chunk needs a
        # single barrier: a thread can only overwrite a buffer after every thread has passed
        # the barrier that follows its last read of it.
        if lo <= hi:   # (no key at all: no load, the loop below does not run)
            _load_qk(q, k, qr, kr, q_off, 0, tid, lo, hi, k_start, k_row, hk, hs, scale_log2)
        par = 0        # which staging buffer the next chunk goes to
        for kt in range(lo, hi + 1, BN):
            # ---- S = Q K^T over DK-column chunks
            for x in range(TMTN):
                s[x] = ZERO
            for dc in range(NDC):
                boff = par * XW
                par = 1 - par
                for pp in range(Q_PASS):
                    for x in range(Q_E):
                        buf[U(boff + (tid % Q_TPR + x * Q_TPR) * BMP + tid // Q_TPR
                              + pp * Q_RSTEP)] = qr[pp * Q_E + x]
                for pp in range(K_PASS):
                    for x in range(K_E):
                        buf[U(boff + QSZ + (tid % K_TPR + x * K_TPR) * BNP + tid // K_TPR
                              + pp * K_RSTEP)] = kr[pp * K_E + x]
                cuda.syncthreads()
                if dc + 1 < NDC:
                    _load_qk(q, k, qr, kr, q_off, (dc + 1) * DK, tid, kt, hi, k_start, k_row,
                             hk, hs, scale_log2)
                else:
                    _load_v(v, vr, tid, kt, hi, k_start, k_row, hk, hs)
                for d0 in range(0, DK, UNROLL_S):
                    for u in range(UNROLL_S):
                        for i in range(TM):
                            qa[i] = buf[U(boff + (d0 + u) * BMP + ty * TM + i)]
                        for jj in range(TN):
                            kb[jj] = buf[U(boff + QSZ + (d0 + u) * BNP
                                           + (jj // VN) * VN * CG + tx * VN + jj % VN)]
                        for i in range(TM):
                            for jj in range(TN):
                                s[i * TN + jj] += qa[i] * kb[jj]

            # ---- online softmax: mask, tile row max through shared memory, rescale.
            # (Small separate loops: each one unrolls fully, so the patches stay in registers.)
            # key j = kt + kj, query qi = qbeg + rq is visible iff lo_t <= kj - rq <= hi_t
            # and kj <= last (rows past the sequence are left unmasked: never written)
            lo_t = dlo - kt + qbeg
            hi_t = dhi - kt + qbeg
            last = hi - kt
            if 1 - nq >= lo_t and BN - 1 <= hi_t and BN - 1 <= last:   # tile fully visible
                for i in range(TM):
                    mx = NEG_INF
                    for jj in range(TN):
                        mx = max(mx, s[i * TN + jj])
                    red[U(ty * TM + i), U(tx)] = mx
            else:
                for i in range(TM):
                    rq = (ty * TM + i) // gh
                    mx = NEG_INF
                    for jj in range(TN):
                        kj = (jj // VN) * VN * CG + tx * VN + jj % VN
                        if kj - rq < lo_t or kj - rq > hi_t or kj > last:
                            s[i * TN + jj] = NEG_INF
                        mx = max(mx, s[i * TN + jj])
                    red[U(ty * TM + i), U(tx)] = mx
            cuda.syncthreads()
            for i in range(TM):
                mx = m[i]
                for cc in range(CG):
                    mx = max(mx, red[U(ty * TM + i), U(cc)])
                m_use = mx if mx != NEG_INF else ZERO   # a row with nothing seen yet
                alpha[i] = math.exp2(m[i] - m_use)
                m[i] = mx
                mu[i] = m_use
            for i in range(TM):
                part = ZERO
                for jj in range(TN):
                    p = math.exp2(s[i * TN + jj] - mu[i])
                    part += p
                    Pt[U((jj // VN) * VN * CG + tx * VN + jj % VN), U(ty * TM + i)] = p
                lsum[i] = lsum[i] * alpha[i] + part
            for x in range(TMTD):
                o[x] *= alpha[x // TD]

            # ---- O += P V over BK-key chunks (vr already holds the first chunk)
            for kc in range(NKC):
                boff = par * XW
                par = 1 - par
                for x in range(V_E):
                    buf[U(boff + (tid // V_TPR) * D + tid % V_TPR + x * V_TPR)] = vr[x]
                cuda.syncthreads()   # (the first one also publishes Pt)
                if kc + 1 < NKC:
                    _load_v(v, vr, tid, kt + (kc + 1) * BK, hi, k_start, k_row, hk, hs)
                else:   # the next tile's first Q/K chunk (clamped past the end: harmless)
                    _load_qk(q, k, qr, kr, q_off, 0, tid, kt + BN, hi, k_start, k_row, hk, hs,
                             scale_log2)
                for k0 in range(0, BK, UNROLL_PV):
                    for u in range(UNROLL_PV):
                        for x in range(TD):
                            vb[x] = buf[U(boff + (k0 + u) * D
                                          + (x // VD) * VD * CG + tx * VD + x % VD)]
                        for i in range(TM):
                            qa[i] = Pt[U(kc * BK + k0 + u), U(ty * TM + i)]
                        for i in range(TM):
                            for x in range(TD):
                                o[i * TD + x] += qa[i] * vb[x]

        # ---- finish: reduce the partial row sums, normalise, write out and lse
        for i in range(TM):
            red[U(ty * TM + i), U(tx)] = lsum[i]
        cuda.syncthreads()
        for i in range(TM):
            total = ZERO
            for cc in range(CG):
                total += red[U(ty * TM + i), U(cc)]
            alpha[i] = ONE / total if total > ZERO else ZERO   # 1/l, or 0 for an empty row
            mu[i] = m[i] * LN2 + math.log(total) if total > ZERO else NEG_INF
        for i in range(TM):
            r = ty * TM + i
            qi = qbeg + r // gh
            base = (q_start + qi) * q_row + (h0 + r % gh) * hs if r // gh < nq else -1
            for x in range(TD):
                dcol = (x // VD) * VD * CG + tx * VD + x % VD
                if base >= 0 and dcol < hs:
                    out[U(base + dcol)] = o[i * TD + x] * alpha[i]
        if tx == 0:
            for i in range(TM):
                r = ty * TM + i
                qi = qbeg + r // gh
                if r // gh < nq:
                    if lse_batched:
                        lse[b, h0 + r % gh, qi] = mu[i]
                    else:
                        lse[0, h0 + r % gh, q_start + qi] = mu[i]

    return flash_kernel


def supports(problem):
    return supports_cuda_core(problem, MAX_HEAD_SIZE)


def plan(problem, config=None):
    """One launch of ``config`` (default :func:`config_for`) over flat (1-D) views of q, k, v
    and out."""
    cfg = config_for(problem) if config is None else config
    bq = cfg.positions
    grid = ((max(problem.max_seqlen_q, 1) + bq - 1) // bq,
            problem.num_heads // cfg.heads_per_block, problem.batch)
    return (Plan(build(cfg), grid, cfg.threads, (FLAT, FLAT, FLAT, FLAT),
                 (np.int64(problem.num_heads), np.int64(problem.num_kv_heads),
                  np.int64(problem.head_size)) + band_scalars(problem, np.int64)),)


def _signature(dtype):
    a1 = array_type(dtype, 1)
    i64 = types.int64
    return (a1, a1, a1, a1, array_type(np.float32, 3), array_type(np.int32, 1),
            array_type(np.int32, 1), i64, i64, i64, types.float32, i64, i64, types.boolean)


def compile_targets(head_size, dtype, tiles=None, gh=None, min_blocks=None):
    # (exact head size when it is 64/128/256, zero-padded columns otherwise)
    """``[(label, py_func, signature)]`` of the specialisations that run ``head_size`` on a
    GPU (one per number of stacked heads: 1, 2, 4, 8), for ``cuda.compile_ptx``."""
    D = padded_head_size(head_size)
    if tiles is None:
        tiles, mb = GPU_CONFIG[D]
        min_blocks = mb if min_blocks is None else min_blocks
    min_blocks = min_blocks or 0
    ghs = [gh] if gh is not None else sorted({stacked_heads(g, tiles) for g in (1, 2, 4, 8)})
    exact = head_size == D
    tag = "" if exact else f"_hs{head_size}"
    return [(f"flash_kernel_d{D}{tag}_gh{g}",
             build(Config(D, Tiles(*tiles), g, min_blocks, exact)), _signature(dtype))
            for g in ghs]
