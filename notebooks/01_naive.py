# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01: the naive kernel (v1)
#
# The user's NVBench log times `run_mha_fwd` (1 sequence, 32 query heads over 8 KV heads,
# head size 128, sliding window (128, 128), fp16) on an A30 at 4.5 to 7.7 **seconds** per
# call, flat from 512 to 8192 tokens. Before explaining that (notebook 06), we need a kernel
# that is obviously right: one CUDA thread per (query row, head) that loops over the keys of
# its window. Every later kernel is checked against the same float64 reference.
#
# This notebook runs on a CPU (Numba's CUDA simulator, small sizes) and on a GPU; measured
# times are read from the committed results, each with its `source:` (device, date, file).

# %%
import os, json, glob, math
import numpy as np
import attn_numba
from attn_numba import reference, testing
from attn_numba.problem import windowed_flops, dense_flops, count_pairs
SIM = attn_numba.on_simulator()
print("on the CUDA simulator" if SIM else "on a GPU", "| kernels:", ", ".join(attn_numba.available_kernels()))

# %% [markdown]
# ## The semantics (FlashAttention's)
#
# Query row `i` of a sequence with lengths `(sq, sk)` sees key `j` iff
#
# $$ i + s_k - s_q - \text{left} \le j \le i + s_k - s_q + \text{right}, \qquad 0 \le j < s_k $$
#
# with `-1` meaning unbounded; `causal=True` sets `right = 0` (bottom-right aligned). Query head
# `h` reads KV head `h // (num_heads // num_kv_heads)`. A row that sees no key outputs 0 with
# lse `-inf`. Below: which keys each row sees for a small case (window (2, 1), sq=6, sk=9).

# %%
mask = reference._mask(6, 9, 2, 1, causal=False)
for i, row in enumerate(mask):
    print(f"row {i}: " + "".join("#" if m else "." for m in row))

# %% [markdown]
# ## The work is linear in the sequence length
#
# With a window of 128 left and 128 right, each query sees at most 257 keys, so the exact work is
# `4 * head_size` FLOPs per (query, key, head) pair inside the window: 2·D for the Q·Kᵀ dot
# product and 2·D for P·V. The log's "Est. FLOPS" column uses the dense `2·S²·H·D` instead,
# which grows as S².

# %%
for S in (512, 1024, 2048, 4096, 8192):
    w = windowed_flops([S], [S], 32, 128, 128, 128)
    print(f"S={S:5d}  windowed {w/1e9:7.2f} GFLOP   log's dense estimate {dense_flops(1, S, 32, 128)/1e9:7.1f} GFLOP")

# %% [markdown]
# ## The kernel
#
# `attn_numba/kernels/v1_naive.py`. Grid: (query blocks, heads, sequences); each thread owns one
# query row of one head. It makes two passes over its window: the row maximum of the scaled
# scores, then the exponentials, their sum and the weighted sum of V rows in a float32
# accumulator of `head_size` values (local memory). Every K row is read twice from global
# memory by every thread that needs it, and the threads of a block share nothing: that is what
# the tiled (v2) and flash (v3) kernels fix.

# %%
import inspect
from attn_numba.kernels import v1_naive
print(inspect.getsource(v1_naive.naive_kernel.py_func))

# %% [markdown]
# ## Check it against the float64 reference
#
# Fresh random inputs, outputs poisoned with NaN before the launch, tolerance = 2x the error of a
# low-precision reference (see `attn_numba.testing`).

# %%
rng = np.random.default_rng()
S, H, HKV, D = (40, 4, 1, 16) if SIM else (512, 32, 8, 128)
q, k, v = testing.random_qkv(rng, 1, S, S, H, HKV, D, np.float16)
for causal in (False, True):
    c = testing.check_mha_fwd(q, k, v, "naive", causal=causal, window_size=(8, 8) if SIM else (128, 128))
    print(f"causal={causal}: max error {c.max_err:.2e} (allowed {c.tol:.2e}), lse error {c.lse_max_err:.2e}")


# %% [markdown]
# ## How fast is it on the GPU?
#
# Measured numbers come from the committed benchmark results (written by `attn-numba bench`,
# NVBench cold GPU time; notebook 05 explains the measurement): `results/h200/summary.json` when
# it exists, else `results/h100/summary.json`. The `source:` line names the device, the date and
# the file; nothing here is typed in. On a GPU the cell after the figure also times it live.

# %%
import matplotlib.pyplot as plt
from attn_numba import sources
path, doc = sources.load_summary()
recs = [r for r in doc["records"] if r.get("kernel") == "naive" and r.get("gpu_time_s")
        and r["seq_len"] <= 8192]
fig, ax = plt.subplots(figsize=(6, 3.6))
for causal in (0, 1):
    rr = sorted((r for r in recs if r["causal"] == causal), key=lambda r: r["seq_len"])
    for r in rr:
        print(f"seq_len={r['seq_len']:5d} causal={causal}  {r['gpu_time_s']*1e3:9.3f} ms")
    ax.plot([r["seq_len"] for r in rr], [r["gpu_time_s"] * 1e3 for r in rr], "o-", label=f"causal={causal}")
ax.set(xscale="log", yscale="log", xlabel="seq_len (tokens)", ylabel="ms per call (NVBench cold GPU time)",
       title=f"naive kernel on {doc['device']}")
ax.set_xscale("log", base=2); ax.legend(); ax.grid(True, which="both", alpha=0.3)
sources.show(fig, sources.source_text(doc, path))

# %%
if not SIM:
    from numba import cuda
    from attn_numba.bench.summary import now_iso
    q, k, v = (cuda.to_device(x) for x in testing.random_qkv(rng, 1, 8192, 8192, 32, 8, 128, np.float16))
    attn_numba.mha_fwd(q, k, v, window_size=(128, 128), kernel="naive"); cuda.synchronize()
    start, end = cuda.event(), cuda.event()
    start.record()
    for _ in range(3):
        attn_numba.mha_fwd(q, k, v, window_size=(128, 128), kernel="naive")
    end.record(); end.synchronize()
    name = cuda.get_current_device().name
    name = name.decode() if isinstance(name, bytes) else name
    print(f"naive, 8192 tokens: {cuda.event_elapsed_time(start, end)/3:.2f} ms per call (CUDA events, warm L2)")
    print(f"source: this run, {name}, {now_iso()}")

# %% [markdown]
# ## Why it is slow, and why that is *not* the log's problem
#
# Per (row, head) thread the kernel reads its whole window of K twice and V once: about
# 3·257·128·2 bytes ≈ 197 KB per thread at the log's sizes, with no reuse across threads except
# what the caches catch, and a `head_size`-long accumulator in local memory. That makes it tens
# to hundreds of times slower than a tiled kernel, yet its time still **grows with the sequence
# length**. The log's times do not grow at all: a fixed cost of seconds per call dominates.
# Notebook 06 finds it.
