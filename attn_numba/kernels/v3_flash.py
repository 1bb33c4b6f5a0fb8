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
   unconditional (indices clamped, values zeroed after) and issued one chunk ahead into
   registers, so their latency overlaps the arithmetic. Thread ``(ty, tx)`` owns a
   ``TM x TN`` register patch of S: rows ``ty*TM + i`` and keys in groups of 4 consecutive
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
(padded head size, tile configuration). 64, 128 and 256 are specialised exactly; any other
size up to 256 runs on the next of them with the extra columns zero-filled (loads return 0,
stores are skipped). On the simulator the head dim is padded to a multiple of 16 only.
"""
import functools
import math

import numpy as np
from numba import cuda, float32, types

from .common import NEG_INF, array_type, key_range

NAME = "flash"
MAX_HEAD_SIZE = 256
LOG2E = np.float32(math.log2(math.e))
LN2 = np.float32(math.log(2.0))
ZERO = np.float32(0.0)
ONE = np.float32(1.0)
#: unsigned index cast: Numba skips the negative-index wraparound for unsigned indices, which
#: otherwise costs a compare-and-add on every shared/global access of the inner loops
U = types.uint64


class Tiles(tuple):
    """Tile configuration ``(BM, BN, NT, TM, TN, DK, BK)``; see the module docstring.

    BM score rows (queries x stacked heads) and BN keys per tile, NT threads, a TM x TN
    register patch of S per thread, DK head-dim columns per Q/K staging chunk, BK keys per
    V staging chunk. The PV phase reuses the S phase's thread grid (RG = BM/TM row groups by
    CG = BN/TN column groups), so each thread owns TM rows by ``TD = D / CG`` output columns.
    """

    __slots__ = ()
    names = ("BM", "BN", "NT", "TM", "TN", "DK", "BK")

    def __new__(cls, BM, BN, NT, TM, TN, DK, BK):
        return super().__new__(cls, (BM, BN, NT, TM, TN, DK, BK))

    def asdict(self):
        return dict(zip(self.names, self))

    def __repr__(self):
        return "Tiles(" + ", ".join(f"{n}={v}" for n, v in zip(self.names, self)) + ")"


#: GPU defaults per padded head size class (picked from the H100 sweep in
#: scripts/gpu_v2_v3.py; see notes/kernels_v2_v3.md).
GPU_TILES = {
    64: Tiles(BM=64, BN=64, NT=128, TM=8, TN=4, DK=16, BK=16),
    128: Tiles(BM=64, BN=64, NT=128, TM=8, TN=4, DK=16, BK=16),
    256: Tiles(BM=64, BN=64, NT=256, TM=4, TN=4, DK=16, BK=16),
}
#: tiny tiles for the simulator (one Python thread per CUDA thread)
SIM_TILES = Tiles(BM=8, BN=8, NT=16, TM=2, TN=2, DK=8, BK=4)
#: width of the vector shared loads (floats), shared-array row padding and alignment (bytes)
VEC, PAD, ALIGN = 4, 4, 16
#: inner-loop unrolling by hand (Numba has no unroll pragma): head-dim steps per iteration of
#: the S loop, key steps per iteration of the PV loop
UNROLL_S, UNROLL_PV = 2, 2
#: most query heads stacked into one block (they must share a KV head)
MAX_STACKED_HEADS = 8


def derived(D, tiles):
    """Check a configuration for head dim ``D`` and return the derived constants."""
    BM, BN, NT, TM, TN, DK, BK = tiles
    RG, CG = BM // TM, BN // TN
    TD = D // CG if CG else 0
    VN, VD = min(VEC, TN), min(VEC, TD)
    errs = []
    if BM % TM or BN % TN or RG * CG != NT:
        errs.append("need BM % TM == BN % TN == 0 and (BM/TM)*(BN/TN) == NT")
    if TD == 0 or D % CG or TD % VD or TN % VN:
        errs.append(f"head dim {D} must be a multiple of BN/TN = {CG}, with TD = D*TN/BN and TN "
                    f"multiples of {VEC} (or below it)")
    if D % DK or NT % DK or (BM * DK) % NT or (BN * DK) % NT:
        errs.append("need D % DK == NT % DK == 0 and BM*DK, BN*DK multiples of NT")
    if DK % UNROLL_S or BK % UNROLL_PV:
        errs.append(f"need DK % {UNROLL_S} == 0 and BK % {UNROLL_PV} == 0")
    if BN % BK or (BK * D) % NT or (NT % D and D % NT):
        errs.append("need BN % BK == 0, BK*D a multiple of NT, and NT | D or D | NT")
    if errs:
        raise ValueError(f"bad tiles {tiles!r} for D={D}: " + "; ".join(errs))
    return dict(RG=RG, CG=CG, TD=TD, VN=VN, VD=VD, NDC=D // DK, NKC=BN // BK,
                Q_LOADS=BM * DK // NT, K_LOADS=BN * DK // NT, V_LOADS=BK * D // NT,
                ROW_STEP=NT // DK)


def shared_bytes(D, tiles):
    """Static shared memory of one block, in bytes."""
    BM, BN, NT, TM, TN, DK, BK = tiles
    d = derived(D, tiles)
    return 4 * (DK * (BM + PAD) + DK * (BN + PAD) + BN * (BM + PAD) + BK * D + BM * d["CG"])


@functools.lru_cache(maxsize=None)
def build(D, tiles, sim=False):
    """The flash kernel for padded head dim ``D`` and tile configuration ``tiles``.

    Every size is a closure constant, so loops over tiles unroll and the per-thread patches
    (``cuda.local.array``) live in registers. ``sim`` drops the 16-byte alignment of the
    shared arrays (which lets the compiler use 128-bit shared loads), which the simulator
    does not support.
    """
    BM, BN, NT, TM, TN, DK, BK = tiles
    c = derived(D, tiles)
    RG, CG, TD, VN, VD = c["RG"], c["CG"], c["TD"], c["VN"], c["VD"]
    NDC, NKC = c["NDC"], c["NKC"]
    Q_LOADS, K_LOADS, V_LOADS, ROW_STEP = c["Q_LOADS"], c["K_LOADS"], c["V_LOADS"], c["ROW_STEP"]
    BMP, BNP = BM + PAD, BN + PAD  # padded rows: fewer bank conflicts, 16-byte aligned
    TMTD, TMTN = TM * TD, TM * TN
    SIM = bool(sim)
    V_WIDE = NT >= D               # V staging: a pass covers whole rows (else part of one)
    V_ROWS = NT // D if V_WIDE else 1
    V_PER_ROW = 1 if V_WIDE else D // NT

    @cuda.jit(device=True, inline=True, cache=True)
    def _load_qk(q, k, qr, kr, st_off, d0, sd, srow, kt, hi, k_start, k_row, hk, hs, hs_last,
                 scale_log2):
        """Q and K values of the chunk starting at column d0 into registers (0 outside)."""
        d = d0 + sd
        dc = min(d, hs_last)
        for e in range(Q_LOADS):
            off = st_off[e]
            x = float32(q[U(max(off, 0) + dc)]) * scale_log2
            qr[e] = x if off >= 0 and d < hs else ZERO
        for e in range(K_LOADS):
            j = kt + srow + e * ROW_STEP
            x = float32(k[U((k_start + min(j, hi)) * k_row + hk * hs + dc)])
            kr[e] = x if j <= hi and d < hs else ZERO

    @cuda.jit(device=True, inline=True, cache=True)
    def _load_v(v, vr, tid, kt, hi, k_start, k_row, hk, hs, hs_last):
        """V values of the BK keys starting at kt into registers (0 outside)."""
        for e in range(V_LOADS):
            if V_WIDE:
                cv = tid // D + e * V_ROWS
                dv = tid % D
            else:
                cv = e // V_PER_ROW
                dv = (e % V_PER_ROW) * NT + tid
            j = kt + cv
            x = float32(v[U((k_start + min(j, hi)) * k_row + hk * hs + min(dv, hs_last))])
            vr[e] = x if j <= hi and dv < hs else ZERO

    @cuda.jit(cache=True)
    def flash_kernel(q, k, v, out, lse, cu_q, cu_k, num_heads, num_kv_heads, hs, scale_log2,
                     left, right, lse_batched, gh):
        tid = cuda.threadIdx.x
        b = cuda.blockIdx.z
        q_start = cu_q[b]
        sq = cu_q[b + 1] - q_start
        bq = BM // gh                        # queries per block
        qbeg = cuda.blockIdx.x * bq
        if qbeg >= sq:
            return
        k_start = cu_k[b]
        sk = cu_k[b + 1] - k_start
        h0 = cuda.blockIdx.y * gh            # first query head of the block
        hk = h0 // (num_heads // num_kv_heads)
        q_row = num_heads * hs               # elements per token row of q / out
        k_row = num_kv_heads * hs            # ... of k / v

        if SIM:
            Qt = cuda.shared.array((DK, BMP), float32)   # Q chunk, transposed: [d, row]
            Kt = cuda.shared.array((DK, BNP), float32)   # K chunk, transposed: [d, key]
            Pt = cuda.shared.array((BN, BMP), float32)   # P tile, transposed: [key, row]
            Vs = cuda.shared.array((BK, D), float32)     # V chunk: [key, d]
        else:
            Qt = cuda.shared.array((DK, BMP), float32, ALIGN)
            Kt = cuda.shared.array((DK, BNP), float32, ALIGN)
            Pt = cuda.shared.array((BN, BMP), float32, ALIGN)
            Vs = cuda.shared.array((BK, D), float32, ALIGN)
        red = cuda.shared.array((BM, CG), float32)       # row max / row sum partials

        # S phase: rows ty*TM + i, keys in groups of VN: (j//VN)*VN*CG + tx*VN + j%VN.
        # PV phase: the same rows, head-dim columns (x//VD)*VD*CG + tx*VD + x%VD.
        ty = tid // CG
        tx = tid % CG
        sd = tid % DK                        # staging: column sd of rows srow + e*ROW_STEP
        srow = tid // DK

        # keys visible to the block: the union of its rows' ranges
        qlast = min(qbeg + bq, sq) - 1
        lo, _ = key_range(qbeg, sq, sk, left, right)
        _, hi = key_range(qlast, sq, sk, left, right)

        # element offset of each q row this thread stages (-1: past the sequence)
        st_off = cuda.local.array(Q_LOADS, types.int64)
        for e in range(Q_LOADS):
            r = srow + e * ROW_STEP
            qi = qbeg + r // gh
            st_off[e] = (q_start + qi) * q_row + (h0 + r % gh) * hs if qi < sq else -1

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
        qr = cuda.local.array(Q_LOADS, float32)  # staged values in flight (next chunk)
        kr = cuda.local.array(K_LOADS, float32)
        vr = cuda.local.array(V_LOADS, float32)
        mu = cuda.local.array(TM, float32)       # per-row max used for exp2, later lse

        hs_last = hs - 1
        for kt in range(lo, hi + 1, BN):
            # ---- S = Q K^T over DK-column chunks. Global loads are unconditional (indices
            # clamped into range, the value zeroed after) and one chunk ahead (registers).
            for x in range(TMTN):
                s[x] = ZERO
            for dc in range(NDC):
                if dc == 0:
                    _load_qk(q, k, qr, kr, st_off, 0, sd, srow, kt, hi, k_start, k_row, hk, hs,
                             hs_last, scale_log2)
                for e in range(Q_LOADS):
                    Qt[U(sd), U(srow + e * ROW_STEP)] = qr[e]
                for e in range(K_LOADS):
                    Kt[U(sd), U(srow + e * ROW_STEP)] = kr[e]
                cuda.syncthreads()
                if dc + 1 < NDC:
                    _load_qk(q, k, qr, kr, st_off, (dc + 1) * DK, sd, srow, kt, hi, k_start,
                             k_row, hk, hs, hs_last, scale_log2)
                for d0 in range(0, DK, UNROLL_S):
                    for u in range(UNROLL_S):
                        for i in range(TM):
                            qa[i] = Qt[U(d0 + u), U(ty * TM + i)]
                        for jj in range(TN):
                            kb[jj] = Kt[U(d0 + u), U((jj // VN) * VN * CG + tx * VN + jj % VN)]
                        for i in range(TM):
                            for jj in range(TN):
                                s[i * TN + jj] += qa[i] * kb[jj]
                cuda.syncthreads()

            # ---- online softmax: mask, tile row max through shared memory, rescale.
            # (Small separate loops: each one unrolls fully, so the patches stay in registers.)
            for i in range(TM):
                qi = qbeg + (ty * TM + i) // gh
                a, z = key_range(qi, sq, sk, left, right)
                if qi >= sq:
                    z = a - 1
                mx = NEG_INF
                for jj in range(TN):
                    j = kt + (jj // VN) * VN * CG + tx * VN + jj % VN
                    if j < a or j > z:
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

            # ---- O += P V over BK-key chunks (V loads one chunk ahead, like Q and K)
            _load_v(v, vr, tid, kt, hi, k_start, k_row, hk, hs, hs_last)
            for kc in range(NKC):
                for e in range(V_LOADS):
                    if V_WIDE:
                        Vs[U(tid // D + e * V_ROWS), U(tid % D)] = vr[e]
                    else:
                        Vs[U(e // V_PER_ROW), U((e % V_PER_ROW) * NT + tid)] = vr[e]
                cuda.syncthreads()   # (the first one also publishes Pt)
                if kc + 1 < NKC:
                    _load_v(v, vr, tid, kt + (kc + 1) * BK, hi, k_start, k_row, hk, hs, hs_last)
                for k0 in range(0, BK, UNROLL_PV):
                    for u in range(UNROLL_PV):
                        for x in range(TD):
                            vb[x] = Vs[U(k0 + u), U((x // VD) * VD * CG + tx * VD + x % VD)]
                        for i in range(TM):
                            qa[i] = Pt[U(kc * BK + k0 + u), U(ty * TM + i)]
                        for i in range(TM):
                            for x in range(TD):
                                o[i * TD + x] += qa[i] * vb[x]
                cuda.syncthreads()

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
            base = (q_start + qi) * q_row + (h0 + r % gh) * hs if qi < sq else -1
            for x in range(TD):
                dcol = (x // VD) * VD * CG + tx * VD + x % VD
                if base >= 0 and dcol < hs:
                    out[U(base + dcol)] = o[i * TD + x] * alpha[i]
        if tx == 0:
            for i in range(TM):
                r = ty * TM + i
                qi = qbeg + r // gh
                if qi < sq:
                    if lse_batched:
                        lse[b, h0 + r % gh, qi] = mu[i]
                    else:
                        lse[0, h0 + r % gh, q_start + qi] = mu[i]

    return flash_kernel


def padded_head_size(head_size, on_simulator=False):
    """The compiled head dim that runs ``head_size``: 64, 128 or 256 on a GPU (other sizes
    are zero-padded up to the next one), a multiple of 16 on the simulator."""
    if on_simulator:
        return max(16, -(-head_size // 16) * 16)
    return 64 if head_size <= 64 else 128 if head_size <= 128 else 256


def tiles_for(head_size, on_simulator):
    """Default tiles for a head size."""
    if on_simulator:
        return SIM_TILES
    return GPU_TILES[padded_head_size(head_size)]


def stacked_heads(group_size, BM):
    """Query heads stacked per block: the largest divisor of the GQA group size that is at
    most MAX_STACKED_HEADS and leaves at least BM/8 queries per block."""
    best = 1
    for g in range(1, min(group_size, MAX_STACKED_HEADS) + 1):
        if group_size % g == 0 and BM % g == 0 and BM // g >= max(1, BM // 8):
            best = g
    return best


def supports(problem):
    if problem.head_size > MAX_HEAD_SIZE:
        return f"head_size {problem.head_size} > {MAX_HEAD_SIZE}"
    if np.dtype(problem.dtype) not in (np.dtype(np.float16), np.dtype(np.float32)):
        return f"dtype {problem.dtype} is not float16/float32"
    return None


def launch(problem, q, k, v, out, lse, cu_q, cu_k, stream, tiles=None):
    """Enqueue the flash kernel on ``stream``. ``tiles`` overrides the default tiles
    (used by the tile sweep in scripts/gpu_v2_v3.py)."""
    sim = bool(problem.on_simulator)
    if tiles is None:
        tiles = tiles_for(problem.head_size, sim)
    kernel = build(padded_head_size(problem.head_size, sim), tiles, sim)
    BM, NT = tiles[0], tiles[2]
    gh = stacked_heads(problem.group_size, BM)
    bq = BM // gh
    grid = ((max(problem.max_seqlen_q, 1) + bq - 1) // bq, problem.num_heads // gh, problem.batch)
    kernel[grid, NT, stream](
        q.reshape(q.size), k.reshape(k.size), v.reshape(v.size), out.reshape(out.size), lse,
        cu_q, cu_k, np.int64(problem.num_heads), np.int64(problem.num_kv_heads),
        np.int64(problem.head_size), np.float32(problem.softmax_scale * math.log2(math.e)),
        np.int64(problem.window_left), np.int64(problem.window_right),
        bool(problem.lse_batched), np.int64(gh))


def _signature(dtype):
    a1 = array_type(dtype, 1)
    i64 = types.int64
    return (a1, a1, a1, a1, array_type(np.float32, 3), array_type(np.int32, 1),
            array_type(np.int32, 1), i64, i64, i64, types.float32, i64, i64, types.boolean, i64)


#: the specialised kernels (default GPU tiles), by name
KERNEL_FUNCS = {f"flash_kernel_d{D}": build(D, GPU_TILES[D]) for D in (64, 128, 256)}


def ptx_signatures(head_size, dtype):
    """Argument types of every kernel in KERNEL_FUNCS (head size is baked into each)."""
    return {name: _signature(dtype) for name in KERNEL_FUNCS}


def compile_targets(head_size, dtype, tiles=None):
    """``[(label, py_func, signature)]`` of the specialisation that runs ``head_size`` on a
    GPU, for ``cuda.compile_ptx``."""
    if tiles is None:
        tiles = tiles_for(head_size, False)
    D = padded_head_size(head_size)
    return [(f"flash_kernel_d{D}", build(D, tiles).py_func, _signature(dtype))]
