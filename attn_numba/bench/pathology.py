"""Reproducing the user's NVBench pathology on purpose: cuda-bench variants of run_mha_fwd.

Every variant registers a benchmark named ``run_mha_fwd`` with the log's axes (num_seqs,
seq_len, num_heads, num_kv_heads, head_size, window_left, window_right, causal) on the naive
kernel (:mod:`attn_numba.kernels.v1_naive`) and differs only in what its launcher does:

======================  ========================================================================
``H1_sync``             a fresh ``cuda.jit`` of the naive kernel's Python function on every
                        launch (compile inside the timed launcher); ``state.exec(sync=True)``
``H1_default``          the same launcher, default ``state.exec`` (blocking kernel, batched)
``H1_noblock``          the same launcher, default exec with the blocking kernel disabled
``H2_host_sync``        precompiled kernel, host NumPy arrays passed on each launch (implicit
                        copies + sync on the legacy default stream); ``sync=True``
``H2_host_default``     the same, default exec (blocking kernel): expected to deadlock
``fixed``               precompiled + warmed kernel, device arrays made outside the launcher,
                        launch on NVBench's stream (``cuda.external_stream``), default exec,
                        wrapped in :func:`attn_numba.warmup.no_new_compiles`
======================  ========================================================================

Run one variant per process (each prints an NVBench markdown log like the user's)::

    python -m attn_numba.bench.pathology nvbench H1_sync --seq-lens 512 2048 8192 --timeout 2

The other sub-commands measure compile times in fresh processes (see :func:`main`). The GPU
driver is ``scripts/gpu_pathology.py``; its results are ``results/h100/pathology.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

AXES = dict(num_seqs=1, num_heads=32, num_kv_heads=8, head_size=128, window_left=128,
            window_right=128)
#: blocking-kernel timeout for the default-exec variants (NVBench's default is 30 s)
BLOCKING_TIMEOUT_S = 3.0
VARIANTS = ("H1_sync", "H1_default", "H1_noblock", "H1_noblock_nobatch", "H1_cached",
            "H2_host_sync", "H2_host_default", "fixed")


def _problem(S, causal, dtype=np.float16, **ax):
    from ..interface import on_simulator
    from ..problem import Problem, count_pairs, default_scale, normalize_window
    a = dict(AXES, **ax)
    left, right = normalize_window((a["window_left"], a["window_right"]), bool(causal))
    B = a["num_seqs"]
    return Problem(batch=B, total_q=B * S, total_k=B * S, max_seqlen_q=S, max_seqlen_k=S,
                   num_heads=a["num_heads"], num_kv_heads=a["num_kv_heads"],
                   head_size=a["head_size"], dtype=np.dtype(dtype),
                   softmax_scale=default_scale(a["head_size"]), window_left=left,
                   window_right=right, causal=bool(causal), lse_batched=True,
                   on_simulator=on_simulator(),
                   pairs=count_pairs([S] * B, [S] * B, left, right))


def _host_inputs(p, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((p.total_q, p.num_heads, p.head_size)).astype(p.dtype)
    k = rng.standard_normal((p.total_k, p.num_kv_heads, p.head_size)).astype(p.dtype)
    v = rng.standard_normal((p.total_k, p.num_kv_heads, p.head_size)).astype(p.dtype)
    out = np.empty_like(q)
    lse = np.empty((p.batch, p.num_heads, p.max_seqlen_q), np.float32)
    cu = (np.arange(p.batch + 1) * p.max_seqlen_q).astype(np.int32)
    return q, k, v, out, lse, cu, cu.copy()


def _grid(p):
    from ..kernels import v1_naive
    block = v1_naive.BLOCK
    return ((p.max_seqlen_q + block - 1) // block, p.num_heads, p.batch), block


def _scalars(p):
    return (np.float32(p.softmax_scale), np.int64(p.window_left), np.int64(p.window_right),
            True)


def _declare(state, p):
    """Element count, memory traffic and FLOP columns, as the user's benchmark declared them."""
    from ..problem import dense_flops, windowed_flops
    it = np.dtype(p.dtype).itemsize
    state.add_element_count(p.total_q, "Tokens")
    state.add_global_memory_reads((p.total_q * p.num_heads + 2 * p.total_k * p.num_kv_heads)
                                  * p.head_size * it)
    state.add_global_memory_writes(p.total_q * p.num_heads * p.head_size * it)
    for name, val in (("Est. FLOPS", dense_flops(p.batch, p.max_seqlen_q, p.num_heads, p.head_size)),
                      ("Windowed FLOPS", windowed_flops([p.max_seqlen_q] * p.batch,
                                                        [p.max_seqlen_k] * p.batch, p.num_heads,
                                                        p.head_size, p.window_left,
                                                        p.window_right))):
        try:
            state.add_summary(name, int(val))
        except Exception:  # noqa: BLE001 - older cuda-bench without add_summary
            pass


def _report(tag, **data):
    """One machine-readable line on stderr for the driver."""
    print(f"PATHOLOGY {tag} " + json.dumps(data), file=sys.stderr, flush=True)


def make_benchmark(variant):
    """The benchmark function for ``variant`` (see the module docstring)."""
    from numba import cuda

    from ..kernels import v1_naive
    from ..warmup import count_compiles, no_new_compiles

    def bench_fn(state):
        S = state.get_int64("seq_len")
        causal = state.get_int64("causal")
        p = _problem(S, causal, **{k: state.get_int64(k) for k in AXES})
        _declare(state, p)
        grid, block = _grid(p)
        scal = _scalars(p)
        stream = cuda.external_stream(state.get_stream().addressof())
        host = _host_inputs(p)
        if variant.startswith("H2"):
            args = host  # NumPy arrays, copied by Numba on every launch
        else:
            args = tuple(cuda.to_device(x, stream=stream) for x in host)
            stream.synchronize()

        if variant.startswith("H1"):
            def launcher(launch):
                s = cuda.external_stream(launch.get_stream().addressof())
                # the pathology: a new dispatcher, hence a new JIT, on every call
                # (H1_cached: the same with cache=True, so each call is a disk-cache load)
                fresh = cuda.jit(cache=(variant == "H1_cached"))(v1_naive.naive_kernel.py_func)
                fresh[grid, block, s](*args, *scal)
        elif variant.startswith("H2"):
            v1_naive.naive_kernel[grid, block](*[cuda.to_device(x) for x in host], *scal)
            cuda.synchronize()  # compiled (or loaded from cache) before timing

            def launcher(launch):
                # host arrays: Numba copies in, launches on the default stream, copies back
                v1_naive.naive_kernel[grid, block](*args, *scal)
        else:  # fixed
            v1_naive.naive_kernel[grid, block, stream](*args, *scal)
            stream.synchronize()

            def launcher(launch):
                s = cuda.external_stream(launch.get_stream().addressof())
                v1_naive.naive_kernel[grid, block, s](*args, *scal)

        if variant in ("H1_noblock", "H1_noblock_nobatch"):
            state.set_disable_blocking_kernel(True)
        if variant in ("H1_default", "H2_host_default"):
            # a launcher that synchronises deadlocks against the blocking kernel; bound it
            state.set_blocking_kernel_timeout(BLOCKING_TIMEOUT_S)
        try:  # free Numba's deferred deallocations now, not while the stream is blocked
            cuda.current_context().deallocations.clear()
        except AttributeError:
            pass
        sync = variant.endswith("_sync") or variant == "H1_cached"
        t0 = time.perf_counter()
        err = None
        guard = no_new_compiles("the timed launcher") if variant == "fixed" else count_compiles()
        try:
            with guard as cc:
                if sync:
                    state.exec(launcher, sync=True)
                elif variant.endswith("_nobatch"):
                    state.exec(launcher, batched=False)
                else:
                    state.exec(launcher)
        except Exception as exc:  # noqa: BLE001 - report, let NVBench go on
            err = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            _report("exec", variant=variant, seq_len=S, causal=causal,
                    wall_s=time.perf_counter() - t0, compiles=cc.count,
                    compile_s=cc.seconds, error=err)

    return bench_fn


def run_nvbench(variant, seq_lens, causals, timeout, min_samples=10, argv=()):
    import cuda.bench as bench
    b = bench.register(make_benchmark(variant))
    b.set_name("run_mha_fwd")
    b.add_int64_axis("num_seqs", [AXES["num_seqs"]])
    b.add_int64_axis("seq_len", list(seq_lens))
    for k in ("num_heads", "num_kv_heads", "head_size", "window_left", "window_right"):
        b.add_int64_axis(k, [AXES[k]])
    b.add_int64_axis("causal", list(causals))
    b.set_timeout(timeout)
    b.set_min_samples(min_samples)
    bench.run_all_benchmarks([sys.argv[0], *argv])


# --------------------------------------------------------------------------- compile times

def _naive_args(S=512, causal=0):
    from numba import cuda
    p = _problem(S, causal)
    grid, block = _grid(p)
    dev = tuple(cuda.to_device(x) for x in _host_inputs(p))
    return p, grid, block, dev, _scalars(p)


def compile_times(n_rejit=3):
    """In this process (meant to be fresh): time the phases of the first naive launch, then
    re-JIT (fresh cuda.jit, no cache) and fresh cuda.jit(cache=True) launches, and the PTX-only
    part (typing + lowering + NVVM) with compile_ptx."""
    t0 = time.perf_counter()
    from numba import cuda
    import attn_numba  # noqa: F401
    from ..kernels import v1_naive
    from ..warmup import count_compiles
    res = {"import_s": time.perf_counter() - t0}
    t = time.perf_counter()
    cuda.current_context()
    res["context_s"] = time.perf_counter() - t
    p, grid, block, dev, scal = _naive_args()
    with count_compiles() as cc:
        t = time.perf_counter()
        v1_naive.naive_kernel[grid, block](*dev, *scal)
        cuda.synchronize()
        res["first_launch_s"] = time.perf_counter() - t
    res["first_launch_compiles"] = cc.count
    t = time.perf_counter()
    v1_naive.naive_kernel[grid, block](*dev, *scal)
    cuda.synchronize()
    res["second_launch_s"] = time.perf_counter() - t
    for key, opts in (("rejit_per_call_s", {}), ("rejit_cache_true_per_call_s", {"cache": True})):
        ts = []
        for _ in range(n_rejit):
            t = time.perf_counter()
            fresh = cuda.jit(**opts)(v1_naive.naive_kernel.py_func)
            fresh[grid, block](*dev, *scal)
            cuda.synchronize()
            ts.append(time.perf_counter() - t)
        res[key] = ts
    sig = v1_naive.compile_targets(128, np.float16)[0][2]
    cc_ = cuda.get_current_device().compute_capability
    ts = []
    for _ in range(2):
        t = time.perf_counter()
        cuda.compile_ptx(v1_naive.naive_kernel.py_func, sig, cc=cc_)
        ts.append(time.perf_counter() - t)
    res["compile_ptx_s"] = ts
    for key, opts in (("rejit_lineinfo_s", {"lineinfo": True}),
                      ("rejit_debug_noopt_s", {"debug": True, "opt": False})):
        t = time.perf_counter()
        fresh = cuda.jit(**opts)(v1_naive.naive_kernel.py_func)
        fresh[grid, block](*dev, *scal)
        cuda.synchronize()
        res[key] = time.perf_counter() - t
    return res


def first_call(mode, S=512, kernel="naive", profile_path=None):
    """Fresh process, warm disk cache: time the first ``mha_fwd`` after import.

    mode ``baseline``: nothing before the call; ``warmup``: :func:`attn_numba.warmup.warmup`
    first (timed separately); ``eager``: :func:`attn_numba.warmup.compile_eager` first.
    Inputs are device arrays created after the context (so context creation is not charged to
    the call; it is reported as ``context_s``)."""
    t0 = time.perf_counter()
    import attn_numba
    from numba import cuda
    from .. import warmup as wu
    res = {"mode": mode, "import_s": time.perf_counter() - t0}
    if mode == "warmup":
        t = time.perf_counter()
        res["warmup"] = wu.warmup(kernels=(kernel,), dtypes=(np.float16,), head_sizes=(128,))
        res["warmup_s"] = time.perf_counter() - t
    elif mode == "fast":
        t = time.perf_counter()
        res["context_s"] = wu.init_context()
        res["fast"] = wu.fast_load((kernel,), (np.float16,), (128,))
        res["fast_s"] = time.perf_counter() - t
    elif mode == "eager":
        t = time.perf_counter()
        res["context_s"] = wu.init_context()
        res["eager"] = wu.compile_eager((kernel,), (np.float16,), (128,))
        res["eager_s"] = time.perf_counter() - t
    t = time.perf_counter()
    cuda.current_context()
    res.setdefault("context_s", time.perf_counter() - t)
    rng = np.random.default_rng(1)
    q = cuda.to_device(rng.standard_normal((1, S, 32, 128)).astype(np.float16))
    k = cuda.to_device(rng.standard_normal((1, S, 8, 128)).astype(np.float16))
    v = cuda.to_device(rng.standard_normal((1, S, 8, 128)).astype(np.float16))
    cuda.synchronize()
    prof = None
    if profile_path:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    with wu.count_compiles() as cc:
        t = time.perf_counter()
        attn_numba.mha_fwd(q, k, v, window_size=(128, 128), kernel=kernel)
        cuda.synchronize()
        res["first_call_s"] = time.perf_counter() - t
    if prof is not None:
        prof.disable()
        import io
        import pstats
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(40)
        with open(profile_path, "w") as f:
            f.write(buf.getvalue())
    res["first_call_compiles"] = cc.count
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        attn_numba.mha_fwd(q, k, v, window_size=(128, 128), kernel=kernel)
        cuda.synchronize()
        ts.append(time.perf_counter() - t)
    res["next_calls_s"] = ts
    if mode == "fast":  # the fast-loaded kernel must compute the right thing
        from ..testing import check_mha_fwd, random_qkv
        q, k, v = random_qkv(rng, 1, 40, 40, 4, 2, 128, np.float16)
        with wu.count_compiles() as cc2:
            c = check_mha_fwd(q, k, v, kernel, window_size=(8, 3))
        res["check"] = {"max_err": c.max_err, "tol": c.tol, "ok": c.ok, "compiles": cc2.count}
    return res


def other_kernels_compile(head_size=128):
    """Warm process: time each available kernel's first mha_fwd call (compile or cache load)."""
    import attn_numba
    from numba import cuda
    from .. import warmup as wu
    wu.warmup(kernels=("naive",), dtypes=(np.float16,), head_sizes=(head_size,))
    res = {}
    for name in attn_numba.available_kernels():
        rec = {}
        with wu.count_compiles() as cc:
            t = time.perf_counter()
            try:
                r = wu.warmup(kernels=(name,), dtypes=(np.float16,), head_sizes=(head_size,))
                rec["skipped"] = r["calls"][0]["skipped"]
            except Exception as exc:  # noqa: BLE001
                rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
            cuda.synchronize()
            rec["first_call_s"] = time.perf_counter() - t
        rec["compiles"] = cc.count
        rec["compile_s"] = cc.seconds
        res[name] = rec
    return res


def debug_build_times(seq_lens=(512, 2048), reps=1):
    """H3: the naive kernel compiled with debug=True, opt=False vs the normal build: kernel
    time (CUDA events) at a few sizes. Both scale with the work; neither is seconds-flat."""
    from numba import cuda
    from ..kernels import v1_naive
    builds = {"normal": v1_naive.naive_kernel,
              "debug_noopt": cuda.jit(debug=True, opt=False)(v1_naive.naive_kernel.py_func)}
    res = {}
    for name, kern in builds.items():
        res[name] = {}
        for S in seq_lens:
            p, grid, block, dev, scal = _naive_args(S)
            kern[grid, block](*dev, *scal)
            cuda.synchronize()
            ts = []
            for _ in range(reps):
                e0, e1 = cuda.event(), cuda.event()
                e0.record()
                kern[grid, block](*dev, *scal)
                e1.record()
                e1.synchronize()
                ts.append(cuda.event_elapsed_time(e0, e1) / 1e3)
            res[name][str(S)] = min(ts)
    return res


def simulator_times(seq_lens=(16, 32, 64), num_heads=2, head_size=16):
    """H3 (CUDA simulator): run in a process with NUMBA_ENABLE_CUDASIM=1 on the CPU; seconds
    per call of the naive kernel at tiny sizes, to extrapolate per windowed FLOP."""
    import attn_numba
    from ..problem import windowed_flops
    rng = np.random.default_rng(0)
    out = []
    for S in seq_lens:
        q = rng.standard_normal((1, S, num_heads, head_size)).astype(np.float32)
        k = rng.standard_normal((1, S, 1, head_size)).astype(np.float32)
        v = rng.standard_normal((1, S, 1, head_size)).astype(np.float32)
        attn_numba.mha_fwd(q, k, v, window_size=(128, 128), kernel="naive")
        t = time.perf_counter()
        attn_numba.mha_fwd(q, k, v, window_size=(128, 128), kernel="naive")
        out.append({"seq_len": S, "num_heads": num_heads, "head_size": head_size,
                    "windowed_flops": windowed_flops([S], [S], num_heads, head_size, 128, 128),
                    "seconds": time.perf_counter() - t, "simulator": attn_numba.on_simulator()})
    return out


# --------------------------------------------------------------------------- summary

def _nvbench_summary(entry):
    """Parse one variant's captured NVBench stdout with attn_numba.explain."""
    from .. import explain
    if "log" not in entry:
        return {"skipped": entry.get("skipped", "not run")}
    parsed = explain.parse_log(entry["log"])
    rows = explain.build_rows(parsed)
    runs = parsed["runs"]
    out_rows = []
    for r in runs:
        c, b = r.get("cold") or {}, r.get("batch") or {}
        tab = next((x for x in rows if x.get("seq_len") == r["axes"].get("seq_len")
                    and x.get("causal") == r["axes"].get("causal")), {})
        out_rows.append({
            "seq_len": r["axes"].get("seq_len"), "causal": r["axes"].get("causal"),
            "windowed_flops": tab.get("windowed_flops") or explain._row_work(r["axes"])["windowed_flops"],
            "cold_gpu_s": c.get("gpu_time_s"), "cold_cpu_s": c.get("cpu_time_s"),
            "cold_samples": c.get("samples"), "batch_gpu_s": b.get("gpu_time_s"),
            "batch_samples": b.get("samples"), "gpu_noise": tab.get("gpu_noise"),
            "warnings": sorted({w["kind"] for w in r["warnings"]}),
            "failed": any(o.startswith("Fail:") for o in r["other"]),
            "deadlock": "Deadlock detected" in entry["log"].split(f"[{r['index']}/{r['total']}]")[1].split("Run:")[0]
            if f"[{r['index']}/{r['total']}]" in entry["log"] else False,
        })
    pts = [(x["windowed_flops"], x["cold_gpu_s"]) for x in out_rows if x["cold_gpu_s"]]
    fit = explain.fit_overhead(*zip(*pts)) if len({p[0] for p in pts}) >= 2 else None
    med = float(np.median([p[1] for p in pts])) if pts else None
    fixed = max(fit["a"], 0.0) if fit else None
    return {"rows": out_rows, "fit": fit, "median_s": med, "fixed_overhead_s": fixed,
            "work_exponent": fit["exponent"] if fit else None,
            "verdict": explain.verdict_of(fixed, med, fit["exponent"] if fit else None),
            "compiles_in_exec": [{k: e.get(k) for k in ("seq_len", "causal", "compiles",
                                                        "compile_s", "wall_s", "error")}
                                 for e in entry.get("execs", [])],
            "rc": entry.get("rc"), "log": entry["log"]}


def _res(raw, name):
    return ((raw or {}).get("steps", {}).get(name) or {}).get("result")


def summarize(raw1, raw2=None, sim=None, profile_text=None):
    """Fold the device runs' raw JSON (scripts/gpu_pathology.py) into results/h100/pathology.json."""
    ct = _res(raw1, "compile_times") or {}
    out = {"device": raw1.get("device"), "date": raw1.get("date"),
           "versions": raw1.get("versions"), "axes": AXES,
           "dates": [r.get("date") for r in (raw1, raw2) if r]}
    out["compile_times"] = {
        "import_s": ct.get("import_s"), "context_s": ct.get("context_s"),
        "cold_process_first_call_s": ct.get("first_launch_s"),
        "cold_process_first_call_compiles": ct.get("first_launch_compiles"),
        "second_call_s": ct.get("second_launch_s"),
        "rejit_per_call_s": ct.get("rejit_per_call_s"),
        "rejit_cache_true_per_call_s": ct.get("rejit_cache_true_per_call_s"),
        "compile_ptx_s": ct.get("compile_ptx_s"),
        "rejit_lineinfo_s": ct.get("rejit_lineinfo_s"),
        "rejit_debug_noopt_s": ct.get("rejit_debug_noopt_s"),
        "other_kernels_first_call": _res(raw1, "other_kernels"),
        "note": "naive kernel, fp16, H=32/8, D=128, S=512 inputs; each key measured in a fresh "
                "process as described in attn_numba.bench.pathology.compile_times",
    }
    fc = {}
    for raw in (raw1, raw2):
        for name, step in (raw or {}).get("steps", {}).items():
            if name.startswith("first_call") and step.get("result"):
                key = name if raw is raw1 else f"{name}@stage2"
                fc[key] = step["result"]
    out["first_call"] = fc
    if profile_text:
        out["first_call_profile_top"] = profile_text.splitlines()[:48]
    nv = {}
    for raw in (raw1, raw2):
        for v, entry in (raw or {}).get("nvbench", {}).items():
            nv[v] = _nvbench_summary(entry)
    out["nvbench"] = nv
    db = _res(raw2, "debug_build") or _res(raw1, "debug_build")
    out["debug_build_kernel_s"] = db
    out["simulator"] = sim
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m attn_numba.bench.pathology")
    sub = ap.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("nvbench")
    n.add_argument("variant", choices=VARIANTS)
    n.add_argument("--seq-lens", type=int, nargs="+", default=[512, 2048, 8192])
    n.add_argument("--causal", type=int, nargs="+", default=[0])
    n.add_argument("--timeout", type=float, default=2.0)
    n.add_argument("--min-samples", type=int, default=10)
    sub.add_parser("compile-times")
    f = sub.add_parser("first-call")
    f.add_argument("mode", choices=("baseline", "warmup", "eager", "fast"))
    f.add_argument("--kernel", default="naive")
    f.add_argument("--profile", default=None)
    sub.add_parser("other-kernels")
    sub.add_parser("simulator")
    sm = sub.add_parser("summarize")
    sm.add_argument("raw", nargs="+")
    sm.add_argument("--sim", default=None)
    sm.add_argument("--profile", default=None)
    sm.add_argument("-o", "--output", required=True)
    sub.add_parser("debug-build")
    a = ap.parse_args(argv)
    if a.cmd == "nvbench":
        run_nvbench(a.variant, a.seq_lens, a.causal, a.timeout, a.min_samples)
        return 0
    if a.cmd == "compile-times":
        out = compile_times()
    elif a.cmd == "first-call":
        out = first_call(a.mode, kernel=a.kernel, profile_path=a.profile)
    elif a.cmd == "other-kernels":
        out = other_kernels_compile()
    elif a.cmd == "simulator":
        out = simulator_times()
    elif a.cmd == "summarize":
        raws = [json.load(open(p)) for p in a.raw]
        sim = json.load(open(a.sim)) if a.sim else None
        prof = open(a.profile).read() if a.profile else None
        res = summarize(raws[0], raws[1] if len(raws) > 1 else None, sim, prof)
        from ..explain import _jsonable
        with open(a.output, "w") as f:
            json.dump(_jsonable(res), f, indent=1)
            f.write("\n")
        return 0
    else:
        out = debug_build_times()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
