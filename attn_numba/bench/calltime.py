"""``call_time_s``: what a user's loop sees per call of the *public* function.

The call (``attn_numba.mha_fwd`` on torch tensors, or a PyTorch peer) runs back to back on
torch's current stream with a CUDA event recorded after each call. The time between two
consecutive events is one call as the stream sees it: the kernel's GPU time when the host
keeps ahead, the host's per-call work (validation, allocation, launch, and the event record
itself) when it does not. ``call_time_s`` is the median of those intervals over ``n >= 100``
calls, after a few warm-up calls. NVBench's cold time, by contrast, hides the host work
behind its blocking kernel, and its batch time counts only GPU time between launches.
"""
from __future__ import annotations

import statistics
import time

#: at least this many timed calls (the issue's rule), more for fast calls
MIN_CALLS = 100
#: stop adding calls beyond MIN_CALLS once this much wall time is spent
BUDGET_S = 2.0


def call_intervals(fn, n, warmup=5):
    """Per-call intervals (seconds) of ``n`` back-to-back ``fn()`` calls, from CUDA events."""
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    events[0].record()
    for i in range(n):
        fn()
        events[i + 1].record()
    torch.cuda.synchronize()
    return [events[i].elapsed_time(events[i + 1]) * 1e-3 for i in range(n)]


def call_time_s(fn, min_calls=MIN_CALLS, budget_s=BUDGET_S):
    """Median per-call time of ``fn`` (see the module docstring): ``min_calls`` calls, or as
    many more (up to 10x) as fit in ``budget_s`` judging by a first timed call."""
    import torch
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    one = max(time.perf_counter() - t0, 1e-6)
    n = int(min(10 * min_calls, max(min_calls, budget_s / one)))
    return statistics.median(call_intervals(fn, n))
