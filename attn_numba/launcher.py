"""Launch a kernel :class:`~attn_numba.kernels.Plan` without Numba's per-call dispatch.

What ``kernel[grid, block, stream](*args)`` does per call in numba-cuda 0.30.4
(``numba/cuda/dispatcher.py``): ``configure`` (lru_cached), ``_LaunchConfiguration.__call__``
-> ``CUDADispatcher.call`` -> type every argument (``typeof``, for a CUDA-array-interface
object a new device-array wrapper) and look the overload up in C -> ``_Kernel.launch``, which
for every argument runs ``_prepare_args`` (``wrap_arg(val).to_device``, then meminfo, parent,
size, itemsize, pointer, shape and strides as separate kernel parameters; ctypes objects for
scalars), builds a ``cuda.core`` ``LaunchConfig`` and calls ``cuda.core.launch``, which packs
the parameters again. numba-cuda's tracker puts that at about 6.6 us plus about 4 us per array
argument (PR #288); a forward call passes seven arrays, a backward call more.

:class:`Bound` does that work once per call specialisation (fixed shapes and scalars): it
looks up the compiled overload for the exact argument types (:func:`load_cached`), lays out
every kernel parameter in one ``uint64`` slot of a ctypes buffer, exactly in the order of
``_prepare_args`` (each parameter is at most 8 bytes and the driver copies each parameter's
own size from the start of its slot), and keeps an array of pointers to the slots. A call then
writes the data pointers and calls the driver's ``cuLaunchKernel`` through
``cuda.bindings``, with the parameter-pointer array as ``kernelParams``. The parameter count
and sizes are checked against the driver's ``cuKernelGetParamInfo`` (through ctypes)
where the driver has it.

``MODE`` selects the path: ``"driver"`` (default: ``cuLaunchKernel`` of the loaded driver
library called through ctypes, falling back to ``cuda.bindings``), ``"bindings"`` (always the
``cuda.bindings.driver.cuLaunchKernel`` wrapper) or ``"dispatcher"`` (Numba's normal launch,
always used on the simulator and for kernel modules without ``plan()``); the environment
variable ``ATTN_NUMBA_LAUNCH`` sets it at import. Measured on the H200 at 512 tokens
(results/h200/checks/call_breakdown.log, run 3, before the ctypes path existed): the launch stage
took 10.3 us through ``cuda.bindings`` and 217 us through Numba's dispatcher.
"""
from __future__ import annotations

import ctypes
import os
import struct
import threading

import numpy as np

from .arrays import c_strides

#: "driver": cuLaunchKernel via ctypes with pre-packed parameters; "bindings": the same via
#: cuda.bindings; "dispatcher": Numba's launch
MODE = os.environ.get("ATTN_NUMBA_LAUNCH", "driver")



def load_cached(disp, sig, compile_on_miss=True):
    """Load ``disp``'s disk-cached kernel for ``sig`` *without* Numba's target-context refresh.

    Measured on the H100 host (results/h100/pathology.json, cProfile of the first call): with a
    warm disk cache almost all of the first call is ``BaseContext.refresh()``, which Numba's
    ``Cache.load_overload`` runs before reading the cache: it installs every typing/lowering
    registry and imports ``numba.cuda.np.arraymath``, whose BLAS check imports SciPy. A cached
    kernel (a cubin) needs none of that to launch. This reads the cache entry directly and
    registers the overload exactly as ``CUDADispatcher.compile`` does after a cache hit.

    Relies on numba-cuda 0.30 internals (``_cache``, ``_index_key``, ``_cache_file``); returns
    ``(kernel, how)`` with how in {"in-memory", "fast-cache", "compile"}: on any mismatch
    (no CUDACache, launch-config-sensitive kernel, cache miss, internals changed) it falls
    back to the public ``disp.compile(sig)`` (or returns ``(None, "miss")`` when
    ``compile_on_miss`` is false).
    """
    from numba.cuda.core import sigutils
    argtypes, _ = sigutils.normalize_signature(tuple(sig))
    kern = disp.overloads.get(argtypes)
    if kern is not None:
        return kern, "in-memory"
    try:
        from numba.cuda.dispatcher import CUDACache
        cache = disp._cache
        if (isinstance(cache, CUDACache) and cache._enabled
                and not cache.is_launch_config_sensitive()
                and not getattr(disp, "_launch_config_sensitive", False)):
            data = cache._cache_file.load(cache._index_key(argtypes, disp.targetctx.codegen()))
            if data is not None:
                kern = cache._impl.rebuild(disp.targetctx, data)
                if not getattr(kern, "launch_config_sensitive", False):
                    disp._cache_hits[argtypes] += 1
                    disp.add_overload(kern, argtypes)
                    return kern, "fast-cache"
    except Exception:  # noqa: BLE001 - internals changed: use the public path
        pass
    if not compile_on_miss:
        return None, "miss"
    return disp.compile(argtypes), "compile"


def viewed(spec, how):
    """(dtype, shape) of an array ``spec = (dtype, shape)`` after a Plan view ``how``."""
    dtype, shape = np.dtype(spec[0]), tuple(int(s) for s in spec[1])
    if how is None:
        return dtype, shape
    if isinstance(how, str):  # "flat"
        return dtype, (int(np.prod(shape, dtype=np.int64)),)
    new = np.dtype(how)
    last = shape[-1] * dtype.itemsize
    if last % new.itemsize:
        raise ValueError(f"cannot view a last axis of {last} bytes as {new}")
    return new, shape[:-1] + (last // new.itemsize,)


def plan_specs(plan, specs):
    """The (dtype, shape) of the array arguments of ``plan``'s launch, given ``specs``: the
    call's arrays by name -> (dtype, shape) as the kernels receive them (bf16 as uint16)."""
    return tuple(viewed(specs[n], plan.view_of(i)) for i, n in enumerate(plan.arrays))


def argtypes(plan, specs):
    """Numba argument types of ``plan``'s launch (C-contiguous, writable arrays)."""
    from numba import from_dtype, types, typeof
    arrays = tuple(types.Array(from_dtype(dt), len(shape), "C")
                   for dt, shape in plan_specs(plan, specs))
    return arrays + tuple(typeof(s) for s in plan.scalars)


def _scalar_bits(ty, val):
    """The little-endian bits of a scalar kernel parameter, in a uint64 slot."""
    from numba import types
    if ty == types.float32:
        return struct.unpack("<I", struct.pack("<f", float(val)))[0]
    if ty == types.float64:
        return struct.unpack("<Q", struct.pack("<d", float(val)))[0]
    if ty == types.float16:
        return int(np.float16(val).view(np.uint16))
    if isinstance(ty, (types.Integer, types.Boolean)):
        return int(val) & 0xFFFFFFFFFFFFFFFF
    raise NotImplementedError(f"scalar parameter of type {ty}")


def scalar_slots(tys, vals):
    """The uint64 parameter slots of a plan's scalars of Numba types ``tys``: one per scalar,
    and one per member of a tuple (Numba passes a tuple member by member)."""
    from numba import types
    out = []
    for ty, val in zip(tys, vals):
        if isinstance(ty, types.UniTuple):
            out += [_scalar_bits(ty.dtype, x) for x in val]
        else:
            out.append(_scalar_bits(ty, val))
    return out


def _dim3(d):
    d = (d,) if isinstance(d, int) else tuple(d)
    return tuple(int(x) for x in d) + (1,) * (3 - len(d))


class Bound:
    """One plan with its shapes and scalars fixed: ``bound(stream_handle, ptrs)`` launches it
    on a raw stream with ``ptrs``, the data pointers of the call's arrays in the order of
    ``names`` (the keys of ``specs``: :data:`~attn_numba.kernels.FWD_ARRAYS` for a forward
    call); the plan takes those it names, in its own order.

    Raises ``NotImplementedError`` from the constructor when the kernel cannot be launched
    this way (debug or cooperative kernel, parameter layout not as expected); the interface
    then uses Numba's dispatcher.
    """

    def __init__(self, plan, specs):
        from cuda.bindings import driver as cudrv
        from numba import cuda
        self.plan = plan
        sig = argtypes(plan, specs)
        kern, _ = load_cached(plan.kernel, sig)
        if getattr(kern, "debug", False) or getattr(kern, "cooperative", False):
            raise NotImplementedError("debug/cooperative kernels use the dispatcher")
        kern.bind()
        cufunc = kern._codelibrary.get_cufunc()
        values, slots = [], []
        for dt, shape in plan_specs(plan, specs):
            size = int(np.prod(shape, dtype=np.int64))
            slots.append(len(values) + 4)  # meminfo, parent, nitems, itemsize, *data*
            values += [0, 0, size, dt.itemsize, 0, *shape, *c_strides(shape, dt.itemsize)]
        values += scalar_slots(sig[len(plan.arrays):], plan.scalars)
        sizes = _param_sizes(int(cufunc.handle), len(values))
        if sizes is not None and max(sizes, default=0) > 8:
            raise NotImplementedError(f"kernel parameters of {sizes} bytes, expected "
                                      f"{len(values)} of at most 8 bytes")
        n = len(values)
        self._buf = (ctypes.c_uint64 * n)(*values)
        base = ctypes.addressof(self._buf)
        self._ptrs = (ctypes.c_void_p * n)(*[base + 8 * j for j in range(n)])
        self._params = ctypes.addressof(self._ptrs)
        self._slots = tuple(slots)
        names = tuple(specs)
        self._index = tuple(names.index(n) for n in plan.arrays)
        self._func = cudrv.CUfunction(int(cufunc.handle))
        self._fptr = int(cufunc.handle)
        self._grid, self._block = _dim3(plan.griddim), _dim3(plan.blockdim)
        self._shared = int(plan.shared)
        self._launch = cudrv.cuLaunchKernel
        self._ctx_error = cudrv.CUresult.CUDA_ERROR_INVALID_CONTEXT
        self._lock = threading.Lock()
        self._cuda = cuda
        self._c = _libcuda_launch() if MODE == "driver" else None

    def __call__(self, stream, ptrs):
        g, b = self._grid, self._block
        with self._lock:  # the parameter buffer is shared; the driver copies it at launch
            buf = self._buf
            for slot, i in zip(self._slots, self._index):
                buf[slot] = ptrs[i]
            c = self._c
            if c is not None:
                err = c(self._fptr, g[0], g[1], g[2], b[0], b[1], b[2], self._shared, stream,
                        self._params, None)
            else:
                err, = self._launch(self._func, g[0], g[1], g[2], b[0], b[1], b[2],
                                    self._shared, stream, self._params, 0)
            if err == 201:  # CUDA_ERROR_INVALID_CONTEXT: a thread without one: make it, retry
                self._cuda.current_context()
                err, = self._launch(self._func, g[0], g[1], g[2], b[0], b[1], b[2],
                                    self._shared, stream, self._params, 0)
        if err:
            raise RuntimeError(f"cuLaunchKernel failed: CUresult {int(err)}")


_LIBCUDA = []


def _libcuda():
    """The already-loaded driver library (``ctypes.CDLL``), opened once, or None."""
    if not _LIBCUDA:
        try:
            _LIBCUDA.append(ctypes.CDLL("libcuda.so.1"))
        except OSError:
            _LIBCUDA.append(None)
    return _LIBCUDA[0]


_LAUNCH = []


def _libcuda_launch():
    """``cuLaunchKernel`` from the already-loaded driver library through ctypes (about a
    microsecond of call overhead), or None where it cannot be found (then the
    ``cuda.bindings`` wrapper is used)."""
    if not _LAUNCH:
        fn = getattr(_libcuda(), "cuLaunchKernel", None)
        if fn is not None:
            u = ctypes.c_uint
            fn.argtypes = [ctypes.c_void_p, u, u, u, u, u, u, u, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_void_p]
            fn.restype = ctypes.c_int
        _LAUNCH.append(fn)
    return _LAUNCH[0]


def _param_sizes(handle, n):
    """Sizes of the first ``n`` parameters of the loaded kernel ``handle`` (a ``CUkernel``:
    numba-cuda loads through cuda.core's library API) from the driver's
    ``cuKernelGetParamInfo`` (CUDA 12.4+), or None where the driver lacks it. Raises
    NotImplementedError when the kernel has fewer than ``n`` parameters.

    Index ``n`` itself is never asked, so a healthy bind makes no failing driver call:
    cuda.core's ``arguments_info`` finds the count by asking until the driver refuses, and
    compute-sanitizer's memcheck counted each refusal as an error (H200, 2026-11-30);
    ``cuFuncGetParamInfo`` rejects a ``CUkernel`` handle outright. The price: a kernel with
    *more* parameters than expected is not caught here. The guards for that are the pinned
    numba-cuda (its argument layout is what ``Bound`` writes) and the GPU test
    ``test_fast_launch_matches_numba_dispatch``, which compares the bound launch with Numba's
    own, bit for bit, for every kernel."""
    fn = getattr(_libcuda(), "cuKernelGetParamInfo", None)
    if fn is None:
        return None
    size_t = ctypes.c_size_t
    fn.argtypes = [ctypes.c_void_p, size_t, ctypes.POINTER(size_t), ctypes.POINTER(size_t)]
    fn.restype = ctypes.c_int
    sizes, off, size = [], size_t(), size_t()
    for j in range(n):
        err = fn(handle, j, ctypes.byref(off), ctypes.byref(size))
        if err:
            raise NotImplementedError(f"cuKernelGetParamInfo({j}) failed (CUresult {err}): "
                                      f"the kernel has fewer than the {n} parameters expected")
        sizes.append(int(size.value))
    return sizes


def bind_plans(plans, specs):
    """:class:`Bound` launchers for ``plans`` (all of them), or None when ``MODE`` is
    ``"dispatcher"``, on the simulator, or when any plan cannot be bound."""
    from numba import config
    if MODE not in ("driver", "bindings") or config.ENABLE_CUDASIM:
        return None
    try:
        return tuple(Bound(p, specs) for p in plans)
    except (NotImplementedError, ImportError, AttributeError) as exc:
        # correct but ~10x the host time per call: say so once instead of silently
        import warnings
        warnings.warn(f"attn_numba: the fast launch path is unavailable ({exc}); calls go "
                      f"through Numba's dispatcher", RuntimeWarning, stacklevel=3)
        return None
