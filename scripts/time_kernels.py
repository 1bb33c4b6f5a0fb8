"""Time kernels on the GPU at the log's sizes with CUDA events (warm-up, median of repeats).

    python scripts/time_kernels.py --kernels naive --seq-lens 512 8192 --out timings.json

A quick development timer; the benchmark of record is `attn-numba bench` (NVBench).
"""
import argparse
import datetime
import json
import statistics

import numpy as np
from numba import cuda

import attn_numba
from attn_numba.problem import windowed_flops
from attn_numba.testing import random_qkv


def time_call(fn, reps):
    fn()
    cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = cuda.event(), cuda.event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cuda.event_elapsed_time(start, end) / 1e3)
    return statistics.median(times), times


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kernels", nargs="*", default=attn_numba.available_kernels())
    p.add_argument("--seq-lens", nargs="*", type=int, default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--causal", nargs="*", type=int, default=[0, 1])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for s in a.seq_lens:
        q, k, v = (cuda.to_device(x) for x in random_qkv(rng, 1, s, s, 32, 8, 128, np.float16))
        for causal in a.causal:
            flops = windowed_flops([s], [s], 32, 128, 128, 0 if causal else 128)
            for kern in a.kernels:
                reps = max(3, a.reps // 3) if kern == "naive" and s >= 4096 else a.reps
                med, all_t = time_call(lambda: attn_numba.mha_fwd(
                    q, k, v, window_size=(128, 128), causal=bool(causal), kernel=kern), reps)
                rows.append(dict(kernel=kern, seq_len=s, causal=causal, time_s=med, times_s=all_t,
                                 tflops=flops / med / 1e12))
                print(f"{kern:<9} S={s:5d} causal={causal}  {med*1e3:10.3f} ms  "
                      f"{flops/med/1e12:7.2f} TFLOP/s (windowed)", flush=True)
    meta = dict(device=cuda.get_current_device().name.decode() if isinstance(
        cuda.get_current_device().name, bytes) else cuda.get_current_device().name,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        method="CUDA events around attn_numba.mha_fwd on device arrays, median", rows=rows)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
