"""Where shown numbers come from: the committed results a notebook or report reads, named.

Every figure and number in the notebooks and in ``attn-numba report`` is read from a file, and
the file, the device and the date are printed with it. This module picks the file:

* :func:`results_dir` finds the checkout's ``results/`` folder (walking up from the current
  folder, then from the package), or falls back to the copy shipped in the package;
* :func:`ordered_summaries` lists every GPU summary, newest device first (:data:`PREFERRED`:
  ``results/h200``, then ``results/h100``, ``-quick`` sets last), the first as the current
  results and the others as history; ``attn-numba explain`` and ``report`` both read it;
* :func:`pick_summary` is its first entry, else the packaged one (:data:`PACKAGED_RESULTS`);
* :func:`display_path` names a file as the reader can open it (relative, never absolute);
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

from .cli import INSTALL_GPU

#: result sets in order of preference: the newest GPU first
PREFERRED = ("h200", "h100")
#: the summary shipped in the package (a copy of the preferred one when it was packaged)
PACKAGED_RESULTS = Path(__file__).resolve().parent / "data" / "results"
#: what to do on a machine with no GPU, said once by ``attn-numba report`` and ``explain``
NO_GPU_HINT = ("With no GPU the committed results are shown; to time the kernels yourself, run "
               f"`attn-numba bench` on a machine with an NVIDIA GPU after `{INSTALL_GPU}`.")


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


def _rank(path, prefer=PREFERRED):
    """Sort key of a result set (its folder name): full runs before ``-quick`` ones, then by
    ``prefer`` (newest device first), the exact name before one that contains it."""
    name = Path(path).parent.name
    quick = "quick" in name
    for i, want in enumerate(prefer):
        if name == want or want in name:
            return (quick, i, name != want, name)
    return (quick, len(prefer), True, name)


def ordered_summaries(results=None, prefer=PREFERRED):
    """Every GPU ``summary.json`` under ``results`` (default :func:`results_dir`), newest device
    first: ``[(path, doc, history)]``, where ``history`` is False for the first (the current
    results) and True for every older set (``results/h100``, ``results/h100-quick``). Falls
    back to the packaged summary when ``results`` holds none; [] when there is none at all."""
    if isinstance(prefer, str):
        raise TypeError("prefer must be a sequence of result-set names, not a string")
    roots = [Path(results)] if results is not None else [results_dir()]
    if PACKAGED_RESULTS not in roots:
        roots.append(PACKAGED_RESULTS)
    for root in roots:
        found = sorted((p for p in root.glob("*/summary.json") if _is_gpu_summary(p)),
                       key=lambda p: _rank(p, prefer)) if root.is_dir() else []
        if found:
            return [(p, json.loads(p.read_text()), i > 0) for i, p in enumerate(found)]
    return []


def pick_summary(results=None, prefer=PREFERRED):
    """The ``summary.json`` to show: the first of :func:`ordered_summaries`, i.e.
    ``<results>/<name>/summary.json`` for the first ``name`` of ``prefer`` that exists (else a
    folder whose name contains it, ``nvidia-h200``; ``-quick`` sets last), else any
    non-simulated summary under ``results``, else the packaged one. Raises FileNotFoundError
    saying where results come from when there is none."""
    found = ordered_summaries(results, prefer)
    if found:
        return found[0][0]
    roots = [results if results is not None else results_dir(), PACKAGED_RESULTS]
    raise FileNotFoundError(
        f"no GPU summary.json under {', '.join(display_path(r) for r in roots)}: results come "
        "from `attn-numba bench` on a GPU machine (written to results/<device>/summary.json) or "
        "from a checkout of the repository (its results/ folder)")


def display_path(path, start=None):
    """``path`` as the reader can open it, never absolute: relative to ``start`` (default the
    current folder) when it lies in the same checkout or below ``start``
    (``results/h200/summary.json``, ``../results/...`` from ``notebooks/``), else the package
    resource name (``attn_numba/data/...``), else relative to ``start``."""
    path = Path(path).resolve()
    start = Path(start or os.getcwd()).resolve()
    here = _checkout_results(start)
    roots = [start] + ([here.parent] if here is not None else [])
    if any(r == path or r in path.parents for r in roots):
        return os.path.relpath(path, start)
    pkg = Path(__file__).resolve().parent
    if pkg in path.parents:
        return "attn_numba/" + path.relative_to(pkg).as_posix()
    return os.path.relpath(path, start)


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


def versions_text(versions):
    """``{'python': '3.12.3', 'numba': '0.68.0'}`` -> ``'python 3.12.3, numba 0.68.0'``: the
    package versions of a results file as a reader reads them."""
    return ", ".join(f"{k} {v}" for k, v in (versions or {}).items()) or "not recorded"


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
    closes the figure. Returns None, so that a cell ending with it stores only the image."""
    import io

    import matplotlib.pyplot as plt
    if source:
        caption(fig, source)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
        if get_ipython() is not None:
            display(Image(data=buf.getvalue()))
    except ImportError:
        pass


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
