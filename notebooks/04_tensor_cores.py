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
# # 04: flash attention on the tensor cores (v4, `flash_tc`)
#
# v3 does the flash algorithm on CUDA cores in fp32. The tensor cores do fp16/bf16 matrix
# products many times faster, but Numba has no tensor-core intrinsics. v4 reaches them through
# **inline PTX**: `attn_numba/kernels/ptx.py` defines one Numba intrinsic per instruction
# (`mma.sync.aligned.m16n8k16`, `ldmatrix`, `cp.async`, `cvt` packs, `ex2.approx`), each
# emitting a single `llvmlite` `InlineAsm` call. The kernel stays plain Numba: it compiles with
# `cache=True`, and `numba.cuda.compile_ptx` shows the instructions on a machine without a GPU.
# Its structure is FlashAttention-2's: K/V tiles copied global → shared with 16-byte `cp.async`
# (V of tile j in flight while S = Q K_jᵀ and the softmax run, K of tile j+1 in flight during
# O += P V_j), fragments loaded with `ldmatrix`, Q kept in registers, P packed from the S
# accumulators straight into A fragments.
#
# This notebook runs on a CPU: the fragment layouts, `ldmatrix`, the mma and a lane-by-lane
# NumPy emulation of the whole kernel run anywhere; the GPU check is skipped without one; the
# measured speeds are read from the committed results, each with its `source:` (device, date,
# file).

# %%
import glob, inspect, json, os
import numpy as np
import attn_numba
from attn_numba.kernels import ptx, v4_layout as L, v4_flash_tc as v4
from attn_numba.kernels.v4_emulation import emulate_flash_tc
from attn_numba.reference import mha_fwd_ref
from attn_numba.testing import compare
SIM = attn_numba.on_simulator()
print("on the CUDA simulator" if SIM else "on a GPU")

# %% [markdown]
# ## One warp, one mma: who holds what
#
# `mma.m16n8k16` multiplies a 16x16 fp16 tile A by a 16x8 tile B into a 16x8 fp32 tile C,
# spread over the 32 lanes of a warp. Each lane holds 4 A registers and 2 B registers (two
# 16-bit values each) and 4 fp32 C values. With `g = lane // 4` and `t = lane % 4` (PTX ISA,
# "Matrix Fragments for mma.m16n8k16"), the index maps `a_frag_rc`, `b_frag_kn`, `c_frag_rc`
# of `attn_numba/kernels/v4_layout.py` give the element each register holds (the kernel
# compiles the very same functions as device functions). Below: `lane.register` of each
# element of A and of C.

# %%
A = np.empty((16, 16), object)
for lane in range(32):
    for reg in range(4):
        r, c = L.a_frag_rc(lane, reg)
        A[r, c] = A[r, c + 1] = f"{lane:2d}.{reg}"
print("A (16x16), lane.reg:")
for row in A:
    print(" ".join(row))
C = np.empty((16, 8), object)
for lane in range(32):
    for reg in range(4):
        r, c = L.c_frag_rc(lane, reg)
        C[r, c] = f"{lane:2d}.{reg}"
print("\nC (16x8), lane.reg:")
for row in C:
    print(" ".join(row))

# %% [markdown]
# The C layout of two adjacent n8 tiles of `S = Q Kᵀ` is exactly the A layout of one k16
# step of `P V` (`p_from_s`), so the probabilities go from the S accumulators to the A
# registers of the second product without touching shared memory. The emulator
# `v4_layout.mma_py` rebuilds A, B, C from per-lane registers with the layout written out from
# the PTX ISA (independently of the index maps) and multiplies:

# %%
rng = np.random.default_rng(0)
Am = rng.standard_normal((16, 16)).astype(np.float16)
Bm = rng.standard_normal((16, 8)).astype(np.float16)
a = np.zeros((32, 4), np.uint32); b = np.zeros((32, 2), np.uint32)
for lane in range(32):
    for reg in range(4):
        r, c = L.a_frag_rc(lane, reg)
        a[lane, reg] = L.pack_py(Am[r, c], Am[r, c + 1])
    for reg in range(2):
        kk, n = L.b_frag_kn(lane, reg)
        b[lane, reg] = L.pack_py(Bm[kk, n], Bm[kk + 1, n])
d = L.mma_py(a, b, np.zeros((32, 4), np.float32))
D = np.zeros((16, 8), np.float32)
for lane in range(32):
    for reg in range(4):
        r, c = L.c_frag_rc(lane, reg)
        D[r, c] = d[lane, reg]
print("max |D - A.B| =", np.abs(D - Am.astype(np.float32) @ Bm.astype(np.float32)).max())

# %% [markdown]
# ## ldmatrix: B fragments straight from shared memory
#
# K's rows are B's columns (S = Q Kᵀ), so one `ldmatrix.x4` over a K tile in shared memory gives
# the B registers of two n8 tiles at once; V goes through `ldmatrix.x4.trans`. Each lane gives
# the address of one 8-element row (`k_ldsm_rc`, `v_ldsm_rc`); the emulator `ldmatrix_py`
# follows the ISA's distribution of the 8x8 matrices over the lanes. Rows are padded by 16 bytes
# so the 8 rows one `ldmatrix` reads fall into 8 different bank groups. Check that both loads
# give exactly the B fragments the mma expects:

# %%
tile = rng.integers(0, 2**16, size=(64, 128 + v4.ROW_PAD), dtype=np.uint16)
bad = 0
for trans in (False, True):
    for step in range(2):
        for pair in range(2):
            if trans:
                regs = L.ldmatrix_py(tile, lambda ln: L.v_ldsm_rc(ln, step, pair), 4, True)
            else:
                regs = L.ldmatrix_py(tile, lambda ln: L.k_ldsm_rc(ln, pair, step), 4)
            for j in range(2):
                nt = 2 * pair + j
                for lane in range(32):
                    for reg in range(2):
                        kk, n = L.b_frag_kn(lane, reg)
                        want = ([tile[16 * step + kk + e, 8 * nt + n] for e in (0, 1)] if trans else
                                [tile[8 * nt + n, 16 * step + kk + e] for e in (0, 1)])
                        word = int(regs[lane, 2 * j + reg])
                        bad += [word & 0xFFFF, word >> 16] != [int(w) for w in want]
print("ldmatrix (K) and ldmatrix.trans (V) registers that differ from the mma's B fragments:", bad)

# %% [markdown]
# ## The whole kernel, emulated lane by lane
#
# `emulate_flash_tc` mirrors the kernel for one head of one sequence: K and V tiles in a
# padded uint16 "shared memory" (zero-filled past the sequence, as `cp.async` does), fragments
# loaded by the emulated `ldmatrix` at the kernel's own addresses, Q fragments in registers,
# Q·Kᵀ with the emulated mma, masking only on tiles not fully inside the band, the online
# softmax in base 2 with quad reductions, P packed to fp16 and P·V with the emulated mma.
# Compared with the float64 reference under the same tolerance rule as the GPU tests (a sliding
# window, sq != sk, GQA):

# %%
sq, sk, H, HKV, Dh, window = 70, 90, 4, 2, 32, (20, 5)
q = rng.standard_normal((1, sq, H, Dh)).astype(np.float16)
k = rng.standard_normal((1, sk, HKV, Dh)).astype(np.float16)
v = rng.standard_normal((1, sk, HKV, Dh)).astype(np.float16)
head = 3
out, lse = emulate_flash_tc(q[0], k[0], v[0], 1 / np.sqrt(Dh), *window, head, head // (H // HKV),
                            32, 2)
ref, ref_lse = mha_fwd_ref(q, k, v, window_size=window)
lowp, _ = mha_fwd_ref(q, k, v, window_size=window, p_dtype=np.float16)
c = compare(out, lse, ref[0, :, head], ref_lse[0, head],
            lowp.astype(np.float16).astype(np.float64)[0, :, head], np.float16)
print(f"emulated flash_tc, head {head}: max err {c.max_err:.1e} <= {c.tol:.1e}, lse err "
      f"{c.lse_max_err:.1e}: {'ok' if c.ok else 'FAIL'}")

# %% [markdown]
# ## The instructions
#
# Each intrinsic of `ptx.py` is one PTX template and its operand constraints; for instance the
# mma (`{t}` is `f16` or `bf16`):

# %%
print(ptx._MMA)
print(ptx.__doc__.split("Instructions (")[1].split("Instructions that")[0])

# %% [markdown]
# Compiled for sm_90 on this CPU (`numba.cuda.compile_ptx` in a subprocess with the simulator
# off; no GPU needed): the instructions are in the PTX, and there is no local memory:

# %%
import subprocess, sys
prog = '''
import re, numpy as np
from numba import cuda
from attn_numba.kernels import v4_flash_tc as v4
for label, fn, sig in v4.compile_targets(128, np.float16, heads=(4,)):
    ptx_text, _ = cuda.compile_ptx(fn, sig, cc=(9, 0))
    print(label + ": " + ", ".join(f"{len(re.findall(pat, ptx_text))} {name}" for name, pat in (
        ("mma.sync", r"mma\\.sync"), ("ldmatrix", r"ldmatrix\\."), ("cp.async", r"cp\\.async\\.cg"),
        ("ex2.approx", r"ex2\\.approx"), ("ld/st.local", r"(?:ld|st)\\.local"))))
'''
try:
    res = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"), cwd="..")
    print(res.stdout or res.stderr[-1500:])
except Exception as exc:
    print("PTX compilation not available here:", exc)

# %% [markdown]
# ## The kernel
#
# `attn_numba/kernels/v4_flash_tc.py`, `build(Config(head_size, dtype, heads, block_n))`: 4 warps per block,
# 16 query positions per warp; with GQA a block covers `heads` query heads of one group so that
# each staged K/V tile serves all of them. The key loop:

# %%
src = inspect.getsource(v4.build)
start = src.index("        for n0 in range(")
print(src[start:src.index("\n", src.index("        _finish("))])

# %% [markdown]
# ## On a GPU: check it (skipped on a CPU)

# %%
if SIM or "flash_tc" not in attn_numba.available_kernels():
    print("no GPU here: skipping the GPU check (tests/test_gpu.py is the full suite)")
else:
    from attn_numba.testing import check_mha_fwd, random_qkv
    q, k, v = random_qkv(rng, 1, 1025, 1025, 32, 8, 128, np.float16)
    c = check_mha_fwd(q, k, v, "flash_tc", window_size=(128, 128))
    print(f"flash_tc, 1025 tokens, 32/8 heads, D=128, window (128, 128): max err {c.max_err:.1e} "
          f"<= {c.tol:.1e}, lse err {c.lse_max_err:.1e}: {'ok' if c.ok else 'FAIL'}")

# %% [markdown]
# ## Measured in the NVBench grid
#
# `attn-numba bench` (NVBench cold GPU time, notebook 05) on the newest committed GPU:
# `results/h200/summary.json` when it exists, else `results/h100/summary.json`. v4 next to v3
# and `torch.compile`d FlexAttention with a sliding-window block mask, all in the same run.

# %%
import matplotlib.pyplot as plt
from attn_numba import plots, sources
from attn_numba.bench.grid import is_long
S_PATH, S_DOC = sources.load_summary()
S_SRC = sources.source_text(S_DOC, S_PATH)
grid = [r for r in S_DOC["records"] if r.get("gpu_time_s") and not is_long(r["seq_len"])]
show_k = [k for k in ("flash", "flash_tc", "flash_wgmma", "flexattention") if any(r["kernel"] == k for r in grid)]
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for causal, ax in zip((0, 1), axes):
    for kname in show_k:
        pts = sorted((r["seq_len"], r["gpu_time_s"] * 1e3) for r in grid
                     if r["kernel"] == kname and r["causal"] == causal)
        st = plots._style(kname)
        ax.plot(*zip(*pts), **st)
    ax.set_xscale("log", base=2); ax.set_yscale("log"); ax.grid(True, which="both", alpha=0.3)
    ax.set(xlabel="seq_len (tokens)", title=f"causal={causal}")
axes[0].set_ylabel(f"ms per call, {S_DOC['device']}"); axes[0].legend(fontsize=8)
sources.show(fig, S_SRC)
flex = {(r["seq_len"], r["causal"]): r["gpu_time_s"] for r in grid if r["kernel"] == "flexattention"}
fp16 = (S_DOC.get("ceilings") or {}).get("fp16_matmul_tflops")
print(f"{'kernel':<14} {'S':>5} {'causal':>6} {'ms':>9} {'TFLOP/s':>8} {'% fp16 mm':>9} {'x Flex':>7}")
for r in sorted((r for r in grid if r["kernel"] in ("flash_tc", "flash_wgmma")),
                key=lambda r: (r["kernel"], r["causal"], r["seq_len"])):
    fx = flex.get((r["seq_len"], r["causal"]))
    print(f"{r['kernel']:<14} {r['seq_len']:5d} {r['causal']:6d} {r['gpu_time_s']*1e3:9.4f} {r['tflops']:8.1f} "
          f"{100 * r['tflops'] / fp16 if fp16 else float('nan'):9.1f} {r['gpu_time_s'] / fx if fx else float('nan'):7.2f}")

# %% [markdown]
# ## Long sequences
#
# The window keeps the work linear in the sequence length, so a kernel's time should grow
# linearly far beyond the log's 8192 tokens. `attn-numba bench --long` measures 16k to 512k
# tokens (same heads and window) for the tensor-core kernels and FlexAttention; a state that
# cannot run (out of memory, for instance) is recorded as skipped with its reason.

# %%
long_recs = [r for r in S_DOC["records"] if is_long(r["seq_len"])]
if not long_recs:
    print(f"{sources.display_path(S_PATH)} has no long-sequence sweep yet (attn-numba bench --long)")
else:
    import tempfile
    from IPython.display import Image, display
    pngs = plots.plot_summary(S_DOC, S_PATH.parent.name, tempfile.mkdtemp(), [])
    print("source:", S_SRC)
    display(Image(filename=str(pngs[-1])))
    for r in sorted(long_recs, key=lambda r: (r["kernel"], r["causal"], r["seq_len"])):
        t = f"{r['gpu_time_s'] * 1e3:9.3f} ms" if r.get("gpu_time_s") else f"skipped: {r.get('skip_reason')}"
        print(f"  {r['kernel']:<14} {r['seq_len']:>7} causal {r['causal']}: {t}")

# %% [markdown]
# ## The development run on the H100 (history)
#
# `results/h100/v4_dev.json`, written by the development script `gpu_v4.py` (removed since; see
# `notes/scripts_moved.md`) on the H100 with the first version of v4: the log's grid, v4 (4 heads
# per block and 1 head per block), v3 and FlexAttention, timed in the same run with CUDA events
# (median, warm L2). The dashed line is the memory floor: the fewest bytes (read Q, K, V once,
# write O once) at 3.0 TB/s.

# %%
root = os.path.dirname(os.path.dirname(os.path.abspath(attn_numba.__file__)))
path = os.path.join(root, "results", "h100", "v4_dev.json")
if not os.path.exists(path):
    print("no results committed yet:", sources.display_path(path))
else:
    res = json.load(open(path))
    DEV_SRC = sources.source_text(res, path)
    print("source:", DEV_SRC)
    print("versions:", sources.versions_text(res["versions"]))
    ceiling = res["mma_ceiling"]["tflops"]
    print(f"mma.sync ceiling through the bridge, same run: {ceiling:.0f} TFLOP/s")
    v4_name = res["selected"]["variant"]          # the committed default configuration
    show = {v4_name: "v4 flash_tc", "flash_v3": "v3 flash", "flex": "FlexAttention"}
    def valid(r):
        return "time_s" in r and "invalid" not in r
    rows = [r for r in res["timings"] if valid(r) and r["kernel"] in show]
    # FlexAttention points this run could not measure validly come from the first run
    run1 = json.load(open(os.path.join(root, "results", "h100", "v4_dev_run1.json")))
    have = {(r["kernel"], r["seq_len"], r["causal"]) for r in rows}
    extra = [dict(r, from_run1=True) for r in run1["timings"]
             if r["kernel"] == "flex" and valid(r) and ("flex", r["seq_len"], r["causal"]) not in have]
    rows += extra
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for causal, ax in zip((0, 1), axes):
        sub = [r for r in rows if r["causal"] == causal]
        for kname, label in show.items():
            pts = sorted((r["seq_len"], r["time_s"] * 1e3) for r in sub if r["kernel"] == kname)
            if pts:
                ax.plot(*zip(*pts), "o-", label=label)
        floor = sorted({(r["seq_len"], r["memory_floor_s_at_3TBps"] * 1e3) for r in sub})
        ax.plot(*zip(*floor), "k--", label="memory floor (3.0 TB/s)")
        ax.set(xscale="log", yscale="log", xlabel="seq_len", title=f"causal={causal}")
        ax.set_xticks([512, 1024, 2048, 4096, 8192], labels=["512", "1k", "2k", "4k", "8k"])
    axes[0].set_ylabel("ms per call (H100, CUDA events, median)"); axes[0].legend(fontsize=8)
    sources.show(fig, DEV_SRC + " (FlexAttention points missing there: results/h100/v4_dev_run1.json)")
    flex_t = {(r["seq_len"], r["causal"]): r["time_s"] for r in rows if r["kernel"] == "flex"}
    print(f"{'kernel':<14} {'S':>5} {'causal':>6} {'ms':>9} {'TFLOP/s':>8} {'% mma':>6} {'x Flex':>7} {'x floor':>8}")
    for r in sorted(rows, key=lambda r: (r["causal"], r["seq_len"], r["kernel"])):
        fx = r["time_s"] / flex_t[(r["seq_len"], r["causal"])] if (r["seq_len"], r["causal"]) in flex_t else float("nan")
        mark = "  (flex from run 1)" if r.get("from_run1") else ""
        print(f"{show[r['kernel']]:<14} {r['seq_len']:5d} {r['causal']:6d} {r['time_s']*1e3:9.4f} "
              f"{r['tflops']:8.1f} {100*r['tflops']/ceiling:6.1f} {fx:7.2f} {r['x_memory_floor']:8.2f}{mark}")
    print("\nconfigurations tried in the same run (geometric mean time over the grid, ms):")
    for name, t in sorted(res["selected"]["geomean_s"].items(), key=lambda x: x[1]):
        print(f"  {name:<22} {t*1e3:.4f}")

# %% [markdown]
# What the numbers mean, and what was tried, is in `notes/v4_tensor_core.md`.
