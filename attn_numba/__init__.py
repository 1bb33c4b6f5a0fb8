"""attn_numba: sliding-window, GQA, varlen attention in Numba CUDA, forward and backward.

    >>> import numpy as np, attn_numba
    >>> out = attn_numba.mha_fwd(q, k, v, causal=True, window_size=(128, 128))

See :func:`mha_fwd` and :func:`mha_varlen_fwd` for the full specification, and
:func:`mha_bwd` / :func:`mha_varlen_bwd` for the gradients.
"""
from .backward import mha_bwd, mha_varlen_bwd
from .interface import choose_kernel, mha_fwd, mha_varlen_fwd, on_simulator
from .kernels import available as available_kernels
from .problem import normalize_window
from . import warmup  # the module: warmup.warmup(), warmup.count_compiles(), ...

__version__ = "0.1.0"
__all__ = ["mha_fwd", "mha_varlen_fwd", "mha_bwd", "mha_varlen_bwd", "normalize_window", "choose_kernel",
           "available_kernels", "on_simulator", "warmup", "__version__"]
