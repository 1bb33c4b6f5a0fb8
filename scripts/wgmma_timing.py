"""Stage c of the flash_wgmma GPU check: CUDA-event timing at 8192 tokens against flash_tc,
and the precompilation of every specialisation the check launches."""
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numba import cuda  # noqa: E402

from attn_numba.kernels import FWD_ARRAYS, launch_plans, named  # noqa: E402
from attn_numba.kernels import v5_flash_wgmma as v5  # noqa: E402
from attn_numba.kernels.config import heads_per_block  # noqa: E402
from attn_numba.problem import windowed_flops  # noqa: E402
from wgmma_check_common import RES, config, launch, log, problem_for, save  # noqa: E402
from wgmma_sweep import EXTRA_SWEEPS, GROUPS  # noqa: E402

#: head size -> (block_n, overlap, groups, heads per warpgroup) timed at 8192 tokens, fp16
#: (the timing stage takes one head size: ``--stage-args '{"v_swap": false, "head_size": 64}'``)
TIMED = {128: ((128, False, 1, 4), (64, False, 1, 4), (128, True, 1, 4), (64, True, 1, 4),
               (128, True, 2, 4), (64, True, 2, 4), (128, False, 2, 4), (64, True, 1, 1),
               (64, True, 2, 2)),
         64: ((128, False, 1, 4), (64, False, 1, 4), (256, False, 1, 4), (128, True, 1, 4))}


@cuda.jit
def _sleeper(n):
    for _ in range(n):
        cuda.nanosleep(1000)


def timing(v_swap, launch_ok=True, head_size=128):
    from attn_numba.kernels import v4_flash_tc as v4
    rng = np.random.default_rng(1)
    s, h, hkv, d = 8192, 32, 8, head_size
    q, k, v = (cuda.to_device(rng.standard_normal((s, n, d)).astype(np.float16))
               for n in (h, hkv, hkv))
    out = cuda.device_array((s, h, d), np.float16)
    lse = cuda.device_array((1, h, s), np.float32)
    cu = cuda.to_device(np.array([0, s], np.int32))
    res = {}
    # the log's two 8192 cases: window (128, 128), non-causal and causal (= (128, 0))
    for label, (left, right, causal) in (("window128", (128, 128, False)),
                                         ("window128_causal", (128, 0, True))):
        p = problem_for([s], [s], h, hkv, d, np.float16, left, right, causal)
        flops = windowed_flops([s], [s], h, d, left, right)
        runs = {f"flash_wgmma_bn{bn}{'_overlap' if ov else ''}{'_wg2' if wg > 1 else ''}"
                f"{f'_h{hb}' if hb != 4 else ''}":
                (lambda bn=bn, ov=ov, wg=wg, hb=hb: launch(
                    p, q, k, v, out, lse, cu, cu, 0, block_n=bn, v_swap=v_swap, overlap=ov,
                    groups=wg, heads=hb))
                for bn, ov, wg, hb in (TIMED.get(d, ()) if launch_ok else ())}
        runs["flash_tc"] = lambda: launch_plans(
            v4.plan(p), named(FWD_ARRAYS, q, k, v, out, lse, cu, cu), cuda.default_stream())
        for name, fn in runs.items():
            key = f"{label}/{name}"
            try:
                fn()
                cuda.synchronize()
                ts, host = [], []
                for _ in range(7):
                    # the stream is held by a ~10 ms sleeper kernel while the host enqueues
                    # the event pair and 10 launches, so the events time GPU work only
                    # (a Numba launch costs the host ~0.1-0.3 ms, comparable to the kernel)
                    _sleeper[1, 1](10000)
                    e0, e1 = cuda.event(), cuda.event()
                    h0 = time.perf_counter()
                    e0.record()
                    for _ in range(10):
                        fn()
                    e1.record()
                    host.append((time.perf_counter() - h0) / 10)
                    e1.synchronize()
                    ts.append(cuda.event_elapsed_time(e0, e1) / 1e3 / 10)
                med = float(np.median(ts))
                res[key] = dict(ms=med * 1e3, tflops=flops / med / 1e12,
                                host_ms_per_launch=float(np.median(host)) * 1e3)
            except Exception as exc:  # noqa: BLE001
                res[key] = dict(error=f"{type(exc).__name__}: {exc}"[:500])
            log("time", key, res[key])
    RES["timing_8192" + ("" if d == 128 else f"_d{d}")] = dict(
        device=str(getattr(cuda.get_current_device(), "name", "?")), runs=res,
        shape=f"batch 1, 8192 tokens, 32 heads / 8 kv heads, D={d}, fp16")
    save()


# --------------------------------------------------------------------------- precompile

def _specs():
    """(head, kind, heads, block_n, overlap, groups) of every kernel this script launches."""
    out = set()
    for (dt, d), gs in GROUPS.items():
        kind = "f16" if dt == "float16" else "bf16"
        for g in gs:
            out.add((d, kind, heads_per_block(g), v5.BLOCK_N[d], False, 1))
    for key, opts, specs in EXTRA_SWEEPS:
        for d, kind, hb in specs:
            out.add((d, kind, hb, v5.BLOCK_N[d], opts["overlap"], opts["groups"]))
    for bn, ov, wg, hb in TIMED[128]:  # the full run times head size 128 only
        out.add((128, "f16", hb, bn, ov, wg))
    return sorted(out)


def _compile_one(spec):
    t = time.time()
    try:
        d, kind, hb, bn, ov, wg = spec
        v5.build(config(d, kind, hb, bn, False, ov, wg)).compile(v5._signature())
        return spec, round(time.time() - t, 1), None
    except Exception as exc:  # noqa: BLE001
        return spec, round(time.time() - t, 1), f"{type(exc).__name__}: {exc}"[:300]


def precompile_async():
    """Compile every specialisation in worker processes (cache=True puts them on disk), so
    the main process mostly loads them; returns the pool's AsyncResult (or None)."""
    import multiprocessing as mp
    try:
        pool = mp.get_context("spawn").Pool(min(12, max(1, (os.cpu_count() or 2) - 2)))
        return pool, pool.map_async(_compile_one, _specs())
    except Exception:  # noqa: BLE001
        RES["precompile_error"] = traceback.format_exc()
        return None, None
