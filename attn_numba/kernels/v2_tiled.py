"""v2: tiled. K and V tiles staged in shared memory and shared by a block of query rows; two-pass softmax.

Spec
----
One thread block per (query tile of ``BQ`` rows, query head, sequence); one thread per query
row. The block walks the keys its rows can see (the union of their windows), ``BN`` keys at a
time, starting at the first visible key; tiles wholly outside the window/causal band are
never visited, partial ones are masked per row.

* Pass 1: for each K tile (staged in shared memory as float32 by the whole block), each
  thread computes its row's ``BN`` scores into registers and updates its row max ``m`` and
  the sum ``l`` of ``exp(s - m)`` (rescaling ``l`` when ``m`` grows).
* Pass 2: for each K/V tile, recompute the scores, ``p = exp(s - m) / l``, and accumulate
  ``p V`` into a float32 accumulator of ``head_size`` values (local memory, as in v1).

So K is read from global memory twice (once per pass) and V once, but each K/V element
fetched is reused by the ``BQ`` rows of the block instead of being re-read per row (v1). The
query row is read from global memory (it stays in L1) once per key tile and pass.

Rows that see no key get out 0 and lse -inf. The head dim is a compile-time constant of an
lru_cached factory (64, 128 or 256; other sizes are zero-padded up to the next one, multiples
of 16 on the simulator), which sizes the shared tiles and the accumulator.
"""
import functools
import math

import numpy as np
from numba import cuda, float32, types

from ..problem import MAX_HEAD_SIZE
from . import Plan
from .common import NEG_INF, array_type, key_range, seq_span, supports_cuda_core

NAME = "tiled"
ZERO = np.float32(0.0)
ONE = np.float32(1.0)
U = types.uint64  # unsigned indices: no negative-index wraparound code

#: query rows (= threads) per block
BQ = 64
BQ_SIM = 8
#: floats of shared memory per staged K (or V) tile: BN = TILE_FLOATS // D keys per tile
TILE_FLOATS = 4096
BN_SIM = 4


def padded_head_size(head_size, on_simulator=False):
    if on_simulator:
        return max(16, -(-head_size // 16) * 16)
    return 64 if head_size <= 64 else 128 if head_size <= 128 else 256


@functools.lru_cache(maxsize=None)
def build(D, BN):
    """The tiled kernel for padded head dim ``D`` with ``BN`` keys per tile."""

    @cuda.jit(device=True, inline=True, cache=True)
    def _scores(s, q, Ks, t, h, hs):
        """s[j] = q[t, h] . K tile row j (unscaled), for the BN keys of the staged tile."""
        for jj in range(BN):
            s[jj] = ZERO
        for d in range(hs):
            qd = float32(q[U(t), U(h), U(d)])
            for jj in range(BN):
                s[jj] += qd * Ks[U(jj), U(d)]

    @cuda.jit(cache=True)
    def tiled_kernel(q, k, v, out, lse, cu_q, cu_k, scale, left, right, lse_batched):
        nq = cuda.blockDim.x
        tid = cuda.threadIdx.x
        h = cuda.blockIdx.y
        b = cuda.blockIdx.z
        q0, sq = seq_span(cu_q, b)
        qbeg = cuda.blockIdx.x * nq
        if qbeg >= sq:
            return
        k0, sk = seq_span(cu_k, b)
        hk = h // (q.shape[1] // k.shape[1])
        hs = q.shape[2]
        i = qbeg + tid                     # this thread's query row (may be past the end)
        row_ok = i < sq
        t = q0 + min(i, sq - 1)            # a valid token to read from when not row_ok

        Ks = cuda.shared.array((BN, D), float32)
        Vs = cuda.shared.array((BN, D), float32)
        s = cuda.local.array(BN, float32)

        lo, _ = key_range(qbeg, sq, sk, left, right)
        _, hi = key_range(min(qbeg + nq, sq) - 1, sq, sk, left, right)
        my_lo, my_hi = key_range(i, sq, sk, left, right)
        if not row_ok:
            my_hi = my_lo - 1

        # ---- pass 1: row max m and sum l of exp(s - m), one K tile at a time
        m = NEG_INF
        l = ZERO
        for kt in range(lo, hi + 1, BN):
            cuda.syncthreads()             # previous tile fully used
            for x in range(tid, BN * D, nq):
                j = kt + x // D
                d = x % D
                val = ZERO
                if j <= hi and d < hs:
                    val = float32(k[U(k0 + j), U(hk), U(d)])
                Ks[U(x // D), U(d)] = val
            cuda.syncthreads()
            _scores(s, q, Ks, t, h, hs)
            m_new = m
            for jj in range(BN):
                j = kt + jj
                if j >= my_lo and j <= my_hi:
                    m_new = max(m_new, s[jj] * scale)
            if m_new != NEG_INF:
                l *= math.exp(m - m_new)   # exp(-inf) = 0 on the first visible key
                for jj in range(BN):
                    j = kt + jj
                    if j >= my_lo and j <= my_hi:
                        l += math.exp(s[jj] * scale - m_new)
                m = m_new

        # ---- pass 2: accumulate p V with the final m and 1/l (K read again)
        acc = cuda.local.array(D, float32)
        for d in range(D):
            acc[d] = ZERO
        inv_l = ONE / l if l > ZERO else ZERO
        for kt in range(lo, hi + 1, BN):
            cuda.syncthreads()
            for x in range(tid, BN * D, nq):
                j = kt + x // D
                d = x % D
                kval = ZERO
                vval = ZERO
                if j <= hi and d < hs:
                    kval = float32(k[U(k0 + j), U(hk), U(d)])
                    vval = float32(v[U(k0 + j), U(hk), U(d)])
                Ks[U(x // D), U(d)] = kval
                Vs[U(x // D), U(d)] = vval
            cuda.syncthreads()
            _scores(s, q, Ks, t, h, hs)
            for jj in range(BN):
                j = kt + jj
                p = ZERO
                if j >= my_lo and j <= my_hi:
                    p = math.exp(s[jj] * scale - m) * inv_l
                s[jj] = p
            for d in range(hs):
                a = acc[d]
                for jj in range(BN):
                    a += s[jj] * Vs[U(jj), U(d)]
                acc[d] = a

        if row_ok:
            for d in range(hs):
                out[U(t), U(h), U(d)] = acc[d]
            row_lse = m + math.log(l) if l > ZERO else NEG_INF
            if lse_batched:
                lse[b, h, i] = row_lse
            else:
                lse[0, h, t] = row_lse

    return tiled_kernel


def tiles_for(head_size, on_simulator):
    """(padded head dim, keys per tile, rows per block)."""
    D = padded_head_size(head_size, on_simulator)
    if on_simulator:
        return D, BN_SIM, BQ_SIM
    return D, TILE_FLOATS // D, BQ


def supports(problem):
    return supports_cuda_core(problem, MAX_HEAD_SIZE)


def plan(problem):
    """One launch: a block of ``BQ`` query rows per (tile, head, sequence)."""
    D, BN, nq = tiles_for(problem.head_size, problem.on_simulator)
    grid = ((max(problem.max_seqlen_q, 1) + nq - 1) // nq, problem.num_heads, problem.batch)
    return (Plan(build(D, BN), grid, nq, (None, None, None, None),
                 (np.float32(problem.softmax_scale), np.int64(problem.window_left),
                  np.int64(problem.window_right), bool(problem.lse_batched))),)


def _signature(dtype):
    a3 = array_type(dtype, 3)
    return (a3, a3, a3, a3, array_type(np.float32, 3), array_type(np.int32, 1),
            array_type(np.int32, 1), types.float32, types.int64, types.int64, types.boolean)


def compile_targets(head_size, dtype):
    """``[(label, kernel, signature)]`` of the specialisation that runs ``head_size`` on a
    GPU, for ``cuda.compile_ptx``."""
    D, BN, _ = tiles_for(head_size, False)
    return [(f"tiled_kernel_d{D}", build(D, BN), _signature(dtype))]
