"""``<set>_backward.png``: the ``"backward"`` section of a ``summary.json`` (``attn-numba bench
--backward``) as one figure; drawn by :func:`attn_numba.plots.plot_summary` when the section
has timed records, and not at all otherwise.

Two columns (``causal`` 0 and 1). Top: NVBench cold GPU time (ms) against tokens, log-log,
one line per (kernel, pass): colour and marker per kernel as in the forward figures, solid
for forward + backward, dashed with open markers for the backward alone. Bottom: this
package's time over the peer's (FlexAttention when it was measured) at the same state, per
pass, with parity marked. The legend sits under the panels; the title names the device, the
results set and the section's date, the subtitle the shape and every kernel drawn.
"""
from __future__ import annotations

from pathlib import Path

from . import plot_style as P

#: draw order, and how each pass is drawn and named
PASSES = ("fwd+bwd", "bwd")
PASS_STYLE = {"fwd+bwd": dict(linestyle="-", linewidth=1.8),
              "bwd": dict(linestyle="--", linewidth=1.2, markerfacecolor="white")}
PASS_LABEL = {"fwd+bwd": "fwd+bwd", "bwd": "bwd alone"}
#: what each kernel's lines time, for the subtitle
WHAT = {"flexattention": "compiled flex_attention with its block mask, autograd",
        "sdpa": "scaled_dot_product_attention with a dense mask, autograd"}


def timed_records(doc):
    """The section's records with a time, at the most common shape; ``(records, fixed)``."""
    recs = [r for r in (doc.get("backward") or {}).get("records") or []
            if r.get("gpu_time_s") and r.get("pass") in PASSES]
    return P._common_slice(recs)


def _series(records, kernel, pass_, causal):
    return P._series([r for r in records if r["pass"] == pass_], kernel, causal)


def _kernel_style(k):
    return {a: v for a, v in P._style(k).items() if a not in ("label", "linestyle")}


def _kernel_text(k):
    if k in P.PEER_LABEL:
        return f"{P._style(k)['label']}: {WHAT.get(k, 'autograd')}"
    return f"{k} (ours): bwd = mha_bwd(kernel={k!r}); fwd+bwd = mha_fwd (kernel auto), then that"


def _ratio_panel(ax, records, ours, peer, causal):
    """``ours`` time / ``peer`` time per pass at the states both have."""
    top = 0.0
    for k in ours:
        for p in PASSES:
            mine = dict(zip(*_series(records, k, p, causal)))
            theirs = dict(zip(*_series(records, peer, p, causal)))
            pts = sorted((s, mine[s] / theirs[s]) for s in mine if s in theirs)
            if pts:
                ax.plot([q[0] for q in pts], [q[1] for q in pts], **_kernel_style(k),
                        **PASS_STYLE[p])
                top = max(top, *(q[1] for q in pts))
                if p == "fwd+bwd":  # direct labels: the ratio the figure is about
                    for s, r in pts:
                        ax.annotate(f"{r:.2f}", (s, r), textcoords="offset points",
                                    xytext=(0, -11), ha="center", fontsize=7)
    if not top:
        ax.text(0.5, 0.5, "no state timed for both", ha="center", va="center",
                transform=ax.transAxes)
    ax.axhline(1.0, color="0.3", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(f"{'/'.join(ours)} time\n/ {peer} time", fontsize=9)
    ax.set_ylim(0.0, max(1.2, 1.15 * top))
    ax.grid(True, which="both", alpha=0.3)


def _legend(fig, kernels):
    from matplotlib.lines import Line2D
    handles, labels = [], []
    for k in kernels:
        for p in PASSES:
            handles.append(Line2D([], [], **_kernel_style(k), **PASS_STYLE[p]))
            labels.append(f"{P._style(k)['label']} {PASS_LABEL[p]}")
    handles.append(Line2D([], [], color="0.3", linewidth=0.8))
    labels.append("parity (lower panels)")
    fig.legend(handles, labels, loc="lower center", ncol=len(kernels) + 1, fontsize=8,
               frameon=False)


def fig_backward(records, label, fixed, path):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    kernels = P._kernels(records)
    causals = sorted({r["causal"] for r in records}) or [0]
    ours = [k for k in kernels if k not in P.PEER_LABEL]
    peers = [k for k in kernels if k in P.PEER_LABEL]
    peer = "flexattention" if "flexattention" in peers else (peers[0] if peers else None)
    rows = 2 if ours and peer else 1
    fig, axes = plt.subplots(rows, len(causals), figsize=(6.2 * len(causals), 4.4 + 2.0 * rows),
                             squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": [3, 1.3][:rows]})
    for j, c in enumerate(causals):
        ax = axes[0][j]
        for k in kernels:
            for p in PASSES:
                x, y = _series(records, k, p, c)
                if x:
                    ax.plot(x, [t * 1e3 for t in y], **_kernel_style(k), **PASS_STYLE[p])
        P._seqlen_log_axes(ax, "GPU time per call (ms)", f"causal={c}")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.2 ms, not 2 x 10^-1
        if rows == 2:
            ax.set_xlabel("")
            _ratio_panel(axes[1][j], records, ours, peer, c)
    _legend(fig, kernels)
    subtitle = "\n".join(_kernel_text(k) for k in kernels)   # one line each: they are long
    P._save(fig, path, f"run_mha_bwd on {label}: backward alone and forward + backward, "
                       f"NVBench cold GPU time\n{P._shape_text(fixed)}\n{subtitle}",
            rect=(0, 0.06, 1, 1))


def plot_backward(doc, prefix, out_dir):
    """``[<out_dir>/<prefix>_backward.png]`` when ``doc`` has a timed backward section, else
    ``[]`` (and nothing written)."""
    records, fixed = timed_records(doc)
    if not records:
        return []
    section = doc["backward"]
    label = P.run_label(dict(doc, date=section.get("date") or doc.get("date")), prefix)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / f"{prefix}_backward.png"
    fig_backward(records, label, fixed, path)
    return [path]
