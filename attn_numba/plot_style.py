"""The look the figures share (:mod:`attn_numba.plots`, :mod:`attn_numba.plots_backward`): which
records make a line, each kernel's colour, marker and label, the shape line, log axes over
sequence length, the run label of a title, and writing the PNG."""
from __future__ import annotations

from collections import Counter

OTHER_AXES = ("num_seqs", "num_heads", "num_kv_heads", "head_size", "window_left", "window_right")
#: draw order and colours: package kernels, then peers (flash_ws last, so that the colours
#: of the figures drawn before it existed stay as they were)
ORDER = ("naive", "tiled", "flash", "flash_tc", "flash_wgmma", "flexattention", "sdpa", "fa4",
         "cudnn", "flash_ws")
#: the peers, drawn dotted with square markers, and who makes each
PEER_LABEL = {"flexattention": "PyTorch", "sdpa": "PyTorch", "fa4": "FlashAttention-4",
              "cudnn": "cuDNN"}


# --------------------------------------------------------------------------- data selection

def _common_slice(records):
    """Records at the most common value of the axes other than seq_len and causal, so that
    each line is a sequence-length sweep of one shape."""
    if not records:
        return records, {}
    fixed = {}
    for a in OTHER_AXES:
        fixed[a] = Counter(r[a] for r in records).most_common(1)[0][0]
    return [r for r in records if all(r[a] == fixed[a] for a in OTHER_AXES)], fixed


def _kernels(records):
    names = {r["kernel"] for r in records}
    return [k for k in ORDER if k in names] + sorted(names - set(ORDER))


def _series(records, kernel, causal, field="gpu_time_s"):
    pts = sorted((r["seq_len"], r[field]) for r in records
                 if r["kernel"] == kernel and r["causal"] == causal and r.get(field))
    return [p[0] for p in pts], [p[1] for p in pts]


def _style(kernel):
    """Colour, marker, line and label of a kernel: fixed by :data:`ORDER` (a name outside it
    gets a colour from its characters, the same in every process)."""
    import matplotlib.pyplot as plt
    cyc = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    i = ORDER.index(kernel) if kernel in ORDER else len(ORDER) + sum(map(ord, kernel)) % 4
    peer = kernel in PEER_LABEL
    return dict(color=cyc[i % len(cyc)], marker="s" if peer else "o",
                linestyle=":" if peer else "-",
                label=kernel + (f" ({PEER_LABEL[kernel]})" if peer else ""))


def _shape_text(fixed):
    if not fixed:
        return ""
    return (f"{fixed['num_seqs']} seq, {fixed['num_heads']} heads / {fixed['num_kv_heads']} KV "
            f"heads, D={fixed['head_size']}, window ({fixed['window_left']}, "
            f"{fixed['window_right']}), fp16")


# --------------------------------------------------------------------------- figures

def _seqlen_log_axes(ax, ylabel, title=None):
    """Log-log axes with sequence length (base 2) on x, shared by the figures."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def _save(fig, path, title=None, rect=None):
    """Title the figure (run_mha_fwd on the device, then the shape line), lay it out, write
    the PNG and free it."""
    import matplotlib.pyplot as plt
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=rect) if rect else fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_label(doc, prefix):
    """Which run a figure shows: ``NVIDIA H100 80GB HBM3, run h100-quick (2026-11-24)``."""
    device = doc.get("device", "unknown device") + (" (SIMULATED)" if doc.get("simulated") else "")
    return f"{device}, run {prefix} ({str(doc.get('date') or 'undated')[:10]})"
