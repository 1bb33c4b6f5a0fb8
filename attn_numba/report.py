"""``attn-numba report``: the main job. Explain the log, measure (GPU) or reuse results, plot,
and write a short markdown report of what was measured and on which device.

Steps, each reported on stdout and in the report:

1. diagnose the NVBench log with :func:`attn_numba.explain.explain_log` (skipped with a note if
   that module is missing);
2. when a CUDA GPU is usable (and ``--no-bench`` is not given), run ``attn-numba bench`` in a
   subprocess into ``<results>/<device-slug>``; otherwise say in one sentence what to do
   (:data:`attn_numba.sources.NO_GPU_HINT`) and use the committed ``summary.json`` files:
   ``--results``, else the checkout's ``results/``, else the summary shipped in the package,
   in the order of :func:`attn_numba.sources.ordered_summaries` (newest device first, older
   sets marked as history; ``attn-numba explain`` reads the same);
   then explain every NVBench markdown log next to those summaries (``nvbench*.md``: the one the
   benchmark just wrote and the committed ones) and show each group's verdict;
3. draw the figures into ``--figures`` (:mod:`attn_numba.plots`);
4. write ``<figures>/REPORT.md``: the diagnosis, one table per results file (device, date,
   ceilings, times, rates, fractions of the ceilings, correctness checks), and the figures.

Runs on a CPU-only machine (steps 1, 3 and 4). Every path it prints or writes is relative
(:func:`attn_numba.sources.display_path`), so a committed ``REPORT.md`` names no machine path.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .plots import LOG_DEFAULT, parse_log_times


def add_arguments(p):
    p.add_argument("--log", default=str(LOG_DEFAULT),
                   help="NVBench log to explain (default: the packaged A30 log)")
    p.add_argument("--results", default=None,
                   help="results folder: read, and written by the benchmark (default: the "
                        "checkout's results/, else the summary shipped in the package)")
    p.add_argument("--figures", default="figures", help="figures folder (default %(default)s)")
    p.add_argument("--report", default=None,
                   help="report path (default <figures>/REPORT.md)")
    p.add_argument("--no-bench", action="store_true",
                   help="never run the benchmark, even with a GPU: use committed results")
    p.add_argument("--quick", action="store_true", help="run the benchmark with --quick")


def _say(steps, text):
    print("attn-numba report: " + text, flush=True)
    steps.append(text)


def _explain(log, steps, results):
    from .sources import display_path
    try:
        from .explain import explain_log
    except ImportError:
        _say(steps, "attn_numba.explain is not in this build; the log was not diagnosed")
        return None
    try:
        res = explain_log(log, results_dir=str(results))
    except Exception as exc:  # a broken log must not stop the report
        _say(steps, f"explaining {display_path(log)} failed: {type(exc).__name__}: {exc}")
        return None
    _say(steps, f"explained {display_path(log)}: verdict {res.get('verdict')}")
    return res


def _explain_bench_logs(summaries, steps):
    """Explain each NVBench markdown log (``nvbench*.md``) next to a summary.json: the one the
    benchmark just wrote and the committed ones. Returns [(path, result)]."""
    try:
        from .explain import explain_log
    except ImportError:
        return []
    from .sources import display_path
    out = []
    for spath, _, _ in summaries:
        for md in sorted(Path(spath).parent.glob("nvbench*.md")):
            try:
                res = explain_log(str(md))
            except (OSError, ValueError) as exc:
                _say(steps, f"explaining {display_path(md)} failed: {exc}")
                continue
            _say(steps, f"explained {display_path(md)}: " + "; ".join(
                f"{'/'.join(map(str, g['axes'].values())) or 'all'} {g['verdict']}"
                for g in res["groups"]))
            out.append((display_path(md), res))
    return out


def _bench(args, steps, root):
    """Run ``attn-numba bench`` into ``<results>/<device>`` when a GPU is usable; else say in
    one sentence what to do. Returns the folder written when a benchmark ran and succeeded."""
    from .bench.cli import gpu_status
    from .sources import NO_GPU_HINT, PACKAGED_RESULTS, display_path
    ok, info = gpu_status()
    if not ok:
        _say(steps, f"no CUDA GPU here ({info}). {NO_GPU_HINT}")
        return None
    if args.no_bench:
        _say(steps, f"GPU {info} present but --no-bench given; using committed results")
        return None
    from .bench.grid import device_slug
    base = Path("results") if Path(root) == PACKAGED_RESULTS else Path(root)
    out = base / (device_slug(info) + ("-quick" if args.quick else ""))
    cmd = [sys.executable, "-m", "attn_numba.cli", "bench", "--out", display_path(out)]
    if args.quick:
        cmd.append("--quick")
    _say(steps, f"GPU {info}: running attn-numba {' '.join(cmd[3:])}")
    rc = subprocess.call(cmd, env=dict(os.environ))
    _say(steps, f"benchmark exited with status {rc}; results in {display_path(out)}")
    return out if rc == 0 else None


def _fmt_t(s):
    if s is None:
        return "-"
    for unit, f in (("s", 1), ("ms", 1e3), ("µs", 1e6)):
        if s * f >= 1:
            return f"{s * f:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def _results_table(doc, log_rows):
    from .bench.grid import DEFAULT_GRID, ceiling_key
    ceil = doc.get("ceilings") or {}
    log_t = {(r["seq_len"], r["causal"]): r["gpu_time_s"] for r in log_rows}
    log_dev = next((r["device"] for r in log_rows if r.get("device")), "the")
    lines = ["| kernel | seq_len | causal | GPU time (cold) | batch GPU | TFLOP/s (windowed) "
             "| % of compute ceiling | GB/s (min bytes) | % of copy BW | check "
             f"| {log_dev} log time / this |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    recs = sorted(doc["records"], key=lambda r: (r["kernel"], r["causal"], r["seq_len"]))
    for r in recs:
        if r.get("skipped") or not r.get("gpu_time_s"):
            lines.append(f"| {r['kernel']} | {r['seq_len']} | {r['causal']} | skipped: "
                         f"{(r.get('skip_reason') or '')[:80]} | | | | | | | |")
            continue
        ck = ceiling_key(r["kernel"])
        frac = (f"{100 * r['tflops'] / ceil[ck]:.1f}% of {'fp16' if 'fp16' in ck else 'fp32'}"
                if ceil.get(ck) else "-")
        bw = f"{100 * r['gbps'] / ceil['copy_gbps']:.1f}%" if ceil.get("copy_gbps") else "-"
        c = r.get("check")
        chk = ("ok" if c["ok"] else "FAILED") + f" ({c['max_err']:.1e} ≤ {c['tol']:.1e})" \
            if c and c["ok"] else ("FAILED" if c else "-")
        at_log_shape = all(r[a] == DEFAULT_GRID[a][0] for a in
                           ("num_seqs", "num_heads", "num_kv_heads", "head_size", "window_left",
                            "window_right"))
        lt = log_t.get((r["seq_len"], r["causal"])) if at_log_shape else None
        ratio = f"{lt / r['gpu_time_s']:.3g}x" if lt else "-"
        lines.append(
            f"| {r['kernel']} | {r['seq_len']} | {r['causal']} | {_fmt_t(r['gpu_time_s'])} "
            f"| {_fmt_t(r.get('batch_gpu_time_s'))} | {r['tflops']:.3g} | {frac} "
            f"| {r['gbps']:.4g} | {bw} | {chk} | {ratio} |")
    return lines


def write_report(path, steps, explained, summaries, figures, log, log_rows, bench_logs=()):
    from .bench.summary import now_iso
    from .sources import display_path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    L = ["# attn_numba report", "",
         f"Generated {now_iso()} by `attn-numba report`. Every number below is read from a file: "
         f"the NVBench log `{Path(log).name}` or a `summary.json` written by `attn-numba bench` "
         "(NVBench cold GPU time, ceilings measured in the same run); the device of each is named.",
         "", "## What this run did", ""]
    L += [f"{i}. {s}" for i, s in enumerate(steps, 1)]
    L += ["", "## The log", ""]
    if explained:
        dev = (explained.get("device") or {}).get("name") or "the log's device"
        L.append(f"Device in the log: **{dev}**. Verdict: **{explained.get('verdict')}** "
                 f"(fixed overhead per call {_fmt_t(explained.get('fixed_overhead_s'))}, "
                 f"work exponent {explained.get('work_exponent') or float('nan'):.2f}).")
        L.append("")
        for e in (explained.get("explanations") or [])[:6]:
            L.append(f"- {e}")
        if len(explained.get("groups") or []) > 1:
            from .explain import groups_markdown
            L += [""] + groups_markdown(explained, Path(log).name)
    else:
        L.append("Not diagnosed (see above).")
    if bench_logs:
        from .explain import groups_markdown
        L += ["", "## Verdicts of the benchmark logs (`attn-numba explain`, one per group)", ""]
        for md, res in bench_logs:
            L += groups_markdown(res, md) + [""]
    L += ["", "## Measured results", "",
          "Newest device first; older result sets follow, marked as history.", ""]
    if not summaries:
        L.append("No `summary.json` found: nothing has been measured on a GPU yet "
                 "(run `attn-numba bench` on a GPU machine).")
    for spath, doc, history in summaries:
        sim = " (SIMULATED, times meaningless)" if doc.get("simulated") else ""
        hist = "History: " if history else ""
        L += [f"### {hist}{doc['device']}{sim}: `{display_path(spath)}`", "",
              f"Date {doc.get('date')}; versions: "
              + ", ".join(f"{k} {v}" for k, v in (doc.get("versions") or {}).items()) + ".", ""]
        ce = doc.get("ceilings") or {}
        if "error" in ce or not ce:
            L.append(f"Ceilings: not measured ({ce.get('error', 'absent')}).")
        else:
            L.append(f"Ceilings measured in the same run: copy {ce['copy_gbps']:.0f} GB/s "
                     f"(read+write), fp16 matmul {ce['fp16_matmul_tflops']:.0f} TFLOP/s, fp32 "
                     f"matmul (TF32 off) {ce['fp32_matmul_tflops_no_tf32']:.1f} TFLOP/s "
                     f"({ce.get('method', '')}).")
        modes = sorted({r.get("exec_mode") for r in doc["records"] if r.get("exec_mode")})
        if modes:
            L.append("NVBench measurement modes: " + "; ".join(modes) + ".")
        L += [""] + _results_table(doc, log_rows) + [""]
    L += ["", "## Figures", ""]
    if not figures:
        L.append("None drawn (no results).")
    for spath, pngs in figures:
        for p in pngs:
            rel = os.path.relpath(p, path.parent)
            L += [f"![{Path(p).stem}]({rel})", ""]
    path.write_text("\n".join(L) + "\n")
    return path


def _results_folder(results):
    """``(folder, why)``: the results folder to read (``results``, else the checkout's
    ``results/``) and None; or the package's results folder and the sentence saying so, when
    that folder holds no GPU summary."""
    from . import sources
    root = Path(results) if results else sources.results_dir()
    found = sources.ordered_summaries(root)
    if found and root.resolve() not in found[0][0].resolve().parents:
        return sources.PACKAGED_RESULTS, (
            f"no GPU summary.json in {sources.display_path(root)}: using the summary shipped in "
            f"the package, {sources.display_path(found[0][0])}")
    return root, None


def main(args):
    import matplotlib
    matplotlib.use("Agg")
    from .bench import summary as S
    from .plots import plot_all
    from .sources import display_path, ordered_summaries
    steps = []
    root, packaged = _results_folder(args.results)
    explained = _explain(args.log, steps, root)
    ran = _bench(args, steps, root)
    if ran is not None:  # read what was just measured, with the folder it went into
        root, packaged = _results_folder(ran.parent)
    if packaged:
        _say(steps, packaged)
    summaries = []
    for p, doc, history in ordered_summaries(root):
        try:
            S.load(p)
        except ValueError as exc:
            _say(steps, f"ignored {display_path(p)}: {exc}")
            continue
        summaries.append((p, doc, history))
    _say(steps, f"read {len(summaries)} GPU result file(s), newest device first: "
         + ", ".join(f"{display_path(p)} ({d['device']}{', history' if h else ''})"
                     for p, d, h in summaries) if summaries else
         f"found no GPU results in {display_path(root)}")
    bench_logs = _explain_bench_logs(summaries, steps)
    figures = plot_all(root, args.figures, args.log)
    _say(steps, f"drew {sum(len(p) for _, p in figures)} figure(s) into "
         f"{display_path(args.figures)}")
    log_rows = []
    try:
        log_rows = parse_log_times(args.log)
    except Exception:
        pass
    report = Path(args.report or Path(args.figures) / "REPORT.md")
    _say(steps, f"wrote {display_path(report)}")
    write_report(report, steps, explained, summaries, figures, args.log, log_rows, bench_logs)
    return 0
