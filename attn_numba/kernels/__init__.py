"""Kernel registry and the launch-plan contract (:class:`KernelModule`). One module per
version; the interface dispatches between them.

Every forward kernel module (registered in :data:`_MODULES`) and every backward kernel module
(:data:`_BWD_MODULES`) defines what :class:`KernelModule` lists. The call path caches the
plans of a call's specialisation and launches them itself, on the caller's stream, through
bound ``cuLaunchKernel`` launchers where it can (:mod:`attn_numba.launcher`), else through
:func:`launch_plans`.

Arrays, as the kernels receive them: ``q``/``out``/``dout``/``dq`` ``(total_q, H, D)``,
``k``/``v``/``dk``/``dv`` ``(total_k, Hkv, D)``, ``lse`` float32 ``(B, H, S)`` or
``(1, H, total_q)`` (see ``Problem.lse_batched``), ``cu_seqlens_*`` int32 ``(B + 1,)``;
bfloat16 tensors arrive as their raw bits (Numba dtype uint16). The launches must write every
element of their outputs (``out`` and ``lse``; ``dq``, ``dk`` and ``dv``).
"""
from __future__ import annotations

import importlib
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

#: forward kernels, in the order ``kernel="auto"`` prefers them (the one registry of names)
_MODULES = {
    "flash_ws": "attn_numba.kernels.v6_flash_ws",  # Hopper (sm_90a) only; see auto_declines
    "flash_wgmma": "attn_numba.kernels.v5_flash_wgmma",  # Hopper only; absent from some builds
    "flash_tc": "attn_numba.kernels.v4_flash_tc",
    "flash": "attn_numba.kernels.v3_flash",
    "tiled": "attn_numba.kernels.v2_tiled",
    "naive": "attn_numba.kernels.v1_naive",
}
#: backward kernels, in the order ``mha_bwd(kernel="auto")`` prefers them
_BWD_MODULES = {
    "flash_wgmma": "attn_numba.kernels.bwd_flash_wgmma",  # Hopper (sm_90a), D 64 / 128
    "flash_tc": "attn_numba.kernels.bwd_flash_tc",
    "flash": "attn_numba.kernels.bwd_flash",
}
KERNEL_NAMES = tuple(_MODULES)
BWD_KERNEL_NAMES = tuple(_BWD_MODULES)
#: kernels ``auto`` never picks (they run only when named); a module may also define
#: ``auto_declines(problem) -> str | None``, why auto passes it over for one problem
#: (flash_ws: below a number of key tiles, where flash_wgmma is as fast)
OPT_IN = frozenset()

#: the array arguments of a forward call, in the order the call path passes their pointers
FWD_ARRAYS = ("q", "k", "v", "out", "lse", "cu_seqlens_q", "cu_seqlens_k")
#: the array arguments of a backward call (scratch buffers follow, by their names)
BWD_ARRAYS = ("dout", "q", "k", "v", "out", "lse", "dq", "dk", "dv", "cu_seqlens_q",
              "cu_seqlens_k")

#: ``Plan.views`` entry: pass the array as a 1-D ``reshape(size)`` view
FLAT = "flat"


class Plan(NamedTuple):
    """One kernel launch of a call.

    The launch is ``kernel[griddim, blockdim, stream, shared](a_0', a_1', ..., *scalars)``
    where ``a_i`` is the call's array named ``arrays[i]`` (:data:`FWD_ARRAYS`,
    :data:`BWD_ARRAYS` or a :class:`Scratch` name) and ``a_i' = a_i`` viewed by ``views[i]``:

    * ``None`` (or ``i >= len(views)``): the array as is (bf16 as uint16);
    * a NumPy dtype: ``.view(dtype)`` (the last axis rescaled by the item sizes);
    * :data:`FLAT`: ``.reshape(size)``, a 1-D view.

    ``scalars`` are NumPy scalars (``np.float32``, ``np.int64``, ``np.int32``) or Python ``bool``:
    their types select the compiled specialisation, so they must not change type between
    calls. ``kernel`` is a ``numba.cuda.jit`` dispatcher compiled with ``cache=True``.
    """

    kernel: object
    griddim: tuple
    blockdim: object
    views: tuple
    scalars: tuple
    shared: int = 0
    arrays: tuple = FWD_ARRAYS

    def view_of(self, i):
        """The view of array argument ``i``."""
        return self.views[i] if i < len(self.views) else None


class Scratch(NamedTuple):
    """A buffer a call needs besides its arguments: allocated uninitialised by the
    call path (the caller's allocator, on the launch stream) and passed to every plan whose
    ``arrays`` name it. The plans initialise whatever they read."""

    name: str
    shape: tuple
    dtype: object


@runtime_checkable
class KernelModule(Protocol):
    """What a kernel module defines (``tests/test_kernel_contract.py`` checks every one).

    * ``NAME``: its ``kernel=`` name;
    * ``supports(problem) -> str | None``: why it cannot run a
      :class:`~attn_numba.problem.Problem`, or ``None`` when it can;
    * ``plan(problem) -> tuple[Plan, ...]``: the launches that compute the call, in order;
    * ``compile_targets(head_size, dtype) -> [(label, kernel, signature)]``: every kernel it
      compiles for that head size and dtype (empty when unsupported): the one list that
      ``compile_check`` and the cache-key test use. ``kernel`` is the ``cuda.jit``
      dispatcher (its ``py_func`` is what ``cuda.compile_ptx`` takes).

    A backward module also defines ``scratch(problem) -> tuple[Scratch, ...]``; a forward
    module may (flash_ws: each block's own tensor maps). :func:`scratch_of` gives a
    module's list either way. A module with scratch may define ``reuse_plan(problem) ->
    tuple[Plan, ...] | None``: launches that take what ``plan``'s launches last wrote into
    the same scratch for the same q, k and v pointers as already there (flash_ws: the
    maps), which the call path uses when it knows that (:func:`reuse_plan_of`).
    """

    NAME: str

    def supports(self, problem): ...

    def plan(self, problem): ...

    def compile_targets(self, head_size, dtype): ...


def scratch_of(mod, problem, **kw):
    """``mod``'s scratch buffers for ``problem`` (``()`` for a module that needs none);
    ``kw``: the keywords given to its ``plan``."""
    fn = getattr(mod, "scratch", None)
    return () if fn is None else tuple(fn(problem, **kw))


def reuse_plan_of(mod, problem):
    """``mod.reuse_plan(problem)`` where the module defines it, else None."""
    fn = getattr(mod, "reuse_plan", None)
    return None if fn is None else fn(problem)


def scratch_arrays(mod, problem, stream=0, **kw):
    """``{name: Numba device array}`` of ``mod``'s scratch for ``problem`` (uninitialised),
    to add to :func:`launch_plans`' ``arrays`` in scripts and tests."""
    from numba import cuda
    return {s.name: cuda.device_array(s.shape, np.dtype(s.dtype), stream=stream)
            for s in scratch_of(mod, problem, **kw)}


def _view(x, how):
    if how is None:
        return x
    if isinstance(how, str):
        if how != FLAT:
            raise ValueError(f"unknown Plan view {how!r}")
        return x.reshape(x.size)
    return x.view(np.dtype(how))


def plan_args(plan, arrays):
    """The argument tuple of ``plan``'s launch; ``arrays``: name -> Numba device array."""
    return (*(_view(arrays[n], plan.view_of(i)) for i, n in enumerate(plan.arrays)),
            *plan.scalars)


def launch_plans(plans, arrays, stream=0):
    """Launch ``plans`` in order through Numba's dispatcher (the path the simulator and
    scripts use; the call path has a faster one on a GPU). ``arrays``: name -> Numba device
    array, for every name the plans use; ``stream``: a Numba stream or a raw
    ``cudaStream_t`` int (0: the default stream)."""
    if isinstance(stream, int) and stream:
        from numba import cuda
        stream = cuda.external_stream(stream)
    for p in plans:
        p.kernel[p.griddim, p.blockdim, stream, p.shared](*plan_args(p, arrays))


def named(names, *arrays):
    """``dict(zip(names, arrays))``: the ``arrays`` argument of :func:`launch_plans`."""
    return dict(zip(names, arrays))


def get(name, table=None):
    """The kernel module for ``name`` (in ``table``, default the forward kernels), or None if
    this build does not have it."""
    path = (_MODULES if table is None else table).get(name)
    if path is None:
        return None
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if exc.name == path:
            return None
        raise


def get_bwd(name):
    """The backward kernel module for ``name``, or None if this build does not have it."""
    return get(name, _BWD_MODULES)


def available(backward=False):
    """Names of the (forward, or backward) kernels this build has."""
    table = _BWD_MODULES if backward else _MODULES
    return [n for n in table if get(n, table) is not None]
