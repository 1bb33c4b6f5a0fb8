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
# # 07: Hopper (v5, `flash_wgmma`): warpgroup MMA from Numba
#
# v4 issues `mma.sync` per warp (16 x 8 x 16 per instruction, operands in registers). Hopper
# adds **warpgroup MMA**: `wgmma.mma_async.m64nNk16` is issued by 4 warps together (128
# threads), computes a 64 x N x 16 product per instruction (N up to 256), reads its operands
# **straight from shared memory** through 64-bit *matrix descriptors* (A may also come from
# registers) and runs **asynchronously**: issue, `commit_group`, do other work, `wait_group`.
#
# Numba has no such intrinsic, but `numba.core.extending.intrinsic` + `llvmlite.ir.InlineAsm`
# put any PTX instruction in the kernel (`attn_numba/kernels/ptx_sm90.py`), and numba-cuda
# compiles for `sm_90a` on a Hopper device. This notebook shows the three layouts the kernel
# depends on, each checked by a NumPy model of the hardware written from the PTX ISA
# (`attn_numba/kernels/wgmma_emulation.py`):
#
# 1. the **128-byte swizzle** of the shared-memory tiles,
# 2. the **matrix descriptors** (start address, LBO, SBO, swizzle mode),
# 3. the **fragment layouts** of the accumulator and of A-from-registers.

# %%
import glob
import json
import math
import os
import subprocess
import sys

import matplotlib.pyplot as plt
import ml_dtypes
import numpy as np

from attn_numba.kernels import wgmma_emulation as em
from attn_numba.kernels import wgmma_layout as wl

# %% [markdown]
# ## 1. The 128B swizzle
#
# A tile row of 64 fp16 is 128 bytes = 8 chunks of 16 bytes. Stored plainly, the 8 rows of a
# column of chunks would all hit the same 4 banks; wgmma (and `ldmatrix`) read 8 rows at once.
# The swizzle stores row `r`'s chunk `c` at chunk `c XOR (r % 8)`. The hardware undoes it from
# the address bits ([4:6] XOR [7:9]), which is why tiles must start on 1024-byte boundaries.

# %%
rows = 16
grid = np.array([[wl.chunk_offset(r, c, rows) % 128 // 16 for c in range(8)] for r in range(rows)])
fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(grid, cmap="tab10")
for r in range(rows):
    for c in range(8):
        ax.text(c, r, str(grid[r, c]), ha="center", va="center", fontsize=8)
ax.set_xlabel("logical 16-byte chunk c (elements 8c..8c+7)")
ax.set_ylabel("tile row r")
ax.set_title("physical chunk of (r, c) in the 128B swizzle")
plt.show()
print("every column hits 8 different chunk slots in each 8-row atom:",
      all(len(set(grid[a:a + 8, c])) == 8 for a in range(0, rows, 8) for c in range(8)))

# %% [markdown]
# ## 2. Matrix descriptors
#
# A descriptor is a uint64: start address >> 4 (bits 0-13), leading-dimension byte offset
# (LBO) >> 4 (16-29), stride-dimension byte offset (SBO) >> 4 (32-45), swizzle mode (62-63; 1 =
# 128B). The kernel uses three:
#
# | operand | stored as | major | LBO | SBO | k-step `kk` starts at |
# |---|---|---|---|---|---|
# | Q (A of S = QK^T) | 64 x D | K | unused (16) | 1024 | `32*(kk%4)` in column block `kk//4` |
# | K (B of S) | BN x D | K | unused (16) | 1024 | same, blocks of BN rows |
# | V (B of O = PV) | BN x D, like K | MN (transpose bit) | BN*128 (next 64 of D) | 1024 (next 8 keys) | `2048*kk` |
#
# The NumPy model reads the operand a descriptor designates, element by element, from the
# hardware's address formula; here it reads V's first k-step back from a tile stored the
# kernel's way:

# %%
rng = np.random.default_rng(0)
bn, head = 64, 128
v = rng.standard_normal((bn, head)).astype(np.float16)
smem = np.zeros(2048 + 2 * bn * head, np.uint8)
em.store_tile(smem, 1024, v)
d_v = wl.desc_encode(1024, bn * 128, 1024, 1)
print(f"V descriptor {d_v:#018x} -> (addr, LBO, SBO, swizzle) = {wl.desc_decode(d_v)}")
got = em.operand(smem, d_v, head, "MN").view(np.float16)    # (N = head) x (k = 16 keys)
print("reads V[0:16, :]^T exactly:", np.array_equal(got, v[:16].T))
d_bad = wl.desc_encode(1024, 1024, bn * 128, 1)
print("with LBO and SBO swapped:", np.array_equal(em.operand(smem, d_bad, head, "MN")
                                                   .view(np.float16), v[:16].T))

# %% [markdown]
# ## 3. Fragments: who holds what
#
# The 64 x N accumulator is spread like 4 stacked `mma.sync` C tiles: warp `w` has rows
# `16w..16w+15`, lane `l` rows `16w + l//4` and `+8`, two adjacent columns per n8 block. P for
# P.V (A from registers) uses the m16n8k16 A layout, so the S accumulators pack into P
# registers with no data movement: register `j` of k-step `kk` = S registers `p_regs(kk, j)`
# and `+1`.

# %%
n = 32
owner = np.zeros((64, n), int)
r, c = em.acc_index(n)
owner[r, c] = np.arange(128)[:, None]
fig, ax = plt.subplots(figsize=(6, 8))
ax.imshow(owner % 32, cmap="twilight", aspect="auto")
ax.set_title("accumulator of m64n32: lane that holds each element (warps stacked)")
ax.set_xlabel("column")
ax.set_ylabel("row")
plt.show()

# %% [markdown]
# The whole inner step of the kernel, emulated for one block: S = Q K^T by 4 SS wgmmas per
# key tile, the online softmax on the fragments, P packed by `p_regs`, O += P V by RS
# wgmmas, over two key tiles, against softmax(QK^T)V in float64:

# %%
for dtype in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)):
    head, bn = 64, 64
    q = rng.standard_normal((64, head)).astype(dtype)
    keys = rng.standard_normal((2 * bn, head)).astype(dtype)
    vals = rng.standard_normal((2 * bn, head)).astype(dtype)
    scale = 1 / math.sqrt(head)
    smem = np.zeros(1024 + 3 * 2 * 64 * head + 2048, np.uint8)
    sq, sk, sv = 1024, 1024 + 8192, 1024 + 16384
    em.store_tile(smem, sq, q)
    kdesc = lambda base, kk, rows_: wl.desc_encode(base + wl.kmajor_step_offset(kk, rows_), 16, 1024, 1)  # noqa: E731
    o, m, den = np.zeros((128, head // 2)), np.full(64, -np.inf), np.zeros(64)
    srow = em.acc_index(bn)[0]
    for t in range(2):
        em.store_tile(smem, sk, keys[t * bn:(t + 1) * bn])
        em.store_tile(smem, sv, vals[t * bn:(t + 1) * bn])
        s = np.zeros((128, bn // 2))
        for kk in range(head // 16):
            s = em.wgmma_ss(s, smem, kdesc(sq, kk, 64), kdesc(sk, kk, bn), dtype, scale_d=kk > 0)
        s *= scale
        mx = np.full(64, -np.inf)
        np.maximum.at(mx, srow, s)
        new = np.maximum(m, mx)
        p = np.exp(s - new[srow])
        tsum = np.zeros(64)
        np.add.at(tsum, srow, p)
        den = den * np.exp(m - new) + tsum
        o *= np.exp(m - new)[em.acc_index(head)[0]]
        m = new
        for kk in range(bn // 16):
            regs = np.stack([em.pack_pairs(p[:, wl.p_regs(kk, j)], p[:, wl.p_regs(kk, j) + 1], dtype)
                             for j in range(4)], axis=1)
            o = em.wgmma_rs(o, regs, smem, wl.desc_encode(sv + wl.mnmajor_step_offset(kk),
                                                          bn * 128, 1024, 1), dtype)
    out = em.gather(o) / den[:, None]
    sc = q.astype(np.float64) @ keys.astype(np.float64).T * scale
    w = np.exp(sc - sc.max(1, keepdims=True))
    want = (w / w.sum(1, keepdims=True)) @ vals.astype(np.float64)
    print(f"{dtype.name}: max |emulated kernel - float64| = {np.abs(out - want).max():.2e}")

# %% [markdown]
# ## 4. The whole kernel on the CPU
#
# Under Numba's CUDA simulator, `ptx_sm90` swaps its intrinsics for pure-Python models
# (`ptx_sm90_sim.py`: wgmma through the descriptor model above, `cp.async` completing at
# once), so the unmodified kernel body runs here: one causal GQA case with the overlapped
# loop, compared with the float64 reference. (On a GPU the real instructions run instead;
# this cell is skipped there.)

# %%
from numba import config as numba_config

if numba_config.ENABLE_CUDASIM:
    from attn_numba.kernels import FWD_ARRAYS, launch_plans, named, v5_flash_wgmma
    from attn_numba.problem import Problem
    from attn_numba.reference import mha_varlen_fwd_ref

    sq_, h_, hkv_, d_ = 40, 4, 1, 64
    cu = np.array([0, sq_], np.int32)
    q = rng.standard_normal((sq_, h_, d_)).astype(np.float16)
    k, v = (rng.standard_normal((sq_, hkv_, d_)).astype(np.float16) for _ in range(2))
    p = Problem(batch=1, total_q=sq_, total_k=sq_, max_seqlen_q=sq_, max_seqlen_k=sq_,
                num_heads=h_, num_kv_heads=hkv_, head_size=d_, dtype=np.dtype(np.float16),
                softmax_scale=1 / math.sqrt(d_), window_left=-1, window_right=0, causal=True,
                lse_batched=False, on_simulator=True)
    (plan,) = v5_flash_wgmma.plan(p, v5_flash_wgmma.config_for(p, block_n=64, overlap=True))
    grid_, threads, shared = plan.griddim, plan.blockdim, plan.shared
    out = np.zeros((sq_, h_, d_), np.float16)
    lse = np.zeros((1, h_, sq_), np.float32)
    launch_plans((plan,), named(FWD_ARRAYS, q, k, v, out, lse, cu, cu))
    ref, ref_lse = mha_varlen_fwd_ref(q, k, v, cu, cu, causal=True)
    print(f"grid {grid_}, {threads} threads, {shared} bytes of shared memory")
    print(f"max |kernel - float64| = {np.abs(out - ref).max():.2e}, "
          f"max |lse diff| = {np.abs(lse[0] - ref_lse).max():.2e}")
else:
    # on a GPU: the package's kernel through the public call, against the float64 reference
    import attn_numba
    from attn_numba.reference import mha_fwd_ref

    from numba import cuda as _cuda
    cc = _cuda.get_current_device().compute_capability
    for d_, causal_, window_ in ((128, False, (128, 128)), (64, True, (-1, -1)), (256, False, (32, 0))):
        q = rng.standard_normal((1, 1025, 8, d_)).astype(np.float16)
        k, v = (rng.standard_normal((1, 1025, 2, d_)).astype(np.float16) for _ in range(2))
        try:
            out, lse = attn_numba.mha_fwd(q, k, v, causal=causal_, window_size=window_,
                                          kernel="flash_wgmma", return_lse=True)
        except ValueError as exc:  # not a Hopper GPU: supports() says why
            print(f"sm_{cc[0]}{cc[1]}: {exc}")
            break
        ref, ref_lse = mha_fwd_ref(q, k, v, causal=causal_, window_size=window_)
        print(f"flash_wgmma D={d_} causal={causal_} window={window_}: max |out - float64| = "
              f"{np.abs(out - ref).max():.2e}, max |lse diff| = {np.abs(lse - ref_lse).max():.2e}")

# %% [markdown]
# ## 5. The PTX: `wgmma` from Numba
#
# Compiled on the CPU with `numba.cuda.compile_ptx(..., cc=(9, 0, "a"))` (run in a subprocess
# with the simulator off): the kernel's PTX targets `sm_90a` and holds the `wgmma`
# instructions, fences and `cp.async` groups.

# %%
code = r'''
import re, numpy as np
from numba import cuda
from attn_numba.kernels import v5_flash_wgmma as v5
label, fn, sig = v5.compile_targets(128, np.float16, heads=(4,))[0]
ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0, "a"))
print(re.search(r"\.target\s+\S+", ptx).group(0))
for pat in ("wgmma.mma_async", "wgmma.fence", "wgmma.commit_group", "wgmma.wait_group",
            "cp.async.cg", "fence.proxy.async", "ld.local", "st.local"):
    print(f"{pat:<22} {ptx.count(pat)}")
line = next(l for l in ptx.splitlines() if "wgmma.mma_async" in l)
print(line.strip()[:160], "...")
'''
env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
try:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=600)
    print(r.stdout or r.stderr[-2000:])
except Exception as exc:  # noqa: BLE001
    print("compile_ptx not available here:", exc)

# %% [markdown]
# ## 6. Measured speed
#
# `scripts/gpu_wgmma_check.py` writes `wgmma_check.json` (microtest, correctness sweep,
# 8192-token timing against flash_tc, registers and HGMMA count). Any committed copy under
# `results/` is shown here; numbers are only those measured, with their device. First, the
# NVBench grid (`attn-numba bench`, notebook 05) of the newest committed GPU, `results/h200`
# when present, else `results/h100`.

# %%
from attn_numba import sources
from attn_numba.bench.grid import is_long
S_PATH, S_DOC = sources.load_summary()  # prints "source: device, date, file"
rows = {(r["kernel"], r["seq_len"], r["causal"]): r for r in S_DOC["records"] if r.get("gpu_time_s")}
if not any(k == "flash_wgmma" for k, _, _ in rows):
    print(f"{sources.display_path(S_PATH)} has no flash_wgmma records yet (attn-numba bench on a Hopper GPU)")
print(f"{'seq_len':>7} {'causal':>6} {'flash_tc ms':>12} {'flash_wgmma ms':>15} {'FlexAttention ms':>17}")
for c in (0, 1):
    for s_ in sorted({s_ for _, s_, _ in rows}):
        t = [rows.get((k, s_, c)) for k in ("flash_tc", "flash_wgmma", "flexattention")]
        if t[1] or (t[0] and is_long(s_)):
            print(f"{s_:>7} {c:>6} " + " ".join(f"{r['gpu_time_s'] * 1e3:{w}.4f}" if r else f"{'-':>{w}}"
                                                   for r, w in zip(t, (12, 15, 17))))

# %% [markdown]
# The same records drawn: NVBench cold GPU time against tokens, one line per provider, the
# log's grid (512 to 8192) and the long-sequence sweep (16k to 512k) where present.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, c in zip(axes, (0, 1)):
    for k, style in (("flash_tc", "o-"), ("flash_wgmma", "s-"), ("flexattention", "^--")):
        pts = sorted((s_, r["gpu_time_s"] * 1e3) for (kk, s_, cc_), r in rows.items()
                     if kk == k and cc_ == c)
        if pts:
            ax.loglog(*zip(*pts), style, label=k)
    ax.set_title(f"causal={c}, window (128, 128), 32/8 heads, D=128, fp16")
    ax.set_xlabel("tokens")
    ax.grid(True, which="both", alpha=0.3)
axes[0].set_ylabel("NVBench cold GPU time (ms)")
axes[0].legend()
fig.suptitle(sources.source_text(S_DOC, S_PATH), fontsize=8)
plt.show()

# %%
found = sorted(glob.glob("../results/**/wgmma_check.json", recursive=True) +
               glob.glob("results/**/wgmma_check.json", recursive=True))
if not found:
    print("no wgmma_check.json committed under results/ yet: nothing measured to show")
for path in found:
    res = json.load(open(path))
    print("source:", sources.source_text(res, path))
    for key in ("sweep", "sweep_overlap", "sweep_wg2", "sweep_wg2_plain"):
        sw = res.get(key)
        if sw:
            opts = ", ".join(f"{k}={v}" for k, v in (sw.get("options") or {}).items())
            print(f"  correctness {key:<16} {sw.get('passed')}/{sw.get('run')} pass "
                  f"(options: {opts or 'the defaults'})")
    for name, t in res.get("timing_8192", {}).get("runs", {}).items():
        if "ms" in t:
            print(f"  8192 tokens, {name:<18} {t['ms']:.3f} ms  {t['tflops']:.0f} TFLOP/s")
    for e in res.get("evidence", []):
        print(f"  D={e['d']} {e['kind']} BN={e['block_n']}: {e.get('regs', '?')} registers, "
              f"HGMMA in SASS: {'not recorded' if e.get('hgmma') is None else e['hgmma']}")

# %% [markdown]
# ## 7. What v6 (`flash_ws`) adds, step by step
#
# v5 is one block of one warpgroup (128 threads) per 16 positions x 4 heads; every warp both
# copies K/V (`cp.async`) and computes. FlashAttention-3 and -4 split the roles, and v6
# (`attn_numba/kernels/v6_flash_ws.py`, `mha_fwd(..., kernel="flash_ws")`) does the
# same from Numba:
#
# * **TMA** loads: one thread of a **producer warpgroup** issues
#   `cp.async.bulk.tensor` boxes of Q, K and V through `CUtensorMap`s in global memory
#   (`attn_numba/tensormap.py`, `kernels/ptx_tma.py`); the boxes land 128B-swizzled, the
#   layout of section 1, so wgmma reads them as they are;
# * an **mbarrier pipeline** of K/V stages (full barriers, and empty barriers for K and V
#   apart, so a stage's K is refilled while PV still reads its V);
# * `setmaxnreg`: the producer gives up registers (24), the **two consumer warpgroups** take
#   them (240 each), 384 threads per block under `launch_bounds=(384, 1)`;
# * 128-row tiles (32 positions x 4 heads of a GQA group), so each K/V tile serves twice as
#   many rows as in v5.
#
# That alone ran at v5's speed (run 22: 0.97-1.00x non-causal, 1.10-1.14x causal). ncu then
# showed where the time went (run 29, 8192 tokens non-causal, `--clock-control none`): v6
# issued 1.8x FlashAttention-4's instructions for the same work, so the consumers' instruction
# count, not the loads, was the gap. Then came three steps, each measured on the H200 in the
# same process as FA4 (`scripts/gpu_v6_check.py`, `do_bench_cudagraph`, the log's shape,
# ms at 8192 tokens non-causal):
#
# | step | v6 | FA4 |
# |---|---:|---:|
# | v6 as first built (run 29) | 0.1811 | 0.1371 |
# | + the consumers take **turns** at the tensor cores on two named barriers (run 29) | 0.1744 | |
# | + a **lean softmax**: scale folded into the exponent's fma, 32-bit masks (run 30) | 0.1687 | 0.1374 |
# | + a **persistent grid**, one block per SM, 128-key tiles (run 33) | 0.1450 | 0.1366 |
# | + a **staged epilogue**: O through shared memory, 16-byte stores (run 48) | 0.1395 | 0.1364 |
# | + the **overlapped loop** in FlashAttention-3's order (run 48) | 0.1379 | 0.1364 |
# | + **64-key tiles in 3 stages** instead of 128 in 2 (run 49) | 0.1323 | 0.1348 |
# | + a **lazy softmax**: a row's maximum moves only by more than 2^8, so most tiles skip O's rescale (run 60) | 0.1280 | 0.1357 |
#
# The persistent grid helps most because each block has only a few key tiles of the 288-key
# band: with one block per SM, the next work tile's Q and K/V loads now run under this tile's
# epilogue instead of after it. The epilogue itself was the next cost: every thread stored
# its fragments as 4-byte pieces of eight rows (run 40's SASS counted 2.6x FA4's
# instructions there); through shared memory, each warp writes 512 contiguous bytes per
# store. The overlapped loop (QK^T of the next tile issued during this tile's softmax) had
# been slower until O's rescale moved under the QK^T it waits for, as FlashAttention-3 orders
# it; with both, the smaller key tile wastes less of the band (288 keys in 320 rather than
# 384). The number of stages hardly matters there (run 50: 2, 3 and 4 stages within 1% of
# each other at 8192 tokens).
#
# The lazy softmax is FlashAttention-4's conditional rescaling: P may reach 2^8 against a
# stale maximum (fp16 holds it; l and O are fp32), and since P, l, O and the lse all use
# the maximum kept, the result is the same softmax. A warp vote skips the rescale's 64
# multiplies per thread when none of the warp's 16 rows moved (run 60: 1-3% faster from
# 1024 tokens up, equal at 512).
#
# The public calls, NVBench (run 61, `attn-numba bench`, one process with FA4 and cuDNN):
# flash_ws / FA4 is 1.12, 1.06, 1.01, 0.97, 0.95 from 512 to 8192 tokens (non-causal) and
# 1.09, 1.01, 0.97, 0.93, 0.90 (causal), and under cuDNN's time at all 10 configurations
# (0.80-0.90x). Run 38, before the last four steps, had 1.06-1.33x FA4.
#
# At 512 and 1024 tokens, one or two work tiles per SM, the time is latency, not
# throughput: the block's set-up (its maps), the Q load, three to five key tiles, the
# epilogue. Run 53 took one memory round trip out of the set-up on the one-block-per-tile
# grid (the template maps as kernel parameters; batched calls pass their lengths, so no
# block reads `cu_seqlens`): 0.4-0.6 us less at 512 tokens, 1.29x FA4 becoming 1.22x in
# graph replay. Writing the maps in a second producer thread, to overlap them with the
# work tile's loads, was 0.2 us slower. `auto` takes flash_ws above 1,200 key tiles in the
# grid (`auto_declines`) and v5 below, where back-to-back calls were bound by host work. The
# table is in the README.

