"""Compile-time guardrail: pay kernel compilation / cache loading before the first call, and
detect compilation where it must not happen (inside a timed benchmark launcher).

The user's NVBench log (``attn-numba explain``) shows seconds per call that do not depend on
the work: host-side compilation inside the timed region. Two tools against that:

* :func:`warmup` runs ``mha_fwd`` once per (kernel, dtype, head_size) on tiny device arrays, so
  that CUDA context creation, Numba's target-context set-up, the disk-cache load (or the
  compile) and the module load happen here rather than in the first real call.
  :func:`warmup_async` does the same in a background thread.
* :func:`count_compiles` / :func:`no_new_compiles` count the real Numba kernel compilations
  (calls of ``numba.cuda.dispatcher.compile_cuda``, which a disk-cache hit does not make)
  inside a block; ``no_new_compiles`` raises :class:`CompileInTimedRegion` if there were any.
  Wrap ``state.exec(...)`` in it. :func:`specialization_count` counts compiled specializations
  (``len(dispatcher.overloads)`` over every kernel module, plus lru_cache misses of kernel
  factories), which also works on the simulator.

:func:`compile_eager` is the lower-level variant: ``dispatcher.compile(sig)`` with the explicit
signatures from each kernel module's ``compile_targets`` plus ``kernel.bind()`` (module load),
timed per step, so one can see where the first-call time goes.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import time

import numpy as np

from . import kernels as _kernels
from .compile_check import kernel_targets
from .launcher import load_cached  # noqa: F401 - part of this module's API
from .kernels import KERNEL_NAMES


class CompileInTimedRegion(RuntimeError):
    """A Numba kernel was compiled inside a region that must not compile."""


def _on_simulator():
    from numba import config
    return bool(config.ENABLE_CUDASIM)


# --------------------------------------------------------------------------- counting

class CompileCounter:
    """Result of :func:`count_compiles`: ``count`` and ``events`` [(function name, seconds)]."""

    def __init__(self):
        self.events = []

    @property
    def count(self):
        return len(self.events)

    @property
    def seconds(self):
        return sum(s for _, s in self.events)


_patch_lock = threading.Lock()


@contextlib.contextmanager
def count_compiles():
    """Count Numba CUDA compilations (``compile_cuda`` calls: kernels and the device functions
    they pull in) inside the block. On the simulator nothing compiles and the count stays 0."""
    counter = CompileCounter()
    if _on_simulator():
        yield counter
        return
    from numba.cuda import dispatcher as _disp
    with _patch_lock:
        original = _disp.compile_cuda

        @functools.wraps(original)
        def counting(pyfunc, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(pyfunc, *args, **kwargs)
            finally:
                counter.events.append((getattr(pyfunc, "__name__", str(pyfunc)),
                                       time.perf_counter() - t0))

        _disp.compile_cuda = counting
    try:
        yield counter
    finally:
        with _patch_lock:
            _disp.compile_cuda = original


@contextlib.contextmanager
def no_new_compiles(what="this region"):
    """Raise :class:`CompileInTimedRegion` if a Numba kernel is compiled inside the block.

    Use around ``state.exec(launcher)``: a compilation there is timed as part of the kernel.
    """
    with count_compiles() as c:
        yield c
    if c.count:
        names = sorted({n for n, _ in c.events})
        raise CompileInTimedRegion(
            f"{c.count} Numba compilation(s) ({', '.join(names)}, {c.seconds:.2f} s) inside "
            f"{what}; compile before timing (attn_numba.warmup.warmup) and never create "
            f"cuda.jit kernels per call")


def _factories(mod):
    """lru_cached callables defined in a kernel module (kernel factories)."""
    out = []
    for name, obj in vars(mod).items():
        if callable(obj) and hasattr(obj, "cache_info") and getattr(obj, "__module__", None) == mod.__name__:
            out.append((name, obj))
    return out


def specialization_count():
    """{'overloads': n, 'factory_misses': n, 'dispatchers': n} over every available kernel module.

    ``overloads``: compiled specializations of the dispatchers that ``compile_targets`` lists
    (0 on the simulator, which does not compile); ``factory_misses``: lru_cache misses of
    kernel factories (each miss builds new kernels); ``dispatchers``: how many there are.
    """
    overloads = misses = ndisp = 0
    for name in KERNEL_NAMES:
        mod = _kernels.get(name)
        if mod is None:
            continue
        for _, disp, *_ in kernel_targets(mod):
            ndisp += 1
            overloads += len(getattr(disp, "overloads", {}) or {})
        for _, fac in _factories(mod):
            misses += fac.cache_info().misses
    return {"overloads": overloads, "factory_misses": misses, "dispatchers": ndisp}


# --------------------------------------------------------------------------- warm-up

def init_context():
    """Create the CUDA context now (seconds taken). No-op on the simulator."""
    t0 = time.perf_counter()
    if not _on_simulator():
        from numba import cuda
        cuda.current_context()
    return time.perf_counter() - t0


def warmup(kernels=("auto",), dtypes=(np.float16,), head_sizes=(128,), num_heads=4,
           num_kv_heads=1, seqlen=16, varlen=False):
    """Run ``mha_fwd`` once per (kernel, dtype, head_size) on tiny device arrays.

    Afterwards the first real call with those parameters does no compilation, no disk-cache
    load and no module load. ``kernels``: names for ``mha_fwd(kernel=...)`` (``"auto"``
    warms what auto picks); combinations a kernel cannot run are skipped. Returns
    ``{"context_s", "total_s", "calls": [{kernel, dtype, head_size, seconds, compiles,
    skipped}]}``. On the simulator the calls run on the simulator (use tiny sizes).
    """
    from numba import cuda

    from .interface import mha_fwd, mha_varlen_fwd
    names = (kernels,) if isinstance(kernels, str) else tuple(kernels)
    t_start = time.perf_counter()
    ctx_s = init_context()
    calls = []
    rng = np.random.default_rng(0)
    for name in names:
        for dt in dtypes:
            for d in head_sizes:
                rec = {"kernel": name, "dtype": np.dtype(dt).name, "head_size": int(d),
                       "skipped": None}
                q = rng.standard_normal((1, seqlen, num_heads, d)).astype(dt)
                k = rng.standard_normal((1, seqlen, num_kv_heads, d)).astype(dt)
                v = rng.standard_normal((1, seqlen, num_kv_heads, d)).astype(dt)
                t0 = time.perf_counter()
                with count_compiles() as cc:
                    try:
                        dq, dk, dv = (cuda.to_device(x) for x in (q, k, v))
                        if varlen:
                            cu = cuda.to_device(np.array([0, seqlen], np.int32))
                            out = mha_varlen_fwd(dq.reshape(seqlen, num_heads, d),
                                                 dk.reshape(seqlen, num_kv_heads, d),
                                                 dv.reshape(seqlen, num_kv_heads, d), cu, cu,
                                                 kernel=name, window_size=(4, 4))
                        else:
                            out = mha_fwd(dq, dk, dv, kernel=name, window_size=(4, 4))
                        cuda.synchronize()
                        del out
                    except ValueError as exc:  # kernel cannot run this combination
                        rec["skipped"] = str(exc)
                rec["seconds"] = time.perf_counter() - t0
                rec["compiles"] = cc.count
                calls.append(rec)
    return {"context_s": ctx_s, "total_s": time.perf_counter() - t_start, "calls": calls}


def warmup_async(**kwargs):
    """Start :func:`warmup` in a daemon thread; returns the thread (``.result`` when done).

    A first call made while it runs waits on Numba's compiler lock and then finds the kernel
    ready. The warm-up holds the GIL for most of its time, so it overlaps best with work that
    releases it (I/O, NumPy, GPU waits)."""
    th = threading.Thread(target=lambda: setattr(th, "result", warmup(**kwargs)), daemon=True,
                          name="attn_numba-warmup")
    th.result = None
    th.start()
    return th


def compile_eager(kernel_names=("naive",), dtypes=(np.float16,), head_sizes=(128,)):
    """``dispatcher.compile(sig)`` for each kernel module's ``compile_targets`` and then
    ``kernel.bind()`` (cubin -> loaded module), timed per step.

    Returns a list of {kernel, func, dtype, head_size, compile_or_load_s, bind_s, compiles}.
    With ``cache=True`` and a warm disk cache ``compile`` is a cache load (``compiles == 0``).
    Empty on the simulator.
    """
    out = []
    for row, disp, sig in _signatures(kernel_names, dtypes, head_sizes):
        with count_compiles() as cc:
            t0 = time.perf_counter()
            kern = disp.compile(tuple(sig))
            t1 = time.perf_counter()
            kern.bind()
            t2 = time.perf_counter()
        out.append(dict(row, compile_or_load_s=t1 - t0, bind_s=t2 - t1, compiles=cc.count))
    return out


def _signatures(kernel_names, dtypes, head_sizes):
    """(row, dispatcher, signature) for every ``compile_targets`` entry of the given kernels;
    row = {kernel, func, dtype, head_size}. Nothing on the simulator."""
    if _on_simulator():
        return
    for name in kernel_names:
        mod = _kernels.get(name)
        if mod is None:
            continue
        for label, disp, sig, d, dt in kernel_targets(mod, head_sizes,
                                                      [np.dtype(x) for x in dtypes]):
            yield ({"kernel": name, "func": label, "dtype": np.dtype(dt).name,
                    "head_size": int(d)}, disp, sig)


# --------------------------------------------------------------------------- fast cache load
# load_cached (attn_numba.launcher): a disk-cached kernel without Numba's context refresh.
# This module imports the interface only inside warmup(); the interface never imports it.

def fast_load(kernel_names=("naive",), dtypes=(np.float16,), head_sizes=(128,), bind=True,
              compile_on_miss=True):
    """:func:`load_cached` (+ ``bind()``: module load) for every ``compile_targets`` entry of
    the given kernels. Returns [{kernel, func, dtype, head_size, how,
    load_s, bind_s}]. Empty on the simulator. With ``compile_on_miss=False`` a cache miss
    is skipped (how = "miss") instead of compiled: the interface uses that on its first call
    of each (kernel, dtype, head_size), so a cold cache costs nothing extra."""
    out = []
    for row, disp, sig in _signatures(kernel_names, dtypes, head_sizes):
        t0 = time.perf_counter()
        kern, how = load_cached(disp, sig, compile_on_miss)
        t1 = time.perf_counter()
        if bind and kern is not None:
            kern.bind()
        out.append(dict(row, how=how, load_s=t1 - t0, bind_s=time.perf_counter() - t1))
    return out
