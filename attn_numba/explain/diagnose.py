"""One function per symptom of a group of rows; each returns a list of sentences, empty when
its premise does not hold in that group (so every sentence is true of the log it describes).

Signature: ``symptom(rows, g) -> list[str]`` where ``g`` is the group's fit
(:func:`attn_numba.explain.fit.fit_group` plus ``host_s_per_call``/``batch_over_cold``).
Constants for the NVBench facts are cited from NVIDIA/nvbench (read at commit 66212f1).
"""
from __future__ import annotations

import statistics

from .fit import FLAT_EXPONENT, OVERHEAD_FRACTION, _pos, cold_times
from .diagnose_columns import (NVBENCH_DEFAULTS, NVBENCH_MIN_SAMPLES_FOR_NOISE, bw_util,
                               est_flops, min_samples, min_time, noise, other_warnings)
from .render import fmt_t

#: host-bound: cold CPU - GPU at least this many times the GPU time
HOST_FACTOR = 2.0
#: launch-rate-bound: Batch GPU at least this many times the cold GPU time
BATCH_FACTOR = 2.0
#: "seconds per launch": both Batch and cold GPU times at least this long
SECONDS = 0.5
#: GPU time equals CPU time: relative difference below this
SAME_TIME = 0.01


def _cold_pairs(rows):
    return [r for r in rows if _pos(r.get("gpu_time_s")) and _pos(r.get("cpu_time_s"))]


def verdict(rows, g):
    if not g["fit"]:
        return ["Verdict: undetermined (fewer than two rows with distinct work and a time)."]
    works, times = [p[0] for p in g["points"]], [p[1] for p in g["points"]]
    fit, med = g["fit"], g["median_time_s"]
    if g["verdict"] == "undetermined":
        return [f"Verdict: undetermined. The rows share one problem size (minimum bytes "
                f"x{g['size_span']:.1f}): the work varies only through the mask "
                f"(x{max(works) / min(works):.1f}), and a kernel bound by memory traffic, the "
                f"same for every mask, would look as flat as a fixed cost per call (time "
                f"{fmt_t(min(times))}..{fmt_t(max(times))}). A log over several sequence "
                f"lengths tells them apart."]
    return [f"Verdict: {g['verdict']}. Time ({g['time_column']}) spans {fmt_t(min(times))}.."
            f"{fmt_t(max(times))} while the exact windowed work spans {min(works):.3g}.."
            f"{max(works):.3g} FLOP (x{max(works) / min(works):.0f}). Fit t = a + b*work: "
            f"a = {fmt_t(fit['a'])} fixed per call ({max(fit['a'], 0) / med:.0%} of the median "
            f"{fmt_t(med)}), b = {fit['b']:.3g} s/FLOP (R^2 {fit['r2']:.2f}); log-log slope "
            f"(work exponent) {fit['exponent']:.2f}. Rule: overhead-dominated iff a >= "
            f"{OVERHEAD_FRACTION:.0%} of the median time and exponent < {FLAT_EXPONENT}."]


def fixed_overhead(rows, g):
    """Premise: overhead-dominated. Says host work only when GPU = CPU (or the fit used CPU
    time); otherwise says the GPU time itself is flat."""
    if g["verdict"] != "overhead-dominated":
        return []
    fixed = g["fixed_overhead_s"]
    pairs = _cold_pairs(rows)
    hosty = g["time_column"] == "cpu_time_s" or (pairs and all(
        abs(r["gpu_time_s"] - r["cpu_time_s"]) < SAME_TIME * r["cpu_time_s"] for r in pairs))
    if not hosty:
        return [f"A fixed cost of ~{fmt_t(fixed)} per call, independent of the work, dominates "
                "the GPU time itself: the kernel's duration does not follow the work (launch "
                "latency, a grid or loop sized independently of the axes, or waiting on "
                "something else on the device)."]
    why = ("JIT compilation of the kernel on every call (0.82-0.97 s for a fresh cuda.jit of "
           "the naive kernel on the round-1 H100, results/h100/pathology.json) or similar"
           if fixed >= 0.1 else
           "per-call allocation, host copies, a disk-cache load (13 ms per fresh "
           "cuda.jit(cache=True) on the round-1 H100, results/h100/pathology.json) or stream "
           "synchronisation")
    return [f"A fixed cost of ~{fmt_t(fixed)} per call, independent of the work, dominates: "
            f"that is host-side work inside the timed launcher ({why}), not the attention "
            "kernel. Fix: compile once outside the launcher (module-level kernel or lru_cached "
            "factory, warm it up before state.exec), pass device arrays allocated outside the "
            "launcher, launch on launch.get_stream() via cuda.external_stream, and keep "
            "NVBench's blocking kernel on (no host sync in the launcher)."]


def failures(rows, g):
    failed = [r for r in rows if r.get("failures")]
    if not failed:
        return []
    msg = (f"{len(failed)} state(s) failed ("
           + "; ".join(sorted({f[:120] for r in failed for f in r["failures"]})) + ").")
    if any("deadlock" in f.lower() for r in failed for f in r["failures"]):
        msg += (" 'Deadlock detected' means the launcher synchronised while NVBench's blocking "
                "kernel held the stream (host copies of NumPy arrays, cuMemFree, a Numba "
                "compile/module load in the launcher, or an explicit sync); the blocking kernel "
                "gave up after blocking_kernel_timeout and NVBench aborted the state. Remove the "
                "synchronisation from the launcher; state.exec(..., sync=True) avoids the "
                "deadlock but then host work is timed as GPU time.")
    return [msg]


def skipped(rows, g):
    sk = [r for r in rows if r.get("skipped")]
    if not sk:
        return []
    return [f"{len(sk)} state(s) skipped (" + "; ".join(sorted({r['skipped'][:100] for r in sk}))
            + "); they have no time and are not fitted."]


def gpu_equals_cpu(rows, g):
    """Premise: every cold measurement has GPU = CPU within 1 %."""
    cold = [r["cold"] for r in rows if r.get("cold") and _pos(r["cold"].get("gpu_time_s"))
            and _pos(r["cold"].get("cpu_time_s"))]
    if not cold:
        return []
    rel = [abs(c["gpu_time_s"] - c["cpu_time_s"]) / c["cpu_time_s"] for c in cold]
    if max(rel) >= SAME_TIME:
        return []
    diff = [c["cpu_time_s"] - c["gpu_time_s"] for c in cold]
    return [f"Cold GPU time equals CPU time within {max(rel):.3%} (CPU - GPU = "
            f"{fmt_t(min(diff))}..{fmt_t(max(diff))}). In a cold sample NVBench starts "
            "the CPU timer, queues its blocking kernel, then records the CUDA start event, "
            "calls the launcher, records the stop event and releases the stream; so host "
            "work inside the launcher is normally excluded from GPU time. GPU == CPU means "
            "the start event fired as soon as the host recorded it: the blocking kernel was "
            "off (exec sync=True, --disable-blocking-kernel, state.set_disable_blocking_"
            "kernel) and the GPU sat idle while the launcher did host work, which is then "
            "counted as GPU time."]


def host_bound(rows, g):
    """Premise: blocking kernel on (GPU < CPU) and CPU - GPU >= HOST_FACTOR x GPU in some row."""
    pairs = [(r, *cold_times(r)) for r in rows]
    pairs = [(r, gpu, cpu) for r, gpu, cpu in pairs if _pos(gpu) and _pos(cpu)]
    hb = [(r, gpu, cpu) for r, gpu, cpu in pairs if cpu - gpu >= HOST_FACTOR * gpu]
    if not hb:
        return []
    host = [cpu - gpu for _, gpu, cpu in hb]
    ratio = [(cpu - gpu) / gpu for _, gpu, cpu in hb]
    worst, wg, wc = max(hb, key=lambda t: (t[2] - t[1]) / t[1])
    top_s = max(r.get("seq_len") or 0 for r, _, _ in hb)
    where = ("every row" if len(hb) == len(pairs) else
             f"{len(hb)} of {len(pairs)} rows (S <= {top_s})")
    h = statistics.median(host)
    if h >= 0.1:
        cause = ("seconds-scale host work is a compile in the call (0.82-0.97 s per fresh "
                 "cuda.jit of the naive kernel on the round-1 H100, results/h100/pathology.json)")
    elif h >= 5e-3:
        cause = ("milliseconds of host work are a disk-cache load per call (13 ms per fresh "
                 "cuda.jit(cache=True) on the round-1 H100, results/h100/pathology.json), host "
                 "copies or a stream sync")
    else:
        cause = ("sub-millisecond host work is dispatch: 0.15-0.28 ms per Numba launch of "
                 "flash_tc or the v3 kernel (20 back-to-back launches on the round-1 H100), "
                 "0.11 ms per compiled FlexAttention call, more with per-call allocation or a "
                 "torch.compile guard check (not measured here)")
    return [f"Host-bound in {where}: cold CPU - GPU = {fmt_t(min(host))}..{fmt_t(max(host))} "
            f"of host work per call (median {fmt_t(h)}), {min(ratio):.0f}x..{max(ratio):.0f}x "
            f"the GPU time (worst at S={worst.get('seq_len')}: {fmt_t(wg)} GPU, {fmt_t(wc)} "
            "CPU). The blocking kernel was on (GPU < CPU), so this host time is outside the GPU "
            "time; a caller pays it on every call, so there the public call is limited by the "
            f"host, not the kernel. Usually {cause}."]


def batch_vs_cold(rows, g):
    pairs = [(r["gpu_time_s"], r["batch_gpu_time_s"]) for r in rows
             if _pos(r.get("gpu_time_s")) and _pos(r.get("batch_gpu_time_s"))]
    if not pairs:
        return []
    ratio = [b / c for c, b in pairs]
    msg = (f"Batch GPU / Cold GPU = {min(ratio):.2f}..{max(ratio):.2f}. Batch launches back to "
           "back without syncing, so for a GPU-bound kernel it is at most about the cold time "
           "(no L2 flush, no per-sample sync, launch latency hidden). In a batch NVBench holds "
           "the stream with its blocking kernel only for the first two launches, so host time "
           "spent in later launches is timed as GPU time.")
    if max(ratio) >= BATCH_FACTOR:
        per = [b for c, b in pairs if b / c >= BATCH_FACTOR]
        msg += (f" Here Batch is up to {max(ratio):.1f}x the cold time ({fmt_t(min(per))}.."
                f"{fmt_t(max(per))} per launch): back-to-back launches are limited by host work "
                "per launch, not by the kernel.")
    if all(c >= SECONDS and b >= SECONDS for c, b in pairs) and \
            all(1 / BATCH_FACTOR < q < BATCH_FACTOR for q in ratio):
        msg += (" Batch ~ Cold at seconds per launch: back-to-back launches are no faster than "
                "isolated ones, so the seconds are a per-call cost that overlapping launches "
                "does not hide. (Batch lines exist only when exec is not sync=True: NVBench's "
                "sync tag implies no_batch.)")
    return [msg]


def batch_timed_host(rows, g):
    """Premise: every Batch line has total GPU = total wall (within 2 %), seconds per launch and
    Batch within 2x of Cold: the batch loop timed the launches' host work."""
    bs = [r for r in rows if r.get("batch") and _pos(r["batch"].get("total_gpu_s"))
          and _pos(r["batch"].get("total_wall_s")) and _pos(r.get("gpu_time_s"))
          and _pos(r.get("batch_gpu_time_s"))]
    if not bs or not all(
            abs(r["batch"]["total_gpu_s"] - r["batch"]["total_wall_s"])
            <= 0.02 * r["batch"]["total_wall_s"] and r["batch_gpu_time_s"] >= SECONDS
            and 1 / BATCH_FACTOR < r["batch_gpu_time_s"] / r["gpu_time_s"] < BATCH_FACTOR
            for r in bs):
        return []
    n = sorted({r["batch"].get("samples") for r in bs if r["batch"].get("samples")})
    return [f"Every Batch line has total GPU = total wall time ({len(bs)} states, "
            f"{min(n) if n else '?'}..{max(n) if n else '?'} launches per state): the batch "
            "loop timed the launches' host work, so no blocking kernel held the stream in the "
            "batch. NVBench since 2025-04-08 (commit 851d7aa; every cuda-bench release) always "
            "blocks the first min(batch size, 2) launches of a batch, which leaves their host "
            "work untimed (total wall >> total GPU) or deadlocks a launcher that synchronises; "
            "before that commit --disable-blocking-kernel also removed it from batches, and "
            "with seconds per launch every batch is one launch until the timeout. So: an older "
            "NVBench run with the blocking kernel disabled, or a GPU busy for seconds per call "
            "(notes/explain.md, 'The seed's Batch column')."]


#: every symptom, in the order its sentences are printed
SYMPTOMS = (verdict, fixed_overhead, failures, skipped, gpu_equals_cpu, host_bound,
            batch_vs_cold, batch_timed_host, min_samples, noise, min_time, other_warnings,
            bw_util, est_flops)
