"""One GPU call for kernels v2 (tiled) and v3 (flash): check, ceiling, tile sweep, timings.

    python scripts/gpu_v2_v3.py --out $OUT/v2_v3_dev.json [--budget-s 240] [--reps 10]

Stages (each one appends to the JSON, so a run cut short still reports what it finished):

1. correctness of v2 and v3 against the float64 reference (attn_numba.testing) at two of the
   log's sizes and a few awkward shapes (GQA, sq != sk, windows, odd head size, fp32, varlen
   with empty sequences);
2. the float32 matmul ceiling with TF32 off (torch), CUDA events, median;
3. a sweep of v3 tile configurations at head_size 128, each checked against the reference at
   seq_len 2048 before it is timed at 2048 and 8192 (causal 0 and 1);
4. v1/v2/v3 (default tiles) over the log's grid: 1 sequence, seq_len 512..8192, 32 query
   heads, 8 KV heads, head_size 128, window (128, 128), causal 0/1, float16;
5. registers, local (spill) memory and shared memory of every compiled specialisation.

Timing: the kernel's ``launch`` on resident device arrays, CUDA events around one launch with
the stream held by ``torch.cuda._sleep`` before the start event (so host-side launch overhead
is not in the number), warm-up first, median of the repeats.
"""
import argparse
import datetime
import importlib.metadata as md
import json
import math
import os
import statistics
import sys
import time
import traceback

import numpy as np
from numba import cuda

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attn_numba import kernels  # noqa: E402
from attn_numba.kernels import v2_tiled as v2  # noqa: E402
from attn_numba.kernels import v3_flash as v3  # noqa: E402
from attn_numba.problem import Problem, min_bytes, windowed_flops  # noqa: E402
from attn_numba import mha_fwd, mha_varlen_fwd  # noqa: E402
from attn_numba.reference import mha_fwd_ref, mha_varlen_fwd_ref  # noqa: E402
from attn_numba.testing import (compare, poisoned_outputs, random_qkv,  # noqa: E402
                                random_varlen)
from _timing import time_launch  # noqa: E402  (scripts/_timing.py)

T0 = time.perf_counter()
RESULT = {}
OUT_PATH = None
H, HKV, D, WIN = 32, 8, 128, 128
GRID = (512, 1024, 2048, 4096, 8192)

#: v3 configurations tried at head_size 128: (tiles (BM, BN, NT, TM, TN, DK, BK), min blocks
#: per SM for the launch bounds, 0 = none)
T = v3.Tiles
SWEEP = [
    (T(64, 64, 128, 8, 4, 16, 16), 0),
    (T(64, 64, 256, 4, 4, 16, 16), 2),
    (T(64, 64, 256, 4, 4, 16, 16), 0),
    (T(64, 32, 256, 4, 2, 16, 16), 2),
    (T(64, 32, 256, 4, 2, 32, 16), 2),
    (T(128, 32, 256, 8, 2, 16, 16), 0),
    (T(32, 32, 64, 4, 4, 16, 16), 4),
]


def elapsed():
    return time.perf_counter() - T0


def save():
    if OUT_PATH:
        with open(OUT_PATH, "w") as f:
            json.dump(RESULT, f, indent=1, default=str)


def log(*a):
    print(f"[{elapsed():6.1f}s]", *a, flush=True)


def version(pkg):
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None




# --------------------------------------------------------------------------- 1. correctness

def _check_both(rows, label, run, ref_fn, dtype):
    """Compare v2 and v3 with one float64 reference (computed once for both)."""
    ref, ref_lse = ref_fn(None)
    low, _ = ref_fn(np.dtype(dtype))
    low = low.astype(dtype).astype(np.float64)
    for kernel in ("tiled", "flash"):
        row = dict(kernel=kernel, case=label)
        try:
            with poisoned_outputs():
                out, lse = run(kernel)
            c = compare(out, lse, ref, ref_lse, low, dtype)
            row.update(ok=bool(c.ok), max_err=c.max_err, tol=c.tol, lse_err=c.lse_max_err)
        except Exception as exc:
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:800])
        rows.append(row)
        log(kernel, label, "ok" if row["ok"] else f"FAIL {row.get('error', row)}")


def check_stage():
    rng = np.random.default_rng(2024)
    rows = []
    cases = [  # (b, sq, sk, h, hkv, d, dtype, window, causal)
        (1, 512, 512, H, HKV, D, np.float16, (WIN, WIN), False),
        (1, 512, 512, H, HKV, D, np.float16, (WIN, WIN), True),
        (1, 2048, 2048, H, HKV, D, np.float16, (WIN, WIN), False),
        (1, 2048, 2048, H, HKV, D, np.float16, (WIN, WIN), True),
        (2, 97, 1025, 8, 1, 128, np.float16, (-1, -1), False),
        (1, 1025, 97, 8, 8, 64, np.float16, (-1, -1), True),
        (3, 1, 1, 4, 1, 128, np.float16, (0, 0), False),
        (1, 1025, 1025, 8, 2, 256, np.float16, (128, 0), False),
        (1, 513, 700, 4, 4, 80, np.float16, (0, 0), True),
        (1, 600, 600, 8, 2, 128, np.float32, (128, 128), True),
        (1, 333, 333, 16, 2, 128, np.float16, (17, 33), False),
        (1, 700, 300, 6, 3, 40, np.float16, (50, -1), False),
    ]
    for case in cases:
        b, sq, sk, h, hkv, d, dt, win, causal = case
        label = [b, sq, sk, h, hkv, d, np.dtype(dt).name, list(win), causal]
        q, k, v = random_qkv(rng, b, sq, sk, h, hkv, d, dt)
        kw = dict(causal=causal, window_size=win)
        _check_both(rows, label,
                    lambda kernel: mha_fwd(q, k, v, kernel=kernel, return_lse=True, **kw),
                    lambda p: mha_fwd_ref(q, k, v, p_dtype=p, **kw), dt)
        RESULT["checks"] = rows
        save()
    q, k, v, cu_q, cu_k = random_varlen(rng, [300, 0, 1025, 1, 64], [280, 17, 1025, 0, 700],
                                        8, 2, 128, np.float16)
    for kw in (dict(causal=True, window_size=(128, 128)), dict()):
        _check_both(rows, f"varlen [300,0,1025,1,64]/[280,17,1025,0,700] {kw}",
                    lambda kernel: mha_varlen_fwd(q, k, v, cu_q, cu_k, kernel=kernel,
                                                  return_lse=True, **kw),
                    lambda p: mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, p_dtype=p, **kw),
                    np.float16)
    RESULT["checks"] = rows
    save()


# --------------------------------------------------------------------------- 2. ceiling

def ceiling_stage(torch):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.float32)
    b = torch.randn(n, n, device="cuda", dtype=torch.float32)
    c = torch.empty(n, n, device="cuda", dtype=torch.float32)
    t, ts = time_launch(torch, lambda: torch.matmul(a, b, out=c), reps=10, warm=3)
    RESULT["fp32_matmul_ceiling"] = dict(n=n, allow_tf32=False, time_s=t, times_s=ts,
                                         tflops=2 * n ** 3 / t / 1e12)
    log(f"fp32 matmul (TF32 off) {n}^3: {t * 1e3:.2f} ms = {2 * n ** 3 / t / 1e12:.1f} TFLOP/s")
    save()
    del a, b, c


# --------------------------------------------------------------------------- helpers

def log_inputs(torch, S):
    g = torch.Generator(device="cuda").manual_seed(S)
    q = torch.randn(S, H, D, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(S, HKV, D, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn(S, HKV, D, device="cuda", dtype=torch.float16, generator=g)
    out = torch.empty_like(q)
    lse = torch.empty(1, H, S, device="cuda", dtype=torch.float32)
    cu = torch.tensor([0, S], device="cuda", dtype=torch.int32)
    return (q, k, v, out, lse, cu), tuple(cuda.as_cuda_array(x) for x in (q, k, v, out, lse, cu))


def log_problem(S, causal):
    left, right = WIN, (0 if causal else WIN)
    return Problem(batch=1, total_q=S, total_k=S, max_seqlen_q=S, max_seqlen_k=S,
                   num_heads=H, num_kv_heads=HKV, head_size=D, dtype=np.dtype(np.float16),
                   softmax_scale=1 / math.sqrt(D), window_left=left, window_right=right,
                   causal=bool(causal), lse_batched=True, on_simulator=False)


def base_row(S, causal):
    left, right = WIN, (0 if causal else WIN)
    return dict(seq_len=S, causal=causal, window=[left, right],
                windowed_flops=windowed_flops([S], [S], H, D, left, right),
                min_bytes=min_bytes(S, S, H, HKV, D, 2))


# --------------------------------------------------------------------------- 3. sweep

def sweep_stage(torch, nstream, reps, budget):
    rows = []
    S_check = 2048
    (tq, tk, tv, tout, tlse, tcu), arrs = log_inputs(torch, S_check)
    qh, kh, vh = (x.cpu().numpy()[None] for x in (tq, tk, tv))
    refs = {}
    for causal in (0, 1):
        kw = dict(window_size=(WIN, 0 if causal else WIN))
        ref, ref_lse = mha_fwd_ref(qh, kh, vh, **kw)
        low, _ = mha_fwd_ref(qh, kh, vh, p_dtype=np.float16, **kw)
        refs[causal] = (ref, ref_lse, low.astype(np.float16).astype(np.float64))
    inputs = {S: log_inputs(torch, S) for S in (2048, 8192)}
    for tiles, mb in SWEEP:
        if elapsed() > budget:
            log("sweep: out of time budget, stopping")
            break
        row = dict(tiles=tiles.asdict(), min_blocks=mb, shared_bytes=v3.shared_bytes(D, tiles))
        try:
            t0 = time.perf_counter()
            dq, dk, dv, dout, dlse, dcu = arrs
            for causal in (0, 1):
                p = log_problem(S_check, causal)
                v3.launch(p, dq, dk, dv, dout, dlse, dcu, dcu, nstream, tiles=tiles,
                          min_blocks=mb)
                torch.cuda.synchronize()
                if causal == 0:
                    row["first_call_s"] = time.perf_counter() - t0
                ref, ref_lse, low = refs[causal]
                c = compare(tout.cpu().numpy()[None], tlse.cpu().numpy(), ref, ref_lse, low,
                            np.float16)
                row[f"check_c{causal}"] = dict(ok=c.ok, max_err=c.max_err, tol=c.tol)
            kern = v3.build(D, tiles, v3.stacked_heads(H // HKV, tiles), False, mb, True)
            row.update(resources(kern))
            for S, (_, (dq, dk, dv, dout, dlse, dcu)) in inputs.items():
                for causal in (0, 1):
                    p = log_problem(S, causal)
                    t, _ = time_launch(torch, lambda: v3.launch(
                        p, dq, dk, dv, dout, dlse, dcu, dcu, nstream, tiles=tiles,
                        min_blocks=mb), reps)
                    f = base_row(S, causal)["windowed_flops"]
                    row[f"t_{S}_c{causal}"] = t
                    row[f"tflops_{S}_c{causal}"] = f / t / 1e12
            log("sweep", tuple(tiles), mb, {k: (round(v, 6) if isinstance(v, float) else v)
                                        for k, v in row.items() if k.startswith(("t_", "regs"))},
                "check", row["check_c0"]["ok"], row["check_c1"]["ok"])
        except Exception as exc:
            row.update(error=f"{type(exc).__name__}: {exc}"[:1500])
            log("sweep", tuple(tiles), mb, "ERROR", row["error"][:300])
        rows.append(row)
        RESULT["v3_sweep"] = rows
        save()
    good = [r for r in rows if "error" not in r and r["check_c0"]["ok"] and r["check_c1"]["ok"]]
    if good:
        score = lambda r: math.exp(statistics.mean(  # noqa: E731  geometric mean of times
            math.log(r[f"t_{S}_c{c}"]) for S in (2048, 8192) for c in (0, 1)))
        best = min(good, key=score)
        RESULT["v3_sweep_best"] = dict(tiles=best["tiles"], min_blocks=best["min_blocks"],
                                       geo_mean_time_s=score(best))
        save()
        return v3.Tiles(**best["tiles"]), best["min_blocks"]
    return None


def resources(kern):
    out = {}
    for name, fn in (("regs_per_thread", kern.get_regs_per_thread),
                     ("local_bytes_per_thread", kern.get_local_mem_per_thread),
                     ("shared_bytes_per_block", kern.get_shared_mem_per_block)):
        try:
            val = fn()
            out[name] = sorted(set(val.values())) if isinstance(val, dict) else val
        except Exception as exc:  # noqa: BLE001
            out[name] = f"n/a ({type(exc).__name__})"
    return out


# --------------------------------------------------------------------------- 4. grid

def grid_stage(torch, nstream, reps, best_tiles):
    rows = []
    mods = [("naive", kernels.get("naive"), {}), ("tiled", v2, {}), ("flash", v3, {})]
    default = (tuple(v3.GPU_CONFIG[128][0]), v3.GPU_CONFIG[128][1])
    if best_tiles is not None and (tuple(best_tiles[0]), best_tiles[1]) != default:
        mods.append(("flash_best_sweep", v3, dict(tiles=best_tiles[0], min_blocks=best_tiles[1])))
    for S in GRID:
        _, (dq, dk, dv, dout, dlse, dcu) = log_inputs(torch, S)
        for causal in (0, 1):
            p = log_problem(S, causal)
            for name, mod, kw in mods:
                row = dict(base_row(S, causal), kernel=name)
                try:
                    r = reps if name != "naive" else max(3, reps // 3)
                    t, ts = time_launch(torch, lambda: mod.launch(
                        p, dq, dk, dv, dout, dlse, dcu, dcu, nstream, **kw), r,
                        warm=1 if name == "naive" else 2)
                    row.update(time_s=t, times_s=ts, tflops=row["windowed_flops"] / t / 1e12,
                               gbps_min_bytes=row["min_bytes"] / t / 1e9)
                except Exception as exc:
                    row.update(error=f"{type(exc).__name__}: {exc}"[:800])
                rows.append(row)
                log(f"S={S} causal={causal} {name:>16}: " + (
                    f"{row['time_s'] * 1e3:9.3f} ms {row['tflops']:6.2f} TFLOP/s"
                    if "time_s" in row else row["error"][:200]))
            RESULT["timings"] = rows
            save()
    return rows


def resources_stage():
    res = []
    for label, mod in (("naive", kernels.get("naive")), ("tiled", v2), ("flash", v3)):
        for name, fn in mod.KERNEL_FUNCS.items():
            if not fn.overloads:
                continue
            res.append(dict(kernel=label, func=name, **resources(fn)))
    for D_ in (64, 128, 256):   # what the checks and the grid compiled (gh = 1, 2, 4, 8)
        t, mb = v3.GPU_CONFIG[D_]
        for gh in (1, 2, 4, 8):
            fn = v3.build(D_, t, gh, False, mb, True)
            if fn.overloads:
                res.append(dict(kernel="flash", func=f"default D={D_} gh={gh} {tuple(t)}",
                                **resources(fn)))
    for tiles, mb in SWEEP:
        fn = v3.build(D, tiles, v3.stacked_heads(H // HKV, tiles), False, mb, True)
        if fn.overloads:
            res.append(dict(kernel="flash", func=f"sweep {tuple(tiles)} min_blocks={mb}",
                            **resources(fn)))
    RESULT["resources"] = res
    save()
    for r in res:
        log(r)


# --------------------------------------------------------------------------- main

def main():
    global OUT_PATH
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=200.0,
                    help="stop the tile sweep after this many seconds of wall time")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true")
    a = ap.parse_args()
    OUT_PATH = a.out
    import torch

    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    RESULT.update(device=name, cc=list(dev.compute_capability),
                  sms=dev.MULTIPROCESSOR_COUNT,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  versions=dict(python=sys.version.split()[0], numba=version("numba"),
                                numba_cuda=version("numba-cuda"), numpy=np.__version__,
                                torch=torch.__version__, cuda_runtime=torch.version.cuda),
                  config=dict(num_seqs=1, num_heads=H, num_kv_heads=HKV, head_size=D,
                              window=[WIN, WIN], dtype="float16", reps=a.reps),
                  default_tiles={str(k): dict(t.asdict(), min_blocks=mb)
                                 for k, (t, mb) in v3.GPU_CONFIG.items()},
                  method="kernel launch on resident device arrays; CUDA events; stream held by "
                         "torch.cuda._sleep before the start event; warm-up; median")
    save()
    ts = torch.cuda.Stream()
    torch.cuda.set_stream(ts)
    nstream = cuda.external_stream(ts.cuda_stream)
    stages = []
    if not a.skip_checks:
        stages.append(("checks", lambda: check_stage()))
    stages.append(("ceiling", lambda: ceiling_stage(torch)))
    best = [None]
    if not a.skip_sweep:
        stages.append(("sweep", lambda: best.__setitem__(0, sweep_stage(
            torch, nstream, a.reps, a.budget_s))))
    stages.append(("grid", lambda: grid_stage(torch, nstream, a.reps, best[0])))
    stages.append(("resources", resources_stage))
    for label, fn in stages:
        try:
            fn()
        except Exception:
            RESULT.setdefault("stage_errors", {})[label] = traceback.format_exc()[-3000:]
            log(f"stage {label} failed:\n" + traceback.format_exc()[-2000:])
            save()
    RESULT["wall_s"] = elapsed()
    save()

    # ---- short table
    ceil = RESULT.get("fp32_matmul_ceiling", {}).get("tflops")
    print("\nfp32 matmul ceiling (TF32 off):", f"{ceil:.1f} TFLOP/s" if ceil else "n/a")
    by = {}
    for r in RESULT.get("timings", []):
        if "time_s" in r:
            by[(r["kernel"], r["seq_len"], r["causal"])] = r
    names = sorted({k[0] for k in by}, key=["naive", "tiled", "flash", "flash_best_sweep"].index)
    print(f"{'S':>5} {'c':>1} " + " ".join(f"{n:>22}" for n in names))
    for S in GRID:
        for c in (0, 1):
            cells = []
            for n in names:
                r = by.get((n, S, c))
                cells.append(f"{r['time_s'] * 1e3:9.3f}ms {r['tflops']:5.1f}TF" if r else " " * 22)
            print(f"{S:>5} {c:>1} " + " ".join(f"{x:>22}" for x in cells))
    fails = [r for r in RESULT.get("checks", []) if not r["ok"]]
    print("checks:", len(RESULT.get("checks", [])) - len(fails), "ok,", len(fails), "failed")
    if "v3_sweep_best" in RESULT:
        print("best v3 tiles:", RESULT["v3_sweep_best"])
    print(f"wall {elapsed():.0f} s")


if __name__ == "__main__":
    main()
