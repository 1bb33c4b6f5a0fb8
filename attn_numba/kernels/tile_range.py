"""Which tiles a tile visits: the band arithmetic of every kernel, written once.

Query row ``i`` of a sequence with ``sq`` queries and ``sk`` keys sees key ``j`` iff
``i + sk - sq - left <= j <= i + sk - sq + right`` (``-1``: unbounded), clipped to
``[0, sk - 1]`` (:func:`attn_numba.kernels.common.key_range`). Both bounds are
non-decreasing in ``i``, which is all the functions here rely on:

* :func:`key_tiles`: the key tiles (starts ``n``, multiples of ``bn``, ``n_lo <= n < n_hi``)
  that any row of ``[row_lo, row_hi]`` sees: the forward and the dQ pass loop over these;
* :func:`full_key_tiles`: the sub-range whose tiles every row of ``[row_lo, row_hi]`` sees in
  full, so that their scores need no element mask (the rest of :func:`key_tiles` are the
  band's partial tiles);
* :func:`query_rows`: the query rows that see any key of ``[col_lo, col_hi]``: the dK/dV pass
  of the backward loops over these.

Each device function has a host twin (``*_host``) with the same arithmetic, used by plans,
tests and notebooks. Empty ranges are ``hi <= lo`` for tiles and ``hi < lo`` for rows.
"""
from numba import cuda

from .common import key_range


# --------------------------------------------------------------------------- device

@cuda.jit(device=True, inline=True, cache=True)
def key_tiles(row_lo, row_hi, sq, sk, left, right, bn):
    """``(n_lo, n_hi)``: starts of the ``bn``-key tiles that rows ``row_lo..row_hi``
    (inclusive, ``row_hi < sq``) see, ``n_lo <= n < n_hi`` in steps of ``bn``; empty
    (``n_hi <= n_lo``) when none of the rows sees a key."""
    lo, _ = key_range(row_lo, sq, sk, left, right)
    _, hi = key_range(row_hi, sq, sk, left, right)
    n_lo = (lo // bn) * bn
    n_hi = n_lo
    if lo <= hi:
        n_hi = (hi // bn + 1) * bn
    return n_lo, n_hi


@cuda.jit(device=True, inline=True, cache=True)
def full_key_tiles(row_lo, row_hi, sq, sk, left, right, bn):
    """``(f_lo, f_hi)``: the tiles of :func:`key_tiles` that every row of
    ``row_lo..row_hi`` sees in full (no element mask needed), ``f_lo <= n < f_hi``; empty
    when ``f_hi <= f_lo``. A tile past the sequence end (``n + bn > sk``) is never full."""
    lo_last, _ = key_range(row_hi, sq, sk, left, right)   # the largest lower bound
    _, hi_first = key_range(row_lo, sq, sk, left, right)  # the smallest upper bound
    f_lo = ((lo_last + bn - 1) // bn) * bn
    f_hi = ((hi_first + 1) // bn) * bn
    if f_hi < f_lo:
        f_hi = f_lo
    return f_lo, f_hi


@cuda.jit(device=True, inline=True, cache=True)
def query_rows(col_lo, col_hi, sq, sk, left, right):
    """``(i_lo, i_hi)``: the query rows (inclusive) that see at least one key of
    ``col_lo..col_hi`` (``0 <= col_lo <= col_hi < sk``); empty when ``i_hi < i_lo``."""
    off = sk - sq
    i_lo = 0
    if right >= 0:
        i_lo = max(0, col_lo - right - off)
    i_hi = sq - 1
    if left >= 0:
        i_hi = min(sq - 1, col_hi + left - off)
    # rows whose clipped range is empty (shift + right < 0 or shift - left > sk - 1) see no
    # key at all; the bounds above already exclude them for keys inside [0, sk - 1]
    return i_lo, i_hi


# --------------------------------------------------------------------------- host twins

def key_range_host(i, sq, sk, left, right):
    shift = i + sk - sq
    lo = 0 if left < 0 else max(0, shift - left)
    hi = sk - 1 if right < 0 else min(sk - 1, shift + right)
    return lo, hi


def key_tiles_host(row_lo, row_hi, sq, sk, left, right, bn):
    lo, _ = key_range_host(row_lo, sq, sk, left, right)
    _, hi = key_range_host(row_hi, sq, sk, left, right)
    n_lo = (lo // bn) * bn
    return n_lo, ((hi // bn + 1) * bn if lo <= hi else n_lo)


def full_key_tiles_host(row_lo, row_hi, sq, sk, left, right, bn):
    lo_last, _ = key_range_host(row_hi, sq, sk, left, right)
    _, hi_first = key_range_host(row_lo, sq, sk, left, right)
    f_lo = -(-lo_last // bn) * bn
    f_hi = ((hi_first + 1) // bn) * bn
    return f_lo, max(f_hi, f_lo)


def query_rows_host(col_lo, col_hi, sq, sk, left, right):
    off = sk - sq
    i_lo = 0 if right < 0 else max(0, col_lo - right - off)
    i_hi = sq - 1 if left < 0 else min(sq - 1, col_hi + left - off)
    return i_lo, i_hi
