"""Public API of the backward pass: ``mha_bwd`` and ``mha_varlen_bwd``, with FlashAttention's
conventions (``_flash_attn_backward`` / ``_flash_attn_varlen_backward``).

The call path is the forward's (:mod:`attn_numba.callpath`): every argument is checked
before anything launches, the call's specialisation (backward kernel module, its
:class:`~attn_numba.kernels.Plan` launches, bound launchers) is cached by everything that
fixes the launch, outputs and the module's scratch buffers are allocated in the caller's
array type on the launch stream, and the launches go through bound ``cuLaunchKernel``
launchers (Numba's dispatcher on the simulator). The device path never copies to or from the
host and never synchronises.
"""
from __future__ import annotations

import sys

import numpy as np

from . import arrays
from .arrays import F32, kernel_dtype, on_simulator, resolve_stream
from .callpath import _cu_device, _new, _ptr, _run, _spec, check_aligned
from .kernels import BWD_KERNEL_NAMES
from .problem import Problem
from .validation import (check_out, check_scale, check_tensors, check_window, cu_seqlens_arg,
                         kinds_of, max_seqlens)

__all__ = ["mha_bwd", "mha_varlen_bwd"]

#: the backward's pointers that ``callpath.check_aligned`` checks, in the order of a call's
#: arrays: dout, q, k, v, out, lse (float32, 4-byte loads: not checked), dq, dk, dv
BWD_ALIGNED = ("dout", "q", "k", "v", "out", None, "dq", "dk", "dv")

_KW_DOC = """softmax_scale, causal, window_size: as given to the forward that produced
            ``out`` and ``lse``.
        kernel: "auto", "flash_wgmma" (Hopper warpgroup MMA, sm_90; float16/bfloat16, head
            size 64 or 128), "flash_tc" (tensor cores, mma.sync; float16/bfloat16) or "flash"
            (CUDA cores; float16/float32, and the kernel the simulator runs). "auto" picks the
            first of those that can run the call.
        dq, dk, dv: optional output buffers (the shapes and dtypes of q, k and v,
            C-contiguous, on q's device, overlapping no input nor each other). Written and
            returned.
        stream: where to launch, as in :func:`attn_numba.mha_fwd`; new outputs and scratch
            are allocated on it.
        deterministic: True (the default): two calls give the same bits. False lets
            "flash_tc" add dQ with fp32 atomics from its dK/dV pass instead of running a
            separate dQ pass (FlashAttention-2's default; dq's last bits may then differ
            between calls, dk and dv do not). "flash" is deterministic either way."""


def mha_bwd(dout, q, k, v, out, lse, *, softmax_scale=None, causal=False,
            window_size=(-1, -1), kernel="auto", dq=None, dk=None, dv=None, stream=None,
            deterministic=True):
    """Gradients of :func:`attn_numba.mha_fwd` with respect to q, k and v.

    Arguments:
        dout: (batch, seqlen_q, num_heads, head_size), the gradient of ``out``, q's dtype.
        q, k, v: the forward's inputs (same kind, dtype and layout rules as the forward).
        out: the forward's output, q's shape and dtype.
        lse: float32 (batch, num_heads, seqlen_q), from ``mha_fwd(..., return_lse=True)``.
        {kw}

    Returns ``(dq, dk, dv)`` of the shapes and dtype of q, k and v, in the caller's array
    type. With GQA, ``dk``/``dv`` of a KV head sum over the query heads that read it. Rows
    that see no key contribute nothing (no NaN). Accumulation is in float32; the result is
    deterministic (two calls give the same bits) unless ``deterministic=False``.
    """
    kind = kinds_of(q, k, v)
    iq, ik, iv = (arrays.info(x, kind) for x in (q, k, v))
    dtype = check_tensors(iq, ik, iv, 4, kind)
    batch, sq, num_heads, head_size = (int(s) for s in iq.shape)
    bk, sk, num_kv_heads, _ = (int(s) for s in ik.shape)
    if bk != batch:
        raise ValueError(f"k batch {bk} does not match q batch {batch}")
    lse_shape = (batch, num_heads, sq)
    ido = _check_input(dout, "dout", kind, iq.shape, dtype, iq)
    io = _check_input(out, "out", kind, iq.shape, dtype, iq)
    il = _check_input(lse, "lse", kind, lse_shape, F32, iq)
    scale = check_scale(softmax_scale, head_size)
    left, right = check_window(window_size, causal)
    check_bwd_kernel(kernel)
    det = check_deterministic(deterministic)
    ins = ((dout, ido), (q, iq), (k, ik), (v, iv), (out, io), (lse, il))
    grads = _check_grads(kind, ins, (dq, dk, dv), (iq.shape, ik.shape, iv.shape), dtype)
    sim = on_simulator()
    q3, k3 = (batch * sq, num_heads, head_size), (batch * sk, num_kv_heads, head_size)

    def make():
        kdt, cu = kernel_dtype(dtype), (np.dtype(np.int32), (batch + 1,))
        problem = Problem(batch=batch, total_q=batch * sq, total_k=batch * sk, max_seqlen_q=sq,
                          max_seqlen_k=sk, num_heads=num_heads, num_kv_heads=num_kv_heads,
                          head_size=head_size, dtype=dtype, softmax_scale=scale,
                          window_left=left, window_right=right, causal=bool(causal),
                          lse_batched=True, on_simulator=sim, deterministic=det)
        specs = ((kdt, q3), (kdt, q3), (kdt, k3), (kdt, k3), (kdt, q3), (F32, lse_shape),
                 (kdt, q3), (kdt, k3), (kdt, k3), cu, cu)
        return problem, specs, (sq, sk)

    spec = _spec(("bwd", False, kernel, dtype, iq.device, batch, sq, sk, num_heads,
                  num_kv_heads, head_size, scale, left, right, bool(causal), sim, det), kernel,
                 make, iq.device, backward=True)
    shapes = ((q3, q3, k3, k3, q3, lse_shape), (q3, k3, k3),
              (tuple(iq.shape), tuple(ik.shape), tuple(iv.shape)))
    return _call_bwd(spec, kind, ins, grads, spec.cu, shapes, stream)


def mha_varlen_bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None,
                   max_seqlen_k=None, *, softmax_scale=None, causal=False,
                   window_size=(-1, -1), kernel="auto", dq=None, dk=None, dv=None,
                   stream=None, deterministic=True):
    """Gradients of :func:`attn_numba.mha_varlen_fwd` with respect to q, k and v.

    Arguments:
        dout, q, out: (total_q, num_heads, head_size); k, v: (total_k, num_kv_heads,
            head_size); lse: float32 (num_heads, total_q), from
            ``mha_varlen_fwd(..., return_lse=True)``.
        cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k: as in the forward (give both
            maxima with device ``cu_seqlens`` to keep the call asynchronous).
        {kw}

    Returns ``(dq, dk, dv)``, as :func:`mha_bwd`.
    """
    kind = kinds_of(q, k, v)
    iq, ik, iv = (arrays.info(x, kind) for x in (q, k, v))
    dtype = check_tensors(iq, ik, iv, 3, kind)
    total_q, num_heads, head_size = (int(s) for s in iq.shape)
    total_k, num_kv_heads, _ = (int(s) for s in ik.shape)
    ido = _check_input(dout, "dout", kind, iq.shape, dtype, iq)
    io = _check_input(out, "out", kind, iq.shape, dtype, iq)
    il = _check_input(lse, "lse", kind, (num_heads, total_q), F32, iq)
    cq = cu_seqlens_arg(cu_seqlens_q, "cu_seqlens_q", kind)
    ck = cu_seqlens_arg(cu_seqlens_k, "cu_seqlens_k", kind)
    mq, mk = max_seqlens(cq, ck, total_q, total_k, max_seqlen_q, max_seqlen_k)
    scale = check_scale(softmax_scale, head_size)
    left, right = check_window(window_size, causal)
    check_bwd_kernel(kernel)
    det = check_deterministic(deterministic)
    ins = ((dout, ido), (q, iq), (k, ik), (v, iv), (out, io), (lse, il))
    grads = _check_grads(kind, ins, (dq, dk, dv), (iq.shape, ik.shape, iv.shape), dtype)
    nseq = int(cq[1].shape[0]) - 1
    sim = on_simulator()
    q3, k3, lse3 = tuple(iq.shape), tuple(ik.shape), (1, num_heads, total_q)

    def make():
        kdt, cu = kernel_dtype(dtype), (np.dtype(np.int32), (nseq + 1,))
        problem = Problem(batch=nseq, total_q=total_q, total_k=total_k, max_seqlen_q=mq,
                          max_seqlen_k=mk, num_heads=num_heads, num_kv_heads=num_kv_heads,
                          head_size=head_size, dtype=dtype, softmax_scale=scale,
                          window_left=left, window_right=right, causal=bool(causal),
                          lse_batched=False, on_simulator=sim, deterministic=det)
        specs = ((kdt, q3), (kdt, q3), (kdt, k3), (kdt, k3), (kdt, q3), (F32, lse3),
                 (kdt, q3), (kdt, k3), (kdt, k3), cu, cu)
        return problem, specs, None

    spec = _spec(("bwd", True, kernel, dtype, iq.device, nseq, total_q, total_k, mq, mk,
                  num_heads, num_kv_heads, head_size, scale, left, right, bool(causal), sim,
                  det), kernel, make, iq.device, backward=True)
    cus = tuple(_cu_device(c, kind, iq.device) for c in (cq, ck))
    shapes = ((q3, q3, k3, k3, q3, lse3), (q3, k3, k3), (q3, k3, k3))
    return _call_bwd(spec, kind, ins, grads, cus, shapes, stream)


mha_bwd.__doc__ = mha_bwd.__doc__.replace("{kw}", _KW_DOC)
mha_varlen_bwd.__doc__ = mha_varlen_bwd.__doc__.replace("{kw}", _KW_DOC)


# --------------------------------------------------------------------------- checks

def check_deterministic(deterministic):
    if not isinstance(deterministic, (bool, np.bool_)):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    return bool(deterministic)


def check_bwd_kernel(kernel):
    if not isinstance(kernel, str):
        raise TypeError(f"kernel must be a string, got {type(kernel).__name__}")
    if kernel != "auto" and kernel not in BWD_KERNEL_NAMES:
        raise ValueError(f"unknown backward kernel {kernel!r}; choose from 'auto', "
                         + ", ".join(repr(n) for n in BWD_KERNEL_NAMES))


def _check_input(x, name, kind, shape, dtype, iq):
    """Info of input ``x``: the kind of q, the given shape and dtype, C-contiguous on the
    device and on q's device."""
    xkind = arrays.kind_of(x, name)
    if (xkind == "numpy") != (kind == "numpy") or (kind != "numpy" and xkind != kind):
        raise TypeError(f"{name} must be the same kind of array as q ({kind}), got "
                        f"{type(x).__name__}")
    inf = arrays.info(x, xkind)
    if tuple(int(s) for s in inf.shape) != tuple(int(s) for s in shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(inf.shape)}")
    if inf.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {inf.dtype}")
    if kind != "numpy":
        if not inf.contiguous:
            raise ValueError(f"{name} must be C-contiguous on the device")
        if inf.device != iq.device:
            raise ValueError(f"{name} is on device {inf.device} but q is on device {iq.device}")
    return inf


def _check_grads(kind, ins, bufs, shapes, dtype):
    """``((buf, Info|None), ...)`` of the dq, dk, dv buffers: each checked like ``out=`` of
    the forward, overlapping no input and no other gradient buffer."""
    names = ("dout", "q", "k", "v", "out", "lse")
    others = [(n, inf, x) for n, (x, inf) in zip(names, ins)]
    # check_out compares the device with others[0]'s: q's
    others.insert(0, others.pop(1))
    res = []
    for name, buf, shape in zip(("dq", "dk", "dv"), bufs, shapes):
        inf = check_out(buf, name, kind, tuple(int(s) for s in shape), dtype, tuple(others))
        res.append((buf, inf))
        if inf is not None:
            others.append((name, inf, buf))
    return tuple(res)


# --------------------------------------------------------------------------- the call

def _call_bwd(spec, kind, ins, grads, cus, shapes, stream):
    """Allocate (unless given) dq, dk, dv and the scratch, launch, return ``(dq, dk, dv)``.
    ``shapes``: (kernel shapes of the six inputs, kernel shapes of the three gradients,
    user shapes of the three gradients)."""
    iq = ins[1][1]
    device = iq.device
    if kind == "torch" and device != arrays.torch_current_device():
        with sys.modules["torch"].cuda.device(device):  # launch on q's device
            return _call_bwd(spec, kind, ins, grads, cus, shapes, stream)
    ls = resolve_stream(stream, kind, device)
    if kind == "numpy":
        return _host_call_bwd(spec, ins, grads, cus, shapes, ls)
    okind = kind if kind in ("torch", "cupy") else "numba"
    dtype = spec.problem.dtype
    outs = []
    for (buf, inf), shape in zip(grads, shapes[2]):
        if buf is None:
            buf = _new(okind, ins[1][0], shape, dtype, ls, device)
            inf = arrays.info(buf, okind)
        outs.append((buf, inf))
    scratch = []
    for s in spec.scratch:
        buf = _new(okind, ins[1][0], s.shape, np.dtype(s.dtype), ls, device)
        scratch.append((buf, arrays.info(buf, okind), s.shape))
    (cq, icq), (ck, ick) = cus
    args = (*((x, inf, shape) for (x, inf), shape in zip(ins, shapes[0])),
            *((x, inf, shape) for (x, inf), shape in zip(outs, shapes[1])),
            (cq, icq, None), (ck, ick, None), *scratch)
    ptrs = tuple(a[1].ptr if a[1].ptr is not None else _ptr(a[0], okind) for a in args)
    if spec.align and ptrs[0] is not None:     # (no pointers on the simulator)
        check_aligned(spec, ptrs, BWD_ALIGNED)
    if spec.problem.total_q == 0:
        _zero(outs, okind, ls)   # no query: dk = dv = 0
    _run(spec, ptrs, lambda: args, ls)
    return tuple(x for x, _ in outs)


def _zero(outs, kind, ls):
    for x, _ in outs:
        if kind in ("torch", "cupy"):
            x.fill_(0) if kind == "torch" else x.fill(0)
        else:
            from numba import cuda
            cuda.to_device(np.zeros(x.shape, x.dtype), to=x, stream=arrays.numba_stream(ls))


def _host_call_bwd(spec, ins, grads, cus, shapes, ls):
    """NumPy inputs: copy in on the launch stream, launch, copy out, synchronise."""
    from numba import cuda
    s = arrays.numba_stream(ls)
    p = spec.problem
    kdt = kernel_dtype(p.dtype)
    args = []
    for (x, _), shape in zip(ins, shapes[0]):
        x = np.ascontiguousarray(x)
        x = (x.view(kdt) if x.dtype != F32 else x).reshape(shape)
        d = cuda.to_device(x, stream=s)
        args.append((d, arrays.info(d, "numba"), shape))
    outs = []
    for shape in shapes[1]:
        d = _new("numba", None, shape, kdt, ls, None)
        outs.append((d, arrays.info(d, "numba"), shape))
    cu = []
    for c, inf in cus:
        if isinstance(c, np.ndarray):
            c = cuda.to_device(c, stream=s)
            inf = arrays.info(c, "numba")
        cu.append((c, inf, None))
    scratch = []
    for sc in spec.scratch:
        d = _new("numba", None, sc.shape, np.dtype(sc.dtype), ls, None)
        scratch.append((d, arrays.info(d, "numba"), sc.shape))
    if p.total_q == 0:
        _zero([(d, None) for d, _, _ in outs], "numba", ls)
    allargs = (*args, *outs, *cu, *scratch)
    _run(spec, tuple(a[1].ptr for a in allargs), lambda: allargs, ls)
    res = []
    for (d, _, kshape), (buf, _), ushape in zip(outs, grads, shapes[2]):
        if buf is not None:
            d.copy_to_host(buf.view(kdt).reshape(kshape), stream=s)
            res.append(buf)
        else:
            res.append(d.copy_to_host(stream=s).view(p.dtype).reshape(ushape))
    s.synchronize()
    return tuple(res)
