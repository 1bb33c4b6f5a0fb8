"""Launch each kernel once at the log's largest size, for Nsight Compute.

    ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
        --section WarpStateStats --csv python3 scripts/ncu_profile.py > ncu.csv

The references are not computed here (that is the test suite's job); outputs are only checked
to be finite so a broken launch is not profiled silently.
"""
import sys

import numpy as np
from numba import cuda

import attn_numba
from attn_numba.testing import random_qkv


def main(kernels=("tiled", "flash", "flash_tc"), seq_len=8192):
    rng = np.random.default_rng(0)
    q, k, v = (cuda.to_device(x) for x in random_qkv(rng, 1, seq_len, seq_len, 32, 8, 128, np.float16))
    for name in kernels:
        out = attn_numba.mha_fwd(q, k, v, window_size=(128, 128), kernel=name)
        cuda.synchronize()
        assert np.isfinite(out.copy_to_host()).all(), name
        print(f"ncu_profile: launched {name} at seq_len {seq_len}", file=sys.stderr)


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or ("tiled", "flash", "flash_tc"))
