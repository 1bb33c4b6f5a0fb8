"""The normalised description of one attention call, shared by the interface and the kernels.

Everything a kernel needs to decide whether it can run, and how to launch, is here. It is
built once per call by :mod:`attn_numba.interface` after validation, so kernels never see raw
user arguments.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Largest head size any kernel accepts.
MAX_HEAD_SIZE = 256


def normalize_window(window_size, causal):
    """Validate ``window_size`` and ``causal`` and return the effective ``(left, right)``.

    This is the one place where the two are combined. ``-1`` means unbounded on that side;
    ``causal=True`` forces ``right = 0`` (bottom-right aligned), keeping ``left``.

    Raises ``TypeError`` if ``window_size`` is not a pair of ints or ``causal`` is not a bool,
    and ``ValueError`` if a side is below -1.
    """
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if isinstance(window_size, (str, bytes)) or not hasattr(window_size, "__len__"):
        raise TypeError(f"window_size must be a pair (left, right), got {window_size!r}")
    if len(window_size) != 2:
        raise TypeError(f"window_size must be a pair (left, right), got {len(window_size)} values")
    left, right = window_size
    for name, val in (("left", left), ("right", right)):
        if isinstance(val, (bool, np.bool_)) or not isinstance(val, (int, np.integer)):
            raise TypeError(f"window_size {name} must be an int, got {val!r}")
        if val < -1:
            raise ValueError(f"window_size {name} must be >= -1 (-1 = unbounded), got {val}")
    left, right = int(left), int(right)
    if causal:
        right = 0
    return left, right


def key_range_host(i, seqlen_q, seqlen_k, left, right):
    """Inclusive key range ``(lo, hi)`` seen by query row ``i`` (empty when ``hi < lo``).

    Row ``i`` sees key ``j`` iff ``i + sk - sq - left <= j <= i + sk - sq + right``, with ``-1``
    meaning unbounded, clipped to ``[0, sk - 1]``. Host twin of ``kernels.common.key_range``.
    """
    shift = i + seqlen_k - seqlen_q
    lo = 0 if left < 0 else max(0, shift - left)
    hi = seqlen_k - 1 if right < 0 else min(seqlen_k - 1, shift + right)
    return lo, hi


@dataclass(frozen=True)
class Problem:
    """One validated call, in the varlen layout every kernel uses.

    Batched calls are expressed as varlen with ``cu_seqlens = arange(batch + 1) * seqlen``.
    ``lse_batched`` says where a kernel writes lse: ``lse[b, h, i]`` when true (shape
    ``(batch, num_heads, seqlen_q)``), else ``lse[0, h, cu_seqlens_q[b] + i]``.
    """

    batch: int
    total_q: int
    total_k: int
    max_seqlen_q: int
    max_seqlen_k: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    dtype: np.dtype
    softmax_scale: float
    window_left: int
    window_right: int
    causal: bool
    lse_batched: bool
    on_simulator: bool
    #: number of (query, key, head) pairs inside the window, or None when not counted
    pairs: int | None = None
    #: backward only: False lets a kernel sum dQ with fp32 atomics (bwd_flash_tc)
    deterministic: bool = True

    @property
    def group_size(self):
        """Query heads per KV head: query head h reads KV head ``h // group_size``."""
        return self.num_heads // self.num_kv_heads


def count_pairs(seqlens_q, seqlens_k, left, right):
    """Exact number of (query, key) pairs inside the window, summed over sequences (one head)."""
    total = 0
    for sq, sk in zip(seqlens_q, seqlens_k):
        sq, sk = int(sq), int(sk)
        if sq == 0 or sk == 0:
            continue
        i = np.arange(sq, dtype=np.int64)
        shift = i + sk - sq
        lo = np.zeros(sq, np.int64) if left < 0 else np.maximum(0, shift - left)
        hi = np.full(sq, sk - 1, np.int64) if right < 0 else np.minimum(sk - 1, shift + right)
        total += int(np.maximum(hi - lo + 1, 0).sum())
    return total


def windowed_flops(seqlens_q, seqlens_k, num_heads, head_size, left, right):
    """Exact forward FLOPs: ``4 * head_size`` per (query, key, head) pair inside the window
    (2*D for the Q.K^T dot product and 2*D for P.V)."""
    return 4 * head_size * num_heads * count_pairs(seqlens_q, seqlens_k, left, right)


def dense_flops(batch, seqlen, num_heads, head_size):
    """The log's "Est. FLOPS": ``2 * S^2 * H * D`` per sequence, ignoring the window."""
    return 2 * batch * seqlen * seqlen * num_heads * head_size


def min_bytes(total_q, total_k, num_heads, num_kv_heads, head_size, itemsize, with_lse=False):
    """Fewest bytes a forward pass must move: read Q, K, V once and write O (and lse) once."""
    n = (2 * total_q * num_heads + 2 * total_k * num_kv_heads) * head_size * itemsize
    if with_lse:
        n += 4 * total_q * num_heads
    return n


def default_scale(head_size):
    return 1.0 / math.sqrt(head_size)
