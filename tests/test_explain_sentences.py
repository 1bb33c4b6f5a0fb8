"""Every sentence of ``attn-numba explain`` is emitted only when its premise holds: for each
sentence, a log where the premise is true (the sentence appears) and one where it is false
(it does not). Logs come from tests/nvbench_logs.py or tests/data."""
import os

import pytest

from attn_numba import explain
from nvbench_logs import flat, grid, healthy, render, work_of

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
RESULTS = os.path.join(os.path.dirname(DATA), "..", "results")
MIN_SAMPLES_SLOW = "Current measurement timed out (15.10s) before accumulating min_samples (3 < 10)"
MIN_SAMPLES_FAST = "Current measurement timed out (1.50s) before accumulating min_samples (300 < 500)"
NOISE_INF = "Current measurement timed out (16.51s) while over noise threshold (inf% > 0.50%)"
NOISE_FIN = "Current measurement timed out (1.50s) while over noise threshold (1.61% > 1.00%)"


def fast(S, c):
    """A fast kernel: 20 us launch latency plus 200 TFLOP/s of windowed work (<= 0.2 ms)."""
    return 2e-5 + work_of(S, c) / 2e14


def seconds_host(S, c):
    return 5.0 + 0.5 * ((S // 512 + c) % 3)


LOGS = {
    # the user's A30 log: seconds per call, GPU = CPU, Batch ~ Cold, dense Est. FLOPS
    "seed": lambda: explain.explain_log(),
    "healthy": lambda: render(grid(healthy)),
    "healthy_batch_ms": lambda: render(grid(healthy, batch=lambda S, c: 0.97 * healthy(S, c))),
    "fast": lambda: render(grid(fast)),
    "launch_rate_bound": lambda: render(grid(fast, batch=lambda S, c: 2e-4 + fast(S, c))),
    "host_bound": lambda: render(grid(fast, cpu=lambda S, c: 1e-3 + fast(S, c))),
    "flat_gpu_only": lambda: render(grid(flat, cpu=lambda S, c: 0.2)),
    "flat_host": lambda: render(grid(flat, samples=3)),
    "seconds_batch_wall": lambda: render(grid(seconds_host, samples=3, batch=seconds_host,
                                              batch_samples=3), noise="inf%"),
    "seconds_batch_untimed": lambda: render(grid(
        seconds_host, samples=3, batch=lambda S, c: 1e-3, batch_samples=3,
        total_wall=lambda S, c: 3 * seconds_host(S, c))),
    "min_samples_slow": lambda: render(grid(flat, samples=3, warnings=[MIN_SAMPLES_SLOW])),
    "min_samples_fast": lambda: render(grid(healthy, warnings=[MIN_SAMPLES_FAST])),
    "noise_inf": lambda: render(grid(flat, samples=3, warnings=[NOISE_INF]), noise="inf%"),
    "noise_finite": lambda: render(grid(healthy, warnings=[NOISE_FIN])),
    "est_windowed": lambda: render(grid(healthy), est="windowed"),
    "est_other": lambda: render(grid(healthy, est=lambda S, c: 3 * work_of(S, c))),
    "no_header": lambda: render(grid(healthy), devices_header=False),
    "failed_deadlock": lambda: render(grid(healthy) + grid(
        healthy, seq_lens=(16384,), causals=(0,),
        fail="RuntimeError: blocking_kernel.cu:128: Deadlock detected -- missing sync?")),
    "failed_other": lambda: render(grid(healthy) + grid(
        healthy, seq_lens=(16384,), causals=(0,), fail="CUDA_ERROR_OUT_OF_MEMORY")),
    "skipped": lambda: render(grid(healthy) + grid(
        healthy, seq_lens=(16384,), causals=(0,), skip="head_size 512 not supported")),
    "throttle": lambda: render(grid(healthy, warnings=[
        "GPU throttled below threshold (1467.36 MHz / 1980.00 MHz) (74% < 75%) on sample 244."])),
    "one_row": lambda: render(grid(healthy, seq_lens=(512,), causals=(0,))),
    "h100_bench": lambda: explain.explain_log(os.path.join(DATA, "h100_bench_6kernels.log")),
}


def _res(name):
    made = LOGS[name]()
    return made if isinstance(made, dict) else explain.explain_log(text=made)


def _text(name):
    return "\n".join(_res(name)["explanations"])


# (needle, log where the premise holds, logs where it does not)
SENTENCES = [
    ("Verdict: overhead-dominated", "seed", ["healthy", "one_row"]),
    ("Verdict: undetermined", "one_row", ["healthy", "seed"]),
    ("that is host-side work inside the timed launcher", "seed", ["healthy", "flat_gpu_only"]),
    ("JIT compilation of the kernel on every call", "seed", ["flat_host"]),
    ("dominates the GPU time itself", "flat_gpu_only", ["seed", "healthy"]),
    ("state(s) failed", "failed_other", ["healthy"]),
    ("'Deadlock detected' means the launcher synchronised", "failed_deadlock", ["failed_other"]),
    ("state(s) skipped", "skipped", ["healthy", "failed_other"]),
    ("Cold GPU time equals CPU time", "seed", ["healthy", "host_bound"]),
    ("Host-bound in every row", "host_bound", ["seed", "healthy", "fast", "flat_host"]),
    ("Batch GPU / Cold GPU", "healthy_batch_ms", ["healthy"]),
    ("limited by host work per launch", "launch_rate_bound", ["healthy_batch_ms", "seed"]),
    ("Batch ~ Cold at seconds per launch", "seed", ["healthy_batch_ms", "launch_rate_bound"]),
    ("Every Batch line has total GPU = total wall", "seed",
     ["healthy_batch_ms", "seconds_batch_untimed", "h100_bench"]),
    ("With seconds per sample the timeout is reached", "min_samples_slow", ["min_samples_fast"]),
    ("'timed out before accumulating min_samples'", "min_samples_fast", ["healthy"]),
    ("report inf% noise", "noise_inf", ["noise_finite"]),
    ("report a finite noise", "noise_finite", ["noise_inf"]),
    ("The table's 'inf%' Noise cells", "seconds_batch_wall", ["healthy", "noise_finite"]),
    ("'timed out before accumulating min_time'", "h100_bench", ["seed", "healthy"]),
    ("GPU clock throttling", "throttle", ["healthy"]),
    ("far beyond anything memory traffic explains", "seed", ["fast"]),
    ("'Est. FLOPS' grows as S^2", "seed", ["est_windowed", "est_other", "h100_bench"]),
    ("'Est. FLOPS' equals the exact windowed work", "est_windowed", ["seed", "est_other"]),
    ("x the exact windowed work; this tool fits", "est_other", ["seed", "est_windowed"]),
    ("Roofline on the", "healthy", ["no_header"]),
    ("Reproduction on", "seed", ["healthy", "h100_bench"]),
    ("groups (rows split by Kernel", "h100_bench", ["seed", "healthy"]),
]


@pytest.mark.parametrize("needle,true_log,false_logs", SENTENCES,
                         ids=[s[0][:40] for s in SENTENCES])
def test_sentence_only_when_its_premise_holds(needle, true_log, false_logs):
    assert needle in _text(true_log), (needle, true_log)
    for name in false_logs:
        assert needle not in _text(name), (needle, name)


def test_committed_results_only_for_overhead_dominated_groups():
    assert any("Committed results" in e for e in explain.explain_log(results_dir=RESULTS)
               ["explanations"]) or not os.path.isdir(RESULTS)
    res = explain.explain_log(text=LOGS["healthy"](), results_dir=RESULTS)
    assert not any("Committed results" in e for e in res["explanations"])


def test_each_symptom_is_a_function_of_rows_and_fit():
    """diagnose's symptoms can be called alone on a group's rows and fit."""
    res = explain.explain_log(text=LOGS["host_bound"]())
    rows = res["rows"]
    g = explain.fit_group(rows)
    g.update(host_s_per_call=explain.host_s_per_call(rows),
             batch_over_cold=explain.batch_over_cold(rows))
    from attn_numba.explain import diagnose
    assert diagnose.host_bound(rows, g) and not diagnose.gpu_equals_cpu(rows, g)
    assert diagnose.verdict(rows, g)[0].startswith("Verdict: work-proportional")
    for symptom in explain.SYMPTOMS:
        out = symptom(rows, g)
        assert isinstance(out, list) and all(isinstance(s, str) for s in out)
