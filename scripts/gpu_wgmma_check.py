"""One GPU run for flash_wgmma (Hopper): wgmma microtest, correctness sweep, timing against
flash_tc, ptxas/SASS evidence. Needs an sm_90 device; everything lands in ``$OUT``.

    OUT=/some/dir python scripts/gpu_wgmma_check.py [--budget 150]

Stages (each appends to ``$OUT/wgmma_check.json``, so a run cut short still reports):

a. microtest: one warpgroup, ``wgmma`` SS (A, B K-major, 128B swizzle; K = 64 and 128) and
   RS (A from registers, B MN-major = transposed, N = 64/128/256) against NumPy, for both
   readings of the MN-major descriptor (LBO/SBO as CUTLASS, and swapped). The kernel
   then runs with the reading that passed.
b. flash_wgmma vs attn_numba.reference (float64) on fresh random inputs: fp16/bf16, head
   sizes 64/128/256, GQA 1/4/8, windows (-1,-1), (0,0), (128,128), causal, lengths 1, 97,
   1025, sq != sk, varlen with an empty sequence; outputs start as NaN. Tolerance: 2x the
   error of a reference that rounds P and O to the dtype, plus a floor.
c. CUDA-event timing at 8192 tokens (batch 1, 32 heads / 8 kv heads, D=128, fp16, window
   (128,128), non-causal and causal): flash_wgmma (key tiles 64 and 128, plain and
   overlapped loop) vs flash_tc, GPU time only (launches queued behind a sleeper kernel).
d. registers / spills (ptxas -v on the kernel's PTX) and ``cuobjdump -sass`` HGMMA count.
e. the first public call in a fresh process once the disk cache is warm.

Success: the last table says ``micro ok``, ``sweep N/N pass`` and shows HGMMA > 0.
"""
import os as _os
_os.environ.pop("ATTN_NUMBA_NO_WGMMA", None)  # this script checks flash_wgmma itself
import argparse
import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numba import cuda, float32, types, uint32  # noqa: E402

from attn_numba.kernels import ptx_sm90 as px  # noqa: E402
from attn_numba.kernels import v5_wgmma as v5  # noqa: E402
from attn_numba.kernels import wgmma_layout as wl  # noqa: E402
from attn_numba.problem import Problem, windowed_flops  # noqa: E402
from attn_numba.reference import mha_varlen_fwd_ref  # noqa: E402

OUT = os.environ.get("OUT", ".")
RES = {}
T0 = time.time()


STAGE = None     # set in a stage subprocess: its results go to stage_<name>.json


def save():
    name = f"stage_{STAGE}.json" if STAGE else "wgmma_check.json"
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(RES, f, indent=1, default=str)


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def bf16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


# --------------------------------------------------------------------------- a. microtest

@cuda.jit(device=True, inline=True)
def _desc(addr, hi):
    return types.uint64((addr >> 4) & 0x3FFF) | hi


_so = cuda.jit(device=True, inline=True)(wl.smem_offset)
_ks = cuda.jit(device=True, inline=True)(wl.kmajor_step_offset)
_ms = cuda.jit(device=True, inline=True)(wl.mnmajor_step_offset)
_arc = cuda.jit(device=True, inline=True)(wl.a_rc)
_crc = cuda.jit(device=True, inline=True)(wl.acc_rc)


@functools.lru_cache(maxsize=None)
def make_micro(n, kd, kind, a_regs, b_mn):
    """Kernel ``f(a, a32, b, out, b_hi)``: out (64 x n) = A (64 x kd) times B, one
    warpgroup. A from shared memory (K-major) or, with ``a_regs``, from registers. B
    K-major: b is (n, kd), out = A @ b.T; ``b_mn`` (MN-major, the transpose bit): b is
    (kd, n), out = A @ b. ``b_hi``: B's descriptor fields other than the address."""
    nd = n // 2
    b_rows = kd if b_mn else n
    b_cols = n if b_mn else kd
    a_hi = np.uint64(wl.desc_encode(0, 16, 1024))
    wg = px.wgmma_rs(n, kind, b_mn) if a_regs else px.wgmma_ss(n, kind, b_mn)
    fence = px.fence_acc(nd)
    wait0 = px.wgmma_wait(0)
    a_elems = 64 * kd
    b_elems = n * kd
    a_bytes = 64 * 128 * ((kd + 63) // 64)      # swizzled rows are 128 bytes even for kd < 64

    @cuda.jit
    def micro(a, a32, b, out, b_hi):
        tid = cuda.threadIdx.x
        warp = tid >> 5
        lane = tid & 31
        sh = cuda.shared.array(0, types.uint16)
        raw = px.smem_addr(sh)
        base = (raw + uint32(1023)) & uint32(0xFFFFFC00)
        pad = (base - raw) >> 1
        for i in range(tid, a_elems, 128):
            r = i // kd
            c = i - r * kd
            sh[pad + (_so(r, c, 64) >> 1)] = a[r, c]
        for i in range(tid, b_elems, 128):
            r = i // b_cols
            c = i - r * b_cols
            sh[pad + ((a_bytes + _so(r, c, b_rows)) >> 1)] = b[r, c]
        px.fence_proxy_async()
        cuda.syncthreads()
        acc = cuda.local.array(nd, float32)
        for i in range(nd):
            acc[i] = float32(0.0)
        sb = base + uint32(a_bytes)
        px.wgmma_fence()
        for kk in range(kd // 16):
            db = _desc(sb + uint32(_ms(kk) if b_mn else _ks(kk, n)), b_hi)
            if a_regs:
                r0, c0 = _arc(warp, lane, 0)
                r1, c1 = _arc(warp, lane, 1)
                r2, c2 = _arc(warp, lane, 2)
                r3, c3 = _arc(warp, lane, 3)
                wg(acc, a32[r0, (16 * kk + c0) >> 1], a32[r1, (16 * kk + c1) >> 1],
                   a32[r2, (16 * kk + c2) >> 1], a32[r3, (16 * kk + c3) >> 1], db, 1)
            else:
                wg(acc, _desc(base + uint32(_ks(kk, 64)), a_hi), db, 1)
        px.wgmma_commit()
        wait0()
        fence(acc)
        for i in range(nd):
            r, c = _crc(warp, lane, i)
            out[r, c] = acc[i]

    b_bytes = ((b_cols + 63) // 64) * b_rows * 128
    # + 32 KiB of slack: a wrong descriptor reading (the "swapped" one) must read garbage
    # inside the allocation, not fault and poison the context for the rest of the run
    return micro, a_bytes + b_bytes + 1024 + 32768


#: (op, n, k, kinds): SS = A and B in shared memory, RSK = A in registers and B K-major,
#: RS = A in registers and B MN-major (the P.V shape). n = 128 / k = 128 span two 64-column
#: blocks, which is where LBO (MN-major) and the k-step jump (K-major) are exercised.
MICRO = (("SS", 64, 64, ("f16", "bf16")), ("SS", 128, 128, ("f16",)),
         ("RSK", 64, 64, ("f16",)), ("RS", 64, 64, ("f16",)),
         ("RS", 128, 64, ("f16", "bf16")), ("RS", 256, 32, ("f16",)))


def microtest(rng, swapped=False):
    """Run the MICRO kernels against NumPy; ``swapped``: the MN-major rows with LBO and SBO
    swapped instead (only tried when the CUTLASS reading fails)."""
    rows = []
    for op, n, kd, kinds in MICRO:
        if swapped and op != "RS":
            continue
        a_regs, b_mn = op != "SS", op == "RS"
        for kind in kinds:
            dt = np.dtype(np.float16) if kind == "f16" else bf16()
            a = rng.standard_normal((64, kd)).astype(dt)
            b = rng.standard_normal((kd, n) if b_mn else (n, kd)).astype(dt)
            b64 = b.astype(np.float64)
            want = a.astype(np.float64) @ (b64 if b_mn else b64.T)
            variants = ({"cutlass": (kd * 128, 1024)} if b_mn else {"kmajor": (16, 1024)})
            if b_mn and swapped:
                variants = {"swapped": (1024, kd * 128)}
            for name, (lbo, sbo) in variants.items():
                row = dict(op=op, n=n, k=kd, kind=kind, desc=name)
                try:
                    fn, shared = make_micro(n, kd, kind, a_regs, b_mn)
                    out = cuda.to_device(np.full((64, n), np.nan, np.float32))
                    args = (cuda.to_device(a.view(np.uint16)),
                            cuda.to_device(np.ascontiguousarray(a).view(np.uint16).view(np.uint32)),
                            cuda.to_device(b.view(np.uint16)), out,
                            np.uint64(wl.desc_encode(0, lbo, sbo)))
                    if hasattr(fn, "typeof_pyval"):   # not on the simulator
                        v5.opt_in_shared(fn, tuple(fn.typeof_pyval(x) for x in args), shared)
                    fn[1, 128, 0, shared](*args)
                    got = out.copy_to_host()
                    err = float(np.max(np.abs(got - want)))
                    row.update(max_err=err, ok=bool(err < 1e-2 * max(1.0, np.abs(want).max())))
                except Exception as exc:  # noqa: BLE001
                    row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:500])
                log("micro", row)
                rows.append(row)
    RES["micro_swapped" if swapped else "micro"] = rows
    save()
    return rows


# --------------------------------------------------------------------------- b. sweep

def problem_for(seq_q, seq_k, h, hkv, d, dtype, left, right, causal):
    return Problem(batch=len(seq_q), total_q=int(sum(seq_q)), total_k=int(sum(seq_k)),
                   max_seqlen_q=int(max(seq_q)), max_seqlen_k=int(max(seq_k)), num_heads=h,
                   num_kv_heads=hkv, head_size=d, dtype=np.dtype(dtype),
                   softmax_scale=1.0 / math.sqrt(d), window_left=left, window_right=right,
                   causal=causal, lse_batched=False, on_simulator=False)


def run_v5(p, q, k, v, cu_q, cu_k, **kw):
    dq, dk, dv = (cuda.to_device(x.view(np.uint16)) for x in (q, k, v))
    out = cuda.to_device(np.full(q.shape, 0xFFFF, np.uint16))   # NaN in fp16 and bf16
    lse = cuda.to_device(np.full((1, p.num_heads, p.total_q), np.nan, np.float32))
    v5.launch(p, dq, dk, dv, out, lse, cuda.to_device(cu_q), cuda.to_device(cu_k), 0, **kw)
    cuda.synchronize()
    return out.copy_to_host().view(q.dtype), lse.copy_to_host()


def check_case(rng, dtype, d, group, seq_q, seq_k, window, causal, **kw):
    hkv = 2
    h = hkv * group
    cu_q = np.concatenate([[0], np.cumsum(seq_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(seq_k)]).astype(np.int32)
    q = rng.standard_normal((cu_q[-1], h, d)).astype(dtype)
    k = rng.standard_normal((cu_k[-1], hkv, d)).astype(dtype)
    v = rng.standard_normal((cu_k[-1], hkv, d)).astype(dtype)
    left, right = window
    if causal:
        right = 0
    p = problem_for(seq_q, seq_k, h, hkv, d, dtype, left, right, causal)
    out, lse = run_v5(p, q, k, v, cu_q, cu_k, **kw)
    kw = dict(causal=causal, window_size=window)
    ref, ref_lse = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, **kw)
    low, _ = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, p_dtype=dtype, **kw)
    low = low.astype(dtype).astype(np.float64)
    floor = 2e-3 if np.dtype(dtype) == np.float16 else 1.6e-2
    tol = 2 * float(np.max(np.abs(low - ref), initial=0)) + floor
    o = out.astype(np.float64)
    err = float(np.max(np.abs(o - ref), initial=0)) if np.all(np.isfinite(o)) else float("nan")
    ref_lse = np.asarray(ref_lse, np.float64).reshape(lse.shape)
    same_inf = np.array_equal(np.isneginf(lse), np.isneginf(ref_lse)) and not np.isnan(lse).any()
    fin = np.isfinite(ref_lse)
    lse_err = float(np.max(np.abs(lse[fin] - ref_lse[fin]), initial=0))
    ok = bool(err <= tol and same_inf and lse_err <= 1e-3 + 1e-4 * np.abs(ref_lse[fin]).max(initial=0))
    return dict(dtype=np.dtype(dtype).name, d=d, group=group, seq_q=list(map(int, seq_q)),
                seq_k=list(map(int, seq_k)), window=window, causal=causal, err=err, tol=tol,
                lse_err=lse_err, lse_inf_match=bool(same_inf), ok=ok)


#: GQA group sizes swept per (dtype, head size): every dtype and head size meets GQA 1 and
#: GQA > 1 somewhere, while the number of compiled specialisations stays at 8
GROUPS = {("float16", 128): (1, 4, 8), ("bfloat16", 128): (1, 4, 8),
          ("float16", 64): (4, 8), ("float16", 256): (8, 4),
          ("bfloat16", 64): (1,), ("bfloat16", 256): (1,)}
WINDOWS = (((-1, -1), False), ((-1, -1), True), ((0, 0), False), ((128, 128), False))


def sweep_cases(dtypes, heads):
    cases = []
    if os.environ.get("WGMMA_CHECK_TINY"):      # dry runs on the simulator: tiny lengths
        return [(dt, d, GROUPS[(np.dtype(dt).name, d)][0], [s], [s + 3], w, c)
                for d in heads for dt in dtypes for s, (w, c) in zip((20, 9), WINDOWS[1:3])]
    for d in heads:
        for dtype in dtypes:
            gs = GROUPS[(np.dtype(dtype).name, d)]
            for i, (window, causal) in enumerate(WINDOWS):
                for j, s in enumerate((97, 1025, 1)):
                    cases.append((dtype, d, gs[(i + j) % len(gs)], [s], [s], window, causal))
            cases.append((dtype, d, gs[0], [200], [1100], (-1, -1), True))      # sq < sk
            cases.append((dtype, d, gs[-1], [300], [77], (128, 128), False))     # sq > sk
            cases.append((dtype, d, gs[0], [130, 0, 7, 513], [64, 0, 300, 513], (-1, -1), True))
            cases.append((dtype, d, gs[-1], [65, 0, 190], [65, 5, 190], (128, 128), False))
    return cases


def sweep(rng, cases, budget_end, key, **kw):
    rows = []
    for c in cases:
        if time.time() > budget_end:
            break
        try:
            row = check_case(rng, *c, **kw)
        except Exception as exc:  # noqa: BLE001
            row = dict(case=str(c), ok=False, error=f"{type(exc).__name__}: {exc}"[:800])
            traceback.print_exc()
        if not row["ok"] and sum(not r["ok"] for r in rows) < 8:   # the first few only
            log("FAIL", key, row)
        rows.append(row)
        RES[key] = dict(run=len(rows), total=len(cases), passed=sum(r["ok"] for r in rows),
                        options=kw, rows=rows)
        save()                  # a stage killed by its timeout still reports what it ran
    RES[key] = dict(run=len(rows), total=len(cases), passed=sum(r["ok"] for r in rows),
                    options=kw, rows=rows)
    save()
    log(f"{key}: {RES[key]['passed']}/{len(rows)} pass ({len(cases)} planned)")


# --------------------------------------------------------------------------- c. timing

@cuda.jit
def _sleeper(n):
    for _ in range(n):
        cuda.nanosleep(1000)


def timing(v_swap, launch_ok=True, head_size=128):
    from attn_numba.kernels import v4_tensor_core as v4
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
                (lambda bn=bn, ov=ov, wg=wg, hb=hb: v5.launch(
                    p, q, k, v, out, lse, cu, cu, 0, block_n=bn, v_swap=v_swap, overlap=ov,
                    groups=wg, heads=hb))
                for bn, ov, wg, hb in (TIMED.get(d, ()) if launch_ok else ())}
        runs["flash_tc"] = lambda: v4.launch(p, q, k, v, out, lse, cu, cu, cuda.default_stream())
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
            out.add((d, kind, v5.heads_per_block(g), v5.BLOCK_N[d], False, 1))
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
        v5.build(d, kind, hb, bn, False, ov, None, wg).compile(v5._signature())
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


#: variants given a short correctness sweep of their own: (key, options, (head, kind,
#: heads per warpgroup) specialisations it covers)
EXTRA_SWEEPS = (
    ("sweep_overlap", dict(overlap=True, groups=1),
     ((128, "f16", 4), (128, "bf16", 4), (256, "f16", 4), (64, "f16", 4))),
    ("sweep_wg2", dict(overlap=True, groups=2), ((128, "f16", 4), (128, "bf16", 1),
                                                 (64, "f16", 4))),
    ("sweep_wg2_plain", dict(overlap=False, groups=2), ((128, "f16", 1), (64, "f16", 4))),
)
#: head size -> (block_n, overlap, groups, heads per warpgroup) timed at 8192 tokens, fp16
#: (the timing stage takes one head size: ``--stage-args '{"v_swap": false, "head_size": 64}'``)
TIMED = {128: ((128, False, 1, 4), (64, False, 1, 4), (128, True, 1, 4), (64, True, 1, 4),
               (128, True, 2, 4), (64, True, 2, 4), (128, False, 2, 4), (64, True, 1, 1),
               (64, True, 2, 2)),
         64: ((128, False, 1, 4), (64, False, 1, 4), (256, False, 1, 4), (128, True, 1, 4))}


# --------------------------------------------------------------------------- d. evidence

def ptxas_report(ptx, path):
    """ptxas -v for sm_90a: registers, spills and the C75xx wgmma notes (serialisation,
    injected warpgroup.arrive). An older ptxas gets the PTX with its own .version."""
    for _ in range(2):
        with open(path, "w") as f:
            f.write(ptx)
        pv = subprocess.run(["ptxas", "-arch=sm_90a", "-v", "-O3", "-o", os.devnull, path],
                            capture_output=True, text=True, timeout=120)
        m = re.search(r"current version is '([0-9.]+)'", pv.stderr)
        if not m:
            break
        ptx = re.sub(r"^\.version\s+\S+", f".version {m.group(1)}", ptx, flags=re.M)
    keep = ("registers", "spill", "warn", "C75", "rror")
    return " | ".join(re.sub(r"_Z\w+", "<fn>", ln) for ln in pv.stderr.splitlines()
                      if any(k in ln for k in keep))


def evidence(v_swap, stop=float("inf")):
    rows = []
    for d, kind, hb, bn, ov, wg in ((128, "f16", 4, 128, False, 1), (128, "f16", 4, 128, True, 1),
                                    (128, "f16", 4, 128, True, 2), (64, "f16", 4, 128, False, 1),
                                    (256, "bf16", 1, 64, False, 1), (256, "f16", 4, 64, True, 1)):
        kern = v5.build(d, kind, hb, bn, v_swap, ov, None, wg)
        row = dict(d=d, kind=kind, heads=hb, block_n=bn, overlap=ov, groups=wg)
        if time.time() > stop and rows:
            row["error"] = "skipped: out of time"
            rows.append(row)
            continue
        try:
            sig = v5._signature()
            ck = kern.compile(sig)
            lib = ck._codelibrary
            attrs = lib.get_cufunc().attrs
            row.update(regs=attrs.regs, local_bytes=attrs.local, static_shared=attrs.shared)
            try:
                ptx = lib.get_asm_str()
            except Exception:  # noqa: BLE001  (a disk-cache load may not carry the PTX)
                ptx = cuda.compile_ptx(kern.py_func, sig, cc=(9, 0, "a"))[0]
            tag = f"v5_d{d}_{kind}_h{hb}_bn{bn}{'_ov' if ov else ''}_wg{wg}"
            with open(os.path.join(OUT, tag + ".ptx"), "w") as f:
                f.write(ptx)
            cubin = lib.get_cubin()
            if not isinstance(cubin, (bytes, bytearray)):      # cuda.core ObjectCode
                cubin = getattr(cubin, "code", cubin)
                if isinstance(cubin, str) and os.path.exists(cubin):
                    with open(cubin, "rb") as f:
                        cubin = f.read()
            cpath = os.path.join(OUT, tag + ".cubin")
            with open(cpath, "wb") as f:
                f.write(cubin)
            if shutil.which("ptxas"):
                row["ptxas"] = ptxas_report(ptx, os.path.join(OUT, tag + "_ptxas.ptx"))
            tool = shutil.which("cuobjdump") or shutil.which("nvdisasm")
            if tool:
                cmd = [tool, "-sass", cpath] if tool.endswith("cuobjdump") else [tool, cpath]
                sass = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
                with open(os.path.join(OUT, tag + ".sass"), "w") as f:
                    f.write(sass)
                row["hgmma"] = len(re.findall(r"HGMMA", sass))
                row["sass_lines"] = sass.count("\n")
            else:
                row["hgmma"] = "no cuobjdump/nvdisasm"
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        log("evidence", row)
        rows.append(row)
    RES["evidence"] = rows
    save()


FIRST_CALL = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
import attn_numba
from numba import cuda
cuda.current_context()
t1 = time.perf_counter()
rng = np.random.default_rng(0)
q = rng.standard_normal((1, 512, 32, 128)).astype(np.float16)
k, v = (rng.standard_normal((1, 512, 8, 128)).astype(np.float16) for _ in range(2))
t2 = time.perf_counter()
attn_numba.mha_fwd(q, k, v, window_size=(128, 128), kernel="flash_wgmma")
t3 = time.perf_counter()
attn_numba.mha_fwd(q, k, v, window_size=(128, 128), kernel="flash_wgmma")
t4 = time.perf_counter()
print(json.dumps(dict(import_and_context_s=t1 - t0, first_call_s=t3 - t2,
                      second_call_s=t4 - t3)))
"""


def first_call(timeout=120):
    """A fresh process after this one filled the disk cache: the first public call's time
    (host arrays in and out, 512 tokens; the issue's target is 0.3 s)."""
    try:
        r = subprocess.run([sys.executable, "-c", FIRST_CALL], capture_output=True, text=True,
                           timeout=timeout,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    except subprocess.TimeoutExpired:
        RES["first_call"] = dict(error=f"timed out after {timeout:.0f} s")
        save()
        return
    try:
        RES["first_call"] = json.loads(r.stdout.strip().splitlines()[-1])
    except Exception:  # noqa: BLE001
        RES["first_call"] = dict(error=(r.stderr or r.stdout)[-1500:])
    log("first call", RES["first_call"])
    save()


def run_stage(name, args, timeout):
    """Run one stage in a fresh process (a fault there cannot poison this process's or a
    later stage's CUDA context) and merge its results; its log lines are forwarded."""
    cmd = [sys.executable, os.path.abspath(__file__), "--stage", name, "--stage-args",
           json.dumps(args)]
    path = os.path.join(OUT, f"stage_{name}.json")
    if os.path.exists(path):
        os.remove(path)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 5))
        out = r.stdout + ("" if r.returncode == 0 else r.stderr[-3000:])
    except subprocess.TimeoutExpired as exc:
        out = f"stage {name} timed out after {timeout:.0f} s\n" + str(exc.stdout or "")[-2000:]
    print(out.rstrip()[-6000:], flush=True)
    if os.path.exists(path):
        with open(path) as f:
            RES.update(json.load(f))
    else:
        RES[f"{name}_error"] = out[-2000:]
    save()


def stage_main(name, args):
    """Body of a stage subprocess."""
    global STAGE
    STAGE = name
    rng = np.random.default_rng(args.get("seed", 0))
    if name == "micro":
        microtest(rng, swapped=args.get("swapped", False))
    elif name == "sweep":
        f16 = np.dtype(np.float16)
        cases = sweep_cases((f16, bf16()), tuple(args.get("heads", (128, 64, 256))))
        if args.get("specs"):
            specs = {tuple(x) for x in args["specs"]}
            cases = [c for c in cases
                     if (c[1], "f16" if c[0] == f16 else "bf16", v5.heads_per_block(c[2])) in specs
                     and (c[3][0] in (1025, 200, 130, 300) or c[6])]
        sweep(rng, cases, args.get("deadline", time.time() + 120), args.get("key", "sweep"),
              v_swap=args.get("v_swap", False), **args.get("opts", {}))
    elif name == "timing":
        timing(args["v_swap"], head_size=args.get("head_size", 128))
    save()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=150.0, help="seconds for the whole run")
    ap.add_argument("--force", action="store_true",
                    help="launch flash_wgmma even when the microtest fails")
    ap.add_argument("--skip-main-sweep", action="store_true",
                    help="skip the default variant's sweep (passed 96/96 on the H200, "
                         "2026-11-30 run 8): the variant sweeps and timing get its time")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--stage-args", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if a.stage:
        return stage_main(a.stage, json.loads(a.stage_args))
    end = T0 + a.budget
    dev = cuda.get_current_device()
    RES["device"] = dict(name=str(getattr(dev, "name", "simulator")),
                         cc=list(dev.compute_capability))
    log("device", RES["device"])
    pool, res = precompile_async()
    run_stage("micro", {}, end - time.time())
    rows = RES.get("micro", [])
    ss_ok = bool(rows) and all(r["ok"] for r in rows if r["op"] != "RS")
    rs_ok = {"cutlass": bool(rows) and all(r["ok"] for r in rows if r["op"] == "RS")}
    if not rs_ok["cutlass"]:
        run_stage("micro", {"swapped": True, "seed": 1}, end - time.time())
        sw = RES.get("micro_swapped", [])
        rs_ok["swapped"] = bool(sw) and all(r["ok"] for r in sw)
    v_swap = bool(not rs_ok["cutlass"] and rs_ok.get("swapped", False))
    RES["v_swap_used"] = v_swap
    # with no working reading of a descriptor the kernel could read outside its shared
    # memory: launch it only with --force
    launch_ok = a.force or (ss_ok and any(rs_ok.values()))
    RES["kernel_launched"] = launch_ok
    if pool is not None:
        try:
            RES["precompile"] = [dict(spec=sp, s=t, error=e)
                                 for sp, t, e in res.get(timeout=max(1, min(90, end - time.time() - 60)))]
        except Exception:  # noqa: BLE001
            RES["precompile_error"] = traceback.format_exc()
        pool.terminate()
        log("precompiled", [(r["spec"], r["s"], r["error"]) for r in RES.get("precompile", [])])
    save()
    if launch_ok:
        # sweeps get what is left minus ~45 s for timing, evidence and the first call: the
        # full sweep 60% of it, the variant sweeps share the rest
        sweep_end = end - 50
        plan = [("sweep", None, {})] * (not a.skip_main_sweep) + [(key, [list(x) for x in specs], opts)
                                        for key, opts, specs in EXTRA_SWEEPS]
        for i, (key, specs, opts) in enumerate(plan):
            left = sweep_end - time.time()
            if left <= 3:
                log(f"{key}: no time left")
                continue
            first = i == 0 and not a.skip_main_sweep
            deadline = time.time() + (0.6 * left if first else left / (len(plan) - i))
            run_stage("sweep", dict(key=key, specs=specs, opts=opts, v_swap=v_swap,
                                    deadline=deadline), deadline - time.time() + 30)
        run_stage("timing", dict(v_swap=v_swap), max(20, min(45, end - time.time() - 15)))
    else:
        log("microtest failed: flash_wgmma is not launched (use --force to launch it anyway)")
    try:
        evidence(v_swap, end + 5)
    except Exception:  # noqa: BLE001
        RES["evidence_error"] = traceback.format_exc()
    if launch_ok:
        first_call(max(15, end + 15 - time.time()))
    save()
    # the short table (about 20 lines; the most important last)
    print("\n==== flash_wgmma check on", RES["device"]["name"], "====")
    runs = RES.get("timing_8192", {}).get("runs", {})
    names = sorted({k.split("/", 1)[1] for k in runs}, key=lambda n: (n != "flash_tc", n))
    for name in names:
        cells = []
        for case in ("window128", "window128_causal"):
            r = runs.get(f"{case}/{name}", {})
            cells.append(f"{r['ms']:.3f} ms {r['tflops']:4.0f} TF/s" if "ms" in r
                         else str(r.get("error", "-"))[:40])
        print(f"  8192 {name:<34} non-causal {cells[0]:<22} causal {cells[1]}")
    ev = RES.get("evidence", [])
    print("  regs/local/HGMMA: " + "; ".join(
        f"D{r['d']}{r['kind']}h{r['heads']}bn{r['block_n']}{'ov' if r['overlap'] else ''}"
        f"wg{r['groups']} {r.get('regs')}/{r.get('local_bytes')}/{r.get('hgmma')}"
        for r in ev))
    ptx_notes = {r.get("ptxas", "") for r in ev if "C75" in r.get("ptxas", "")}
    print("  ptxas C75xx notes:", "; ".join(ptx_notes)[:200] or "none")
    print("  first call in a new process (warm cache):", str(RES.get("first_call"))[-200:])
    if "timing_error" in RES:
        print("  timing stage:", RES["timing_error"][-150:])
    for r in RES.get("micro", []) + RES.get("micro_swapped", []):
        if not r["ok"]:
            print("  micro FAIL", {k: r.get(k) for k in ("op", "n", "k", "kind", "desc", "max_err",
                                                         "error") if r.get(k) is not None})
    print(f"micro SS/RSK ok: {ss_ok}   RS ok by V-descriptor reading: {rs_ok}   "
          f"kernel v_swap={v_swap} launched={launch_ok}")
    for key in ["sweep"] + [k for k, _, _ in EXTRA_SWEEPS]:
        sw = RES.get(key, {})
        print(f"{key} {sw.get('passed', 0)}/{sw.get('run', 0)} pass ({sw.get('total', 0)} planned)"
              + (f"  {RES[key + '_error'][-120:]}" if key + "_error" in RES else ""))
    print(f"total {time.time() - T0:.0f} s; details in {OUT}/wgmma_check.json")


if __name__ == "__main__":
    main()
