"""Device functions shared by the two passes of the Hopper backward (:mod:`bwd_wgmma_dkdv`,
:mod:`bwd_wgmma_dq`), built per specialisation on top of the forward's
:func:`attn_numba.kernels.v5_steps.steps` (its cp.async tile loaders and its two wgmma
forms, which are the only two forms the backward needs):

* ``issue_ss(c, sA, sB)``: ``C = A B^T``, A a 64-row and B a ``bn``-row K-major tile
  (the forward's S = Q K^T; here S^T = K Q^T, dP^T = V dO^T, S = Q K^T, dP = dO V^T);
* ``issue_rs(c, a, sB)``: ``C += A B``, A packed 16-bit registers, B a ``bn``-row tile
  read MN-major (the forward's O += P V; here dV += P^T dO, dK += dS^T Q, dQ += dS K);
* ``pack(c, regs)``: the A registers of ``issue_rs`` from a 64 x ``bn`` accumulator
  (:func:`attn_numba.kernels.wgmma_layout.p_regs`);
* ``store(acc, dst, row_a, row_b, n_rows, base, h, t, mult)``: a 64 x D accumulator,
  times ``mult``, as 16-bit pairs into ``dst[base + row, h, :]`` (uint32 view) for the
  thread's two rows below ``n_rows``.
"""
import functools
from collections import namedtuple

import numpy as np
from numba import cuda

from . import ptx_sm90 as px
from . import v5_steps
from . import wgmma_layout as wl

THREADS = 128
_p_regs = cuda.jit(device=True, inline=True, cache=True)(wl.p_regs)

Steps = namedtuple("Steps", "load_rows load_pair issue_ss issue_rs pack store fence_c "
                            "fence_o")


@functools.lru_cache(maxsize=None)
def steps(head_size, bn, kind, heads=1):
    """The device functions for head size ``head_size``, ``bn``-row B tiles (the streamed
    tiles of a pass), ``kind`` ('f16' / 'bf16') and ``heads`` query heads per 64-row tile
    (the resident tile's rows are ``heads`` x ``64 / heads`` positions, as the forward's Q):
    ``load_rows`` is the forward's ``load_q``, ``load_pair`` its ``load_kv``."""
    st = v5_steps.steps(head_size, bn, kind, heads, False, 2, 1)
    A_LEN = 4 * (bn // 16)
    N4 = head_size // 8                # 4-register groups of a 64 x D accumulator
    pack2 = px.pack2(kind)

    @cuda.jit(device=True, inline=True, cache=True)
    def pack(c, regs):
        for kk in range(A_LEN // 4):
            for jj in range(4):
                ri = _p_regs(kk, jj)
                regs[4 * kk + jj] = pack2(c[ri], c[ri + 1])

    @cuda.jit(device=True, inline=True, cache=True)
    def store(acc, dst, row_a, row_b, n_rows, base, h, t, mult):
        if row_a < n_rows:
            for i4 in range(N4):
                dst[base + row_a, h, 4 * i4 + t] = pack2(acc[4 * i4] * mult,
                                                         acc[4 * i4 + 1] * mult)
        if row_b < n_rows:
            for i4 in range(N4):
                dst[base + row_b, h, 4 * i4 + t] = pack2(acc[4 * i4 + 2] * mult,
                                                         acc[4 * i4 + 3] * mult)

    return Steps(st.load_q, st.load_kv, st.issue_qk, st.issue_pv, pack, store,
                 px.fence_acc(bn // 2), px.fence_acc(head_size // 2))


def shared_bytes(head_size, bn, stages):
    """Dynamic shared memory of either pass: two resident 64-row tiles (K and V, or Q and
    dO), ``stages`` pairs of ``bn``-row tiles, and the slack that aligns to 1024 bytes."""
    return 2 * (2 * 64 * head_size) + stages * 2 * (2 * bn * head_size) + wl.ATOM_BYTES


ZERO = np.float32(0.0)
