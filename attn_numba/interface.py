"""Public API: ``mha_fwd`` and ``mha_varlen_fwd``, with FlashAttention's conventions.

The call path, in order:

1. *Validation* (:mod:`attn_numba.validation`): every argument, including ``out=`` and
   ``lse_out=``, is checked before anything touches the GPU; errors name the argument.
2. *Specialisation*: a dict keyed by everything that fixes the launch (kernel name, dtype,
   device, shapes, head size, GQA group, scale, window) holds the resolved kernel module, its
   :class:`~attn_numba.kernels.Plan` launches, the bound launchers of
   :mod:`attn_numba.launcher` and, for batched calls, the device ``cu_seqlens``. A miss builds
   them (and compiles or loads the kernel); a hit costs one tuple hash.
3. *Stream and outputs* (:mod:`attn_numba.arrays`): the launch stream is ``stream=`` or the
   inputs' framework's current stream; outputs are allocated in the caller's array type on that
   stream, unless ``out=`` / ``lse_out=`` are given.
4. *Launch*: raw data pointers into the bound launchers (``cuLaunchKernel``), or Numba's
   dispatcher on the simulator and as a fallback.

The device path makes no host<->device copy and never synchronises, so a call can be captured
in a CUDA graph once its specialisation exists (make one call before capturing). Steps 2 to 4
live in :mod:`attn_numba.callpath`; this module validates and states the API.
"""
from __future__ import annotations

import numpy as np

from . import arrays
from .arrays import F32, kernel_dtype, on_simulator
from .callpath import (_HOT, _MAX_SPECS, _SPECS, _call, _cu_device, _hot_key,  # noqa: F401
                       _hot_outs, _new, _poison, _resolve_kernel, _spec)
from .problem import Problem
from .validation import (check_kernel, check_out, check_scale, check_tensors, check_window,
                         cu_seqlens_arg, kinds_of, max_seqlens)

__all__ = ["mha_fwd", "mha_varlen_fwd", "choose_kernel", "on_simulator"]


# --------------------------------------------------------------------------- kernel choice

def choose_kernel(problem, kernel="auto"):
    """The kernel module ``kernel`` resolves to for ``problem`` (what ``auto`` would pick)."""
    check_kernel(kernel)
    return _resolve_kernel(kernel, problem)


def mha_fwd(q, k, v, *, softmax_scale=None, causal=False, window_size=(-1, -1),
            kernel="auto", return_lse=False, stream=None, out=None, lse_out=None):
    """Multi-head (GQA/MQA) attention forward, FlashAttention's ``flash_attn_func`` semantics.

    Arguments:
        q: (batch, seqlen_q, num_heads, head_size), float16, bfloat16 or float32: a PyTorch
            CUDA tensor, a CuPy array, a Numba device array (or any ``__cuda_array_interface__``
            object), C-contiguous; or a NumPy array (bfloat16: ``ml_dtypes.bfloat16``).
        k: (batch, seqlen_k, num_kv_heads, head_size), same kind and dtype as q.
        v: (batch, seqlen_k, num_kv_heads, head_size), same kind and dtype as q.
            num_heads must be a multiple of num_kv_heads. Query head ``h`` reads KV head
            ``h // (num_heads // num_kv_heads)`` (GQA; MQA when num_kv_heads == 1).
        softmax_scale: float. Scaling of Q.K^T before softmax; default ``1/sqrt(head_size)``.
        causal: bool. Causal mask aligned to the bottom-right corner of the score matrix;
            equivalent to ``window_size=(left, 0)``.
        window_size: (left, right). -1 means unbounded on that side. Query row ``i`` sees
            key ``j`` iff ``i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right``
            (inclusive), with ``0 <= j < seqlen_k``.
        kernel: "auto", "naive", "tiled", "flash", "flash_tc", "flash_wgmma" or "flash_ws".
            "auto" picks the fastest kernel that can run the inputs; only the tensor-core
            kernels take bfloat16 (``auto`` then picks one of them or raises ValueError).
        return_lse: also return the log-sum-exp of each row's scaled scores.
        stream: where to launch: a Numba, PyTorch or CuPy stream, or a raw ``cudaStream_t``
            int. Default, as in FlashAttention: ``torch.cuda.current_stream()`` for torch
            tensors, CuPy's current stream for CuPy arrays, Numba's default stream otherwise.
            New outputs are allocated on the launch stream.
        out: optional output buffer: q's shape, dtype and device, C-contiguous, not
            overlapping q, k or v. Written and returned.
        lse_out: optional float32 (batch, num_heads, seqlen_q) buffer for lse, likewise (it
            must not overlap out either). Written; returned when ``return_lse``.

    Returns:
        out: (batch, seqlen_q, num_heads, head_size), q's dtype, in the caller's array type:
            a torch tensor (from torch's caching allocator) for torch inputs, a CuPy array for
            CuPy, a Numba device array for Numba and other CUDA arrays, NumPy for NumPy.
        lse (if return_lse): (batch, num_heads, seqlen_q), float32, same array type. A row
            that sees no key has output 0 and lse ``-inf``.

    All accumulation is in float32. Bad arguments raise ``ValueError``/``TypeError`` naming
    the argument before anything is launched. With CUDA inputs the call is asynchronous: no
    host<->device copy, no synchronisation; it can be captured in a CUDA graph after one
    call with the same shapes outside the capture (that call compiles or loads the kernel and
    uploads the cached ``cu_seqlens`` table).
    """
    kind = kinds_of(q, k, v)
    iq, ik, iv = arrays.info(q, kind), arrays.info(k, kind), arrays.info(v, kind)
    hkey = _hot_key(kind, iq, ik, iv, softmax_scale, causal, window_size, kernel)
    hot = _HOT.get(hkey) if hkey is not None else None
    if hot is not None:  # these facts passed the checks before
        outs = ((None, None), (None, None)) if out is None and lse_out is None else \
            _hot_outs(hot, kind, (iq, ik, iv), out, lse_out)
        if outs is not None:
            return _call(hot[0], kind, ((q, iq), (k, ik), (v, iv)), outs, hot[0].cu, hot[1],
                         stream, return_lse)
    dtype = check_tensors(iq, ik, iv, 4, kind)
    batch, sq, num_heads, head_size = (int(s) for s in iq.shape)
    bk, sk, num_kv_heads, _ = (int(s) for s in ik.shape)
    if bk != batch:
        raise ValueError(f"k batch {bk} does not match q batch {batch}")
    scale = check_scale(softmax_scale, head_size)
    left, right = check_window(window_size, causal)
    check_kernel(kernel)
    out_shape, lse_shape = (batch, sq, num_heads, head_size), (batch, num_heads, sq)
    others = (("q", iq, q), ("k", ik, k), ("v", iv, v))
    io = check_out(out, "out", kind, out_shape, dtype, others)
    il = check_out(lse_out, "lse_out", kind, lse_shape, F32, others + (("out", io, out),))
    sim = on_simulator()
    q3, k3 = (batch * sq, num_heads, head_size), (batch * sk, num_kv_heads, head_size)

    def make():
        kdt, cu = kernel_dtype(dtype), (np.dtype(np.int32), (batch + 1,))
        return (Problem(batch=batch, total_q=batch * sq, total_k=batch * sk, max_seqlen_q=sq,
                        max_seqlen_k=sk, num_heads=num_heads, num_kv_heads=num_kv_heads,
                        head_size=head_size, dtype=dtype, softmax_scale=scale,
                        window_left=left, window_right=right, causal=bool(causal),
                        lse_batched=True, on_simulator=sim),
                ((kdt, q3), (kdt, k3), (kdt, k3), (kdt, q3), (F32, lse_shape), cu, cu), (sq, sk))

    spec = _spec((False, kernel, dtype, iq.device, batch, sq, sk, num_heads, num_kv_heads,
                  head_size, scale, left, right, bool(causal), sim), kernel, make, iq.device)
    shapes = (q3, k3, k3, lse_shape, out_shape, lse_shape)
    if hkey is not None:
        if len(_HOT) >= _MAX_SPECS:
            _HOT.clear()
        _HOT[hkey] = (spec, shapes)
    return _call(spec, kind, ((q, iq), (k, ik), (v, iv)), ((out, io), (lse_out, il)),
                 spec.cu, shapes, stream, return_lse)


def mha_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None,
                   max_seqlen_k=None, softmax_scale=None, causal=False, window_size=(-1, -1),
                   kernel="auto", return_lse=False, stream=None, out=None, lse_out=None):
    """Variable-length attention forward, FlashAttention's ``flash_attn_varlen_func`` semantics.

    Arguments:
        q: (total_q, num_heads, head_size): the query rows of all sequences, concatenated.
        k: (total_k, num_kv_heads, head_size).
        v: (total_k, num_kv_heads, head_size).
        cu_seqlens_q: int32 (num_seqs + 1,): ``cu_seqlens_q[b]`` is where sequence b's rows
            start; ``cu_seqlens_q[-1] == total_q``. Non-decreasing: zero-length sequences are
            allowed. A NumPy array or a C-contiguous CUDA array (CUDA only with CUDA q, k, v).
        cu_seqlens_k: int32 (num_seqs + 1,), likewise for k and v.
        max_seqlen_q, max_seqlen_k: the longest sequence. With NumPy cu_seqlens they are
            computed from them when omitted and checked against them when given. With CUDA
            cu_seqlens, give both to keep the call asynchronous: their shape and dtype are
            checked, their contents are trusted (as FlashAttention does) and must be valid.
            When either is omitted, the cu_seqlens are copied to the host (a synchronising
            copy) and checked in full.
        softmax_scale, causal, window_size, kernel, return_lse, stream: as in :func:`mha_fwd`.
            The window is applied per sequence with that sequence's own (seqlen_q, seqlen_k).
        out: optional (total_q, num_heads, head_size) buffer, as in :func:`mha_fwd`.
        lse_out: optional float32 (num_heads, total_q) buffer, as in :func:`mha_fwd`.

    NumPy cu_seqlens with CUDA q, k, v are uploaded once per distinct content and cached.

    Returns:
        out: (total_q, num_heads, head_size), q's dtype, in q's array type.
        lse (if return_lse): (num_heads, total_q), float32.
    """
    kind = kinds_of(q, k, v)
    iq, ik, iv = (arrays.info(x, kind) for x in (q, k, v))
    dtype = check_tensors(iq, ik, iv, 3, kind)
    total_q, num_heads, head_size = (int(s) for s in iq.shape)
    total_k, num_kv_heads, _ = (int(s) for s in ik.shape)
    cq = cu_seqlens_arg(cu_seqlens_q, "cu_seqlens_q", kind)
    ck = cu_seqlens_arg(cu_seqlens_k, "cu_seqlens_k", kind)
    mq, mk = max_seqlens(cq, ck, total_q, total_k, max_seqlen_q, max_seqlen_k)
    scale = check_scale(softmax_scale, head_size)
    left, right = check_window(window_size, causal)
    check_kernel(kernel)
    out_shape, lse_shape = (total_q, num_heads, head_size), (num_heads, total_q)
    others = (("q", iq, q), ("k", ik, k), ("v", iv, v))
    io = check_out(out, "out", kind, out_shape, dtype, others)
    il = check_out(lse_out, "lse_out", kind, lse_shape, F32, others + (("out", io, out),))
    nseq = int(cq[1].shape[0]) - 1
    sim = on_simulator()
    lse3 = (1, num_heads, total_q)

    def make():
        kdt, cu = kernel_dtype(dtype), (np.dtype(np.int32), (nseq + 1,))
        return (Problem(batch=nseq, total_q=total_q, total_k=total_k, max_seqlen_q=mq,
                        max_seqlen_k=mk, num_heads=num_heads, num_kv_heads=num_kv_heads,
                        head_size=head_size, dtype=dtype, softmax_scale=scale,
                        window_left=left, window_right=right, causal=bool(causal),
                        lse_batched=False, on_simulator=sim),
                ((kdt, out_shape), (kdt, ik.shape), (kdt, ik.shape), (kdt, out_shape),
                 (F32, lse3), cu, cu), None)

    spec = _spec((True, kernel, dtype, iq.device, nseq, total_q, total_k, mq, mk, num_heads,
                  num_kv_heads, head_size, scale, left, right, bool(causal), sim), kernel,
                 make, iq.device)
    cus = tuple(_cu_device(c, kind, iq.device) for c in (cq, ck))
    return _call(spec, kind, ((q, iq), (k, ik), (v, iv)), ((out, io), (lse_out, il)), cus,
                 (out_shape, ik.shape, ik.shape, lse3, out_shape, lse_shape), stream, return_lse)


