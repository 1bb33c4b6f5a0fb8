"""Argument checks of the public call. Each raises ``TypeError`` (wrong kind or dtype) or
``ValueError`` (wrong shape or value) naming the argument, before anything is launched.

They work on :class:`~attn_numba.arrays.Info` records (shape, dtype, contiguity, pointer,
device), so one code path serves torch, CuPy, Numba and NumPy callers.
"""
from __future__ import annotations

import math

import numpy as np

from . import arrays
from .arrays import BF16, F16, F32, dtype_name
from .kernels import KERNEL_NAMES
from .problem import MAX_HEAD_SIZE, default_scale, normalize_window

SUPPORTED_DTYPES = tuple(d for d in (F16, BF16, F32) if d is not None)
_DTYPE_NAMES = "float16, bfloat16 or float32"


def kinds_of(q, k, v):
    """The one array kind of q, k and v (see :mod:`attn_numba.arrays`)."""
    kq, kk, kv = arrays.kind_of(q, "q"), arrays.kind_of(k, "k"), arrays.kind_of(v, "v")
    if kq == kk == kv:
        return kq
    if "numpy" in (kq, kk, kv):
        raise TypeError("q, k and v must all be NumPy arrays or all be CUDA arrays, not a mix "
                        f"(got {kq}, {kk}, {kv})")
    raise TypeError(f"q, k and v must be the same kind of CUDA array, not a mix "
                    f"(got {kq}, {kk}, {kv})")


def check_tensors(iq, ik, iv, rank, kind):
    """Ranks, dtypes, shapes, head sizes, GQA, contiguity and device of q, k, v; their dtype."""
    for name, x in (("q", iq), ("k", ik), ("v", iv)):
        if len(x.shape) != rank:
            raise ValueError(f"{name} must have rank {rank}, got shape {tuple(x.shape)}")
    dq = iq.dtype
    if dq not in SUPPORTED_DTYPES:
        raise TypeError(f"q dtype must be {_DTYPE_NAMES}, got {dtype_name(dq, kind)}")
    for name, x in (("k", ik), ("v", iv)):
        if x.dtype != dq:
            raise TypeError(f"{name} dtype {dtype_name(x.dtype, kind)} does not match q dtype "
                            f"{dtype_name(dq, kind)}")
    if ik.shape != iv.shape:
        raise ValueError(f"k shape {ik.shape} and v shape {iv.shape} must match")
    head_size = int(iq.shape[-1])
    if int(ik.shape[-1]) != head_size:
        raise ValueError(f"k head_size {ik.shape[-1]} does not match q head_size {head_size}")
    if not 1 <= head_size <= MAX_HEAD_SIZE:
        raise ValueError(f"head_size must be in [1, {MAX_HEAD_SIZE}], got {head_size}")
    num_heads, num_kv_heads = int(iq.shape[-2]), int(ik.shape[-2])
    if num_heads < 1 or num_kv_heads < 1:
        raise ValueError(f"num_heads ({num_heads}) and num_kv_heads ({num_kv_heads}) must be >= 1")
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if kind != "numpy":
        for name, x in (("q", iq), ("k", ik), ("v", iv)):
            if not x.contiguous:
                raise ValueError(f"{name} must be C-contiguous on the device (call .contiguous() "
                                 f"or cupy.ascontiguousarray first)")
            if x.device != iq.device:
                raise ValueError(f"{name} is on device {x.device} but q is on device {iq.device}")
    return dq


def check_scale(softmax_scale, head_size):
    if softmax_scale is None:
        return default_scale(head_size)
    if isinstance(softmax_scale, (bool, np.bool_)) or not isinstance(
            softmax_scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"softmax_scale must be a real number, got {softmax_scale!r}")
    if not math.isfinite(float(softmax_scale)):
        raise ValueError(f"softmax_scale must be finite, got {softmax_scale}")
    return float(softmax_scale)


def check_window(window_size, causal):
    """:func:`~attn_numba.problem.normalize_window` (kept as the one place they combine)."""
    return normalize_window(window_size, causal)


def check_kernel(kernel):
    if not isinstance(kernel, str):
        raise TypeError(f"kernel must be a string, got {type(kernel).__name__}")
    if kernel != "auto" and kernel not in KERNEL_NAMES:
        raise ValueError(f"unknown kernel {kernel!r}; choose from 'auto', "
                         + ", ".join(repr(n) for n in KERNEL_NAMES))


def check_out(buf, name, kind, shape, dtype, others):
    """Validate a caller-supplied output buffer; its Info (None when ``buf`` is None).
    ``others``: ((name, Info, array), ...) it must not overlap (device pointers on a GPU,
    host memory on the simulator and for NumPy arrays)."""
    if buf is None:
        return None
    bkind = arrays.kind_of(buf, name)
    if (bkind == "numpy") != (kind == "numpy"):
        where = "a NumPy array" if kind == "numpy" else "a CUDA array"
        raise TypeError(f"{name} must be {where} like q, got {type(buf).__name__}")
    inf = arrays.info(buf, bkind)
    if tuple(int(s) for s in inf.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(inf.shape)}")
    if inf.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype_name(dtype, bkind)}, got "
                        f"{dtype_name(inf.dtype, bkind)}")
    if not inf.contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    ref = others[0][1]
    if kind != "numpy" and inf.device != ref.device:
        raise ValueError(f"{name} is on device {inf.device} but q is on device {ref.device}")
    for other, oinf, arr in others:
        if oinf is None:
            continue
        if arrays.overlaps(inf, oinf) or (kind == "numpy" and np.may_share_memory(buf, arr)):
            raise ValueError(f"{name} overlaps {other}: pass a separate buffer")
    return inf


def cu_seqlens_arg(cu, name, kind):
    """Validate a cu_seqlens argument's kind, dtype and shape (and, on the host, contents).
    Returns ``(array, Info, host copy or None)``."""
    if isinstance(cu, np.ndarray):
        ckind = "numpy"
    else:
        try:
            ckind = arrays.kind_of(cu, name)
        except TypeError:
            raise TypeError(f"{name} must be an int32 array, got {type(cu).__name__}") from None
        if kind == "numpy":
            raise TypeError(f"{name} is a CUDA array but q, k, v are NumPy arrays")
    inf = arrays.info(cu, ckind)
    if inf.dtype != np.int32:
        raise TypeError(f"{name} must be int32, got {dtype_name(inf.dtype, ckind)}")
    if len(inf.shape) != 1 or inf.shape[0] < 2:
        raise ValueError(f"{name} must have shape (num_seqs + 1,) with num_seqs >= 1, "
                         f"got shape {tuple(inf.shape)}")
    if ckind != "numpy" and not inf.contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if ckind == "numpy":
        cu = np.ascontiguousarray(cu)
        check_cu_contents(cu, name)
        return cu, arrays.info(cu, "numpy"), cu
    return cu, inf, None


def check_cu_contents(arr, name):
    if arr[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {arr[0]}")
    if np.any(np.diff(arr.astype(np.int64)) < 0):
        raise ValueError(f"{name} must be non-decreasing")


def _check_int(name, val):
    if val is None:
        return
    if isinstance(val, (bool, np.bool_)) or not isinstance(val, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {val!r}")
    if val < 0:
        raise ValueError(f"{name} must be >= 0, got {val}")


def max_seqlens(cq, ck, total_q, total_k, max_seqlen_q, max_seqlen_k):
    """Check the cu_seqlens pair against q/k and each other; ``(max_seqlen_q, max_seqlen_k)``.

    Device cu_seqlens with both maxima given: contents trusted (no copy). Otherwise device
    cu_seqlens are copied to the host (synchronising) and checked in full."""
    if cq[1].shape != ck[1].shape:
        raise ValueError(f"cu_seqlens_q has {cq[1].shape[0] - 1} sequences but cu_seqlens_k "
                         f"has {ck[1].shape[0] - 1}")
    _check_int("max_seqlen_q", max_seqlen_q)
    _check_int("max_seqlen_k", max_seqlen_k)
    hosts = []
    for (arr, inf, host), name in ((cq, "cu_seqlens_q"), (ck, "cu_seqlens_k")):
        if host is None and (max_seqlen_q is None or max_seqlen_k is None):
            host = arrays.as_numba(arr, inf).copy_to_host()  # synchronises: documented
            check_cu_contents(host, name)
        hosts.append(host)
    if hosts[0] is None or hosts[1] is None:  # device cu_seqlens, both maxima given
        return int(max_seqlen_q), int(max_seqlen_k)
    cu_q, cu_k = hosts
    if int(cu_q[-1]) != total_q:
        raise ValueError(f"cu_seqlens_q[-1] = {cu_q[-1]} does not match q's total_q = {total_q}")
    if int(cu_k[-1]) != total_k:
        raise ValueError(f"cu_seqlens_k[-1] = {cu_k[-1]} does not match k's total_k = {total_k}")
    mq, mk = int(np.diff(cu_q).max(initial=0)), int(np.diff(cu_k).max(initial=0))
    for name, given, actual in (("max_seqlen_q", max_seqlen_q, mq),
                                ("max_seqlen_k", max_seqlen_k, mk)):
        if given is not None and given < actual:
            raise ValueError(f"{name} = {given} is smaller than the longest sequence ({actual})")
    return mq, mk
