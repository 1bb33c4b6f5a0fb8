"""Compile every kernel for real, with no GPU: ``numba.cuda.compile_ptx`` for cc 8.0 and 9.0
(the Hopper-only kernels, flash_wgmma and flash_ws, for 9.0a alone: their PTX cannot run
elsewhere).

The simulator runs kernels as Python, so it cannot catch code that Numba's CUDA target
refuses to compile (a float64 promotion, an unsupported call, a local array sized at run
time). This module compiles each kernel of each available kernel module and reports the PTX
size and whether the PTX touches local memory. It must run with the simulator OFF::

    NUMBA_ENABLE_CUDASIM=0 python -m attn_numba.compile_check --json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time

import numpy as np

CCS = ((8, 0), (9, 0))
#: kernels whose inline PTX (wgmma, TMA, setmaxnreg) exists only on sm_90a: compiled for it
HOPPER_ONLY = ("flash_wgmma", "flash_ws")
HOPPER_CCS = ((9, 0, "a"),)
HEAD_SIZES = (64, 128, 256)
DTYPES = (np.float16, np.float32)


def targets(module, head_size, dtype):
    """(label, python function, signature) for every kernel of ``module`` at this spec: its
    ``compile_targets`` with each kernel's Python function (what ``compile_ptx`` takes)."""
    return [(label, getattr(fn, "py_func", fn), sig)
            for label, fn, sig in module.compile_targets(head_size, dtype)]


def kernel_targets(module, head_sizes=HEAD_SIZES, dtypes=DTYPES):
    """``[(label, dispatcher, signature, head_size, dtype)]`` of ``module``'s
    ``compile_targets`` over head sizes and dtypes, each dispatcher and signature once
    (kernels not specialised on the head size appear at the first one)."""
    out, seen = [], set()
    for dtype in dtypes:
        for hs in head_sizes:
            for label, disp, sig in module.compile_targets(hs, dtype):
                key = (id(disp), str(sig))
                if key not in seen:
                    seen.add(key)
                    out.append((label, disp, sig, hs, dtype))
    return out


def compile_all(kernel_names=None, head_sizes=HEAD_SIZES, dtypes=DTYPES, ccs=CCS):
    from numba import cuda

    from . import kernels
    from .problem import MAX_HEAD_SIZE  # noqa: F401  (import check)

    rows = []
    seen = set()
    for name in kernel_names or kernels.available():
        mod = kernels.get(name)
        for dtype in dtypes:
            for hs in head_sizes:
                tgts = targets(mod, hs, dtype)
                for label, fn, sig in tgts:
                    for cc in (HOPPER_CCS if name in HOPPER_ONLY else ccs):
                        key = (name, label, id(fn), str(sig), cc)
                        if key in seen:  # kernels not specialised on head_size compile once
                            continue
                        seen.add(key)
                        row = dict(kernel=name, func=label, head_size=hs,
                                   dtype=np.dtype(dtype).name,
                                   cc=f"{cc[0]}.{cc[1]}" + "".join(cc[2:]))
                        t0 = time.perf_counter()
                        try:
                            ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
                            row.update(ok=True, ptx_bytes=len(ptx),
                                       local_loads=len(re.findall(r"ld\.local", ptx)),
                                       local_stores=len(re.findall(r"st\.local", ptx)),
                                       f64_ops=len(re.findall(r"\.f64\b", ptx)))
                        except Exception as exc:  # report, don't stop: every failure matters
                            row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
                        row["seconds"] = round(time.perf_counter() - t0, 3)
                        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernels", nargs="*", default=None)
    p.add_argument("--head-sizes", nargs="*", type=int, default=list(HEAD_SIZES))
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    rows = compile_all(a.kernels, a.head_sizes)
    if a.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            status = "ok " if r["ok"] else "FAIL"
            extra = (f"{r['ptx_bytes']:>8} B ptx, local ld/st {r['local_loads']}/{r['local_stores']}, "
                     f"f64 ops {r['f64_ops']}") if r["ok"] else r["error"].splitlines()[0]
            print(f"{status} {r['kernel']:<9} {r['func']:<24} D={r['head_size']:<4} "
                  f"{r['dtype']:<8} sm_{r['cc'].replace('.', '')}  {extra}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
