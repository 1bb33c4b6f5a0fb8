"""Hopper backward (``kernel="flash_wgmma"``, sm_90a): FlashAttention-2's backward on warpgroup
MMA, the backward twin of the forward's flash_wgmma, in three launches:

1. ``delta = rowsum(dO * O)``: the tensor-core backward's preprocess
   (:func:`bwd_tc_dq.build_delta`);
2. dK and dV, one warpgroup per 64 keys of one KV head: :mod:`bwd_wgmma_dkdv`;
3. dQ, one warpgroup per 64 GQA-packed query rows: :mod:`bwd_wgmma_dq`.

Every product maps onto the forward's two wgmma forms (:mod:`bwd_wgmma_steps`). Deterministic
(no atomics; ``deterministic=False`` is allowed and changes nothing). fp16 and bf16, head
sizes 64 and 128 (at 256 the dK + dV accumulators of 64 keys would take 256 registers per
thread: ``auto`` takes flash_tc there). Runs on Numba's simulator through the instruction
models of :mod:`ptx_sm90_sim`; PTX for ``cc=(9, 0, "a")``. Notes: notes/bwd_wgmma.md.
"""
import os

import numpy as np

from .bwd_flash_tc import (DKDV_ARRAYS, DKDV_VIEWS, DQ_ARRAYS, DQ_VIEWS, _scalars,
                           delta_plans, dkdv_signature, dq_signature)
from .bwd_tc_dq import build_delta
from .bwd_wgmma_dkdv import BLOCK_K, OVERLAP, build_dkdv
from .bwd_wgmma_dq import BLOCK_M, build_dq
from .bwd_wgmma_steps import THREADS, shared_bytes
from .common import supports_hopper
from .config import dtype_name, heads_per_block
from .occupancy import opt_in_shared

NAME = "flash_wgmma"
#: the byte alignment the passes' 16-byte cp.async loads and vector stores need of every
#: fp16/bf16 array (callpath.check_aligned refuses others before any launch)
POINTER_ALIGN = 16
HEAD_SIZES = (64, 128)
#: queries per tile of the dK/dV pass and keys per tile of the dQ pass
BLOCK_Q = 64
BLOCK_N = 64


def kind_of(dtype):
    return {"float16": "f16", "bfloat16": "bf16"}.get(dtype_name(dtype))


def kernels(head_size, dtype, heads=4, bm=BLOCK_Q, bn=BLOCK_N, overlap=OVERLAP):
    """``(delta, dkdv, dq)`` of one specialisation (lru-cached builds)."""
    kind = kind_of(dtype)
    return (build_delta(head_size, kind == "bf16"), build_dkdv(head_size, kind, bm, overlap),
            build_dq(head_size, kind, heads, bn))


def compile_targets(head_size, dtype, heads=(1, 4)):
    """``[(label, kernel, signature)]`` for ``compile_ptx(..., cc=(9, 0, "a"))``."""
    if kind_of(dtype) is None or head_size not in HEAD_SIZES:
        return []
    tag = f"d{head_size}_{kind_of(dtype)}"
    _, dkdv, _ = kernels(head_size, dtype)
    out = [(f"bwd_wgmma_dkdv_kernel_{tag}", dkdv, dkdv_signature()),
           (f"bwd_wgmma_dkdv_kernel_{tag}_ov", kernels(head_size, dtype, overlap=True)[1],
            dkdv_signature())]
    for hb in heads:
        out.append((f"bwd_wgmma_dq_kernel_{tag}_h{hb}", kernels(head_size, dtype, hb)[2],
                    dq_signature()))
    return out


def supports(problem):
    """Why this backward cannot run ``problem`` (None when it can): sm_90, fp16/bf16, head
    size 64 or 128; ``ATTN_NUMBA_NO_WGMMA=1`` refuses it, as it does the forward."""
    if os.environ.get("ATTN_NUMBA_NO_WGMMA", "0") not in ("", "0"):
        return "disabled by ATTN_NUMBA_NO_WGMMA"
    return supports_hopper(problem, "the wgmma backward", HEAD_SIZES, "wgmma")


def scratch(problem, deterministic=None):
    """The float32 ``delta`` (H, total_q), written by the first launch before it is read."""
    from . import Scratch
    return (Scratch("delta", (problem.num_heads, max(problem.total_q, 1)), np.float32),)


def plan(problem, bm=BLOCK_Q, bn=BLOCK_N, heads=None, overlap=OVERLAP, deterministic=None):
    """The three launches (delta, dK/dV, dQ). ``bm``: queries per dK/dV tile, ``bn``: keys
    per dQ tile, ``heads``: query heads per dQ block (default: 4, 2 or 1, the largest that
    divides the GQA group), ``overlap``: the dK/dV pass's overlapped tile loop (opt-in,
    :func:`bwd_wgmma_dkdv.build_dkdv`). On a GPU this raises the gradient kernels' dynamic
    shared-memory limit first."""
    from . import Plan
    d = problem.head_size
    hb = heads_per_block(problem.group_size) if heads is None else int(heads)
    dl, k_kv, k_q = kernels(d, problem.dtype, hb, bm, bn, overlap)
    sh_kv, sh_q = shared_bytes(d, bm, 2), shared_bytes(d, bn, 2)
    if not problem.on_simulator:
        opt_in_shared(k_kv, dkdv_signature(), sh_kv)
        opt_in_shared(k_q, dq_signature(), sh_q)
    scalars = _scalars(problem)
    plans = list(delta_plans(problem, dl))
    grid_kv = (max(-(-problem.max_seqlen_k // BLOCK_K), 1), problem.num_kv_heads,
               problem.batch)
    plans.append(Plan(k_kv, grid_kv, THREADS, DKDV_VIEWS, scalars, sh_kv, DKDV_ARRAYS))
    pb = BLOCK_M // hb
    grid_q = (max(-(-problem.max_seqlen_q // pb), 1), problem.num_heads // hb, problem.batch)
    plans.append(Plan(k_q, grid_q, THREADS, DQ_VIEWS, scalars, sh_q, DQ_ARRAYS))
    return tuple(plans)
