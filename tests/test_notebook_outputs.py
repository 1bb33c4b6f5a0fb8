"""What a reader sees in the committed notebooks (GitHub renders the .ipynb as stored): no byte
strings, Python reprs or ``None`` where a sentence or table belongs, no machine or temporary
paths, no stderr or warnings, no ``attn-numba`` command that would not run as printed, and no
reference to a script or note that is gone. Covers every ``notebooks/NN_*.ipynb``."""
from pathlib import Path

import nbformat
import pytest

from attn_numba import notebooks_run as R

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob(f"{R.NAME_PATTERN}.ipynb"))


def test_every_notebook_is_covered():
    """Every committed NN_*.ipynb is read (a new one, 08_backward, once it is executed); a .py
    without its .ipynb is test_notebooks.py's finding (out of sync)."""
    assert len(NOTEBOOKS) >= 7
    assert {p.stem for p in NOTEBOOKS} <= set(R.sources(ROOT / "notebooks"))


def test_markdown_of_every_source_reads_cleanly():
    """The Markdown of each .py source (also one not yet executed): known commands only, no
    reference to a script or note that is gone."""
    import jupytext
    for py in sorted((ROOT / "notebooks").glob(f"{R.NAME_PATTERN}.py")):
        nb = jupytext.read(py)
        nb.cells = [c for c in nb.cells if c.cell_type == "markdown"]
        assert R.output_problems(nb, ROOT) == [], py.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_read_cleanly(path):
    nb = nbformat.read(path, as_version=4)
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{path.name} has no outputs: run attn-numba notebooks --write"
    problems = R.output_problems(nb, ROOT)
    assert problems == [], f"{path.name}:\n" + "\n".join(problems)


def _nb(*cells):
    """A notebook of code cells, each given as a list of outputs (or a markdown string)."""
    nb = nbformat.v4.new_notebook()
    for c in cells:
        if isinstance(c, str):
            nb.cells.append(nbformat.v4.new_markdown_cell(c))
        else:
            cell = nbformat.v4.new_code_cell("x")
            cell.outputs = c
            nb.cells.append(cell)
    return nb


def _out(text, name="stdout"):
    return nbformat.v4.new_output("stream", name=name, text=text)


def _result(plain, **more):
    return nbformat.v4.new_output("execute_result", data={"text/plain": plain, **more},
                                  execution_count=1)


BAD = {
    "byte string": [_result("b'\\x89PNG\\r\\n\\x1a\\n\\x00'")],
    "Comparison repr": [_out("varlen: Comparison(max_err=0.0004, tol=0.003)\n")],
    "dict repr": [_out("versions: {'python': '3.12.3'}\n")],
    "list repr": [_out("kernels: ['naive', 'tiled']\n")],
    "None in a table": [_out("   512     407 ms   6       None   14.8%\n")],
    "machine path": [_out("  0.913 /work/main/attn_numba/interface.py:251(mha_fwd)\n")],
    "venv path": [_out("/opt/torch/.venv/lib/python3.12/site-packages/numba\n")],
    "temporary path": [_out("$ attn-numba bench --out /tmp/tmp521tkstv\n")],
    "stderr": [_out("something\n", name="stderr")],
    "warning": [_out("x.py:18: RuntimeWarning: invalid value encountered in subtract\n")],
    "error": [nbformat.v4.new_output("error", ename="ValueError", evalue="boom", traceback=[])],
    "unknown sub-command": [_out("$ attn-numba --kernels flash_tc --seq-lens 8192\n")],
    "stale script": [_out("written by scripts/gpu_v2_v3.py\n")],
    "stale script in markdown": "From `results/h100/v2_v3_dev.json` (scripts/gpu_v2_v3.py)",
    "bad command in markdown": "run `attn-numba benchmark --quick`",
}


@pytest.mark.parametrize("name", list(BAD))
def test_the_check_fails_on_each_fault(name):
    problems = R.output_problems(_nb(BAD[name]), ROOT)
    assert problems, name


def test_the_check_passes_what_a_reader_should_see():
    png = nbformat.v4.new_output("display_data", data={
        "image/png": "iVBORw0KGgo=", "text/plain": "<IPython.core.display.Image object>"})
    nb = _nb([_out("source: NVIDIA H200, 2026-11-30, results/h200/summary.json\n"
                   "max err 4.4e-04 <= 2.9e-03, lse err 2.4e-07\n"
                   "@functools.lru_cache(maxsize=None)\n"
                   '"gpu_time_s": float|None,\n'
                   "$ attn-numba bench --kernels flash_tc --out run05\n"
                   "see ../results/h200/summary.json and scripts/ptxas_v2_v3.py\n")], [png],
             "Run `attn-numba report` or `attn-numba notebooks --write`; `attn-numba --help`.")
    assert R.output_problems(nb, ROOT) == []
