"""``explain_log``: parse, group, fit and diagnose one NVBench log of ``run_mha_fwd``."""
from __future__ import annotations

from importlib import resources

from . import diagnose
from .context import (committed_sentences, load_pathology, load_summaries, pathology_sentence,
                      roofline, roofline_sentence)
from .fit import RULE, batch_over_cold, fit_group, host_s_per_call
from .parse import parse_log
from .render import group_label
from .rows import build_rows, group_rows

PACKAGED_LOG = "nvbench_run_mha_fwd_a30.log"


def read_log(path=None):
    """Text of ``path`` (the packaged A30 log when None)."""
    if path is None:
        return resources.files("attn_numba").joinpath("data", PACKAGED_LOG).read_text()
    with open(path, encoding="utf-8") as f:
        return f.read()


def explain_group(axes, rows, device):
    """Fit and diagnose one group. Returns the group's JSON-able dict (see explain_log)."""
    g = fit_group(rows)
    g["host_s_per_call"] = host_s_per_call(rows)
    g["batch_over_cold"] = batch_over_cold(rows)
    sentences = []
    for symptom in diagnose.SYMPTOMS:
        if symptom is diagnose.bw_util:
            sentences += symptom(rows, g, device)
        else:
            sentences += symptom(rows, g)
    sentences += roofline_sentence(rows, device)
    return {"axes": dict(axes), "rows": rows, "verdict": g["verdict"],
            "fixed_overhead_s": g["fixed_overhead_s"], "work_exponent": g["work_exponent"],
            "fit": g["fit"], "median_time_s": g["median_time_s"],
            "time_column": g["time_column"], "host_s_per_call": g["host_s_per_call"],
            "batch_over_cold": g["batch_over_cold"], "explanations": sentences}


def explain_log(path=None, results_dir=None, benchmark="run_mha_fwd", text=None):
    """Diagnose an NVBench log of ``run_mha_fwd`` (the packaged A30 log when ``path`` and
    ``text`` are None). Raises OSError for an unreadable file and
    :class:`attn_numba.explain.LogParseError` (a ValueError naming the line) for a malformed one.

    Rows are grouped by every axis outside the work formula (Kernel, other string axes; the
    device when there are several); each group gets its own fit, verdict and sentences.
    Returns a JSON-able dict (after :func:`attn_numba.explain.jsonable`):

    * ``rows``: every row with its axes (flat and under ``axes``), times, work, warnings, status;
    * ``groups``: per group ``axes``, ``rows``, ``verdict``, ``fixed_overhead_s``,
      ``work_exponent``, ``fit``, ``median_time_s``, ``time_column``, ``host_s_per_call``
      (median cold CPU - GPU), ``batch_over_cold`` (median Batch/Cold GPU, or None),
      ``explanations``;
    * ``verdict``: overhead-dominated if any group is, else work-proportional if any group
      is, else undetermined; ``fit``, ``fixed_overhead_s``, ``work_exponent``,
      ``median_time_s``, ``time_column`` are those of ``verdict_group`` (the first group with
      that verdict);
    * ``explanations``: the single group's sentences, or, with several groups, one summary
      sentence and every group's sentences prefixed with its axes; then ``log_explanations``
      (committed results and the pathology reproduction, for overhead-dominated groups);
    * ``results``: the committed result sets read, newest device first, each ``path``,
      ``device``, ``date`` and ``history`` (True for the older sets);
    * ``device`` (the first device of the header), ``devices``, ``rule``, ``log``.
    """
    label = path or ("<text>" if text is not None else f"attn_numba/data/{PACKAGED_LOG}")
    if text is None:
        text = read_log(path)
    parsed = parse_log(text)
    rows = build_rows(parsed, benchmark)
    devices = [{k: v for k, v in d.items() if k != "raw"} for d in parsed["devices"]]
    by_index = {d["index"]: d for d in devices}
    device = devices[0] if devices else {}
    for r in rows:
        dev = by_index.get(r.get("device_index"), device)
        r.update(roofline(r, dev) if dev else {})
    groups = []
    for axes, grows in group_rows(rows):
        gdev = by_index.get(grows[0].get("device_index"), device)
        groups.append(explain_group(axes, grows, gdev))
    verdicts = [g["verdict"] for g in groups]
    verdict = next((v for v in ("overhead-dominated", "work-proportional") if v in verdicts),
                   "undetermined")
    top = next((g for g in groups if g["verdict"] == verdict), groups[0] if groups else None)
    if len(groups) == 1:
        explanations = list(groups[0]["explanations"])
    else:
        explanations = [f"{len(groups)} groups (rows split by "
                        f"{', '.join(groups[0]['axes']) if groups else '-'}; each fitted "
                        "alone): " + "; ".join(f"{group_label(g['axes'])}: {g['verdict']}"
                                               for g in groups) + "."]
        for g in groups:
            explanations += [f"[{group_label(g['axes'])}] {e}" for e in g["explanations"]]
    od = [r for g in groups if g["verdict"] == "overhead-dominated" for r in g["rows"]]
    summaries = load_summaries(results_dir)
    log_expl = []
    if od:
        log_expl += committed_sentences(od, device, summaries)
        p = load_pathology(results_dir)
        s = pathology_sentence(p) if p else None
        if s:
            log_expl.append(s)
    return {
        "log": label,
        "device": device,
        "devices": devices,
        "rows": rows,
        "groups": groups,
        "verdict_group": top["axes"] if top else None,
        "fit": top["fit"] if top else None,
        "time_column": top["time_column"] if top else None,
        "median_time_s": top["median_time_s"] if top else None,
        "fixed_overhead_s": top["fixed_overhead_s"] if top else None,
        "work_exponent": top["work_exponent"] if top else None,
        "verdict": verdict,
        "rule": RULE + "; a log is overhead-dominated if any group is",
        "explanations": explanations + log_expl,
        "log_explanations": log_expl,
        "results": [{"path": d["_path"], "device": d.get("device"), "date": d.get("date"),
                     "history": d["_history"]} for d in summaries],
    }
