"""Which plans a call launches when its scratch may already hold what they need.

A module with scratch may give a second plan (``reuse_plan``, :mod:`attn_numba.kernels`)
that takes what its ``plan`` last wrote into the same scratch for the same q, k and v as
already there: flash_ws's blocks then acquire the tensor maps in their slots instead of
writing them (the upper bound in graph replay on the H200, run 64: 0.1-0.3 us less per
call at 512 tokens, 0.7-0.8 us at 1024).

The call path reuses one scratch per (device, stream) (``callpath._scratch_entry``), and
keeps with it a :class:`Record`: the tag (spec serial, q, k, v pointers) of the last plan
launch that wrote it. A call takes the reuse plan only when its tag equals the record's:
stream order then puts that writing launch before this one, and maps depend only on the
problem and the pointers. Every other launch on the buffer writes it and leaves its own
tag, or none (a module without a reuse plan). A stream being captured into a CUDA graph
poisons the record for good: its launches run at every replay, after any later eager call,
so no tag could say what the buffer holds. torch callers never reuse a buffer while their
stream is captured (they get a new one per call), so only raw-stream callers ask the
driver. One lock keeps a call's choice, launch and record together across threads.

Off by default, until the GPU suite and the sanitizers have run it on the H200 (the reuse
kernel was, in run 64; this call path not yet): ``ATTN_NUMBA_SCRATCH_REUSE=1`` in the
environment turns it on. Off, specs make no reuse plan and every call writes its maps.
"""
from __future__ import annotations

import os
import threading

#: reuse plans made and taken at all (``ATTN_NUMBA_SCRATCH_REUSE=1``; read at import)
ENABLED = os.environ.get("ATTN_NUMBA_SCRATCH_REUSE", "0") == "1"

#: held while a call chooses its plans, launches them and records what it wrote
LOCK = threading.Lock()


class Record:
    """What a reused scratch buffer holds: ``tag`` of the last launch that wrote it (None:
    unknown) and ``poisoned`` (a graph capture launched into it)."""

    __slots__ = ("tag", "poisoned")

    def __init__(self):
        self.tag = None
        self.poisoned = False


_DRIVER = []


def stream_capturing(handle):
    """Whether the raw stream ``handle`` is being captured (the driver's
    ``cuStreamIsCapturing``); True when that cannot be asked (the safe answer)."""
    from .arrays import on_simulator
    if on_simulator():
        return False
    if not _DRIVER:
        try:
            from cuda.bindings import driver as drv
        except ImportError:
            return True
        _DRIVER.append(drv)
    drv = _DRIVER[0]
    try:
        err, status = drv.cuStreamIsCapturing(drv.CUstream(int(handle)))
    except Exception:  # noqa: BLE001 (an old binding: say capturing)
        return True
    return (err != drv.CUresult.CUDA_SUCCESS or
            status != drv.CUstreamCaptureStatus.CU_STREAM_CAPTURE_STATUS_NONE)


def choose(spec, rec, ptrs, asks_driver, handle):
    """(reuse, tag) for a call of ``spec`` (``serial``, ``ready_plans``) whose scratch
    buffer has :class:`Record` ``rec``: ``reuse`` when the record says the buffer holds
    what ``spec``'s reuse plan needs for these q, k, v pointers (``ptrs[:3]``); ``tag``
    what to record once the launch is enqueued (None: nothing known). ``asks_driver``: the
    stream's capture state is not known to the caller (raw streams), so the driver is
    asked; a capture poisons ``rec``."""
    if not ENABLED or rec.poisoned or spec.ready_plans is None or ptrs[0] is None:
        return False, None   # (no pointers: the simulator's arrays)
    if asks_driver and stream_capturing(handle):
        rec.poisoned = True
        return False, None
    tag = (spec.serial, ptrs[0], ptrs[1], ptrs[2])
    return rec.tag == tag, tag
