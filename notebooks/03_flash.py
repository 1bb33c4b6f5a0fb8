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
# # 03: the flash kernel (v3): one pass, online softmax, register tiles, on CUDA cores
#
# v2 streams K twice and does one FMA per shared-memory load. v3:
#
# * **one pass** over the K/V tiles of the band with an **online softmax**: each row keeps a
#   running max `m` and sum `l`; when a new tile raises `m`, the accumulator and `l` are rescaled
#   by `exp(m_old - m_new)`. Nothing of size seq x seq exists anywhere;
# * **GQA heads stacked as rows**: a block handles (16 queries x the 4 query heads of one GQA
#   group) = 64 score rows that share one KV head, so each K/V tile staged in shared memory is
#   used by all of them;
# * **register tiling**: each thread owns a small patch of the score tile S and of the output
#   accumulator O, so that every shared-memory load feeds several FMAs (and loads are 128-bit);
# * the row max/sum reductions go through shared memory (the simulator has no warp shuffles and
#   runs exactly the same code).

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
# ## Online softmax in NumPy
#
# Rows = stacked (query, head) pairs of one block; key tiles of `BN` keys starting at the first
# visible key. Checked against the float64 reference (GQA, window, causal).

# %%
def flash_block(q, k, v, scale, left, right, causal, BQ=4, BN=4):
    """q (sq, H, D), k/v (sk, Hkv, D): one sequence, heads of a GQA group stacked as rows."""
    sq, H, D = q.shape
    sk, Hkv, _ = k.shape
    g = H // Hkv
    out = np.zeros(q.shape); lse = np.full((H, sq), -np.inf)
    for hk in range(Hkv):
        for q0 in range(0, sq, BQ):
            qi = np.arange(q0, min(sq, q0 + BQ))
            heads = np.arange(hk * g, (hk + 1) * g)
            Q = q[qi][:, heads].transpose(1, 0, 2).reshape(-1, D)          # rows = (head, query)
            vis = np.tile(reference._mask(sq, sk, left, right, causal, qi), (g, 1))
            cols = np.flatnonzero(vis.any(axis=0))
            m = np.full(len(Q), -np.inf); l = np.zeros(len(Q)); acc = np.zeros((len(Q), D))
            for k0 in range(cols[0] if cols.size else 0, cols[-1] + 1 if cols.size else 0, BN):
                ks = np.arange(k0, min(cols[-1] + 1, k0 + BN))
                s = np.where(vis[:, ks], Q @ k[ks, hk].T * scale, -np.inf)
                m_new = np.maximum(m, s.max(axis=1))
                m_use = np.where(np.isfinite(m_new), m_new, 0.0)
                alpha = np.exp(m - m_use)                                   # 0 when m = -inf
                p = np.exp(s - m_use[:, None])
                l = l * alpha + p.sum(axis=1)
                acc = acc * alpha[:, None] + p @ v[ks, hk]
                m = m_new
            ok = l > 0
            o = np.where(ok[:, None], acc / np.where(ok, l, 1)[:, None], 0.0).reshape(g, len(qi), D)
            out[qi[:, None], heads[None, :]] = o.transpose(1, 0, 2)
            lse[heads[:, None], qi[None, :]] = np.where(ok, m + np.log(np.where(ok, l, 1)), -np.inf).reshape(g, -1)
    return out, lse

rng = np.random.default_rng()
for sq, sk, H, Hkv, window, causal in [(19, 19, 8, 2, (-1, -1), False), (11, 26, 4, 1, (3, 5), False),
                                         (26, 11, 4, 4, (6, -1), True), (17, 17, 2, 1, (0, 0), False)]:
    q, k, v = (rng.standard_normal((n, h, 16)) for n, h in ((sq, H), (sk, Hkv), (sk, Hkv)))
    o, l = flash_block(q, k, v, 0.25, *window, causal)
    ref, ref_lse = reference.mha_fwd_ref(q[None], k[None], v[None], softmax_scale=0.25,
                                         window_size=window, causal=causal)
    fin = np.isfinite(ref_lse[0])
    assert np.array_equal(np.isfinite(l), fin)
    print(f"sq={sq} sk={sk} H={H}/{Hkv} window={window} causal={causal}: "
          f"max |out - ref| {np.abs(o - ref[0]).max():.1e}, max |lse - ref| {np.abs(l[fin] - ref_lse[0][fin]).max():.1e}")

# %% [markdown]
# ## Register tiling: who computes what
#
# Tile configuration `(BM, BN, NT, TM, TN, DK, BK)`: `BM` score rows and `BN` keys per tile, `NT`
# threads; thread `(ty, tx)` owns a `TM x TN` patch of S (rows `ty·TM + i`, keys in groups of 4
# consecutive ones so a step of the inner loop is 128-bit shared loads) and `TM x TD` of O,
# `TD = D / (BN/TN)`. Q/K are staged `DK` head-dim columns at a time, V `BK` keys at a time, in two
# alternating shared buffers (one barrier per chunk), with the global loads of the next chunk in
# flight while the current one is used.

# %%
from attn_numba.kernels import v3_flash
D = 128
tiles, min_blocks = v3_flash.GPU_CONFIG[D]
c = v3_flash.derived(D, tiles)
print("tiles:", ", ".join(f"{k}={v}" for k, v in tiles.asdict().items()),
      "| launch-bound blocks/SM:", min_blocks or "none")
print("derived:", ", ".join(f"{k}={c[k]}" for k in ("RG", "CG", "TD", "UNROLL_S", "UNROLL_PV")),
      f"| shared memory {v3_flash.shared_bytes(D, tiles)} B/block")
BM, BN, NT, TM, TN, DK, BK = tiles
for tid in (0, 1, 17):
    ty, tx = divmod(tid, c["CG"])
    keys = [(j // c["VN"]) * c["VN"] * c["CG"] + tx * c["VN"] + j % c["VN"] for j in range(TN)]
    cols = [(x // c["VD"]) * c["VD"] * c["CG"] + tx * c["VD"] + x % c["VD"] for x in range(c["TD"])]
    print(f"thread {tid:3d}: S rows {[ty * TM + i for i in range(TM)]}, keys {keys}; O columns {cols}")
fl = 2 * BM * BN * D
print(f"per key tile: {fl // NT} FMAs per thread, {(BM + 2 * BN) * D // NT} staged elements per thread")

# %% [markdown]
# ## The kernel
#
# `attn_numba/kernels/v3_flash.py`: `build(D, tiles, gh, ...)` is an lru_cached factory; every size
# (head dim, tiles, stacked heads `gh`) is a closure constant, so loops unroll and the per-thread
# patches (`cuda.local.array`) live in registers. All shared/global indices are cast to unsigned,
# which removes Numba's negative-index wraparound code from the inner loops. The S inner loop:

# %%
print(v3_flash.__doc__.split("Spec")[0])
src = inspect.getsource(v3_flash.build)
start = src.index("                for d0 in range(0, DK, UNROLL_S):")
print(src[start:src.index("            # ---- online softmax")])

# %% [markdown]
# ## Check it on the simulator
#
# The same code runs in the simulator with tiny tiles (`SIM_TILES`); GQA groups of 1, 2, 4 and 8
# (stacked heads), windows, causal, sq ≠ sk both ways, an odd head size (zero-padded columns),
# float16 and float32, varlen with empty sequences.

# %%
cases = [  # (batch, sq, sk, H, Hkv, D, dtype, window, causal)
    (1, 33, 33, 8, 1, 16, np.float16, (-1, -1), False),   # GQA 8
    (2, 17, 40, 4, 2, 16, np.float32, (6, 2), False),     # sq < sk, window
    (1, 40, 17, 4, 4, 24, np.float16, (-1, -1), True),    # sq > sk causal (empty rows), odd D
    (1, 25, 25, 4, 1, 16, np.float16, (8, 0), False),     # sliding window (W, 0)
] if SIM else [
    (1, 2048, 2048, 32, 8, 128, np.float16, (128, 128), False),
    (1, 2048, 2048, 32, 8, 128, np.float16, (128, 128), True),
    (1, 1025, 1025, 8, 2, 256, np.float16, (128, 0), False),
    (1, 513, 700, 4, 4, 80, np.float16, (0, 0), True),
]
for b, sq, sk, h, hkv, d, dt, win, causal in cases:
    q, k, v = testing.random_qkv(rng, b, sq, sk, h, hkv, d, dt)
    cmp = testing.check_mha_fwd(q, k, v, "flash", causal=causal, window_size=win)
    print(f"sq={sq} sk={sk} H={h}/{hkv} D={d} {np.dtype(dt).name} window={win} causal={causal}: "
          f"max err {cmp.max_err:.1e} <= {cmp.tol:.1e}")
q, k, v, cu_q, cu_k = testing.random_varlen(rng, [0, 11, 3, 0, 9], [5, 0, 13, 0, 9], 4, 1, 16)
c = testing.check_mha_varlen_fwd(q, k, v, cu_q, cu_k, "flash", window_size=(4, 2))
print(f"varlen with empty sequences, window (4, 2): max err {c.max_err:.1e} <= {c.tol:.1e}, "
      f"lse err {c.lse_max_err:.1e}")

# %% [markdown]
# ## The PTX: no local memory
#
# The simulator runs Python, so here the kernel is also compiled for real, for sm_90, with
# `numba.cuda.compile_ptx` in a subprocess with the simulator off (no GPU needed): local-memory
# instructions, 128-bit shared loads, FMAs, float64 instructions.

# %%
import subprocess, sys
prog = '''
import re, numpy as np
from numba import cuda
from attn_numba.kernels import v3_flash as v3
for label, fn, sig in v3.compile_targets(128, np.float16, gh=4):
    ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0))
    n = [len(re.findall(pat, ptx)) for pat in
         (r"(?:ld|st)\\.local", r"ld\\.shared\\.v4", r"fma\\.rn\\.f32", r"\\.f64\\b")]
    print(f"{label}: {n[0]} ld/st.local, {n[1]} ld.shared.v4, {n[2]} fma.f32, {n[3]} f64 "
          "instructions")
'''
try:
    res = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"), cwd="..")
    print(res.stdout or res.stderr[-1500:])
except Exception as exc:
    print("PTX compilation not available here:", exc)


# %% [markdown]
# ## The development run on the H100 (run 1, history)
#
# From `results/h100/v2_v3_dev.json`. **These numbers were measured with the first version of
# v3** (commit 8d54387: 128 threads, 8 x 4 S patch, 8 x 8 O patch, one shared buffer, per-element
# bounds checks); the kernel has been reworked since (see below); the reworked kernel's NVBench
# times follow in the next section. v1 and v2 are from the same run.

# %%
def load_json(*parts):
    """A committed results file; prints its source (device, date, file)."""
    return sources.load_json(os.path.join(RESULTS, *parts))

run = load_json("h100", "v2_v3_dev.json")
if run:
    print("versions:", sources.versions_text(run["versions"]))
    print(f"measured code: v3 at commit {run['code']['v3_flash_py_at']} (run 1, since reworked: "
          "its NVBench times follow below)")
    ceiling = run["fp32_matmul_ceiling"]["tflops"]
    print(f"fp32 matmul ceiling, TF32 off, same run: {ceiling:.1f} TFLOP/s")
    times = {(r["kernel"], r["seq_len"], r["causal"]): r for r in run["timings"] if "time_s" in r}
    print(f"\n{'seq_len':>7} {'causal':>6} {'v1 naive':>11} {'v2 tiled':>10} {'v3 flash':>10} {'TFLOP/s':>8} {'% ceil':>7} {'v1/v3':>6}")
    for S in (512, 1024, 2048, 4096, 8192):
        for c in (0, 1):
            n, t, f = (times.get((name, S, c)) for name in ("naive", "tiled", "flash"))
            if n and t and f:
                print(f"{S:>7} {c:>6} {n['time_s']*1e3:9.3f}ms {t['time_s']*1e3:8.3f}ms {f['time_s']*1e3:8.3f}ms "
                      f"{f['tflops']:8.2f} {100*f['tflops']/ceiling:6.1f}% {n['time_s']/f['time_s']:6.0f}x")
    for c in (0, 1):
        f8, f2 = times.get(("flash", 8192, c)), times.get(("flash", 2048, c))
        if f8 and f2:
            print(f"causal={c}: t(8192)/t(2048) = {f8['time_s']/f2['time_s']:.2f}")
    print("\nrun-1 tile sweep, tiles BM/BN/NT/TM/TN/DK/BK (seq_len 8192, ms):")
    for r in run.get("v3_sweep", []):
        if "t_8192_c0" in r:
            t = r["tiles"]
            print(f"  {'/'.join(map(str, t.values()))}: causal 0 {r['t_8192_c0']*1e3:.3f}  causal 1 {r['t_8192_c1']*1e3:.3f}  "
                  f"(checked: {r['check_c0']['ok'] and r['check_c1']['ok']})")

# %% [markdown]
# ## The current kernel in the full NVBench grid
#
# `attn-numba bench` (NVBench cold GPU time: L2 flushed before each sample, notebook 05) measured
# every kernel side by side in one run, with the ceilings measured in the same run: the newest
# committed GPU, `results/h200/summary.json` when it exists, else `results/h100/summary.json`.
# Nsight Compute on the same code at 8192 tokens (H100): `results/h100/ncu/summary.txt`.

# %%
summ_path, summ = sources.load_summary()
SRC = sources.source_text(summ, summ_path)
fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
c32 = summ["ceilings"].get("fp32_matmul_tflops_no_tf32")
for kname in ("naive", "tiled", "flash", "sdpa"):
    for c, ls in ((0, "-"), (1, "--")):
        pts = sorted((r["seq_len"], r["gpu_time_s"], r["tflops"]) for r in summ["records"]
                     if r["kernel"] == kname and r["causal"] == c and r.get("gpu_time_s")
                     and r["seq_len"] <= 8192)
        if not pts:
            continue
        line, = axes[0].plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], "o" + ls,
                             label=f"{kname}, causal={c}")
        if kname != "sdpa" and c32:
            axes[1].plot([p[0] for p in pts], [p[2] / c32 for p in pts], "o" + ls,
                         color=line.get_color(), label=f"{kname}, causal={c}")
for ax in axes:
    ax.set_xscale("log", base=2); ax.set_yscale("log"); ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("seq_len (tokens)"); ax.legend(fontsize=6, loc="lower right")
axes[0].set_ylabel(f"ms per call, {summ['device']}")
axes[1].set_ylabel("fraction of fp32 matmul rate (TF32 off, same run)")
sources.show(fig, SRC)

# %%
if summ:
    ceil32 = summ["ceilings"]["fp32_matmul_tflops_no_tf32"]
    print(summ["device"], "|", summ["date"], f"| fp32 TF32-off ceiling {ceil32:.1f} TFLOP/s")
    rec = {(r["kernel"], r["seq_len"], r["causal"]): r for r in summ["records"]}
    print(f"{'seq_len':>7} {'causal':>6} {'naive':>10} {'tiled':>9} {'flash':>9} {'TFLOP/s':>8} {'% ceil':>7} {'SDPA':>9}")
    for c in (0, 1):
        for S in (512, 1024, 2048, 4096, 8192):
            n, t, f, sd = (rec.get((k, S, c)) for k in ("naive", "tiled", "flash", "sdpa"))
            if n and t and f:
                print(f"{S:>7} {c:>6} {n['gpu_time_s']*1e3:8.2f}ms {t['gpu_time_s']*1e3:7.3f}ms "
                      f"{f['gpu_time_s']*1e3:7.3f}ms {f['tflops']:8.2f} {100*f['tflops']/ceil32:6.1f}% "
                      + (f"{sd['gpu_time_s']*1e3:7.3f}ms" if sd else ""))
ncu_path = os.path.join(RESULTS, "h100", "ncu", "summary.txt")
if os.path.exists(ncu_path):
    print("\nsource: Nsight Compute on the NVIDIA H100 80GB HBM3,", sources.display_path(ncu_path))
    print(open(ncu_path).read())

# %% [markdown]
# ## The gap to the ceiling, from registers, spills and instruction mix
#
# The run-1 register report for v3 is empty (a script bug), so the resources below come from
# `ptxas -v` and `nvdisasm` on the CPU (`scripts/ptxas_v2_v3.py`, sm_90), which agree with the
# device report where both exist (v2: 116 registers in both). Inner loops are listed as
# (instructions, FFMA, shared loads) per iteration.

# %%
px = load_json("cpu", "ptxas_v2_v3.json")
if px:
    print(px["ptxas"], "|", px["date"])
    for r in px["rows"]:
        if r["kernel"].startswith("flash") and r.get("head_size") == 128:
            loops = "; ".join(f"{l['instructions']}/{l['ffma']}/{l['lds']}" for l in r.get("inner_loops", [])[:2])
            print(f"{r['kernel'][:75]:75s} regs {r['regs_per_thread']:3d}  spill st/ld "
                  f"{r['spill_store_bytes']}/{r['spill_load_bytes']} B  smem {r['shared_bytes']} B  loops {loops}")

# %%
# band utilisation of the default tiles: useful (query, key) pairs / pairs computed in visited tiles
BQ = BM // v3_flash.stacked_heads(4, tiles)
def band_util(S, left, right, BQ=BQ, BN=BN):
    computed = 0
    for q0 in range(0, S, BQ):
        q1 = min(S, q0 + BQ) - 1
        lo = max(0, q0 - left); hi = min(S - 1, q1 + right)
        computed += math.ceil((hi - lo + 1) / BN) * BN * (q1 - q0 + 1)
    return count_pairs([S], [S], left, right) / computed
for c in (0, 1):
    print(f"causal={c}: band utilisation {band_util(8192, 128, 0 if c else 128):.2f}")
if run and px:
    f = times.get(("flash", 8192, 0))
    r1 = next(r for r in px["rows"] if r.get("run1"))
    print(f"run 1 at 8192: {f['time_s']*1e3:.3f} ms = {f['tflops']:.1f} TFLOP/s = "
          f"{100 * f['tflops'] / ceiling:.0f}% of the fp32 matmul ceiling; that kernel: "
          f"{r1['regs_per_thread']} registers, spills {r1['spill_store_bytes']}/{r1['spill_load_bytes']} B "
          f"-> {65536 // (r1['regs_per_thread'] * 128)} blocks of 128 threads per SM")

# %% [markdown]
# Reading these numbers:
#
# * **Run 1**: the inner loops were already dense (the FFMA share of the loop bodies above), but
#   the kernel used the whole register file (2 blocks = 8 warps per SM, with spills), had 25
#   barriers per key tile (2 per staging chunk), spent about a third of the S phase in staging
#   code between barriers (64-bit predicated index arithmetic per element), and left the first
#   global loads of every tile exposed.
# * **Band utilisation** (printed above): only that fraction of the computed scores is inside the
#   window; the FLOP rate counts the exact window only.
# * **Current kernel**: compile-time head stacking, one staging row per thread and no
#   per-element checks, global loads one chunk ahead across phases and tiles, two staging
#   buffers (13 barriers per tile instead of 25). In the H100's NVBench grid it ran at the same
#   speed as run 1 (`notes/perf_notes.md`), and Nsight Compute (H100) still shows 255 registers and 12.5% theoretical
#   occupancy: the rework removed spills and barriers but not the register pressure that caps
#   occupancy. A 256-thread shape with 4x4 patches was 7-11% faster with a warm L2 and 11-14%
#   slower under NVBench's cold measurement (`notes/perf_notes.md`), so the default stays.
