"""``attn-numba explain``: diagnose an NVBench markdown log of the ``run_mha_fwd`` benchmark.

The parser reads any NVBench markdown output of this benchmark: the ``# Devices`` header, the
``# Log`` section (``Run:``/``Warn:``/``Pass: Cold:``/``Pass: Batch:`` lines, times in any
unit) and the ``# Benchmark Results`` table (every column; times, sizes, rates, percentages
and sample counts parsed to SI base units).

The diagnosis fits, across the table's rows, the measured time against the *exact* windowed
work of each row (:func:`attn_numba.problem.windowed_flops` with the row's axes):

* ``t = a + b * work`` (least squares); ``fixed_overhead_s = max(a, 0)``;
* ``work_exponent``: the slope of ``log t`` against ``log work``.

Verdict rule (the only one used)::

    overhead-dominated  iff  fixed_overhead_s >= 0.5 * median(t)  and  work_exponent < 0.5
    work-proportional   otherwise
    undetermined        when fewer than two distinct work values have a time

``t`` is the cold "GPU Time" column (falling back to "CPU Time", then "Batch GPU").

It then explains each warning (with NVBench's own rules, cited from NVIDIA/nvbench), the
GPU-vs-CPU and Cold-vs-Batch relations, the BWUtil and "Est. FLOPS" columns, and what the
kernel itself should cost: a roofline from the log's device header and, when present, the
committed H100 results (``results/*/summary.json``) and pathology reproduction
(``results/h100/pathology.json``).
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import statistics
from importlib import resources

import numpy as np

from .problem import count_pairs, dense_flops, min_bytes, normalize_window, windowed_flops

#: the verdict rule's thresholds (see the module docstring)
OVERHEAD_FRACTION = 0.5
FLAT_EXPONENT = 0.5

#: NVBench constants the explanations rely on (NVIDIA/nvbench, read at commit 66212f1):
#: ``nvbench/detail/statistics.cuh`` returns an infinite standard deviation for fewer than 5
#: samples (``num < 5`` since 2021; named ``min_samples_for_noise_estimate`` in 2026);
#: ``nvbench/benchmark_base.cuh`` defaults: min_samples 10, timeout 15 s, batch_target_time
#: 0.5 s; stdrel criterion defaults max-noise 0.5 %, min-time 0.5 s.
NVBENCH_MIN_SAMPLES_FOR_NOISE = 5
NVBENCH_DEFAULTS = {"min_samples": 10, "timeout_s": 15.0, "max_noise": 0.005, "min_time_s": 0.5}

#: peak arithmetic per SM per clock, by SM major.minor: (fp32 FLOP, dense fp16 tensor FLOP).
#: From the CUDA programming guide's throughput table (fp32 FMA lanes x 2) and the A100/H100
#: whitepapers (fp16 tensor FLOP/clk/SM: 2048 on sm_80, 4096 on sm_90).
PEAK_FLOP_PER_CLK_SM = {80: (128, 2048), 86: (256, 1024), 89: (256, 1024), 90: (256, 4096)}

AXES = ("num_seqs", "seq_len", "num_heads", "num_kv_heads", "head_size", "window_left",
        "window_right", "causal")

PACKAGED_LOG = "nvbench_run_mha_fwd_a30.log"

_TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0}
_SIZE_UNITS = {"B": 1, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40,
               "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
_SI = {"": 1.0, "K": 1e3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


# --------------------------------------------------------------------------- parsing

def parse_value(cell):
    """Parse one NVBench table cell. Returns ``(value, kind)``.

    kinds: ``time`` (seconds), ``size`` (bytes), ``rate_bytes`` (bytes/s), ``percent``
    (a fraction; ``inf%`` -> inf), ``samples`` (int, from ``"3x"``), ``number`` (with SI
    suffix K/M/G/T applied), ``text`` (unparsed string), ``empty`` (None).
    """
    s = cell.strip()
    if not s:
        return None, "empty"
    m = re.fullmatch(rf"({_NUM}|inf|-inf|nan)\s*%", s, re.I)
    if m:
        return float(m.group(1)) / 100.0, "percent"
    m = re.fullmatch(r"(\d+)\s*x", s)
    if m:
        return int(m.group(1)), "samples"
    m = re.fullmatch(rf"({_NUM})\s*(ns|us|\u00b5s|ms|s)", s)
    if m:
        return float(m.group(1)) * _TIME_UNITS[m.group(2)], "time"
    m = re.fullmatch(rf"({_NUM})\s*([KMGT]?i?B)/s", s)
    if m and m.group(2) in _SIZE_UNITS:
        return float(m.group(1)) * _SIZE_UNITS[m.group(2)], "rate_bytes"
    m = re.fullmatch(rf"({_NUM})\s*([KMGT]?i?B)", s)
    if m and m.group(2) in _SIZE_UNITS:
        return float(m.group(1)) * _SIZE_UNITS[m.group(2)], "size"
    m = re.fullmatch(rf"({_NUM})\s*([kKMGTP]?)", s)
    if m:
        v = float(m.group(1)) * _SI[m.group(2)]
        if not m.group(2) and re.fullmatch(r"[-+]?\d+", m.group(1)):
            return int(m.group(1)), "number"
        return v, "number"
    return s, "text"


def _parse_time(text):
    m = re.fullmatch(rf"\s*({_NUM})\s*(ns|us|\u00b5s|ms|s)\s*", text)
    if not m:
        raise ValueError(f"not a time: {text!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def _axis_value(text):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _parse_device_header(lines):
    """``# Devices`` section -> list of dicts (name, sm_version, num_sms, clock_hz, bus_peak_Bps...)."""
    devices, cur = [], None
    for line in lines:
        if line.startswith("# ") and not line.startswith("# Devices") and devices:
            break
        m = re.match(r"##\s*\[(\d+)\]\s*`?([^`]+)`?", line)
        if m:
            cur = {"index": int(m.group(1)), "name": m.group(2).strip(), "raw": {}}
            devices.append(cur)
            continue
        m = re.match(r"\*\s*([^:]+):\s*(.*)", line)
        if m and cur is not None:
            key, val = m.group(1).strip(), m.group(2).strip()
            cur["raw"][key] = val
            if key == "SM Version":
                cur["sm_version"] = int(val.split()[0])
            elif key == "Number of SMs":
                cur["num_sms"] = int(val)
            elif key == "SM Default Clock Rate":
                mm = re.match(rf"({_NUM})\s*([KMG]?)Hz", val)
                if mm:
                    cur["clock_hz"] = float(mm.group(1)) * _SI[mm.group(2)]
            elif key == "Global Memory Bus Peak":
                mm = re.match(rf"({_NUM})\s*([KMGT]?B)/sec", val)
                if mm:
                    cur["bus_peak_Bps"] = float(mm.group(1)) * _SIZE_UNITS[mm.group(2)]
            elif key == "Global Memory":
                mm = re.search(rf"({_NUM})\s*MiB Total", val)
                if mm:
                    cur["memory_bytes"] = float(mm.group(1)) * 2 ** 20
    return devices


_WARN_PATTERNS = [
    ("noise_over_threshold",
     rf"timed out \(({_NUM})s\) while over noise threshold \(({_NUM}|inf|nan)% > ({_NUM})%\)",
     ("timeout_s", "noise", "max_noise")),
    ("min_samples",
     rf"timed out \(({_NUM})s\) before accumulating min_samples \((\d+) < (\d+)\)",
     ("timeout_s", "samples", "min_samples")),
    ("noise_samples",
     rf"timed out \(({_NUM})s\) before accumulating enough samples to estimate noise "
     rf"\((\d+) < (\d+)\)", ("timeout_s", "samples", "needed")),
    ("noise_unavailable", rf"timed out \(({_NUM})s\) while unable to estimate noise",
     ("timeout_s",)),
    ("min_time",
     rf"timed out \(({_NUM})s\) before accumulating min_time \(({_NUM})s < ({_NUM})s\)",
     ("timeout_s", "time_s", "min_time_s")),
    ("deadlock", r"(?i)deadlock|blocking kernel", ()),
    ("throttle", r"(?i)throttl", ()),
]


def parse_warning(text):
    """One ``Warn:`` message -> dict(kind, text, numbers...). Unknown messages: kind 'other'."""
    for kind, pat, names in _WARN_PATTERNS:
        m = re.search(pat, text)
        if m:
            d = {"kind": kind, "text": text}
            for name, g in zip(names, m.groups()):
                v = float(g)
                if name in ("noise", "max_noise"):
                    v /= 100.0
                elif name in ("samples", "min_samples", "needed"):
                    v = int(g)
                d[name] = v
            return d
    return {"kind": "other", "text": text}


def _parse_log_section(lines):
    """``# Log`` section -> list of runs: {index, total, benchmark, axes, cold, batch, other}."""
    runs, cur, pending = [], None, []
    for raw in lines:
        line = raw.rstrip()
        m = re.match(r"^Run:\s+\[(\d+)/(\d+)\]\s+(\S+)\s+\[(.*)\]\s*$", line)
        if m:
            axes = {}
            for tok in m.group(4).split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    axes[k] = _axis_value(v)
            device = axes.pop("Device", None)
            cur = {"index": int(m.group(1)), "total": int(m.group(2)), "benchmark": m.group(3),
                   "device": device, "axes": axes, "cold": None, "batch": None,
                   "warnings": [], "other": []}
            runs.append(cur)
            pending = []
            continue
        if cur is None:
            continue
        m = re.match(r"^Warn:\s*(.*)$", line)
        if m:
            w = parse_warning(m.group(1).strip())
            pending.append(w)
            continue
        m = re.match(r"^Pass:\s*(Cold|Batch):\s*(.*)$", line)
        if m:
            which, body = m.group(1).lower(), m.group(2)
            meas = {"warnings": pending}
            for w in pending:
                w["measurement"] = which
            cur["warnings"].extend(pending)
            pending = []
            parts = [p.strip() for p in body.split(",") if p.strip()]
            for p in parts:
                mm = re.fullmatch(rf"({_NUM}\s*(?:ns|us|\u00b5s|ms|s))\s+(GPU|CPU)", p)
                if mm:
                    meas[f"{mm.group(2).lower()}_time_s"] = _parse_time(mm.group(1))
                    continue
                mm = re.fullmatch(rf"({_NUM}\s*(?:ns|us|\u00b5s|ms|s))\s+total\s+(GPU|CPU|wall)", p)
                if mm:
                    meas[f"total_{mm.group(2).lower()}_s"] = _parse_time(mm.group(1))
                    continue
                mm = re.fullmatch(r"(\d+)x", p)
                if mm:
                    meas["samples"] = int(mm.group(1))
            cur[which] = meas
            continue
        if re.match(r"^(Pass|Fail|Skip|Info|Note):", line):
            cur["other"].append(line)
    return runs


def _column_keys(header):
    """Unique keys for the table's columns; NVBench repeats 'Samples' and 'Noise'."""
    keys = []
    for i, name in enumerate(header):
        nxt = header[i + 1] if i + 1 < len(header) else ""
        prev = header[i - 1] if i else ""
        if name == "Samples":
            key = "Batch Samples" if nxt.startswith("Batch") else (
                "CPU Samples" if nxt == "CPU Time" and "GPU Time" not in header else "Samples")
        elif name == "Noise":
            key = f"{prev} Noise"
        else:
            key = name
        base, n = key, 2
        while key in keys:
            key, n = f"{base} ({n})", n + 1
        keys.append(key)
    return keys


def _parse_tables(lines):
    """``# Benchmark Results`` -> list of {benchmark, device, columns, rows: [{key: (value, kind, raw)}]}."""
    tables, bench, device, i = [], None, None, 0
    while i < len(lines):
        line = lines[i].strip()
        m = re.match(r"^##\s+(?!#)(.+)$", line)
        if m:
            bench = m.group(1).strip()
        m = re.match(r"^###\s+\[(\d+)\]\s*(.*)$", line)
        if m:
            device = {"index": int(m.group(1)), "name": m.group(2).strip()}
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s|:-]+\|$", lines[i + 1].strip()):
            header = [c.strip() for c in line.strip("|").split("|")]
            keys = _column_keys(header)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                row = {}
                for key, cell in zip(keys, cells):
                    val, kind = parse_value(cell)
                    row[key] = {"value": val, "kind": kind, "raw": cell}
                rows.append(row)
                i += 1
            tables.append({"benchmark": bench, "device": device, "header": header,
                           "columns": keys, "rows": rows})
            continue
        i += 1
    return tables


def parse_log(text):
    """Parse an NVBench markdown log. Returns {devices, runs, tables}."""
    lines = text.splitlines()
    sections, name = {}, None
    for line in lines:
        m = re.match(r"^#\s+(.+)$", line)
        if m:
            name = m.group(1).strip()
            sections.setdefault(name, [])
            continue
        if name is not None:
            sections[name].append(line)
    devices = _parse_device_header(["# Devices"] + sections.get("Devices", []))
    log_lines = [ln for ln in sections.get("Log", []) if not ln.startswith("```")]
    runs = _parse_log_section(log_lines)
    tables = _parse_tables(sections.get("Benchmark Results", lines if not sections else []))
    return {"devices": devices, "runs": runs, "tables": tables}


# --------------------------------------------------------------------------- rows

def _val(row, key):
    c = row.get(key)
    return None if c is None else c["value"]


def _row_work(axes):
    b = int(axes.get("num_seqs", 1))
    s = int(axes["seq_len"])
    h = int(axes["num_heads"])
    d = int(axes["head_size"])
    causal = bool(int(axes.get("causal", 0)))
    left, right = normalize_window((int(axes.get("window_left", -1)),
                                    int(axes.get("window_right", -1))), causal)
    seqs = [s] * b
    pairs = count_pairs(seqs, seqs, left, right)
    return {
        "windowed_flops": windowed_flops(seqs, seqs, h, d, left, right),
        "dense_flops": dense_flops(b, s, h, d),
        "pairs_per_head": pairs,
        "max_keys_per_query": (min(s, left + right + 1) if left >= 0 and right >= 0 else s),
        "min_bytes_fp16": min_bytes(b * s, b * s, h, int(axes.get("num_kv_heads", h)), d, 2),
    }


def build_rows(parsed, benchmark="run_mha_fwd"):
    """One dict per table row: axes, times (s), samples, noise, work, and the log's warnings."""
    tables = [t for t in parsed["tables"] if benchmark is None or t["benchmark"] == benchmark]
    if not tables and parsed["tables"]:
        tables = parsed["tables"]
    runs = [r for r in parsed["runs"] if benchmark is None or r["benchmark"] == benchmark]
    rows = []
    for t in tables:
        axis_names = [c for c in t["columns"] if c in AXES]
        for raw in t["rows"]:
            axes = {a: _val(raw, a) for a in axis_names}
            row = dict(axes)
            row["device"] = (t["device"] or {}).get("name")
            row["gpu_time_s"] = _val(raw, "GPU Time")
            row["cpu_time_s"] = _val(raw, "CPU Time")
            row["batch_gpu_time_s"] = _val(raw, "Batch GPU")
            row["samples"] = _val(raw, "Samples")
            row["batch_samples"] = _val(raw, "Batch Samples")
            row["gpu_noise"] = _val(raw, "GPU Time Noise")
            row["cpu_noise"] = _val(raw, "CPU Time Noise")
            row["est_flops"] = _val(raw, "Est. FLOPS")
            row["bw_util"] = _val(raw, "BWUtil")
            row["global_mem_bw_Bps"] = _val(raw, "GlobalMem BW")
            row["columns"] = {k: c["value"] for k, c in raw.items() if k not in axis_names}
            if all(a in axes and axes[a] is not None for a in ("seq_len", "num_heads", "head_size")):
                row.update(_row_work(axes))
            match = [r for r in runs if all(r["axes"].get(a) == axes[a] for a in axis_names)]
            if match:
                r = match.pop(0)
                runs.remove(r)
                row["cold"] = r["cold"]
                row["batch"] = r["batch"]
                row["warnings"] = r["warnings"]
            else:
                row["cold"] = row["batch"] = None
                row["warnings"] = []
                r = {"other": []}
            row["failures"] = [o for o in r["other"] if o.startswith("Fail:")]
            rows.append(row)
    # states that are in the Log but not in a table (failed states, or a log without a table)
    for r in runs:
        axes = {a: v for a, v in r["axes"].items() if a in AXES}
        row = dict(axes)
        cold, batch = r.get("cold") or {}, r.get("batch") or {}
        row.update(device=None, gpu_time_s=cold.get("gpu_time_s"), cpu_time_s=cold.get("cpu_time_s"),
                   batch_gpu_time_s=batch.get("gpu_time_s"), samples=cold.get("samples"),
                   batch_samples=batch.get("samples"), gpu_noise=None, cpu_noise=None,
                   est_flops=None, bw_util=None, global_mem_bw_Bps=None, columns={},
                   cold=r.get("cold"), batch=r.get("batch"), warnings=r["warnings"],
                   failures=[o for o in r["other"] if o.startswith("Fail:")], from_log_only=True)
        if all(a in axes for a in ("seq_len", "num_heads", "head_size")):
            row.update(_row_work(axes))
        rows.append(row)
    return rows


def _time_of(row):
    for key in ("gpu_time_s", "cpu_time_s", "batch_gpu_time_s"):
        v = row.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and v > 0:
            return float(v), key
    return None, None


def fit_overhead(works, times):
    """Least-squares ``t = a + b*work`` and the log-log slope. Returns dict (a, b, exponent, r2)."""
    w = np.asarray(works, np.float64)
    t = np.asarray(times, np.float64)
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
    if fixed_overhead_s is None or work_exponent is None:
        return "undetermined"
    if fixed_overhead_s >= OVERHEAD_FRACTION * median_t and work_exponent < FLAT_EXPONENT:
        return "overhead-dominated"
    return "work-proportional"


# --------------------------------------------------------------------------- context

def _repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_summaries(results_dir=None):
    """Committed ``results/*/summary.json`` files (other helpers' bench). [] when absent."""
    results_dir = results_dir or os.path.join(_repo_root(), "results")
    out = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*", "summary.json"))):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if data.get("simulated"):  # simulator timings say nothing about a GPU
            continue
        if isinstance(data, dict) and isinstance(data.get("records"), list):
            data["_path"] = os.path.relpath(path, os.path.dirname(results_dir))
            out.append(data)
    return out


def load_pathology(results_dir=None):
    path = os.path.join(results_dir or os.path.join(_repo_root(), "results"), "h100",
                        "pathology.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _same_axes(rec, row):
    for a in AXES:
        if a in row and a in rec and row[a] is not None and int(rec[a]) != int(row[a]):
            return False
    return "seq_len" in rec


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


def _fmt_t(s):
    if s is None or not math.isfinite(s):
        return str(s)
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if abs(s) >= f or unit == "ns":
            return f"{s / f:.3g} {unit}"
    return f"{s} s"


# --------------------------------------------------------------------------- explanations

def _explain_warnings(rows):
    out = []
    kinds = {}
    for r in rows:
        for w in r.get("warnings", []):
            kinds.setdefault(w["kind"], []).append((r, w))
    if "min_samples" in kinds:
        ws = [w for _, w in kinds["min_samples"]]
        got = sorted({w["samples"] for w in ws})
        need = sorted({w["min_samples"] for w in ws})
        tmo = [w["timeout_s"] for w in ws]
        per = [r["cold"]["gpu_time_s"] for r, w in kinds["min_samples"]
               if w.get("measurement") == "cold" and r.get("cold") and r["cold"].get("gpu_time_s")]
        out.append(
            f"'timed out before accumulating min_samples' ({len(ws)}x): NVBench stops a "
            f"measurement once its wall time passes --timeout (default "
            f"{NVBENCH_DEFAULTS['timeout_s']:.0f} s) even if fewer than min_samples "
            f"(here {need}) samples were taken; the measurements stopped after "
            f"{min(tmo):.1f}-{max(tmo):.1f} s with only {got} samples"
            + (f", i.e. each sample cost {_fmt_t(min(per))}-{_fmt_t(max(per))}" if per else "")
            + ". With seconds per sample the timeout is reached after a handful of samples; "
              "a GPU kernel of milliseconds would collect hundreds in the same time.")
    if "noise_over_threshold" in kinds:
        ws = [w for _, w in kinds["noise_over_threshold"]]
        infs = [w for w in ws if math.isinf(w["noise"])]
        thr = sorted({w["max_noise"] for w in ws})
        msg = (f"'timed out while over noise threshold' ({len(ws)}x, threshold "
               f"{', '.join(f'{t:.2%}' for t in thr)} = the stdrel criterion's max-noise; "
               f"default 0.50%): ")
        if infs:
            msg += (f"{len(infs)} of them report inf% noise. That is not measured variability: "
                    f"NVBench's standard_deviation() (nvbench/detail/statistics.cuh) returns "
                    f"infinity when it has fewer than {NVBENCH_MIN_SAMPLES_FOR_NOISE} samples, "
                    f"and every measurement here has fewer "
                    f"(newer NVBench prints 'before accumulating enough samples to estimate "
                    f"noise' instead). The table's 'inf%' Noise columns have the same cause.")
        else:
            msg += "the relative standard deviation of the samples stayed above the threshold."
        out.append(msg)
    if "noise_samples" in kinds:
        out.append("'timed out before accumulating enough samples to estimate noise': fewer than "
                   f"{NVBENCH_MIN_SAMPLES_FOR_NOISE} samples, so NVBench cannot estimate the noise "
                   "(it reports inf%); same cause as the min_samples warning.")
    if "noise_unavailable" in kinds:
        out.append("'timed out while unable to estimate noise': the samples gave a non-finite "
                   "relative standard deviation (for example all-zero times).")
    if "min_time" in kinds:
        out.append("'timed out before accumulating min_time': the stdrel criterion also wants "
                   "min-time (default 0.5 s) of accumulated GPU time before it may stop.")
    if "deadlock" in kinds:
        out.append("Blocking-kernel / deadlock warning: the launcher synchronized while NVBench's "
                   "blocking kernel held the stream; use state.exec(..., sync=True) or remove "
                   "the synchronization from the launcher.")
    if "other" in kinds:
        out.append("Other warnings: " + "; ".join(sorted({w['text'] for _, w in kinds['other']})))
    return out


def _explain_timers(rows):
    out = []
    cold = [r["cold"] for r in rows if r.get("cold") and r["cold"].get("gpu_time_s")
            and r["cold"].get("cpu_time_s")]
    if cold:
        rel = [abs(c["gpu_time_s"] - c["cpu_time_s"]) / c["cpu_time_s"] for c in cold]
        diff = [c["cpu_time_s"] - c["gpu_time_s"] for c in cold]
        if max(rel) < 0.01:
            out.append(
                f"Cold GPU time equals CPU time within {max(rel):.3%} (CPU - GPU = "
                f"{_fmt_t(min(diff))}..{_fmt_t(max(diff))}). In a cold sample NVBench starts "
                "the CPU timer, queues its blocking kernel, then records the CUDA start event, "
                "calls the launcher, records the stop event and releases the stream; so host "
                "work inside the launcher is normally excluded from GPU time. GPU == CPU means "
                "the start event fired as soon as the host recorded it: the blocking kernel was "
                "off (exec sync=True, --disable-blocking-kernel, state.set_disable_blocking_"
                "kernel) and the GPU sat idle while the launcher did host work, which is then "
                "counted as GPU time.")
    pairs = [(r["gpu_time_s"], r["batch_gpu_time_s"]) for r in rows
             if r.get("gpu_time_s") and r.get("batch_gpu_time_s")]
    if pairs:
        ratio = [b / c for c, b in pairs]
        out.append(
            f"Batch GPU / Cold GPU = {min(ratio):.2f}..{max(ratio):.2f}. Batch launches back to "
            "back without syncing, so for a GPU-bound kernel it is at most the cold time (no "
            "L2 flush, no per-sample sync, launch latency hidden). In a batch NVBench holds the "
            "stream with its blocking kernel only for the first two launches (measure_hot does "
            "this whatever the disable-blocking-kernel setting), so host time spent in later "
            "launches is timed as GPU time: Batch ~ Cold at seconds per launch means each "
            "launch itself spends seconds on the host while the GPU waits. (Batch lines exist "
            "only when exec is not sync=True: NVBench's sync tag implies no_batch.)")
    return out


def _explain_columns(rows, device):
    out = []
    bw = [r for r in rows if r.get("bw_util") is not None]
    if bw:
        r = max(bw, key=lambda r: r.get("seq_len") or 0)
        gb = r.get("global_mem_bw_Bps")
        peak = device.get("bus_peak_Bps")
        msg = (f"BWUtil {r['bw_util']:.2%}: NVBench divides the bytes the benchmark declared "
               f"(add_global_memory_reads/writes) by the GPU time and by the bus peak")
        if gb and peak:
            msg += (f"; at seq_len={r.get('seq_len')} that is {gb / 1e6:.3g} MB/s of "
                    f"{peak / 1e9:.0f} GB/s = {gb / peak:.2e}, which rounds to 0.00%")
            if r.get("gpu_time_s") and r.get("min_bytes_fp16"):
                t_mem = r["min_bytes_fp16"] / peak
                msg += (f". Moving the same bytes at the bus peak takes {_fmt_t(t_mem)}: the "
                        f"measured {_fmt_t(r['gpu_time_s'])} is {r['gpu_time_s'] / t_mem:.0f}x "
                        "longer, far beyond anything memory traffic explains")
        out.append(msg + ".")
    est = [r for r in rows if r.get("est_flops") and r.get("windowed_flops")]
    if est:
        lo = min(est, key=lambda r: r["seq_len"])
        hi = max(est, key=lambda r: r["seq_len"])
        dense_ok = all(r["est_flops"] == r["dense_flops"] for r in est)
        out.append(
            f"'Est. FLOPS' grows as S^2 ({lo['est_flops']:.3g} at S={lo['seq_len']} to "
            f"{hi['est_flops']:.3g} at S={hi['seq_len']}, x{hi['est_flops'] / lo['est_flops']:.0f})"
            + (" and equals 2*S^2*H*D, the dense count that ignores the window" if dense_ok else "")
            + f". With window ({lo.get('window_left')}, {lo.get('window_right')}) each query sees "
            f"at most {hi['max_keys_per_query']} keys, so the exact forward work "
            f"(4*D*H per (query, key) pair) grows linearly: {lo['windowed_flops']:.3g} to "
            f"{hi['windowed_flops']:.3g} FLOP (x{hi['windowed_flops'] / lo['windowed_flops']:.0f}); "
            f"at S={hi['seq_len']} the column overstates the work "
            f"{hi['est_flops'] / hi['windowed_flops']:.1f}x. Any FLOP/s derived from it is wrong; "
            "this tool fits against the windowed work.")
    return out


def _explain_failures(rows):
    failed = [r for r in rows if r.get("failures")]
    if not failed:
        return []
    dead = [r for r in failed if any("Deadlock" in f for f in r["failures"])]
    msg = (f"{len(failed)} state(s) failed (" + "; ".join(sorted({f[:120] for r in failed for f in r['failures']}))
           + ").")
    if dead:
        msg += (" 'Deadlock detected' means the launcher synchronised while NVBench's blocking "
                "kernel held the stream (host copies of NumPy arrays, cuMemFree, a Numba "
                "compile/module load in the launcher, or an explicit sync); the blocking kernel "
                "gave up after blocking_kernel_timeout and NVBench aborted the state. Remove the "
                "synchronisation from the launcher; state.exec(..., sync=True) avoids the "
                "deadlock but then host work is timed as GPU time.")
    return [msg]


def _explain_expected(rows, device, summaries, pathology):
    out = []
    if device and any(r.get("windowed_flops") for r in rows):
        worst = max(rows, key=lambda r: r.get("windowed_flops") or 0)
        rl = roofline(worst, device)
        if rl:
            parts = []
            if "memory_s" in rl:
                parts.append(f"memory {_fmt_t(rl['memory_s'])} (Q, K, V, O once at "
                             f"{device['bus_peak_Bps'] / 1e9:.0f} GB/s)")
            if "fp32_compute_s" in rl:
                parts.append(f"fp32 CUDA cores {_fmt_t(rl['fp32_compute_s'])} (peak "
                             f"{rl['fp32_peak_flops'] / 1e12:.1f} TFLOP/s)")
                parts.append(f"fp16 tensor cores {_fmt_t(rl['tensor_compute_s'])} (peak "
                             f"{rl['tensor_fp16_peak_flops'] / 1e12:.0f} TFLOP/s)")
            out.append(
                f"Roofline on the {device.get('name', 'logged device')} (from the log header: "
                f"{device.get('num_sms')} SMs at {device.get('clock_hz', 0) / 1e6:.0f} MHz): the "
                f"largest row (S={worst.get('seq_len')}, causal={worst.get('causal')}) needs at "
                f"least " + ", ".join(parts) + f"; the log measured "
                f"{_fmt_t(worst.get('gpu_time_s'))}.")
    for s in summaries:
        by_kernel = {}
        for rec in s.get("records", []):
            if rec.get("gpu_time_s") is None:
                continue
            for r in rows:
                if _same_axes(rec, r):
                    by_kernel.setdefault(rec.get("kernel", "?"), []).append((r, rec))
        if not by_kernel:
            continue
        parts = []
        copy = (s.get("ceilings") or {}).get("copy_gbps")
        bw = device.get("bus_peak_Bps") if device else None
        scale = copy * 1e9 / bw if copy and bw else None
        for kern, pairs in sorted(by_kernel.items()):
            ts = [rec["gpu_time_s"] for _, rec in pairs]
            ss = [rec["seq_len"] for _, rec in pairs]
            part = f"{kern} {_fmt_t(min(ts))}..{_fmt_t(max(ts))} over S={min(ss)}..{max(ss)}"
            if scale:
                part += f" (~{_fmt_t(max(ts) * scale)} at S={max(ss)} on the logged device)"
            parts.append(part)
        msg = (f"Committed results on {s.get('device', '?')} ({s.get('_path')}) for the "
               f"log's axes: " + "; ".join(parts) + ".")
        if scale:
            msg += (f" The '~' values scale by memory bandwidth ({copy:.0f} GB/s measured copy "
                    f"bandwidth there vs the logged {bw / 1e9:.0f} GB/s bus peak, x{scale:.1f}): "
                    "a rough estimate for a memory-bound kernel, optimistic for a compute-bound "
                    "one.")
        out.append(msg)
    if pathology:
        msg = _pathology_sentence(pathology)
        if msg:
            out.append(msg)
    return out


def _pathology_sentence(p):
    """One sentence from results/h100/pathology.json (written by attn_numba.bench.pathology)."""
    try:
        ct = p.get("compile_times") or {}
        nv = p.get("nvbench") or {}
        bits = []
        if ct.get("rejit_per_call_s"):
            bits.append("a fresh cuda.jit of the naive kernel per call costs "
                        f"{_fmt_t(statistics.median(ct['rejit_per_call_s']))} of host time")
        if ct.get("cold_process_first_call_s") is not None:
            bits.append(f"its first call in a cold process {_fmt_t(ct['cold_process_first_call_s'])}")
        h1 = [r for v in ("H1_sync", "H1_noblock", "H1_noblock_nobatch")
              for r in (nv.get(v) or {}).get("rows", []) if r.get("cold_gpu_s")]
        if h1:
            ts = [r["cold_gpu_s"] for r in h1]
            bits.append(f"an NVBench launcher doing that (sync=True or blocking kernel off) "
                        f"reproduces the log's signature: {_fmt_t(min(ts))}..{_fmt_t(max(ts))} "
                        f"per call, GPU = CPU, timeouts before min_samples")
        dl = [v for v in ("H1_default",) if any(r.get("deadlock") for r in (nv.get(v) or {}).get("rows", []))]
        if dl:
            bits.append("under the default exec (blocking kernel) the same launcher deadlocks")
        fx = (nv.get("fixed") or {})
        if fx.get("rows"):
            ts = [r["cold_gpu_s"] for r in fx["rows"] if r.get("cold_gpu_s")]
            bits.append(f"the fixed harness times the same kernel at {_fmt_t(min(ts))}..{_fmt_t(max(ts))} "
                        f"({fx.get('verdict')}, work exponent {fx.get('work_exponent', 0):.2f})")
        if not bits:
            return None
        return (f"Reproduction on {p.get('device', 'H100')} (results/h100/pathology.json): "
                + "; ".join(bits) + ".")
    except (AttributeError, TypeError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------- API

def _read(path):
    if path is None:
        return resources.files("attn_numba").joinpath("data", PACKAGED_LOG).read_text()
    with open(path) as f:
        return f.read()


def explain_log(path=None, results_dir=None, benchmark="run_mha_fwd"):
    """Diagnose an NVBench log of ``run_mha_fwd`` (the packaged A30 log when ``path`` is None).

    Returns a JSON-able dict with at least: ``rows`` (axes, ``gpu_time_s``,
    ``batch_gpu_time_s``, ``samples``, work, warnings), ``verdict``, ``fixed_overhead_s``,
    ``work_exponent``, ``fit``, ``device``, ``explanations`` (list of str).
    """
    parsed = parse_log(_read(path))
    rows = build_rows(parsed, benchmark)
    device = parsed["devices"][0] if parsed["devices"] else {}
    pts = []
    for r in rows:
        t, key = _time_of(r)
        if t is not None and r.get("windowed_flops"):
            pts.append((r["windowed_flops"], t, key))
    fit = fit_overhead([p[0] for p in pts], [p[1] for p in pts]) if len(pts) >= 2 else None
    median_t = statistics.median([p[1] for p in pts]) if pts else None
    fixed = max(fit["a"], 0.0) if fit else None
    expo = fit["exponent"] if fit else None
    verdict = verdict_of(fixed, median_t, expo)

    explanations = []
    if fit:
        works = [p[0] for p in pts]
        times = [p[1] for p in pts]
        explanations.append(
            f"Verdict: {verdict}. Time ({pts[0][2]}) spans {_fmt_t(min(times))}..{_fmt_t(max(times))} "
            f"while the exact windowed work spans {min(works):.3g}..{max(works):.3g} FLOP "
            f"(x{max(works) / min(works):.0f}). Fit t = a + b*work: a = {_fmt_t(fit['a'])} "
            f"fixed per call ({max(fit['a'], 0) / median_t:.0%} of the median {_fmt_t(median_t)}), "
            f"b = {fit['b']:.3g} s/FLOP (R^2 {fit['r2']:.2f}); log-log slope (work exponent) "
            f"{expo:.2f}. Rule: overhead-dominated iff a >= {OVERHEAD_FRACTION:.0%} of the median "
            f"time and exponent < {FLAT_EXPONENT}.")
        if verdict == "overhead-dominated":
            explanations.append(
                f"A fixed cost of ~{_fmt_t(fixed)} per call, independent of the work, dominates: "
                "that is host-side work inside the timed launcher (JIT compilation of the kernel "
                "on every call, or similar), not the attention kernel. Fix: compile once outside "
                "the launcher (module-level kernel or lru_cached factory, warm it up before "
                "state.exec), pass device arrays allocated outside the launcher, launch on "
                "launch.get_stream() via cuda.external_stream, and keep NVBench's blocking "
                "kernel on (no host sync in the launcher).")
    else:
        explanations.append("Verdict: undetermined (fewer than two rows with distinct work and a time).")
    explanations += _explain_failures(rows)
    explanations += _explain_timers(rows)
    explanations += _explain_warnings(rows)
    explanations += _explain_columns(rows, device)
    explanations += _explain_expected(rows, device, load_summaries(results_dir),
                                      load_pathology(results_dir))
    dev_out = {k: v for k, v in device.items() if k != "raw"}
    for r in rows:
        r.update(roofline(r, device) if device else {})
    return {
        "log": path or f"attn_numba/data/{PACKAGED_LOG}",
        "device": dev_out,
        "rows": rows,
        "fit": fit,
        "time_column": pts[0][2] if pts else None,
        "median_time_s": median_t,
        "fixed_overhead_s": fixed,
        "work_exponent": expo,
        "verdict": verdict,
        "rule": (f"overhead-dominated iff fixed_overhead_s >= {OVERHEAD_FRACTION} * median time "
                 f"and work_exponent < {FLAT_EXPONENT}"),
        "explanations": explanations,
    }


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def format_text(res):
    lines = [f"NVBench log: {res['log']}",
             f"Device: {res['device'].get('name', '?')}",
             "",
             f"{'S':>6} {'causal':>6} {'GPU time':>10} {'Batch GPU':>10} {'samples':>7} "
             f"{'windowed FLOP':>14} {'Est. FLOPS':>12}"]
    for r in res["rows"]:
        lines.append(f"{r.get('seq_len', ''):>6} {r.get('causal', ''):>6} "
                     f"{_fmt_t(r.get('gpu_time_s')):>10} {_fmt_t(r.get('batch_gpu_time_s')):>10} "
                     f"{r.get('samples') if r.get('samples') is not None else '':>7} "
                     f"{r.get('windowed_flops', 0):>14.3g} {r.get('est_flops') or 0:>12.3g}")
    lines += ["", f"verdict: {res['verdict']}  fixed overhead: {_fmt_t(res['fixed_overhead_s'])}  "
                  f"work exponent: {res['work_exponent'] if res['work_exponent'] is None else round(res['work_exponent'], 3)}",
              ""]
    for i, e in enumerate(res["explanations"], 1):
        lines.append(f"{i}. {e}")
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("log", nargs="?", default=None,
                        help="NVBench markdown log (default: the packaged A30 log)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--results", default=None,
                        help="results directory with */summary.json (default: the checkout's results/)")


def main(args):
    try:
        res = explain_log(args.log, results_dir=args.results)
    except OSError as exc:
        print(f"attn-numba explain: {exc}", file=__import__("sys").stderr)
        return 1
    if args.json:
        print(json.dumps(_jsonable(res)))
    else:
        print(format_text(res))
    return 0
