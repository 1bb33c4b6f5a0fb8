import subprocess
import sys


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "attn_numba.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("bench", "plot", "explain", "report"):
        assert cmd in out
