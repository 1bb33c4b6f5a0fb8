"""``attn-numba explain``: parsing NVBench markdown logs and the overhead verdict.

Groups, sentences and parsing robustness are in test_explain_groups.py,
test_explain_sentences.py and test_explain_parse.py (logs from tests/nvbench_logs.py).

Synthetic logs here come from :func:`make_log`, a small generator that writes NVBench's markdown
format (device header, Log section, results table) for given per-row times; a few of its
outputs are also committed under tests/data/ (regenerate with
``python tests/test_explain.py --write-data``).
"""
import json
import math
import os
import subprocess
import sys

import pytest

from attn_numba import explain
from attn_numba.problem import windowed_flops

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

HEADER = """# Devices

## [0] `NVIDIA H100 80GB HBM3`
* SM Version: 900 (PTX Version: 900)
* Number of SMs: 132
* SM Default Clock Rate: 1980 MHz
* Global Memory: 80000 MiB Free / 81000 MiB Total
* Global Memory Bus Peak: 3352 GB/sec (5120-bit DDR @2619MHz)
* ECC Enabled: Yes

"""


def fmt_time(s):
    """NVBench's duration format: 3 decimals in the largest unit that keeps the value >= 1."""
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= f:
            return f"{s / f:.3f} {unit}"
    return f"{s / 1e-9:.3f} ns"


def work_of(S, causal, H=32, D=128, left=128, right=128):
    right = 0 if causal else right
    return windowed_flops([S], [S], H, D, left, right)


def make_log(times, seq_lens=(512, 1024, 2048, 4096, 8192), causals=(0, 1), samples=None,
             noise="0.25%", batch_factor=0.9, warnings=(), log_unit="ms"):
    """An NVBench markdown log of run_mha_fwd. ``times(S, causal) -> seconds`` per call."""
    states = [(S, c) for c in causals for S in seq_lens]
    n = len(states)
    log, table = [], []
    for i, (S, c) in enumerate(states, 1):
        t = times(S, c)
        ns = samples if samples is not None else max(1, min(1000, int(1.0 / t)))
        axes = (f"num_seqs=1 seq_len={S} num_heads=32 num_kv_heads=8 head_size=128 "
                f"window_left=128 window_right=128 causal={c}")
        log.append(f"Run:  [{i}/{n}] run_mha_fwd [Device=0 {axes}]")
        for w in warnings:
            log.append(f"Warn: {w}")
        gpu = t * 1e3 if log_unit == "ms" else t
        unit = "ms" if log_unit == "ms" else "s"
        log.append(f"Pass: Cold: {gpu:.6f}{unit} GPU, {gpu * 1.01:.6f}{unit} CPU, "
                   f"{t * ns:.2f}s total GPU, {t * ns * 1.1:.2f}s total wall, {ns}x ")
        log.append(f"Pass: Batch: {gpu * batch_factor:.6f}{unit} GPU, {t * ns:.2f}s total GPU, "
                   f"{t * ns:.2f}s total wall, {ns * 3}x")
        est = 2 * S * S * 32 * 128
        table.append(
            f"| 1 | {S} | 32 | 8 | 128 | 128 | 128 | {c} | {S * 32 * 128 * 2 / 2**20:.3f} MiB | "
            f"{S * 8 * 256 / 2**20:.3f} MiB | {S * 8 * 256 / 2**20:.3f} MiB | "
            f"{S * 32 * 256 / 2**20:.3f} MiB | {S} | {est} | {S // 50} | {ns}x | "
            f"{fmt_time(t * 1.01)} | {noise} | {fmt_time(t)} | {noise} | {S / t / 1e3:.3f}K | "
            f"{S * 80 * 256 / t / 1e9:.3f} GB/s | {S * 80 * 256 / t / 3.352e12:.2%} | {ns * 3}x | "
            f"{fmt_time(t * batch_factor)} |")
    head = ("| num_seqs | seq_len | num_heads | num_kv_heads | head_size | window_left | "
            "window_right | causal | Q Tensor | K Tensor | V Tensor | Output | Tokens | "
            "Est. FLOPS | Memory Usage | Samples | CPU Time | Noise | GPU Time | Noise | Elem/s | "
            "GlobalMem BW | BWUtil | Samples | Batch GPU |")
    sep = "|" + "---|" * 25
    return (HEADER + "# Log\n\n```\n" + "\n".join(log) + "\n```\n\n# Benchmark Results\n\n"
            "## run_mha_fwd\n\n### [0] NVIDIA H100 80GB HBM3\n\n" + "\n".join([head, sep] + table)
            + "\n")


def healthy(S, c):
    """Time proportional to the windowed work (5 us launch cost on top)."""
    return 5e-6 + work_of(S, c) / 2e12


def flat(S, c):
    return 5.0 + 0.3 * math.sin(S * (c + 1))


def _write(tmp_path, text, name="log.md"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --------------------------------------------------------------------------- the user's log

def test_packaged_log_is_overhead_dominated():
    res = explain.explain_log()
    assert res["verdict"] == "overhead-dominated"
    assert 3.0 <= res["fixed_overhead_s"] <= 8.0          # several seconds per call
    assert res["work_exponent"] < 0.3
    assert len(res["rows"]) == 10
    r0 = res["rows"][0]
    assert (r0["seq_len"], r0["causal"], r0["num_heads"], r0["num_kv_heads"]) == (512, 0, 32, 8)
    assert r0["gpu_time_s"] == pytest.approx(5.502)
    assert r0["batch_gpu_time_s"] == pytest.approx(7.564)
    assert (r0["samples"], r0["batch_samples"]) == (3, 2)
    assert math.isinf(r0["gpu_noise"])
    assert r0["cold"]["gpu_time_s"] == pytest.approx(5.502139811)
    assert r0["windowed_flops"] == work_of(512, 0)
    assert r0["est_flops"] == 2 * 512 * 512 * 32 * 128
    text = " ".join(res["explanations"])
    for needle in ("inf%", "fewer than 5 samples", "min_samples", "BWUtil", "Est. FLOPS",
                   "GPU time equals CPU time", "Roofline"):
        assert needle in text, needle


def test_packaged_log_fixed_overhead_is_4_83_s():
    res = explain.explain_log()
    assert res["fixed_overhead_s"] == pytest.approx(4.83, abs=0.005)
    assert res["median_time_s"] == pytest.approx(5.44, abs=0.005)


def test_names_used_elsewhere_still_exported():
    """bench/pathology.py, plots.py, report.py and notebook 06 use these names."""
    for name in ("explain_log", "format_text", "load_summaries", "load_pathology", "_fmt_t",
                 "parse_log", "build_rows", "_row_work", "fit_overhead", "verdict_of",
                 "_jsonable", "parse_value", "parse_warning", "add_arguments", "main",
                 "groups_markdown", "LogParseError", "OVERHEAD_FRACTION", "FLAT_EXPONENT"):
        assert callable(getattr(explain, name)) or isinstance(getattr(explain, name), float), name
    assert explain._fmt_t(4.83) == "4.83 s"
    rows = explain.build_rows(explain.parse_log(open(os.path.join(DATA, "h100_fixed.log")).read()))
    assert explain._row_work(rows[0])["windowed_flops"] == rows[0]["windowed_flops"]
    assert json.loads(json.dumps(explain._jsonable({"x": float("inf")}))) == {"x": "inf"}


def test_package_parts_are_small():
    import glob
    for path in glob.glob(os.path.join(os.path.dirname(explain.__file__), "*.py")):
        with open(path) as f:
            assert sum(1 for _ in f) <= 310, path


def test_device_header_parsed():
    res = explain.explain_log()
    d = res["device"]
    assert d["name"] == "NVIDIA A30"
    assert d["sm_version"] == 800 and d["num_sms"] == 56
    assert d["bus_peak_Bps"] == pytest.approx(933e9)
    assert d["clock_hz"] == pytest.approx(1.44e9)


def test_warnings_parsed_and_attached_to_measurement():
    res = explain.explain_log()
    ws = res["rows"][0]["warnings"]
    kinds = [(w["kind"], w["measurement"]) for w in ws]
    assert kinds == [("noise_over_threshold", "cold"), ("min_samples", "cold"),
                     ("min_samples", "batch")]
    assert math.isinf(ws[0]["noise"]) and ws[0]["max_noise"] == pytest.approx(0.005)
    assert (ws[1]["samples"], ws[1]["min_samples"]) == (3, 10)
    assert ws[2]["samples"] == 2 and ws[2]["timeout_s"] == pytest.approx(15.13)


@pytest.mark.parametrize("text,kind,fields", [
    ("Current measurement timed out (3.21s) before accumulating enough samples to estimate "
     "noise (2 < 5)", "noise_samples", {"samples": 2, "needed": 5}),
    ("Current measurement timed out (3.21s) while over noise threshold (1.25% > 0.50%)",
     "noise_over_threshold", {"noise": 0.0125}),
    ("Current measurement timed out (3.21s) before accumulating min_time (0.20s < 0.50s)",
     "min_time", {"time_s": 0.2, "min_time_s": 0.5}),
    ("something new", "other", {}),
])
def test_parse_warning(text, kind, fields):
    w = explain.parse_warning(text)
    assert w["kind"] == kind
    for k, v in fields.items():
        assert w[k] == pytest.approx(v)


@pytest.mark.parametrize("cell,value,kind", [
    ("5.502 s", 5.502, "time"), ("10.250 ms", 10.25e-3, "time"), ("12.5 us", 12.5e-6, "time"),
    ("800.000 ns", 800e-9, "time"), ("4.000 MiB", 4 * 2**20, "size"), ("2 KiB", 2048, "size"),
    ("1.906 MB/s", 1.906e6, "rate_bytes"), ("2.5 TB/s", 2.5e12, "rate_bytes"),
    ("0.35%", 0.0035, "percent"), ("3x", 3, "samples"), ("1.058K", 1058.0, "number"),
    ("2.5M", 2.5e6, "number"), ("2147483648", 2147483648, "number"), ("93.055", 93.055, "number"),
    ("", None, "empty"), ("n/a", "n/a", "text"),
])
def test_parse_value_units(cell, value, kind):
    v, k = explain.parse_value(cell)
    assert k == kind
    assert v == pytest.approx(value) if isinstance(value, float) else v == value


def test_parse_value_inf_percent():
    v, k = explain.parse_value("inf%")
    assert k == "percent" and math.isinf(v)


# --------------------------------------------------------------------------- synthetic logs

@pytest.mark.parametrize("log_unit", ["ms", "s"])
def test_healthy_log_is_work_proportional(tmp_path, log_unit):
    res = explain.explain_log(_write(tmp_path, make_log(healthy, log_unit=log_unit)))
    assert res["verdict"] == "work-proportional"
    assert res["work_exponent"] > 0.8
    assert res["fixed_overhead_s"] < 0.5 * res["median_time_s"]
    # times in the table were microseconds/milliseconds
    assert all(r["gpu_time_s"] < 0.1 for r in res["rows"])
    assert res["rows"][0]["cold"]["gpu_time_s"] == pytest.approx(healthy(512, 0), rel=1e-3)


def test_flat_log_is_overhead_dominated(tmp_path):
    res = explain.explain_log(_write(tmp_path, make_log(flat, samples=3, noise="inf%")))
    assert res["verdict"] == "overhead-dominated"
    assert 4.0 < res["fixed_overhead_s"] < 6.0


def test_overhead_plus_small_work_is_overhead_dominated(tmp_path):
    # a 2 s fixed cost plus a real kernel: still dominated by the fixed cost
    res = explain.explain_log(_write(tmp_path, make_log(lambda S, c: 2.0 + healthy(S, c))))
    assert res["verdict"] == "overhead-dominated"
    assert res["fixed_overhead_s"] == pytest.approx(2.0, rel=0.01)


def test_kernel_with_launch_overhead_small_sizes(tmp_path):
    # latency-bound at small S, linear at large S: the exponent decides
    res = explain.explain_log(_write(tmp_path, make_log(lambda S, c: 20e-6 + work_of(S, c) / 1e13)))
    assert res["verdict"] == "work-proportional"


def test_single_row_is_undetermined(tmp_path):
    res = explain.explain_log(_write(tmp_path, make_log(healthy, seq_lens=(512,), causals=(0,))))
    assert res["verdict"] == "undetermined"


def test_one_size_is_undetermined(tmp_path):
    # one sequence length, causal 0 and 1: the work halves but the bytes do not, so a
    # memory-bound kernel (the same time for both masks) must not read as a fixed cost
    memory_bound = lambda S, c: 3.1e-3 if c == 0 else 2.5e-3  # noqa: E731
    res = explain.explain_log(_write(tmp_path, make_log(memory_bound, seq_lens=(131072,))))
    assert res["verdict"] == "undetermined"
    text = explain.format_text(res)
    assert "one problem size" in text and "overhead-dominated" not in text.split("Rule")[0]
    # the same kernel over two sizes is judged again
    res = explain.explain_log(_write(tmp_path, make_log(
        lambda S, c: memory_bound(S, c) * S / 131072, seq_lens=(65536, 131072))))
    assert res["verdict"] == "work-proportional"


def test_committed_synthetic_logs():
    expect = {"healthy_h100_us.log": "work-proportional",
              "flat_overhead_new_nvbench.log": "overhead-dominated"}
    for name, verdict in expect.items():
        res = explain.explain_log(os.path.join(DATA, name))
        assert res["verdict"] == verdict, name
    res = explain.explain_log(os.path.join(DATA, "flat_overhead_new_nvbench.log"))
    kinds = {w["kind"] for r in res["rows"] for w in r["warnings"]}
    assert {"noise_samples", "min_samples"} <= kinds


def test_summary_results_are_used(tmp_path, monkeypatch):
    rdir = tmp_path / "results" / "h100"
    rdir.mkdir(parents=True)
    recs = [{"kernel": "naive", "num_seqs": 1, "seq_len": S, "num_heads": 32, "num_kv_heads": 8,
             "head_size": 128, "window_left": 128, "window_right": 128, "causal": 0,
             "gpu_time_s": 1e-3 * S / 512} for S in (512, 8192)]
    (rdir / "summary.json").write_text(json.dumps(
        {"device": "NVIDIA H100", "date": "x", "versions": {}, "ceilings": {}, "records": recs}))
    res = explain.explain_log(results_dir=str(tmp_path / "results"))
    assert any("Committed results on NVIDIA H100" in e and "naive" in e
               for e in res["explanations"])
    assert [d["history"] for d in res["results"]] == [False]
    # absent results directory: the packaged summary, as `attn-numba report` uses it
    from attn_numba import sources
    res = explain.explain_log(results_dir=str(tmp_path / "nothing"))
    assert [d["path"].startswith("attn_numba/data/results/") for d in res["results"]] == [True]
    # and with no packaged summary either: no crash, no such sentence
    monkeypatch.setattr(sources, "PACKAGED_RESULTS", tmp_path / "no-packaged-results")
    res = explain.explain_log(results_dir=str(tmp_path / "nothing"))
    assert not any("Committed results" in e for e in res["explanations"]) and not res["results"]
    assert sources.NO_GPU_HINT in explain.format_text(res)


# --------------------------------------------------------------------------- CLI

def test_cli_json_schema():
    out = subprocess.run([sys.executable, "-m", "attn_numba.cli", "explain", "--json"],
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    for key in ("rows", "verdict", "fixed_overhead_s", "work_exponent", "explanations", "device"):
        assert key in d
    assert d["verdict"] == "overhead-dominated"
    assert isinstance(d["explanations"], list) and all(isinstance(e, str) for e in d["explanations"])
    for r in d["rows"]:
        for key in ("seq_len", "causal", "num_heads", "head_size", "window_left", "window_right",
                    "gpu_time_s", "batch_gpu_time_s", "samples"):
            assert key in r


def test_cli_text_and_path(tmp_path):
    p = _write(tmp_path, make_log(healthy))
    out = subprocess.run([sys.executable, "-m", "attn_numba.cli", "explain", p],
                         capture_output=True, text=True, check=True).stdout
    assert "verdict: work-proportional" in out


def test_cli_missing_file(tmp_path):
    r = subprocess.run([sys.executable, "-m", "attn_numba.cli", "explain", str(tmp_path / "no.log")],
                       capture_output=True, text=True)
    assert r.returncode == 1


def _write_data():
    os.makedirs(DATA, exist_ok=True)
    with open(os.path.join(DATA, "healthy_h100_us.log"), "w") as f:
        f.write(make_log(healthy))
    warns = ["Current measurement timed out (3.10s) before accumulating enough samples to "
             "estimate noise (3 < 5)",
             "Current measurement timed out (3.10s) before accumulating min_samples (3 < 10)"]
    with open(os.path.join(DATA, "flat_overhead_new_nvbench.log"), "w") as f:
        f.write(make_log(lambda S, c: 0.7 + 0.05 * math.cos(S + c), samples=3, noise="inf%",
                         warnings=warns, seq_lens=(512, 2048, 8192), causals=(0,)))


if __name__ == "__main__" and "--write-data" in sys.argv:
    _write_data()


# --------------------------------------------------------------------------- real H100 logs
# tests/data/h100_*.log: NVBench (cuda-bench 0.3.0) output of attn_numba.bench.pathology on an
# H100 (the reproduction committed in results/h100/pathology.json).

def test_real_h100_logs():
    res = explain.explain_log(os.path.join(DATA, "h100_H1_sync.log"))
    assert res["verdict"] == "overhead-dominated"          # JIT in the launcher
    assert res["device"]["sm_version"] == 900
    assert all(r["gpu_time_s"] == pytest.approx(r["cpu_time_s"], rel=1e-3) for r in res["rows"])
    res = explain.explain_log(os.path.join(DATA, "h100_fixed.log"))
    assert res["verdict"] == "work-proportional"           # the fixed harness
    assert len(res["rows"]) == 10 and all(r["samples"] >= 10 for r in res["rows"])
    assert res["work_exponent"] > 0.8


def test_failed_states_come_from_the_log():
    res = explain.explain_log(os.path.join(DATA, "h100_H1_default.log"))
    assert res["verdict"] == "undetermined"
    assert len(res["rows"]) == 3 and all(r["from_log_only"] and r["failures"] for r in res["rows"])
    assert any("Deadlock detected" in e for e in res["explanations"])


# --------------------------------------------------------------------------- module structure

def _explain_imports():
    """{module: set of explain modules it imports}, from the source (lazy imports included)."""
    import ast
    import pathlib
    pkg = pathlib.Path(explain.__file__).parent
    names = {p.stem for p in pkg.glob("*.py")} - {"__init__"}
    graph = {}
    for name in names:
        tree = ast.parse((pkg / f"{name}.py").read_text())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level == 1 and mod:
                    deps.add(mod.split(".")[0])
                elif node.level == 1:  # from . import diagnose
                    deps |= {a.name for a in node.names}
                elif mod.startswith("attn_numba.explain."):
                    deps.add(mod.split(".")[2])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names
                         if a.name.startswith("attn_numba.explain.")}
        graph[name] = deps & names
    return graph


def _cycle(graph):
    """One import cycle of ``graph`` as a list of modules, or None."""
    state = {}

    def visit(n, path):
        state[n] = "open"
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                return path[path.index(m):] + [m]
            if m not in state:
                found = visit(m, path + [m])
                if found:
                    return found
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n, [n])
            if found:
                return found
    return None


def test_explain_modules_import_no_circle():
    """No explain module imports one that imports it back (render is a library, cli the CLI)."""
    import importlib
    graph = _explain_imports()
    assert {"render", "cli", "core", "context", "diagnose"} <= set(graph)
    for name in graph:
        importlib.import_module(f"attn_numba.explain.{name}")
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"
    assert "core" not in graph["render"] and "cli" not in graph["render"]
    # the check can fail: the old render -> core -> render circle is found
    assert _cycle(dict(graph, render=graph["render"] | {"core"})) is not None


def test_explain_json_into_a_closed_pipe():
    """``attn-numba explain --json | head -c 10``: no BrokenPipeError traceback."""
    p = subprocess.Popen(f"{sys.executable} -m attn_numba.cli explain --json | head -c 10",
                         shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=300)
    assert out.startswith('{"log"') and "Traceback" not in err and "BrokenPipe" not in err, err


def test_explain_names_its_results_newest_first_and_relative(tmp_path):
    """The text ends with the result sets read, newest device first, history marked, as paths
    relative to where it runs, and the one sentence for a machine with no GPU."""
    from attn_numba import sources
    from test_plots import synthetic_summary
    for name in ("h100-quick", "h100", "h200"):
        synthetic_summary(tmp_path / "results" / name / "summary.json")
    out = subprocess.run([sys.executable, "-m", "attn_numba.cli", "explain", "--results",
                          "results"], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=os.getcwd())).stdout
    last = out.strip().splitlines()[-2:]
    h200, h100, quick = (os.path.join("results", n, "summary.json")
                         for n in ("h200", "h100", "h100-quick"))
    assert last[0].startswith(f"Results read, newest device first: {h200} (")
    assert last[0].index(h200) < last[0].index("history:") < last[0].index(h100) \
        < last[0].index(quick)
    assert last[1] == sources.NO_GPU_HINT
    assert str(tmp_path) not in out
