"""One function per symptom of a group of rows; each returns a list of sentences, empty when
its premise does not hold in that group (so every sentence is true of the log it describes).

Signature: ``symptom(rows, g) -> list[str]`` where ``g`` is the group's fit
(:func:`attn_numba.explain.fit.fit_group` plus ``host_s_per_call``/``batch_over_cold``).
Constants for the NVBench facts are cited from NVIDIA/nvbench (read at commit 66212f1).
"""
from __future__ import annotations

import math
import statistics

from .fit import FLAT_EXPONENT, OVERHEAD_FRACTION, _pos
from .render import fmt_t

#: ``nvbench/detail/statistics.cuh``: infinite standard deviation below 5 samples
NVBENCH_MIN_SAMPLES_FOR_NOISE = 5
#: ``nvbench/benchmark_base.cuh`` defaults and the stdrel criterion's
NVBENCH_DEFAULTS = {"min_samples": 10, "timeout_s": 15.0, "max_noise": 0.005, "min_time_s": 0.5}
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
    return [f"Verdict: {g['verdict']}. Time ({g['time_column']}) spans {fmt_t(min(times))}.."
            f"{fmt_t(max(times))} while the exact windowed work spans {min(works):.3g}.."
            f"{max(works):.3g} FLOP (x{max(works) / min(works):.0f}). Fit t = a + b*work: "
            f"a = {fmt_t(fit['a'])} fixed per call ({max(fit['a'], 0) / med:.0%} of the median "
            f"{fmt_t(med)}), b = {fit['b']:.3g} s/FLOP (R^2 {fit['r2']:.2f}); log-log slope "
            f"(work exponent) {fit['exponent']:.2f}. Rule: overhead-dominated iff a >= "
            f"{OVERHEAD_FRACTION:.0%} of the median time and exponent < {FLAT_EXPONENT}."]


def fixed_overhead(rows, g):
    """Premise: overhead-dominated. Says host work only when GPU = CPU (or the fit used CPU time)."""
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
           "the naive kernel on our H100 host) or similar" if fixed >= 0.1 else
           "per-call allocation, host copies, a disk-cache load (13 ms per fresh "
           "cuda.jit(cache=True) on our H100 host) or stream synchronisation")
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
    hb = [r for r in _cold_pairs(rows) if r["cpu_time_s"] - r["gpu_time_s"]
          >= HOST_FACTOR * r["gpu_time_s"]]
    if not hb:
        return []
    host = [r["cpu_time_s"] - r["gpu_time_s"] for r in hb]
    ratio = [(r["cpu_time_s"] - r["gpu_time_s"]) / r["gpu_time_s"] for r in hb]
    worst = max(hb, key=lambda r: (r["cpu_time_s"] - r["gpu_time_s"]) / r["gpu_time_s"])
    where = ("every row" if len(hb) == len(_cold_pairs(rows)) else
             f"{len(hb)} of {len(_cold_pairs(rows))} rows (S <= "
             f"{max(r.get('seq_len') or 0 for r in hb)})")
    h = statistics.median(host)
    if h >= 0.1:
        cause = ("seconds-scale host work is a compile in the call (0.82-0.97 s per fresh "
                 "cuda.jit of the naive kernel on our H100 host)")
    elif h >= 5e-3:
        cause = ("milliseconds of host work are a disk-cache load per call (13 ms per fresh "
                 "cuda.jit(cache=True) on our H100 host), host copies or a stream sync")
    else:
        cause = ("sub-millisecond host work is dispatch: 0.15-0.28 ms per Numba launch of "
                 "flash_tc or the v3 kernel (20 back-to-back launches, our H100 host), 0.11 ms per "
                 "compiled FlexAttention call, more with per-call allocation or a "
                 "torch.compile guard check (not measured here)")
    return [f"Host-bound in {where}: cold CPU - GPU = {fmt_t(min(host))}..{fmt_t(max(host))} "
            f"of host work per call (median {fmt_t(h)}), {min(ratio):.0f}x..{max(ratio):.0f}x "
            f"the GPU time (worst at S={worst.get('seq_len')}: {fmt_t(worst['gpu_time_s'])} "
            f"GPU, {fmt_t(worst['cpu_time_s'])} CPU). The blocking kernel was on (GPU < CPU), "
            "so this host time is outside the GPU time; a caller pays it on every call, so "
            f"there the public call is limited by the host, not the kernel. Usually {cause}."]


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
        msg += (" Batch ~ Cold at seconds per launch means each launch itself spends seconds "
                "on the host while the GPU waits. (Batch lines exist only when exec is not "
                "sync=True: NVBench's sync tag implies no_batch.)")
    return [msg]


def _warned(rows, kind):
    return [(r, w) for r in rows for w in r.get("warnings", []) if w["kind"] == kind]


def min_samples(rows, g):
    got = _warned(rows, "min_samples")
    if not got:
        return []
    ws = [w for _, w in got]
    tmo = [w["timeout_s"] for w in ws]
    per = [w["timeout_s"] / w["samples"] for w in ws if w["samples"]]
    msg = (f"'timed out before accumulating min_samples' ({len(ws)}x): NVBench stops a "
           f"measurement once its wall time passes --timeout (default "
           f"{NVBENCH_DEFAULTS['timeout_s']:.0f} s) even if fewer than min_samples (here "
           f"{sorted({w['min_samples'] for w in ws})}) samples were taken; the measurements "
           f"stopped after {min(tmo):.1f}-{max(tmo):.1f} s with only "
           f"{sorted({w['samples'] for w in ws})} samples")
    cold = [r["cold"]["gpu_time_s"] for r, w in got if w.get("measurement") == "cold"
            and r.get("cold") and _pos(r["cold"].get("gpu_time_s"))]
    if cold:
        msg += f", i.e. each sample cost {fmt_t(min(cold))}-{fmt_t(max(cold))}"
    if per and min(per) >= SECONDS:
        msg += (". With seconds per sample the timeout is reached after a handful of samples; "
                "a GPU kernel of milliseconds would collect hundreds in the same time")
    return [msg + "."]


def noise(rows, g):
    got = _warned(rows, "noise_over_threshold")
    out = []
    if got:
        ws = [w for _, w in got]
        infs = [w for w in ws if math.isinf(w["noise"])]
        thr = sorted({w["max_noise"] for w in ws})
        msg = (f"'timed out while over noise threshold' ({len(ws)}x, threshold "
               f"{', '.join(f'{t:.2%}' for t in thr)} = the stdrel criterion's max-noise; "
               "default 0.50%): ")
        if infs:
            msg += (f"{len(infs)} of them report inf% noise. That is not measured variability: "
                    "NVBench's standard_deviation() (nvbench/detail/statistics.cuh) returns "
                    f"infinity when it has fewer than {NVBENCH_MIN_SAMPLES_FOR_NOISE} samples, "
                    "so those measurements had fewer (newer NVBench prints 'before accumulating "
                    "enough samples to estimate noise' instead).")
        if len(infs) < len(ws):
            msg += (f"{'; ' if infs else ''}{len(ws) - len(infs)} report a finite noise: the "
                    "relative standard deviation of the samples stayed above the threshold.")
        out.append(msg)
    if any(isinstance(r.get("gpu_noise"), float) and math.isinf(r["gpu_noise"]) for r in rows):
        out.append(f"The table's 'inf%' Noise cells: fewer than {NVBENCH_MIN_SAMPLES_FOR_NOISE} "
                   "samples in that measurement, not variability.")
    if _warned(rows, "noise_samples"):
        out.append("'timed out before accumulating enough samples to estimate noise': fewer than "
                   f"{NVBENCH_MIN_SAMPLES_FOR_NOISE} samples, so NVBench cannot estimate the noise "
                   "(it reports inf%).")
    if _warned(rows, "noise_unavailable"):
        out.append("'timed out while unable to estimate noise': the samples gave a non-finite "
                   "relative standard deviation (for example all-zero times).")
    return out


def min_time(rows, g):
    got = _warned(rows, "min_time")
    if not got:
        return []
    return [f"'timed out before accumulating min_time' ({len(got)}x): the stdrel criterion also "
            "wants min-time (default 0.5 s) of accumulated GPU time before it may stop; with a "
            "short kernel and host work per sample the wall-clock timeout comes first."]


def other_warnings(rows, g):
    out = []
    if _warned(rows, "deadlock"):
        out.append("Blocking-kernel / deadlock warning: the launcher synchronized while NVBench's "
                   "blocking kernel held the stream; use state.exec(..., sync=True) or remove "
                   "the synchronization from the launcher.")
    th = _warned(rows, "throttle")
    if th:
        out.append(f"GPU clock throttling ({len(th)}x): NVBench discarded the trial and paused; "
                   "times of those states may still carry some of it.")
    oth = _warned(rows, "other")
    if oth:
        out.append("Other warnings: " + "; ".join(sorted({w["text"] for _, w in oth})))
    return out


def bw_util(rows, g, device=None):
    bw = [r for r in rows if r.get("bw_util") is not None and _pos(r.get("gpu_time_s"))]
    if not bw:
        return []
    r = max(bw, key=lambda r: r.get("seq_len") or 0)
    msg = (f"BWUtil {r['bw_util']:.2%} at seq_len={r.get('seq_len')}: NVBench divides the bytes "
           "the benchmark declared (add_global_memory_reads/writes) by the GPU time and by the "
           "bus peak")
    peak = (device or {}).get("bus_peak_Bps")
    if peak and r.get("min_bytes_fp16"):
        t_mem = r["min_bytes_fp16"] / peak
        x = r["gpu_time_s"] / t_mem
        msg += (f". Moving Q, K, V and O once at the bus peak takes {fmt_t(t_mem)}; the measured "
                f"{fmt_t(r['gpu_time_s'])} is {x:.0f}x longer")
        if x >= 100:
            msg += ", far beyond anything memory traffic explains"
    return [msg + "."]


def est_flops(rows, g):
    """Premise for the S^2 sentence: the column grows as S^2 and overstates the exact work."""
    est = [r for r in rows if _pos(r.get("est_flops")) and _pos(r.get("windowed_flops"))]
    if not est:
        return []
    over = [r["est_flops"] / r["windowed_flops"] for r in est]
    if all(abs(o - 1) < 0.01 for o in over):
        return ["'Est. FLOPS' equals the exact windowed work of every row (4*D*H per "
                "(query, key) pair), so FLOP/s derived from it are right."]
    lo, hi = min(est, key=lambda r: r["seq_len"]), max(est, key=lambda r: r["seq_len"])
    s2 = (hi["seq_len"] > lo["seq_len"] and all(
        abs(r["est_flops"] / r["dense_flops"] - 1) < 0.01 for r in est if r.get("dense_flops")))
    top = hi["est_flops"] / hi["windowed_flops"]
    if not (s2 and top > 1.05):
        return [f"'Est. FLOPS' is {min(over):.2f}x..{max(over):.2f}x the exact windowed work; "
                "this tool fits against the windowed work."]
    return [f"'Est. FLOPS' grows as S^2 ({lo['est_flops']:.3g} at S={lo['seq_len']} to "
            f"{hi['est_flops']:.3g} at S={hi['seq_len']}) and equals 2*S^2*H*D, the dense count "
            f"that ignores the window. With window ({lo.get('window_left')}, "
            f"{lo.get('window_right')}) each query sees at most {hi['max_keys_per_query']} keys, "
            f"so the exact forward work (4*D*H per (query, key) pair) is {lo['windowed_flops']:.3g}"
            f" to {hi['windowed_flops']:.3g} FLOP; at S={hi['seq_len']} the column overstates the "
            f"work {top:.1f}x. Any FLOP/s derived from it is wrong; this tool fits against the "
            "windowed work."]


#: every symptom, in the order its sentences are printed
SYMPTOMS = (verdict, fixed_overhead, failures, skipped, gpu_equals_cpu, host_bound,
            batch_vs_cold, min_samples, noise, min_time, other_warnings, bw_util, est_flops)
