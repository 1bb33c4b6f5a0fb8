"""Registers, spills and shared memory of every flash_tc specialisation as ptxas reports
them, no GPU: compile_ptx (numba-cuda) -> ``ptxas -v`` on PATH, for sm_80 and sm_90.

    NUMBA_ENABLE_CUDASIM=0 python scripts/ptxas_v4.py [--out results/cpu/ptxas_v4.json]

NVVM emits a newer ``.version`` than the local ptxas (13.0) may accept; the line is lowered
to the ptxas version (the kernel uses no newer PTX feature). Compiler facts, not timings.
"""
import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile

from numba import cuda

from attn_numba.kernels import v4_flash_tc as v4


def ptxas(ptx, arch):
    ver = re.search(r"release (\d+\.\d+)", subprocess.run(["ptxas", "--version"],
                    capture_output=True, text=True).stdout).group(1)
    # CUDA 13.0's ptxas reads PTX ISA 9.0 (ISA major = toolkit major - 4)
    isa = f"{int(ver.split('.')[0]) - 4}.{ver.split('.')[1]}"
    ptx = re.sub(r"^\.version \d+\.\d+", f".version {isa}", ptx, flags=re.M)
    with tempfile.TemporaryDirectory() as d:
        src = f"{d}/k.ptx"
        open(src, "w").write(ptx)
        err = subprocess.run(["ptxas", f"-arch={arch}", "-v", src, "-o", f"{d}/k.cubin"],
                             capture_output=True, text=True).stderr
    grab = lambda pat: int((re.search(pat, err) or [0, 0])[1])  # noqa: E731
    return dict(registers=grab(r"Used (\d+) registers"), spill_stores=grab(r"(\d+) bytes spill stores"),
                spill_loads=grab(r"(\d+) bytes spill loads"), stack=grab(r"(\d+) bytes stack frame"),
                smem=grab(r"(\d+) bytes smem"), ptxas=ver)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/cpu/ptxas_v4.json")
    p.add_argument("--head-sizes", nargs="*", type=int, default=[32, 64, 72, 96, 128, 192, 256])
    a = p.parse_args(argv)
    rows = []
    for d in a.head_sizes:
        for dt in ("float16", "bfloat16"):
            for label, fn, sig in v4.compile_targets(d, dt, heads=(4,)):
                for cc in ((8, 0), (9, 0)):
                    ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
                    r = dict(kernel=label, head_size=d, dtype=dt, arch=f"sm_{cc[0]}{cc[1]}",
                             block_n=v4.Config(d).block_n, stages=v4.stages(d), **ptxas(ptx, f"sm_{cc[0]}{cc[1]}"))
                    rows.append(r)
                    print(f"{label:<40} {r['arch']}  regs {r['registers']:>3}  spill st/ld "
                          f"{r['spill_stores']}/{r['spill_loads']}  smem {r['smem']}", flush=True)
    with open(a.out, "w") as f:
        json.dump(dict(date=datetime.date.today().isoformat(), rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
