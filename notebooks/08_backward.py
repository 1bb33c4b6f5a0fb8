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
# # 08: the backward pass, FlashAttention-2's algorithm on CUDA cores, then tensor cores
#
# Notebooks 01-07 compute `out = softmax(scale Q K^T) V` and stop there. To train a model the
# library must also give the gradients of a loss with respect to `q`, `k` and `v`, given
# `dout = dL/d out`. This notebook:
#
# * writes the gradient of softmax attention out, and checks it against finite differences;
# * develops FlashAttention-2's backward tile by tile in NumPy: a preprocess, one program per
#   key tile that accumulates dK and dV, a second pass for dQ; nothing of size seq x seq;
# * runs the CUDA-core kernel (`attn_numba/kernels/bwd_flash.py`, the teaching step; the
#   simulator runs the same code) through `attn_numba.mha_bwd` and checks it against the
#   float64 reference;
# * shows how the tensor-core backwards (mma.sync, and Hopper's wgmma, which `auto` takes on
#   an H200) lay out the same products, and checks the wgmma one on a GPU;
# * shows the measured fwd + bwd times against the peers, from the committed results, each
#   with its `source:` (device, date, file).

# %%
import inspect
import numpy as np
import matplotlib.pyplot as plt
import attn_numba
from attn_numba import kernels, reference, sources, testing
from attn_numba.kernels import bwd_flash, tile_range
from attn_numba.problem import Problem
SIM = attn_numba.on_simulator()
print("simulator" if SIM else "real GPU", "| backward kernels:", ", ".join(kernels.available(backward=True)))

# %% [markdown]
# ## The gradient of softmax attention
#
# For one head, with `S = scale Q K^T` (entries outside the window or causal band set to
# `-inf`), `P = softmax(S)` by rows and `O = P V`, and `dO` the gradient of the loss with
# respect to `O`:
#
# * `dV = P^T dO`: `O` is linear in `V`;
# * `dP = dO V^T`: and linear in `P`;
# * `dS = P * (dP - delta)`, with `delta_i = sum_j P_ij dP_ij`: the softmax's Jacobian is
#   `dP_ij / dS_ik = P_ij (1[j = k] - P_ik)`, so row `i` of `dS` is `P_i * (dP_i - <P_i, dP_i>)`;
# * `dQ = scale dS K` and `dK = scale dS^T Q`: `S` is bilinear in `Q` and `K`.
#
# Two facts make the tiled algorithm possible. First, `delta_i = sum_j P_ij dP_ij =
# sum_j P_ij (dO_i . V_j) = dO_i . O_i`: the row sum over all keys that no key tile sees whole
# is `rowsum(dO * O)`, from the forward's output, computed once per row before anything else.
# Second, `P` need not be stored: `P_ij = exp(S_ij - lse_i)` with the forward's log-sum-exp.
# With GQA a KV head's `dK` and `dV` are sums over the query heads that read it. A row that
# sees no key has `P = 0`: it contributes nothing, and its `dQ` is 0 (never NaN).
#
# Checked in float64 against central differences of `L = sum(dO * O)`:

# %%
rng = np.random.default_rng()
sq, sk, D, scale = 6, 9, 4, 0.5
q, k, v, do = (rng.standard_normal(s) for s in ((sq, D), (sk, D), (sk, D), (sq, D)))
mask = reference._mask(sq, sk, 2, 1, False)                # window (2, 1): a band

def forward(q, k, v):
    s = np.where(mask, scale * q @ k.T, -np.inf)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p, p @ v

P, O = forward(q, k, v)
dV = P.T @ do
dP = do @ v.T
delta = (do * O).sum(axis=1, keepdims=True)
print("delta = rowsum(dO * O) = rowsum(P * dP):", np.allclose(delta, (P * dP).sum(axis=1, keepdims=True)))
dS = P * (dP - delta)
dQ, dK = scale * dS @ k, scale * dS.T @ q

def numeric(x, which, eps=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        for sign in (1, -1):
            y = x.copy(); y[idx] += sign * eps
            args = [q, k, v]; args[which] = y
            g[idx] += sign * (do * forward(*args)[1]).sum() / (2 * eps)
    return g

for name, g, which, x in (("dQ", dQ, 0, q), ("dK", dK, 1, k), ("dV", dV, 2, v)):
    print(f"{name}: max |formula - finite difference| = {np.abs(g - numeric(x, which)).max():.1e}")

# %% [markdown]
# ## FlashAttention-2's backward, tile by tile
#
# Three launches (`bwd_flash.plan`), all on the caller's stream:
#
# 1. **preprocess**: `delta = rowsum(dout * out)` per (row, head), into a float32 scratch
#    buffer `(H, total_q)`;
# 2. **dK, dV**: one program per `BN`-key tile and KV head. Its K and V tiles stay in shared
#    memory while it walks the query tiles that see any of its keys
#    (`tile_range.query_rows`), for each of the `G` query heads of its GQA group in turn:
#    recompute `P` from q, k and lse, then `dV += P^T dO`, `dP = dO V^T`,
#    `dS = P * (dP - delta)`, `dK += dS^T Q`. Each element of dK and dV is summed by one
#    thread in a fixed order, so the result is **deterministic**;
# 3. **dQ**: one program per `BM`-row query tile and query head, over the key tiles its rows
#    see (`tile_range.key_tiles`, the forward's loop): the same `P` and `dS`, `dQ += dS K`.
#    FlashAttention-2 adds dQ from the key-tile programs with float32 atomics instead, which
#    saves recomputing `P` but makes the sum's order (and its bits) vary from run to run.
#
# The same in NumPy, on the varlen layout the kernels use, against the float64 reference:

# %%
def flash_bwd_numpy(dout, q, k, v, out, lse, cu_q, cu_k, scale, left, right, BM=8, BN=8):
    """dout/q/out (total_q, H, D), k/v (total_k, Hkv, D), lse (H, total_q): the three passes."""
    H, Hkv = q.shape[1], k.shape[1]
    G = H // Hkv
    delta = np.einsum("rhd,rhd->hr", dout, out)                    # 1. preprocess
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)

    def tile(b, h, m0, n0):
        """P and dS of query rows m0.. and keys n0.. of sequence b, head h (0 outside the band)."""
        q0, sq = cu_q[b], cu_q[b + 1] - cu_q[b]
        k0, sk = cu_k[b], cu_k[b + 1] - cu_k[b]
        rows, cols = np.arange(m0, min(m0 + BM, sq)), np.arange(n0, min(n0 + BN, sk))
        seen = reference._mask(sq, sk, left, right, False, rows)[:, cols]
        s = scale * q[q0 + rows, h] @ k[k0 + cols, h // G].T
        p = np.where(seen, np.exp(s - lse[h, q0 + rows][:, None]), 0.0)
        dp = dout[q0 + rows, h] @ v[k0 + cols, h // G].T
        return q0 + rows, k0 + cols, p, p * (dp - delta[h, q0 + rows][:, None])

    for b in range(len(cu_q) - 1):
        sq, sk = cu_q[b + 1] - cu_q[b], cu_k[b + 1] - cu_k[b]
        for hk in range(Hkv):                                       # 2. dK, dV programs
            for n0 in range(0, sk, BN):
                i_lo, i_hi = tile_range.query_rows_host(n0, min(n0 + BN, sk) - 1, sq, sk, left, right)
                for h in range(hk * G, hk * G + G):
                    for m0 in range(i_lo, i_hi + 1, BM):
                        r, c, p, ds = tile(b, h, m0, n0)
                        dv[c, hk] += p.T @ dout[r, h]
                        dk[c, hk] += scale * ds.T @ q[r, h]
        for h in range(H):                                          # 3. dQ programs
            for m0 in range(0, sq, BM):
                n_lo, n_hi = tile_range.key_tiles_host(m0, min(m0 + BM, sq) - 1, sq, sk, left, right, BN)
                for n0 in range(n_lo, n_hi, BN):
                    r, c, p, ds = tile(b, h, m0, n0)
                    dq[r, h] += scale * ds @ k[c, h // G]
    return dq, dk, dv

for lens_q, lens_k, H, Hkv, window, causal in [([19], [19], 4, 1, (-1, -1), True),
                                               ([0, 13, 7], [5, 0, 21], 4, 2, (5, 0), False),
                                               ([30], [12], 2, 2, (3, 3), False)]:
    q, k, v, cu_q, cu_k = testing.random_varlen(rng, lens_q, lens_k, H, Hkv, 16, np.float64)
    dout = rng.standard_normal(q.shape)
    left, right = (window[0], 0) if causal else window
    out, lse = reference.mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, window_size=(left, right))
    got = flash_bwd_numpy(dout, q, k, v, out, lse, cu_q, cu_k, 0.25, left, right)
    ref = reference.mha_varlen_bwd_ref(dout, q, k, v, cu_q, cu_k, softmax_scale=0.25,
                                       window_size=(left, right))
    errs = ", ".join(f"{n} {np.abs(g - r).max():.1e}" for n, g, r in zip(("dq", "dk", "dv"), got, ref))
    print(f"lens q {lens_q} k {lens_k} H={H}/{Hkv} window={window} causal={causal}: max |err| {errs}")

# %% [markdown]
# ## The tiles each program visits
#
# A sliding window with causal masking, 96 queries and keys, 16 x 16 tiles: the element mask
# (grey) and the (query tile, key tile) pairs the dK/dV programs visit (one column of boxes
# per program). The dQ programs visit the same pairs, by rows. Only tiles that touch the band
# are visited; the partial ones on its edges are masked element by element.

# %%
S, W, B = 96, 24, 16
elem = reference._mask(S, S, W, 0, True)
fig, ax = plt.subplots(figsize=(4.6, 4.2))
ax.imshow(elem, cmap="Greys", vmin=0, vmax=2.5, interpolation="nearest")
visits = 0
for n0 in range(0, S, B):
    i_lo, i_hi = tile_range.query_rows_host(n0, n0 + B - 1, S, S, W, 0)
    for m0 in range(i_lo, i_hi + 1, B):
        visits += 1
        ax.add_patch(plt.Rectangle((n0 - 0.5, m0 - 0.5), B, min(B, S - m0), fill=False,
                                   ec="C0", lw=1.2))
ax.set_xlabel("key"); ax.set_ylabel("query")
ax.set_title(f"window ({W}, 0), causal: {visits} of {(S // B) ** 2} tile pairs", fontsize=9)
SRC_TILES = "computed in this notebook (no device), attn_numba/kernels/tile_range.py"
sources.show(fig, SRC_TILES)
print("source:", SRC_TILES)

# %% [markdown]
# ## The kernel
#
# `attn_numba/kernels/bwd_flash.py`: lru_cached factories per (padded head size, tiles) build
# the three kernels; the stages shared by the dK/dV and dQ programs (staging rows of a tensor
# into shared memory as float32, the row statistics, the `P`/`dS` tile) are device functions.
# Each thread owns score-tile elements `tid + t*NT` and accumulator elements `tid + t*NT` of
# its output tile, accumulated in float32 registers. The plan of one call:

# %%
problem = Problem(
    batch=1, total_q=8192, total_k=8192, max_seqlen_q=8192, max_seqlen_k=8192, num_heads=32,
    num_kv_heads=8, head_size=128, dtype=np.dtype(np.float16), softmax_scale=128 ** -0.5,
    window_left=128, window_right=128, causal=False, lse_batched=True, on_simulator=SIM)
print(f"tiles (BM, BN, NT) for head size 128: {bwd_flash.tiles_for(128, SIM)[1]}",
      "(the simulator's)" if SIM else "")
for s in bwd_flash.scratch(problem):
    print(f"scratch {s.name}: {s.dtype.__name__} {s.shape}")
for p in bwd_flash.plan(problem):
    print(f"{p.kernel.py_func.__name__:15s} grid {p.griddim}, {p.blockdim} threads, arrays {', '.join(p.arrays)}")
src = inspect.getsource(bwd_flash.build_dkdv)
print("\n" + src[src.index("        i_lo, i_hi = query_rows"):src.index("        for t in range(ACC):\n            e = tid")])

# %% [markdown]
# ## Check against float64
#
# Through the public API, `attn_numba.mha_bwd(dout, q, k, v, out, lse, kernel="flash")`, with
# `out` and `lse` from `mha_fwd(..., return_lse=True)`, every output poisoned with NaN first.
# The rule is the forward's: each gradient's error at most twice that of a low-precision
# reference (float64 with `P`, `dS` and `O` rounded to the input dtype, the gradients too)
# plus a floor (`attn_numba.testing.grad_tolerance`). Small sizes on the simulator, the
# log's shape on a GPU.

# %%
cases = [  # (batch, sq, sk, H, Hkv, D, dtype, window, causal)
    (1, 17, 17, 4, 1, 16, np.float16, (-1, -1), True),     # GQA 4, causal
    (2, 13, 30, 2, 2, 16, np.float32, (6, 0), False),      # sq < sk, sliding window
    (1, 30, 11, 4, 2, 24, np.float16, (-1, -1), True),     # sq > sk: rows that see no key
] if SIM else [
    (1, 8192, 8192, 32, 8, 128, np.float16, (128, 128), False),
    (1, 1025, 1025, 8, 1, 64, np.float16, (-1, -1), True),
    (2, 97, 300, 4, 4, 256, np.float32, (32, 0), False),
]
fwd = "flash"
for b, sq, sk, h, hkv, d, dt, win, causal in cases:
    q, k, v = testing.random_qkv(rng, b, sq, sk, h, hkv, d, dt)
    dout = rng.standard_normal(q.shape).astype(dt)
    c = testing.check_mha_bwd(dout, q, k, v, "flash", fwd_kernel=fwd, causal=causal, window_size=win)
    errs = ", ".join(f"{n} {c.errs[n]:.1e} <= {c.tols[n]:.1e}" for n in testing.GRAD_NAMES)
    print(f"B={b} sq={sq} sk={sk} H={h}/{hkv} D={d} {np.dtype(dt).name} window={win} causal={causal}: {errs}")
q, k, v, cu_q, cu_k = testing.random_varlen(rng, [0, 11, 3, 0, 9], [5, 0, 13, 0, 9], 4, 1, 16)
dout = rng.standard_normal(q.shape).astype(q.dtype)
c = testing.check_mha_varlen_bwd(dout, q, k, v, cu_q, cu_k, "flash", fwd_kernel=fwd, window_size=(4, 2))
print("varlen with empty sequences:", ", ".join(f"{n} {c.errs[n]:.1e} <= {c.tols[n]:.1e}" for n in testing.GRAD_NAMES))
out, lse = attn_numba.mha_varlen_fwd(q, k, v, cu_q, cu_k, return_lse=True, kernel=fwd, window_size=(4, 2))
runs = [attn_numba.mha_varlen_bwd(dout, q, k, v, out, lse, cu_q, cu_k, kernel="flash", window_size=(4, 2))
        for _ in range(2)]
print("two runs bit-identical:", all(a.tobytes() == b.tobytes() for a, b in zip(*runs)))

# %% [markdown]
# ## The tensor-core steps: mma.sync, then wgmma
#
# The CUDA-core kernel above is the algorithm; the two tensor-core backwards run the same
# three launches with the products on tensor cores (`notes/bwd_tensor_core.md`,
# `notes/bwd_wgmma.md`):
#
# * `flash_tc` (`bwd_flash_tc`, mma.sync, sm_80 and up: the user's A30);
# * `flash_wgmma` (`bwd_flash_wgmma`, Hopper warpgroup MMA, sm_90), where `auto` starts.
#
# The trick both share: the dK/dV pass computes `S^T = K Q^T` and `dP^T = V dO^T`, with the
# block's keys as the matrix rows. Then `P^T` and `dS^T` sit in the accumulator layout that
# packs straight into the A operand of `dV += P^T dO` and `dK += dS^T Q`, so nothing goes
# through shared memory. On Hopper every product is one of the forward's two wgmma forms
# (`C = A B^T` from shared memory, and `C += A B` with A in registers); the dQ pass packs 4
# query heads into its 64 rows as the forward does. The plan of one call at the log's shape:

# %%
from attn_numba.kernels import bwd_flash_wgmma
for p in bwd_flash_wgmma.plan(problem):
    print(f"{p.kernel.py_func.__name__:24s} grid {p.griddim}, {p.blockdim} threads, "
          f"{p.shared / 1024:.0f} KiB shared")
if SIM:
    print("On the simulator the wgmma kernels run only through the instruction models of "
          "tests/test_bwd_wgmma_sim.py; mha_bwd(kernel='flash_wgmma') needs sm_90.")
elif bwd_flash_wgmma.supports(problem) is None:
    q, k, v = testing.random_qkv(rng, 1, 8192, 8192, 32, 8, 128, np.float16)
    dout = rng.standard_normal(q.shape).astype(q.dtype)
    c = testing.check_mha_bwd(dout, q, k, v, "flash_wgmma", window_size=(128, 128))
    print("flash_wgmma at the log's shape:",
          ", ".join(f"{n} {c.errs[n]:.1e} <= {c.tols[n]:.1e}" for n in testing.GRAD_NAMES))

# %% [markdown]
# ## Measured: fwd + bwd against the peers
#
# `attn-numba bench --backward` times the backward alone (`bwd`) and forward + backward
# (`fwd+bwd`) for ours and the peers (FlexAttention, SDPA) in one NVBench run, gradients
# checked first, and writes the rows into the `"backward"` section of the committed summary:

# %%
summ_path, summ = sources.load_summary()
rows = [r for r in (summ.get("backward") or {}).get("records", []) if r.get("gpu_time_s")]
if not rows:
    print(f"{sources.display_path(summ_path)} has no backward rows yet: no backward or fwd + bwd "
          "time of any kernel has been committed, so none is shown here.")
else:
    print(f"{'kernel':>14} {'pass':>8} {'seq_len':>7} {'causal':>6} {'ms':>8} {'TFLOP/s':>8}")
    for r in sorted(rows, key=lambda r: (r["pass"], r["seq_len"], r["causal"], r["kernel"])):
        tf = f"{r['tflops']:8.1f}" if r.get("tflops") else ""
        print(f"{r['kernel']:>14} {r['pass']:>8} {r['seq_len']:>7} {r['causal']:>6} "
              f"{r['gpu_time_s'] * 1e3:8.3f} {tf}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, c in zip(axes, (0, 1)):
        for kname in sorted({r["kernel"] for r in rows}):
            pts = sorted((r["seq_len"], r["gpu_time_s"]) for r in rows
                         if r["kernel"] == kname and r["causal"] == c and r["pass"] == "fwd+bwd")
            if pts:
                ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], "o-", label=kname)
        ax.set_xscale("log", base=2); ax.set_yscale("log"); ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("seq_len (tokens)"); ax.set_title(f"fwd + bwd, causal={c}", fontsize=9)
        ax.legend(fontsize=7)
    t = {(r["kernel"], r["pass"], r["seq_len"], r["causal"]): r["gpu_time_s"] for r in rows}
    for kname in sorted({r["kernel"] for r in rows} - {"flexattention"}):
        ratios = [f"{t[key] / t[('flexattention',) + key[1:]]:.2f}" for key in sorted(t)
                  if key[0] == kname and key[1] == "fwd+bwd" and ("flexattention",) + key[1:] in t]
        if ratios:
            print(f"{kname} fwd+bwd / FlexAttention's (by seq_len, causal 0 and 1 at each):", " ".join(ratios))
    axes[0].set_ylabel(f"ms per call, {summ['device']}")
    sources.show(fig, sources.source_text(summ, summ_path))
