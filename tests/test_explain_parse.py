"""Parsing NVBench markdown logs robustly: C++ NVBench and Python cuda-bench output, several
devices, units ns..s, missing and extra columns, no Log section, no table, failed and skipped
states; malformed input raises LogParseError naming the line, and the CLI prints one line."""
import os
import subprocess
import sys

import pytest

from attn_numba import explain
from attn_numba.explain import LogParseError
from nvbench_logs import flat, grid, healthy, render

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

CPP_LOG = """\
# Devices

## [0] `NVIDIA H100 80GB HBM3`
* SM Version: 900 (PTX Version: 900)
* Number of SMs: 132
* SM Default Clock Rate: 1980 MHz
* Global Memory: 80000 MiB Free / 81000 MiB Total
* Global Memory Bus Peak: 3352 GB/sec (5120-bit DDR @2619MHz)

# Log

```
Run:  [1/4] run_mha_fwd [Device=0 T{ct}=F16 seq_len=2^9 num_heads=32 head_size=128 window_left=128 window_right=128 causal=0]
\x1b[1;32mPass: \x1b[0mCold: 0.030000ms GPU, 0.045000ms CPU, 0.50s total GPU, 0.90s total wall, 16667x 
Run:  [2/4] run_mha_fwd [Device=0 T{ct}=F16 seq_len=2^13 num_heads=32 head_size=128 window_left=128 window_right=128 causal=0]
Pass: Cold: 0.400000ms GPU, 0.415000ms CPU, 0.50s total GPU, 0.55s total wall, 1250x 
Run:  [3/4] run_mha_fwd [Device=0 T{ct}=F32 seq_len=2^9 num_heads=32 head_size=128 window_left=128 window_right=128 causal=0]
Pass: Cold: 0.090000ms GPU, 0.105000ms CPU, 0.50s total GPU, 0.70s total wall, 5556x 
Run:  [4/4] run_mha_fwd [Device=0 T{ct}=F32 seq_len=2^13 num_heads=32 head_size=128 window_left=128 window_right=128 causal=0]
Pass: Cold: 1.300000ms GPU, 1.315000ms CPU, 0.50s total GPU, 0.52s total wall, 385x 
```

# Benchmark Results

## run_mha_fwd

### [0] NVIDIA H100 80GB HBM3

| T{ct} |     seq_len     | num_heads | head_size | window_left | window_right | causal | Samples |  CPU Time  | Noise  |  GPU Time  | Noise  |
|-------|-----------------|-----------|-----------|-------------|--------------|--------|---------|------------|--------|------------|--------|
|   F16 |   2^9 = 512     |        32 |       128 |         128 |          128 |      0 |  16667x |  45.000 us | 10.00% |  30.000 us |  1.00% |
|   F16 |  2^13 = 8192    |        32 |       128 |         128 |          128 |      0 |   1250x | 415.000 us |  1.00% | 400.000 us |  0.50% |
|   F32 |   2^9 = 512     |        32 |       128 |         128 |          128 |      0 |   5556x | 105.000 us |  5.00% |  90.000 us |  1.00% |
|   F32 |  2^13 = 8192    |        32 |       128 |         128 |          128 |      0 |    385x |   1.315 ms |  1.00% |   1.300 ms |  0.50% |
"""


def ex(text):
    return explain.explain_log(text=text)


def test_cpp_nvbench_log_pow2_and_type_axes_and_colour():
    res = ex(CPP_LOG)
    assert [g["axes"] for g in res["groups"]] == [{"T{ct}": "F16"}, {"T{ct}": "F32"}]
    r = res["rows"][1]
    assert r["seq_len"] == 8192 and r.get("num_kv_heads") is None and r["windowed_flops"] > 0
    assert r["cold"]["gpu_time_s"] == pytest.approx(0.4e-3)   # matched through 2^13 = 8192
    assert res["rows"][0]["cold"]["cpu_time_s"] == pytest.approx(45e-6)  # ANSI codes stripped
    assert all(g["verdict"] == "work-proportional" for g in res["groups"])


def test_python_cuda_bench_stdout_with_interleaved_prints():
    """results/h100/bench.log (trimmed): attn-numba's own progress lines and Python warnings
    inside the Log, lines before # Devices and after the table."""
    parsed = explain.parse_log(open(os.path.join(DATA, "h100_bench_6kernels.log")).read())
    assert len(parsed["runs"]) == 60 and len(parsed["tables"]) == 1
    assert parsed["runs"][3]["axes"]["Kernel"] == "flash_tc"
    assert parsed["runs"][3]["cold"]["cpu_time_s"] == pytest.approx(1.121405e-3)
    assert [w["kind"] for w in parsed["runs"][3]["warnings"]] == ["noise_over_threshold",
                                                                   "min_time"]


@pytest.mark.parametrize("unit", ["ns", "us", "ms", "s"])
def test_log_units(unit):
    res = ex(render(grid(healthy), unit=unit))
    r = res["rows"][0]
    assert r["cold"]["gpu_time_s"] == pytest.approx(healthy(512, 0), rel=1e-3)
    assert res["verdict"] == "work-proportional"


@pytest.mark.parametrize("cell,seconds", [("800.000 ns", 8e-7), ("12.500 us", 12.5e-6),
                                          ("12.5 \u00b5s", 12.5e-6), ("3.250 ms", 3.25e-3),
                                          ("5.502 s", 5.502)])
def test_table_time_units(cell, seconds):
    assert explain.parse_value(cell) == (pytest.approx(seconds), "time")


def test_missing_summary_columns_fall_back():
    no_gpu = ex(render(grid(healthy), log=False, drop_columns=("GPU Time", "Noise", "BWUtil",
                                                                 "Est. FLOPS", "Batch GPU")))
    assert all(r["gpu_time_s"] is None and r["cpu_time_s"] for r in no_gpu["rows"])
    assert no_gpu["time_column"] == "cpu_time_s"
    assert no_gpu["verdict"] == "work-proportional"
    assert not any("BWUtil" in e or "Est. FLOPS" in e for e in no_gpu["explanations"])


def test_extra_columns_are_kept():
    res = ex(render(grid(healthy), extra_columns=[("Tokens/s", "1.5M"), ("Note", "warm L2")]))
    r = res["rows"][0]
    assert r["columns"]["Tokens/s"] == pytest.approx(1.5e6) and r["columns"]["Note"] == "warm L2"
    assert "Note" not in r["axes"]            # a text column after the summaries is not an axis
    assert len(res["groups"]) == 1


def test_table_without_log_section():
    res = ex(render(grid(healthy, kernel="k") + grid(flat, kernel="f", samples=3), log=False))
    assert {g["axes"]["Kernel"]: g["verdict"] for g in res["groups"]} == {
        "k": "work-proportional", "f": "overhead-dominated"}
    assert all(r["cold"] is None and r["status"] == "ok" for r in res["rows"])


def test_log_without_table_and_without_header():
    res = ex(render(grid(healthy), table=False, devices_header=False))
    assert len(res["rows"]) == 10 and all(r["from_log_only"] for r in res["rows"])
    assert res["verdict"] == "work-proportional" and res["device"] == {}


def test_failed_and_skipped_states():
    states = grid(healthy) + grid(healthy, seq_lens=(16384,), causals=(0,), fail="out of memory") \
        + grid(healthy, seq_lens=(32768,), causals=(0,), skip="too large")
    res = ex(render(states))
    st = {r["seq_len"]: r["status"] for r in res["rows"]}
    assert st[16384] == "failed" and st[32768] == "skipped" and st[512] == "ok"
    failed = next(r for r in res["rows"] if r["seq_len"] == 16384)
    assert failed["failures"] == ["out of memory"] and failed["gpu_time_s"] is None
    assert res["verdict"] == "work-proportional"          # fitted on the ok rows only
    assert len(res["groups"][0]["rows"]) == 12


def test_no_data_table():
    text = render(grid(healthy, fail="Deadlock detected"), table=False) + \
        "# Benchmark Results\n\n## run_mha_fwd\n\n### [0] NVIDIA H100 80GB HBM3\n\nNo data -- check log.\n"
    res = ex(text)
    assert res["verdict"] == "undetermined" and all(r["status"] == "failed" for r in res["rows"])


def _line_of(text, needle):
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


@pytest.mark.parametrize("break_it,needle", [
    (lambda t: t.replace("| 1 | 1024 | 32 | 8 |", "| 1 | 1024 | 32 |", 1), "| 1 | 1024 | 32 |"),
    (lambda t: t.replace("Pass: Cold: 2.025606ms GPU", "Pass: Cold: fast GPU", 1),
     "Pass: Cold: fast GPU"),
    (lambda t: t.replace("run_mha_fwd [Device=0 num_seqs=1 seq_len=1024",
                         "run_mha_fwd Device=0 num_seqs=1 seq_len=1024", 1), "Device=0 num_seqs=1 seq_len=1024 "),
    (lambda t: t.replace("| 2.026 ms |", "| soon |", 1), "| soon |"),
    (lambda t: t.replace("| 1 | 2048 | 32 |", "| 1 | big | 32 |", 1), "| 1 | big | 32 |"),
])
def test_malformed_input_names_the_line(break_it, needle):
    text = break_it(render(grid(healthy)))
    assert needle in text
    with pytest.raises(LogParseError) as exc:
        ex(text)
    assert exc.value.line == _line_of(text, needle)
    assert f"line {exc.value.line}:" in str(exc.value)
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize("text", ["", "hello world\n", "# Devices\n\n## [0] `X`\n",
                                  "| a | b |\n", "\x00\x01binary"])
def test_not_a_log(text):
    with pytest.raises(LogParseError):
        ex(text)


def test_text_must_be_str():
    with pytest.raises(TypeError, match="text"):
        explain.parse_log(b"# Log")


@pytest.mark.parametrize("content", [
    "Run:  [1/1] run_mha_fwd [Device=0 seq_len=512 num_heads=32 head_size=128]\n"
    "Pass: Cold: 12 parsecs GPU, 1ms CPU, 1x\n",
    "nothing to see\n",
    b"\xff\xfe\x00garbage",
])
def test_cli_malformed_is_one_line_not_a_traceback(tmp_path, content):
    p = tmp_path / "bad.log"
    (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    r = subprocess.run([sys.executable, "-m", "attn_numba.cli", "explain", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and r.stderr.startswith("attn-numba explain: ")
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_directory_is_an_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "attn_numba.cli", "explain", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
