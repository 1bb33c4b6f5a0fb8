"""Host microseconds per stage of one ``attn_numba.mha_fwd`` call on torch tensors, and the
public-call times of SDPA and FlexAttention on the same inputs (issue 10).

The log's shape at 512 tokens (batch 1, 32 query heads, 8 KV heads, head size 128, fp16,
window (128, 128), not causal). For each of our kernels (flash_tc, flash; those this build has)
and each launch path (``launcher.MODE``: "driver" = cuLaunchKernel through ctypes with bound parameters,
"bindings" = the same through cuda.bindings, "dispatcher" = Numba's normal launch), the script times every stage of the call path on its
own, in a loop of N calls, host time only (``time.perf_counter``; launches are timed in groups
that cannot fill the launch queue, and the waits between groups are not counted):

* ``validation``: array kinds and facts (shape, dtype, contiguity, pointer, device) and the
  lookup of an earlier call with the same facts (whose checks passed); ``full_checks``, for
  reference, is what the checks themselves cost on a first call (not part of the sum);
* ``specialisation``: the cache lookup alone (key hash);
* ``stream``: resolving the launch stream (torch's current stream);
* ``allocation``: the two outputs from torch's caching allocator (and a module's scratch,
  reused per stream: ``callpath._scratch``);
* ``wrapping``: the seven kernel arguments (pointers; Numba views on the dispatcher path);
* ``launch``: the kernel launch(es).

Every kernel and mode is measured ``BREAKDOWN_ROUNDS`` (default 3) times, the kernels
interleaved round by round, and each number is its minimum over the rounds (``rounds`` keeps
them all): in run 35 the first kernel measured was slower in every stage, the same code
included.

Then the whole public call: ``host_us`` = host time per call in a loop (the GPU keeps up or
not, it is not waited for inside the loop) and ``call_us`` = :mod:`attn_numba.bench.calltime`'s
median per-call time from CUDA events (what a user's loop sees), next to the GPU time of one
call (``gpu_us``: CUDA events around a call queued behind a sleep kernel, median of 20).

Writes ``$OUT/call_breakdown.json`` (or ./call_breakdown.json) and prints a table.

    python scripts/call_breakdown.py
    BREAKDOWN_KERNELS=flash_ws,flash_wgmma BREAKDOWN_MODES=driver python scripts/call_breakdown.py
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

N = 2000          # calls per stage measurement
ROUNDS = int(os.environ.get("BREAKDOWN_ROUNDS", "3"))  # interleaved rounds; minimum kept
GROUP = 200       # launches per group (well below the launch queue's depth)
KW = dict(window_size=(128, 128))


def per_call_us(fn, n=N):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def launch_us(torch, fn, n=N):
    """Host time per launch, in groups of GROUP with a synchronise (not timed) between."""
    total = 0.0
    for _ in range(max(1, n // GROUP)):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(GROUP):
            fn()
        total += time.perf_counter() - t0
    torch.cuda.synchronize()
    return total / (max(1, n // GROUP) * GROUP) * 1e6


def gpu_us(torch, fn, reps=20):
    """GPU time of one call: CUDA events around it, queued behind a sleep kernel so that the
    host work is hidden (median of ``reps``)."""
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(2_000_000)  # ~1 ms: the call is enqueued before the GPU reaches it
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) * 1e3)
    return statistics.median(out)


def stages(torch, kernel, q, k, v):
    """Per-stage host microseconds of ``mha_fwd(q, k, v, kernel=kernel)`` (current MODE),
    following the hot path of a repeated call (interface.mha_fwd / callpath._call)."""
    from attn_numba import arrays, callpath, interface, validation
    from attn_numba.arrays import F32, as_numba
    mha = interface.mha_fwd
    res = {}
    mha(q, k, v, kernel=kernel, **KW)  # builds the specialisation and the hot entry
    torch.cuda.synchronize()
    win, scale = KW["window_size"], None

    def facts():
        kind = validation.kinds_of(q, k, v)
        iq, ik, iv = arrays.info(q, kind), arrays.info(k, kind), arrays.info(v, kind)
        return kind, iq, ik, iv

    kind, iq, ik, iv = facts()
    hkey = callpath._hot_key(kind, iq, ik, iv, scale, False, win, kernel)
    spec, shapes = callpath._HOT[hkey]

    def validate():  # the hot path: array facts and the lookup of the validated entry
        kind, iq, ik, iv = facts()
        return callpath._HOT.get(callpath._hot_key(kind, iq, ik, iv, scale, False, win, kernel))

    def full_checks():  # what a first call (or a call with unusual argument types) checks
        validation.check_tensors(iq, ik, iv, 4, kind)
        validation.check_scale(None, 128)
        validation.check_window(win, False)
        validation.check_kernel(kernel)

    res["validation"] = per_call_us(validate)
    res["full_checks"] = per_call_us(full_checks)
    res["specialisation"] = per_call_us(lambda: callpath._HOT.get(hkey))
    dev = q.get_device()
    res["stream"] = per_call_us(lambda: arrays.resolve_stream(None, "torch", dev))
    ls = arrays.resolve_stream(None, "torch", dev)

    def alloc():  # the outputs, and the module's scratch (flash_ws: the blocks' own maps),
        # which torch callers reuse per stream outside graph capture (callpath._scratch)
        return (callpath._new("torch", q, shapes[4], spec.problem.dtype, ls, dev),
                callpath._new("torch", q, shapes[5], F32, ls, dev),
                *(callpath._scratch(spec, "torch", q, ls, dev) if spec.scratch else ()))

    res["allocation"] = per_call_us(alloc)
    out, lse, *scratch = alloc()
    (cq, icq), (ck, ick) = spec.cu
    bounds = spec.bounds
    if bounds is not None:
        res["wrapping"] = per_call_us(lambda: (iq.ptr, ik.ptr, iv.ptr, out.data_ptr(),
                                               lse.data_ptr(), icq.ptr, ick.ptr,
                                               *(x.data_ptr() for x in scratch)))
        ptrs = (iq.ptr, ik.ptr, iv.ptr, out.data_ptr(), lse.data_ptr(), icq.ptr, ick.ptr,
                *(x.data_ptr() for x in scratch))

        def launch():
            for b in bounds:
                b(ls.handle, ptrs)
    else:
        io, il = arrays.info(out, "torch"), arrays.info(lse, "torch")
        args = ((q, iq, shapes[0]), (k, ik, shapes[1]), (v, iv, shapes[2]), (out, io, shapes[0]),
                (lse, il, shapes[3]), (cq, icq, None), (ck, ick, None),
                *((x, arrays.info(x, "torch"), None) for x in scratch))
        res["wrapping"] = per_call_us(lambda: [as_numba(x, i, s) for x, i, s in args], n=200)
        nargs = {n: as_numba(x, i, s) for n, (x, i, s) in zip(spec.names, args)}
        stream = arrays.numba_stream(ls)

        def launch():
            from attn_numba import kernels
            kernels.launch_plans(spec.plans, nargs, stream)
    res["launch"] = launch_us(torch, launch)
    res["sum_of_stages"] = sum(v for kk, v in res.items() if kk != "full_checks")
    call = lambda: mha(q, k, v, kernel=kernel, **KW)  # noqa: E731
    res["host_us"] = launch_us(torch, call)
    return res, call, bounds is not None


def main():
    import torch
    from attn_numba import available_kernels, launcher
    from attn_numba.bench.calltime import call_time_s
    from attn_numba.bench.cases import make_case
    from attn_numba.bench.grid import Config
    from attn_numba.testing import random_qkv
    out_dir = Path(os.environ.get("OUT", "."))
    rng = np.random.default_rng(0)
    q, k, v = (torch.from_numpy(x).cuda() for x in random_qkv(rng, 1, 512, 512, 32, 8, 128))
    rows = []
    names = os.environ.get("BREAKDOWN_KERNELS", "flash_tc,flash").split(",")
    modes = os.environ.get("BREAKDOWN_MODES", "driver,bindings,dispatcher").split(",")
    got = {}   # (kernel, mode) -> one stages dict per round, or the error
    for rnd in range(ROUNDS):  # kernels interleaved: drift of the host hits each alike
        for kernel in [n for n in names if n in available_kernels()]:
            for mode in modes:
                if isinstance(got.get((kernel, mode)), str):
                    continue
                launcher.MODE = mode
                from attn_numba import callpath
                callpath._SPECS.clear()
                callpath._HOT.clear()
                try:
                    st, call, bound = stages(torch, kernel, q, k, v)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    got[kernel, mode] = f"{type(exc).__name__}: {exc}"
                    continue
                st.update(bound=bound, call_us=call_time_s(call) * 1e6,
                          gpu_us=gpu_us(torch, call))
                got.setdefault((kernel, mode), []).append(st)
    for (kernel, mode), runs in got.items():
        if isinstance(runs, str):
            rows.append({"name": kernel, "mode": mode, "error": runs})
            continue
        # each stage's minimum over the rounds (host noise only adds), and every round
        best = {c: min(r[c] for r in runs) for c in runs[0] if c != "bound"}
        rows.append({"name": kernel, "mode": mode, "bound": runs[0]["bound"], **best,
                     "rounds": runs})
    launcher.MODE = "driver"
    cfg = Config(num_seqs=1, seq_len=512, num_heads=32, num_kv_heads=8, head_size=128,
                 window_left=128, window_right=128, causal=0)
    for peer in ("sdpa", "flexattention"):
        try:
            case = make_case(peer, cfg)
            why = case.unsupported()
            if why:
                raise RuntimeError(why)
            call = case.public_call()
            call()
            rows.append({"name": peer, "mode": "public call", "host_us": launch_us(torch, call, 1000),
                         "call_us": call_time_s(call) * 1e6, "gpu_us": gpu_us(torch, call)})
        except Exception as exc:  # noqa: BLE001
            rows.append({"name": peer, "mode": "public call", "error": f"{type(exc).__name__}: {exc}"})
    doc = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "shape": "B=1 S=512 H=32 Hkv=8 D=128 fp16 window (128,128) non-causal",
           "unit": "microseconds per call (host time for stages and host_us; CUDA events for "
                   "call_us and gpu_us)", "rows": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "call_breakdown.json").write_text(json.dumps(doc, indent=1))
    cols = ["validation", "full_checks", "specialisation", "stream", "allocation", "wrapping",
            "launch", "sum_of_stages", "host_us", "call_us", "gpu_us"]
    print(f"{doc['device']}: {doc['shape']}; us per call")
    print(f"{'name':<14}{'mode':<12}" + "".join(f"{c[:9]:>10}" for c in cols))
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<14}{r['mode']:<12}  ERROR {r['error'][:100]}")
            continue
        print(f"{r['name']:<14}{r['mode'][:11]:<12}"
              + "".join(f"{r[c]:10.1f}" if c in r else f"{'-':>10}" for c in cols))
    print(f"wrote {out_dir / 'call_breakdown.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
