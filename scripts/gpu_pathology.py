"""One device call: reproduce the NVBench pathology and measure compile / first-call times.

    python3 scripts/gpu_pathology.py $OUT      (on the GPU machine; ~3-4 minutes)

Every measurement runs in its own subprocess (fresh Python process) with a shared, initially
empty NUMBA_CACHE_DIR, in this order: compile times in a cold process (fills the cache), first
``mha_fwd`` call with a warm cache (baseline, cProfile'd baseline, after ``warmup()``, after
``compile_eager()``), the NVBench variants of :mod:`attn_numba.bench.pathology`, the debug build
(H3) and the other kernels' first-call times. Writes ``$OUT/pathology_raw.json`` after every
step (a timeout still returns what finished), plus the NVBench logs and the profile.
``attn_numba.bench.pathology`` turns the raw file into ``results/h100/pathology.json``.
"""
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

OUT = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "/tmp/out")
BUDGET_S = float(os.environ.get("PATHOLOGY_BUDGET_S", "270"))
T0 = time.perf_counter()
CACHE = "/tmp/numba_cache_pathology"
shutil.rmtree(CACHE, ignore_errors=True)
os.makedirs(OUT, exist_ok=True)
ENV = dict(os.environ, NUMBA_CACHE_DIR=CACHE, PYTHONUNBUFFERED="1")
MOD = [sys.executable, "-m", "attn_numba.bench.pathology"]

raw = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "steps": {}, "nvbench": {}}


def save():
    raw["elapsed_s"] = time.perf_counter() - T0
    with open(os.path.join(OUT, RAW_NAME), "w") as f:
        json.dump(raw, f, indent=1)


def left():
    return BUDGET_S - (time.perf_counter() - T0)


def run(args, timeout):
    timeout = max(5.0, min(timeout, left()))
    t = time.perf_counter()
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ENV)
        rc, so, se = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        so = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        se = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    return {"rc": rc, "wall_s": time.perf_counter() - t, "stdout": so, "stderr": se[-6000:]}


def result_of(r):
    for line in r["stdout"].splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return None


def versions():
    v = {"python": platform.python_version()}
    for mod in ("numba", "numba_cuda", "numpy", "cuda.bench"):
        try:
            m = __import__(mod, fromlist=["_"])
            v[mod] = getattr(m, "__version__", "?")
        except Exception as exc:  # noqa: BLE001
            v[mod] = f"n/a ({type(exc).__name__})"
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        v["nvidia_smi"] = q.stdout.strip()
    except Exception as exc:  # noqa: BLE001
        v["nvidia_smi"] = f"n/a ({exc})"
    v["cpu"] = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                     if ln.startswith("model name")), "?")
    v["cpu_count"] = os.cpu_count()
    return v


raw["versions"] = versions()
raw["device"] = raw["versions"].get("nvidia_smi", "").split(",")[0] or "NVIDIA H100"

STAGE = os.environ.get("PATHOLOGY_STAGE", "1")
RAW_NAME = "pathology_raw.json" if STAGE == "1" else f"pathology_raw{STAGE}.json"
raw["stage"] = STAGE

STEPS = [
    ("compile_times", MOD + ["compile-times"], 90),
    ("first_call_baseline", MOD + ["first-call", "baseline"], 45),
    ("first_call_baseline_2", MOD + ["first-call", "baseline"], 45),
    ("first_call_profiled", MOD + ["first-call", "baseline", "--profile",
                                   os.path.join(OUT, "first_call_profile.txt")], 45),
    ("first_call_warmup", MOD + ["first-call", "warmup"], 45),
    ("first_call_eager", MOD + ["first-call", "eager"], 45),
]
#: first-call steps of stages 2 and 3: cold cache, warm cache, fast cache load, warmup()
FIRST_CALL_STEPS = [
    ("first_call_coldcache", MOD + ["first-call", "baseline"], 45),
    ("first_call_baseline", MOD + ["first-call", "baseline"], 45),
    ("first_call_fast", MOD + ["first-call", "fast"], 45),
    ("first_call_fast_2", MOD + ["first-call", "fast"], 45),
    ("first_call_warmup", MOD + ["first-call", "warmup"], 45),
]
if STAGE == "2":  # second device call: fast cache load, H1 without batch, H1 with cache=True
    STEPS = FIRST_CALL_STEPS
    NVB = [
        ("H1_noblock_nobatch", ["--seq-lens", "512", "2048", "8192", "--timeout", "2"], 40),
        ("H1_cached", ["--seq-lens", "512", "2048", "8192", "--timeout", "2"], 35),
    ]
    LAST = [("debug_build", MOD + ["debug-build"], 70)]
if STAGE == "3":  # the stage-2 first-call steps only (stage 2's ran into an import bug)
    STEPS = FIRST_CALL_STEPS
    NVB, LAST = [], []
save()
for name, args, tmo in STEPS:
    if left() < 20:
        break
    r = run(args, tmo)
    raw["steps"][name] = {"result": result_of(r), "rc": r["rc"], "wall_s": r["wall_s"],
                          "stderr_tail": r["stderr"][-3000:] if result_of(r) is None else ""}
    save()

NVB = NVB if STAGE in ("2", "3") else [
    ("H1_noblock", ["--seq-lens", "512", "2048", "8192", "--timeout", "2"], 45),
    ("H1_sync", ["--seq-lens", "512", "2048", "8192", "--timeout", "2"], 35),
    ("fixed", ["--seq-lens", "512", "1024", "2048", "4096", "8192", "--causal", "0", "1",
               "--timeout", "4"], 70),
    ("H1_default", ["--seq-lens", "512", "2048", "8192", "--timeout", "2"], 45),
    ("H2_host_sync", ["--seq-lens", "512", "2048", "8192", "--timeout", "2"], 35),
    ("H2_host_default", ["--seq-lens", "512", "8192", "--timeout", "2"], 35),
]
for variant, extra, tmo in NVB:
    if left() < 25:
        raw["nvbench"][variant] = {"skipped": "device-call budget"}
        continue
    r = run(MOD + ["nvbench", variant] + extra, tmo)
    execs = [json.loads(ln.split(" ", 2)[2]) for ln in r["stderr"].splitlines()
             if ln.startswith("PATHOLOGY exec ")]
    raw["nvbench"][variant] = {"rc": r["rc"], "wall_s": r["wall_s"], "log": r["stdout"],
                               "execs": execs, "stderr_tail": r["stderr"][-2500:]}
    if variant in ("H1_noblock", "fixed", "H1_default", "H1_noblock_nobatch"):
        with open(os.path.join(OUT, f"nvbench_{variant}.md"), "w") as f:
            f.write(r["stdout"])
    save()

LAST = LAST if STAGE in ("2", "3") else [("debug_build", MOD + ["debug-build"], 40),
                                  ("other_kernels", MOD + ["other-kernels"], 120)]
for name, args, tmo in LAST:
    if left() < 15:
        raw["steps"][name] = {"skipped": "device-call budget"}
        continue
    r = run(args, tmo)
    raw["steps"][name] = {"result": result_of(r), "rc": r["rc"], "wall_s": r["wall_s"],
                          "stderr_tail": r["stderr"][-3000:] if result_of(r) is None else ""}
    save()
print(f"done in {time.perf_counter() - T0:.1f} s")
for k, v in raw["steps"].items():
    print(k, v.get("rc"), round(v.get("wall_s", 0), 1), json.dumps(v.get("result"))[:600])
for k, v in raw["nvbench"].items():
    print(k, v.get("rc"), round(v.get("wall_s", 0) or 0, 1), v.get("execs"))
