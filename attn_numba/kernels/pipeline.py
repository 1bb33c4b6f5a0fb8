"""Pipeline bookkeeping of a multi-stage K/V ring: which buffer tile ``j`` uses, which
phase (parity) its barrier is in, and how many copy groups may stay in flight.

A ring of ``stages`` buffers holds tiles ``j, j+1, ...`` in buffer ``j % stages``; the
buffer is on its ``j // stages``-th use, so an mbarrier guarding it completes phases
``0, 1, 0, ...``: a consumer waits for parity ``(j // stages) & 1``. With cp.async every
tile is one commit group (empty groups keep the count uniform), so waiting for tile ``j``
while ``ahead`` later tiles are already issued is ``cp.async.wait_group ahead``.
"""
from numba import cuda, uint32

from . import ptx_sm90 as px  # cp.async names, with simulator models


def ring(stages):
    """Device functions ``(stage(j), parity(j))`` of a ring of ``stages`` buffers: the buffer
    that tile ``j >= 0`` uses and the barrier parity a consumer of tile ``j`` waits for. An
    unsigned ``j`` makes ``j % stages`` a mask for a power-of-two ring (a signed one keeps
    Python's floor semantics, which costs a fix-up unless the compiler proves ``j >= 0``)."""
    S = stages

    @cuda.jit(device=True, inline=True, cache=True)
    def stage(j):
        return j % S

    @cuda.jit(device=True, inline=True, cache=True)
    def parity(j):
        return uint32((j // S) & 1)

    return stage, parity


def wait_for_tile(ahead):
    """The intrinsic that waits until tile ``j`` landed while the ``ahead`` tiles issued
    after it may still be in flight (``cp.async.wait_group ahead``)."""
    return px.cp_async_wait(ahead)
