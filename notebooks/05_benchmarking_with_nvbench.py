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
# # 05: benchmarking with NVBench
#
# Notebooks 01 to 04 built four kernels and checked them against a float64 reference. This
# notebook is about **measuring** them: the NVBench benchmark `run_mha_fwd` that
# `attn-numba bench` runs, the same benchmark the user's A30 log came from. It is the bridge to
# notebook 06, which reads that log: to see what is wrong with a measurement, we first need to
# know what a right one looks like.
#
# * what the benchmark is made of (`attn_numba/bench/`), its axes and its summary columns;
# * the three times NVBench reports: **cold GPU**, **cold CPU** and **batch GPU**, and what the
#   **blocking kernel** does to them;
# * reading `summary.json`, the flat file every figure is drawn from, and drawing the figures.
#
# No GPU is needed: the measured numbers are read from the committed results
# (`results/h200/summary.json` when it exists, else `results/h100/summary.json`); every printed
# number and figure names its device, date and file (`source:` lines).

# %%
import json, os, subprocess, sys, tempfile
from pathlib import Path
import numpy as np
import matplotlib.pyplot as plt
import attn_numba
from attn_numba import sources, plots
from attn_numba.bench import grid as G, summary as S, nvbench_def
SIM = attn_numba.on_simulator()
print("on the CUDA simulator" if SIM else "on a GPU", "| kernels of this build:",
      ", ".join(attn_numba.available_kernels()))
SUMMARY_PATH, DOC = sources.load_summary()
SRC = sources.source_text(DOC, SUMMARY_PATH)

# %% [markdown]
# ## The benchmark as built
#
# | module | what it does |
# |---|---|
# | `bench/grid.py` | the axes (the log's grid, `--quick`, `--long`), FLOP and byte counts per config |
# | `bench/cases.py` | one `Case` per (kernel, config): inputs, the check against the reference, one launch on a given stream; the PyTorch peers (FlexAttention, SDPA) |
# | `bench/nvbench_def.py` | the NVBench benchmark `run_mha_fwd`: axes, summary columns, check, launch mode, `state.exec` |
# | `bench/ceilings.py` | copy bandwidth and matmul rates measured in the same run |
# | `bench/summary.py` | NVBench's JSON → the flat `summary.json` |
# | `bench/cli.py` | `attn-numba bench` |
#
# ### Axes
#
# NVBench runs the cartesian product of its axes; each point is a *state*. The integer axes are
# the log's (same names, same order), plus a string axis `Kernel` over this build's kernels and
# the two PyTorch peers. `--quick` keeps two sequence lengths, `--long` is the long-sequence
# sweep (its own kernels, merged into the same `summary.json`).

# %%
print("integer axes:", ", ".join(G.INT_AXES))
for name, grid in (("default (the A30 log's grid)", G.DEFAULT_GRID),
                   ("--quick", G.make_grid(**G.QUICK_OVERRIDES)),
                   ("--long", G.make_grid(**G.LONG_OVERRIDES))):
    n = len(list(G.iter_configs(grid)))
    print(f"{name:<30} seq_len {grid['seq_len']}, causal {grid['causal']}: {n} configs")
print("Kernel axis: package kernels", ", ".join(attn_numba.available_kernels()), "+ peers",
      ", ".join(G.PEERS))
print("--long kernels:", ", ".join(G.long_kernels(attn_numba.available_kernels())))

# %% [markdown]
# ### Summary columns
#
# For every state the benchmark adds the log's columns (tensor sizes, tokens, FLOPs, memory) and
# declares the bytes it must read and write, so that NVBench can print a bandwidth. `Est. FLOPS`
# here is the **exact windowed** count (4·D FLOPs per (query, key, head) pair inside the
# window); the log's column was the dense `2·S²·H·D`, kept as `Dense FLOPS (log)`. Below,
# `add_columns` is called on a stand-in for NVBench's `State` that records the calls (no GPU
# and no `cuda.bench` needed):

# %%
class RecordingState:
    def __init__(self):
        self.calls = []
    def __getattr__(self, name):
        return lambda *a: self.calls.append((name, a))

for S_ in (512, 8192, 524288):
    st = RecordingState()
    nvbench_def.add_columns(st, G.Config(1, S_, 32, 8, 128, 128, 128, 0))
    print(f"seq_len {S_}:")
    for name, a in st.calls:
        print(f"   {name}{a}")

# %% [markdown]
# ## What one state does
#
# `run_mha_fwd(state)` in `bench/nvbench_def.py`:
#
# 1. builds the case (random q, k, v for the config, shared by every kernel of the config);
# 2. adds the columns above;
# 3. runs the call **once, outside the timed region**, on NVBench's stream and checks a few
#    blocks of rows against the float64 reference: this also compiles and warms the kernel up.
#    A wrong package kernel is skipped, not timed;
# 4. once per kernel, probes that a launch returns without waiting for the stream
#    (`launch_is_async`, next section);
# 5. hands the launch to `state.exec`, inside `count_compiles()`: a Numba compilation inside the
#    timed region, the log's pathology, is flagged in the record's `exec_mode`;
# 6. afterwards measures `call_time_s` (`attn_numba/bench/calltime.py`): the median time per
#    call of the *public* function called back to back, what a user's loop sees.
#
# ## Cold, batch, CPU: three times per state
#
# * **cold GPU time**: NVBench flushes the L2 cache, then times *one* launch with CUDA events on
#   the stream, and repeats until the noise is low enough (`--max-noise`) or the time runs out
#   (`--timeout`). This is `gpu_time_s` in `summary.json`, the time every figure shows.
# * **cold CPU time**: the host wall time of the same measurement (`cpu_time_s`). When it is far
#   above the GPU time, the host work of a call (Python, argument checks, allocation) is longer
#   than the kernel.
# * **batch GPU time**: many launches back to back without flushing or synchronising, total
#   time divided by their number (`batch_gpu_time_s`): a warm L2, and the launch overhead
#   overlapped with the previous kernel — unless the host is slower than the GPU, in which case
#   the batch time is the host's time per call.
#
# ### The blocking kernel
#
# Before a cold measurement NVBench enqueues a small **blocking kernel** that spins on the GPU
# until the host releases it. The launcher (our Python call) runs while the stream is held:
# everything it enqueues queues up behind the spinning kernel, then the host releases it and
# the CUDA events time only the GPU work. So **host overhead is hidden from cold GPU time** by
# design, and shows up in the CPU time instead.
#
# The other side: a launcher that *waits* for the stream (a synchronous copy, a `cuMemFree`,
# loading a freshly compiled module) waits for the spinning kernel, which waits for the host: a
# deadlock, which NVBench detects and reports. That is why `launch_is_async` probes each kernel
# first with a finite busy kernel on the stream (a kernel that waits is measured with
# `sync=True` instead, and says so), and why our launcher is `mha_fwd` on device arrays with
# `out=`/`lse_out=` buffers allocated once, outside the launcher: it allocates nothing, copies
# nothing and never synchronises. With that, every state, ours and the PyTorch peers', uses the
# plain `state.exec`: cold and batch. (The first H100 run, `results/h100`, used an earlier
# launcher that freed buffers and needed NVBench's manual timer, which forbids batch
# measurements: its Numba kernels have cold times only.) The `exec_mode` of every record says
# how it was measured:

# %%
recs = DOC["records"]
print("source:", SRC)
modes = {}
for r in recs:
    if r.get("exec_mode"):
        modes.setdefault(r["kernel"], set()).add(r["exec_mode"])
for k, m in modes.items():
    print(f"  {k:<14} {'; '.join(sorted(m))}")

# %% [markdown]
# The times side by side at the log's longest sequence. `call_time_s`, where the results have
# it, is the median time per call of the public `mha_fwd` (or the peer's call) on torch
# tensors, called back to back and timed with CUDA events outside NVBench.

# %%
def ms(x):
    return f"{x * 1e3:9.4f}" if x else "        -"

cols = [c for c in ("gpu_time_s", "cpu_time_s", "batch_gpu_time_s", "call_time_s")
        if any(r.get(c) for r in recs)]
print("source:", SRC)
print(f"seq_len 8192, window (128, 128), times in ms\n{'kernel':<14}{'causal':>7}"
      + "".join(f"{c:>19}" for c in cols))
sel = [r for r in recs if r["seq_len"] == 8192 and r.get("gpu_time_s")]
for r in sorted(sel, key=lambda r: (r["causal"], r["gpu_time_s"])):
    print(f"{r['kernel']:<14}{r['causal']:>7}" + "".join(f"{ms(r.get(c)):>19}" for c in cols))

# %%
fig, ax = plt.subplots(figsize=(8, 4))
sel0 = sorted([r for r in sel if r["causal"] == 0], key=lambda r: r["gpu_time_s"])
x = np.arange(len(sel0))
wbar = 0.8 / len(cols)
for i, c in enumerate(cols):
    ax.bar(x + i * wbar, [r.get(c) or 0 for r in sel0], wbar, label=c)
ax.set_xticks(x + wbar * (len(cols) - 1) / 2, [r["kernel"] for r in sel0])
ax.set_yscale("log"); ax.set_ylabel("seconds per call")
ax.set_title(f"cold GPU vs cold CPU vs batch: seq_len 8192, causal=0, {DOC['device']}", fontsize=10)
ax.legend(fontsize=8)
sources.show(fig, SRC)

# %% [markdown]
# ## Reading `summary.json`
#
# `attn-numba bench` converts NVBench's own JSON (every sample statistic of every state) into a
# flat file: one record per state with the axes, the times, the exact FLOPs and bytes, the rates,
# the correctness check and how it was measured; plus the device, the date, the versions and
# the ceilings measured in the same run. The schema is the docstring of `attn_numba.bench.summary`
# and `summary.validate` checks it:

# %%
print(S.__doc__.split("Schema")[1][:1600])
S.validate(DOC)
print("source:", SRC)
print("top level:")
for k, v in DOC.items():
    if k in ("records", "nvbench_runs"):
        v = f"{len(v)} entries"
    elif k == "backward":
        v = f"{len(v['records'])} records of `attn-numba bench --backward` (notebook 08)"
    elif k == "versions":
        v = sources.versions_text(v)
    elif isinstance(v, dict):
        v = ", ".join(f"{a}: {' '.join(map(str, b)) if isinstance(b, list) else b}"
                      for a, b in v.items())
    print(f"  {k}: {v}")
print("one record:", json.dumps(next(r for r in recs if r.get("gpu_time_s")), indent=1)[:1200])

# %% [markdown]
# Skipped states are records too, with the reason; nothing silently disappears (for example
# a peer that is not installed, or FlexAttention running out of memory in the long sweep):

# %%
skipped = [r for r in recs if r.get("skipped")]
print("source:", SRC)
print(f"{len(recs)} records, {len(skipped)} skipped")
for r in skipped[:12]:
    print(f"  {r['kernel']:<14} seq_len {r['seq_len']:>7} causal {r['causal']}: {r.get('skip_reason') or 'no reason recorded'}")

# %% [markdown]
# The ceilings are measured in the same run (PyTorch copy and matmuls timed with CUDA events),
# so the fractions in the figures compare a kernel with its own device:

# %%
print("source:", SRC)
print(json.dumps(DOC.get("ceilings"), indent=1))

# %% [markdown]
# ## Drawing the figures
#
# `attn_numba.plots` draws every figure from `summary.json` alone (`attn-numba plot`, or
# `attn-numba report`, which also writes `figures/REPORT.md`). The same functions, here into a
# temporary folder:

# %%
tmp = Path(tempfile.mkdtemp())
log_rows = plots.parse_log_times(plots.LOG_DEFAULT)
pngs = plots.plot_summary(DOC, SUMMARY_PATH.parent.name, tmp, log_rows)
print("source:", SRC)
print("drew:", ", ".join(p.name for p in pngs))
from IPython.display import Image, display
for p in pngs:
    if p.name.endswith(("time_vs_seqlen.png", "ceiling_fraction.png", "long_sequences.png")):
        display(Image(filename=str(p)))

# %% [markdown]
# ## Your own numbers from the records
#
# The records are plain dictionaries: any question is a few lines. For example the rate in
# exact windowed TFLOP/s against the sequence length, and how far each kernel's time grows from
# the shortest to the longest sequence of the grid (a kernel bound by its work grows as the
# work; the A30 log, notebook 06, does not):

# %%
fig, ax = plt.subplots(figsize=(7, 4))
print("source:", SRC)
for k in plots._kernels([r for r in recs if r.get("gpu_time_s")]):
    pts = sorted((r["seq_len"], r["tflops"]) for r in recs
                 if r["kernel"] == k and r["causal"] == 0 and r.get("tflops"))
    if pts:
        ax.plot(*zip(*pts), **plots._style(k))
        t = {r["seq_len"]: r["gpu_time_s"] for r in recs
             if r["kernel"] == k and r["causal"] == 0 and r.get("gpu_time_s")}
        lo, hi = min(t), max(t)
        print(f"  {k:<14} t({hi})/t({lo}) = {t[hi] / t[lo]:8.1f}   (tokens x{hi // lo})")
ax.set_xscale("log", base=2); ax.set_yscale("log")
ax.set_xlabel("sequence length (tokens)"); ax.set_ylabel("exact windowed TFLOP/s")
ax.set_title(f"achieved rate, causal=0, {DOC['device']}", fontsize=10); ax.legend(fontsize=7)
ax.grid(True, which="both", alpha=0.3)
sources.show(fig, SRC)

# %% [markdown]
# ## Running it
#
# ```bash
# attn-numba bench                      # the log's grid, every kernel and both peers (GPU)
# attn-numba bench --quick              # seq_len 1024 and 8192
# attn-numba bench --long               # 16k to 512k tokens, merged into the same summary.json
# attn-numba bench --kernels flash_tc --seq-lens 8192 --causal 0 --out results/mine
# attn-numba bench --simulate           # no GPU: the same cases and checks on the simulator
# attn-numba plot --results results --out figures
# ```
#
# Below: on a CPU, the whole pipeline (cases, checks, records, `summary.json`) runs on Numba's
# simulator at tiny sizes, timed with a wall clock, and the file is marked `simulated`; on a GPU,
# one real NVBench state of the tensor-core kernel runs (its output is NVBench's own log, the
# format of the user's A30 log).

# %%
work = Path(tempfile.mkdtemp())  # run in a scratch folder: --out is relative to it
env = dict(os.environ)
if SIM:
    cmd = [sys.executable, "-m", "attn_numba.cli", "bench", "--simulate", "--kernels", "flash",
           "--seq-lens", "24", "--out", "run05"]
else:
    cmd = [sys.executable, "-m", "attn_numba.cli", "bench", "--kernels", "flash_tc",
           "--seq-lens", "8192", "--causal", "0", "--no-ceilings", "--out", "run05"]
print("$ attn-numba", " ".join(cmd[3:]))
try:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=work)
    print(res.stdout[-3000:] or res.stderr[-3000:])
    if (work / "run05" / "summary.json").exists():
        doc = S.load(work / "run05" / "summary.json")
        print(f"source: {doc['device']}, {doc['date']}, run05/summary.json (this run)")
        for r in doc["records"]:
            c = r.get("check")
            state = "not checked" if not c else ("ok" if c["ok"] else "FAILED")
            print(f"  {r['kernel']} seq_len {r['seq_len']} causal {r['causal']}: "
                  f"{ms(r['gpu_time_s'])} ms, check {state}, mode {r.get('exec_mode') or 'none (simulated)'}")
except Exception as exc:
    print("could not run the benchmark here:", type(exc).__name__, exc)

# %% [markdown]
# Notebook 06 takes these tools to the user's log: the same benchmark, with a launcher that
# compiles inside the timed region, reproduces its signature.
