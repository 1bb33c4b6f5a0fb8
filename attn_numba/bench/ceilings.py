"""Device ceilings, measured with PyTorch in the same run as the benchmark.

* ``copy_gbps``: device-to-device copy of a 1 GiB buffer, counting bytes read plus bytes
  written (the convention of NVBench's GlobalMem BW);
* ``fp16_matmul_tflops``: an 8192^3 fp16 matmul (tensor cores, fp32 accumulate);
* ``fp32_matmul_tflops_no_tf32``: a 4096^3 fp32 matmul with TF32 disabled (CUDA cores), the
  relevant ceiling for kernels that compute on CUDA cores in fp32.

Each is the best of a few CUDA-event-timed repeats after a warm-up. These are achieved rates
of vendor libraries on this device, not datasheet peaks.
"""
from __future__ import annotations


def _best_time(torch, fn, reps):
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best


def measure(copy_bytes=1 << 30, fp16_n=8192, fp32_n=4096, reps=5):
    """Measure the ceilings; returns a dict (with a ``"method"`` description), or a dict with
    an ``"error"`` when torch or the GPU is missing."""
    try:
        import torch
    except ImportError:
        return {"error": "torch is not installed; ceilings not measured"}
    if not torch.cuda.is_available():
        return {"error": "torch sees no CUDA device; ceilings not measured"}
    res = {}
    a = torch.empty(copy_bytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t = _best_time(torch, lambda: b.copy_(a), reps)
    res["copy_gbps"] = 2 * copy_bytes / t / 1e9
    del a, b

    x = torch.randn(fp16_n, fp16_n, device="cuda", dtype=torch.float16)
    y = torch.randn(fp16_n, fp16_n, device="cuda", dtype=torch.float16)
    t = _best_time(torch, lambda: x @ y, reps)
    res["fp16_matmul_tflops"] = 2 * fp16_n**3 / t / 1e12
    del x, y

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        x = torch.randn(fp32_n, fp32_n, device="cuda", dtype=torch.float32)
        y = torch.randn(fp32_n, fp32_n, device="cuda", dtype=torch.float32)
        t = _best_time(torch, lambda: x @ y, reps)
        res["fp32_matmul_tflops_no_tf32"] = 2 * fp32_n**3 / t / 1e12
        del x, y
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    torch.cuda.empty_cache()
    res["method"] = (f"torch {torch.__version__}, best of {reps} CUDA-event-timed repeats: "
                     f"copy of {copy_bytes / 2**30:g} GiB (read+write bytes), "
                     f"{fp16_n}^3 fp16 matmul, {fp32_n}^3 fp32 matmul with TF32 off")
    return res
