"""The NVBench benchmark ``run_mha_fwd`` (cuda-bench), with the log's axes and summary columns.

For each state (one kernel on one config) the benchmark function

1. builds the :class:`~attn_numba.bench.cases.Case` (inputs shared by the kernels of a config);
2. adds the log's summary columns (Q/K/V/Output sizes, Tokens as the element count,
   ``Est. FLOPS`` = exact windowed FLOPs, ``Dense FLOPS (log)`` = the log's 2*S^2*H*D, Memory
   Usage) and declares the minimum global-memory reads and writes, so NVBench's GlobalMem BW and
   BWUtil are meaningful;
3. runs the call once on NVBench's stream and checks it against the reference (this also
   compiles and warms the kernel up); a wrong package kernel is skipped, not timed, and a peer
   that misses the tolerance is timed and flagged in ``summary.json``;
4. probes once per kernel that a launch does not wait for the stream (see
   :func:`launch_is_async`): a launcher that synchronises would deadlock against NVBench's
   blocking kernel; such a kernel is measured with ``sync=True`` instead, and says so;
5. hands the launch to ``state.exec``;
6. afterwards records ``call_time_s`` (:mod:`attn_numba.bench.calltime`): the median
   per-call time of the public call on torch tensors, back to back, which is what a user's
   loop sees (NVBench's numbers hide host work or count GPU time only).

Every state, ours and the peers', uses the plain ``state.exec`` (NVBench's cold and batch
measurements, no manual timer). Our launcher is ``mha_fwd`` on device arrays with
``out=``/``lse_out=`` buffers allocated once per case outside the launcher and ``stream=``
NVBench's raw stream: it allocates nothing, copies nothing and does not synchronise. The
PyTorch peers reuse blocks of PyTorch's caching allocator. Host work per call shows up in the
batch time where it exceeds the kernel time.
"""
from __future__ import annotations

import functools
import sys
import time
import warnings

from .cases import make_case
from ..warmup import count_compiles
from .grid import INT_AXES, Config, derived, fmt_mib, iter_configs

BENCHMARK = "run_mha_fwd"


class Progress:
    """One line per state on stderr: position, elapsed time, a crude estimate of time left."""

    def __init__(self, total, stream=sys.stderr):
        self.total, self.done, self.t0, self.stream = total, 0, time.perf_counter(), stream

    def start(self, kernel, cfg):
        self.done += 1
        el = time.perf_counter() - self.t0
        left = el / (self.done - 1) * (self.total - self.done + 1) if self.done > 1 else None
        eta = f", ~{left:4.0f} s left" if left is not None else ""
        self.line = (f"[bench {self.done:3d}/{self.total} {el:5.0f} s{eta}] {kernel:<13} "
                     f"S={cfg.seq_len:<5d} causal={cfg.causal}")
        print(self.line + ": compile + check ...", file=self.stream, flush=True)

    def note(self, msg):
        print(self.line + ": " + msg, file=self.stream, flush=True)


@functools.lru_cache(maxsize=None)
def _busy_kernel():
    """One thread running a dependent chain of ``n`` multiply-adds (~0.1-0.3 s for 1e8)."""
    from numba import cuda, float32

    @cuda.jit
    def busy(out, n):
        x = float32(out[0])
        for _ in range(n):
            x = x * float32(0.9999999) + float32(1e-7)
        out[0] = x

    return busy


def launch_is_async(case, ptr, iters=100_000_000):
    """Does ``case.launch`` return without waiting for the stream? NVBench's blocking kernel
    holds the stream while the launcher runs, so a launcher that synchronises (a free, a staged
    copy) would deadlock. Probe it safely: keep the stream busy with a finite kernel, time the
    host call, then wait. Returns ``(is_async, call_s, busy_s)``."""
    if ptr is None:  # no real stream (the simulator): nothing to probe
        return True, None, None
    import numpy as np
    from numba import cuda
    from numba.core.errors import NumbaPerformanceWarning
    s = cuda.external_stream(ptr)
    buf = cuda.to_device(np.ones(1, np.float32), stream=s)
    busy = _busy_kernel()
    with warnings.catch_warnings():  # one thread on purpose
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        busy[1, 1, s](buf, 1000)  # compile + load outside the probe
        s.synchronize()
        t0 = time.perf_counter()
        busy[1, 1, s](buf, iters)
    t1 = time.perf_counter()
    out = case.launch(ptr)
    t2 = time.perf_counter()
    s.synchronize()
    t3 = time.perf_counter()
    del out
    busy_s = t3 - t0
    return (t2 - t1) < 0.5 * busy_s, t2 - t1, busy_s


def launcher(case):
    """NVBench launcher: one call of ``case`` on NVBench's stream (no allocation for our
    kernels: their outputs are the case's ``out=`` buffers)."""
    def launch_on(launch):
        case.launch(launch.get_stream().addressof())

    return launch_on


def measure_call_time(case):
    """``call_time_s`` of ``case``'s public call (None without torch or on error)."""
    from .calltime import call_time_s
    return call_time_s(case.public_call())


def add_columns(state, cfg):
    """The log's summary columns and NVBench's element / byte counts for ``cfg``."""
    d = derived(cfg)
    state.add_summary("Q Tensor", fmt_mib(d["q_bytes"]))
    state.add_summary("K Tensor", fmt_mib(d["k_bytes"]))
    state.add_summary("V Tensor", fmt_mib(d["v_bytes"]))
    state.add_summary("Output", fmt_mib(d["out_bytes"]))
    state.add_element_count(d["tokens"], "Tokens")
    state.add_summary("Est. FLOPS", int(d["flops"]))
    state.add_summary("Dense FLOPS (log)", int(d["dense_flops"]))
    state.add_summary("Memory Usage", fmt_mib(d["bytes"]))
    state.add_global_memory_reads(d["q_bytes"] + d["k_bytes"] + d["v_bytes"])
    state.add_global_memory_writes(d["out_bytes"])


def register(kernels, grid, checks, modes, progress, call_times=None):
    """Register ``run_mha_fwd`` over ``kernels`` x ``grid``; check results go into ``checks``,
    the measurement mode of each state into ``modes`` and ``call_time_s`` into
    ``call_times``, all keyed by ``(kernel, cfg.key())``."""
    call_times = {} if call_times is None else call_times
    import cuda.bench as bench
    async_ok = {}

    def run_mha_fwd(state):
        kernel = state.get_string("Kernel")
        cfg = Config(**{a: int(state.get_int64(a)) for a in INT_AXES})
        progress.start(kernel, cfg)
        try:
            case = make_case(kernel, cfg)
            why = case.unsupported()
            if why:
                progress.note("skipped: " + why)
                state.skip(why)
                return
            add_columns(state, cfg)
            ptr = state.get_stream().addressof()
            t_check = time.perf_counter()
            res = case.check(ptr)
            t_check = time.perf_counter() - t_check
            checks[(kernel, cfg.key())] = res.as_dict()
            if not res.ok and case.kind == "kernel":
                progress.note(f"check {res}; skipped")
                state.skip(f"output check failed: {res}")
                return
            if kernel not in async_ok:  # once per kernel, on its first config
                async_ok[kernel], call_s, busy_s = launch_is_async(case, ptr)
                if call_s is not None:
                    progress.note(
                        f"launch returns in {call_s * 1e3:.2f} ms while the stream is busy for "
                        f"{busy_s * 1e3:.0f} ms: " + (
                            "asynchronous, NVBench's blocking kernel is safe" if async_ok[kernel]
                            else "it WAITS for the stream; timing with sync=True (no blocking "
                                 "kernel, GPU time includes host work)"))
            blocking = async_ok[kernel]
            mode = "cold + batch" + (", blocking kernel" if blocking else ", sync")
            modes[(kernel, cfg.key())] = mode
            progress.note(f"check {res} after {t_check:.1f} s of compile + check; timing ({mode})")
            # guardrail: a compile inside the timed region is the log's pathology
            with count_compiles() as compiles:
                state.exec(launcher(case), sync=not blocking)
            if compiles.count:
                modes[(kernel, cfg.key())] = mode + f", {compiles.count} COMPILES IN TIMED REGION"
                progress.note(f"WARNING: {compiles.count} Numba compilations inside state.exec")
            try:
                call_times[(kernel, cfg.key())] = t = measure_call_time(case)
                progress.note(f"public call {t * 1e6:.1f} us per call (back to back)")
            except Exception as exc:  # noqa: BLE001 - recorded as null, the state stands
                progress.note(f"call time not measured: {type(exc).__name__}: {exc}"[:300])
        except Exception as exc:  # one broken case must not end the sweep
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            progress.note("error, skipped: " + msg)
            checks.setdefault((kernel, cfg.key()), None)
            state.skip("error: " + msg)

    b = bench.register(run_mha_fwd)
    b.set_name(BENCHMARK)
    b.add_string_axis("Kernel", list(kernels))
    for a in INT_AXES:
        b.add_int64_axis(a, [int(x) for x in grid[a]])
    return b


def run(kernels, grid, json_path, md_path, nvbench_args=(), call_times=None):
    """Register and run the benchmark; NVBench prints its log and markdown table to stdout and
    writes ``json_path`` and ``md_path``. Returns ``(checks, modes, argv)``; ``call_times``
    (a dict, when given) receives each state's ``call_time_s``."""
    import cuda.bench as bench
    total = len(list(iter_configs(grid))) * len(kernels)
    checks, modes = {}, {}
    register(kernels, grid, checks, modes, Progress(total), call_times)
    argv = ["attn-numba-bench", "--devices", "0", "--json", str(json_path),
            "--md", "stdout", "--md", str(md_path), *nvbench_args]
    bench.run_all_benchmarks(argv)
    return checks, modes, argv
