"""Where shown numbers come from: the committed results a notebook or report reads, named.

Every figure and number in the notebooks and in ``attn-numba report`` is read from a file, and
the file, the device and the date are printed with it. This module picks the file:

* :func:`results_dir` finds the checkout's ``results/`` folder (walking up from the current
  folder, then from the package), or falls back to the copy shipped in the package;
* :func:`pick_summary` prefers the newest device: ``results/h200/summary.json`` when it exists,
  else ``results/h100/summary.json`` (:data:`PREFERRED`), else any non-simulated summary, else
  the packaged one (:data:`PACKAGED_RESULTS`);
* :func:`load_summary` loads it and prints one line: file, device, date;
* :func:`source_text` is that line, for figure captions; :func:`show` displays a figure with
  it written underneath.

The package ships the latest summary under ``attn_numba/data/results/<set>/summary.json`` so
that an installed wheel has results outside a checkout. Refresh it after a new GPU run with
``python -m attn_numba.sources --package`` (copies the preferred summary, drops older ones).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

#: result sets in order of preference: the newest GPU first
PREFERRED = ("h200", "h100")
#: the summary shipped in the package (a copy of the preferred one when it was packaged)
PACKAGED_RESULTS = Path(__file__).resolve().parent / "data" / "results"


def _checkout_results(start):
    p = Path(start).resolve()
    for d in (p, *p.parents):
        if (d / "results").is_dir() and ((d / "pyproject.toml").exists() or (d / ".git").exists()):
            return d / "results"
    return None


def results_dir(start=None):
    """The checkout's ``results/`` folder (searched upwards from ``start``, default the current
    folder, then from this package), else the packaged results folder."""
    for s in (start or os.getcwd(), Path(__file__).resolve().parent):
        found = _checkout_results(s)
        if found:
            return found
    return PACKAGED_RESULTS


def _is_gpu_summary(path):
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "records" in doc and not doc.get("simulated")


def pick_summary(results=None, prefer=PREFERRED):
    """The ``summary.json`` to show: ``<results>/<name>/summary.json`` for the first ``name`` of
    ``prefer`` that exists (else a folder whose name contains it, ``nvidia-h200``, but not a
    ``-quick`` one), else the first non-simulated summary under ``results``, else the packaged
    one. Raises FileNotFoundError saying where results come from when there is none."""
    if isinstance(prefer, str):
        raise TypeError("prefer must be a sequence of result-set names, not a string")
    roots = [Path(results)] if results is not None else [results_dir()]
    if PACKAGED_RESULTS not in roots:
        roots.append(PACKAGED_RESULTS)
    for root in roots:
        found = [p for p in sorted(root.glob("*/summary.json")) if _is_gpu_summary(p)] \
            if root.is_dir() else []
        for name in prefer:
            exact = [p for p in found if p.parent.name == name]
            near = [p for p in found if name in p.parent.name and "quick" not in p.parent.name]
            if exact or near:
                return (exact or near)[0]
        if found:
            return found[0]
    raise FileNotFoundError(
        f"no GPU summary.json under {', '.join(map(str, roots))}: results come from "
        "`attn-numba bench` on a GPU machine (written to results/<device>/summary.json) or from "
        "a checkout of the repository (its results/ folder)")


def display_path(path):
    """``path`` relative to the checkout (``results/h100/summary.json``) or to the package."""
    path = Path(path).resolve()
    for base in (_checkout_results(os.getcwd()), _checkout_results(Path(__file__).parent)):
        if base is not None:
            try:
                return str(path.relative_to(base.parent))
            except ValueError:
                pass
    try:
        return "attn_numba/" + str(path.relative_to(Path(__file__).resolve().parent))
    except ValueError:
        return str(path)


def source_text(doc, path):
    """``'NVIDIA H200, 2026-11-30T05:00:00+00:00, results/h200/summary.json'``: device, date
    and file of a results document (any JSON with ``device`` and ``date``)."""
    dev = doc.get("device") or (f"no device (CPU: {doc['ptxas']})" if doc.get("ptxas")
                                else "device not recorded")
    if isinstance(dev, dict):  # the check scripts record {"name": ..., "cc": [9, 0]}
        cc = dev.get("cc")
        dev = str(dev.get("name", "device not recorded")) + (
            f" (sm_{cc[0]}{cc[1]})" if isinstance(cc, (list, tuple)) and len(cc) >= 2 else "")
    if doc.get("simulated"):
        dev += " (SIMULATED)"
    return f"{dev}, {doc.get('date') or 'undated'}, {display_path(path)}"


def load_summary(results=None, prefer=PREFERRED, quiet=False):
    """``(path, doc)`` of :func:`pick_summary`; prints ``source: <device>, <date>, <file>``."""
    path = pick_summary(results, prefer)
    doc = json.loads(Path(path).read_text())
    if not quiet:
        print("source:", source_text(doc, path))
    return path, doc


def load_json(path, quiet=False):
    """Any committed results JSON; prints its device, date and file when it names them.
    Returns None (and says so) when the file is missing."""
    path = Path(path)
    if not path.is_file():
        print("missing:", display_path(path))
        return None
    doc = json.loads(path.read_text())
    if not quiet and isinstance(doc, dict):
        print("source:", source_text(doc, path))
    return doc


def caption(fig, text, fontsize=7):
    """Write ``'source: ' + text`` under a matplotlib figure, below the axes labels (the figure
    must be saved with ``bbox_inches="tight"``, as :func:`show` does)."""
    import textwrap
    width = max(60, int(fig.get_figwidth() * 130 / fontsize))  # characters per line, roughly
    fig.text(0.005, -0.01, textwrap.fill("source: " + text, width), fontsize=fontsize,
             color="0.35", va="top", ha="left")
    return fig


def show(fig, source=None, dpi=90):
    """Display a matplotlib figure as a PNG in a notebook (whatever the backend), with
    ``source`` written under it (see :func:`caption`), and close it. Outside IPython it only
    closes the figure. Returns the PNG bytes."""
    import io

    import matplotlib.pyplot as plt
    if source:
        caption(fig, source)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
        if get_ipython() is not None:
            display(Image(data=data))
    except ImportError:
        pass
    return data


def package(results=None, prefer=PREFERRED):
    """Copy the preferred summary into the package data (``attn_numba/data/results/<set>/``),
    removing older packaged sets; returns the new path."""
    src = pick_summary(results, prefer)
    if PACKAGED_RESULTS in src.parents:
        return src
    dst = PACKAGED_RESULTS / src.parent.name / "summary.json"
    if PACKAGED_RESULTS.is_dir():
        for old in PACKAGED_RESULTS.glob("*/summary.json"):
            if old != dst:
                old.unlink()
                if not any(old.parent.iterdir()):
                    old.parent.rmdir()
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m attn_numba.sources",
                                description="show (or package) the results the notebooks use")
    p.add_argument("--results", default=None, help="results folder (default: the checkout's)")
    p.add_argument("--package", action="store_true",
                   help="copy the preferred summary into attn_numba/data/results/")
    args = p.parse_args(argv)
    try:
        path, doc = load_summary(args.results)
        if args.package:
            print("packaged:", display_path(package(args.results)))
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
