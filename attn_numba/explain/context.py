"""What the kernel itself should cost: a roofline from the log's device header, the committed
results (``results/*/summary.json``) and the pathology reproduction
(``results/h100/pathology.json``)."""
from __future__ import annotations

import json
import os
import statistics

from .render import fmt_t
from .rows import AXES

#: peak arithmetic per SM per clock, by SM major.minor: (fp32 FLOP, dense fp16 tensor FLOP).
#: From the CUDA programming guide's throughput table (fp32 FMA lanes x 2) and the A100/H100
#: whitepapers (fp16 tensor FLOP/clk/SM: 2048 on sm_80, 4096 on sm_90).
PEAK_FLOP_PER_CLK_SM = {80: (128, 2048), 86: (256, 1024), 89: (256, 1024), 90: (256, 4096)}


def load_summaries(results_dir=None):
    """The GPU ``results/*/summary.json`` files in the order :mod:`attn_numba.sources` gives
    them (newest device first, older sets marked ``_history``; the packaged summary when the
    folder has none), each with ``_path`` as the reader can open it. [] when there is none."""
    from ..sources import display_path, ordered_summaries
    out = []
    for path, data, history in ordered_summaries(results_dir):
        if isinstance(data, dict) and isinstance(data.get("records"), list):
            out.append(dict(data, _path=display_path(path), _history=history))
    return out


def load_pathology(results_dir=None):
    """``results/h100/pathology.json`` (the reproduction), with ``_path`` as the reader can
    open it; None when absent or unreadable."""
    from ..sources import display_path
    from ..sources import results_dir as default_results
    path = os.path.join(results_dir or default_results(), "h100", "pathology.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return dict(data, _path=display_path(path)) if isinstance(data, dict) else data


def roofline(row, device):
    """Lower bounds (s) for one row on ``device`` (from the log header): memory and arithmetic."""
    out = {}
    bw = device.get("bus_peak_Bps")
    if bw and row.get("min_bytes_fp16"):
        out["memory_s"] = row["min_bytes_fp16"] / bw
    sm = device.get("sm_version")
    if sm and device.get("num_sms") and device.get("clock_hz") and row.get("windowed_flops"):
        per = PEAK_FLOP_PER_CLK_SM.get(sm // 10)  # "SM Version: 800" -> 80
        if per:
            scale = device["num_sms"] * device["clock_hz"]
            out["fp32_peak_flops"] = per[0] * scale
            out["tensor_fp16_peak_flops"] = per[1] * scale
            out["fp32_compute_s"] = row["windowed_flops"] / out["fp32_peak_flops"]
            out["tensor_compute_s"] = row["windowed_flops"] / out["tensor_fp16_peak_flops"]
    return out


def roofline_sentence(rows, device):
    """Premise: a device header and a row with work and a time."""
    timed = [r for r in rows if r.get("windowed_flops") and r.get("gpu_time_s")]
    if not device or not timed:
        return []
    worst = max(timed, key=lambda r: r["windowed_flops"])
    rl = roofline(worst, device)
    parts = []
    if "memory_s" in rl:
        parts.append(f"memory {fmt_t(rl['memory_s'])} (Q, K, V, O once at "
                     f"{device['bus_peak_Bps'] / 1e9:.0f} GB/s)")
    if "fp32_compute_s" in rl:
        parts.append(f"fp32 CUDA cores {fmt_t(rl['fp32_compute_s'])} (peak "
                     f"{rl['fp32_peak_flops'] / 1e12:.1f} TFLOP/s)")
        parts.append(f"fp16 tensor cores {fmt_t(rl['tensor_compute_s'])} (peak "
                     f"{rl['tensor_fp16_peak_flops'] / 1e12:.0f} TFLOP/s)")
    if not parts:
        return []
    return [f"Roofline on the {device.get('name', 'logged device')} (from the log header: "
            f"{device.get('num_sms')} SMs at {(device.get('clock_hz') or 0) / 1e6:.0f} MHz): the "
            f"largest row (S={worst.get('seq_len')}, causal={worst.get('causal')}) needs at "
            f"least " + ", ".join(parts) + f"; the log measured {fmt_t(worst['gpu_time_s'])}."]


def _same_axes(rec, row):
    for a in AXES:
        if row.get(a) is not None and a in rec and int(rec[a]) != int(row[a]):
            return False
    return "seq_len" in rec


def committed_sentences(rows, device, summaries):
    """One sentence per results file with records at the rows' work axes, in the order of
    ``summaries`` (newest device first; older sets say they are history)."""
    out = []
    for s in summaries:
        by_kernel = {}
        for rec in s.get("records", []):
            if rec.get("gpu_time_s") is None:
                continue
            if any(_same_axes(rec, r) for r in rows):
                by_kernel.setdefault(rec.get("kernel", "?"), []).append(rec)
        if not by_kernel:
            continue
        copy = (s.get("ceilings") or {}).get("copy_gbps")
        bw = device.get("bus_peak_Bps") if device else None
        scale = copy * 1e9 / bw if copy and bw else None
        parts = []
        for kern, recs in sorted(by_kernel.items()):
            ts = [r["gpu_time_s"] for r in recs]
            ss = [r["seq_len"] for r in recs]
            part = f"{kern} {fmt_t(min(ts))}..{fmt_t(max(ts))} over S={min(ss)}..{max(ss)}"
            if scale and abs(scale - 1) > 0.05:
                part += f" (~{fmt_t(max(ts) * scale)} at S={max(ss)} on the logged device)"
            parts.append(part)
        kind = "Older results (history)" if s.get("_history") else "Committed results"
        msg = (f"{kind} on {s.get('device', '?')} ({s.get('_path')}, {s.get('date') or 'undated'})"
               f" for the log's axes: " + "; ".join(parts) + ".")
        if scale and abs(scale - 1) > 0.05:
            msg += (f" The '~' values scale by memory bandwidth ({copy:.0f} GB/s measured copy "
                    f"bandwidth there vs the logged {bw / 1e9:.0f} GB/s bus peak, x{scale:.1f}): "
                    "a rough estimate for a memory-bound kernel, optimistic for a compute-bound "
                    "one.")
        out.append(msg)
    return out


def pathology_sentence(p):
    """One sentence from results/h100/pathology.json (written by attn_numba.bench.pathology)."""
    try:
        ct = p.get("compile_times") or {}
        nv = p.get("nvbench") or {}
        bits = []
        if ct.get("rejit_per_call_s"):
            bits.append("a fresh cuda.jit of the naive kernel per call costs "
                        f"{fmt_t(statistics.median(ct['rejit_per_call_s']))} of host time")
        if ct.get("cold_process_first_call_s") is not None:
            bits.append("its first call in a cold process "
                        f"{fmt_t(ct['cold_process_first_call_s'])}")
        h1 = [r for v in ("H1_sync", "H1_noblock", "H1_noblock_nobatch")
              for r in (nv.get(v) or {}).get("rows", []) if r.get("cold_gpu_s")]
        if h1:
            ts = [r["cold_gpu_s"] for r in h1]
            bits.append(f"an NVBench launcher doing that (sync=True or blocking kernel off) "
                        f"reproduces the log's signature: {fmt_t(min(ts))}..{fmt_t(max(ts))} "
                        f"per call, GPU = CPU, timeouts before min_samples")
        if any(r.get("deadlock") for r in (nv.get("H1_default") or {}).get("rows", [])):
            bits.append("under the default exec (blocking kernel) the same launcher deadlocks")
        fx = nv.get("fixed") or {}
        ts = [r["cold_gpu_s"] for r in fx.get("rows", []) if r.get("cold_gpu_s")]
        if ts:
            bits.append(f"the fixed harness times the same kernel at {fmt_t(min(ts))}.."
                        f"{fmt_t(max(ts))} ({fx.get('verdict')}, work exponent "
                        f"{fx.get('work_exponent') or 0:.2f})")
        if not bits:
            return None
        return (f"Reproduction on {p.get('device', 'H100')} "
                f"({p.get('_path', 'results/h100/pathology.json')}): "
                + "; ".join(bits) + ".")
    except (AttributeError, TypeError, ValueError, KeyError):
        return None
