"""Fit time against exact work, the verdict rule, and the per-group host/batch numbers.

For a set of rows: ``t = a + b * work`` (least squares) and the slope of ``log t`` against
``log work`` (the work exponent); ``fixed_overhead_s = max(a, 0)``. ``t`` is the cold
"GPU Time" (else "CPU Time", else "Batch GPU"); work is the exact windowed FLOP count.

Verdict rule (the only one used)::

    overhead-dominated  iff  fixed_overhead_s >= 0.5 * median(t)  and  work_exponent < 0.5
    work-proportional   otherwise
    undetermined        when fewer than two distinct work values have a time, or when the
                        rows' minimum bytes span less than 2x (one problem size: the work
                        then varies only through the mask, and a kernel bound by memory
                        traffic, which is the same for every mask, would look flat too)
"""
from __future__ import annotations

import math
import statistics

import numpy as np

OVERHEAD_FRACTION = 0.5
FLAT_EXPONENT = 0.5
#: the least span of the rows' minimum bytes (max / min) for a verdict
MIN_SIZE_SPAN = 2.0
RULE = (f"overhead-dominated iff fixed_overhead_s >= {OVERHEAD_FRACTION} * median time "
        f"and work_exponent < {FLAT_EXPONENT}; undetermined when the minimum bytes span "
        f"less than {MIN_SIZE_SPAN:g}x")


def _pos(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def time_of(row):
    """``(seconds, column key)`` of the row's time used by the fit, or ``(None, None)``."""
    for key in ("gpu_time_s", "cpu_time_s", "batch_gpu_time_s"):
        if _pos(row.get(key)):
            return float(row[key]), key
    return None, None


def fit_overhead(works, times):
    """Least-squares ``t = a + b*work`` and the log-log slope. Returns dict (a, b, exponent,
    r2), or None with fewer than two distinct work values."""
    w = np.asarray(works, np.float64)
    t = np.asarray(times, np.float64)
    if len(w) != len(t):
        raise ValueError(f"works and times differ in length ({len(w)} vs {len(t)})")
    if len(np.unique(w)) < 2:
        return None
    b, a = np.polyfit(w, t, 1)
    pred = a + b * w
    ss_res = float(np.sum((t - pred) ** 2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    expo = float(np.polyfit(np.log(w), np.log(t), 1)[0])
    return {"a": float(a), "b": float(b), "exponent": expo,
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def verdict_of(fixed_overhead_s, median_t, work_exponent):
    """The verdict rule of the module docstring."""
    if fixed_overhead_s is None or work_exponent is None or median_t is None:
        return "undetermined"
    if fixed_overhead_s >= OVERHEAD_FRACTION * median_t and work_exponent < FLAT_EXPONENT:
        return "overhead-dominated"
    return "work-proportional"


def fit_group(rows):
    """Fit one group. Returns dict: points [(work, t)], time_column, fit, median_time_s,
    fixed_overhead_s, work_exponent, verdict."""
    pts, cols, nbytes = [], [], []
    for r in rows:
        t, key = time_of(r)
        if t is not None and _pos(r.get("windowed_flops")):
            pts.append((float(r["windowed_flops"]), t))
            cols.append(key)
            if _pos(r.get("min_bytes_fp16")):
                nbytes.append(float(r["min_bytes_fp16"]))
    fit = fit_overhead(*zip(*pts)) if len(pts) >= 2 else None
    median_t = statistics.median(p[1] for p in pts) if pts else None
    fixed = max(fit["a"], 0.0) if fit else None
    expo = fit["exponent"] if fit else None
    size_span = max(nbytes) / min(nbytes) if len(nbytes) == len(pts) and nbytes else None
    verdict = verdict_of(fixed, median_t, expo)
    if fit and size_span is not None and size_span < MIN_SIZE_SPAN:
        verdict = "undetermined"
    return {"points": pts, "time_column": max(set(cols), key=cols.count) if cols else None,
            "fit": fit, "median_time_s": median_t, "fixed_overhead_s": fixed,
            "work_exponent": expo, "size_span": size_span, "verdict": verdict}


def cold_times(row):
    """``(gpu, cpu)`` cold seconds of a row: the Log's Pass: Cold line when it has both (six
    significant digits), else the table's columns (three decimals); None where absent."""
    c = row.get("cold") or {}
    if _pos(c.get("gpu_time_s")) and _pos(c.get("cpu_time_s")):
        return c["gpu_time_s"], c["cpu_time_s"]
    return row.get("gpu_time_s"), row.get("cpu_time_s")


def host_s_per_call(rows):
    """Median over the rows of cold CPU time - cold GPU time (s), or None."""
    d = [cpu - gpu for gpu, cpu in map(cold_times, rows) if _pos(cpu) and _pos(gpu)]
    return statistics.median(d) if d else None


def batch_over_cold(rows):
    """Median over the rows of Batch GPU / cold GPU time, or None when no row has both."""
    q = [r["batch_gpu_time_s"] / r["gpu_time_s"] for r in rows
         if _pos(r.get("batch_gpu_time_s")) and _pos(r.get("gpu_time_s"))]
    return statistics.median(q) if q else None
