"""Run every GPU kernel, forward and backward (the backward's atomic-dQ variant too), at a
few awkward sizes and the log's smallest size, for compute-sanitizer.

    compute-sanitizer --tool memcheck  --error-exitcode 1 python3 scripts/sanitize.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python3 scripts/sanitize.py --small
    (likewise synccheck, initcheck)

Each case is checked against the reference too, so a run that "passes" the sanitizer with a
wrong answer still fails.
"""
import argparse
import sys

import numpy as np

import attn_numba
import attn_numba.kernels
from attn_numba.testing import (check_mha_bwd, check_mha_fwd, check_mha_varlen_bwd,
                                check_mha_varlen_fwd, random_qkv, random_varlen)

CASES = [  # (batch, sq, sk, H, Hkv, D, window, causal)
    (1, 97, 97, 4, 1, 128, (-1, -1), False),
    (2, 1, 33, 4, 4, 64, (0, 0), True),
    (1, 130, 61, 8, 2, 256, (16, 0), False),
    (1, 512, 512, 32, 8, 128, (128, 128), False),
    (1, 512, 512, 32, 8, 128, (128, 128), True),
]


def _runs(kernel, head_size):
    """Whether forward ``kernel`` takes ``head_size`` (flash_ws: 64 and 128); the skip is
    printed, so a kernel that stops taking a size shows."""
    sizes = getattr(attn_numba.kernels.get(kernel), "HEAD_SIZES", None)
    if sizes is None or head_size in sizes:
        return True
    print(f"sanitize.py: {kernel} skips head size {head_size} (it takes {sizes})")
    return False


def _backward_variants(names):
    """(kernel, keywords) of every backward kernel: flash_tc also as its atomic-dQ variant."""
    for name in names:
        yield name, {}
        if name == "flash_tc":
            yield name, {"deterministic": False}


def _forward(kernels, rng, small):
    n = 0
    for kernel in kernels:
        for b, sq, sk, h, hkv, d, window, causal in CASES:
            if small and sq >= 512:
                continue
            q, k, v = random_qkv(rng, b, sq, sk, h, hkv, d, np.float16)
            if not _runs(kernel, d):
                continue
            check_mha_fwd(q, k, v, kernel, causal=causal, window_size=window)
            n += 1
        q, k, v, cu_q, cu_k = random_varlen(rng, [5, 0, 70, 1], [9, 3, 70, 0], 4, 2, 128,
                                            np.float16)
        check_mha_varlen_fwd(q, k, v, cu_q, cu_k, kernel, causal=True, window_size=(8, 8))
        n += 1
    print(f"sanitize.py: {n} forward cases checked against the reference: {', '.join(kernels)}")
    _repeated(kernels, rng)


def _repeated(kernels, rng):
    """Three calls on the same device arrays, reuse plans on (``ATTN_NUMBA_SCRATCH_REUSE=1``):
    from the second on, flash_ws takes its reuse plan (the maps the first call left in the
    stream's scratch; callpath._launch). Each output must equal the first bit for bit (a
    shape of its own, so that its spec is made with reuse on; checked against the
    reference first)."""
    from numba import cuda

    from attn_numba import scratch_reuse
    scratch_reuse.ENABLED = True
    host = random_qkv(rng, 1, 97, 97, 4, 1, 128, np.float16)
    q, k, v = (cuda.to_device(x) for x in host)
    for kernel in kernels:
        check_mha_fwd(*host, kernel, window_size=(16, 0))   # against the reference
        outs = [attn_numba.mha_fwd(q, k, v, kernel=kernel, window_size=(16, 0)).copy_to_host()
                for _ in range(3)]
        for i, o in enumerate(outs[1:], 1):
            if not np.array_equal(o.view(np.uint16), outs[0].view(np.uint16)):
                raise SystemExit(f"sanitize.py: {kernel}'s call {i + 1} on the same arrays "
                                 f"differs from its first")
    print(f"sanitize.py: 3 calls on the same arrays agree: {', '.join(kernels)}")


def _backward(kernels, rng, small):
    m = 0
    for kernel, kw in _backward_variants(kernels):
        for b, sq, sk, h, hkv, d, window, causal in CASES:
            if small and sq >= 512:
                continue
            sizes = getattr(attn_numba.kernels.get_bwd(kernel), "HEAD_SIZES", None)
            if sizes is not None and d not in sizes:
                print(f"sanitize.py: backward {kernel} skips head size {d}")
                continue
            q, k, v = random_qkv(rng, b, sq, sk, h, hkv, d, np.float16)
            dout = rng.standard_normal(q.shape).astype(q.dtype)
            check_mha_bwd(dout, q, k, v, kernel, causal=causal, window_size=window, **kw)
            m += 1
        q, k, v, cu_q, cu_k = random_varlen(rng, [5, 0, 70, 1], [9, 3, 70, 0], 4, 2, 128,
                                            np.float16)
        dout = rng.standard_normal(q.shape).astype(q.dtype)
        check_mha_varlen_bwd(dout, q, k, v, cu_q, cu_k, kernel, causal=True, window_size=(8, 8),
                             **kw)
        m += 1
    names = [k + (" (atomic dQ)" if kw else "") for k, kw in _backward_variants(kernels)]
    print(f"sanitize.py: {m} backward cases checked against the reference: {', '.join(names)}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kernels", nargs="*", default=attn_numba.available_kernels())
    p.add_argument("--bwd-kernels", nargs="*",
                   default=attn_numba.available_kernels(backward=True))
    p.add_argument("--small", action="store_true",
                   help="skip the 512-token cases (racecheck is slow)")
    a = p.parse_args()
    rng = np.random.default_rng(1)
    _forward(a.kernels, rng, a.small)
    _backward(a.bwd_kernels, rng, a.small)
    return 0


if __name__ == "__main__":
    sys.exit(main())
