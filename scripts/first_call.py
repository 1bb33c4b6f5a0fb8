"""First public call in a new process, per kernel: cold disk cache, then warm (issue #11's
target: at most 0.3 s once the CUDA context exists).

    python3 scripts/first_call.py [--kernels flash_tc flash_wgmma ...] [--runs 3]

Each run is a fresh ``python3`` with ``NUMBA_CACHE_DIR`` private to the script (so run 0 is
cold and later runs hit what run 0 wrote). A run imports attn_numba, creates the context,
copies the log's 512-token inputs to the device (Numba arrays), then times the first
``mha_fwd`` call to completion and a second one. Prints one JSON line per run and writes
``$OUT/first_call.json``.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import attn_numba
from numba import cuda
cuda.current_context()
t1 = time.perf_counter()
rng = np.random.default_rng(0)
s = int(sys.argv[2])
q = cuda.to_device(rng.standard_normal((1, s, 32, 128)).astype(np.float16))
k, v = (cuda.to_device(rng.standard_normal((1, s, 8, 128)).astype(np.float16)) for _ in range(2))
cuda.synchronize()
kernel = sys.argv[1]
t2 = time.perf_counter()
attn_numba.mha_fwd(q, k, v, window_size=(128, 128), kernel=kernel)
cuda.synchronize()
t3 = time.perf_counter()
attn_numba.mha_fwd(q, k, v, window_size=(128, 128), kernel=kernel)
cuda.synchronize()
t4 = time.perf_counter()
print("FIRST" + json.dumps(dict(import_and_context_s=t1 - t0, first_call_s=t3 - t2,
                                second_call_s=t4 - t3)))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", nargs="+",
                    default=["naive", "tiled", "flash", "flash_tc", "flash_wgmma"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=512)
    a = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="attn_numba_first_call_")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    rows = []
    for kernel in a.kernels:
        for i in range(a.runs):
            p = subprocess.run([sys.executable, "-c", CHILD, kernel, str(a.seq_len)], capture_output=True,
                               text=True, env=env, timeout=300)
            line = [x for x in p.stdout.splitlines() if x.startswith("FIRST")]
            row = dict(kernel=kernel, run=i, cache="cold" if i == 0 else "warm")
            row.update(json.loads(line[0][5:]) if line else dict(error=p.stderr[-600:]))
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "first_call.json"), "w") as f:
        json.dump(dict(rows=rows, method=__doc__.split("\n\n")[2]), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
