"""Rows of an NVBench log (one per benchmark state) and their grouping.

A row joins a results-table row with its ``Run:`` block of the Log (matched on every axis and
the device), or comes from the Log alone (failed states; logs without a table). Rows are
grouped by every axis that does not enter the work formula (``Kernel``, any other non-work
axis) and, when the log has several, by device; the work axes (:data:`AXES`) stay inside a
group, because the fit is against the exact work of each row.
"""
from __future__ import annotations

from ..problem import count_pairs, dense_flops, min_bytes, normalize_window, windowed_flops
from .parse import LogParseError

#: the axes that enter the work formula
AXES = ("num_seqs", "seq_len", "num_heads", "num_kv_heads", "head_size", "window_left",
        "window_right", "causal")
_WORK_NEEDS = ("seq_len", "num_heads", "head_size")
#: table columns parsed into named row fields
_FIELDS = {"gpu_time_s": "GPU Time", "cpu_time_s": "CPU Time", "batch_gpu_time_s": "Batch GPU",
           "samples": "Samples", "batch_samples": "Batch Samples", "gpu_noise": "GPU Time Noise",
           "cpu_noise": "CPU Time Noise", "est_flops": "Est. FLOPS", "bw_util": "BWUtil",
           "global_mem_bw_Bps": "GlobalMem BW"}


def row_work(axes, line=None):
    """Exact work of one state from its axes (``problem.windowed_flops`` and friends)."""
    vals = {}
    for a, default in (("num_seqs", 1), ("seq_len", None), ("num_heads", None),
                       ("head_size", None), ("causal", 0), ("window_left", -1),
                       ("window_right", -1), ("num_kv_heads", None)):
        v = axes.get(a, default)
        if v is None and a == "num_kv_heads":
            v = vals["num_heads"]
        if isinstance(v, bool) or not isinstance(v, int):
            raise LogParseError(f"axis {a}={v!r} is not an integer", line)
        vals[a] = v
    b, s, h, d = vals["num_seqs"], vals["seq_len"], vals["num_heads"], vals["head_size"]
    left, right = normalize_window((vals["window_left"], vals["window_right"]),
                                   bool(vals["causal"]))
    seqs = [s] * b
    return {
        "windowed_flops": windowed_flops(seqs, seqs, h, d, left, right),
        "dense_flops": dense_flops(b, s, h, d),
        "pairs_per_head": count_pairs(seqs, seqs, left, right),
        "max_keys_per_query": (min(s, left + right + 1) if left >= 0 and right >= 0 else s),
        "min_bytes_fp16": min_bytes(b * s, b * s, h, vals["num_kv_heads"], d, 2),
    }


def _axis_columns(table, run_axes):
    """The table's axis columns: named by the Log's Run: lines, else the leading columns that
    are work axes or hold text in every row."""
    if run_axes:
        return [c for c in table["columns"] if c in run_axes]
    out = []
    for c in table["columns"]:
        if c in AXES or (table["rows"] and all(r[c]["kind"] == "text" for r in table["rows"])):
            out.append(c)
        else:
            break
    return out


def _status(row):
    if row["failures"]:
        return "failed"
    if row.get("skipped"):
        return "skipped"
    return "ok" if any(row.get(k) for k in ("gpu_time_s", "cpu_time_s", "batch_gpu_time_s")) \
        else "no time"


def _finish(row, axes, line):
    row["axes"] = dict(axes)
    if all(a in axes for a in _WORK_NEEDS):
        row.update(row_work(axes, line))
    row["status"] = _status(row)
    return row


def build_rows(parsed, benchmark="run_mha_fwd"):
    """One dict per state: its axes (flat and under ``axes``), ``device``, times (s), samples,
    noise, the exact work, the Log's cold/batch measurements, warnings, failures, ``status``
    (ok, failed, skipped, no time) and ``line`` (where it is in the log)."""
    tables = [t for t in parsed["tables"] if benchmark is None or t["benchmark"] == benchmark]
    if not tables and parsed["tables"]:
        tables = parsed["tables"]
    runs = [r for r in parsed["runs"] if benchmark is None or r["benchmark"] == benchmark]
    if not runs and parsed["runs"] and not tables:
        runs = list(parsed["runs"])
    names = {d["index"]: d["name"] for d in parsed["devices"]}
    run_axes = {a for r in runs for a in r["axes"]}
    rows = []
    for t in tables:
        axis_names = _axis_columns(t, run_axes)
        tdev = t["device"] or {}
        for raw in t["rows"]:
            axes = {a: raw[a]["value"] if raw[a]["kind"] != "text" else raw[a]["raw"]
                    for a in axis_names}
            row = dict(axes)
            row["device"] = tdev.get("name") or names.get(tdev.get("index"))
            row["device_index"] = tdev.get("index")
            for field, col in _FIELDS.items():
                row[field] = raw[col]["value"] if col in raw else None
            row["columns"] = {k: c["value"] for k, c in raw.items()
                              if k != "_line" and k not in axis_names}
            match = [r for r in runs if all(r["axes"].get(a) == axes[a] for a in axis_names)
                     and (r["device"] is None or tdev.get("index") is None
                          or r["device"] == tdev.get("index"))]
            r = match[0] if match else {}
            if match:
                runs.remove(r)
            row.update(cold=r.get("cold"), batch=r.get("batch"), warnings=r.get("warnings", []),
                       failures=r.get("failures", []), skipped=r.get("skipped"),
                       line=raw["_line"])
            rows.append(_finish(row, axes, raw["_line"]))
    for r in runs:  # states in the Log only: failed, skipped, or a log without a table
        axes = dict(r["axes"])
        row = dict(axes)
        cold, batch = r.get("cold") or {}, r.get("batch") or {}
        row.update(device=names.get(r["device"]), device_index=r["device"],
                   gpu_time_s=cold.get("gpu_time_s"), cpu_time_s=cold.get("cpu_time_s"),
                   batch_gpu_time_s=batch.get("gpu_time_s"), samples=cold.get("samples"),
                   batch_samples=batch.get("samples"), gpu_noise=None, cpu_noise=None,
                   est_flops=None, bw_util=None, global_mem_bw_Bps=None, columns={},
                   cold=r.get("cold"), batch=r.get("batch"), warnings=r["warnings"],
                   failures=r["failures"], skipped=r["skipped"], line=r["line"],
                   from_log_only=True)
        rows.append(_finish(row, axes, r["line"]))
    return rows


def group_axes(rows):
    """Names of the grouping axes: every axis of the rows that is not a work axis, plus
    ``Device`` when the rows come from more than one device."""
    names = []
    for r in rows:
        for a in r.get("axes", {}):
            if a not in AXES and a not in names:
                names.append(a)
    if len({(r.get("device_index"), r.get("device")) for r in rows}) > 1:
        names.append("Device")
    return names


def _device_label(row):
    idx, name = row.get("device_index"), row.get("device")
    return f"[{idx}] {name}" if idx is not None and name else (name or idx)


def group_rows(rows):
    """``[(axes dict, [rows])]`` in first-seen order; one group for a single-kernel log."""
    names = group_axes(rows)
    groups = {}
    for r in rows:
        key = {a: _device_label(r) if a == "Device" else r.get("axes", {}).get(a)
               for a in names}
        groups.setdefault(tuple(key.items()), (key, []))[1].append(r)
    return list(groups.values())
