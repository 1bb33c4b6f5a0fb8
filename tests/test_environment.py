"""environment.yml is the pip environment of pyproject.toml: the same packages with the same
pins (base + dev active, the gpu extra as the commented lines), Python as pip allows it, and one
source of the CUDA toolkit (numba-cuda's cu13 extra from PyPI, no conda cuda-* package).
Both files are parsed here; nothing touches the network."""
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
GPU_LINE = re.compile(r"^\s*#\s*-\s+(?P<req>[A-Za-z0-9_.\-\[\]]+[^#\s]*)\s*$")


def _key(req_text):
    r = Requirement(req_text)
    return canonicalize_name(r.name), frozenset(r.extras), str(r.specifier), str(r.marker or "")


def _keys(reqs):
    keys = [_key(r) for r in reqs]
    assert len(keys) == len(set(keys)), f"a requirement is listed twice: {reqs}"
    return set(keys)


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _environment(text=None):
    """``(conda deps, pip requirements, commented gpu requirements, pip options)``."""
    text = (ROOT / "environment.yml").read_text() if text is None else text
    doc = yaml.safe_load(text)
    conda, pip = [], None
    for dep in doc["dependencies"]:
        if isinstance(dep, dict):
            assert list(dep) == ["pip"], dep
            pip = dep["pip"]
        else:
            conda.append(str(dep))
    assert pip is not None, "environment.yml has no pip: section"
    options = [p for p in pip if p.startswith("-")]
    reqs = [p for p in pip if not p.startswith("-")]
    tail = text.split("gpu extra", 1)[1] if "gpu extra" in text else ""
    gpu = [m["req"] for m in map(GPU_LINE.match, tail.splitlines()) if m]
    return conda, reqs, gpu, options


def _check(text=None):
    """Every way environment.yml can drift from pyproject.toml, as messages."""
    project = _pyproject()
    conda, reqs, gpu, options = _environment(text)
    extras = project["optional-dependencies"]
    problems = []
    want = _keys(project["dependencies"]) | _keys(extras["dev"])
    if _keys(reqs) != want:
        problems.append(f"pip section differs from pyproject base+dev: missing "
                        f"{sorted(want - _keys(reqs))}, extra {sorted(_keys(reqs) - want)}")
    if _keys(gpu) != _keys(extras["gpu"]):
        problems.append(f"commented gpu lines {gpu} differ from the gpu extra {extras['gpu']}")
    if sorted(conda) != sorted(["python" + project["requires-python"], "pip"]):
        problems.append(f"conda gives more than python{project['requires-python']} and pip: "
                        f"{conda}")
    if "-e ." not in options:
        problems.append("the project itself (-e .) is not installed")
    return problems


def test_environment_matches_pyproject():
    assert _check() == []


def test_cuda_toolkit_has_one_source():
    conda, reqs, _, _ = _environment()
    assert not [c for c in conda if c.startswith(("cuda", "cudatoolkit", "nvidia"))], conda
    numba_cuda = [Requirement(r) for r in reqs if Requirement(r).name == "numba-cuda"]
    assert numba_cuda and "cu13" in numba_cuda[0].extras


@pytest.mark.parametrize("edit,word", [
    (lambda t: t.replace("      - jupytext>=1.16\n", ""), "missing"),
    (lambda t: t.replace("numpy>=1.24,<2.5", "numpy>=1.24"), "differs"),
    (lambda t: t.replace("  - pip\n", "  - pip\n  - cuda-nvcc\n", 1), "conda gives more"),
    (lambda t: t.replace("python>=3.10", "python=3.12"), "conda gives more"),
    (lambda t: t.replace("# - torch>=2.4", "# - torch>=2.5"), "gpu"),
    (lambda t: t.replace("      - -e .\n", ""), "-e ."),
])
def test_the_comparison_can_fail(edit, word):
    text = (ROOT / "environment.yml").read_text()
    edited = edit(text)
    assert edited != text, "the edit did not apply: update this test with environment.yml"
    problems = _check(edited)
    assert problems and any(word in p for p in problems), problems
