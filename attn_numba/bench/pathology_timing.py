"""Compile and first-call timings of the pathology reproduction
(:mod:`attn_numba.bench.pathology`), each meant to run in a fresh process."""
from __future__ import annotations

import time

import numpy as np

from .pathology_nvbench import _grid, _host_inputs, _problem, _scalars

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
