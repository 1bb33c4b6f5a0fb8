"""flash_ws's consumer turns at the tensor cores: FlashAttention-3's warp-scheduler barriers,
two named barriers on which the two consumer warpgroups take turns issuing wgmma (the wgmma a
warpgroup issues between ``sched_sync`` and ``sched_arrive`` run while the other one does its
softmax). The protocol is checked by the named-barrier model of ``tests/test_v6_layout.py``."""
from numba import cuda, uint32

from . import ptx_tma as pt
from . import v6_layout as lay

#: the named barriers of the consumers' tensor-core turns (id 0 is __syncthreads'), and the
#: threads that complete one: both consumer warpgroups
SCHED_BAR = 1
SCHED_THREADS = 128 * lay.CONSUMERS


def scheduler(pingpong):
    """(sched_init, sched_sync, sched_arrive) of consumer warpgroup ``grp`` (0 or 1).

    With ``pingpong``: named barrier ``SCHED_BAR + g`` belongs to consumer ``g``; it
    completes when consumer ``g``'s 128 threads sync on it and the other consumer's 128
    arrive (``SCHED_THREADS`` = 256). ``sched_init`` (consumer 0 arrives on its own barrier)
    lets consumer 0 go first. Each sync of consumer ``g`` is matched by the init or by the
    other consumer's previous arrive, so the two strictly alternate, and both run the same
    number of syncs and arrives per block (the same work tiles and key tiles): no wait is
    left unmatched.
    At most one arrive stays pending when the block exits. Without ``pingpong``: no-ops."""
    if pingpong:
        @cuda.jit(device=True, inline=True, cache=True)
        def sched_init(grp):
            if grp == 0:
                pt.bar_arrive(uint32(SCHED_BAR), uint32(SCHED_THREADS))

        @cuda.jit(device=True, inline=True, cache=True)
        def sched_sync(grp):
            pt.bar_sync(uint32(SCHED_BAR + grp), uint32(SCHED_THREADS))

        @cuda.jit(device=True, inline=True, cache=True)
        def sched_arrive(grp):
            pt.bar_arrive(uint32(SCHED_BAR + 1 - grp), uint32(SCHED_THREADS))
    else:
        @cuda.jit(device=True, inline=True, cache=True)
        def sched_init(grp):
            pass

        sched_sync = sched_arrive = sched_init
    return sched_init, sched_sync, sched_arrive
