"""Shared state of the flash_wgmma GPU check (scripts/gpu_wgmma_check.py): the results
dict and its file, the log, the problem and configuration helpers, the launch."""
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attn_numba.kernels import FWD_ARRAYS, launch_plans, named  # noqa: E402
from attn_numba.kernels import v5_flash_wgmma as v5  # noqa: E402
from attn_numba.problem import Problem  # noqa: E402

OUT = os.environ.get("OUT", ".")
RES = {}
T0 = time.time()


STAGE = None     # set in a stage subprocess (wgmma_check_common.STAGE): stage_<name>.json


def save():
    name = f"stage_{STAGE}.json" if STAGE else "wgmma_check.json"
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(RES, f, indent=1, default=str)


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def bf16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


def problem_for(seq_q, seq_k, h, hkv, d, dtype, left, right, causal):
    return Problem(batch=len(seq_q), total_q=int(sum(seq_q)), total_k=int(sum(seq_k)),
                   max_seqlen_q=int(max(seq_q)), max_seqlen_k=int(max(seq_k)), num_heads=h,
                   num_kv_heads=hkv, head_size=d, dtype=np.dtype(dtype),
                   softmax_scale=1.0 / math.sqrt(d), window_left=left, window_right=right,
                   causal=causal, lse_batched=False, on_simulator=False)


def config(d, kind, hb, bn, v_swap, ov, wg):
    """v5.Config of (head size, 'f16'/'bf16', heads per warpgroup, block_n, v_swap, overlap,
    groups), stages as the module's default."""
    return v5.Config(d, "float16" if kind == "f16" else "bfloat16", hb, bn,
                     v5.default_stages(d, bn, ov, wg), wg, ov, v_swap)


def launch(p, q, k, v, out, lse, cu_q, cu_k, stream=0, heads=None, **overrides):
    """flash_wgmma on ``p``'s device arrays through its plan; ``heads`` and ``overrides``
    (block_n, v_swap, overlap, stages, groups) as in v5.config_for."""
    cfg = v5.config_for(p, heads_per_block=heads, **overrides)
    launch_plans(v5.plan(p, cfg), named(FWD_ARRAYS, q, k, v, out, lse, cu_q, cu_k), stream)
