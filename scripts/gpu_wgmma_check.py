"""One GPU run for flash_wgmma (Hopper): wgmma microtest, correctness sweep, timing against
flash_tc, ptxas/SASS evidence. Needs an sm_90 device; everything lands in ``$OUT``.

    OUT=/some/dir python scripts/gpu_wgmma_check.py [--budget 150]

Stages (each appends to ``$OUT/wgmma_check.json``, so a run cut short still reports):

a. microtest: one warpgroup, ``wgmma`` SS (A, B K-major, 128B swizzle; K = 64 and 128) and
   RS (A from registers, B MN-major = transposed, N = 64/128/256) against NumPy, for both
   readings of the MN-major descriptor (LBO/SBO as CUTLASS, and swapped). The kernel
   then runs with the reading that passed.
b. flash_wgmma vs attn_numba.reference (float64) on fresh random inputs: fp16/bf16, head
   sizes 64/128/256, GQA 1/4/8, windows (-1,-1), (0,0), (128,128), causal, lengths 1, 97,
   1025, sq != sk, varlen with an empty sequence; outputs start as NaN. Tolerance: 2x the
   error of a reference that rounds P and O to the dtype, plus a floor.
c. CUDA-event timing at 8192 tokens (batch 1, 32 heads / 8 kv heads, D=128, fp16, window
   (128,128), non-causal and causal): flash_wgmma (key tiles 64 and 128, plain and
   overlapped loop) vs flash_tc, GPU time only (launches queued behind a sleeper kernel).
d. registers / spills (ptxas -v on the kernel's PTX) and ``cuobjdump -sass`` HGMMA count.
e. the first public call in a fresh process once the disk cache is warm.

Success: the last table says ``micro ok``, ``sweep N/N pass`` and shows HGMMA > 0.
"""
import os as _os
_os.environ.pop("ATTN_NUMBA_NO_WGMMA", None)  # this script checks flash_wgmma itself
import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numba import cuda  # noqa: E402

import wgmma_check_common as common  # noqa: E402
from attn_numba.kernels.config import heads_per_block  # noqa: E402
from wgmma_check_common import OUT, RES, T0, bf16, log, save  # noqa: E402
from wgmma_evidence import evidence, first_call  # noqa: E402
from wgmma_micro import microtest  # noqa: E402
from wgmma_sweep import EXTRA_SWEEPS, sweep, sweep_cases  # noqa: E402
from wgmma_timing import precompile_async, timing  # noqa: E402


def run_stage(name, args, timeout):
    """Run one stage in a fresh process (a fault there cannot poison this process's or a
    later stage's CUDA context) and merge its results; its log lines are forwarded."""
    cmd = [sys.executable, os.path.abspath(__file__), "--stage", name, "--stage-args",
           json.dumps(args)]
    path = os.path.join(OUT, f"stage_{name}.json")
    if os.path.exists(path):
        os.remove(path)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 5))
        out = r.stdout + ("" if r.returncode == 0 else r.stderr[-3000:])
    except subprocess.TimeoutExpired as exc:
        out = f"stage {name} timed out after {timeout:.0f} s\n" + str(exc.stdout or "")[-2000:]
    print(out.rstrip()[-6000:], flush=True)
    if os.path.exists(path):
        with open(path) as f:
            RES.update(json.load(f))
    else:
        RES[f"{name}_error"] = out[-2000:]
    save()


def stage_main(name, args):
    """Body of a stage subprocess."""
    common.STAGE = name
    rng = np.random.default_rng(args.get("seed", 0))
    if name == "micro":
        microtest(rng, swapped=args.get("swapped", False))
    elif name == "sweep":
        f16 = np.dtype(np.float16)
        cases = sweep_cases((f16, bf16()), tuple(args.get("heads", (128, 64, 256))))
        if args.get("specs"):
            specs = {tuple(x) for x in args["specs"]}
            cases = [c for c in cases
                     if (c[1], "f16" if c[0] == f16 else "bf16", heads_per_block(c[2])) in specs
                     and (c[3][0] in (1025, 200, 130, 300) or c[6])]
        sweep(rng, cases, args.get("deadline", time.time() + 120), args.get("key", "sweep"),
              v_swap=args.get("v_swap", False), **args.get("opts", {}))
    elif name == "timing":
        timing(args["v_swap"], head_size=args.get("head_size", 128))
    save()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=150.0, help="seconds for the whole run")
    ap.add_argument("--force", action="store_true",
                    help="launch flash_wgmma even when the microtest fails")
    ap.add_argument("--skip-main-sweep", action="store_true",
                    help="skip the default variant's sweep (passed 96/96 on the H200, "
                         "2026-11-30 run 8): the variant sweeps and timing get its time")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--stage-args", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if a.stage:
        return stage_main(a.stage, json.loads(a.stage_args))
    end = T0 + a.budget
    dev = cuda.get_current_device()
    RES["device"] = dict(name=str(getattr(dev, "name", "simulator")),
                         cc=list(dev.compute_capability))
    log("device", RES["device"])
    pool, res = precompile_async()
    run_stage("micro", {}, end - time.time())
    rows = RES.get("micro", [])
    ss_ok = bool(rows) and all(r["ok"] for r in rows if r["op"] != "RS")
    rs_ok = {"cutlass": bool(rows) and all(r["ok"] for r in rows if r["op"] == "RS")}
    if not rs_ok["cutlass"]:
        run_stage("micro", {"swapped": True, "seed": 1}, end - time.time())
        sw = RES.get("micro_swapped", [])
        rs_ok["swapped"] = bool(sw) and all(r["ok"] for r in sw)
    v_swap = bool(not rs_ok["cutlass"] and rs_ok.get("swapped", False))
    RES["v_swap_used"] = v_swap
    # with no working reading of a descriptor the kernel could read outside its shared
    # memory: launch it only with --force
    launch_ok = a.force or (ss_ok and any(rs_ok.values()))
    RES["kernel_launched"] = launch_ok
    if pool is not None:
        try:
            RES["precompile"] = [dict(spec=sp, s=t, error=e)
                                 for sp, t, e in res.get(timeout=max(1, min(90, end - time.time() - 60)))]
        except Exception:  # noqa: BLE001
            RES["precompile_error"] = traceback.format_exc()
        pool.terminate()
        log("precompiled", [(r["spec"], r["s"], r["error"]) for r in RES.get("precompile", [])])
    save()
    if launch_ok:
        # sweeps get what is left minus ~45 s for timing, evidence and the first call: the
        # full sweep 60% of it, the variant sweeps share the rest
        sweep_end = end - 50
        plan = [("sweep", None, {})] * (not a.skip_main_sweep) + [(key, [list(x) for x in specs], opts)
                                        for key, opts, specs in EXTRA_SWEEPS]
        for i, (key, specs, opts) in enumerate(plan):
            left = sweep_end - time.time()
            if left <= 3:
                log(f"{key}: no time left")
                continue
            first = i == 0 and not a.skip_main_sweep
            deadline = time.time() + (0.6 * left if first else left / (len(plan) - i))
            run_stage("sweep", dict(key=key, specs=specs, opts=opts, v_swap=v_swap,
                                    deadline=deadline), deadline - time.time() + 30)
        run_stage("timing", dict(v_swap=v_swap), max(20, min(45, end - time.time() - 15)))
    else:
        log("microtest failed: flash_wgmma is not launched (use --force to launch it anyway)")
    try:
        evidence(v_swap, end + 5)
    except Exception:  # noqa: BLE001
        RES["evidence_error"] = traceback.format_exc()
    if launch_ok:
        first_call(max(15, end + 15 - time.time()))
    save()
    # the short table (about 20 lines; the most important last)
    print("\n==== flash_wgmma check on", RES["device"]["name"], "====")
    runs = RES.get("timing_8192", {}).get("runs", {})
    names = sorted({k.split("/", 1)[1] for k in runs}, key=lambda n: (n != "flash_tc", n))
    for name in names:
        cells = []
        for case in ("window128", "window128_causal"):
            r = runs.get(f"{case}/{name}", {})
            cells.append(f"{r['ms']:.3f} ms {r['tflops']:4.0f} TF/s" if "ms" in r
                         else str(r.get("error", "-"))[:40])
        print(f"  8192 {name:<34} non-causal {cells[0]:<22} causal {cells[1]}")
    ev = RES.get("evidence", [])
    print("  regs/local/HGMMA: " + "; ".join(
        f"D{r['d']}{r['kind']}h{r['heads']}bn{r['block_n']}{'ov' if r['overlap'] else ''}"
        f"wg{r['groups']} {r.get('regs')}/{r.get('local_bytes')}/{r.get('hgmma')}"
        for r in ev))
    ptx_notes = {r.get("ptxas", "") for r in ev if "C75" in r.get("ptxas", "")}
    print("  ptxas C75xx notes:", "; ".join(ptx_notes)[:200] or "none")
    print("  first call in a new process (warm cache):", str(RES.get("first_call"))[-200:])
    if "timing_error" in RES:
        print("  timing stage:", RES["timing_error"][-150:])
    for r in RES.get("micro", []) + RES.get("micro_swapped", []):
        if not r["ok"]:
            print("  micro FAIL", {k: r.get(k) for k in ("op", "n", "k", "kind", "desc", "max_err",
                                                         "error") if r.get(k) is not None})
    print(f"micro SS/RSK ok: {ss_ok}   RS ok by V-descriptor reading: {rs_ok}   "
          f"kernel v_swap={v_swap} launched={launch_ok}")
    for key in ["sweep"] + [k for k, _, _ in EXTRA_SWEEPS]:
        sw = RES.get(key, {})
        print(f"{key} {sw.get('passed', 0)}/{sw.get('run', 0)} pass ({sw.get('total', 0)} planned)"
              + (f"  {RES[key + '_error'][-120:]}" if key + "_error" in RES else ""))
    print(f"total {time.time() - T0:.0f} s; details in {OUT}/wgmma_check.json")


if __name__ == "__main__":
    main()
