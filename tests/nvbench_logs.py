"""Generator of NVBench markdown logs of run_mha_fwd for the explain tests (not a test file).

:func:`state` describes one benchmark state; :func:`render` writes states as NVBench does
(device header, ``# Log`` section, ``# Benchmark Results`` with one table per device), with
switches for the variations the parser must survive.
"""
from attn_numba.problem import windowed_flops

DEVICES = {0: ("NVIDIA H100 80GB HBM3", 900, 132, 1980, 3352),
           1: ("NVIDIA A30", 800, 56, 1440, 933)}


def work_of(S, causal, H=32, D=128, left=128, right=128):
    return windowed_flops([S], [S], H, D, left, right if not causal else 0)


def healthy(S, c):
    """GPU time proportional to the windowed work, 5 us launch cost on top."""
    return 5e-6 + work_of(S, c) / 2e12


def flat(S, c):
    """About 50 ms per call whatever the work (host work timed as GPU time)."""
    return 0.05 + 0.002 * ((S // 512 + c) % 3)


def state(S, c, gpu, kernel=None, device=0, cpu=None, batch=None, samples=None,
          batch_samples=None, warnings=(), fail=None, skip=None, total_wall=None, est=None):
    """One state: times in seconds; cpu defaults to gpu * 1.01 + 10 us."""
    return {"S": S, "c": c, "gpu": gpu, "kernel": kernel, "device": device,
            "cpu": gpu * 1.01 + 10e-6 if cpu is None else cpu, "batch": batch,
            "samples": samples or max(1, min(1000, int(1.0 / max(gpu, 1e-6)))),
            "batch_samples": batch_samples, "warnings": list(warnings), "fail": fail,
            "skip": skip, "total_wall": total_wall, "est": est}


def grid(times, kernel=None, seq_lens=(512, 1024, 2048, 4096, 8192), causals=(0, 1), **kw):
    """States for every (S, causal); ``times(S, c)`` -> GPU seconds; ``kw`` values may be
    callables of (S, c) too."""
    out = []
    for c in causals:
        for S in seq_lens:
            extra = {k: (v(S, c) if callable(v) else v) for k, v in kw.items()}
            out.append(state(S, c, times(S, c), kernel=kernel, **extra))
    return out


def log_time(s, unit):
    """A Log-line duration: ``unit`` one of ns, us, ms, s, or 'auto' (ms as NVBench prints)."""
    f = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "auto": 1e-3}[unit]
    return f"{s / f:.6f}{'ms' if unit == 'auto' else unit}"


def cell_time(s):
    """NVBench's table duration: 3 decimals in the largest unit that keeps the value >= 1."""
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= f:
            return f"{s / f:.3f} {unit}"
    return f"{s / 1e-9:.3f} ns"


def _axes(st, kernel_axis):
    k = f"Kernel={st['kernel']} " if kernel_axis and st["kernel"] is not None else ""
    return (f"{k}num_seqs=1 seq_len={st['S']} num_heads=32 num_kv_heads=8 head_size=128 "
            f"window_left=128 window_right=128 causal={st['c']}")


def render(states, log=True, table=True, unit="auto", devices_header=True, noise="0.25%",
           drop_columns=(), extra_columns=(), interleave=(), est="dense"):
    """NVBench markdown for ``states``. ``drop_columns``: summary columns to leave out;
    ``extra_columns``: (name, cell) pairs appended; ``interleave``: lines printed inside the
    Log after each Run: line (a Python launcher's prints); ``est``: 'dense' (2*S^2*H*D) or
    'windowed' (exact)."""
    kernel_axis = any(s["kernel"] is not None for s in states)
    devs = sorted({s["device"] for s in states})
    out = []
    if devices_header:
        out.append("# Devices\n")
        for d in devs:
            name, sm, nsm, mhz, bw = DEVICES[d]
            out += [f"## [{d}] `{name}`", f"* SM Version: {sm} (PTX Version: {sm})",
                    f"* Number of SMs: {nsm}", f"* SM Default Clock Rate: {mhz} MHz",
                    "* Global Memory: 1000 MiB Free / 2000 MiB Total",
                    f"* Global Memory Bus Peak: {bw} GB/sec (5120-bit DDR @2619MHz)", ""]
    if log:
        out += ["# Log", "", "```"]
        for i, s in enumerate(states, 1):
            out.append(f"Run:  [{i}/{len(states)}] run_mha_fwd [Device={s['device']} "
                       f"{_axes(s, kernel_axis)}]")
            out += list(interleave)
            if s["skip"]:
                out.append(f"Skip: {s['skip']}")
                continue
            out += [f"Warn: {w}" for w in s["warnings"]]
            if s["fail"]:
                out.append(f"Fail: {s['fail']}")
                continue
            n, wall = s["samples"], s["total_wall"]
            out.append(f"Pass: Cold: {log_time(s['gpu'], unit)} GPU, {log_time(s['cpu'], unit)} "
                       f"CPU, {s['gpu'] * n:.2f}s total GPU, "
                       f"{wall if wall else s['cpu'] * n * 1.1:.2f}s total wall, {n}x ")
            if s["batch"] is not None:
                bn = s["batch_samples"] or n
                bw = wall if wall else s["batch"] * bn
                out.append(f"Pass: Batch: {log_time(s['batch'], unit)} GPU, "
                           f"{s['batch'] * bn:.2f}s total GPU, {bw:.2f}s total wall, {bn}x")
        out += ["```", ""]
    if table:
        out += ["# Benchmark Results", "", "## run_mha_fwd", ""]
        for d in devs:
            rows = [s for s in states if s["device"] == d and not s["skip"]]
            head = (["Kernel"] if kernel_axis else []) + [
                "num_seqs", "seq_len", "num_heads", "num_kv_heads", "head_size", "window_left",
                "window_right", "causal"]
            summ = ["Q Tensor", "Est. FLOPS", "Samples", "CPU Time", "Noise", "GPU Time",
                    "Noise", "GlobalMem BW", "BWUtil", "Samples", "Batch GPU"]
            summ = [c for c in summ if c not in drop_columns] + [n for n, _ in extra_columns]
            lines = ["| " + " | ".join(head + summ) + " |", "|" + "---|" * len(head + summ)]
            for s in rows:
                S, c = s["S"], s["c"]
                cells = ([s["kernel"]] if kernel_axis else []) + [
                    "1", str(S), "32", "8", "128", "128", "128", str(c)]
                est_v = s["est"] if s["est"] is not None else (
                    2 * S * S * 32 * 128 if est == "dense" else work_of(S, c))
                failed = bool(s["fail"])
                vals = {"Q Tensor": f"{S * 32 * 256 / 2**20:.3f} MiB", "Est. FLOPS": str(est_v),
                        "Samples": "" if failed else f"{s['samples']}x",
                        "CPU Time": "" if failed else cell_time(s["cpu"]),
                        "GPU Time": "" if failed else cell_time(s["gpu"]),
                        "GlobalMem BW": "" if failed else f"{S * 80 * 256 / s['gpu'] / 1e9:.3f} GB/s",
                        "BWUtil": "" if failed else f"{S * 80 * 256 / s['gpu'] / 3.352e12:.2%}",
                        "Batch GPU": cell_time(s["batch"]) if s["batch"] and not failed else ""}
                noise_n, samp_n = 0, 0
                row = []
                for col in summ:
                    if col == "Noise":
                        row.append("" if failed else noise)
                    elif col == "Samples":
                        samp_n += 1
                        row.append(vals["Samples"] if samp_n == 1 else (
                            f"{s['batch_samples'] or s['samples']}x" if s["batch"] else ""))
                    elif col in vals:
                        row.append(vals[col])
                    else:
                        row.append(dict(extra_columns)[col])
                lines.append("| " + " | ".join(cells + row) + " |")
            out += [f"### [{d}] {DEVICES[d][0]}", ""] + lines + [""]
    return "\n".join(out) + "\n"
