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
# # 02: the tiled kernel (v2)
#
# v1 (notebook 01) gives every (query row, head) its own thread, which reads its whole window of
# K twice and V once straight from global memory: neighbouring rows see almost the same keys,
# yet nothing is shared. v2 makes a **block of query rows** load each K and V tile into shared
# memory **once**, and all its rows use it.
#
# * grid: (query tiles of 64 rows, query heads, sequences); one thread per query row;
# * the block walks only the keys its rows can see (the union of their windows), `BN` keys at a
#   time, starting at the first visible key; tiles outside the band are never visited;
# * **two-pass softmax**: pass 1 streams the K tiles to get each row's max `m` and sum
#   `l = Σ exp(s - m)`; pass 2 streams K and V again and accumulates `exp(s - m) / l · V`.
#
# The notebook runs on a CPU (Numba's CUDA simulator at small sizes) in well under a minute, and
# reads the measured timings from the committed results; each `source:` line names the device,
# the date and the file.

# %%
import os, json, math, inspect
import numpy as np
import attn_numba
from attn_numba import reference, testing
from attn_numba.problem import windowed_flops, count_pairs
from attn_numba import sources
import matplotlib.pyplot as plt
SIM = attn_numba.on_simulator()
RESULTS = str(sources.results_dir())
print("on the CUDA simulator" if SIM else "on a GPU", "| kernels:", ", ".join(attn_numba.available_kernels()))


# %% [markdown]
# ## Memory traffic: what sharing buys, and what the second pass costs
#
# A model of the bytes requested from global memory (L2 or DRAM) by the K/V loads, float16, at
# the log's configuration (32 query heads, 8 KV heads, head size 128, window (128, 128)):
#
# * v1: every (row, head) reads K twice and V once over its window: `3 · pairs · D · 2` bytes;
# * v2: every (64-row tile, head) block reads the keys of its band (at most 64 + 256 = 320 keys)
#   twice for K (once per pass) and once for V: `3 · band · D · 2` bytes per block.
#
# So v2 divides the K/V traffic by roughly 64 · 257 / 320 ≈ 51, and the second pass costs one
# more read of K (K is read twice, V once: 3 tile loads where a one-pass kernel needs 2).
# These are model numbers, not measurements.

# %%
def kv_bytes_v1(S, H, D, left, right, itemsize=2):
    return 3 * count_pairs([S], [S], left, right) * H * D * itemsize

def kv_bytes_v2(S, H, D, left, right, rows=64, itemsize=2):
    total = 0
    for q0 in range(0, S, rows):
        q1 = min(S, q0 + rows) - 1
        lo = max(0, q0 - left) if left >= 0 else 0
        hi = min(S - 1, q1 + right) if right >= 0 else S - 1
        total += max(0, hi - lo + 1)
    return 3 * total * H * D * itemsize

for S in (512, 2048, 8192):
    for causal in (0, 1):
        right = 0 if causal else 128
        b1, b2 = kv_bytes_v1(S, 32, 128, 128, right), kv_bytes_v2(S, 32, 128, 128, right)
        print(f"S={S:5d} causal={causal}: v1 {b1/1e9:7.2f} GB   v2 {b2/1e9:6.3f} GB   ratio {b1/b2:5.1f}")


# %% [markdown]
# ## The two-pass tiled softmax in NumPy
#
# One head, one sequence. For each query tile, pass 1 walks the key tiles of the band and keeps
# the running row max `m` and the sum `l` (rescaling `l` when `m` grows); pass 2 walks the same
# tiles again and accumulates `p V` with the final `m` and `l`. Checked against the float64
# reference.

# %%
def two_pass_tiled(q, k, v, scale, left, right, BQ=8, BN=4):
    sq, D = q.shape
    sk = k.shape[0]
    out = np.zeros((sq, D)); lse = np.full(sq, -np.inf)
    for q0 in range(0, sq, BQ):
        rows = np.arange(q0, min(sq, q0 + BQ))
        vis = reference._mask(sq, sk, left, right, False, rows)      # (rows, sk)
        cols = np.flatnonzero(vis.any(axis=0))
        if cols.size == 0:
            continue
        lo, hi = cols[0], cols[-1]
        m = np.full(len(rows), -np.inf); l = np.zeros(len(rows))
        for k0 in range(lo, hi + 1, BN):                               # pass 1
            ks = np.arange(k0, min(hi + 1, k0 + BN))
            s = np.where(vis[:, ks], q[rows] @ k[ks].T * scale, -np.inf)
            m_new = np.maximum(m, s.max(axis=1))
            seen = np.isfinite(m_new)
            l = np.where(seen, l * np.exp(np.where(seen, m, 0) - np.where(seen, m_new, 0)) +
                         np.exp(s - np.where(seen, m_new, 0)[:, None]).sum(axis=1), 0)
            m = m_new
        acc = np.zeros((len(rows), D))
        for k0 in range(lo, hi + 1, BN):                               # pass 2: K again, and V
            ks = np.arange(k0, min(hi + 1, k0 + BN))
            s = np.where(vis[:, ks], q[rows] @ k[ks].T * scale, -np.inf)
            p = np.exp(s - np.where(np.isfinite(m), m, 0)[:, None])
            acc += p @ v[ks]
        ok = l > 0
        out[rows] = np.where(ok[:, None], acc / np.where(ok, l, 1)[:, None], 0)
        lse[rows] = np.where(ok, m + np.log(np.where(ok, l, 1)), -np.inf)
    return out, lse

rng = np.random.default_rng()
q, k, v = (rng.standard_normal((n, 16)) for n in (37, 45, 45))
for window in ((-1, -1), (5, 3), (4, 0), (0, 0)):
    o, l = two_pass_tiled(q, k, v, 0.25, *window)
    ref, ref_lse = reference.mha_fwd_ref(q[None, :, None], k[None, :, None], v[None, :, None],
                                         softmax_scale=0.25, window_size=window)
    print(window, "max |out - ref| =", f"{np.abs(o - ref[0, :, 0]).max():.1e}",
          " max |lse - ref| =", f"{np.nanmax(np.abs(np.where(np.isfinite(l), l - ref_lse[0, 0], 0))):.1e}")

# %% [markdown]
# ## The kernel
#
# `attn_numba/kernels/v2_tiled.py`: an lru_cached factory over the (padded) head size builds a
# kernel whose shared K/V tiles and local accumulator are sized at compile time. The scores of a
# key tile live in registers (`s[BN]`, a fully unrolled loop); the `head_size` accumulator does
# not fit and lives in local memory (cached in L1).

# %%
from attn_numba.kernels import v2_tiled
print(v2_tiled.__doc__)
print(inspect.getsource(v2_tiled.build))

# %% [markdown]
# ## Check it on the simulator
#
# Fresh random inputs, outputs poisoned with NaN, the tolerance rule of `attn_numba.testing`.
# Sizes are chosen small on the simulator (one Python thread per CUDA thread).

# %%
cases = [  # (batch, sq, sk, H, Hkv, D, dtype, window, causal)
    (1, 21, 21, 4, 1, 16, np.float16, (4, 4), False),   # GQA 4, window
    (1, 9, 30, 2, 2, 16, np.float32, (-1, -1), True),   # sq < sk, causal
    (1, 30, 9, 2, 1, 24, np.float16, (3, 0), False),    # sq > sk: rows with no key; odd head size
] if SIM else [
    (1, 2048, 2048, 32, 8, 128, np.float16, (128, 128), False),
    (1, 2048, 2048, 32, 8, 128, np.float16, (128, 128), True),
    (2, 97, 1025, 8, 1, 128, np.float16, (-1, -1), False),
]
for b, sq, sk, h, hkv, d, dt, win, causal in cases:
    q, k, v = testing.random_qkv(rng, b, sq, sk, h, hkv, d, dt)
    c = testing.check_mha_fwd(q, k, v, "tiled", causal=causal, window_size=win)
    print(f"sq={sq} sk={sk} H={h}/{hkv} D={d} {np.dtype(dt).name} window={win} causal={causal}: "
          f"max err {c.max_err:.1e} <= {c.tol:.1e}")
q, k, v, cu_q, cu_k = testing.random_varlen(rng, [5, 0, 9], [7, 3, 0], 4, 2, 16)
c = testing.check_mha_varlen_fwd(q, k, v, cu_q, cu_k, "tiled", causal=True)
print(f"varlen, sequences of 5/7, 0/3 and 9/0 rows: max err {c.max_err:.1e} <= {c.tol:.1e}, "
      f"lse err {c.lse_max_err:.1e}")


# %% [markdown]
# ## Measured in the NVBench grid
#
# `attn-numba bench` (NVBench cold GPU time, notebook 05) on the newest committed GPU:
# `results/h200/summary.json` when it exists, else `results/h100/summary.json`.

# %%
path, doc = sources.load_summary()
SRC = sources.source_text(doc, path)
grid = {(r["kernel"], r["seq_len"], r["causal"]): r for r in doc["records"] if r.get("gpu_time_s")}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
for c, ax in zip((0, 1), axes):
    for kname in ("naive", "tiled", "flash"):
        pts = sorted((s_, r["gpu_time_s"] * 1e3) for (k_, s_, c_), r in grid.items()
                     if k_ == kname and c_ == c and s_ <= 8192)
        if pts:
            ax.plot(*zip(*pts), "o-", label=kname)
    ax.set_xscale("log", base=2); ax.set_yscale("log"); ax.grid(True, which="both", alpha=0.3)
    ax.set(xlabel="seq_len (tokens)", title=f"causal={c}")
axes[0].set_ylabel(f"ms per call, {doc['device']}"); axes[0].legend()
sources.show(fig, SRC)
print(f"{'seq_len':>7} {'causal':>6} {'naive':>11} {'tiled':>10} {'naive/tiled':>11}")
for c in (0, 1):
    for S_ in (512, 1024, 2048, 4096, 8192):
        n, t = grid.get(("naive", S_, c)), grid.get(("tiled", S_, c))
        if n and t:
            print(f"{S_:>7} {c:>6} {n['gpu_time_s']*1e3:9.3f}ms {t['gpu_time_s']*1e3:8.3f}ms {n['gpu_time_s']/t['gpu_time_s']:11.1f}")

# %% [markdown]
# ## The development run on the H100 (history)
#
# From `results/h100/v2_v3_dev.json`, written in round 1 by a development script since deleted
# (`notes/scripts_moved.md`): kernel launches on resident device arrays, CUDA events, warm-up,
# median. FLOP rates use the exact windowed FLOPs. Today's kernels are the NVBench grid above.

# %%
def load_json(*parts):
    """A committed results file; prints its source (device, date, file)."""
    return sources.load_json(os.path.join(RESULTS, *parts))

run = load_json("h100", "v2_v3_dev.json")
if run:
    print("versions:", sources.versions_text(run["versions"]))
    print(f"measured code: v2 at commit {run['code']['v2_tiled_py_at']}, v3 at "
          f"{run['code']['v3_flash_py_at']} (round 1); today's kernels are timed above")
    ceiling = run["fp32_matmul_ceiling"]["tflops"]
    print(f"fp32 matmul ceiling, TF32 off, same run: {ceiling:.1f} TFLOP/s")
    times = {(r["kernel"], r["seq_len"], r["causal"]): r for r in run["timings"] if "time_s" in r}
    print(f"\n{'seq_len':>7} {'causal':>6} {'v1 naive':>12} {'v2 tiled':>12} {'v2 TFLOP/s':>10} {'v1/v2':>6}")
    for S in (512, 1024, 2048, 4096, 8192):
        for c in (0, 1):
            n, t = times.get(("naive", S, c)), times.get(("tiled", S, c))
            if n and t:
                print(f"{S:>7} {c:>6} {n['time_s']*1e3:10.3f}ms {t['time_s']*1e3:10.3f}ms "
                      f"{t['tflops']:10.2f} {n['time_s']/t['time_s']:6.1f}")

# %% [markdown]
# ## Why v2 stays far from the ceiling
#
# The measured registers / local memory / shared memory of v2 (Numba's dispatcher, same run), and
# the SASS mix of its inner loops as ptxas/nvdisasm report them on the CPU
# (`scripts/ptxas_v2_v3.py` → `results/cpu/ptxas_v2_v3.json`):

# %%
if run:
    for r in run["resources"]:
        if r["kernel"] in ("naive", "tiled"):
            print(f"{r['func']}: {r['regs_per_thread'][0]} registers, "
                  f"{r['local_bytes_per_thread'][0]} B local memory per thread, "
                  f"{r['shared_bytes_per_block'][0]} B shared memory per block")
px = load_json("cpu", "ptxas_v2_v3.json")
if px:
    for r in px["rows"]:
        if r["kernel"].startswith("tiled"):
            loops = "; ".join(f"{l['instructions']}/{l['ffma']}/{l['lds']}" for l in r.get("inner_loops", []))
            print(f"{r['kernel']}: {r['regs_per_thread']} registers; inner loops, instructions/FFMA/LDS: {loops}")

# %% [markdown]
# * One thread per row computes its scores as `s[j] += q[d] · K[j, d]`: **one shared-memory load
#   per FMA** (the loads are broadcasts, but the LSU issue rate, not the FMA pipe, sets the pace),
#   and the P·V loop is the same, with the accumulator round-tripping through local memory once
#   per head-dim column and key tile.
# * Only 64 threads (2 warps) per block, the registers printed above, and a `head_size`-long local
#   accumulator per thread.
# * K is streamed twice.
#
# So v2 is an order of magnitude faster than v1 at the log's sizes (table above) but reaches
# only a few percent of the FP32 ceiling. v3 (notebook 03) fixes all three: one pass, and register tiles in which every shared
# load feeds many FMAs.
