"""One call each of flash_wgmma (v5), flash_ws (v6) variants and FlashAttention-4 at the log's
8192-token shape (32/8 heads, D=128, window (128,128), fp16, non-causal unless --causal), for
ncu to profile (scripts/device_run.sh step ``ncu_v6``):

    ncu --clock-control none --section SpeedOfLight ... python3 scripts/ncu_v6.py

Every kernel is launched once (flash_ws: one launch per variant; ``--variants`` picks them).
Inputs come from NumPy through host-to-device copies, so no other kernel runs."""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = (("default", {}),                              # the module's defaults
            ("persistent", dict(persistent=True)),         # one block per SM, always
            ("tiles", dict(persistent=False)),             # one block per work tile
            ("ov", dict(overlap=True)),                    # the overlapped loop
            ("prefetch", dict(prefetch_maps=True)),        # maps prefetched
            ("run58", dict(tma_out=False, prefetch_maps=False)))   # run 58's defaults


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--variants", default=",".join(n for n, _ in VARIANTS),
                    help="flash_ws variants to launch, by name (default: all)")
    a = ap.parse_args()
    chosen = [(n, kw) for n, kw in VARIANTS if n in a.variants.split(",")]
    from numba import cuda
    from attn_numba import kernels
    from attn_numba.kernels import v5_flash_wgmma as v5
    from attn_numba.kernels import v6_flash_ws as v6
    from attn_numba.problem import Problem
    s, causal = a.tokens, a.causal
    p = Problem(batch=1, total_q=s, total_k=s, max_seqlen_q=s, max_seqlen_k=s, num_heads=32,
                num_kv_heads=8, head_size=128, dtype=np.dtype(np.float16),
                softmax_scale=128 ** -0.5, window_left=128, window_right=0 if causal else 128,
                causal=causal, lse_batched=False, on_simulator=False)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((s, n, 128)).astype(np.float16) for n in (32, 8, 8))
    arrays = dict(q=cuda.to_device(q.view(np.uint16)), k=cuda.to_device(k.view(np.uint16)),
                  v=cuda.to_device(v.view(np.uint16)),
                  out=cuda.device_array((s, 32, 128), np.uint16),
                  lse=cuda.device_array((1, 32, s), np.float32),
                  cu_seqlens_q=cuda.to_device(np.array([0, s], np.int32)),
                  cu_seqlens_k=cuda.to_device(np.array([0, s], np.int32)))
    for name, plans, extra in [("flash_wgmma", v5.plan(p), {})] + [
            ("flash_ws_" + n, v6.plan(p, **kw), kernels.scratch_arrays(v6, p, **kw))
            for n, kw in chosen]:
        kernels.launch_plans(plans, dict(arrays, **extra))
        cuda.synchronize()
        print("launched", name, flush=True)
    try:
        import torch
        from flash_attn.cute import flash_attn_func
    except Exception as exc:  # noqa: BLE001
        print("fa4 not importable:", exc)
        return
    tq, tk, tv = (torch.from_numpy(x).cuda().unsqueeze(0) for x in (q, k, v))
    flash_attn_func(tq, tk, tv, causal=causal, window_size=(128, 0 if causal else 128))
    torch.cuda.synchronize()
    print("launched fa4", flush=True)


if __name__ == "__main__":
    main()
