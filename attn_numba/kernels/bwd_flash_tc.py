"""Tensor-core backward (``kernel="flash_tc"``): FlashAttention-2's backward on
``mma.sync.m16n8k16`` (fp16 or bf16 in, fp32 accumulate), portable to sm_80, in three launches:

1. ``delta = rowsum(dO * O)`` (float32 scratch ``delta``, (H, total_q)):
   :func:`bwd_tc_dq.build_delta`;
2. dK and dV, one block per key tile and KV head over the query heads of its GQA group and
   the query tiles its band reaches: :mod:`bwd_tc_dkdv`;
3. dQ, one block per query tile and head over its key tiles, deterministic (no atomics):
   :mod:`bwd_tc_dq`.

``deterministic=False`` (FlashAttention-2's default; ``Problem.deterministic`` or the
``plan`` / ``scratch`` keyword) replaces the dQ pass: the dK/dV pass also adds ``dS K`` into a
float32 scratch ``dq_accum`` (total_q, H, D) with ``red.global.add.f32``, zeroed by the delta
launch, and a last launch converts it to dq (:mod:`bwd_tc_atomic`).

Both gradient passes recompute ``P`` from Q, K and the forward's lse; nothing of size
seqlen x seqlen is stored. Fragment maps: :mod:`bwd_tc_layout` (on top of the forward's
:mod:`v4_layout`); NumPy emulation: :mod:`bwd_tc_emulation`. Measurements and predictions:
notes/bwd_tensor_core.md.
"""
import math

import numpy as np
from numba import types

from .bwd_tc_atomic import CONVERT_THREADS, build_convert, build_delta_zero
from .bwd_tc_dkdv import build_dkdv
from .bwd_tc_dq import DELTA_WARPS, build_delta, build_dq
from .bwd_tc_layout import (WARPS, dkdv_atomic_shared, dkdv_config, dkdv_shared, dq_config,
                            dq_shared)
from .occupancy import opt_in_shared
from .common import array_type, supports_mma_sync

NAME = "flash_tc"
#: the byte alignment the passes' 16-byte cp.async loads and vector stores need of every
#: fp16/bf16 array (callpath.check_aligned refuses others before any launch)
POINTER_ALIGN = 16
DTYPE_NAMES = ("float16", "bfloat16")
MAX_HEAD_SIZE = 256
LOG2E = math.log2(math.e)
#: largest dynamic shared memory of a block on sm_80 (A100 / A30: 163 KiB)
MAX_SHARED_SM80 = 163 * 1024

_U16, _U32 = np.uint16, np.uint32
DELTA_ARRAYS = ("dout", "out", "delta")
DKDV_ARRAYS = ("dout", "q", "k", "v", "lse", "delta", "dk", "dv", "cu_seqlens_q",
               "cu_seqlens_k")
DQ_ARRAYS = ("dout", "q", "k", "v", "lse", "delta", "dq", "cu_seqlens_q", "cu_seqlens_k")
DKDV_VIEWS = (_U16, _U16, _U16, _U16, None, None, _U32, _U32)
DQ_VIEWS = (_U16, _U16, _U16, _U16, None, None, _U32)
DELTA_ZERO_ARRAYS = ("dout", "out", "delta", "dq_accum")
DKDV_ATOMIC_ARRAYS = ("dout", "q", "k", "v", "lse", "delta", "dk", "dv", "dq_accum",
                      "cu_seqlens_q", "cu_seqlens_k")
CONVERT_ARRAYS = ("dq_accum", "dq")
CONVERT_VIEWS = (None, _U32)


def _is_bf16(dtype):
    return np.dtype(dtype).name == "bfloat16"


def _scalar_types():
    return (types.float32, types.float32, types.int32, types.int32, types.boolean)


def delta_signature():
    u32 = array_type(np.uint32, 3)
    return (u32, u32, array_type(np.float32, 2))


def dkdv_signature():
    u16, u32 = array_type(np.uint16, 3), array_type(np.uint32, 3)
    f32, i32 = array_type(np.float32, 3), array_type(np.int32, 1)
    return (u16, u16, u16, u16, f32, array_type(np.float32, 2), u32, u32, i32, i32,
            *_scalar_types())


def dq_signature():
    u16, u32 = array_type(np.uint16, 3), array_type(np.uint32, 3)
    f32, i32 = array_type(np.float32, 3), array_type(np.int32, 1)
    return (u16, u16, u16, u16, f32, array_type(np.float32, 2), u32, i32, i32,
            *_scalar_types())


def dkdv_atomic_signature():
    sig = dkdv_signature()
    return sig[:8] + (array_type(np.float32, 3),) + sig[8:]


def delta_zero_signature():
    return delta_signature() + (array_type(np.float32, 3),)


def convert_signature():
    return (array_type(np.float32, 3), array_type(np.uint32, 3), types.float32)


def deterministic_of(problem, deterministic=None):
    """The variant a plan builds: ``deterministic`` when given, else the problem's
    (``Problem.deterministic``, True by default)."""
    if deterministic is None:
        deterministic = getattr(problem, "deterministic", True)
    return bool(deterministic)


def kernels(head_size, bf16):
    """``(delta, dkdv, dq)`` dispatchers of one specialisation (lru-cached builds)."""
    return (build_delta(head_size, bf16), build_dkdv(head_size, bf16, *dkdv_config(head_size)),
            build_dq(head_size, bf16, *dq_config(head_size)))


def compile_targets(head_size, dtype):
    """``[(label, kernel, signature)]`` for ``cuda.compile_ptx``, one per kernel
    (empty when this specialisation is not supported)."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in DTYPE_NAMES or head_size % 8 or not 8 <= head_size <= MAX_HEAD_SIZE:
        return []
    dl, dkdv, dq = kernels(head_size, name == "bfloat16")
    tag = f"d{head_size}_{name}"
    return [(f"bwd_tc_delta_kernel_{tag}", dl, delta_signature()),
            (f"bwd_tc_dkdv_kernel_{tag}", dkdv, dkdv_signature()),
            (f"bwd_tc_dq_kernel_{tag}", dq, dq_signature()),
            *atomic_targets(head_size, name == "bfloat16", tag)]


def atomic_targets(head_size, bf16, tag):
    """The atomic-dQ variant's three kernels (delta + zero, dK/dV + dQ atomics, convert)."""
    return [(f"bwd_tc_delta_zero_kernel_{tag}", build_delta_zero(head_size, bf16),
             delta_zero_signature()),
            (f"bwd_tc_dkdv_atomic_kernel_{tag}",
             build_dkdv(head_size, bf16, *dkdv_config(head_size), atomic=True),
             dkdv_atomic_signature()),
            (f"bwd_tc_dq_convert_kernel_{tag}", build_convert(head_size, bf16),
             convert_signature())]


def supports(problem):
    return supports_mma_sync(problem, "tensor-core backward", DTYPE_NAMES, MAX_HEAD_SIZE)


def scratch(problem, deterministic=None):
    """The float32 ``delta`` (H, total_q), written by the first launch before it is read;
    the atomic variant adds the float32 ``dq_accum`` (total_q, H, D), zeroed by that launch."""
    from . import Scratch
    out = (Scratch("delta", (problem.num_heads, max(problem.total_q, 1)), np.float32),)
    if not deterministic_of(problem, deterministic):
        out += (Scratch("dq_accum", (max(problem.total_q, 1), problem.num_heads,
                                     problem.head_size), np.float32),)
    return out




def delta_plans(problem, kernel, arrays=DELTA_ARRAYS):
    """The preprocess launch (``kernel``: delta, or delta + ``dq_accum = 0``), one warp per
    (row, head); none when there is no query."""
    from . import Plan
    items = problem.total_q * problem.num_heads
    if not items:
        return ()
    return (Plan(kernel, (-(-items // DELTA_WARPS),), 32 * DELTA_WARPS, (_U32, _U32), (), 0,
                 arrays),)


def plan(problem, dkdv=None, dq=None, deterministic=None):
    """The three launches (delta, dK/dV, dQ); on a GPU this compiles the gradient kernels
    for their signatures and raises their dynamic shared-memory limit first. ``dkdv`` =
    ``(keys per block, queries per tile, stages)`` and ``dq`` = ``(queries per block, keys
    per tile, stages)`` override :func:`bwd_tc_layout.dkdv_config` / ``dq_config`` (variant
    timing; the keys per block of dK/dV and queries per block of dQ are fixed by the warps).
    ``deterministic=False`` (or ``problem.deterministic`` False): the atomic-dQ launches
    (delta + zero, dK/dV + dQ atomics, convert; ``dq`` is then unused)."""
    if not deterministic_of(problem, deterministic):
        return _atomic_plan(problem, dkdv)
    from . import Plan
    d, bf = problem.head_size, _is_bf16(problem.dtype)
    cfg_kv = dkdv_config(d) if dkdv is None else tuple(dkdv)
    cfg_q = dq_config(d) if dq is None else tuple(dq)
    dl = build_delta(d, bf)
    k_kv, k_q = build_dkdv(d, bf, *cfg_kv), build_dq(d, bf, *cfg_q)
    sh_kv, sh_q = dkdv_shared(d, *cfg_kv), dq_shared(d, *cfg_q)
    if not problem.on_simulator:
        opt_in_shared(k_kv, dkdv_signature(), sh_kv)
        opt_in_shared(k_q, dq_signature(), sh_q)
    scalars = _scalars(problem)
    plans = list(delta_plans(problem, dl))
    grid_kv = (max(-(-problem.max_seqlen_k // cfg_kv[0]), 1), problem.num_kv_heads,
               problem.batch)
    plans.append(Plan(k_kv, grid_kv, 32 * WARPS, DKDV_VIEWS, scalars, sh_kv, DKDV_ARRAYS))
    grid_q = (max(-(-problem.max_seqlen_q // cfg_q[0]), 1), problem.num_heads, problem.batch)
    plans.append(Plan(k_q, grid_q, 32 * WARPS, DQ_VIEWS, scalars, sh_q, DQ_ARRAYS))
    return tuple(plans)


def _scalars(problem):
    return (np.float32(problem.softmax_scale * LOG2E), np.float32(problem.softmax_scale),
            np.int32(problem.window_left), np.int32(problem.window_right),
            bool(problem.lse_batched))


def _atomic_plan(problem, dkdv=None):
    """delta + ``dq_accum = 0``; dK/dV with ``dq_accum += dS K`` (red.global.add.f32);
    ``dq = dq_accum * scale``. The first and last launch are skipped when there is no query."""
    from . import Plan
    d, bf = problem.head_size, _is_bf16(problem.dtype)
    cfg_kv = dkdv_config(d) if dkdv is None else tuple(dkdv)
    k_kv = build_dkdv(d, bf, *cfg_kv, atomic=True)
    sh_kv = dkdv_atomic_shared(d, *cfg_kv)
    if not problem.on_simulator:
        opt_in_shared(k_kv, dkdv_atomic_signature(), sh_kv)
    items = problem.total_q * problem.num_heads
    plans = list(delta_plans(problem, build_delta_zero(d, bf), DELTA_ZERO_ARRAYS))
    grid_kv = (max(-(-problem.max_seqlen_k // cfg_kv[0]), 1), problem.num_kv_heads,
               problem.batch)
    plans.append(Plan(k_kv, grid_kv, 32 * WARPS, DKDV_VIEWS, _scalars(problem), sh_kv,
                      DKDV_ATOMIC_ARRAYS))
    if items:
        pairs = items * (d // 2)
        plans.append(Plan(build_convert(d, bf), (-(-pairs // CONVERT_THREADS),),
                          CONVERT_THREADS, CONVERT_VIEWS,
                          (np.float32(problem.softmax_scale),), 0, CONVERT_ARRAYS))
    return tuple(plans)
