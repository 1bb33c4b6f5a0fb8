"""The flat results file ``summary.json``: built from NVBench's JSON output, checked, merged, loaded.

Schema (``SCHEMA_VERSION`` 1)::

    {"device": str, "date": ISO-8601 str, "simulated": bool, "versions": {pkg: version},
     "ceilings": {"copy_gbps", "fp16_matmul_tflops", "fp32_matmul_tflops_no_tf32", "method"}
                 or {"error": why not measured},
     "nvbench": {"argv": [...], "json": file name} (absent when simulated),
     "records": [{"kernel": str, <the 8 integer axes>: int,
                  "gpu_time_s": float|None,        # NVBench cold GPU time (mean)
                  "batch_gpu_time_s": float|None,  # NVBench batch GPU time; None when not run
                  "call_time_s": float|None,       # median per-call time of the public call,
                                                   # torch tensors, back to back (bench.calltime)
                  "samples": int|None, "noise": float|None,  # cold samples, relative stdev
                  "tflops": float|None,            # exact windowed FLOPs / gpu_time_s
                  "gbps": float|None,              # minimum bytes (Q,K,V read, O written) / gpu_time_s
                  "flops", "dense_flops", "bytes": int, "skipped": bool, "skip_reason": str|None,
                  "check": {"ok", "max_err", "tol", "lse_ok", "rows_checked"} or None,
                  "exec_mode": how NVBench measured it (see attn_numba.bench.nvbench_def)}]}
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
from pathlib import Path

from .grid import INT_AXES, Config, derived

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("device", "date", "versions", "ceilings", "records")
RECORD_KEYS = ("kernel", *INT_AXES, "gpu_time_s", "batch_gpu_time_s", "samples", "noise",
               "tflops", "gbps")
BENCHMARK = "run_mha_fwd"

#: NVBench summary tags -> record fields
TAGS = {
    "nv/cold/time/gpu/mean": "gpu_time_s",
    "nv/cold/time/cpu/mean": "cpu_time_s",
    "nv/cold/sample_size": "samples",
    "nv/cold/time/gpu/stdev/relative": "noise",
    "nv/batch/time/gpu/mean": "batch_gpu_time_s",
    "nv/batch/sample_size": "batch_samples",
    "nv/cold/bw/global/bytes_per_second": "nvbench_bytes_per_s",
}


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def versions():
    """Versions of what produced the numbers (missing packages are left out)."""
    out = {"python": platform.python_version()}
    for dist in ("attn_numba", "numba", "numba-cuda", "numpy", "torch", "cuda-bench",
                 "cuda-bindings", "triton"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if "attn_numba" not in out:  # run from a checkout without pip install
        from .. import __version__
        out["attn_numba"] = __version__ + " (not installed)"
    return out


def make_record(kernel, cfg, gpu_time_s=None, batch_gpu_time_s=None, samples=None, noise=None,
                skipped=False, skip_reason=None, check=None, call_time_s=None, **extra):
    """One record; ``tflops``/``gbps`` come from the exact counts and ``gpu_time_s``."""
    d = derived(cfg)
    rec = {"kernel": kernel, **cfg.axes(),
           "gpu_time_s": gpu_time_s, "batch_gpu_time_s": batch_gpu_time_s,
           "call_time_s": call_time_s, "samples": samples, "noise": noise,
           "tflops": d["flops"] / gpu_time_s / 1e12 if gpu_time_s else None,
           "gbps": d["bytes"] / gpu_time_s / 1e9 if gpu_time_s else None,
           "flops": d["flops"], "dense_flops": d["dense_flops"], "bytes": d["bytes"],
           "skipped": bool(skipped), "skip_reason": skip_reason, "check": check}
    rec.update(extra)
    return rec


# --------------------------------------------------------------------------- NVBench JSON

def _states_with_cuda_bench(path, benchmark=BENCHMARK):
    """States through NVBench's own reader, ``cuda.bench.results.BenchmarkResult``."""
    from cuda.bench.results import BenchmarkResult
    res = BenchmarkResult.from_json(path)
    if benchmark not in res:
        return
    for st in res[benchmark]:
        summaries = {tag: s.value for tag, s in st.summaries.items()}
        yield dict(st.point), summaries, st.is_skipped, st.skip_reason


def _states_plain(doc, benchmark=BENCHMARK):
    """The same from the parsed JSON document, for machines without cuda-bench."""
    for bench in doc.get("benchmarks", []):
        if bench.get("name") != benchmark:
            continue
        for st in bench.get("states", []):
            point = {a["name"]: a.get("value") for a in (st.get("axis_values") or [])}
            summaries = {}
            for s in st.get("summaries") or []:
                for item in s.get("data", []):
                    if item.get("name") == "value":
                        v = item.get("value")
                        t = item.get("type")
                        summaries[s["tag"]] = (int(v) if t == "int64" else float(v)
                                               if t == "float64" else v)
            yield point, summaries, bool(st.get("is_skipped")), st.get("skip_reason")


def _num(v, kind):
    return None if v is None else kind(v)


def records_from_nvbench(path, checks=None, modes=None, call_times=None):
    """Records for every state of ``run_mha_fwd`` in an NVBench JSON file.

    ``checks`` maps ``(kernel, cfg.key())`` to the correctness-check dict recorded during the run,
    ``modes`` to how it was measured (``exec_mode``), ``call_times`` to ``call_time_s``.
    """
    path = Path(path)
    try:
        states = list(_states_with_cuda_bench(path))
    except ImportError:
        states = list(_states_plain(json.loads(path.read_text())))
    records = []
    for point, summ, skipped, reason in states:
        kernel = str(point.get("Kernel"))
        cfg = Config(**{a: int(point[a]) for a in INT_AXES})
        vals = {field: summ.get(tag) for tag, field in TAGS.items()}
        rec = make_record(
            kernel, cfg,
            gpu_time_s=_num(vals["gpu_time_s"], float),
            batch_gpu_time_s=_num(vals["batch_gpu_time_s"], float),
            samples=_num(vals["samples"], int), noise=_num(vals["noise"], float),
            skipped=skipped, skip_reason=reason,
            check=(checks or {}).get((kernel, cfg.key())),
            call_time_s=(call_times or {}).get((kernel, cfg.key())),
            exec_mode=(modes or {}).get((kernel, cfg.key())),
            cpu_time_s=_num(vals["cpu_time_s"], float),
            batch_samples=_num(vals["batch_samples"], int))
        records.append(rec)
    return records


# --------------------------------------------------------------------------- files

def validate(doc):
    """Raise ``ValueError`` naming every way ``doc`` breaks the schema; return ``doc``."""
    problems = [f"missing key {k!r}" for k in REQUIRED_KEYS if k not in doc]
    if not isinstance(doc.get("records", []), list):
        problems.append("records must be a list")
    for n, rec in enumerate(doc.get("records") or []):
        missing = [k for k in RECORD_KEYS if k not in rec]
        if missing:
            problems.append(f"record {n} lacks {missing}")
            continue
        if not isinstance(rec["kernel"], str):
            problems.append(f"record {n}: kernel must be a string")
        for a in INT_AXES:
            if not isinstance(rec[a], int) or isinstance(rec[a], bool):
                problems.append(f"record {n}: axis {a} must be an int, got {rec[a]!r}")
        for k in ("gpu_time_s", "batch_gpu_time_s", "noise", "tflops", "gbps", "call_time_s"):
            v = rec.get(k)
            if v is not None and not (isinstance(v, (int, float)) and v >= 0):
                problems.append(f"record {n}: {k} must be a non-negative number or null")
        if rec["gpu_time_s"] is None and not rec.get("skipped"):
            problems.append(f"record {n}: gpu_time_s is null but the record is not skipped")
    if problems:
        raise ValueError("summary.json: " + "; ".join(problems))
    return doc


def record_key(rec):
    return (rec["kernel"], *(rec[a] for a in INT_AXES))


def merge(old_doc, new_doc):
    """``new_doc`` with the records of ``old_doc`` it does not replace (same kernel and axes),
    and the sections of ``old_doc`` it does not have (``"backward"``, say). Ceilings come
    from ``new_doc`` unless it has none."""
    if not old_doc:
        return new_doc
    seen = {record_key(r) for r in new_doc["records"]}
    kept = [r for r in old_doc.get("records", []) if record_key(r) not in seen]
    out = {**old_doc, **new_doc}
    out["records"] = kept + list(new_doc["records"])
    runs = old_doc.get("nvbench_runs") or ([old_doc["nvbench"]] if old_doc.get("nvbench") else [])
    if new_doc.get("nvbench"):
        out["nvbench_runs"] = runs + [new_doc["nvbench"]]
    if "error" in (new_doc.get("ceilings") or {"error": 1}) and old_doc.get("ceilings"):
        out["ceilings"] = old_doc["ceilings"]
    return out


def write(path, doc):
    validate(doc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def load(path):
    return validate(json.loads(Path(path).read_text()))


def find(results_dir):
    """Every ``summary.json`` under ``results_dir`` (or the file itself), sorted."""
    p = Path(results_dir)
    if p.is_file():
        return [p]
    return sorted(p.rglob("summary.json")) if p.is_dir() else []
