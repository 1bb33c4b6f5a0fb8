"""The notebooks: every jupytext pair (``NN_name.py`` + ``NN_name.ipynb``) is in sync, and every
notebook runs top to bottom from its ``.py`` (on the simulator when there is no GPU) without
writing anything back; notebooks 02 onward show at least one figure and name their sources."""
import shutil
from pathlib import Path

import pytest

from attn_numba import notebooks_run as R

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "notebooks"
STEMS = R.sources(FOLDER)


def test_notebooks_found():
    assert len(STEMS) >= 6 and "05_benchmarking_with_nvbench" in STEMS
    assert not list(FOLDER.glob("_build_*.py")), "the .py pairs replace the _build_ generators"


@pytest.mark.parametrize("stem", STEMS)
def test_pair_in_sync(stem):
    assert R.pair_problems(FOLDER / f"{stem}.py", FOLDER / f"{stem}.ipynb") == []


def test_sync_check_fails_on_drift(tmp_path):
    """The check above can fail: an edited .py, a missing .ipynb, an unpaired notebook."""
    stem = STEMS[0]
    py, nb = tmp_path / f"{stem}.py", tmp_path / f"{stem}.ipynb"
    shutil.copy(FOLDER / f"{stem}.py", py)
    shutil.copy(FOLDER / f"{stem}.ipynb", nb)
    assert R.pair_problems(py, nb) == []
    text = py.read_text()
    py.write_text(text.replace("import numpy as np", "import numpy as np  # edited", 1))
    probs = R.pair_problems(py, nb)
    assert probs and "differs" in probs[0] and "jupytext --sync" in probs[0]
    py.write_text(text + "\n# %%\nprint('a new cell')\n")
    assert any("cells" in p for p in R.pair_problems(py, nb))
    py.write_text(text.replace("formats: ipynb,py:percent", "formats: py:percent"))
    assert any("not paired" in p for p in R.pair_problems(py, nb))
    nb.unlink()
    assert "missing" in R.pair_problems(py, nb)[0]


#: notebooks executed in the quick run: none (each takes seconds to a minute on the
#: simulator; the full run executes every one, and test_notebook_outputs checks the committed
#: outputs in the quick run)
QUICK = ()


@pytest.mark.parametrize("stem", [s if s in QUICK else pytest.param(s, marks=pytest.mark.slow)
                                  for s in STEMS])
def test_notebook_runs(stem):
    ipynb = FOLDER / f"{stem}.ipynb"
    before = ipynb.read_bytes() if ipynb.exists() else None
    # the kernel inherits os.environ, including NUMBA_ENABLE_CUDASIM set by conftest.py
    run = R.execute(FOLDER, stem, write=False, timeout=900)
    assert run.error is None, run.line()
    assert (ipynb.read_bytes() if ipynb.exists() else None) == before, "nothing is written back"
    if stem[:2] >= "02":
        assert run.figures >= 1, f"{stem} shows no figure"
        assert run.sources >= 1, f"{stem} names no source ('source: device, date, file')"


TINY = '''# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # a tiny notebook

# %%
print("source: nowhere, today, this file")
'''


def test_runner_writes_outputs_and_reports_failures(tmp_path):
    """--write puts the outputs into a paired .ipynb (here into --out); a raising notebook is
    reported and not written; --check-sync fails on a missing .ipynb."""
    from attn_numba import cli
    (tmp_path / "01_tiny.py").write_text(TINY)
    (tmp_path / "02_broken.py").write_text(TINY + "\n# %%\nraise ValueError('boom')\n")
    assert cli.main(["notebooks", "--folder", str(tmp_path), "--check-sync"]) == 1
    out = tmp_path / "out"
    rc = cli.main(["notebooks", "--folder", str(tmp_path), "--write", "--out", str(out)])
    assert rc == 1  # 02_broken raised
    assert not (out / "02_broken.ipynb").exists()
    import nbformat
    nb = nbformat.read(out / "01_tiny.ipynb", as_version=4)
    texts = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("source: nowhere" in t for t in texts)
    assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    shutil.copy(out / "01_tiny.ipynb", tmp_path / "01_tiny.ipynb")
    assert R.pair_problems(tmp_path / "01_tiny.py", tmp_path / "01_tiny.ipynb") == []
    run = R.execute(tmp_path, "02_broken")
    assert run.error and "boom" in run.error
