"""Public API: ``mha_fwd`` and ``mha_varlen_fwd``, with FlashAttention's conventions.

Every argument is validated here, before anything touches the GPU; kernels receive a
:class:`~attn_numba.problem.Problem` and device arrays in the varlen layout.
"""
from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
from numba import config as numba_config
from numba import cuda

from . import kernels
from .problem import (
    KERNEL_NAMES,
    MAX_HEAD_SIZE,
    Problem,
    default_scale,
    normalize_window,
)

_SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))

# Set by attn_numba.testing.poisoned_outputs(): fill new outputs with NaN before launch.
_POISON_OUTPUTS = False


def on_simulator():
    """True when Numba runs CUDA kernels in its Python simulator (NUMBA_ENABLE_CUDASIM=1)."""
    return bool(numba_config.ENABLE_CUDASIM)


# --------------------------------------------------------------------------- validation

def _is_device_array(x):
    """A Numba device array (real or simulated) or any __cuda_array_interface__ object."""
    if hasattr(x, "__cuda_array_interface__"):
        return True
    is_da = getattr(cuda, "is_cuda_array", None)
    if is_da is not None:
        return bool(is_da(x))
    return cuda.devicearray.is_cuda_ndarray(x)  # the simulator's FakeCUDAArray


def _as_device(x):
    """A Numba device-array view of a CUDA array (no copy)."""
    as_da = getattr(cuda, "as_cuda_array", None)
    return x if as_da is None or not hasattr(x, "__cuda_array_interface__") else as_da(x)


def _kind(x, name):
    """'host' for NumPy arrays, 'device' for CUDA array-interface objects."""
    if isinstance(x, np.ndarray):
        return "host"
    if _is_device_array(x):
        return "device"
    raise TypeError(
        f"{name} must be a NumPy array or a CUDA array (Numba, CuPy, PyTorch), "
        f"got {type(x).__name__}")


def _dtype_of(x):
    if hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray):
        return np.dtype(x.__cuda_array_interface__["typestr"])
    return np.dtype(x.dtype)


def _check_tensors(q, k, v, q_rank):
    kinds = {_kind(q, "q"), _kind(k, "k"), _kind(v, "v")}
    if len(kinds) != 1:
        raise TypeError("q, k and v must all be NumPy arrays or all be CUDA arrays, not a mix")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if len(x.shape) != q_rank:
            raise ValueError(f"{name} must have rank {q_rank}, got shape {tuple(x.shape)}")
    dq = _dtype_of(q)
    if dq not in _SUPPORTED_DTYPES:
        raise TypeError(f"q dtype must be float16 or float32, got {dq}")
    for name, x in (("k", k), ("v", v)):
        if _dtype_of(x) != dq:
            raise TypeError(f"{name} dtype {_dtype_of(x)} does not match q dtype {dq}")
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"k shape {tuple(k.shape)} and v shape {tuple(v.shape)} must match")
    qs, ks = tuple(q.shape), tuple(k.shape)  # the simulator's shapes reject negative indices
    head_size = int(qs[-1])
    if int(ks[-1]) != head_size:
        raise ValueError(f"k head_size {ks[-1]} does not match q head_size {head_size}")
    if not 1 <= head_size <= MAX_HEAD_SIZE:
        raise ValueError(f"head_size must be in [1, {MAX_HEAD_SIZE}], got {head_size}")
    num_heads, num_kv_heads = int(qs[-2]), int(ks[-2])
    if num_heads < 1 or num_kv_heads < 1:
        raise ValueError(f"num_heads ({num_heads}) and num_kv_heads ({num_kv_heads}) must be >= 1")
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    return kinds.pop(), dq


def _check_scale(softmax_scale, head_size):
    if softmax_scale is None:
        return default_scale(head_size)
    if isinstance(softmax_scale, (bool, np.bool_)) or not isinstance(
            softmax_scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"softmax_scale must be a real number, got {softmax_scale!r}")
    if not math.isfinite(float(softmax_scale)):
        raise ValueError(f"softmax_scale must be finite, got {softmax_scale}")
    return float(softmax_scale)


def _check_kernel(kernel):
    if not isinstance(kernel, str):
        raise TypeError(f"kernel must be a string, got {type(kernel).__name__}")
    if kernel != "auto" and kernel not in KERNEL_NAMES:
        raise ValueError(f"unknown kernel {kernel!r}; choose from 'auto', "
                         + ", ".join(repr(n) for n in KERNEL_NAMES))


def _host_cu_seqlens(cu, name, kind):
    """Validate a cu_seqlens argument and return a host int32 copy."""
    if isinstance(cu, np.ndarray):
        arr = cu
    elif _is_device_array(cu):
        if kind != "device":
            raise TypeError(f"{name} is a CUDA array but q, k, v are NumPy arrays")
        if _dtype_of(cu) != np.int32:
            raise TypeError(f"{name} must be int32, got {_dtype_of(cu)}")
        arr = _as_device(cu).copy_to_host()
    else:
        raise TypeError(f"{name} must be an int32 array, got {type(cu).__name__}")
    if arr.dtype != np.int32:
        raise TypeError(f"{name} must be int32, got {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"{name} must have shape (num_seqs + 1,) with num_seqs >= 1, "
                         f"got shape {arr.shape}")
    if arr[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {arr[0]}")
    if np.any(np.diff(arr.astype(np.int64)) < 0):
        raise ValueError(f"{name} must be non-decreasing")
    return np.ascontiguousarray(arr)


def _resolve_kernel(kernel, problem):
    if kernel != "auto":
        mod = kernels.get(kernel)
        if mod is None:
            raise ValueError(f"kernel {kernel!r} is not available in this build")
        reason = mod.supports(problem)
        if reason:
            raise ValueError(f"kernel {kernel!r} cannot run this call: {reason}")
        return mod
    reasons = []
    for name in KERNEL_NAMES:
        mod = kernels.get(name)
        if mod is None:
            continue
        reason = mod.supports(problem)
        if not reason:
            return mod
        reasons.append(f"{name}: {reason}")
    raise ValueError("no kernel can run this call: " + "; ".join(reasons))


def choose_kernel(problem, kernel="auto"):
    """The kernel module ``kernel`` resolves to for ``problem`` (what ``auto`` would pick)."""
    _check_kernel(kernel)
    return _resolve_kernel(kernel, problem)


# --------------------------------------------------------------------------- device plumbing

def _to_device_contig(x, name, kind, stream):
    if kind == "host":
        return cuda.to_device(np.ascontiguousarray(x), stream=stream)
    d = _as_device(x)
    if not d.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous on the device (call .contiguous() "
                         f"or cupy.ascontiguousarray first); got strides {d.strides}")
    return d


@functools.lru_cache(maxsize=64)
def _uniform_cu_seqlens(batch, seqlen, _context_handle):
    """Device cu_seqlens for a batched call, built once per (batch, seqlen) and context, so a
    hot loop of mha_fwd calls makes no host-to-device copy (which would synchronise)."""
    return cuda.to_device((np.arange(batch + 1, dtype=np.int64) * seqlen).astype(np.int32))


def _cu_to_device(cu, stream):
    """cu: a host int32 array, a device array (used as is) or a (batch, seqlen) pair."""
    if isinstance(cu, tuple):
        ctx = cuda.current_context()
        return _uniform_cu_seqlens(cu[0], cu[1], id(ctx))
    if isinstance(cu, np.ndarray):
        return cuda.to_device(cu, stream=stream)
    return _as_device(cu)


def _empty(shape, dtype, stream):
    """A new device array; NaN-filled while attn_numba.testing.poisoned_outputs() is active."""
    if _POISON_OUTPUTS:
        return cuda.to_device(np.full(shape, np.nan, dtype=dtype), stream=stream)
    return cuda.device_array(shape, dtype=dtype, stream=stream)


@contextlib.contextmanager
def _poison(enabled=True):
    global _POISON_OUTPUTS
    old, _POISON_OUTPUTS = _POISON_OUTPUTS, enabled
    try:
        yield
    finally:
        _POISON_OUTPUTS = old


_FAST_LOADED = set()


def _fast_load_once(mod, problem):
    """First call of a (kernel, dtype, head_size) in this process: load its disk-cached
    kernels directly (attn_numba.warmup.fast_load), skipping the ~0.3 s of Numba compiler
    set-up that a plain cache hit pays (measured: results/h100/pathology.json). A cache miss
    or any internal mismatch falls through to the normal dispatch, which compiles as usual."""
    key = (mod.NAME, problem.dtype, problem.head_size)
    if problem.on_simulator or key in _FAST_LOADED:
        return
    _FAST_LOADED.add(key)
    try:
        from . import warmup
        warmup.fast_load((mod.NAME,), (problem.dtype,), (problem.head_size,),
                         compile_on_miss=False)
    except Exception:  # noqa: BLE001 - an optimisation only: never fail a call over it
        pass


def _run(problem, mod, q, k, v, cu_q, cu_k, kind, stream):
    """Launch kernel module ``mod``. q: (total_q, H, D), k/v: (total_k, Hkv, D), validated."""
    _fast_load_once(mod, problem)
    if stream is None:
        stream = cuda.default_stream()
    dq = _to_device_contig(q, "q", kind, stream)
    dk = _to_device_contig(k, "k", kind, stream)
    dv = _to_device_contig(v, "v", kind, stream)
    dcu_q = _cu_to_device(cu_q, stream)
    dcu_k = _cu_to_device(cu_k, stream)
    out = _empty(dq.shape, problem.dtype, stream)
    if problem.lse_batched:
        lse_shape = (problem.batch, problem.num_heads, problem.max_seqlen_q)
    else:
        lse_shape = (1, problem.num_heads, problem.total_q)
    lse = _empty(lse_shape, np.float32, stream)
    if problem.total_q > 0:
        mod.launch(problem, dq, dk, dv, out, lse, dcu_q, dcu_k, stream)
    return out, lse, stream


def _finish(out, lse, kind, stream, return_lse, out_shape, lse_final):
    out = out.reshape(out_shape)
    lse = lse_final(lse)
    if kind == "host":
        out_h = out.copy_to_host(stream=stream)
        lse_h = lse.copy_to_host(stream=stream) if return_lse else None
        stream.synchronize()
        return (out_h, lse_h) if return_lse else out_h
    return (out, lse) if return_lse else out


# --------------------------------------------------------------------------- public API

def mha_fwd(q, k, v, *, softmax_scale=None, causal=False, window_size=(-1, -1),
            kernel="auto", return_lse=False, stream=None):
    """Multi-head (GQA/MQA) attention forward, FlashAttention's ``flash_attn_func`` semantics.

    Arguments:
        q: (batch, seqlen_q, num_heads, head_size), float16 or float32.
        k: (batch, seqlen_k, num_kv_heads, head_size), same dtype as q.
        v: (batch, seqlen_k, num_kv_heads, head_size), same dtype as q.
            num_heads must be a multiple of num_kv_heads. Query head ``h`` reads KV head
            ``h // (num_heads // num_kv_heads)`` (GQA; MQA when num_kv_heads == 1).
        softmax_scale: float. Scaling of Q.K^T before softmax; default ``1/sqrt(head_size)``.
        causal: bool. Causal mask aligned to the bottom-right corner of the score matrix;
            equivalent to ``window_size=(left, 0)``.
        window_size: (left, right). -1 means unbounded on that side. Query row ``i`` sees
            key ``j`` iff ``i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right``
            (inclusive), with ``0 <= j < seqlen_k``.
        kernel: "auto", "naive", "tiled", "flash" or "flash_tc". "auto" picks the fastest
            kernel that can run the inputs.
        return_lse: also return the log-sum-exp of each row's scaled scores.
        stream: Numba CUDA stream to launch on (default: the default stream).

    Returns:
        out: (batch, seqlen_q, num_heads, head_size), q's dtype. A NumPy array for NumPy
            inputs; a Numba device array (no host copy) for CUDA-array inputs.
        lse (if return_lse): (batch, num_heads, seqlen_q), float32. A row that sees no key
            has output 0 and lse ``-inf``.

    All accumulation is in float32. Bad arguments raise ``ValueError``/``TypeError`` naming
    the argument before anything is launched.
    """
    kind, dtype = _check_tensors(q, k, v, 4)
    batch, sq, num_heads, head_size = (int(s) for s in q.shape)
    bk, sk, num_kv_heads, _ = (int(s) for s in k.shape)
    if bk != batch:
        raise ValueError(f"k batch {bk} does not match q batch {batch}")
    scale = _check_scale(softmax_scale, head_size)
    left, right = normalize_window(window_size, causal)
    _check_kernel(kernel)
    problem = Problem(
        batch=batch, total_q=batch * sq, total_k=batch * sk, max_seqlen_q=sq, max_seqlen_k=sk,
        num_heads=num_heads, num_kv_heads=num_kv_heads, head_size=head_size, dtype=dtype,
        softmax_scale=scale, window_left=left, window_right=right, causal=bool(causal),
        lse_batched=True, on_simulator=on_simulator())
    cu_q, cu_k = (batch, sq), (batch, sk)  # uniform lengths: cached on the device
    mod = _resolve_kernel(kernel, problem)  # refuse before any copy
    if kind == "host":
        q3 = np.ascontiguousarray(q).reshape(batch * sq, num_heads, head_size)
        k3 = np.ascontiguousarray(k).reshape(batch * sk, num_kv_heads, head_size)
        v3 = np.ascontiguousarray(v).reshape(batch * sk, num_kv_heads, head_size)
    else:
        q3, k3, v3 = (_to_device_contig(x, n, kind, None) for x, n in ((q, "q"), (k, "k"), (v, "v")))
        q3 = q3.reshape(batch * sq, num_heads, head_size)
        k3 = k3.reshape(batch * sk, num_kv_heads, head_size)
        v3 = v3.reshape(batch * sk, num_kv_heads, head_size)
    out, lse, stream = _run(problem, mod, q3, k3, v3, cu_q, cu_k, kind, stream)
    return _finish(out, lse, kind, stream, return_lse, (batch, sq, num_heads, head_size),
                   lambda x: x)


def mha_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None,
                   max_seqlen_k=None, softmax_scale=None, causal=False, window_size=(-1, -1),
                   kernel="auto", return_lse=False, stream=None):
    """Variable-length attention forward, FlashAttention's ``flash_attn_varlen_func`` semantics.

    Arguments:
        q: (total_q, num_heads, head_size): the query rows of all sequences, concatenated.
        k: (total_k, num_kv_heads, head_size).
        v: (total_k, num_kv_heads, head_size).
        cu_seqlens_q: int32 (num_seqs + 1,): ``cu_seqlens_q[b]`` is where sequence b's rows
            start; ``cu_seqlens_q[-1] == total_q``. Non-decreasing: zero-length sequences are
            allowed.
        cu_seqlens_k: int32 (num_seqs + 1,), likewise for k and v.
        max_seqlen_q, max_seqlen_k: optional; computed from cu_seqlens when omitted, and
            checked against them when given.
        softmax_scale, causal, window_size, kernel, return_lse, stream: as in :func:`mha_fwd`.
            The window is applied per sequence with that sequence's own (seqlen_q, seqlen_k).

    Returns:
        out: (total_q, num_heads, head_size), q's dtype.
        lse (if return_lse): (num_heads, total_q), float32.
    """
    kind, dtype = _check_tensors(q, k, v, 3)
    total_q, num_heads, head_size = (int(s) for s in q.shape)
    total_k, num_kv_heads, _ = (int(s) for s in k.shape)
    cu_q = _host_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", kind)
    cu_k = _host_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", kind)
    if cu_q.shape != cu_k.shape:
        raise ValueError(f"cu_seqlens_q has {cu_q.shape[0] - 1} sequences but cu_seqlens_k "
                         f"has {cu_k.shape[0] - 1}")
    if int(cu_q[-1]) != total_q:
        raise ValueError(f"cu_seqlens_q[-1] = {cu_q[-1]} does not match q's total_q = {total_q}")
    if int(cu_k[-1]) != total_k:
        raise ValueError(f"cu_seqlens_k[-1] = {cu_k[-1]} does not match k's total_k = {total_k}")
    seq_q, seq_k = np.diff(cu_q), np.diff(cu_k)
    mq, mk = int(seq_q.max(initial=0)), int(seq_k.max(initial=0))
    for name, given, actual in (("max_seqlen_q", max_seqlen_q, mq), ("max_seqlen_k", max_seqlen_k, mk)):
        if given is not None:
            if isinstance(given, (bool, np.bool_)) or not isinstance(given, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {given!r}")
            if given < actual:
                raise ValueError(f"{name} = {given} is smaller than the longest sequence ({actual})")
    scale = _check_scale(softmax_scale, head_size)
    left, right = normalize_window(window_size, causal)
    _check_kernel(kernel)
    problem = Problem(
        batch=len(cu_q) - 1, total_q=total_q, total_k=total_k, max_seqlen_q=mq, max_seqlen_k=mk,
        num_heads=num_heads, num_kv_heads=num_kv_heads, head_size=head_size, dtype=dtype,
        softmax_scale=scale, window_left=left, window_right=right, causal=bool(causal),
        lse_batched=False, on_simulator=on_simulator())
    mod = _resolve_kernel(kernel, problem)
    # validated on the host; launch with the caller's own device arrays when they are usable
    if _is_device_array(cu_seqlens_q) and _as_device(cu_seqlens_q).is_c_contiguous():
        cu_q = cu_seqlens_q
    if _is_device_array(cu_seqlens_k) and _as_device(cu_seqlens_k).is_c_contiguous():
        cu_k = cu_seqlens_k
    out, lse, stream = _run(problem, mod, q, k, v, cu_q, cu_k, kind, stream)
    return _finish(out, lse, kind, stream, return_lse, (total_q, num_heads, head_size),
                   lambda x: x.reshape(num_heads, total_q))
