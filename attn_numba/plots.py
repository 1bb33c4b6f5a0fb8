"""``attn-numba plot``: PNG figures from committed ``summary.json`` results; no GPU needed.

For every ``summary.json`` under ``--results`` (one figure set per results folder, file names
prefixed with the folder name):

* ``<set>_time_vs_seqlen.png``: NVBench cold GPU time against sequence length, log-log, one
  line per kernel and peer, one panel per ``causal``, with the A30 log's times overlaid;
* ``<set>_ceiling_fraction.png``: achieved fraction of the relevant ceiling measured in the same
  run: CUDA-core kernels against the fp32 matmul rate (TF32 off), the tensor-core kernel and
  the peers against the fp16 matmul rate, and every kernel's minimum-bytes bandwidth against
  the copy bandwidth;
* ``<set>_speedup_vs_naive.png``: time of ``naive`` divided by each kernel's time;
* ``<set>_causal_vs_noncausal.png``: time(causal=1) / time(causal=0) per kernel, next to the
  exact ratio of windowed work;
* ``<set>_long_sequences.png`` (only when the summary has the ``attn-numba bench --long``
  sweep): time against tokens from 512 to 512k for the kernels of the sweep, one panel per
  ``causal``, a slope-1 guide, and the skipped states with their reasons under the panels.
* ``<set>_backward.png`` (only with a ``"backward"`` section): :mod:`attn_numba.plots_backward`.

The first four figures show the log's grid (up to 8192 tokens); the long sweep has its own.

Simulated summaries (``--simulate``) are left out unless ``--include-simulated``.
"""
from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

# the shared look (the notebooks call plots._style and plots._kernels, as before)
from .plot_style import (OTHER_AXES, _common_slice, _kernels, _save, _seqlen_log_axes,
                         _series, _shape_text, _style, run_label)

LOG_DEFAULT = Path(__file__).resolve().parent / "data" / "nvbench_run_mha_fwd_a30.log"


def add_arguments(p):
    p.add_argument("--results", default="results",
                   help="a results folder (searched recursively for summary.json) or one file "
                        "(default %(default)s)")
    p.add_argument("--out", default="figures", help="folder for the PNGs (default %(default)s)")
    p.add_argument("--log", default=str(LOG_DEFAULT),
                   help="NVBench log whose times are overlaid (default: the packaged A30 log; "
                        "'none' to leave it out)")
    p.add_argument("--include-simulated", action="store_true",
                   help="also plot summaries written by `attn-numba bench --simulate`")


# --------------------------------------------------------------------------- the log's times

def parse_log_times(path):
    """``[{"seq_len", "causal", "gpu_time_s", "batch_gpu_time_s", "device"}]`` from an NVBench
    markdown log, read by :func:`attn_numba.explain.explain_log` (OSError or
    :class:`attn_numba.explain.LogParseError` for an unreadable or malformed log)."""
    from .explain import explain_log
    res = explain_log(str(path))
    return [{"seq_len": int(r["seq_len"]), "causal": int(r.get("causal", 0)),
             "gpu_time_s": r.get("gpu_time_s"), "batch_gpu_time_s": r.get("batch_gpu_time_s"),
             "device": r.get("device") or (res.get("device") or {}).get("name")}
            for r in res["rows"] if r.get("seq_len") is not None]


# --------------------------------------------------------------------------- figures

def fig_time(records, device, fixed, log_rows, path):
    import matplotlib.pyplot as plt
    causals = sorted({r["causal"] for r in records}) or [0]
    fig, axes = plt.subplots(1, len(causals), figsize=(6.2 * len(causals), 4.6), squeeze=False)
    log_dev = next((r["device"] for r in log_rows if r.get("device")), "log")
    for ax, c in zip(axes[0], causals):
        for k in _kernels(records):
            x, y = _series(records, k, c)
            if x:
                ax.plot(x, y, **_style(k))
        lx = sorted((r["seq_len"], r["gpu_time_s"]) for r in log_rows
                    if r["causal"] == c and r.get("gpu_time_s"))
        if lx:
            ax.plot([p[0] for p in lx], [p[1] for p in lx], color="0.3", linestyle="--",
                    marker="x", label=f"{log_dev}: the log (NVBench GPU Time)")
        _seqlen_log_axes(ax, "GPU time per call (s)", f"causal={c}")
    # one legend under the panels, so no line is hidden behind it
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    _save(fig, path, f"run_mha_fwd on {device}: NVBench cold GPU time\n{_shape_text(fixed)}",
          rect=(0, 0.12, 1, 1))


def _kernel_legend(fig, records, extra=(), ncol=5):
    """One legend under the panels: a colour per kernel, then ``extra`` (handle, label) pairs,
    so that no line is hidden behind it."""
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], **{k: v for k, v in _style(k).items() if k != "label"})
               for k in _kernels(records)]
    labels = [_style(k)["label"] for k in _kernels(records)]
    for h, lab in extra:
        handles.append(h)
        labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)


def _ceiling_groups(records, ceilings):
    """``(fp32 kernels, fp16 kernels)`` drawn against each matmul ceiling, by name."""
    from .bench.grid import ceiling_key
    ks = [k for k in _kernels(records)
          if ceilings.get(ceiling_key(k)) and _series(records, k, 0, "tflops")[0] + _series(
              records, k, 1, "tflops")[0]]
    return ([k for k in ks if "fp16" not in ceiling_key(k)],
            [k for k in ks if "fp16" in ceiling_key(k)])


def fig_ceiling(records, device, fixed, ceilings, path):
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from .bench.grid import ceiling_key
    fig, axes = plt.subplots(1, 2, figsize=(12.4, 5.2))
    ok = ceilings and "error" not in ceilings
    if not ok:
        why = (ceilings or {}).get("error", "no ceilings in summary.json")
        for ax in axes:
            ax.text(0.5, 0.5, f"ceilings not measured:\n{why}", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
        _save(fig, path, f"run_mha_fwd on {device}: achieved fraction of ceilings\n"
                         f"{_shape_text(fixed)}")
        return
    for k in _kernels(records):
        ck = ceiling_key(k)
        for c in sorted({r["causal"] for r in records}):
            st = _style(k)
            st["linestyle"] = "-" if c == 0 else "--"
            x, y = _series(records, k, c, "tflops")
            if x and ceilings.get(ck):
                axes[0].plot(x, [v / ceilings[ck] for v in y], **st)
            x, y = _series(records, k, c, "gbps")
            if x and ceilings.get("copy_gbps"):
                axes[1].plot(x, [v / ceilings["copy_gbps"] for v in y], **st)
    fp32, fp16 = _ceiling_groups(records, ceilings)
    lines = ["compute: exact windowed TFLOP/s / ceiling"]
    if fp32:
        lines.append(f"{', '.join(fp32)} vs fp32 matmul, TF32 off "
                     f"({ceilings.get('fp32_matmul_tflops_no_tf32', float('nan')):.1f} TFLOP/s)")
    if fp16:
        lines.append(f"{', '.join(fp16)} vs fp16 matmul "
                     f"({ceilings.get('fp16_matmul_tflops', float('nan')):.0f} TFLOP/s)")
    axes[0].set_title("\n".join(lines), fontsize=9)
    axes[1].set_title("memory: minimum bytes (Q, K, V read, O written) / time\n"
                      "/ device copy bandwidth "
                      f"({ceilings.get('copy_gbps', float('nan')):.0f} GB/s, read+write)",
                      fontsize=9)
    for ax, lab in zip(axes, ("fraction of compute ceiling", "fraction of copy bandwidth")):
        _seqlen_log_axes(ax, lab)
    _kernel_legend(fig, records, [(Line2D([], [], color="0.3", linestyle="-"), "causal=0"),
                                  (Line2D([], [], color="0.3", linestyle="--"), "causal=1")])
    _save(fig, path, f"run_mha_fwd on {device}: achieved fraction of ceilings measured in the "
                     f"same run\n{_shape_text(fixed)}", rect=(0, 0.1, 1, 1))


def fig_speedup(records, device, fixed, path):
    import matplotlib.pyplot as plt
    causals = sorted({r["causal"] for r in records}) or [0]
    fig, axes = plt.subplots(1, len(causals), figsize=(6.2 * len(causals), 4.6), squeeze=False)
    for ax, c in zip(axes[0], causals):
        nx, ny = _series(records, "naive", c)
        base = dict(zip(nx, ny))
        drawn = False
        for k in _kernels(records):
            if k == "naive":
                continue
            x, y = _series(records, k, c)
            pts = [(s, base[s] / t) for s, t in zip(x, y) if s in base]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], **_style(k))
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "needs naive and at least one other kernel\nat the same sizes",
                    ha="center", va="center", transform=ax.transAxes)
        ax.axhline(1.0, color="0.5", linewidth=0.8)
        _seqlen_log_axes(ax, "speedup over naive (time_naive / time)", f"causal={c}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:  # one legend under the panels, off the data
        fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8, frameon=False)
    _save(fig, path, f"run_mha_fwd on {device}: speedup over the naive kernel (NVBench cold GPU "
                     f"time)\n{_shape_text(fixed)}", rect=(0, 0.07, 1, 1))


def fig_causal(records, device, fixed, path):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.6))
    work = defaultdict(dict)
    for r in records:
        work[r["seq_len"]][r["causal"]] = r["flops"]
    ws = sorted((s, w[1] / w[0]) for s, w in work.items() if 0 in w and 1 in w and w[0])
    if ws:
        ax.plot([p[0] for p in ws], [p[1] for p in ws], color="k", linestyle="--",
                label="exact windowed work ratio")
    for k in _kernels(records):
        x0, y0 = _series(records, k, 0)
        x1, y1 = _series(records, k, 1)
        t0, t1 = dict(zip(x0, y0)), dict(zip(x1, y1))
        pts = sorted((s, t1[s] / t0[s]) for s in t0 if s in t1)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], **_style(k))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("time(causal=1) / time(causal=0)")
    ax.set_ylim(0, max(1.5, ax.get_ylim()[1]))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"run_mha_fwd on {device}: causal vs non-causal\n{_shape_text(fixed)}", fontsize=10)
    _save(fig, path)


def fig_long(records, skipped, device, fixed, path):
    """Time against tokens for the kernels of the long-sequence sweep (``records``: timed
    records of those kernels at every length; ``skipped``: skipped records of the sweep)."""
    import matplotlib.pyplot as plt
    causals = sorted({r["causal"] for r in records} | {r["causal"] for r in skipped}) or [0]
    fig, axes = plt.subplots(1, len(causals), figsize=(6.2 * len(causals), 4.6), squeeze=False)
    for ax, c in zip(axes[0], causals):
        for k in _kernels(records):
            x, y = _series(records, k, c)
            if x:
                ax.plot(x, y, **_style(k))
        pts = sorted((r["seq_len"], r["gpu_time_s"]) for r in records if r["causal"] == c)
        if pts:  # time proportional to tokens, through the shortest point of the fastest line
            s0, t0 = min(pts, key=lambda p: (p[0], p[1]))
            xs = [s0, max(p[0] for p in pts)]
            ax.plot(xs, [t0 * x / s0 for x in xs], color="0.6", linestyle="--", linewidth=0.8,
                    label="time proportional to tokens")
        for r in skipped:
            if r["causal"] == c:
                ax.axvline(r["seq_len"], color=_style(r["kernel"])["color"], alpha=0.25,
                           linewidth=3)
        _seqlen_log_axes(ax, "GPU time per call (s)", f"causal={c}")
        ax.legend(fontsize=8, loc="upper left")
    grouped = defaultdict(set)  # (kernel, reason) -> {(seq_len, causal)}
    for r in skipped:
        why = (r.get("skip_reason") or "no reason recorded")[:100]
        grouped[(r["kernel"], why)].add((r["seq_len"], r["causal"]))
    notes = [f"{k} skipped at " + ", ".join(
                 f"{s} (causal {'/'.join(str(c) for c in sorted({c for t, c in pts if t == s}))})"
                 for s in sorted({t for t, _ in pts})) + f": {why}"
             for (k, why), pts in sorted(grouped.items())]
    if len(notes) > 6:
        notes = notes[:6] + [f"... and {len(notes) - 6} more skipped states (see summary.json)"]
    from .bench.grid import is_long
    short_only = sorted(k for k in _kernels(records)
                        if not any(is_long(r["seq_len"]) for r in records if r["kernel"] == k)
                        and not any(r["kernel"] == k for r in skipped))
    if short_only:
        notes.append(f"{', '.join(short_only)}: no long-sequence record in this summary "
                     f"(not measured, not skipped)")
    fig.text(0.01, 0.01, "\n".join(notes) or "no skipped states", fontsize=7, va="bottom")
    _save(fig, path, f"run_mha_fwd on {device}: long sequences (NVBench cold GPU time; shaded: "
                     f"skipped)\n{_shape_text(fixed)}",
          rect=(0, 0.03 + 0.028 * max(1, len(notes)), 1, 1))


def plot_summary(doc, prefix, out_dir, log_rows):
    """All figures of one summary; returns the written paths."""
    from .bench.grid import DEFAULT_GRID, LONG_KERNELS, is_long
    all_records = doc["records"]
    long_skipped = [r for r in all_records if is_long(r["seq_len"]) and not r.get("gpu_time_s")]
    timed = [r for r in all_records if r.get("gpu_time_s")]
    long_kernels = {r["kernel"] for r in all_records if is_long(r["seq_len"])}
    if long_kernels:  # the sweep's other kernels, drawn over the lengths they have
        long_kernels |= {r["kernel"] for r in timed if r["kernel"] in LONG_KERNELS}
    records, fixed = _common_slice([r for r in timed if not is_long(r["seq_len"])])
    if any(fixed.get(a) != DEFAULT_GRID[a][0] for a in OTHER_AXES):
        log_rows = []  # the log's times are only comparable at the log's shape
    device = run_label(doc, prefix)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{prefix}_{n}.png" for n in
             ("time_vs_seqlen", "ceiling_fraction", "speedup_vs_naive", "causal_vs_noncausal")]
    fig_time(records, device, fixed, log_rows, paths[0])
    fig_ceiling(records, device, fixed, doc.get("ceilings"), paths[1])
    fig_speedup(records, device, fixed, paths[2])
    fig_causal(records, device, fixed, paths[3])
    if long_kernels:
        sweep = [r for r in timed if r["kernel"] in long_kernels
                 and all(r[a] == fixed.get(a, r[a]) for a in OTHER_AXES)]
        paths.append(out_dir / f"{prefix}_long_sequences.png")
        fig_long(sweep, long_skipped, device, fixed, paths[-1])
    from .plots_backward import plot_backward  # <set>_backward.png, when the summary has one
    return paths + plot_backward(doc, prefix, out_dir)


def plot_all(results, out_dir, log=str(LOG_DEFAULT), include_simulated=False):
    """Figures for every summary under ``results``; returns ``[(summary_path, [png, ...])]``."""
    import matplotlib
    matplotlib.use("Agg")
    from .bench import summary as S
    log_rows = []
    if log and str(log).lower() != "none":
        try:
            log_rows = parse_log_times(log)
        except (OSError, ValueError) as exc:  # draw the results without the log's line
            print(f"attn-numba plot: the log {log} is not drawn: {exc}", file=sys.stderr)
    done = []
    from .sources import _rank
    for path in sorted(S.find(results), key=_rank):  # newest device first, as report and explain
        try:
            doc = S.load(path)
        except ValueError as exc:  # not written by `attn-numba bench`: say so, draw the rest
            print(f"attn-numba plot: skipping {path}: {exc}", file=sys.stderr)
            continue
        if doc.get("simulated") and not include_simulated:
            continue
        prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.parent.name) or "results"
        done.append((path, plot_summary(doc, prefix, out_dir, log_rows)))
    return done


def main(args):
    done = plot_all(args.results, args.out, args.log, args.include_simulated)
    if not done:
        print(f"attn-numba plot: no summary.json of a GPU run under {args.results} (run "
              f"`attn-numba bench` on a GPU first, or pass --include-simulated); nothing drawn",
              file=sys.stderr)
        return 1
    for path, pngs in done:
        print(f"attn-numba plot: {path} -> " + ", ".join(str(p) for p in pngs))
    return 0
