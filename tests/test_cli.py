"""The ``attn-numba`` command line: plain-text help with examples that parse, ``--version``,
bench's needs and kernels in its help, and one install hint everywhere (the README's)."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import attn_numba
from attn_numba import cli
from attn_numba.bench import grid

from conftest import SIM

ROOT = Path(__file__).resolve().parents[1]
RST = re.compile(r"``|:(func|mod|class|data|meth):|\.\. \w+::")


def _help(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.fixture(autouse=True)
def _columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal


def test_help_lists_every_command_with_examples(capsys):
    out = _help(capsys)
    for cmd in cli.COMMANDS:
        assert cmd in out
    assert "examples:" in out and "attn-numba report" in out and "--version" in out
    assert "No GPU?" in out and cli.INSTALL_GPU in out


@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_help_is_plain_text_with_examples_that_parse(capsys, command):
    out = _help(capsys, *([command] if command else []))
    assert not RST.search(out), RST.search(out).group(0)
    assert [line for line in out.splitlines() if len(line) > 79] == []
    shown = [line.split("  ")[1].strip() if line.startswith("  attn-numba") else None
             for line in out.split("examples:", 1)[1].splitlines()]
    shown = [s for s in shown if s and "COMMAND" not in s]
    assert shown, "no example"
    for cmd in shown:
        argv = shlex.split(cmd.split(">")[0])
        assert argv[0] == "attn-numba"
        args = cli.build_parser().parse_args(argv[1:])  # exits (fails the test) if it does not parse
        assert args.command == (argv[1] if len(argv) > 1 else None)


def test_bench_help_names_its_needs_and_the_registry_kernels(capsys):
    out = _help(capsys, "bench")
    assert "NVIDIA GPU" in out and "gpu extra" in out and cli.INSTALL_GPU in out
    line = next(x for x in out.splitlines() if x.startswith("kernels of this build:"))
    assert line.split(":", 1)[1].strip().split(", ") == attn_numba.available_kernels()
    assert ", ".join(grid.PEERS) in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"attn-numba {attn_numba.__version__}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{attn_numba.__version__}"' in pyproject


def test_console_entry_runs():
    res = subprocess.run([sys.executable, "-m", "attn_numba.cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert res.stdout.startswith("attn-numba ")


def test_one_install_hint_everywhere():
    readme = (ROOT / "README.md").read_text()
    assert cli.INSTALL_DEV in readme and cli.INSTALL_GPU in readme
    hints = set()
    for path in (ROOT / "attn_numba").rglob("*.py"):
        for m in re.finditer(r"pip install[^\n\"'`]*", path.read_text()):
            hints.add((path.name, m.group(0)))
    # the hints live in cli.py; every other module formats cli.INSTALL_DEV / INSTALL_GPU
    assert {h for h in hints if h[0] != "cli.py"} <= {("summary.py", "pip install")}, hints


@pytest.mark.skipif(not SIM, reason="on a GPU this would run the benchmark")
def test_bench_without_a_gpu_says_what_to_install(capsys):
    assert cli.main(["bench", "--quick", "--kernels", "naive"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and cli.INSTALL_GPU in err and "--simulate" in err
