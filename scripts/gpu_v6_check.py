"""First GPU run of flash_ws (v6, warp-specialised TMA kernel): correctness sweep, then timing
against flash_wgmma (v5) at the log's 10 configurations. Needs an sm_90 device.

    OUT=/some/dir timeout 330 python3 scripts/gpu_v6_check.py --budget 290

1. compile: every specialisation the sweep uses, in parallel processes (Numba's disk cache
   keeps them for the later stages).
2. sweep: flash_ws through its own ``plan()`` and ``scratch()`` (one launch: every block
   writes its own maps) against ``attn_numba.reference`` (float64) on fresh random inputs,
   outputs poisoned (NaN) first: fp16/bf16, D 64/128, GQA 1/4/8, sizes 1/97/1025,
   sq != sk, varlen with an empty sequence, windows (-1,-1), (0,0), (128,0), (128,128),
   causal; one call repeated on new buffers (the maps must follow the pointers); a sequence
   with queries and no keys; 10 cases of the overlapped loop, 45 of the other variants
   (without the consumers' turns and the lean softmax, which are the defaults; turns alone;
   BN 128), 44 of the persistent grid (one block per SM, and 3-7 blocks so that each takes
   many work tiles), 22 of the template maps as kernel parameters (``param_maps``), 96
   of the staged epilogue (``staged``; 64 of them with the overlapped loop, 48 of those
   with the defaults since run 49: BN 64, 3 stages) and 32 of the one-block-per-tile
   grid's defaults since run 53 (the maps from parameters, written by a second producer
   thread: ``split_maps``; and by thread 0 itself) and 22 batched calls (the lengths passed,
   no ``cu_seqlens`` read: ``uniform_lengths``), 30 with the maps prefetched
   (``prefetch_maps``), 22 of the staged epilogue's whole tiles by TMA stores (``tma_out``;
   the default in run 59 only) and 36 of the lazy softmax (``lazy_rescale``; 30 of them
   with keys scaled up along the sequence, so that the running maxima move often): 410 in
   all. One
   line per case. Cases run in a child process that is restarted after a fault
   or a hang (no progress for ``--stall`` s): the case it was on is recorded as failed and
   the sweep goes on with the next.
3. timing: 1 sequence, 32/8 heads, D=128, window (128,128), fp16, 512..8192 tokens, causal
   0/1, as a batched call (lse[b, h, i]): CUDA-graph replay (triton's ``do_bench_cudagraph``
   when torch and triton import, else CUDA events over 20 launches queued behind a sleeper
   kernel, median of 7), the flash_ws variants of ``TIMED`` (the defaults; the eager
   softmax; whole tiles by TMA stores) against v5, and
   FlashAttention-4 where ``flash_attn.cute`` imports (its output compared with ours first).

Everything goes to ``$OUT/v6.json`` (rewritten after every case); a table comes last.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OUT = os.environ.get("OUT", ".")
T0 = time.time()
RES = {}
WINDOWS = (((-1, -1), False), ((-1, -1), True), ((0, 0), False), ((128, 0), False),
           ((128, 128), False))
#: (dtype name, head size, GQA groups): 5 kernel specialisations (heads per tile 1 or 4)
SPECS = (("float16", 128, (1, 4, 8)), ("bfloat16", 128, (4,)), ("float16", 64, (8,)),
         ("bfloat16", 64, (1,)))
TOKENS = (512, 1024, 2048, 4096, 8192)


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save(path=None):
    with open(path or os.path.join(OUT, "v6.json"), "w") as f:
        json.dump(RES, f, indent=1, default=str)


def dtype_of(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def cases():
    out = []
    for dt, d, groups in SPECS:
        full = d == 128 and dt == "float16"
        for i, (window, causal) in enumerate(WINDOWS if full else WINDOWS[:2] + WINDOWS[3:4]):
            for j, s in enumerate((1, 97, 1025) if full else (97, 1025)):
                out.append(dict(dtype=dt, d=d, group=groups[(i + j) % len(groups)],
                                seq_q=[s], seq_k=[s], window=window, causal=causal))
        g0, g1 = groups[0], groups[-1]
        out += [dict(dtype=dt, d=d, group=g0, seq_q=[200], seq_k=[1100], window=(-1, -1),
                     causal=True),
                dict(dtype=dt, d=d, group=g1, seq_q=[300], seq_k=[77], window=(128, 128),
                     causal=False),
                dict(dtype=dt, d=d, group=g0, seq_q=[130, 0, 7, 513], seq_k=[64, 0, 300, 513],
                     window=(-1, -1), causal=True),
                dict(dtype=dt, d=d, group=g1, seq_q=[65, 0, 190], seq_k=[65, 5, 190],
                     window=(128, 0), causal=False)]
    out.append(dict(dtype="float16", d=128, group=4, seq_q=[97, 33], seq_k=[97, 40],
                    window=(-1, -1), causal=False, twice=True))
    out.append(dict(dtype="float16", d=128, group=8, seq_q=[30, 0, 5, 40],   # no keys: 0, -inf
                    seq_k=[40, 3, 0, 66], window=(20, 20), causal=False))
    # the overlapped consumer loop (opt-in, v6.OVERLAP): a subset
    for dt, d, g in (("float16", 128, 4), ("bfloat16", 64, 1)):
        for (window, causal), s in zip(WINDOWS[1:], (1025, 97, 1025, 1025)):
            out.append(dict(dtype=dt, d=d, group=g, seq_q=[s], seq_k=[s], window=window,
                            causal=causal, overlap=True))
        out.append(dict(dtype=dt, d=d, group=g, seq_q=[130, 0, 7, 513],
                        seq_k=[64, 0, 300, 513], window=(128, 0), causal=False, overlap=True))
    # without the consumers' turns and the lean softmax (v6.PINGPONG, v6.LEAN: the defaults,
    # which every case above runs), with the turns alone, and both with the overlapped loop
    # and BN 128
    for ov, bn, st, pp, lean in ((False, 64, 2, False, False), (False, 64, 2, True, False),
                                 (True, 64, 3, True, True), (True, 128, 2, True, True),
                                 (False, 128, 2, True, True)):
        for dt, d, g in (("float16", 128, 4), ("bfloat16", 64, 1)):
            for (window, causal), s in zip(WINDOWS[1:], (1025, 97, 1025, 1025)):
                out.append(dict(dtype=dt, d=d, group=g, seq_q=[s], seq_k=[s], window=window,
                                causal=causal, overlap=ov, pingpong=pp, block_n=bn,
                                stages=st, lean=lean))
        out.append(dict(dtype="float16", d=128, group=8, seq_q=[130, 0, 7, 513],
                        seq_k=[64, 0, 300, 513], window=(128, 0), causal=False, overlap=ov,
                        pingpong=pp, block_n=bn, stages=st, lean=lean))
    # the persistent grid: one block per SM, and 3 or 7 blocks (many work tiles per block:
    # Q reloads, the ring running on across work tiles, turns across work tiles)
    for blocks, ov, bn, st in ((None, False, 64, 2), (3, False, 64, 2), (7, True, 64, 3),
                               (5, False, 128, 2)):
        for dt, d, g in (("float16", 128, 4), ("bfloat16", 64, 1)):
            for (window, causal), s in zip(WINDOWS, (1025, 1025, 97, 1025, 1025)):
                out.append(dict(dtype=dt, d=d, group=g, seq_q=[s], seq_k=[s], window=window,
                                causal=causal, overlap=ov, block_n=bn, stages=st,
                                persistent=True, blocks=blocks))
        out.append(dict(dtype="float16", d=128, group=8, seq_q=[130, 0, 7, 513],
                        seq_k=[64, 0, 300, 513], window=(128, 0), causal=False, overlap=ov,
                        block_n=bn, stages=st, persistent=True, blocks=blocks))
    # the template maps as kernel parameters (param_maps, opt-in): one block per tile, and
    # the persistent grid with 5 blocks
    for pers, blocks in ((False, None), (True, 5)):
        for dt, d, g in (("float16", 128, 4), ("bfloat16", 64, 1)):
            for (window, causal), s in zip(WINDOWS, (1025, 1025, 97, 1025, 1025)):
                out.append(dict(dtype=dt, d=d, group=g, seq_q=[s], seq_k=[s], window=window,
                                causal=causal, block_n=128, persistent=pers, blocks=blocks,
                                param_maps=True))
        out.append(dict(dtype="float16", d=128, group=8, seq_q=[130, 0, 7, 513],
                        seq_k=[64, 0, 300, 513], window=(128, 0), causal=False, block_n=128,
                        persistent=pers, blocks=blocks, param_maps=True))
    # the staged epilogue (O through shared memory, 16-byte stores): one block per tile and
    # the persistent grid with 5 blocks (the O tile reused across work tiles), then with the
    # overlapped loop, the turns and the lean softmax; the last three are the module's
    # defaults since run 49 (BN 64, 3 stages) on each grid
    for pers, blocks, ov, bn, st in ((False, None, False, 128, 2), (True, 5, False, 128, 2),
                                     (True, 7, True, 128, 2), (False, None, True, 64, 3),
                                     (True, 7, True, 64, 3), (True, None, True, 64, 3)):
        for dt, d, g in (("float16", 128, 4), ("bfloat16", 64, 1), ("float16", 128, 2)):
            for (window, causal), s in zip(WINDOWS, (1025, 1025, 97, 1025, 1025)):
                out.append(dict(dtype=dt, d=d, group=g, seq_q=[s], seq_k=[s], window=window,
                                causal=causal, block_n=bn, stages=st, persistent=pers,
                                blocks=blocks, staged=True, overlap=ov))
        out.append(dict(dtype="float16", d=128, group=8, seq_q=[130, 0, 7, 513],
                        seq_k=[64, 0, 300, 513], window=(128, 0), causal=False, block_n=bn,
                        stages=st, persistent=pers, blocks=blocks, staged=True, overlap=ov))
    # the one-block-per-tile grid's defaults since run 53: the template maps as parameters,
    # written and released by thread 32 (split_maps), acquired by thread 0; then with thread
    # 0 writing them itself (param_maps alone)
    for split in (True, False):
        for dt, d, g in (("float16", 128, 4), ("bfloat16", 64, 1), ("float16", 128, 2)):
            for (window, causal), s in zip(WINDOWS, (1025, 1025, 97, 1025, 1025)):
                out.append(dict(dtype=dt, d=d, group=g, seq_q=[s], seq_k=[s], window=window,
                                causal=causal, block_n=64, stages=3, persistent=False,
                                staged=True, overlap=True, param_maps=True, split_maps=split))
        out.append(dict(dtype="float16", d=128, group=8, seq_q=[130, 0, 7, 513],
                        seq_k=[64, 0, 300, 513], window=(128, 0), causal=False, block_n=64,
                        stages=3, persistent=False, staged=True, overlap=True,
                        param_maps=True, split_maps=split))
    # the maps prefetched into the TMA unit's descriptor cache (prefetch_maps, opt-in since
    # run 57): the defaults of both grids otherwise
    for pers, blocks in ((False, None), (True, None), (True, 5)):
        for dt, d, g in (("float16", 128, 4), ("bfloat16", 64, 1)):
            for (window, causal), s in zip(WINDOWS, (1025, 1025, 97, 1025, 1025)):
                out.append(dict(dtype=dt, d=d, group=g, seq_q=[s], seq_k=[s], window=window,
                                causal=causal, block_n=64, stages=3, persistent=pers,
                                blocks=blocks, staged=True, overlap=True, param_maps=None,
                                prefetch_maps=True))
    # the staged epilogue's whole tiles by TMA stores (tma_out, opt-in since run 60: the
    # default in run 59 only), on both grids (7 blocks: many work tiles each)
    for pers, blocks in ((False, None), (True, 7)):
        for dt, d, g in (("float16", 128, 4), ("bfloat16", 64, 1)):
            for (window, causal), s in zip(WINDOWS, (1025, 1025, 97, 1025, 1025)):
                out.append(dict(dtype=dt, d=d, group=g, seq_q=[s], seq_k=[s], window=window,
                                causal=causal, block_n=64, stages=3, persistent=pers,
                                blocks=blocks, staged=True, overlap=True, param_maps=None,
                                tma_out=True))
        out.append(dict(dtype="float16", d=128, group=8, seq_q=[130, 0, 7, 513],
                        seq_k=[64, 0, 300, 513], window=(128, 0), causal=False, block_n=64,
                        stages=3, persistent=pers, blocks=blocks, staged=True, overlap=True,
                        param_maps=None, tma_out=True))
    # the lazy softmax (lazy_rescale: the default since run 60; the other cases keep the
    # eager one, as run 60 swept them): keys scaled up along the sequence (ramp) so that
    # the running maxima move past the threshold many times, and plain inputs; both grids
    # and both loops (the tile grid's plain loop is its default since run 62)
    for pers, blocks, ov in ((False, None, True), (True, 7, True), (False, None, False)):
        for dt, d, g in (("float16", 128, 4), ("bfloat16", 64, 1)):
            for (window, causal), s in zip(WINDOWS, (1025, 1025, 97, 1025, 1025)):
                out.append(dict(dtype=dt, d=d, group=g, seq_q=[s], seq_k=[s], window=window,
                                causal=causal, block_n=64, stages=3, persistent=pers,
                                blocks=blocks, staged=True, overlap=ov, param_maps=None,
                                lazy_rescale=True, ramp=6.0))
        out.append(dict(dtype="float16", d=128, group=8, seq_q=[130, 0, 7, 513],
                        seq_k=[64, 0, 300, 513], window=(128, 0), causal=False, block_n=64,
                        stages=3, persistent=pers, blocks=blocks, staged=True, overlap=ov,
                        param_maps=None, lazy_rescale=True, ramp=6.0))
        out.append(dict(dtype="float16", d=128, group=4, seq_q=[1025], seq_k=[1025],
                        window=(-1, -1), causal=True, block_n=64, stages=3, persistent=pers,
                        blocks=blocks, staged=True, overlap=ov, param_maps=None,
                        lazy_rescale=True))
    # batched calls (every sequence as long, lse[b, h, i]): the lengths passed as scalars,
    # no cu_seqlens read (uniform_lengths, the default since run 53); the tile grid's and
    # the persistent grid's defaults, sq != sk
    for pers in (False, True):
        for dt, d, g in (("float16", 128, 4), ("bfloat16", 64, 1)):
            for (window, causal), s in zip(WINDOWS, (1025, 300, 97, 1025, 600)):
                out.append(dict(dtype=dt, d=d, group=g, seq_q=[s, s], seq_k=[s, s],
                                window=window, causal=causal, block_n=64, stages=3,
                                persistent=pers, staged=True, overlap=True, param_maps=None,
                                batched=True))
        out.append(dict(dtype="float16", d=128, group=8, seq_q=[200] * 3, seq_k=[520] * 3,
                        window=(128, 0), causal=False, block_n=64, stages=3, persistent=pers,
                        staged=True, overlap=True, param_maps=None, batched=True))
    return out


#: plan options of a case (the defaults where a case names none; None: the module's)
OPTS = dict(overlap=False, pingpong=None, block_n=64, stages=2, lean=None, persistent=False,
            blocks=None, param_maps=False, staged=False, split_maps=None,
            uniform_lengths=None, prefetch_maps=False, tma_out=None, lazy_rescale=False)


def opts_of(c):
    """The case's plan options; pingpong and lean default to the module's defaults."""
    from attn_numba.kernels import v6_flash_ws as v6
    o = {k: c.get(k, v) for k, v in OPTS.items()}
    o["pingpong"] = v6.PINGPONG if o["pingpong"] is None else o["pingpong"]
    o["lean"] = v6.LEAN if o["lean"] is None else o["lean"]
    # the map options as built (precompile's spec): map_mode per grid
    o["param_maps"], o["split_maps"] = v6.map_mode(o["persistent"], o["param_maps"],
                                                   o["split_maps"])
    o["tma_out"] = v6._tma_out(o["staged"], o["tma_out"])   # only with the staged epilogue
    o["lazy_rescale"] = v6.LAZY_RESCALE if o["lazy_rescale"] is None else o["lazy_rescale"]
    return o


def problem_for(c):
    from attn_numba.problem import Problem
    left, right = c["window"]
    if c["causal"]:
        right = 0
    h = 2 * c["group"]
    return Problem(batch=len(c["seq_q"]), total_q=sum(c["seq_q"]), total_k=sum(c["seq_k"]),
                   max_seqlen_q=max(c["seq_q"]), max_seqlen_k=max(c["seq_k"]), num_heads=h,
                   num_kv_heads=2, head_size=c["d"], dtype=dtype_of(c["dtype"]),
                   softmax_scale=1.0 / math.sqrt(c["d"]), window_left=left,
                   window_right=right, causal=c["causal"], lse_batched=c.get("batched", False),
                   on_simulator=False)


def run_plans(mod, p, q, k, v, cu_q, cu_k, **kw):
    from numba import cuda
    from attn_numba import kernels
    arrays = dict(q=cuda.to_device(q.view(np.uint16)), k=cuda.to_device(k.view(np.uint16)),
                  v=cuda.to_device(v.view(np.uint16)),
                  out=cuda.to_device(np.full(q.shape, 0xFFFF, np.uint16)),   # NaN
                  lse=cuda.to_device(np.full((p.batch, p.num_heads, p.max_seqlen_q)
                                             if p.lse_batched else (1, p.num_heads, p.total_q),
                                             np.nan, np.float32)),
                  cu_seqlens_q=cuda.to_device(cu_q), cu_seqlens_k=cuda.to_device(cu_k))
    arrays.update(kernels.scratch_arrays(mod, p, **kw))
    kernels.launch_plans(mod.plan(p, **kw), arrays)
    cuda.synchronize()
    lse = arrays["lse"].copy_to_host()
    if p.lse_batched:   # lse[b, h, i] -> the varlen layout lse[0, h, b * seqlen + i]
        lse = lse.transpose(1, 0, 2).reshape(1, p.num_heads, p.total_q)
    return arrays["out"].copy_to_host().view(q.dtype), lse


def _fake_check(c, i):
    """V6_CHECK_FAKE=1 (a dry run of the orchestration, no GPU): case 3 hangs, case 5
    kills its process, case 7 fails."""
    if i == 3:
        time.sleep(3600)
    if i == 5:
        os._exit(3)
    return dict(err=0.0, tol=1.0, ok=i != 7)


def check(c, rng):
    from attn_numba.kernels import v6_flash_ws as v6
    from attn_numba.reference import mha_varlen_fwd_ref
    dt = dtype_of(c["dtype"])
    p = problem_for(c)
    cu_q = np.concatenate([[0], np.cumsum(c["seq_q"])]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(c["seq_k"])]).astype(np.int32)
    worst = None
    for _ in range(2 if c.get("twice") else 1):   # new inputs, new buffers, same plan
        q = rng.standard_normal((p.total_q, p.num_heads, c["d"])).astype(dt)
        k = rng.standard_normal((p.total_k, 2, c["d"]))
        if c.get("ramp"):   # scores that grow along the keys: the running maxima move often
            k *= 1 + c["ramp"] * np.linspace(0, 1, p.total_k)[:, None, None]
        k = k.astype(dt)
        v = rng.standard_normal((p.total_k, 2, c["d"])).astype(dt)
        out, lse = run_plans(v6, p, q, k, v, cu_q, cu_k, debug_waits=c.get("debug_waits", False),
                             **opts_of(c))
        kw = dict(causal=c["causal"], window_size=c["window"])
        ref, ref_lse = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, **kw)
        low, _ = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, p_dtype=dt, **kw)
        low = low.astype(dt).astype(np.float64)
        floor = 2e-3 if dt == np.float16 else 1.6e-2
        tol = 2 * float(np.max(np.abs(low - ref), initial=0)) + floor
        o = out.astype(np.float64)
        err = float(np.max(np.abs(o - ref), initial=0)) if np.isfinite(o).all() else math.nan
        ref_lse = np.asarray(ref_lse, np.float64).reshape(lse.shape)
        inf_ok = bool(np.array_equal(np.isneginf(lse), np.isneginf(ref_lse)) and
                      not np.isnan(lse).any())
        fin = np.isfinite(ref_lse)
        lse_err = float(np.max(np.abs(lse[fin] - ref_lse[fin]), initial=0))
        ok = bool(err <= tol and inf_ok and lse_err <= 1e-3 * max(1, np.abs(ref_lse[fin]).max(
            initial=0)))
        row = dict(err=err, tol=tol, lse_err=lse_err, lse_inf_ok=inf_ok, ok=ok)
        if worst is None or not ok:
            worst = row
    return worst


def sweep_child(start, path):
    """Body of the sweep process: cases from ``start``, one JSON line each to ``path``."""
    rng = np.random.default_rng(start)
    all_cases = cases()
    for i in range(start, len(all_cases)):
        with open(path, "a") as f:
            f.write(json.dumps(dict(i=i, started=True)) + "\n")
        try:
            row = (_fake_check(all_cases[i], i) if os.environ.get("V6_CHECK_FAKE") else
                   check(all_cases[i], rng))
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            row = dict(ok=False, error=f"{type(exc).__name__}: {exc}"[:600])
        with open(path, "a") as f:
            f.write(json.dumps(dict(i=i, **row)) + "\n")
        if "error" in row and "CUDA_ERROR" in row["error"]:
            return      # the context is lost: let the parent restart after this case


def _read_rows(path):
    """(finished rows by case index, indices of cases started)."""
    rows, started = {}, set()
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("started"):
                    started.add(r["i"])
                else:
                    rows[r["i"]] = r
    return rows, started


def sweep(stall, end):
    all_cases = cases()
    path = os.path.join(OUT, "v6_sweep_rows.jsonl")
    if os.path.exists(path):
        os.remove(path)
    rows, start = {}, 0
    while start < len(all_cases) and time.time() < end:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child",
                                 str(start)], stdout=sys.stdout, stderr=sys.stderr)
        last, n = time.time(), len(rows)
        while proc.poll() is None:
            time.sleep(0.5)
            rows, _ = _read_rows(path)
            if len(rows) != n:
                last, n = time.time(), len(rows)
            if time.time() - last > stall or time.time() > end:
                proc.kill()
                proc.wait()
                break
        rows, started = _read_rows(path)
        nxt = start
        while nxt in rows:
            nxt += 1
        if nxt < len(all_cases) and nxt in started:      # died or hung inside case nxt
            rows[nxt] = dict(i=nxt, ok=False, error=f"hang or fault (child exit "
                                                      f"{proc.returncode})")
            with open(path, "a") as f:
                f.write(json.dumps(rows[nxt]) + "\n")
            nxt += 1
        elif nxt < len(all_cases) and proc.returncode != 0:
            break                                         # died before starting a case
        start = nxt
    out = []
    for i, c in enumerate(all_cases):
        r = rows.get(i, dict(ok=False, error="not run (budget)"))
        out.append(dict(case=c, **{k: v for k, v in r.items() if k != "i"}))
        log(f"case {i:2d} {'ok  ' if r.get('ok') else 'FAIL'} {c['dtype']:8s} D={c['d']} "
            f"G={c['group']} sq={c['seq_q']} sk={c['seq_k']} w={c['window']} "
            f"causal={int(c['causal'])} err={r.get('err', '-')} tol={r.get('tol', '-')} "
            f"{r.get('error', '')}")
    RES["sweep"] = dict(passed=sum(r.get("ok", False) for r in out), total=len(out), rows=out)
    save()
    log(f"sweep: {RES['sweep']['passed']}/{len(out)} pass")


def compile_child(spec):
    """Compile one specialisation into Numba's disk cache; ``"v5"``:
    flash_wgmma's default D=128 fp16 kernel (timed against)."""
    from attn_numba.kernels import v5_flash_wgmma as v5
    from attn_numba.kernels import v6_flash_ws as v6
    from attn_numba.kernels.v5_flash_wgmma import opt_in_shared
    if spec == ("v5",):
        return opt_in_shared(v5.build(v5.Config(128, "float16", 4)), v5._signature(), 1024)
    d, kind, hb, bn, st, ov, pp, lean, pers, pm, sg, sp, pf, tma, lz, ready = spec
    kernel = v6.build(d, kind, hb, bn, st, ov, pingpong=pp, lean=lean, persistent=pers,
                      param_maps=pm, staged=sg, split_maps=sp, prefetch_maps=pf,
                      tma_out=tma, lazy_rescale=lz, maps_ready=ready)
    opt_in_shared(kernel, v6._signature(pers, pm), 1024)


def timed_spec(kw, persistent):
    """The compile spec of a ``TIMED`` variant at the log's shape on either grid (the
    module's defaults where ``kw`` names none, as ``v6.configure`` resolves them)."""
    from attn_numba.kernels import v6_flash_ws as v6
    bn = kw.get("block_n", v6.BLOCK_N[128])
    st = kw.get("stages", v6.STAGES[128])
    pm, split = v6.map_mode(bool(persistent), kw.get("param_maps"), kw.get("split_maps"))
    sg = v6._staged_fits(128, bn, st)
    return (128, "f16", 4, bn, st, v6.loop_mode(bool(persistent), kw.get("overlap")),
            kw.get("pingpong", v6.PINGPONG), kw.get("lean", v6.LEAN),
            bool(persistent), pm, sg, split, kw.get("prefetch_maps", v6.PREFETCH_MAPS),
            v6._tma_out(sg, kw.get("tma_out")), kw.get("lazy_rescale", v6.LAZY_RESCALE),
            bool(kw.get("maps_ready", False)))


def precompile(end, sweep_cases=True):
    from attn_numba.kernels.config import heads_per_block

    def spec(d, kind, hb, o):
        return (d, kind, hb, o["block_n"], o["stages"], o["overlap"], o["pingpong"],
                o["lean"], o["persistent"], o["param_maps"], o["staged"], o["split_maps"],
                o["prefetch_maps"], o["tma_out"], o["lazy_rescale"], False)
    specs = {spec(c["d"], "f16" if c["dtype"] == "float16" else "bf16",
                  heads_per_block(c["group"]), opts_of(c)) for c in cases()} \
        if sweep_cases else set()
    specs |= {timed_spec(kw, pers) for _, kw in timed() if kw is not None for pers in (0, 1)}
    specs = sorted(specs) + [("v5",)]
    procs = [(s, subprocess.Popen([sys.executable, os.path.abspath(__file__), "--compile",
                                   json.dumps(s)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)) for s in specs]
    res = {}
    for s, p in procs:
        try:
            o, _ = p.communicate(timeout=max(end - time.time(), 1))
            res[str(s)] = "ok" if p.returncode == 0 else o[-1500:]
        except subprocess.TimeoutExpired:
            p.kill()
            res[str(s)] = "timeout"
    RES["compile"] = dict(seconds=round(time.time() - T0, 1), specs=res)
    log("compile", res)
    save()


def diagnose(end):
    """The first case that hung or faulted, again with bounded waits that print the one
    that timed out (``debug_waits``): its output goes to RES["diagnose"]."""
    bad = [i for i, r in enumerate(RES.get("sweep", {}).get("rows", []))
           if "hang or fault" in r.get("error", "")]
    if not bad or time.time() > end - 10:
        return
    try:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--diagnose",
                            str(bad[0])], capture_output=True, text=True,
                           timeout=max(end - time.time(), 10))
        text = (r.stdout + r.stderr)[-6000:]
    except subprocess.TimeoutExpired as exc:
        text = "diagnose timed out\n" + str(exc.stdout or "")[-6000:]
    RES["diagnose"] = dict(case=bad[0], output=text)
    lines = [x for x in text.splitlines() if "timed out" in x or "diagnose" in x]
    log("diagnose case", bad[0], *lines[:20])
    save()


# --------------------------------------------------------------------------- timing

def _timer():
    """f(fn) -> ms per call: triton's do_bench_cudagraph, else CUDA events."""
    try:
        import torch
        from triton.testing import do_bench_cudagraph
        from numba import cuda

        def graph(fn):
            def on_torch_stream():
                fn(cuda.external_stream(torch.cuda.current_stream().cuda_stream))
            return float(do_bench_cudagraph(on_torch_stream, rep=100, return_mode="median"))
        return "do_bench_cudagraph (median)", graph
    except Exception:  # noqa: BLE001
        pass
    from numba import cuda

    @cuda.jit
    def sleeper(n):
        for _ in range(n):
            cuda.nanosleep(1000)

    def events(fn):
        s = cuda.stream()
        fn(s)
        s.synchronize()
        ts = []
        for _ in range(7):
            sleeper[1, 1, s](5000)
            e0, e1 = cuda.event(), cuda.event()
            e0.record(s)
            for _ in range(20):
                fn(s)
            e1.record(s)
            e1.synchronize()
            ts.append(cuda.event_elapsed_time(e0, e1) / 20)
        return float(np.median(ts))
    return "cuda events (sleeper-queued, 20 launches, median of 7)", events


#: (name, flash_ws plan options) timed at each configuration; flash_wgmma is v5's default
TIMED = (("flash_wgmma", None),
         ("flash_ws", {}),                                   # the module's defaults
         ("flash_ws_eager", dict(lazy_rescale=False)),       # run 60's defaults
         ("flash_ws_tma", dict(tma_out=True)),               # whole tiles by TMA stores
)


#: variants timed only when named in V6_TIMED (exploration: not the defaults' neighbours)
EXPLORE = (("flash_ws_run50", dict(param_maps=False, uniform_lengths=False,
                                   prefetch_maps=False, tma_out=False)),   # run 50's
           ("flash_ws_cuseq", dict(uniform_lengths=False)),    # cu_seqlens read
           ("flash_ws_bn128", dict(block_n=128, stages=2)),   # 128-key tiles in 2 stages
           ("flash_ws_s2", dict(stages=2)),
           ("flash_ws_prefetch", dict(prefetch_maps=True)),    # maps prefetched
           ("flash_ws_noprefetch", dict(prefetch_maps=False)),  # run 58's maps
           ("flash_ws_pp0", dict(pingpong=False)),             # no turns at the tensor cores
           ("flash_ws_ov0", dict(overlap=False)),              # the plain loop
           # an upper bound, not a kernel for real calls: the maps a defaults' call left in
           # the same scratch acquired, none written (maps written once per pointer set)
           ("flash_ws_ready", dict(maps_ready=True)))


def timed():
    """``TIMED``, or with ``V6_TIMED=name,...`` those of ``TIMED`` and ``EXPLORE`` named
    (flash_wgmma always first: the others' outputs are compared with its)."""
    names = os.environ.get("V6_TIMED")
    if not names:
        return TIMED
    pick = set(names.split(","))
    return (TIMED[0],) + tuple(x for x in TIMED[1:] + EXPLORE if x[0] in pick)


def tokens():
    """``TOKENS``, or ``V6_TOKENS=512,1024``."""
    got = os.environ.get("V6_TOKENS")
    return tuple(int(x) for x in got.split(",")) if got else TOKENS


def _fa4(row, q, k, v, arrays, causal, flops):
    """FlashAttention-4 (CuTe DSL) at the same configuration, in the same process, where it
    imports: its output checked against flash_wgmma's first (``fa4_max_diff``), then timed
    the same way (``fa4``)."""
    try:
        import torch
        from flash_attn.cute import flash_attn_func
        from triton.testing import do_bench_cudagraph
    except Exception as exc:  # noqa: BLE001
        row["fa4_error"] = f"{type(exc).__name__}: {exc}"[:200]
        return
    try:
        tq, tk, tv = (torch.from_numpy(x).cuda().unsqueeze(0) for x in (q, k, v))
        win = (128, 0 if causal else 128)

        def call():
            return flash_attn_func(tq, tk, tv, causal=causal, window_size=win)[0]
        o = call()
        torch.cuda.synchronize()
        ours = arrays["out"].copy_to_host().view(np.float16)
        row["fa4_max_diff"] = float(np.abs(o[0].float().cpu().numpy() -
                                           ours.astype(np.float32)).max())
        ms = float(do_bench_cudagraph(call, rep=100, return_mode="median"))
        row["fa4"] = ms
        row["fa4_tflops"] = flops / (ms * 1e-3) / 1e12
    except Exception as exc:  # noqa: BLE001
        row["fa4_error"] = f"{type(exc).__name__}: {exc}"[:400]


def timing(end):
    from numba import cuda
    from attn_numba import kernels
    from attn_numba.kernels import v5_flash_wgmma as v5
    from attn_numba.kernels import v6_flash_ws as v6
    from attn_numba.problem import Problem, windowed_flops
    how, bench = _timer()
    rng = np.random.default_rng(1)
    rows = []
    ref = None
    for causal in (False, True):
        for s in tokens():
            if time.time() > end:
                break
            p = Problem(batch=1, total_q=s, total_k=s, max_seqlen_q=s, max_seqlen_k=s,
                        num_heads=32, num_kv_heads=8, head_size=128,
                        dtype=np.dtype(np.float16), softmax_scale=128 ** -0.5,
                        window_left=128, window_right=0 if causal else 128, causal=causal,
                        lse_batched=True, on_simulator=False)
            q, k, v = (rng.standard_normal((s, n, 128)).astype(np.float16) for n in (32, 8, 8))
            arrays = dict(q=cuda.to_device(q.view(np.uint16)),
                          k=cuda.to_device(k.view(np.uint16)),
                          v=cuda.to_device(v.view(np.uint16)),
                          out=cuda.device_array((s, 32, 128), np.uint16),
                          lse=cuda.device_array((1, 32, s), np.float32),
                          cu_seqlens_q=cuda.to_device(np.array([0, s], np.int32)),
                          cu_seqlens_k=cuda.to_device(np.array([0, s], np.int32)))
            flops = windowed_flops([s], [s], 32, 128, 128, 0 if causal else 128)
            row = dict(tokens=s, causal=int(causal))
            for name, kw in timed():
                try:
                    if name == "flash_wgmma":
                        pl, args = v5.plan(p), arrays
                    else:
                        pl = v6.plan(p, **kw)
                        args = dict(arrays, **kernels.scratch_arrays(v6, p, **kw))
                        if kw.get("maps_ready"):   # a defaults' call writes the slots' maps
                            kernels.launch_plans(v6.plan(p), args)
                    ms = bench(lambda st, pl=pl, a=args: kernels.launch_plans(pl, a, st))
                    row[name] = ms
                    row[name + "_tflops"] = flops / (ms * 1e-3) / 1e12
                    # each output against flash_wgmma's (checked by its own sweeps)
                    o = arrays["out"].copy_to_host().view(np.float16).astype(np.float32)
                    if name == "flash_wgmma":
                        ref = o
                    else:
                        row[name + "_max_diff_v5"] = float(np.abs(o - ref).max())
                except Exception as exc:  # noqa: BLE001
                    row[name] = None
                    row[name + "_error"] = f"{type(exc).__name__}: {exc}"[:400]
            _fa4(row, q, k, v, arrays, causal, flops)
            rows.append(row)
            log("time", row)
            RES["timing"] = dict(method=how, device=str(cuda.get_current_device().name),
                                 shape="1 x tokens, 32/8 heads, D=128, window (128,128), fp16",
                                 rows=rows)
            save()


def table():
    print("\nflash_ws (v6) vs flash_wgmma (v5) and FA4, ms per call,",
          RES.get("timing", {}).get("method"))
    names = [n for n, _ in timed()] + ["fa4"]
    labels = [n[9:] if n.startswith("flash_ws_") else n for n in names]
    print(f"{'tokens':>6} {'causal':>6} " + " ".join(f"{x:>11}" for x in labels) +
          "  best v6/v5  best v6/fa4")
    for r in RES.get("timing", {}).get("rows", []):
        ts = [r.get(n) for n in names]
        best = min([x for x in ts[1:-1] if x], default=None)
        ratio = f"{best / ts[0]:10.2f}" if best and ts[0] else f"{'-':>10}"
        fa = f"{best / ts[-1]:12.2f}" if best and ts[-1] else f"{'-':>12}"
        print(f"{r['tokens']:>6} {r['causal']:>6} " +
              " ".join(f"{x:11.4f}" if x else f"{'-':>11}" for x in ts) + f"  {ratio} {fa}")
    sw = RES.get("sweep", {})
    print(f"sweep: {sw.get('passed')}/{sw.get('total')} pass; compile: "
          f"{RES.get('compile', {}).get('specs')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=240.0, help="seconds for the whole run")
    ap.add_argument("--stall", type=float, default=30.0,
                    help="seconds without a finished case before the sweep child is killed")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true",
                    help="compile and time only (V6_TIMED's variants; exploration)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--compile", help=argparse.SUPPRESS)
    ap.add_argument("--timing-child", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--diagnose", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if a.child is not None:
        return sweep_child(a.child, os.path.join(OUT, "v6_sweep_rows.jsonl"))
    if a.compile:
        return compile_child(tuple(json.loads(a.compile)))
    if a.diagnose is not None:
        c = dict(cases()[a.diagnose], debug_waits=True)
        print("diagnose", c, check(c, np.random.default_rng(0)), flush=True)
        return None
    if a.timing_child:
        try:
            timing(a.timing_child)
        finally:
            save(os.path.join(OUT, "v6_timing.json"))
        return None
    end = T0 + a.budget
    if os.environ.get("V6_CHECK_FAKE"):
        sweep(a.stall, T0 + 0.7 * a.budget)
        return table()
    from numba import cuda
    dev = cuda.get_current_device()
    RES["device"] = dict(name=str(dev.name), cc=list(dev.compute_capability))
    log("device", RES["device"])
    precompile(T0 + 0.35 * a.budget, sweep_cases=not a.skip_sweep)
    if not a.skip_sweep:
        sweep(a.stall, T0 + 0.7 * a.budget)
        diagnose(T0 + 0.8 * a.budget)
    if not a.skip_timing:
        tpath = os.path.join(OUT, "v6_timing.json")
        try:
            subprocess.run([sys.executable, os.path.abspath(__file__), "--timing-child",
                            str(end - 5)], timeout=max(end - time.time(), 5))
        except subprocess.TimeoutExpired:
            RES["timing_error"] = "timing child timed out (a hang?)"
        if os.path.exists(tpath):
            with open(tpath) as f:
                RES["timing"] = json.load(f).get("timing")
    save()
    table()


if __name__ == "__main__":
    main()
