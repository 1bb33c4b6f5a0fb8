"""v1: naive. One thread per (query row, head) loops over the keys of its window; the baseline.

Each thread reads its window's K rows twice (max pass, then exp/accumulate pass) straight from
global memory, with no reuse between the threads of a block, and keeps a float32 accumulator
of ``head_size`` values in local memory.
"""
import math

import numpy as np
from numba import cuda, float32, int32, types

from ..problem import MAX_HEAD_SIZE
from . import Plan
from .common import NEG_INF, array_type, key_range, seq_span, supports_cuda_core

NAME = "naive"
#: threads per block (query rows per block)
BLOCK = 128
BLOCK_SIM = 32


@cuda.jit(cache=True)
def naive_kernel(q, k, v, out, lse, cu_q, cu_k, scale, left, right, lse_batched):
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    h = cuda.blockIdx.y
    b = cuda.blockIdx.z
    q0, sq = seq_span(cu_q, b)
    if i >= sq:
        return
    k0, sk = seq_span(cu_k, b)
    hk = h // (q.shape[1] // k.shape[1])
    d_head = q.shape[2]
    t = q0 + i
    lo, hi = key_range(i, sq, sk, left, right)

    # pass 1: the row maximum of the scaled scores
    m = NEG_INF
    for j in range(lo, hi + 1):
        s = float32(0.0)
        for d in range(d_head):
            s += float32(q[t, h, d]) * float32(k[k0 + j, hk, d])
        m = max(m, s * scale)

    # pass 2: exponentials, their sum, and the weighted sum of V rows
    acc = cuda.local.array(MAX_HEAD_SIZE, float32)
    for d in range(d_head):
        acc[d] = float32(0.0)
    denom = float32(0.0)
    for j in range(lo, hi + 1):
        s = float32(0.0)
        for d in range(d_head):
            s += float32(q[t, h, d]) * float32(k[k0 + j, hk, d])
        p = math.exp(s * scale - m)
        denom += p
        for d in range(d_head):
            acc[d] += p * float32(v[k0 + j, hk, d])

    if denom > float32(0.0):
        inv = float32(1.0) / denom
        row_lse = m + math.log(denom)
    else:  # no key in the window (or a NaN row): zeros, lse = -inf
        inv = float32(0.0)
        row_lse = NEG_INF
    for d in range(d_head):
        out[t, h, d] = acc[d] * inv
    if lse_batched:
        lse[b, h, i] = row_lse
    else:
        lse[0, h, t] = row_lse


def _signature(dtype):
    a3 = array_type(dtype, 3)
    return (a3, a3, a3, a3, array_type(np.float32, 3), array_type(np.int32, 1),
            array_type(np.int32, 1), types.float32, types.int64, types.int64, types.boolean)


def compile_targets(head_size, dtype):
    """``[(label, kernel, signature)]`` for ``cuda.compile_ptx`` (one kernel for every head
    size up to MAX_HEAD_SIZE)."""
    if head_size > MAX_HEAD_SIZE:
        return []
    return [("naive_kernel", naive_kernel, _signature(dtype))]


def supports(problem):
    return supports_cuda_core(problem, MAX_HEAD_SIZE)


def plan(problem):
    """One launch: a thread per (query row, head), blocks of ``BLOCK`` rows."""
    block = BLOCK_SIM if problem.on_simulator else BLOCK
    grid = ((max(problem.max_seqlen_q, 1) + block - 1) // block, problem.num_heads, problem.batch)
    return (Plan(naive_kernel, grid, block, (None, None, None, None),
                 (np.float32(problem.softmax_scale), np.int64(problem.window_left),
                  np.int64(problem.window_right), bool(problem.lse_batched))),)
