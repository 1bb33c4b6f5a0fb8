"""The NVBench variants of the pathology reproduction (:mod:`attn_numba.bench.pathology`):
``run_mha_fwd`` on the naive kernel with the log's axes, one launcher per variant."""
from __future__ import annotations

import json
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
