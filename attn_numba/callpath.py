"""The call path behind :mod:`attn_numba.interface`: specialisations, outputs and launches.

:func:`_spec` caches one :class:`_Spec` per launch-fixing key (kernel module, plans, bound
launchers, device ``cu_seqlens``); :data:`_HOT` maps the validated facts of a repeated
``mha_fwd`` call straight to its spec; :func:`_call` allocates the outputs in the caller's
array type on the launch stream and :func:`_run` enqueues the launches (bound
``cuLaunchKernel`` launchers, or Numba's dispatcher on the simulator and as a fallback).
Nothing here synchronises except :func:`_host_call` (NumPy in, NumPy out).
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import sys

import numpy as np

from . import arrays, kernels, launcher, scratch_reuse
from .arrays import F32, as_numba, kernel_dtype, on_simulator, resolve_stream
from .kernels import BWD_ARRAYS, BWD_KERNEL_NAMES, FWD_ARRAYS, KERNEL_NAMES

# Set by attn_numba.testing.poisoned_outputs(): fill new outputs with NaN before launch.
_POISON_OUTPUTS = False


@contextlib.contextmanager
def _poison(enabled=True):
    global _POISON_OUTPUTS
    old, _POISON_OUTPUTS = _POISON_OUTPUTS, enabled
    try:
        yield
    finally:
        _POISON_OUTPUTS = old


# --------------------------------------------------------------------------- kernel choice

def _resolve_kernel(kernel, problem, backward=False):
    get, names = (kernels.get_bwd, BWD_KERNEL_NAMES) if backward else (kernels.get, KERNEL_NAMES)
    what = "backward kernel" if backward else "kernel"
    if kernel != "auto":
        mod = get(kernel)
        if mod is None:
            raise ValueError(f"{what} {kernel!r} is not available in this build")
        reason = mod.supports(problem)
        if reason:
            raise ValueError(f"{what} {kernel!r} cannot run this call: {reason}")
        return mod
    reasons = []
    for name in names:
        if name in kernels.OPT_IN:
            continue
        mod = get(name)
        if mod is None:
            continue
        reason = mod.supports(problem)
        declines = getattr(mod, "auto_declines", None)
        if not reason and declines is not None:
            reason = declines(problem)   # it can, but the next kernel is as fast here
        if not reason:
            return mod
        reasons.append(f"{name}: {reason}")
    raise ValueError(f"no {what} can run this call: " + "; ".join(reasons))


# --------------------------------------------------------------------------- specialisations

class _Spec:
    """One call specialisation: module, plans, bound launchers, uniform cu_seqlens, and the
    names of the call's arrays (the order of the pointers its launches take: the call's
    arguments, then the module's ``scratch``)."""

    __slots__ = ("mod", "problem", "plans", "bounds", "cu", "names", "scratch", "align",
                 "ready_plans", "ready_bounds", "serial")

    def __init__(self, mod, problem, plans, bounds, cu, names, scratch=(), ready=(None, None)):
        self.mod, self.problem, self.plans, self.bounds, self.cu = mod, problem, plans, bounds, cu
        self.names, self.scratch = names, scratch
        #: the byte alignment the kernel's vector loads and stores need of q, k, v and out
        #: (the module's ``POINTER_ALIGN``; 0: none)
        self.align = getattr(mod, "POINTER_ALIGN", 0)
        #: the module's reuse plan and its launchers (None: none; :mod:`.scratch_reuse`)
        self.ready_plans, self.ready_bounds = ready
        #: this spec's number in the process: its calls' tags in a scratch record
        self.serial = next(_SERIALS)


_SERIALS = itertools.count()


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


def _spec(key, kernel, make, device, backward=False):
    """The cached :class:`_Spec` for ``key``, built on a miss from ``make() -> (problem,
    specs, uniform)`` (kernel resolution may raise). ``specs``: (dtype, shape) of the call's
    arrays as the kernels take them, in the order of ``FWD_ARRAYS`` (``BWD_ARRAYS`` for a
    ``backward`` call); ``uniform``: (seqlen_q, seqlen_k) of a batched call, else None."""
    spec = _SPECS.get(key)
    if spec is not None:
        return spec
    problem, specs, uniform = make()
    mod = _resolve_kernel(kernel, problem, backward)
    plans = tuple(mod.plan(problem))
    named = dict(zip(BWD_ARRAYS if backward else FWD_ARRAYS, specs))
    scratch = kernels.scratch_of(mod, problem)
    for s in scratch:
        named[s.name] = (np.dtype(s.dtype), tuple(s.shape))
    ready = kernels.reuse_plan_of(mod, problem) if scratch and scratch_reuse.ENABLED else None
    ready = None if ready is None else tuple(ready)
    bounds, cu, ready_bounds = None, None, None
    with _device_ctx(device):
        if uniform is not None:
            cu = (_uniform_cu(problem.batch, uniform[0]), _uniform_cu(problem.batch, uniform[1]))
        if not problem.on_simulator and problem.total_q > 0:
            bounds = launcher.bind_plans(plans, named)
            if ready is not None:
                ready_bounds = launcher.bind_plans(ready, named)
            if bounds is None:  # dispatcher path: still skip Numba's slow cache load
                for p in plans + (ready or ()):
                    launcher.load_cached(p.kernel, launcher.argtypes(p, named), False)
    spec = _Spec(mod, problem, plans, bounds, cu, tuple(named), scratch, (ready, ready_bounds))
    if len(_SPECS) >= _MAX_SPECS:
        _SPECS.clear()
    _SPECS[key] = spec
    return spec


# --------------------------------------------------------------------------- launch

def _run(spec, ptrs, args, ls, ready=False):
    """Enqueue ``spec``'s launches (``ready``: its reuse plan's) on
    :class:`~attn_numba.arrays.LaunchStream` ``ls``.

    ``ptrs``: the data pointers of the call's arrays in the order of ``spec.names``, for the
    bound launchers; ``args()``: their ``(array, Info, kernel shape)`` in the same order,
    built only for Numba's dispatcher."""
    if spec.problem.total_q == 0:
        return
    bounds = spec.ready_bounds if ready else spec.bounds
    if bounds is not None:
        bound = None
        try:
            for bound in bounds:
                bound(ls.handle, ptrs)
            return
        except (TypeError, AttributeError, ctypes.ArgumentError) as exc:
            if bound is not bounds[0]:  # the bindings refused our arguments before
                raise                   # anything launched: fall back, once
            import warnings
            warnings.warn(f"attn_numba: cuLaunchKernel path unavailable ({exc}); "
                          f"using Numba's dispatcher", RuntimeWarning, stacklevel=3)
            spec.bounds = spec.ready_bounds = None
    nargs = {n: as_numba(x, inf, shape) for n, (x, inf, shape) in zip(spec.names, args())}
    kernels.launch_plans(spec.ready_plans if ready else spec.plans, nargs,
                         arrays.numba_stream(ls))


def _launch(spec, rec, ptrs, args, ls, asks_driver):
    """:func:`_run`, with the reuse plan where the scratch's :class:`Record` ``rec`` (None:
    a buffer of this call's own) says the buffer holds what it needs, and the record kept
    (:mod:`.scratch_reuse`); ``asks_driver``: the stream's capture state is not known."""
    if rec is None or not scratch_reuse.ENABLED:   # (off: no record is ever written)
        return _run(spec, ptrs, args, ls)
    with scratch_reuse.LOCK:
        ready, tag = scratch_reuse.choose(spec, rec, ptrs, asks_driver, ls.handle)
        rec.tag = None   # unknown until this launch is enqueued
        _run(spec, ptrs, args, ls, ready)
        rec.tag = tag


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
    if spec.align and ptrs[0] is not None and (ptrs[0] | ptrs[1] | ptrs[2] | ptrs[3]) % spec.align:
        check_aligned(spec, ptrs)              # raises (no pointers on the simulator)
    scratch, rec = (), None
    if spec.scratch:
        scratch, sptrs, rec = _scratch_entry(spec, okind, q, ls, device)
        ptrs += sptrs
    sq, sk, sv, slse = shapes[:4]
    _launch(spec, rec, ptrs, lambda: (
        (q, iq, sq), (k, ik, sk), (v, iv, sv),
        (out, io if io is not None else arrays.info(out, okind), sq),
        (lse, il if il is not None else arrays.info(lse, okind), slse),
        (cq, icq, None), (ck, ick, None),
        *((x, arrays.info(x, okind), None) for x in scratch)), ls, okind != "torch")
    return (out, lse) if return_lse else out


#: the forward's pointers that ``check_aligned`` checks (the first four of a call's)
FWD_ALIGNED = ("q", "k", "v", "out")


def check_aligned(spec, ptrs, names=FWD_ALIGNED):
    """ValueError naming the first array of ``names`` (one name per leading pointer of
    ``ptrs``; None: not checked, e.g. the float32 lse) whose data pointer is not a multiple
    of ``spec.align`` (the tensor-core kernels read and write 16-byte vectors), before any
    launch."""
    for name, ptr in zip(names, ptrs):
        if name is not None and ptr % spec.align:
            raise ValueError(
                f"{name}'s data pointer {ptr:#x} is not {spec.align}-byte aligned: kernel "
                f"{spec.mod.NAME!r} moves {spec.align}-byte vectors (pass an aligned array, for "
                f"example a fresh copy, or kernel='flash')")


#: (kind, device, stream handle, scratch specs) -> scratch arrays, reused by the calls on
#: that stream, with their reuse Record (see _scratch_entry)
_STREAM_SCRATCH = {}
_MAX_STREAM_SCRATCH = 64


_IS_CAPTURING = []


def _torch_capturing():
    """Whether torch's current stream is being captured into a CUDA graph (torch's C
    binding behind ``torch.cuda.is_current_stream_capturing``, found once)."""
    if not _IS_CAPTURING:
        torch = sys.modules["torch"]
        _IS_CAPTURING.append(getattr(torch._C, "_cuda_isCurrentStreamCapturing", None)
                             or torch.cuda.is_current_stream_capturing)
    return _IS_CAPTURING[0]()


def _scratch(spec, kind, like, ls, device):
    """The module's scratch buffers for one call (:func:`_scratch_entry`)."""
    return _scratch_entry(spec, kind, like, ls, device)[0]


def _scratch_entry(spec, kind, like, ls, device):
    """The module's scratch buffers for one call on :class:`~arrays.LaunchStream` ``ls``.

    Buffers made once per (device, stream) and reused by every call on that stream: stream
    order keeps two calls from overlapping, and each call's plans write what they read. A
    new buffer per call costs an allocation (Numba: a ``cuMemAlloc``, and Numba's deferred
    frees call ``cuMemFree``, which waits for the device: a host synchronisation, which
    deadlocked NVBench's blocking kernel; torch: about 3 us of host time a call, run 52).
    New buffers per call, from the framework's stream-ordered pool, where a reused one could
    be shared: torch callers while their stream is being captured into a CUDA graph (each
    captured call keeps its own, so graphs replayed at once on different streams never
    share one) or with a stream that is not torch's current one (whose capture this does not
    ask), and CuPy callers. What this cannot see: a stream destroyed with such a call still
    running and its handle reused at once by a new stream. Returns (buffers, their data
    pointers, the reused buffers' :class:`~.scratch_reuse.Record` or None for new ones)."""
    if kind == "cupy" or (kind == "torch" and (ls.explicit or _torch_capturing())):
        bufs = tuple(arrays.empty(kind, like, s.shape, np.dtype(s.dtype), ls, device)
                     for s in spec.scratch)
        return bufs, tuple(_ptr(x, kind) for x in bufs), None
    key = (kind, device, ls.handle, spec.scratch)
    hit = _STREAM_SCRATCH.get(key)
    if hit is None:
        if len(_STREAM_SCRATCH) >= _MAX_STREAM_SCRATCH:
            _STREAM_SCRATCH.clear()
        if kind == "torch":
            bufs = tuple(arrays.empty(kind, like, s.shape, np.dtype(s.dtype), ls, device)
                         for s in spec.scratch)
        else:
            kind = "numba"
            bufs = tuple(arrays.empty("numba", None, s.shape, np.dtype(s.dtype), ls, None)
                         for s in spec.scratch)
        hit = _STREAM_SCRATCH[key] = (bufs, tuple(_ptr(x, kind) for x in bufs),
                                      scratch_reuse.Record())
    return hit


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
    scratch, _, rec = _scratch_entry(spec, "numba", None, ls, None) if spec.scratch \
        else ((), (), None)
    args = (*dev, (out_d, io, shapes[0]), (lse_d, il, shapes[3]), *cu,
            *((x, arrays.info(x, "numba"), None) for x in scratch))
    _launch(spec, rec, tuple(a[1].ptr for a in args), lambda: args, ls, True)
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
