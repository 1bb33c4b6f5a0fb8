"""Device functions and constants shared by every kernel."""
import math

import numpy as np
from numba import cuda, types

NEG_INF = np.float32(-np.inf)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_LN2 = np.float32(math.log(2.0))


def supports_cuda_core(problem, max_head_size):
    """``supports`` of the CUDA-core kernels (v1-v3): float16 or float32 inputs and a head
    size of at most ``max_head_size``. Returns None, or why not."""
    if problem.head_size > max_head_size:
        return f"head_size {problem.head_size} > {max_head_size}"
    if np.dtype(problem.dtype) not in (np.dtype(np.float16), np.dtype(np.float32)):
        return f"dtype {problem.dtype} is not float16/float32"
    return None


def supports_mma_sync(problem, what, dtype_names, max_head_size):
    """``supports`` of the mma.sync kernels (flash_tc, forward and backward): not on the
    simulator (inline PTX), float16 or bfloat16 (``dtype_names``), a head size that is a
    multiple of 8 up to ``max_head_size``. ``what`` names the kernel in the reason."""
    if problem.on_simulator:
        return "the CUDA simulator cannot run inline PTX (mma.sync, ldmatrix, cp.async)"
    name = np.dtype(problem.dtype).name
    if name not in dtype_names:
        return f"{what} takes float16 or bfloat16, got {name}"
    if problem.head_size % 8 or problem.head_size > max_head_size:
        return f"head_size must be a multiple of 8 up to {max_head_size}, got {problem.head_size}"
    return None


def supports_hopper(problem, what, head_sizes, features):
    """``supports`` of the sm_90 kernels (flash_wgmma, flash_ws): not on the simulator (inline
    PTX: ``features`` names what), float16 or bfloat16, a head size in ``head_sizes``, and a
    Hopper device. ``what`` names the kernel in the reason."""
    if problem.on_simulator:
        return f"the CUDA simulator cannot run inline PTX ({features})"
    if np.dtype(problem.dtype).name not in ("float16", "bfloat16"):
        return f"{what} is fp16/bf16 only, got {np.dtype(problem.dtype)}"
    if problem.head_size not in head_sizes:
        return f"head_size {problem.head_size} is not one {what} takes {head_sizes}"
    cc = cuda.get_current_device().compute_capability
    if tuple(cc) != (9, 0):
        return f"{what} needs sm_90 (Hopper: {features}), this device is sm_{cc[0]}{cc[1]}"
    return None


@cuda.jit(device=True, inline=True, cache=True)
def key_range(i, seqlen_q, seqlen_k, left, right):
    """Inclusive key range (lo, hi) seen by query row i; empty when hi < lo.

    Row i sees key j iff i + sk - sq - left <= j <= i + sk - sq + right (-1 = unbounded),
    clipped to [0, sk - 1]. Device twin of ``attn_numba.problem.key_range_host``.
    """
    shift = i + seqlen_k - seqlen_q
    lo = 0
    if left >= 0:
        lo = max(0, shift - left)
    hi = seqlen_k - 1
    if right >= 0:
        hi = min(seqlen_k - 1, shift + right)
    return lo, hi


@cuda.jit(device=True, inline=True, cache=True)
def seq_span(cu_seqlens, b):
    """(start row, length) of sequence ``b`` from a ``cu_seqlens`` array."""
    start = cu_seqlens[b]
    return start, cu_seqlens[b + 1] - start


@cuda.jit(device=True, inline=True, cache=True)
def store_lse(lse, lse_batched, b, h, q0, row, value):
    """Write row ``row`` of sequence ``b``'s lse for head ``h``: ``lse[b, h, row]`` for a
    batched call, ``lse[0, h, q0 + row]`` (varlen layout, ``q0`` the sequence's first row)
    otherwise (see ``Problem.lse_batched``)."""
    if lse_batched:
        lse[b, h, row] = value
    else:
        lse[0, h, q0 + row] = value


@cuda.jit(device=True, inline=True, cache=True)
def finish_row(total, m):
    """``(1 / total, lse)`` of a softmax row kept in the exp2 domain (running max ``m``, sum
    ``total`` of ``exp2(s - m)``); ``(0, -inf)`` for a row that saw no key, so that its
    output is 0 and never NaN."""
    inv = _ZERO
    lse = NEG_INF
    if total > _ZERO:
        inv = _ONE / total
        lse = m * _LN2 + math.log(total)
    return inv, lse


def array_type(dtype, ndim, readonly=False):
    """Numba type of a C-contiguous device array, for compile_ptx signatures."""
    from numba import from_dtype
    return types.Array(from_dtype(np.dtype(dtype)), ndim, "C", readonly=readonly)
