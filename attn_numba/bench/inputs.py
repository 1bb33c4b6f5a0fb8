"""What a benchmark case checks against and runs on: the inputs of a config (seeded,
cached, shared by its kernels) and the float64 reference on a few blocks of query rows,
compared under the FlashAttention tolerance rule (:mod:`attn_numba.testing`)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..problem import normalize_window
from ..reference import mha_fwd_ref
from ..testing import compare, tolerance
from .grid import DTYPE

#: rows per checked block; configs up to 3 blocks long are checked whole
CHECK_BLOCK = 64
#: the inputs' seed: every kernel of a config sees the same q, k, v
SEED = 20240


# --------------------------------------------------------------------------- reference on a row block

def reference_rows(q, k, v, r0, r1, window_size, causal, softmax_scale=None, p_dtype=None):
    """The float64 reference for query rows ``[r0, r1)`` only, exactly.

    Row ``i`` sees key ``j`` iff ``i + sk - sq - left <= j <= i + sk - sq + right``. Calling
    :func:`mha_fwd_ref` on ``q[:, r0:r1]`` and the keys ``[0, e)`` shifts every row's diagonal
    by ``delta = (e - r1) - (sk - sq)``, so the sub-call uses the window
    ``(left + delta, right - delta)``, with ``e`` just large enough for the block's last row.
    Keys before the block's first visible key ``k0`` are dropped too (the window is aligned to
    the last key, so dropping keys at the front does not move it): the sub-call costs
    O(rows x window), not O(rows x seq_len), which keeps the check of a 512k-token call cheap.
    Returns ``(out, lse)`` as :func:`mha_fwd_ref` does, for those rows.
    """
    sq, sk = q.shape[1], k.shape[1]
    left, right = normalize_window(tuple(window_size), bool(causal))
    if right < 0:
        e = sk
    else:
        e = max(0, min(sk, r1 + sk - sq + right))
    delta = (e - r1) - (sk - sq)
    sub_left = left + delta if left >= 0 else -1
    sub_right = right - delta if right >= 0 else -1
    if sub_left < -1 or sub_right < -1:  # block sees no key at all: let the full call decide
        return mha_fwd_ref(q, k, v, softmax_scale=softmax_scale, causal=bool(causal),
                           window_size=tuple(window_size), p_dtype=p_dtype)
    k0 = min(e, max(0, r0 + sk - sq - left)) if left >= 0 else 0
    out, lse = mha_fwd_ref(q[:, r0:r1], k[:, k0:e], v[:, k0:e], softmax_scale=softmax_scale,
                           causal=False, window_size=(sub_left, sub_right), p_dtype=p_dtype)
    return out, lse


def check_blocks(seq_len, block=CHECK_BLOCK):
    """Row blocks ``[(r0, r1), ...]`` to check: the whole sequence when short, else the
    first, a middle and the last ``block`` rows (the window's clipped and interior rows)."""
    if seq_len <= 3 * block:
        return [(0, seq_len)]
    mid = seq_len // 2 - block // 2
    return [(0, block), (mid, mid + block), (seq_len - block, seq_len)]


# --------------------------------------------------------------------------- inputs, cached per config

@dataclass
class Inputs:
    cfg: object
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    dq: object = None
    dk: object = None
    dv: object = None
    refs: dict = field(default_factory=dict)

    def reference(self):
        """``{(r0, r1): (out64, lse64, out_lowp)}`` for the checked blocks (computed once)."""
        if not self.refs:
            left, right = self.cfg.window_left, self.cfg.window_right
            for r0, r1 in check_blocks(self.cfg.seq_len):
                kw = dict(window_size=(left, right), causal=bool(self.cfg.causal))
                ref, lse = reference_rows(self.q, self.k, self.v, r0, r1, **kw)
                low, _ = reference_rows(self.q, self.k, self.v, r0, r1, p_dtype=DTYPE, **kw)
                self.refs[(r0, r1)] = (ref, lse, low.astype(DTYPE).astype(np.float64))
        return self.refs


_INPUTS_CACHE = {}

#: standard normals drawn per chunk (and per thread) by :func:`random_normal`
_CHUNK = 1 << 24


def random_normal(seed, shape, dtype=DTYPE):
    """Standard normal ``dtype`` values, reproducible from ``seed`` (a list of ints): float32
    draws in chunks, chunk ``i`` from ``default_rng([*seed, i])``, on all host cores (NumPy
    releases the GIL while it fills). At 524288 tokens q alone has 2^31 elements; float64
    draws plus a cast on one core took tens of seconds per config on the H200 host."""
    out = np.empty(shape, dtype)
    flat = out.reshape(-1)

    def fill(i):
        n = min(_CHUNK, flat.size - i * _CHUNK)
        flat[i * _CHUNK:i * _CHUNK + n] = np.random.default_rng([*seed, i]).standard_normal(
            n, dtype=np.float32)

    chunks = range(-(-flat.size // _CHUNK))
    with ThreadPoolExecutor(max_workers=min(len(chunks), os.cpu_count() or 1) or 1) as pool:
        list(pool.map(fill, chunks))
    return out


def get_inputs(cfg):
    """Random q, k, v for ``cfg`` (host and device), shared by every kernel of the config;
    only the last config's inputs are kept."""
    key = cfg.key()
    if key not in _INPUTS_CACHE:
        _INPUTS_CACHE.clear()
        from numba import cuda
        b, s, h, hkv, d = (cfg.num_seqs, cfg.seq_len, cfg.num_heads, cfg.num_kv_heads,
                           cfg.head_size)
        shapes = ((b, s, h, d), (b, s, hkv, d), (b, s, hkv, d))
        seed = [SEED, *(x + 1 for x in key)]  # windows can be -1; seeds must be >= 0
        q, k, v = (random_normal([*seed, n], shape) for n, shape in enumerate(shapes))
        inp = Inputs(cfg, q, k, v)
        inp.dq, inp.dk, inp.dv = (cuda.to_device(x) for x in (q, k, v))
        cuda.synchronize()
        _INPUTS_CACHE[key] = inp
    return _INPUTS_CACHE[key]


@dataclass
class CheckResult:
    ok: bool
    max_err: float
    tol: float
    lse_ok: bool | None
    rows_checked: int

    def as_dict(self):
        return {"ok": bool(self.ok), "max_err": float(self.max_err), "tol": float(self.tol),
                "lse_ok": self.lse_ok, "rows_checked": int(self.rows_checked)}

    def __str__(self):
        lse = "" if self.lse_ok is None else f", lse {'ok' if self.lse_ok else 'WRONG'}"
        return (f"{'ok' if self.ok else 'FAILED'}: max err {self.max_err:.2e} "
                f"(tol {self.tol:.2e}{lse}) on {self.rows_checked} rows x all heads")


def _compare_blocks(inp, rows_of, lse):
    """Compare the output's checked rows with the reference. ``rows_of(r0, r1)`` returns
    the host rows ``out[:, r0:r1]`` (B, r1 - r0, H, D): only the checked blocks are copied
    back, not a 4 GiB output at 524288 tokens. ``lse`` is the host (B, H, S) array or None."""
    ok, err, tol, lse_ok, rows = True, 0.0, float("inf"), None, 0
    for (r0, r1), (ref, ref_lse, low) in inp.reference().items():
        o = np.asarray(rows_of(r0, r1), np.float64)
        rows += r1 - r0
        if lse is not None:
            c = compare(o, lse[:, :, r0:r1], ref, ref_lse, low, DTYPE)
            block_ok, block_err, block_tol = c.ok, c.max_err, c.tol
            lse_ok = c.lse_tol_ok if lse_ok is None else (lse_ok and c.lse_tol_ok)
        else:
            block_tol = tolerance(ref, low, DTYPE)
            finite = bool(np.all(np.isfinite(o)))
            block_err = float(np.max(np.abs(o - ref), initial=0.0)) if finite else float("nan")
            block_ok = finite and block_err <= block_tol
        ok = ok and block_ok
        err = block_err if not np.isfinite(block_err) else max(err, block_err)
        tol = min(tol, block_tol)
    return CheckResult(bool(ok), err, tol, lse_ok, rows)
