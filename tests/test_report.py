"""`attn-numba report` on the CPU: explains the log, uses results, draws figures, writes REPORT.md."""
import contextlib
import io
import os

from attn_numba import cli, on_simulator
from test_plots import synthetic_summary


def run(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(argv)
    return rc, out.getvalue()


def test_report_with_results(tmp_path):
    synthetic_summary(tmp_path / "results" / "synthetic-gpu" / "summary.json")
    rc, out = run(["report", "--results", str(tmp_path / "results"),
                   "--figures", str(tmp_path / "figures"), "--no-bench"])
    assert rc == 0
    report = (tmp_path / "figures" / "REPORT.md").read_text()
    assert "Synthetic GPU" in report and "| naive | 512 | 0 |" in report
    assert "![synthetic-gpu_time_vs_seqlen](synthetic-gpu_time_vs_seqlen.png)" in report
    assert len(list((tmp_path / "figures").glob("*.png"))) == 4
    assert "wrote" in out and "drew 4 figure(s)" in out
    if on_simulator():
        assert "no CUDA GPU here" in report
    try:
        import attn_numba.explain  # noqa: F401
        assert "Verdict: **overhead-dominated**" in report  # the A30 log's diagnosis
    except ImportError:
        assert "not diagnosed" in report.lower() or "not in this build" in report


def test_report_without_results(tmp_path, monkeypatch):
    from attn_numba import sources
    monkeypatch.setattr(sources, "PACKAGED_RESULTS", tmp_path / "no-packaged-results")
    rc, out = run(["report", "--results", str(tmp_path / "none"), "--figures",
                   str(tmp_path / "f"), "--no-bench"])
    assert rc == 0
    report = (tmp_path / "f" / "REPORT.md").read_text()
    assert "nothing has been measured on a GPU yet" in report


def test_report_outside_a_checkout_uses_the_packaged_summary(tmp_path):
    """As from a wheel: no results/ folder, so the summary shipped in attn_numba/data is used,
    and the report says so and names its device."""
    import json
    from attn_numba import sources
    packaged = sorted(sources.PACKAGED_RESULTS.glob("*/summary.json"))
    assert len(packaged) == 1, "exactly one summary must be packaged (python -m attn_numba.sources --package)"
    device = json.loads(packaged[0].read_text())["device"]
    rc, out = run(["report", "--results", str(tmp_path / "none"), "--figures",
                   str(tmp_path / "f"), "--no-bench"])
    assert rc == 0
    assert "summary shipped in the package" in out
    report = (tmp_path / "f" / "REPORT.md").read_text()
    assert device in report and "nothing has been measured" not in report
    assert len(list((tmp_path / "f").glob(packaged[0].parent.name + "_*.png"))) >= 4


def test_packaged_summary_is_the_preferred_committed_one():
    """The shipped summary is a copy of the newest committed one (h200 when present, else
    h100); after a new GPU run: python -m attn_numba.sources --package"""
    from attn_numba import sources
    root = sources._checkout_results(__file__)
    preferred = sources.pick_summary(root)
    packaged = sorted(sources.PACKAGED_RESULTS.glob("*/summary.json"))
    assert [p.parent.name for p in packaged] == [preferred.parent.name]
    assert packaged[0].read_bytes() == preferred.read_bytes()


def test_report_explains_the_bench_logs_next_to_summaries(tmp_path):
    """Step 2 of the report: every nvbench*.md next to a summary.json (the log bench just wrote,
    or a committed one) is explained and each group's verdict shown."""
    import os
    import shutil
    d = tmp_path / "results" / "synthetic-gpu"
    synthetic_summary(d / "summary.json")
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    shutil.copy(os.path.join(data, "h100_bench_6kernels.log"), d / "nvbench.md")
    (d / "nvbench_broken.md").write_text("| a | b |\n|---|---|\n| 1 |\n")
    rc, out = run(["report", "--results", str(tmp_path / "results"),
                   "--figures", str(tmp_path / "figures"), "--no-bench"])
    assert rc == 0
    report = (tmp_path / "figures" / "REPORT.md").read_text()
    assert "## Verdicts of the benchmark logs" in report
    for k in ("naive", "tiled", "flash", "flash_tc", "flexattention", "sdpa"):
        assert f"| Kernel={k} | 10 | work-proportional |" in report
    assert "explained " in out and "flash_tc work-proportional" in out
    assert "nvbench_broken.md failed: line 3" in out       # a broken log does not stop it


def test_pick_summary_prefers_h200_then_h100(tmp_path):
    from attn_numba import sources
    from test_plots import synthetic_summary
    synthetic_summary(tmp_path / "h100" / "summary.json")
    synthetic_summary(tmp_path / "h100-quick" / "summary.json")
    assert sources.pick_summary(tmp_path).parent.name == "h100"
    synthetic_summary(tmp_path / "nvidia-h200-quick" / "summary.json")
    assert sources.pick_summary(tmp_path).parent.name == "h100"
    synthetic_summary(tmp_path / "nvidia-h200" / "summary.json")
    assert sources.pick_summary(tmp_path).parent.name == "nvidia-h200"
    synthetic_summary(tmp_path / "h200" / "summary.json")
    path, doc = sources.load_summary(tmp_path, quiet=True)
    assert path.parent.name == "h200" and doc["device"] == "Synthetic GPU"
    text = sources.source_text(doc, path)
    assert text.startswith("Synthetic GPU, " + doc["date"]) and text.endswith("h200/summary.json")
    import pytest
    with pytest.raises(TypeError):
        sources.pick_summary(tmp_path, prefer="h200")


def test_source_text_names_device_date_and_file():
    from attn_numba import sources
    assert sources.source_text({"device": "NVIDIA H200", "date": "2026-11-30"},
                               "results/h200/summary.json") == \
        "NVIDIA H200, 2026-11-30, results/h200/summary.json"
    # the GPU check scripts record the device as {"name", "cc"}
    text = sources.source_text({"device": {"name": "NVIDIA H200", "cc": [9, 0]}}, "x.json")
    assert text == "NVIDIA H200 (sm_90), undated, x.json"
    assert sources.source_text({"simulated": True}, "s.json").startswith(
        "device not recorded (SIMULATED)")


def test_report_tells_the_story_of_explain(tmp_path, monkeypatch):
    """report and explain read the same result sets in the same order (newest device first,
    history after, marked); no absolute path reaches the report; one no-GPU sentence."""
    from attn_numba import explain, sources
    for name in ("h100-quick", "h100", "h200"):
        synthetic_summary(tmp_path / "results" / name / "summary.json")
    monkeypatch.chdir(tmp_path)
    rc, out = run(["report", "--results", "results", "--figures", "figures", "--no-bench"])
    assert rc == 0
    report = (tmp_path / "figures" / "REPORT.md").read_text()
    heads = [line for line in report.splitlines() if line.startswith("### ")]
    order = [os.path.join("results", n, "summary.json") for n in ("h200", "h100", "h100-quick")]
    assert [h.split("`")[1] for h in heads] == order
    assert [h.startswith("### History: ") for h in heads] == [False, True, True]
    res = explain.explain_log(results_dir="results")
    assert [d["path"] for d in res["results"]] == order
    assert [d["history"] for d in res["results"]] == [False, True, True]
    for text in (report, out):
        assert str(tmp_path) not in text and "/work/" not in text and "/tmp/" not in text
        assert sources.PACKAGED_RESULTS.as_posix() not in text
    if on_simulator():
        assert report.count(sources.NO_GPU_HINT) == 1
        assert "using the committed results under" not in out  # the old contradiction


def test_committed_report_has_no_machine_path():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "figures", "REPORT.md"), encoding="utf-8").read()
    for bad in ("/work/", "/opt/", "/tmp/", "/home/", "/root/", "/Users/"):
        assert bad not in text, bad
