"""Reproducing the user's NVBench pathology on purpose: cuda-bench variants of run_mha_fwd.

Every variant registers a benchmark named ``run_mha_fwd`` with the log's axes (num_seqs,
seq_len, num_heads, num_kv_heads, head_size, window_left, window_right, causal) on the naive
kernel (:mod:`attn_numba.kernels.v1_naive`) and differs only in what its launcher does:

======================  ========================================================================
``H1_sync``             a fresh ``cuda.jit`` of the naive kernel's Python function on every
                        launch (compile inside the timed launcher); ``state.exec(sync=True)``
``H1_default``          the same launcher, default ``state.exec`` (blocking kernel, batched)
``H1_noblock``          the same launcher, default exec with the blocking kernel disabled
``H2_host_sync``        precompiled kernel, host NumPy arrays passed on each launch (implicit
                        copies + sync on the legacy default stream); ``sync=True``
``H2_host_default``     the same, default exec (blocking kernel): expected to deadlock
``fixed``               precompiled + warmed kernel, device arrays made outside the launcher,
                        launch on NVBench's stream (``cuda.external_stream``), default exec,
                        wrapped in :func:`attn_numba.warmup.no_new_compiles`
======================  ========================================================================

Run one variant per process (each prints an NVBench markdown log like the user's)::

    python -m attn_numba.bench.pathology nvbench H1_sync --seq-lens 512 2048 8192 --timeout 2

The other sub-commands measure compile times in fresh processes (see :func:`main`). The GPU
driver is ``scripts/gpu_pathology.py``; its results are ``results/h100/pathology.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .pathology_nvbench import VARIANTS, run_nvbench
from .pathology_summary import summarize
from .pathology_timing import (compile_times, debug_build_times, first_call,
                               other_kernels_compile, simulator_times)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m attn_numba.bench.pathology")
    sub = ap.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("nvbench")
    n.add_argument("variant", choices=VARIANTS)
    n.add_argument("--seq-lens", type=int, nargs="+", default=[512, 2048, 8192])
    n.add_argument("--causal", type=int, nargs="+", default=[0])
    n.add_argument("--timeout", type=float, default=2.0)
    n.add_argument("--min-samples", type=int, default=10)
    sub.add_parser("compile-times")
    f = sub.add_parser("first-call")
    f.add_argument("mode", choices=("baseline", "warmup", "eager", "fast"))
    f.add_argument("--kernel", default="naive")
    f.add_argument("--profile", default=None)
    sub.add_parser("other-kernels")
    sub.add_parser("simulator")
    sm = sub.add_parser("summarize")
    sm.add_argument("raw", nargs="+")
    sm.add_argument("--sim", default=None)
    sm.add_argument("--profile", default=None)
    sm.add_argument("-o", "--output", required=True)
    sub.add_parser("debug-build")
    a = ap.parse_args(argv)
    if a.cmd == "nvbench":
        run_nvbench(a.variant, a.seq_lens, a.causal, a.timeout, a.min_samples)
        return 0
    if a.cmd == "compile-times":
        out = compile_times()
    elif a.cmd == "first-call":
        out = first_call(a.mode, kernel=a.kernel, profile_path=a.profile)
    elif a.cmd == "other-kernels":
        out = other_kernels_compile()
    elif a.cmd == "simulator":
        out = simulator_times()
    elif a.cmd == "summarize":
        raws = [json.load(open(p)) for p in a.raw]
        sim = json.load(open(a.sim)) if a.sim else None
        prof = open(a.profile).read() if a.profile else None
        res = summarize(raws[0], raws[1] if len(raws) > 1 else None, sim, prof)
        from ..explain import _jsonable
        with open(a.output, "w") as f:
            json.dump(_jsonable(res), f, indent=1)
            f.write("\n")
        return 0
    else:
        out = debug_build_times()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
