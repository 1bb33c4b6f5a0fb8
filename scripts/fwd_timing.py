"""GPU time of the forward kernels at the log's 10 configurations through the public call,
for a before/after comparison of two trees in one device run (issue 19's rule: no kernel
more than 2% slower). Uses only ``attn_numba.mha_fwd``, so it runs against any tree that
``PYTHONPATH`` puts first:

    PYTHONPATH=/tmp/site:$PWD/.baseline python3 scripts/fwd_timing.py --tag base
    PYTHONPATH=/tmp/site:$PWD python3 scripts/fwd_timing.py --tag new

Each state: torch inputs (1 x S tokens, 32 / 8 heads, D = 128, window (128, 128), fp16),
``out=``/``lse_out=`` buffers made once, triton's ``do_bench_cudagraph`` median (ms).
Writes ``$OUT/fwd_timing_<tag>.json`` and prints one line per state.
"""
import argparse
import json
import os
import sys
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", required=True)
    ap.add_argument("--kernels", default="flash_tc,flash_wgmma")
    args = ap.parse_args()
    import torch
    from triton.testing import do_bench_cudagraph

    import attn_numba
    print(f"attn_numba from {Path(attn_numba.__file__).parent}", flush=True)
    rows = []
    for causal in (0, 1):
        for s in (512, 1024, 2048, 4096, 8192):
            g = torch.Generator(device="cuda").manual_seed(s + causal)
            q = torch.randn(1, s, 32, 128, device="cuda", dtype=torch.float16, generator=g)
            k, v = (torch.randn(1, s, 8, 128, device="cuda", dtype=torch.float16, generator=g)
                    for _ in range(2))
            out, lse = torch.empty_like(q), torch.empty(1, 32, s, device="cuda")
            row = {"seq_len": s, "causal": causal}
            for kernel in args.kernels.split(","):
                def call():
                    attn_numba.mha_fwd(q, k, v, window_size=(128, 128), causal=bool(causal),
                                       kernel=kernel, out=out, lse_out=lse)
                try:
                    call()
                    torch.cuda.synchronize()
                    row[kernel] = do_bench_cudagraph(call, rep=100, return_mode="median")
                except Exception as exc:  # noqa: BLE001 - record, go on
                    row[kernel] = None
                    row[kernel + "_error"] = f"{type(exc).__name__}: {exc}"[:200]
            rows.append(row)
            print(json.dumps(row), flush=True)
    out_dir = Path(os.environ.get("OUT", "."))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"fwd_timing_{args.tag}.json").write_text(json.dumps(
        {"tag": args.tag, "device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
