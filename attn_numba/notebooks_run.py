"""``attn-numba notebooks``: execute the notebooks with nbclient; write outputs back or not.

The notebooks live in ``notebooks/`` as jupytext pairs: ``NN_name.py`` (percent format, the
source of truth, what you edit and review) and ``NN_name.ipynb`` (what a reader opens, with the
outputs of the last GPU run). After editing a ``.py``, ``jupytext --sync notebooks/*.py``
updates its ``.ipynb`` (cells only; outputs are kept).

    attn-numba notebooks                    # execute every notebook, write nothing (CI, CPU)
    attn-numba notebooks --write            # execute and write the outputs into the .ipynb
    attn-numba notebooks --only 05 07       # notebooks whose name starts with 05 or 07
    attn-numba notebooks --check-sync       # only check that every pair is in sync
    attn-numba notebooks --write --out DIR  # write the executed .ipynb files into DIR instead

A notebook is executed from its ``.py`` (so a stale ``.ipynb`` cannot hide an edit), in the
notebook's folder, with the environment of this process (``NUMBA_ENABLE_CUDASIM=1`` runs it on
the simulator). With ``--write`` the executed notebook, outputs included, replaces the
``.ipynb`` (created if missing, e.g. a new ``07_hopper.py``); a notebook that raises is not
written. One line per notebook: time, figures (PNG outputs), errors, and each output a reader
must not see (:func:`output_problems`: byte strings, reprs, machine paths, stderr). Exit
status 1 when a notebook failed or a pair is out of sync, 2 when nbclient/jupytext are missing.
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

NAME_PATTERN = "[0-9][0-9]_*"


def add_arguments(p):
    p.add_argument("--folder", default=None,
                   help="notebooks folder (default: notebooks/ of the checkout)")
    p.add_argument("--only", nargs="+", default=None, metavar="PREFIX",
                   help="run only notebooks whose file name starts with one of these")
    p.add_argument("--write", action="store_true",
                   help="write the executed notebooks, outputs included, into the .ipynb files")
    p.add_argument("--out", default=None,
                   help="with --write: write the executed .ipynb files into this folder instead "
                        "of next to their .py (e.g. $OUT on a remote GPU machine)")
    p.add_argument("--timeout", type=int, default=1200,
                   help="seconds per cell (default %(default)s)")
    p.add_argument("--check-sync", action="store_true",
                   help="only check that every .py/.ipynb pair has the same cells")


def notebook_folder(start=None):
    """``notebooks/`` of the checkout containing ``start`` (default: the current folder, then
    this package)."""
    for s in (start or os.getcwd(), Path(__file__).resolve().parent):
        p = Path(s).resolve()
        for d in (p, *p.parents):
            if (d / "notebooks").is_dir() and (d / "pyproject.toml").exists():
                return d / "notebooks"
    raise FileNotFoundError("no notebooks/ folder found: run from a checkout of attn_numba "
                            "or pass --folder")


def sources(folder, only=None):
    """The notebooks of ``folder`` as stems (``01_naive``), sorted: every ``NN_*.py`` and every
    ``NN_*.ipynb``, so that a new ``07_hopper.py`` is picked up without being registered."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist")
    stems = {p.stem for ext in ("py", "ipynb") for p in folder.glob(f"{NAME_PATTERN}.{ext}")}
    if only:
        stems = {s for s in stems if any(s.startswith(o) for o in only)}
    return sorted(stems)


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def pair_problems(py, ipynb):
    """Ways the pair ``py``/``ipynb`` is out of sync (empty when in sync): a missing file,
    missing pairing metadata, or different cells (type or source)."""
    import jupytext
    py, ipynb = Path(py), Path(ipynb)
    hint = f"run: jupytext --sync {py}"
    if not py.exists():
        return [f"{py.name} is missing (the .py is the source; jupytext --set-formats "
                f"ipynb,py:percent {ipynb})"]
    if not ipynb.exists():
        return [f"{ipynb.name} is missing; {hint}"]
    a, b = jupytext.read(py), jupytext.read(ipynb)
    problems = []
    for name, nb in ((py.name, a), (ipynb.name, b)):
        fmts = str(nb.metadata.get("jupytext", {}).get("formats", ""))
        if "ipynb" not in fmts or "py:percent" not in fmts:
            problems.append(f"{name} is not paired (jupytext formats {fmts!r}, want "
                            "'ipynb,py:percent')")
    ca, cb = _cells(a), _cells(b)
    if len(ca) != len(cb):
        problems.append(f"{py.name} has {len(ca)} cells, {ipynb.name} {len(cb)}; {hint}")
    for n, (x, y) in enumerate(zip(ca, cb)):
        if x != y:
            first = next((i for i, (u, v) in enumerate(zip(x[1], y[1])) if u != v),
                         min(len(x[1]), len(y[1])))
            problems.append(f"cell {n} differs ({x[0]} vs {y[0]}, from character {first}: "
                            f"{x[1][first:first + 40]!r} vs {y[1][first:first + 40]!r}); {hint}")
            break
    return problems


#: what a committed notebook's outputs must not hold (see :func:`output_problems`)
_BYTES = re.compile(r"^b['\"]|\\x89PNG")
_REPR = re.compile(r"\{'|\['|\b[A-Z][A-Za-z]+\([a-z_]+=")
_NONE = re.compile(r"(?:^|(?<=\s))None(?=\s{2,}|\s*\||\s*$|\s+\d)", re.M)  # not "None when"
_ABS = re.compile(r"(?<![\w.~-])/(?:work|opt|tmp|home|root|usr|var|Users|private|mnt|scratch)/"
                  r"|\b[A-Z]:\\")
_WARN = re.compile(r"\b\w*Warning\b:")
_CLI = re.compile(r"(?:\$ |`)attn-numba(?:\s+([^\s`]+))?")
_REF = re.compile(r"\b((?:scripts|notes|tests)/[\w./-]+\.(?:py|md|sh))\b")
_CLI_OPTIONS = ("-h", "--help", "--version")


def _output_texts(cell):
    """``(kind, text)`` of each output of a code cell: what a reader sees. A figure's
    ``text/plain`` stand-in (``<Figure ...>``) is not shown where a PNG is, so it is skipped."""
    for o in cell.get("outputs", []):
        kind = o.get("output_type")
        if kind == "stream":
            yield f"stream {o.get('name')}", "".join(o.get("text", ""))
        elif kind == "error":
            yield "error", f"{o.get('ename')}: {o.get('evalue')}"
        else:
            data = o.get("data", {})
            if "image/png" in data and set(data) <= {"image/png", "text/plain"}:
                continue
            for mime in ("text/markdown", "text/html", "text/plain"):
                if mime in data:
                    yield mime, "".join(data[mime])
                    break


def command_problems(text, where, commands):
    """Shell commands ``$ attn-numba SUB`` / `` `attn-numba SUB` `` whose SUB is unknown."""
    out = []
    for m in _CLI.finditer(text):
        sub = m.group(1)
        if sub is None or (sub not in commands and sub not in _CLI_OPTIONS):
            out.append(f"{where}: command `attn-numba {sub or ''}` has no known sub-command "
                       f"({', '.join(commands)})")
    return out


def output_problems(nb, root=None):
    """What a committed notebook shows that it must not: byte strings, Python reprs (``{'``,
    ``['``, ``Comparison(max_err=...)``), ``None`` where a value belongs, absolute or
    temporary paths, stderr, warnings and errors; ``attn-numba`` commands with an unknown
    sub-command (in outputs and Markdown); references to ``scripts/``, ``notes/`` or
    ``tests/`` files that do not exist under ``root`` (the checkout). Returns sentences naming
    the cell; [] when clean."""
    from .cli import COMMANDS
    problems = []
    for n, cell in enumerate(nb.cells):
        texts = [("source", cell.source)] if cell.cell_type == "markdown" else []
        if cell.cell_type == "code":
            texts += list(_output_texts(cell))
        for kind, text in texts:
            where = f"cell {n} ({kind})"
            problems += command_problems(text, where, COMMANDS)
            if root is not None:
                problems += [f"{where}: {ref} does not exist" for ref in _REF.findall(text)
                             if not (Path(root) / ref).exists()]
            if kind == "source":
                continue
            first = lambda rx: rx.search(text)  # noqa: E731
            checks = (("stderr output", kind == "stream stderr" or kind == "error"),
                      ("a byte string", first(_BYTES)), ("a Python repr", first(_REPR)),
                      ("None where a value belongs", first(_NONE)),
                      ("an absolute or temporary path", first(_ABS)),
                      ("a warning", first(_WARN)))
            for what, hit in checks:
                if hit:
                    bit = text[max(0, hit.start() - 30):hit.end() + 30] \
                        if hasattr(hit, "start") else text[:60]
                    problems.append(f"{where}: {what}: {bit.strip()!r}")
    return problems


@dataclass
class Run:
    name: str
    seconds: float = 0.0
    figures: int = 0
    sources: int = 0
    error: str | None = None
    written: Path | None = None
    outputs: list = field(default_factory=list, repr=False)
    problems: list = field(default_factory=list)

    def line(self):
        state = f"FAILED: {self.error}" if self.error else "ok"
        wrote = f", wrote {self.written.name}" if self.written else ""
        bad = "".join(f"\n    output problem: {p}" for p in self.problems)
        return (f"{self.name:<28} {self.seconds:7.1f} s  {self.figures:2d} figure(s)  "
                f"{self.sources:2d} 'source:' line(s)  {state}{wrote}{bad}")


def _summarise(nb, run):
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for o in cell.get("outputs", []):
            run.outputs.append(o)
            data = o.get("data", {})
            if "image/png" in data:
                run.figures += 1
            text = o.get("text", "") or data.get("text/plain", "")
            run.sources += sum(1 for line in str(text).splitlines()
                               if line.lstrip().startswith("source:"))
            if o.get("output_type") == "error" and not run.error:
                run.error = f"{o.get('ename')}: {o.get('evalue')}"[:300]


def execute(folder, stem, write=False, timeout=1200, out=None):
    """Execute notebook ``stem`` of ``folder`` from its ``.py`` (or its ``.ipynb`` when it has
    no ``.py``); with ``write`` replace the ``.ipynb`` by the executed notebook (or write it
    into the folder ``out``). Returns a :class:`Run`."""
    import jupytext
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    folder = Path(folder)
    py, ipynb = folder / f"{stem}.py", folder / f"{stem}.ipynb"
    nb = jupytext.read(py if py.exists() else ipynb)
    nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                 "name": "python3"}
    run = Run(stem)
    t0 = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        run.error = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else "error"
    except Exception as exc:  # kernel died, timeout
        run.error = f"{type(exc).__name__}: {exc}"[:300]
    run.seconds = time.perf_counter() - t0
    _summarise(nb, run)
    run.problems = output_problems(nb, folder.resolve().parent)
    if write and not run.error:
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            ipynb = Path(out) / ipynb.name
        jupytext.write(nb, ipynb)
        run.written = ipynb
    return run


def main(args):
    try:
        import jupytext  # noqa: F401
        import nbclient  # noqa: F401
    except ImportError as exc:
        from .cli import INSTALL_DEV
        print(f"attn-numba notebooks: {exc.name} is missing; {INSTALL_DEV}", file=sys.stderr)
        return 2
    try:
        folder = Path(args.folder) if args.folder else notebook_folder()
        stems = sources(folder, args.only)
    except FileNotFoundError as exc:
        print(f"attn-numba notebooks: {exc}", file=sys.stderr)
        return 2
    if not stems:
        print(f"attn-numba notebooks: no notebook in {folder} matches {args.only}",
              file=sys.stderr)
        return 2
    bad = 0
    for stem in stems:
        for prob in pair_problems(folder / f"{stem}.py", folder / f"{stem}.ipynb"):
            if args.write and "is missing;" in prob:
                continue  # --write creates the .ipynb
            print(f"{stem}: out of sync: {prob}")
            bad += 1
    if args.check_sync:
        print(f"attn-numba notebooks: {len(stems)} pair(s), {bad} problem(s)")
        return 1 if bad else 0
    from . import on_simulator
    print(f"attn-numba notebooks: {len(stems)} notebook(s) in {folder} on "
          f"{'the CUDA simulator' if on_simulator() else 'the GPU (or CPU without CUDA)'}"
          f"{', writing outputs' if args.write else ', not writing'}", flush=True)
    failed = 0
    for stem in stems:
        run = execute(folder, stem, write=args.write, timeout=args.timeout, out=args.out)
        print(run.line(), flush=True)
        failed += bool(run.error)
    return 1 if failed or (bad and not args.write) else 0
