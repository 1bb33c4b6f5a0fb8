"""Kernel registry and the launch-plan contract. One module per version; the interface
dispatches between them.

Every kernel module defines:

* ``NAME``: its ``kernel=`` name;
* ``supports(problem) -> str | None``: why it cannot run a :class:`~attn_numba.problem.Problem`,
  or ``None`` when it can (a kernel that does not take bfloat16 says so here);
* ``plan(problem) -> tuple[Plan, ...]``: the launches that compute the call, in order (see
  :class:`Plan`). The interface caches the plans of a call's specialisation and launches them
  itself, on the caller's stream, without Numba's per-call dispatch where it can
  (:mod:`attn_numba.launcher`);
* ``launch(problem, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, stream)``: enqueue the
  computation on ``stream`` (a Numba stream or a raw ``cudaStream_t`` int), normally just
  ``launch_plans(plan(problem), ...)``. Kept for scripts; a module without ``plan()`` is
  launched through it. ``q``/``out`` are device arrays ``(total_q, H, D)``, ``k``/``v``
  ``(total_k, Hkv, D)``, ``lse`` float32 ``(B, H, S)`` or ``(1, H, total_q)`` (see
  ``Problem.lse_batched``), ``cu_seqlens_*`` int32 ``(B + 1,)``. bfloat16 tensors arrive as
  their raw bits (Numba dtype uint16). The launches must write every element of ``out`` and
  ``lse``.
* ``KERNEL_FUNCS``: the ``cuda.jit`` kernels it launches, with ``ptx_signatures(head_size,
  dtype)`` giving the argument types to compile each for real with ``compile_ptx``.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple

import numpy as np

_MODULES = {
    "naive": "attn_numba.kernels.v1_naive",
    "tiled": "attn_numba.kernels.v2_tiled",
    "flash": "attn_numba.kernels.v3_flash",
    "flash_tc": "attn_numba.kernels.v4_tensor_core",
    "flash_wgmma": "attn_numba.kernels.v5_wgmma",  # Hopper only; absent from some builds
}

#: ``Plan.views`` entry: pass the array as a 1-D ``reshape(size)`` view
FLAT = "flat"


class Plan(NamedTuple):
    """One kernel launch of a call.

    The launch is ``kernel[griddim, blockdim, stream, shared](q', k', v', out', lse, cu_q,
    cu_k, *scalars)`` where ``q' = q.view(views[0])`` (and so on for k, v, out):

    * ``views[i] is None``: the array as is (``(total, heads, head_size)``, bf16 as uint16);
    * ``views[i]`` a NumPy dtype: ``.view(dtype)`` (the last axis rescaled by the item sizes);
    * ``views[i] == "flat"`` (:data:`FLAT`): ``.reshape(size)``, a 1-D view.

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


def _view(x, how):
    if how is None:
        return x
    if isinstance(how, str):
        if how != FLAT:
            raise ValueError(f"unknown Plan view {how!r}")
        return x.reshape(x.size)
    return x.view(np.dtype(how))


def plan_args(plan, q, k, v, out, lse, cu_q, cu_k):
    """The argument tuple of ``plan``'s launch, from Numba device arrays."""
    qv, kv, vv, ov = (_view(x, w) for x, w in zip((q, k, v, out), plan.views))
    return (qv, kv, vv, ov, lse, cu_q, cu_k, *plan.scalars)


def launch_plans(plans, q, k, v, out, lse, cu_q, cu_k, stream=0):
    """Launch ``plans`` in order through Numba's dispatcher (the path the simulator and
    scripts use; the interface has a faster one on a GPU). ``stream``: a Numba stream or a
    raw ``cudaStream_t`` int (0: the default stream)."""
    if isinstance(stream, int) and stream:
        from numba import cuda
        stream = cuda.external_stream(stream)
    for p in plans:
        p.kernel[p.griddim, p.blockdim, stream, p.shared](
            *plan_args(p, q, k, v, out, lse, cu_q, cu_k))


def get(name):
    """The kernel module for ``name``, or None if this build does not have it."""
    path = _MODULES.get(name)
    if path is None:
        return None
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if exc.name == path:
            return None
        raise


def available():
    """Names of the kernels this build has."""
    return [n for n in _MODULES if get(n) is not None]
