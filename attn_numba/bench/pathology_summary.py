"""The summary of a pathology run (:mod:`attn_numba.bench.pathology`): the NVBench logs
parsed by :mod:`attn_numba.explain`, the compile timings, in one JSON."""
from __future__ import annotations

import json

import numpy as np

from .pathology_nvbench import AXES


def _nvbench_summary(entry):
    """Parse one variant's captured NVBench stdout with attn_numba.explain."""
    from .. import explain
    if "log" not in entry:
        return {"skipped": entry.get("skipped", "not run")}
    parsed = explain.parse_log(entry["log"])
    rows = explain.build_rows(parsed)
    runs = parsed["runs"]
    out_rows = []
    for r in runs:
        c, b = r.get("cold") or {}, r.get("batch") or {}
        tab = next((x for x in rows if x.get("seq_len") == r["axes"].get("seq_len")
                    and x.get("causal") == r["axes"].get("causal")), {})
        out_rows.append({
            "seq_len": r["axes"].get("seq_len"), "causal": r["axes"].get("causal"),
            "windowed_flops": tab.get("windowed_flops") or explain._row_work(r["axes"])["windowed_flops"],
            "cold_gpu_s": c.get("gpu_time_s"), "cold_cpu_s": c.get("cpu_time_s"),
            "cold_samples": c.get("samples"), "batch_gpu_s": b.get("gpu_time_s"),
            "batch_samples": b.get("samples"), "gpu_noise": tab.get("gpu_noise"),
            "warnings": sorted({w["kind"] for w in r["warnings"]}),
            "failed": any(o.startswith("Fail:") for o in r["other"]),
            "deadlock": "Deadlock detected" in entry["log"].split(f"[{r['index']}/{r['total']}]")[1].split("Run:")[0]
            if f"[{r['index']}/{r['total']}]" in entry["log"] else False,
        })
    pts = [(x["windowed_flops"], x["cold_gpu_s"]) for x in out_rows if x["cold_gpu_s"]]
    fit = explain.fit_overhead(*zip(*pts)) if len({p[0] for p in pts}) >= 2 else None
    med = float(np.median([p[1] for p in pts])) if pts else None
    fixed = max(fit["a"], 0.0) if fit else None
    return {"rows": out_rows, "fit": fit, "median_s": med, "fixed_overhead_s": fixed,
            "work_exponent": fit["exponent"] if fit else None,
            "verdict": explain.verdict_of(fixed, med, fit["exponent"] if fit else None),
            "compiles_in_exec": [{k: e.get(k) for k in ("seq_len", "causal", "compiles",
                                                        "compile_s", "wall_s", "error")}
                                 for e in entry.get("execs", [])],
            "rc": entry.get("rc"), "log": entry["log"]}


def _res(raw, name):
    return ((raw or {}).get("steps", {}).get(name) or {}).get("result")


def summarize(raw1, raw2=None, sim=None, profile_text=None):
    """Fold the device runs' raw JSON (scripts/gpu_pathology.py) into results/h100/pathology.json."""
    ct = _res(raw1, "compile_times") or {}
    out = {"device": raw1.get("device"), "date": raw1.get("date"),
           "versions": raw1.get("versions"), "axes": AXES,
           "dates": [r.get("date") for r in (raw1, raw2) if r]}
    out["compile_times"] = {
        "import_s": ct.get("import_s"), "context_s": ct.get("context_s"),
        "cold_process_first_call_s": ct.get("first_launch_s"),
        "cold_process_first_call_compiles": ct.get("first_launch_compiles"),
        "second_call_s": ct.get("second_launch_s"),
        "rejit_per_call_s": ct.get("rejit_per_call_s"),
        "rejit_cache_true_per_call_s": ct.get("rejit_cache_true_per_call_s"),
        "compile_ptx_s": ct.get("compile_ptx_s"),
        "rejit_lineinfo_s": ct.get("rejit_lineinfo_s"),
        "rejit_debug_noopt_s": ct.get("rejit_debug_noopt_s"),
        "other_kernels_first_call": _res(raw1, "other_kernels"),
        "note": "naive kernel, fp16, H=32/8, D=128, S=512 inputs; each key measured in a fresh "
                "process as described in attn_numba.bench.pathology.compile_times",
    }
    fc = {}
    for raw in (raw1, raw2):
        for name, step in (raw or {}).get("steps", {}).items():
            if name.startswith("first_call") and step.get("result"):
                key = name if raw is raw1 else f"{name}@stage2"
                fc[key] = step["result"]
    out["first_call"] = fc
    if profile_text:
        out["first_call_profile_top"] = profile_text.splitlines()[:48]
    nv = {}
    for raw in (raw1, raw2):
        for v, entry in (raw or {}).get("nvbench", {}).items():
            nv[v] = _nvbench_summary(entry)
    out["nvbench"] = nv
    db = _res(raw2, "debug_build") or _res(raw1, "debug_build")
    out["debug_build_kernel_s"] = db
    out["simulator"] = sim
    return out
