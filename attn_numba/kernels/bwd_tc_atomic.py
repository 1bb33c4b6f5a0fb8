"""The two small launches of the tensor-core backward's atomic-dQ variant
(``bwd_flash_tc.plan(problem, deterministic=False)``, FlashAttention-2's default):

* ``bwd_tc_delta_zero_kernel``: the preprocess ``delta = rowsum(dO * O)`` of
  :func:`bwd_tc_dq.build_delta`, one warp per (row, head), which also zeroes that row's
  ``dq_accum[row, head, :]`` (float32 scratch, uninitialised when allocated);
* the dK/dV pass then adds ``dS K`` into ``dq_accum`` with ``red.global.add.f32``
  (:func:`bwd_tc_dkdv.build_dkdv` with ``atomic=True``), which replaces the dQ pass;
* ``bwd_tc_dq_convert_kernel``: ``dq = dq_accum * scale`` rounded to fp16 / bf16 pairs, one
  thread per pair.

The sum order of the fp32 adds depends on the order in which blocks reach L2, so two runs
may differ in dq's last bits: not deterministic (dk and dv still are).
"""
import functools

from numba import config as numba_config
from numba import cuda

from .bwd_tc_dq import DELTA_WARPS, _dot2
from .bwd_tc_device import ZERO
from .v4_device import _pack

#: threads per block of the conversion
CONVERT_THREADS = 256


@functools.lru_cache(maxsize=None)
def build_delta_zero(head_size, bf16):
    """``delta = rowsum(dO * O)`` and ``dq_accum = 0`` for ``head_size``, fp16 or ``bf16``."""
    D = head_size
    DW = head_size // 2
    BF16 = bool(bf16)
    NT = 32 * DELTA_WARPS
    jit_kw = dict(cache=True)
    if not numba_config.ENABLE_CUDASIM:
        jit_kw["launch_bounds"] = (NT,)

    @cuda.jit(**jit_kw)
    def bwd_tc_delta_zero_kernel(dout, out, delta, dq_accum):
        """dout, out: uint32 (total_q, H, D/2); delta float32 (H, total_q); dq_accum float32
        (total_q, H, D)."""
        lane = cuda.threadIdx.x & 31
        item = cuda.blockIdx.x * DELTA_WARPS + (cuda.threadIdx.x >> 5)
        nh = out.shape[1]
        if item >= out.shape[0] * nh:
            return
        row = item // nh
        h = item - row * nh
        acc = ZERO
        for w in range(lane, DW, 32):
            acc += _dot2(BF16, dout[row, h, w], out[row, h, w])
        for c in range(lane, D, 32):
            dq_accum[row, h, c] = ZERO
        for sh in (16, 8, 4, 2, 1):
            acc += cuda.shfl_xor_sync(0xFFFFFFFF, acc, sh)
        if lane == 0:
            delta[h, row] = acc

    return bwd_tc_delta_zero_kernel


@functools.lru_cache(maxsize=None)
def build_convert(head_size, bf16):
    """``dq = dq_accum * scale`` as 16-bit pairs, for ``head_size``, fp16 or ``bf16``."""
    DW = head_size // 2
    BF16 = bool(bf16)
    jit_kw = dict(cache=True)
    if not numba_config.ENABLE_CUDASIM:
        jit_kw["launch_bounds"] = (CONVERT_THREADS,)

    @cuda.jit(**jit_kw)
    def bwd_tc_dq_convert_kernel(dq_accum, dq, scale):
        """dq_accum float32 (total_q, H, D); dq uint32 (total_q, H, D/2)."""
        i = cuda.blockIdx.x * CONVERT_THREADS + cuda.threadIdx.x
        nh = dq.shape[1]
        if i >= dq.shape[0] * nh * DW:
            return
        w = i % DW
        rh = i // DW
        h = rh % nh
        row = rh // nh
        dq[row, h, w] = _pack(BF16, dq_accum[row, h, 2 * w] * scale,
                              dq_accum[row, h, 2 * w + 1] * scale)

    return bwd_tc_dq_convert_kernel
