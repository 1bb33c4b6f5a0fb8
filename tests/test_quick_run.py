"""The quick default run and ``--full``: tests/conftest.py skips tests marked slow unless
``--full`` (or ATTN_NUMBA_FULL_TESTS=1, or ``-m slow``) is given. Checked by running pytest on a
tiny test folder that uses this repository's conftest.py."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SAMPLE = '''
import pytest

def test_fast():
    pass

@pytest.mark.slow
def test_slow():
    pass

@pytest.mark.parametrize("case", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_split(case):
    pass
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("quick")
    shutil.copy(TESTS / "conftest.py", d / "conftest.py")
    (d / "test_sample.py").write_text(SAMPLE)
    (d / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\n    gpu: gpu\n")
    return d


def _pytest(folder, *args, **env):
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                          str(folder), *args], capture_output=True, text=True, cwd=folder,
                         env=dict(os.environ, **env), timeout=300)
    return res.stdout


def test_quick_run_skips_slow_tests(folder):
    out = _pytest(folder, ATTN_NUMBA_FULL_TESTS="0")
    assert "2 passed, 2 skipped" in out, out
    assert "slow: part of the full run (python -m pytest --full)" in out
    assert "PASSED test_sample.py::test_fast" in out and "PASSED test_sample.py::test_split[1]" in out


def test_ci_slow_part_runs_only_them(folder):
    """.ci/run's second command: the quick run plus this one run every test once."""
    out = _pytest(folder, "--full", "-m", "slow", ATTN_NUMBA_FULL_TESTS="0")
    assert "2 passed, 2 deselected" in out and "skipped" not in out, out
    assert "PASSED test_sample.py::test_slow" in out and "PASSED test_sample.py::test_split[2]" in out
