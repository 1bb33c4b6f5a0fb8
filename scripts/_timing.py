"""Shared by the development GPU scripts: CUDA-event timing of one launch at a time."""
import statistics


def time_launch(torch, fn, reps, warm=2, sleep_cycles=1_000_000):
    """Median seconds of ``fn()`` over ``reps`` launches. Before each, ``torch.cuda._sleep``
    keeps the (legacy default) stream busy ~0.5 ms, so the host's launch cost is hidden and the
    events time the GPU work alone. Returns (median, all times)."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    evs = []
    for _ in range(reps):
        torch.cuda._sleep(sleep_cycles)
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        evs.append((s, e))
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) / 1e3 for s, e in evs]
    return statistics.median(times), times
