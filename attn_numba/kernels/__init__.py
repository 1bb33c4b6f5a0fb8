"""Kernel registry. One module per version; the interface dispatches between them.

Every kernel module defines:

* ``NAME``: its ``kernel=`` name;
* ``supports(problem) -> str | None``: why it cannot run a :class:`~attn_numba.problem.Problem`,
  or ``None`` when it can;
* ``launch(problem, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, stream)``: enqueue the
  computation on ``stream``. ``q``/``out`` are device arrays ``(total_q, H, D)``, ``k``/``v``
  ``(total_k, Hkv, D)``, ``lse`` float32 ``(B, H, S)`` or ``(1, H, total_q)`` (see
  ``Problem.lse_batched``), ``cu_seqlens_*`` int32 ``(B + 1,)``. It must write every element
  of ``out`` and ``lse``.
* ``KERNEL_FUNCS``: the ``cuda.jit`` kernels it launches, with ``ptx_signatures(head_size,
  dtype)`` giving the argument types to compile each for real with ``compile_ptx``.
"""
import importlib

_MODULES = {
    "naive": "attn_numba.kernels.v1_naive",
    "tiled": "attn_numba.kernels.v2_tiled",
    "flash": "attn_numba.kernels.v3_flash",
    "flash_tc": "attn_numba.kernels.v4_tensor_core",
    "flash_wgmma": "attn_numba.kernels.v5_wgmma",  # Hopper only; absent from some builds
}


def get(name):
    """The kernel module for ``name``, or None if this build does not have it."""
    path = _MODULES[name]
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if exc.name == path:
            return None
        raise


def available():
    """Names of the kernels this build has."""
    return [n for n in _MODULES if get(n) is not None]
