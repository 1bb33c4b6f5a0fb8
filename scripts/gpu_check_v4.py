"""One GPU call for kernel v4 (flash_tc): correctness sweep, ptxas resources, first call from
the disk cache, and time against FlexAttention on the log's grid. Launches the kernel module
directly (not through the public call), so it measures the kernel alone.

    python3 scripts/gpu_check_v4.py            # writes $OUT/v4_check.json, prints a table

Variants (``VARIANTS``, Config fields given to ``v4.config_for``) are timed next to the default.
(Run 8's ``rpw32`` variants, 32 query rows per warp, were deleted with ``v4_two_tile`` after
they measured no better: ``git show 857efbf:scripts/gpu_check_v4.py``.)
"""
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
from numba import cuda

from attn_numba.kernels import FWD_ARRAYS, launch_plans, named
from attn_numba.kernels import v4_flash_tc as v4
from attn_numba.problem import Problem
from attn_numba.reference import mha_varlen_fwd_ref

OUT = os.environ.get("OUT", "/tmp")
DEV = torch.device("cuda")
TDT = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def np_dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def as_numba(t, view=None):
    """Numba view of a contiguous torch tensor (16-bit data as uint16 when view='u16')."""
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    a = cuda.as_cuda_array(t)
    return a.view(np.uint16) if a.dtype == np.int16 else a


def run_varlen(q, k, v, cu_q, cu_k, left, right, causal, dtype_name, stream=0, variant=None):
    """q (tq, H, D) torch, k/v (tk, Hkv, D); returns out torch, lse torch (H, tq)."""
    lq, lk = np.diff(cu_q), np.diff(cu_k)
    tq, H, D = q.shape
    prob = Problem(batch=len(lq), total_q=tq, total_k=k.shape[0], max_seqlen_q=int(lq.max()),
                   max_seqlen_k=int(lk.max()), num_heads=H, num_kv_heads=k.shape[1],
                   head_size=D, dtype=np_dtype(dtype_name), softmax_scale=1 / math.sqrt(D),
                   window_left=left, window_right=(0 if causal else right), causal=causal,
                   lse_batched=False, on_simulator=False)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((1, H, tq), float("nan"), device=DEV)
    dcq = cuda.to_device(cu_q.astype(np.int32))
    dck = cuda.to_device(cu_k.astype(np.int32))
    launch_plans(v4.plan(prob, v4.config_for(prob, **(variant or {}))),
                 named(FWD_ARRAYS, as_numba(q), as_numba(k), as_numba(v), as_numba(out),
                       cuda.as_cuda_array(lse), dcq, dck), cuda.default_stream())
    cuda.synchronize()
    return out, lse[0]


def check(rng, dtype_name, D, lens_q, lens_k, H, Hkv, window, causal, variant=None):
    cu_q = np.concatenate([[0], np.cumsum(lens_q)])
    cu_k = np.concatenate([[0], np.cumsum(lens_k)])
    q = torch.randn(int(cu_q[-1]), H, D, device=DEV).to(TDT[dtype_name])
    k = torch.randn(int(cu_k[-1]), Hkv, D, device=DEV).to(TDT[dtype_name])
    v = torch.randn(int(cu_k[-1]), Hkv, D, device=DEV).to(TDT[dtype_name])
    out, lse = run_varlen(q, k, v, cu_q, cu_k, window[0], window[1], causal, dtype_name,
                          variant=variant)
    f64 = lambda t: t.double().cpu().numpy()  # noqa: E731
    ref, ref_lse = mha_varlen_fwd_ref(f64(q), f64(k), f64(v), cu_q.astype(np.int32),
                                      cu_k.astype(np.int32), causal=causal, window_size=window)
    o = f64(out)
    lse_h = lse.double().cpu().numpy()
    err = float(np.nanmax(np.abs(o - ref))) if o.size else 0.0
    nan = bool(np.isnan(o).any() or np.isnan(lse_h).any())
    fin = np.isfinite(ref_lse)
    lse_err = float(np.max(np.abs(lse_h[fin] - ref_lse[fin]))) if fin.any() else 0.0
    lse_inf_ok = bool(np.all(np.isneginf(lse_h[~fin]))) and bool(np.all(o.transpose(1, 0, 2)[~fin] == 0))
    tol = 1.5e-2 if dtype_name == "float16" else 6e-2
    ok = (not nan) and err < tol and lse_err < 2e-3 and lse_inf_ok
    return dict(dtype=dtype_name, D=D, lens_q=list(map(int, lens_q)), lens_k=list(map(int, lens_k)),
                H=H, Hkv=Hkv, window=list(window), causal=causal, max_err=err, lse_err=lse_err,
                nan=nan, empty_rows_ok=lse_inf_ok, ok=bool(ok))


def correctness(variant=None):
    """The sweep (210 cases); with a ``variant`` (launch keywords), a subset that compiles
    few specialisations: D 64, 72 and 128 only, every third single-sequence D = 128 case."""
    rng = np.random.default_rng(0)
    cases = []
    for dt in ("float16", "bfloat16"):
        for D in (8, 32, 64, 72, 96, 128, 136, 200, 256):
            cases.append((dt, D, [97], [97], 8, 2, (-1, -1), False))
        for (lq, lk) in (([1], [1]), ([97], [97]), ([1025], [1025]), ([97], [300]), ([300], [97])):
            for H, Hkv in ((8, 8), (8, 2), (8, 1)):
                for w, c in (((-1, -1), False), ((0, 0), False), ((64, 0), False),
                             ((-1, -1), True), ((128, 128), False), ((128, 128), True)):
                    cases.append((dt, 128, lq, lk, H, Hkv, w, c))
        for D in (64, 128, 256):
            cases.append((dt, D, [0, 100, 0, 513, 7], [5, 100, 0, 400, 0], 8, 2, (32, 8), False))
            cases.append((dt, D, [0, 100, 0, 513, 7], [5, 100, 0, 400, 0], 8, 2, (-1, -1), True))
    if variant:
        cases = [c for i, c in enumerate(cases)
                 if c[1] in (64, 72, 128) and (i % 3 == 0 or c[1] != 128 or len(c[2]) > 1)]
    rows = [check(rng, *c, variant=variant) for c in cases]
    return rows


def resources():
    out = []
    for D in (64, 128, 256):
        for dt in ("float16", "bfloat16"):
            kern = v4.build(v4.Config(D, dt, 4, stages=v4.stages(D)))
            for sig, ovl in kern.overloads.items():
                f = ovl._codelibrary.get_cufunc()
                out.append(dict(D=D, dtype=dt, regs=f.attrs.regs, local=f.attrs.local,
                                shared=f.attrs.shared))
    return out


def first_call():
    code = ("import time,math,torch;t0=time.perf_counter();torch.zeros(1,device='cuda');"
            "t1=time.perf_counter();import sys;sys.path.insert(0,'scripts');import gpu_check_v4 as g;"
            "import numpy as np;q=torch.randn(64,8,128,device='cuda').half();"
            "t2=time.perf_counter();g.run_varlen(q,q[:,:2].contiguous(),q[:,:2].contiguous(),np.array([0,64]),"
            "np.array([0,64]),-1,-1,False,'float16');t3=time.perf_counter();"
            "print('FIRST',t1-t0,t3-t2)")
    env = dict(os.environ, NUMBA_CACHE_DIR="/tmp/nbcache_first")
    res = []
    for i in range(3):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        line = [x for x in p.stdout.splitlines() if x.startswith("FIRST")]
        res.append(dict(run=i, ctx_s=float(line[0].split()[1]), first_call_s=float(line[0].split()[2]))
                   if line else dict(run=i, error=p.stderr[-800:]))
    return res


def _queued_ms(fn, n=20, sleep_cycles=int(2e7)):
    """GPU time per call of ``fn``, host launch cost hidden: the stream is held by a
    ``torch.cuda._sleep`` while ``n`` calls are queued behind it, between two events. Median
    of 7 such batches. Inputs stay resident (warm L2 where they fit)."""
    times = []
    for _ in range(7):
        torch.cuda._sleep(sleep_cycles)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(n):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / n)
    return float(np.median(times))


VARIANTS = {"default": {}, "nocap": dict(blocks_per_sm=0), "cap2": dict(blocks_per_sm=2),
            "cap1": dict(blocks_per_sm=1)}


def timing(variants=VARIANTS, sizes=(512, 1024, 2048, 4096, 8192)):
    import torch._dynamo
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.cache_size_limit = 64
    flex = torch.compile(flex_attention, dynamic=False)
    rows = []
    H, Hkv, D = 32, 8, 128
    for S in sizes:
        for causal in (False, True):
            left, right = 128, (0 if causal else 128)
            q = torch.randn(S, H, D, device=DEV, dtype=torch.float16)
            k = torch.randn(S, Hkv, D, device=DEV, dtype=torch.float16)
            v = torch.randn(S, Hkv, D, device=DEV, dtype=torch.float16)
            prob = Problem(batch=1, total_q=S, total_k=S, max_seqlen_q=S, max_seqlen_k=S,
                           num_heads=H, num_kv_heads=Hkv, head_size=D, dtype=np.dtype(np.float16),
                           softmax_scale=1 / math.sqrt(D), window_left=left, window_right=right,
                           causal=causal, lse_batched=True, on_simulator=False)
            out = torch.empty_like(q)
            lse = torch.empty(1, H, S, device=DEV)
            cu = cuda.to_device(np.array([0, S], np.int32))
            args = (as_numba(q), as_numba(k), as_numba(v), as_numba(out), cuda.as_cuda_array(lse))
            stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
            qt, kt, vt = (x.unsqueeze(0).transpose(1, 2) for x in (q, k, v))
            mm = lambda b, h, qi, ki: (ki >= qi - left) & (ki <= qi + right)  # noqa: E731
            bm = create_block_mask(mm, None, None, S, S)
            ff = lambda: flex(qt, kt, vt, block_mask=bm, enable_gqa=True)  # noqa: E731
            ref = ff()
            t_flex = _queued_ms(ff)
            pairs = sum(min(S - 1, i + right) - max(0, i - left) + 1 for i in range(S))
            flops = 4 * pairs * H * D
            row = dict(S=S, causal=causal, flex_ms=t_flex)
            for name, kw in variants.items():
                fn = lambda kw=kw: launch_plans(  # noqa: E731
                    v4.plan(prob, v4.config_for(prob, **kw)), named(FWD_ARRAYS, *args, cu, cu),
                    stream)
                out.fill_(float("nan"))
                fn()
                diff = float((ref[0].transpose(0, 1) - out).abs().max())
                t = _queued_ms(fn)
                row[name] = dict(ms=t, ratio_to_flex=t / t_flex, tflops=flops / t / 1e9,
                                 max_diff_vs_flex=diff)
            rows.append(row)
    return rows


def main(argv):
    res = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
           "method": "kernel launched directly; GPU time per call with launches queued behind "
                     "torch.cuda._sleep (host cost hidden), median of 7 batches of 20, warm inputs"}
    t0 = time.time()
    if "--no-correctness" not in argv:
        res["correctness"] = correctness()
        bad = [r for r in res["correctness"] if not r["ok"]]
        print(f"correctness: {len(res['correctness']) - len(bad)}/{len(res['correctness'])} ok "
              f"({time.time() - t0:.0f} s)")
        for r in bad[:15]:
            print("  FAIL", r)
    res["resources"] = resources()
    print("resources", res["resources"])
    res["first_call"] = first_call()
    print("first call", res["first_call"])
    res["timing"] = timing()
    with open(os.path.join(OUT, "v4_check.json"), "w") as f:
        json.dump(res, f, indent=1)
    names = list(VARIANTS)
    print(f"{'S':>6} {'causal':>6} {'flex':>8} " + " ".join(f"{n:>16}" for n in names))
    for r in res["timing"]:
        cells = " ".join(f"{r[n]['ms']:8.4f} ({r[n]['ratio_to_flex']:4.2f})" for n in names)
        print(f"{r['S']:>6} {r['causal']!s:>6} {r['flex_ms']:8.4f} {cells}")


if __name__ == "__main__":
    main(sys.argv[1:])
