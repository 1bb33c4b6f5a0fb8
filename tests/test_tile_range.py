"""kernels.tile_range against brute force over the element mask (host twins and, on the
simulator, the device functions)."""
import itertools

import numpy as np
import pytest
from numba import cuda

from attn_numba.kernels import tile_range as tr
from attn_numba.reference import _mask

CASES = [(sq, sk, left, right, bn)
         for sq, sk in ((1, 1), (5, 13), (13, 5), (40, 40), (33, 70))
         for left, right in ((-1, -1), (0, 0), (3, 0), (-1, 0), (2, 5), (0, -1), (7, -1))
         for bn in (4, 16)]


def _visible(sq, sk, left, right):
    return _mask(sq, sk, left, right, False)


@pytest.mark.parametrize("sq,sk,left,right,bn", CASES)
def test_key_tiles_and_full_tiles_match_the_mask(sq, sk, left, right, bn):
    m = _visible(sq, sk, left, right)
    for r0, r1 in itertools.combinations_with_replacement(range(sq), 2):
        rows = m[r0:r1 + 1]
        n_lo, n_hi = tr.key_tiles_host(r0, r1, sq, sk, left, right, bn)
        f_lo, f_hi = tr.full_key_tiles_host(r0, r1, sq, sk, left, right, bn)
        for n in range(0, sk, bn):
            block = rows[:, n:n + bn]
            seen = bool(block.any())
            # every tile some row sees is visited; visited tiles lie inside the band's span
            if seen:
                assert n_lo <= n < n_hi, (r0, r1, n)
            full = block.shape[1] == bn and bool(block.all())
            assert (f_lo <= n < f_hi) == full, (r0, r1, n)   # exactly the unmasked tiles
        if rows.any():
            cols = np.nonzero(rows.any(axis=0))[0]
            assert n_lo == cols[0] // bn * bn and n_hi == (cols[-1] // bn + 1) * bn
        else:
            assert n_hi <= n_lo and f_hi <= f_lo


@pytest.mark.parametrize("sq,sk,left,right,bn", CASES)
def test_query_rows_match_the_mask(sq, sk, left, right, bn):
    m = _visible(sq, sk, left, right)
    for c0 in range(sk):
        for c1 in (c0, min(sk - 1, c0 + bn - 1)):
            i_lo, i_hi = tr.query_rows_host(c0, c1, sq, sk, left, right)
            rows = np.nonzero(m[:, c0:c1 + 1].any(axis=1))[0]
            if rows.size:
                assert (i_lo, i_hi) == (rows[0], rows[-1])
                assert m[i_lo:i_hi + 1, c0:c1 + 1].any(axis=1).all()  # no gap inside
            else:
                assert i_hi < i_lo


@cuda.jit
def _device_ranges(out, sq, sk, left, right, bn):
    i = cuda.grid(1)
    if i < sq:
        a, b = tr.key_tiles(0, i, sq, sk, left, right, bn)
        c, d = tr.full_key_tiles(0, i, sq, sk, left, right, bn)
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = a, b, c, d
    if i < sk:
        e, f = tr.query_rows(i, i, sq, sk, left, right)
        out[i, 4], out[i, 5] = e, f


@pytest.mark.parametrize("sq,sk,left,right", [(13, 5, 2, 0), (33, 70, -1, 0), (40, 40, 0, -1)])
def test_device_functions_equal_host_twins(sq, sk, left, right):
    bn = 16
    n = max(sq, sk)
    out = cuda.to_device(np.full((n, 6), -99, np.int64))
    _device_ranges[1, n](out, sq, sk, left, right, bn)
    got = out.copy_to_host()
    for i in range(sq):
        assert tuple(got[i, :2]) == tr.key_tiles_host(0, i, sq, sk, left, right, bn)
        assert tuple(got[i, 2:4]) == tr.full_key_tiles_host(0, i, sq, sk, left, right, bn)
    for j in range(sk):
        assert tuple(got[j, 4:]) == tr.query_rows_host(j, j, sq, sk, left, right)
