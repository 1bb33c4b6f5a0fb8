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
in a CUDA graph once its specialisation exists (make one call before capturing).
"""
from __future__ import annotations

import contextlib
import ctypes
import sys

import numpy as np

from . import arrays, kernels, launcher
from .arrays import F32, as_numba, kernel_dtype, on_simulator, resolve_stream
from .problem import KERNEL_NAMES, Problem
from .validation import (check_kernel, check_out, check_scale, check_tensors, check_window,
                         cu_seqlens_arg, kinds_of, max_seqlens)

# Set by attn_numba.testing.poisoned_outputs(): fill new outputs with NaN before launch.
_POISON_OUTPUTS = False

__all__ = ["mha_fwd", "mha_varlen_fwd", "choose_kernel", "on_simulator"]


@contextlib.contextmanager
def _poison(enabled=True):
    global _POISON_OUTPUTS
    old, _POISON_OUTPUTS = _POISON_OUTPUTS, enabled
    try:
        yield
    finally:
        _POISON_OUTPUTS = old


# --------------------------------------------------------------------------- kernel choice

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
    check_kernel(kernel)
    return _resolve_kernel(kernel, problem)


# --------------------------------------------------------------------------- specialisations

class _Spec:
    """One call specialisation: module, plans, bound launchers, uniform cu_seqlens."""

    __slots__ = ("mod", "problem", "plans", "bounds", "cu")

    def __init__(self, mod, problem, plans, bounds, cu):
        self.mod, self.problem, self.plans, self.bounds, self.cu = mod, problem, plans, bounds, cu


_SPECS = {}
_MAX_SPECS = 512


def _device_ctx(device):
    if device is None or on_simulator():
        return contextlib.nullcontext()
    from numba import cuda
    return cuda.gpus[device]


def _uniform_cu(batch, seqlen):
    """Device ``arange(batch + 1) * seqlen`` (int32) and its Info, made once per spec."""
    from numba import cuda
    host = (np.arange(batch + 1, dtype=np.int64) * seqlen).astype(np.int32)
    d = cuda.to_device(host)
    return d, arrays.info(d, "numba")


def _spec(key, kernel, make, device):
    """The cached :class:`_Spec` for ``key``, built on a miss from ``make() -> (problem,
    specs, uniform)`` (kernel resolution may raise). ``specs``: (dtype, shape) of the seven
    kernel arrays; ``uniform``: (seqlen_q, seqlen_k) of a batched call, else None."""
    spec = _SPECS.get(key)
    if spec is not None:
        return spec
    problem, specs, uniform = make()
    mod = _resolve_kernel(kernel, problem)
    plan_fn = getattr(mod, "plan", None)
    plans = tuple(plan_fn(problem)) if plan_fn is not None else None
    bounds, cu = None, None
    with _device_ctx(device):
        if uniform is not None:
            cu = (_uniform_cu(problem.batch, uniform[0]), _uniform_cu(problem.batch, uniform[1]))
        if not problem.on_simulator and problem.total_q > 0:
            if plans is not None:
                bounds = launcher.bind_plans(plans, specs)
                if bounds is None:  # dispatcher path: still skip Numba's slow cache load
                    for p in plans:
                        launcher.load_cached(p.kernel, launcher.argtypes(p, specs), False)
            else:
                launcher.preload_module(mod, problem.head_size, kernel_dtype(problem.dtype))
    spec = _Spec(mod, problem, plans, bounds, cu)
    if len(_SPECS) >= _MAX_SPECS:
        _SPECS.clear()
    _SPECS[key] = spec
    return spec


# --------------------------------------------------------------------------- launch

def _run(spec, ptrs, args, ls):
    """Enqueue ``spec``'s launches on :class:`~attn_numba.arrays.LaunchStream` ``ls``.

    ``ptrs``: the seven data pointers (q, k, v, out, lse, cu_q, cu_k) for the bound launchers;
    ``args()``: seven ``(array, Info, kernel shape)``, built only for Numba's dispatcher."""
    if spec.problem.total_q == 0:
        return
    if spec.bounds is not None:
        bound = None
        try:
            for bound in spec.bounds:
                bound(ls.handle, ptrs)
            return
        except (TypeError, AttributeError, ctypes.ArgumentError) as exc:
            if bound is not spec.bounds[0]:  # the bindings refused our arguments before
                raise                        # anything launched: fall back, once
            import warnings
            warnings.warn(f"attn_numba: cuLaunchKernel path unavailable ({exc}); "
                          f"using Numba's dispatcher", RuntimeWarning, stacklevel=3)
            spec.bounds = None
    nargs = [as_numba(x, inf, shape) for x, inf, shape in args()]
    s = arrays.numba_stream(ls)
    if spec.plans is not None:
        kernels.launch_plans(spec.plans, *nargs, s)
    else:
        spec.mod.launch(spec.problem, *nargs, s)


def _new(kind, like, shape, dtype, ls, device):
    """A new output in the caller's type (kind "numba" for Numba and other CUDA arrays)."""
    arr = arrays.empty(kind, like, shape, dtype, ls, device)
    if _POISON_OUTPUTS:
        arrays.fill_nan(arr, kind)
    return arr


def _ptr(x, kind):
    if kind == "torch":
        return x.data_ptr()
    if kind == "cupy":
        return x.data.ptr
    p = getattr(x, "device_ctypes_pointer", None)  # None on the simulator
    return None if p is None else (p.value or 0)


def _call(spec, kind, ins, outs, cus, shapes, stream, return_lse):
    """Allocate (unless given), launch and return. ``ins``: ((q, Info), (k, Info), (v, Info));
    ``outs``: ((out, Info|None), (lse_out, Info|None)); ``cus``: two (array, Info);
    ``shapes``: (kernel shapes of q, k, v, lse; user shapes of out and lse)."""
    (q, iq), (k, ik), (v, iv) = ins
    device = iq.device
    if kind == "torch":  # launch on q's device, as FlashAttention does
        if device != arrays.torch_current_device():
            with sys.modules["torch"].cuda.device(device):
                return _call(spec, kind, ins, outs, cus, shapes, stream, return_lse)
    ls = resolve_stream(stream, kind, device)
    if kind == "numpy":
        return _host_call(spec, ins, outs, cus, shapes, ls, return_lse)
    (out, io), (lse, il) = outs
    okind = kind if kind in ("torch", "cupy") else "numba"
    if out is None:
        out = _new(okind, q, shapes[4], spec.problem.dtype, ls, device)
    if lse is None:
        lse = _new(okind, q, shapes[5], F32, ls, device)
    (cq, icq), (ck, ick) = cus
    ptrs = (iq.ptr, ik.ptr, iv.ptr, io.ptr if io is not None else _ptr(out, okind),
            il.ptr if il is not None else _ptr(lse, okind), icq.ptr, ick.ptr)
    sq, sk, sv, slse = shapes[:4]
    _run(spec, ptrs, lambda: (
        (q, iq, sq), (k, ik, sk), (v, iv, sv),
        (out, io if io is not None else arrays.info(out, okind), sq),
        (lse, il if il is not None else arrays.info(lse, okind), slse),
        (cq, icq, None), (ck, ick, None)), ls)
    return (out, lse) if return_lse else out


def _host_call(spec, ins, outs, cus, shapes, ls, return_lse):
    """NumPy inputs: copy in on the launch stream, launch, copy out, synchronise."""
    from numba import cuda
    p = spec.problem
    s = arrays.numba_stream(ls)
    kdt = kernel_dtype(p.dtype)
    dev = []
    for (x, _), shape in zip(ins, shapes[:3]):
        d = cuda.to_device(np.ascontiguousarray(x).view(kdt).reshape(shape), stream=s)
        dev.append((d, arrays.info(d, "numba"), shape))
    out_d = _new("numba", None, shapes[0], kdt, ls, None)
    lse_d = _new("numba", None, shapes[3], F32, ls, None)
    io, il = arrays.info(out_d, "numba"), arrays.info(lse_d, "numba")
    cu = []
    for c, inf in cus:
        if isinstance(c, np.ndarray):
            c = cuda.to_device(c, stream=s)
            inf = arrays.info(c, "numba")
        cu.append((c, inf, None))
    args = (*dev, (out_d, io, shapes[0]), (lse_d, il, shapes[3]), *cu)
    _run(spec, tuple(a[1].ptr for a in args), lambda: args, ls)
    (out, _), (lse, _) = outs
    out_shape, lse_shape = shapes[4], shapes[5]
    if out is not None:
        out_d.copy_to_host(out.view(kdt).reshape(shapes[0]), stream=s)
    else:
        out = out_d.copy_to_host(stream=s).view(p.dtype).reshape(out_shape)
    if lse is not None:
        lse_d.copy_to_host(lse.reshape(shapes[3]), stream=s)
    elif return_lse:
        lse = lse_d.copy_to_host(stream=s).reshape(lse_shape)
    s.synchronize()
    return (out, lse) if return_lse else out


# --------------------------------------------------------------------------- public API

#: validated facts of a mha_fwd call -> (spec, shapes); see _hot_key
_HOT = {}


def _hot_key(kind, iq, ik, iv, scale, causal, window, kernel):
    """Everything :func:`mha_fwd`'s validation depends on (apart from ``out=``/``lse_out=``),
    as a dict key, or None when an argument's type is unusual (then the call is validated
    in full). A call whose facts equal those of an earlier valid call is valid: it skips the
    checks and reuses that call's specialisation."""
    if (causal.__class__ is not bool or kernel.__class__ is not str
            or not (scale is None or scale.__class__ is float)
            or window.__class__ is not tuple or len(window) != 2
            or window[0].__class__ is not int or window[1].__class__ is not int):
        return None
    return (kind, iq.shape, iq.dtype, iq.contiguous, iq.device, ik.shape, ik.dtype,
            ik.contiguous, ik.device, iv.shape, iv.dtype, iv.contiguous, iv.device, scale,
            causal, window, kernel)


def _hot_outs(hot, kind, ins, out, lse_out):
    """``((out, Info), (lse_out, Info))`` when CUDA buffers ``out``/``lse_out`` (either may be
    None) are plainly valid for a validated call (right shape, dtype, device, C-contiguous,
    no overlap), else None: the full checks then run and say what is wrong."""
    if kind == "numpy":
        return None
    spec, shapes = hot
    res = []
    for buf, shape, dtype in ((out, shapes[4], spec.problem.dtype), (lse_out, shapes[5], F32)):
        if buf is None:
            res.append((None, None))
            continue
        try:
            bkind = arrays.kind_of(buf, "out")
        except TypeError:
            return None
        if bkind == "numpy":
            return None
        inf = arrays.info(buf, bkind)
        if (tuple(inf.shape) != shape or inf.dtype != dtype or not inf.contiguous
                or inf.device != ins[0].device or any(arrays.overlaps(inf, o) for o in ins)):
            return None
        res.append((buf, inf))
    if res[0][1] is not None and res[1][1] is not None and arrays.overlaps(res[0][1], res[1][1]):
        return None
    return tuple(res)


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
        kernel: "auto", "naive", "tiled", "flash", "flash_tc" or "flash_wgmma". "auto" picks
            the fastest kernel that can run the inputs; only the tensor-core kernels take
            bfloat16 (``auto`` then picks one of them or raises ValueError).
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


_HOST_CU = {}


def _cu_device(c, kind, device):
    """(array, Info) of a validated cu_seqlens argument, on the device for CUDA callers."""
    arr, inf, _ = c
    if kind == "numpy" or inf.ptr is not None or not isinstance(arr, np.ndarray):
        return arr, inf
    key = (arr.tobytes(), device)
    hit = _HOST_CU.get(key)
    if hit is None:
        from numba import cuda
        with _device_ctx(device):
            d = cuda.to_device(np.ascontiguousarray(arr))
        if len(_HOST_CU) > 256:
            _HOST_CU.clear()
        hit = _HOST_CU[key] = (d, arrays.info(d, "numba"))
    return hit
