"""``attn-numba bench``: run the NVBench benchmark ``run_mha_fwd`` and write ``summary.json``.

The command's help (:func:`help_texts`) gives the examples, what it needs and the kernels.
Writes into ``--out`` (default ``results/<device-slug>``, ``-quick`` appended for ``--quick``):
NVBench's own JSON (``--json``) and markdown table (also printed to stdout, like the log), and the
flat ``summary.json`` (see :mod:`attn_numba.bench.summary`) with ceilings measured in the same
run. Progress goes to stderr, one line per state.

Exit status: 0 when the run finished (even if some states were skipped; they are listed in
``summary.json``), 1 when every state was skipped or failed, 2 when nothing could be measured
(no GPU, cuda-bench missing, bad arguments).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ..cli import INSTALL_GPU, examples
from . import grid as G
from . import summary as S

NO_GPU_MESSAGE = (
    "attn-numba bench: no CUDA GPU available ({why}); nothing was measured.\n"
    "  Run it on a machine with an NVIDIA GPU and the gpu extra (cuda-bench, torch):\n"
    f"    {INSTALL_GPU}\n"
    "  or check the pipeline end to end without a GPU: attn-numba bench --simulate\n"
    "  (committed results under results/ can be plotted with: attn-numba plot)")

EXAMPLES = examples(
    ("attn-numba bench", "the log's grid, every kernel, both peers"),
    ("attn-numba bench --quick --kernels naive,sdpa", "seq_len 1024 and 8192, causal 0 and 1"),
    ("attn-numba bench --seq-lens 512 4096 --causal 1 --out results/mine", ""),
    ("attn-numba bench --kernels flash_tc,sdpa --merge", "added to the summary.json in --out"),
    ("attn-numba bench --long", "16k to 512k tokens, into the same summary"),
    ("attn-numba bench --list", "the states that would run; no GPU needed"),
    ("attn-numba bench --simulate", "no GPU: tiny sizes on Numba's simulator"))

#: NVBench stopping criteria used unless overridden: a measurement (cold, and batch for the
#: peers) stops at 1 % noise after 5 samples and 0.5 s of GPU time, or after 1.5 s of wall time,
#: so that a full sweep of ~60 states stays within a few minutes (validated on an H100 with
#: --quick: 23 s for naive + sdpa, 44 s for flexattention including its compiles)
DEFAULT_MIN_SAMPLES = 5
DEFAULT_MAX_NOISE = 1.0  # percent
DEFAULT_TIMEOUT = 1.5  # seconds


def help_texts():
    """``(description, epilog)`` of ``attn-numba bench --help``: what it needs, and the kernels
    from the registry (:func:`attn_numba.available_kernels`, which imports every kernel
    module, so this runs only when the help is printed)."""
    from .. import available_kernels
    description = (
        "Run the NVBench (cuda-bench) benchmark run_mha_fwd over a grid of shapes and\n"
        "write summary.json, NVBench's JSON and its markdown table into --out.\n\n"
        "Needs an NVIDIA GPU and the gpu extra (cuda-bench, torch for the peers):\n"
        f"  {INSTALL_GPU}\n"
        "Without a GPU, --list and --simulate still run.\n\n"
        f"kernels of this build: {', '.join(available_kernels())}\n"
        f"peers (PyTorch): {', '.join(G.PEERS)}")
    return description, EXAMPLES


def _int_list(text):
    return [int(x) for x in str(text).replace(",", " ").split()]


def add_arguments(p):
    p.add_argument("--kernels", default=None,
                   help="comma-separated kernels and peers (default: every kernel of this build "
                        "plus flexattention,sdpa)")
    p.add_argument("--quick", action="store_true",
                   help="seq_len 1024 and 8192 only (both causal values)")
    p.add_argument("--long", action="store_true",
                   help="the long-sequence sweep: seq_len " + " ".join(map(str, G.LONG_SEQ_LENS))
                        + ", both causal values, kernels " + ",".join(G.LONG_KERNELS)
                        + " (those this build has) unless --kernels; merged into the summary.json "
                          "of --out (default results/<device-slug>) next to the main grid")
    for axis in G.INT_AXES:
        flag = "--" + axis.replace("_", "-") + ("s" if axis == "seq_len" else "")
        p.add_argument(flag, dest=axis, nargs="+", default=None, metavar="N",
                       help=f"override the {axis} axis (default {G.DEFAULT_GRID[axis]})")
    p.add_argument("--out", default=None,
                   help="output folder (default results/<device-slug>[-quick])")
    p.add_argument("--merge", action="store_true",
                   help="merge into an existing summary.json in --out (same kernel+axes replaced)")
    p.add_argument("--min-samples", type=int, default=DEFAULT_MIN_SAMPLES,
                   help="NVBench --min-samples (default %(default)s)")
    p.add_argument("--max-noise", type=float, default=DEFAULT_MAX_NOISE,
                   help="NVBench --max-noise in percent (default %(default)s)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="NVBench --timeout in seconds per measurement (default %(default)s)")
    p.add_argument("--nvbench-args", default="",
                   help="extra arguments passed to NVBench verbatim; use the = form, e.g. "
                        "--nvbench-args='--no-batch --cold-warmup-runs 3'")
    p.add_argument("--no-ceilings", action="store_true", help="do not measure the ceilings")
    p.add_argument("--tag", default="",
                   help="suffix for this run's nvbench*.json/.md names, so that several merged "
                        "runs into one --out keep their own NVBench files")
    p.add_argument("--simulate", action="store_true",
                   help="no GPU: run the check+launch pipeline on Numba's CUDA simulator at tiny "
                        "sizes, without NVBench, and write a summary marked simulated")
    p.add_argument("--backward", action="store_true",
                   help="time the backward (alone and forward + backward) of the backward "
                        "kernels and the peers flexattention, sdpa, with gradient checks; "
                        "written to the 'backward' section of summary.json")
    p.add_argument("--list", action="store_true",
                   help="print the kernels and configs that would run, and exit")


# --------------------------------------------------------------------------- helpers

def resolve(args):
    """``(kernels, grid)`` from the arguments; raises ValueError on unknown names."""
    from .. import available_kernels
    known = list(available_kernels())
    if getattr(args, "long", False) and args.simulate:
        raise ValueError("--long cannot be simulated (512k tokens on the CPU would take days)")
    if getattr(args, "long", False) and args.quick:
        raise ValueError("--long and --quick are exclusive")
    backward = getattr(args, "backward", False)
    if backward:
        from ..kernels import BWD_KERNEL_NAMES
        from .backward import PEERS as BWD_PEERS
        if args.simulate or getattr(args, "long", False):
            raise ValueError("--backward takes neither --simulate nor --long (use --seq-lens)")
        known = list(available_kernels(backward=True))
        default = known + list(BWD_PEERS)
    elif args.simulate:
        default = known
    elif getattr(args, "long", False):
        default = G.long_kernels(known)
    else:
        default = known + list(G.PEERS)
    if args.kernels:
        kernels = [k.strip() for k in args.kernels.replace(" ", ",").split(",") if k.strip()]
    else:
        kernels = default
    from ..kernels import KERNEL_NAMES
    names = list(BWD_KERNEL_NAMES) + list(BWD_PEERS) if backward else \
        list(KERNEL_NAMES) + list(G.PEERS)
    bad = [k for k in kernels if k not in names]
    if bad:
        raise ValueError(f"unknown kernel(s) {bad}; choose from {names}")
    base = G.SIM_GRID if args.simulate else G.DEFAULT_GRID
    overrides = {a: getattr(args, a, None) for a in G.INT_AXES}
    if args.quick and overrides["seq_len"] is None and not args.simulate:
        overrides.update(G.QUICK_OVERRIDES)
    if getattr(args, "long", False) and overrides["seq_len"] is None:
        overrides.update(G.LONG_OVERRIDES)
    overrides = {a: (_int_list(" ".join(map(str, v))) if v is not None else None)
                 for a, v in overrides.items()}
    return kernels, G.make_grid(base, **overrides)


def gpu_status():
    """``(True, device name)`` when a real CUDA GPU is usable, else ``(False, why)``."""
    from .. import on_simulator
    if on_simulator():
        return False, "Numba's CUDA simulator is active (NUMBA_ENABLE_CUDASIM=1)"
    try:
        from numba import cuda
        if not cuda.is_available():
            return False, "numba.cuda.is_available() is False: no driver or device"
        name = cuda.get_current_device().name
        return True, name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:  # pragma: no cover - driver trouble
        return False, f"{type(exc).__name__}: {exc}"


def print_records(records, stream=sys.stdout):
    print(f"{'kernel':<14}{'S':>6}{'causal':>7}{'GPU time':>12}{'batch':>12}{'call':>12}"
          f"{'TFLOP/s':>9}{'GB/s':>9}  check", file=stream)
    for r in records:
        t = f"{r['gpu_time_s'] * 1e3:9.3f} ms" if r["gpu_time_s"] else "          -"
        bt = f"{r['batch_gpu_time_s'] * 1e3:9.3f} ms" if r["batch_gpu_time_s"] else "          -"
        ct = f"{r['call_time_s'] * 1e3:9.3f} ms" if r.get("call_time_s") else "          -"
        tf = f"{r['tflops']:9.2f}" if r["tflops"] else "        -"
        gb = f"{r['gbps']:9.1f}" if r["gbps"] else "        -"
        c = r.get("check")
        chk = ("ok" if c["ok"] else "FAILED") if c else (r.get("skip_reason") or "-")
        print(f"{r['kernel']:<14}{r['seq_len']:>6}{r['causal']:>7}{t:>12}{bt:>12}{ct:>12}{tf}{gb}"
              f"  {chk}",
              file=stream)


# --------------------------------------------------------------------------- simulate

def _simulate(kernels, grid, out_dir, reps=2):
    """The pipeline without a GPU or NVBench: the same cases, check and launch, timed with a
    wall clock on Numba's simulator (the times mean nothing about GPUs)."""
    from numba import cuda

    from .cases import make_case
    from .nvbench_def import Progress
    configs = list(G.iter_configs(grid))
    prog = Progress(len(configs) * len(kernels))
    records = []
    for kernel in kernels:
        for cfg in configs:
            prog.start(kernel, cfg)
            if kernel in G.PEERS:
                records.append(S.make_record(kernel, cfg, skipped=True,
                                             skip_reason="peers are not simulated"))
                prog.note("skipped (peer)")
                continue
            case = make_case(kernel, cfg)
            why = case.unsupported()
            if why:
                records.append(S.make_record(kernel, cfg, skipped=True, skip_reason=why))
                prog.note("skipped: " + why)
                continue
            try:
                res = case.check(None)
            except ValueError as exc:  # the kernel refuses this call (e.g. not on the simulator)
                records.append(S.make_record(kernel, cfg, skipped=True, skip_reason=str(exc)))
                prog.note(f"skipped: {exc}")
                continue
            prog.note(f"check {res}")
            if not res.ok:
                records.append(S.make_record(kernel, cfg, skipped=True, check=res.as_dict(),
                                             skip_reason=f"output check failed: {res}"))
                continue
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                case.launch(None)
                cuda.synchronize()
                times.append(time.perf_counter() - t0)
            times.sort()
            records.append(S.make_record(kernel, cfg, gpu_time_s=times[len(times) // 2],
                                         samples=reps, noise=None, check=res.as_dict()))
    doc = {"schema": S.SCHEMA_VERSION, "device": "Numba CUDA simulator (CPU)", "date": S.now_iso(),
           "simulated": True, "versions": S.versions(),
           "ceilings": {"error": "simulated run: no ceilings"},
           "timing": "wall-clock time of a simulated launch (CPU), meaningless for GPUs",
           "records": records}
    path = S.write(Path(out_dir) / "summary.json", doc)
    print_records(records)
    print(f"attn-numba bench --simulate: wrote {path} (marked simulated)")
    return 0 if any(r["gpu_time_s"] for r in records) else 1


def _reexec_on_simulator(args):
    """Numba picks the simulator at import time: rerun this command with it switched on."""
    argv = [sys.executable, "-m", "attn_numba.cli", "bench", "--simulate"]
    if args.kernels:
        argv += ["--kernels", args.kernels]
    for a in G.INT_AXES:
        v = getattr(args, a, None)
        if v is not None:
            argv += ["--" + a.replace("_", "-") + ("s" if a == "seq_len" else ""), *map(str, v)]
    if args.out:
        argv += ["--out", args.out]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    print("attn-numba bench --simulate: restarting with NUMBA_ENABLE_CUDASIM=1", file=sys.stderr)
    return subprocess.call(argv, env=env)


# --------------------------------------------------------------------------- main

def main(args):
    try:
        kernels, grid = resolve(args)
    except ValueError as exc:
        print(f"attn-numba bench: {exc}", file=sys.stderr)
        return 2
    configs = list(G.iter_configs(grid))
    if args.list:
        print(f"kernels: {', '.join(kernels)}")
        print(f"{len(configs)} configs x {len(kernels)} kernels = {len(configs) * len(kernels)} states")
        for c in configs:
            d = G.derived(c)
            print(f"  {c.axes()}  flops={d['flops']}  dense={d['dense_flops']}  bytes={d['bytes']}")
        return 0

    if args.simulate:
        from .. import on_simulator
        if not on_simulator():
            return _reexec_on_simulator(args)
        out = Path(args.out or "results/simulator")
        return _simulate(kernels, grid, out)

    ok, info = gpu_status()
    if not ok:
        print(NO_GPU_MESSAGE.format(why=info), file=sys.stderr)
        return 2
    try:
        import cuda.bench
        cuda.bench.State  # loads the native extension matching cuda-bindings' CUDA major
    except (ImportError, AttributeError) as exc:
        print(f"attn-numba bench: cuda-bench (NVBench's Python package) is not importable ({exc}); "
              f"install the gpu extra: {INSTALL_GPU}", file=sys.stderr)
        return 2

    device = info
    slug = G.device_slug(device) + ("-quick" if args.quick else "")
    out = Path(args.out or Path("results") / slug)
    out.mkdir(parents=True, exist_ok=True)
    merge = args.merge or args.long  # the long sweep joins the main grid's summary.json
    tag = ("_long" if args.long else "") + (("_" + "-".join(kernels)) if merge else "")
    tag += ("_" + args.tag) if getattr(args, "tag", "") else ""
    json_path, md_path = out / f"nvbench{tag}.json", out / f"nvbench{tag}.md"
    print(f"attn-numba bench: {len(configs)} configs x {len(kernels)} kernels on {device}; "
          f"output in {out}", file=sys.stderr, flush=True)

    if args.no_ceilings:
        ceilings = {"error": "not measured (--no-ceilings)"}
    else:
        from . import ceilings as C
        t0 = time.perf_counter()
        ceilings = C.measure()
        print(f"attn-numba bench: ceilings {ceilings} ({time.perf_counter() - t0:.1f} s)",
              file=sys.stderr, flush=True)

    from .nvbench_def import run
    nv_args = ["--min-samples", str(args.min_samples), "--max-noise", f"{args.max_noise:g}",
               "--timeout", f"{args.timeout:g}", *shlex.split(args.nvbench_args)]
    if getattr(args, "backward", False):
        from . import backward
        recs = backward.run(kernels, grid, out, nv_args, ceilings)
        return 0 if any(r["gpu_time_s"] for r in recs) else 1
    t0 = time.perf_counter()
    call_times = {}
    checks, modes, argv = run(kernels, grid, json_path, md_path, nv_args, call_times)
    wall = time.perf_counter() - t0
    sys.stdout.flush()

    records = S.records_from_nvbench(json_path, checks, modes, call_times)
    import json
    nv_doc = json.loads(json_path.read_text())
    devices = nv_doc.get("devices") or []
    doc = {"schema": S.SCHEMA_VERSION, "device": devices[0]["name"] if devices else device,
           "date": S.now_iso(), "simulated": False, "versions": S.versions(),
           "ceilings": ceilings,
           "nvbench": {"argv": argv[1:], "json": json_path.name, "markdown": md_path.name,
                       "wall_s": round(wall, 1)},
           "records": records}
    spath = out / "summary.json"
    if merge and spath.exists():
        doc = S.merge(json.loads(spath.read_text()), doc)
    S.write(spath, doc)
    print_records(records)
    print(f"attn-numba bench: {len(records)} states in {wall:.0f} s; wrote {spath}, {json_path}, "
          f"{md_path}")
    timed = [r for r in records if r["gpu_time_s"]]
    return 0 if timed else 1
