"""Symptoms read from NVBench's warnings and from the result columns (BWUtil, Est. FLOPS).

Same contract as :mod:`attn_numba.explain.diagnose`: ``symptom(rows, g) -> list[str]``, empty
when the premise does not hold in the group.
"""
from __future__ import annotations

import math

from .fit import _pos
from .render import fmt_t

#: ``nvbench/detail/statistics.cuh``: infinite standard deviation below 5 samples
NVBENCH_MIN_SAMPLES_FOR_NOISE = 5
#: ``nvbench/benchmark_base.cuh`` defaults and the stdrel criterion's
NVBENCH_DEFAULTS = {"min_samples": 10, "timeout_s": 15.0, "max_noise": 0.005, "min_time_s": 0.5}
#: "seconds per sample"
SECONDS = 0.5


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
