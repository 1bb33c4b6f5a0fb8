"""One device call: time launch-bounds / tile variants of v3 (flash) and v4 (flash_tc) side by
side at the log's shapes, each checked against the default kernel's (already validated)
output. Nothing is changed in the package by this script.

    python3 scripts/gpu_variants.py OUT.json

Timing: a ~0.5 ms torch.cuda._sleep on the (shared legacy default) stream before the start
event hides the host launch cost; CUDA events around one launch; median of 20.
"""
import json
import statistics
import sys
import time

import numpy as np
import torch
from numba import cuda

import attn_numba
from attn_numba.kernels import v3_flash as v3
from attn_numba.kernels import v4_tensor_core as v4
from attn_numba.problem import Problem, windowed_flops
from attn_numba.testing import random_qkv

T = v3.Tiles
V3 = [("default", dict()),
      ("64x64/256t/mb2", dict(tiles=T(64, 64, 256, 4, 4, 16, 16), min_blocks=2)),
      ("64x64/256t", dict(tiles=T(64, 64, 256, 4, 4, 16, 16), min_blocks=0)),
      ("64x32/256t/mb2", dict(tiles=T(64, 32, 256, 4, 2, 16, 16), min_blocks=2)),
      ("64x64/128t/mb3", dict(tiles=T(64, 64, 128, 8, 4, 16, 16), min_blocks=3)),
      ("128x32/256t", dict(tiles=T(128, 32, 256, 8, 2, 16, 16), min_blocks=0))]
V4 = [("default", dict()),
      ("mb3", dict(min_blocks=3)),
      ("mb3/noprefetch", dict(min_blocks=3, prefetch=False)),
      ("mb4/noprefetch", dict(min_blocks=4, prefetch=False)),
      ("noprefetch", dict(prefetch=False))]


def problem(s, causal):
    left, right = attn_numba.normalize_window((128, 128), causal)
    return Problem(batch=1, total_q=s, total_k=s, max_seqlen_q=s, max_seqlen_k=s, num_heads=32,
                   num_kv_heads=8, head_size=128, dtype=np.dtype(np.float16),
                   softmax_scale=128 ** -0.5, window_left=left, window_right=right,
                   causal=causal, lse_batched=True, on_simulator=False)


def main(path):
    rng = np.random.default_rng(0)
    rows, t0 = [], time.perf_counter()
    for s in (512, 2048, 8192):
        q, k, v = (cuda.to_device(x).reshape(s, x.shape[2], 128) for x in
                   random_qkv(rng, 1, s, s, 32, 8, 128, np.float16))
        cu = cuda.to_device(np.array([0, s], np.int32))
        for causal in (False, True):
            p = problem(s, causal)
            flops = windowed_flops([s], [s], 32, 128, p.window_left, p.window_right)
            for mod, variants in ((v3, V3), (v4, V4)):
                ref = None
                for name, kw in variants:
                    out = cuda.device_array((s, 32, 128), np.float16)
                    lse = cuda.device_array((1, 32, s), np.float32)
                    row = dict(kernel=mod.NAME, variant=name, seq_len=s, causal=int(causal))
                    try:
                        mod.launch(p, q, k, v, out, lse, cu, cu, 0, **kw)
                        cuda.synchronize()
                        o = out.copy_to_host().astype(np.float32)
                        if ref is None:
                            ref = o
                        row["max_diff_vs_default"] = float(np.max(np.abs(o - ref)))
                        row["finite"] = bool(np.isfinite(o).all())
                        times = []
                        for _ in range(20):
                            torch.cuda._sleep(1_000_000)
                            a, b = cuda.event(), cuda.event()
                            a.record()
                            mod.launch(p, q, k, v, out, lse, cu, cu, 0, **kw)
                            b.record()
                            b.synchronize()
                            times.append(cuda.event_elapsed_time(a, b) / 1e3)
                        row["time_s"] = statistics.median(times)
                        row["tflops"] = flops / row["time_s"] / 1e12
                    except Exception as exc:  # noqa: BLE001 - a variant may not build
                        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    meta = dict(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                seconds=time.perf_counter() - t0, rows=rows,
                method="torch.cuda._sleep(1e6) then CUDA events around one launch, median of 20")
    with open(path, "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
