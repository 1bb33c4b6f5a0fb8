"""Registers, spills and shared memory of the v2/v3 kernels as ptxas reports them, no GPU.

    NUMBA_ENABLE_CUDASIM=0 python scripts/ptxas_v2_v3.py [--out results/cpu/ptxas_v2_v3.json]

Compiles each kernel to PTX with ``numba.cuda.compile_ptx`` (sm_90, with the launch bounds
the kernel is built with), assembles it with the ``ptxas`` on PATH (``-v``), and, when
``nvdisasm`` is found, counts the SASS instructions of the innermost loops. If the local ptxas
is older than the PTX ISA that NVVM emits, the ``.version`` line is lowered to the ptxas
version (the kernels use no newer PTX feature). These are compiler facts, not timings.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from numba import cuda

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attn_numba.kernels import v2_tiled as v2  # noqa: E402
from attn_numba.kernels import v3_flash as v3  # noqa: E402

#: (tiles, min blocks per SM) of the run-1 H100 tile sweep (results/h100/v2_v3_dev.json,
#: "v3_sweep"), as the deleted scripts/gpu_v2_v3.py listed them (git show 31536b3:scripts/...)
RUN1_SWEEP = [(v3.Tiles(*t), mb) for t, mb in (
    ((64, 64, 128, 8, 4, 16, 16), 0), ((64, 64, 256, 4, 4, 16, 16), 2),
    ((64, 64, 256, 4, 4, 16, 16), 0), ((64, 32, 256, 4, 2, 16, 16), 2),
    ((64, 32, 256, 4, 2, 32, 16), 2), ((128, 32, 256, 8, 2, 16, 16), 0),
    ((32, 32, 64, 4, 4, 16, 16), 4))]


def ptxas_version(ptxas):
    out = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None, out.strip().splitlines()[-1]


def sass_loops(sass):
    """Innermost-loop instruction counts: (instructions, FFMA, LDS) per backward branch."""
    lines = sass.splitlines()
    labels = {m.group(1): n for n, l in enumerate(lines) if (m := re.match(r"^(\.L_x_\d+):", l))}
    loops = []
    for n, l in enumerate(lines):
        m = re.search(r"BRA.*`\((\.L_x_\d+)\)", l)
        if m and labels.get(m.group(1), n) < n:
            body = lines[labels[m.group(1)]:n]
            ins = [b for b in body if re.search(r"/\*[0-9a-f]{4}\*/", b)]
            if any("BAR" in b for b in ins) or not ins:
                continue
            loops.append(dict(instructions=len(ins), ffma=sum("FFMA" in b for b in ins),
                              lds=sum(" LDS" in b for b in ins)))
    return loops


def measure(label, fn, sig, launch_bounds, ptxas, nvdisasm, isa):
    ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0), launch_bounds=launch_bounds)
    if isa:
        ptx = re.sub(r"^\.version \d+\.\d+", f".version {isa[0] - 4}.{isa[1]}", ptx, flags=re.M)
    row = dict(kernel=label, launch_bounds=launch_bounds,
               ptx_local_ops=len(re.findall(r"\b(?:ld|st)\.local", ptx)))
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "k.ptx")
        with open(p, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, "-arch=sm_90", "-v", p, "-o", p + ".cubin"],
                           capture_output=True, text=True)
        m = re.search(r"Used (\d+) registers", r.stderr)
        sp = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)
        sm = re.search(r"(\d+) bytes smem", r.stderr)
        row.update(regs_per_thread=int(m.group(1)) if m else None,
                   spill_store_bytes=int(sp.group(1)) if sp else None,
                   spill_load_bytes=int(sp.group(2)) if sp else None,
                   shared_bytes=int(sm.group(1)) if sm else None)
        if not m:
            row["ptxas_error"] = r.stderr[-500:]
        elif nvdisasm:
            sass = subprocess.run([nvdisasm, "-c", p + ".cubin"], capture_output=True,
                                  text=True).stdout
            row["inner_loops"] = sass_loops(sass)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join("results", "cpu", "ptxas_v2_v3.json"))
    ap.add_argument("--nvdisasm", default=shutil.which("nvdisasm"))
    ap.add_argument("--run1-rev", default="8d54387",
                    help="git revision of the v3 measured in the first H100 run ('' to skip)")
    a = ap.parse_args()
    ptxas = shutil.which("ptxas")
    if not ptxas:
        sys.exit("no ptxas on PATH")
    # PTX ISA x.y pairs with CUDA (x+4).y; lower NVVM's .version to what this ptxas reads
    isa, ver = ptxas_version(ptxas)
    rows = []
    sig3 = v3._signature(np.float16)
    for D in (64, 128, 256):
        t, mb = v3.GPU_CONFIG[D]
        gh = v3.stacked_heads(4, t)
        rows.append(dict(measure(f"flash D={D} gh={gh} {tuple(t)} default",
                                 v3.build(v3.Config(D, t, gh, mb)).py_func, sig3,
                                 (t[2], mb) if mb else None, ptxas, a.nvdisasm, isa),
                         head_size=D, tiles=t.asdict(), min_blocks=mb, gh=gh))
        print(rows[-1], flush=True)
    for t, mb in RUN1_SWEEP:
        gh = v3.stacked_heads(4, t)
        rows.append(dict(measure(f"flash D=128 gh={gh} {tuple(t)} mb={mb} sweep",
                                 v3.build(v3.Config(128, v3.Tiles(*t), gh, mb)).py_func, sig3,
                                 (t[2], mb) if mb else None, ptxas, a.nvdisasm, isa),
                         head_size=128, tiles=t.asdict(), min_blocks=mb, gh=gh))
        print(rows[-1], flush=True)
    # the v3 that the first H100 run measured (results/h100/v2_v3_dev.json), from git
    if a.run1_rev:
        import importlib.util
        src = subprocess.run(["git", "show", f"{a.run1_rev}:attn_numba/kernels/v3_flash.py"],
                             capture_output=True, text=True, check=True).stdout
        src = src.replace("from .common import", "from attn_numba.kernels.common import")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "v3_run1.py")
            with open(path, "w") as f:
                f.write(src)
            spec = importlib.util.spec_from_file_location("v3_run1", path)
            old = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(old)
            for label, fn, sig in old.compile_targets(128, np.float16):
                rows.append(dict(measure(f"flash run-1 ({a.run1_rev}) {label} "
                                         f"{tuple(old.GPU_TILES[128])}", fn, sig, None, ptxas,
                                         a.nvdisasm, isa), head_size=128, run1=True,
                                 tiles=old.GPU_TILES[128].asdict()))
                print(rows[-1], flush=True)
    for D in (64, 128, 256):
        _, fn, sig = v2.compile_targets(D, np.float16)[0]
        rows.append(dict(measure(f"tiled D={D}", fn, sig, None, ptxas, a.nvdisasm, isa),
                         head_size=D))
        print(rows[-1], flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"), ptxas=ver, arch="sm_90", nvdisasm=bool(a.nvdisasm),
            rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
