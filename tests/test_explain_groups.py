"""``attn-numba explain`` on multi-kernel logs: one fit, verdict and set of sentences per group
(Kernel, other non-work axes, device), host-bound detection, JSON ``groups`` schema."""
import json
import os
import subprocess
import sys

import pytest

from attn_numba import explain
from nvbench_logs import flat, grid, healthy, render

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
H100_BENCH = os.path.join(DATA, "h100_bench_6kernels.log")
KERNELS = ("naive", "tiled", "flash", "flash_tc", "flexattention", "sdpa")


def explain_text(text):
    return explain.explain_log(text=text)


def test_seed_log_is_one_group_with_the_same_answer():
    res = explain.explain_log()
    assert len(res["groups"]) == 1 and res["groups"][0]["axes"] == {}
    g = res["groups"][0]
    assert res["verdict"] == g["verdict"] == "overhead-dominated"
    assert res["fixed_overhead_s"] == pytest.approx(4.83, abs=0.005)
    assert g["fixed_overhead_s"] == res["fixed_overhead_s"]
    assert res["explanations"][:len(g["explanations"])] == g["explanations"]
    assert g["host_s_per_call"] == pytest.approx(6.3e-5, rel=0.1)    # CPU - GPU, tens of us
    assert 0.6 < g["batch_over_cold"] < 1.4


@pytest.fixture(scope="module")
def h100():
    return explain.explain_log(H100_BENCH)


def test_h100_bench_log_one_work_proportional_group_per_kernel(h100):
    assert [g["axes"] for g in h100["groups"]] == [{"Kernel": k} for k in KERNELS]
    for g in h100["groups"]:
        assert g["verdict"] == "work-proportional", g["axes"]
        assert len(g["rows"]) == 10
        assert all(r["Kernel"] == g["axes"]["Kernel"] for r in g["rows"])
        assert g["work_exponent"] > 0.7
    assert h100["verdict"] == "work-proportional"
    assert len(h100["rows"]) == 60 and all(r["status"] == "ok" for r in h100["rows"])


def test_h100_flash_tc_host_work_per_call_reported(h100):
    g = next(g for g in h100["groups"] if g["axes"] == {"Kernel": "flash_tc"})
    # median of CPU - GPU over its 10 rows: 1.08 ms of host work per call vs 22-379 us GPU
    assert g["host_s_per_call"] == pytest.approx(1.08e-3, rel=0.05)
    r512 = next(r for r in g["rows"] if r["seq_len"] == 512 and r["causal"] == 0)
    assert r512["cpu_time_s"] - r512["gpu_time_s"] > 30 * r512["gpu_time_s"]
    host = [e for e in g["explanations"] if e.startswith("Host-bound")]
    assert len(host) == 1 and "every row" in host[0] and "median 1.08 ms" in host[0]
    assert "[Kernel=flash_tc] Host-bound in every row" in " ".join(h100["explanations"])
    # naive is slow enough that its ~1.5 ms host time is not the limit
    naive = next(g for g in h100["groups"] if g["axes"] == {"Kernel": "naive"})
    assert not any(e.startswith("Host-bound") for e in naive["explanations"])


def test_h100_batch_launch_rate(h100):
    by = {g["axes"]["Kernel"]: g for g in h100["groups"]}
    assert by["naive"]["batch_over_cold"] is None              # no Batch column for Numba
    assert by["flexattention"]["batch_over_cold"] > 2
    assert any("limited by host work per launch" in e for e in by["flexattention"]["explanations"])
    assert 0.9 < by["sdpa"]["batch_over_cold"] < 1.2


def test_h100_nvbench_md_same_groups_as_the_python_stdout(h100):
    """results/h100/nvbench.md is NVBench's own markdown of the same run (no interleaved
    prints): same groups and verdicts as the captured stdout."""
    md = os.path.join(os.path.dirname(DATA), "..", "results", "h100", "nvbench.md")
    if not os.path.exists(md):
        pytest.skip("results/h100/nvbench.md not in this checkout")
    res = explain.explain_log(md)
    assert [(g["axes"], g["verdict"]) for g in res["groups"]] == \
        [(g["axes"], g["verdict"]) for g in h100["groups"]]


def _mixed(flat_kernel="flat"):
    states = (grid(healthy, kernel="fast", batch=lambda S, c: 0.95 * healthy(S, c))
              + grid(flat, kernel=flat_kernel, samples=3, batch=flat, batch_samples=3)
              + grid(lambda S, c: 2 * healthy(S, c), kernel="slow"))
    return render(states)


def test_one_flat_kernel_among_healthy_ones():
    res = explain_text(_mixed())
    v = {g["axes"]["Kernel"]: g["verdict"] for g in res["groups"]}
    assert v == {"fast": "work-proportional", "flat": "overhead-dominated",
                 "slow": "work-proportional"}
    assert res["verdict"] == "overhead-dominated"          # any group
    assert res["verdict_group"] == {"Kernel": "flat"}
    assert res["fixed_overhead_s"] == pytest.approx(0.05, rel=0.1)
    flat_g = next(g for g in res["groups"] if g["axes"] == {"Kernel": "flat"})
    assert any("A fixed cost of ~" in e for e in flat_g["explanations"])
    fast_g = next(g for g in res["groups"] if g["axes"] == {"Kernel": "fast"})
    assert not any("A fixed cost of ~" in e for e in fast_g["explanations"])


def test_all_rows_fitted_together_would_be_wrong():
    """The reason for groups: one curve through all kernels' rows has a poor fit."""
    res = explain_text(_mixed())
    pts = [(r["windowed_flops"], r["gpu_time_s"]) for r in res["rows"]]
    together = explain.fit_overhead(*zip(*pts))
    assert together["r2"] < 0.5
    assert all(g["fit"]["r2"] > 0.9 for g in res["groups"] if g["axes"]["Kernel"] != "flat")


def test_other_string_axis_and_devices_group_too():
    text = render(grid(healthy, kernel="a", device=0) + grid(flat, kernel="a", device=1,
                                                              samples=3))
    res = explain_text(text)
    assert [g["axes"] for g in res["groups"]] == [
        {"Kernel": "a", "Device": "[0] NVIDIA H100 80GB HBM3"},
        {"Kernel": "a", "Device": "[1] NVIDIA A30"}]
    assert [g["verdict"] for g in res["groups"]] == ["work-proportional", "overhead-dominated"]
    assert [d["name"] for d in res["devices"]] == ["NVIDIA H100 80GB HBM3", "NVIDIA A30"]
    # each row matched its own device's Run: line and roofline
    a30 = res["groups"][1]["rows"]
    assert all(r["device_index"] == 1 and r["cold"] for r in a30)
    assert a30[0]["memory_s"] == pytest.approx(a30[0]["min_bytes_fp16"] / 933e9)


def test_json_groups_schema(tmp_path):
    p = tmp_path / "mixed.md"
    p.write_text(_mixed())
    out = subprocess.run([sys.executable, "-m", "attn_numba.cli", "explain", "--json", str(p)],
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    for key in ("rows", "verdict", "fixed_overhead_s", "work_exponent", "fit", "explanations",
                "device", "groups"):
        assert key in d
    assert d["verdict"] == "overhead-dominated"
    assert len(d["rows"]) == 30 and all("axes" in r and "Kernel" in r["axes"] for r in d["rows"])
    assert len(d["groups"]) == 3
    for g in d["groups"]:
        assert set(g) >= {"axes", "rows", "verdict", "fixed_overhead_s", "work_exponent", "fit",
                          "host_s_per_call", "batch_over_cold", "explanations"}
        assert len(g["rows"]) == 10
    by = {g["axes"]["Kernel"]: g for g in d["groups"]}
    assert by["slow"]["batch_over_cold"] is None
    assert by["fast"]["batch_over_cold"] == pytest.approx(0.95, rel=0.01)


def test_text_output_has_kernel_column_and_sections(tmp_path):
    p = tmp_path / "mixed.md"
    p.write_text(_mixed())
    out = subprocess.run([sys.executable, "-m", "attn_numba.cli", "explain", str(p)],
                         capture_output=True, text=True, check=True).stdout
    header = next(ln for ln in out.splitlines() if "GPU time" in ln)
    assert header.split()[0] == "Kernel"
    assert "== Kernel=flat (10 rows): overhead-dominated" in out
    assert "== Kernel=fast (10 rows): work-proportional" in out
    assert "verdict: overhead-dominated" in out


def test_groups_markdown_for_the_report(h100):
    md = explain.groups_markdown(h100, "bench.log")
    assert md[0].startswith("`bench.log` (NVIDIA H100 80GB HBM3): **work-proportional**")
    assert sum(ln.startswith("| Kernel=") for ln in md) == 6
    assert any(ln.startswith("| Kernel=flash_tc | 10 | work-proportional") and "1.08 ms" in ln
               for ln in md)
