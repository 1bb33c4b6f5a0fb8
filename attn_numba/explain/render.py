"""Text, Markdown and JSON output of :func:`attn_numba.explain.explain_log`'s result.

A formatting library: it imports nothing of the explain package but :mod:`.rows` (device
labels), so that :mod:`.context`, :mod:`.diagnose` and :mod:`.core` can use :func:`fmt_t`; the
command line is :mod:`.cli`."""
from __future__ import annotations

import math

import numpy as np

from .rows import _device_label


def fmt_t(s):
    """Seconds -> ``"4.83 s"``, ``"29 us"``; None (not measured) as ``"-"``, inf/nan as their
    str."""
    if s is None:
        return "-"
    if not math.isfinite(s):
        return str(s)
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if abs(s) >= f or unit == "ns":
            return f"{s / f:.3g} {unit}"
    return f"{s} s"


def jsonable(x):
    """Copy of ``x`` that json.dumps accepts: non-finite floats as "inf"/"nan", numpy scalars
    as Python numbers, tuples as lists."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return jsonable(x.item())
    return x


def group_label(axes):
    return ", ".join(f"{k}={v}" for k, v in axes.items()) or "all rows"


def _num(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else format("-", spec[:spec.index(".")]
                                                                       if "." in spec else spec)


def _cell(row, axis):
    if axis == "Device":
        return str(_device_label(row))
    return str(row.get("axes", {}).get(axis, ""))


def format_text(res):
    """The human-readable report: device, a table of every row (with a column per grouping
    axis, e.g. Kernel), then one section per group (verdict, numbers, numbered sentences)."""
    gaxes = list(res["groups"][0]["axes"]) if res.get("groups") else []
    lines = [f"NVBench log: {res['log']}",
             "Device: " + (", ".join(d.get("name", "?") for d in res.get("devices") or [])
                           or res["device"].get("name", "?")), ""]
    head = "".join(f"{a:>14} " for a in gaxes)
    lines.append(head + f"{'S':>6} {'causal':>6} {'GPU time':>10} {'CPU time':>10} "
                 f"{'Batch GPU':>10} {'samples':>7} {'windowed FLOP':>14} {'Est. FLOPS':>12}")
    for r in res["rows"]:
        lab = "".join(f"{_cell(r, a)[:14]:>14} " for a in gaxes)
        lines.append(
            lab + f"{r.get('seq_len', ''):>6} {r.get('causal', ''):>6} "
            f"{fmt_t(r.get('gpu_time_s')):>10} {fmt_t(r.get('cpu_time_s')):>10} "
            f"{fmt_t(r.get('batch_gpu_time_s')):>10} "
            f"{r.get('samples') if r.get('samples') is not None else '':>7} "
            f"{_num(r.get('windowed_flops'), '>14.3g')} {_num(r.get('est_flops'), '>12.3g')}"
            + ("" if r.get("status", "ok") == "ok" else f"  [{r['status']}]"))
    expo = res["work_exponent"]
    lines += ["", f"verdict: {res['verdict']}  fixed overhead: {fmt_t(res['fixed_overhead_s'])}  "
              f"work exponent: {expo if expo is None else round(expo, 3)}"]
    multi = len(res.get("groups") or []) > 1
    if not multi:
        lines.append("")
        lines += [f"{i}. {e}" for i, e in enumerate(res["explanations"], 1)]
        return "\n".join(lines + results_lines(res))
    for g in res["groups"]:
        ge = g["work_exponent"]
        lines += ["", f"== {group_label(g['axes'])} ({len(g['rows'])} rows): {g['verdict']}; "
                  f"fixed overhead {fmt_t(g['fixed_overhead_s'])}, work exponent "
                  f"{ge if ge is None else round(ge, 3)}, host per call "
                  f"{fmt_t(g['host_s_per_call'])}, Batch/Cold "
                  f"{'-' if g['batch_over_cold'] is None else round(g['batch_over_cold'], 2)}"]
        lines += [f"{i}. {e}" for i, e in enumerate(g["explanations"], 1)]
    if res.get("log_explanations"):
        lines += ["", "== the log as a whole"]
        lines += [f"{i}. {e}" for i, e in enumerate(res["log_explanations"], 1)]
    return "\n".join(lines + results_lines(res))


def results_lines(res):
    """The closing lines: which committed results were read (newest device first, history
    marked) and what to do with no GPU. The same order as ``attn-numba report``."""
    from ..sources import NO_GPU_HINT
    sets = res.get("results") or []
    if not sets:
        return ["", "Results read: none (no summary.json in a checkout or the package). "
                + NO_GPU_HINT]
    def name(d):
        return f"{d['path']} ({d.get('device') or '?'}, {d.get('date') or 'undated'})"
    cur = [name(d) for d in sets if not d["history"]]
    old = [name(d) for d in sets if d["history"]]
    text = "Results read, newest device first: " + ", ".join(cur)
    if old:
        text += "; history: " + ", ".join(old)
    return ["", text + ".", NO_GPU_HINT]


def groups_markdown(res, name=None):
    """Markdown table lines: one row per group of ``res`` (verdict, fixed overhead, work
    exponent, host time per call, Batch/Cold), under a caption naming the log and device."""
    dev = ", ".join(d.get("name", "?") for d in res.get("devices") or []) or "?"
    lines = [f"`{name or res['log']}` ({dev}): **{res['verdict']}**", "",
             "| group | rows | verdict | fixed overhead | work exponent | host per call "
             "(CPU - GPU) | Batch / Cold |", "|---|---:|---|---:|---:|---:|---:|"]
    for g in res.get("groups") or []:
        e, b, a = g["work_exponent"], g["batch_over_cold"], g["fixed_overhead_s"]
        if g["verdict"] == "undetermined":  # a fit over one problem size means nothing
            e = a = None
        lines.append(f"| {group_label(g['axes'])} | {len(g['rows'])} | {g['verdict']} | "
                     f"{'-' if a is None else fmt_t(a)} | {'-' if e is None else f'{e:.2f}'} | "
                     f"{fmt_t(g['host_s_per_call'])} | {'-' if b is None else f'{b:.2f}'} |")
    return lines
