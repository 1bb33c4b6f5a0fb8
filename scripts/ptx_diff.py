"""Dump the PTX of every flash_tc and flash_wgmma specialisation, and compare two dumps.

The kernel-layer refactor (issue 19) must not change the generated code: this script writes
one ``.ptx`` per compile target (flash_tc for sm_80, flash_wgmma for sm_90a; the head sizes
of :mod:`attn_numba.compile_check`, fp16 and bf16) and compares two such folders modulo
Numba's mangled names (``_ZN...`` symbols carry the module path and a closure hash)::

    NUMBA_ENABLE_CUDASIM=0 python scripts/ptx_diff.py --dump /tmp/ptx_before
    NUMBA_ENABLE_CUDASIM=0 python scripts/ptx_diff.py --compare /tmp/ptx_before /tmp/ptx_after
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import time

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")

import numpy as np  # noqa: E402

#: kernel name -> the cc it is compiled for
CCS = {"flash_tc": (8, 0), "flash_wgmma": (9, 0, "a"), "flash_ws": (9, 0, "a")}
DTYPES = ("float16", "bfloat16")

_MANGLED = re.compile(r"_ZN[0-9A-Za-z_$]+")
_SMEM = re.compile(r"_cudapy_smem_\d+")   # numbered per process, not per kernel
_HEADER = re.compile(r"^//.*$", re.M)


def _targets(name, head_size, dtype):
    from attn_numba import kernels
    from attn_numba.compile_check import targets
    mod = kernels.get(name)
    if mod is None:
        return []
    return targets(mod, head_size, np.float16 if dtype == "float16" else dtype)


def dump(folder, names=tuple(CCS), head_sizes=None, dtypes=DTYPES):
    from numba import cuda

    from attn_numba.compile_check import HEAD_SIZES
    os.makedirs(folder, exist_ok=True)
    for name in names:
        for dtype in dtypes:
            for hs in head_sizes or HEAD_SIZES:
                for label, fn, sig in _targets(name, hs, dtype):
                    path = os.path.join(folder, f"{name}__{label}.ptx")
                    if os.path.exists(path):
                        continue
                    t0 = time.perf_counter()
                    ptx, _ = cuda.compile_ptx(fn, sig, cc=CCS[name])
                    with open(path + ".tmp", "w") as f:
                        f.write(ptx)
                    os.replace(path + ".tmp", path)
                    print(f"{path}: {len(ptx)} B, {time.perf_counter() - t0:.1f} s", flush=True)


def normalise(ptx):
    """PTX with comments dropped and every mangled name replaced by its order of appearance."""
    names = {}

    def sub(m):
        return names.setdefault(m.group(0), f"_SYM{len(names)}")

    return _MANGLED.sub(sub, _SMEM.sub("_cudapy_smem", _HEADER.sub("", ptx)))


_OPCODE = re.compile(r"^\s+(?:@!?%p\d+\s+)?([a-z][\w.:]*)", re.M)


def opcode_delta(na, nb):
    """{opcode: count in b - count in a} for the opcodes whose counts differ."""
    from collections import Counter
    ca, cb = Counter(_OPCODE.findall(na)), Counter(_OPCODE.findall(nb))
    return {op: cb[op] - ca[op] for op in sorted(set(ca) | set(cb)) if cb[op] != ca[op]}


def compare(a, b, verbose=False):
    """Print which targets differ (with the change of each opcode's count; ``verbose``: the
    first lines of the diff); returns the number that differ or are missing."""
    fa = {f for f in os.listdir(a) if f.endswith(".ptx")}
    fb = {f for f in os.listdir(b) if f.endswith(".ptx")}
    bad = 0
    for f in sorted(fa ^ fb):
        print(f"only in {a if f in fa else b}: {f}")
        bad += 1
    for f in sorted(fa & fb):
        with open(os.path.join(a, f)) as x, open(os.path.join(b, f)) as y:
            na, nb = normalise(x.read()), normalise(y.read())
        if na == nb:
            print(f"identical {f}")
            continue
        bad += 1
        diff = list(difflib.unified_diff(na.splitlines(), nb.splitlines(), lineterm="", n=1))
        delta = opcode_delta(na, nb)
        print(f"DIFFERS   {f}: {sum(ln[:1] in '+-' for ln in diff[2:])} changed lines; "
              f"instruction counts {'unchanged' if not delta else delta}")
        if verbose:
            print("\n".join(diff[:40]))
    return bad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--dump", metavar="DIR")
    g.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"))
    p.add_argument("--kernels", nargs="*", default=list(CCS))
    p.add_argument("--head-sizes", nargs="*", type=int, default=None)
    p.add_argument("--dtypes", nargs="*", default=list(DTYPES))
    p.add_argument("-v", "--verbose", action="store_true", help="show the diffs' first lines")
    a = p.parse_args(argv)
    if a.dump:
        dump(a.dump, a.kernels, a.head_sizes, a.dtypes)
        return 0
    return 1 if compare(*a.compare, verbose=a.verbose) else 0


if __name__ == "__main__":
    sys.exit(main())
