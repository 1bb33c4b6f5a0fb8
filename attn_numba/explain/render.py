"""Text and JSON output of :func:`attn_numba.explain.explain_log`, and the CLI
(``attn-numba explain [LOG] [--json] [--results DIR]``)."""
from __future__ import annotations

import json
import math
import sys

import numpy as np


def fmt_t(s):
    """Seconds -> ``"4.83 s"``, ``"29 us"``; None/inf/nan as their str."""
    if s is None or not math.isfinite(s):
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
        from .rows import _device_label
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
        return "\n".join(lines)
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
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("log", nargs="?", default=None,
                        help="NVBench markdown log (default: the packaged A30 log)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--results", default=None,
                        help="results directory with */summary.json "
                             "(default: the checkout's results/)")


def main(args):
    """CLI entry: exit 0 with the report; 1 with one line on stderr for an unreadable or
    malformed log (never a traceback)."""
    from .core import explain_log
    try:
        res = explain_log(args.log, results_dir=args.results)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"attn-numba explain: {args.log or 'packaged log'}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(jsonable(res)))
    else:
        print(format_text(res))
    return 0


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
