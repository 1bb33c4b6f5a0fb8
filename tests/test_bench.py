"""`attn-numba bench` on the CPU: grid columns against the log, the row-block reference, the
summary schema, the no-GPU message, the simulated pipeline, and the NVBench benchmark
definition driven by a stand-in for ``cuda.bench`` on Numba's simulator."""
import contextlib
import io
import itertools
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from attn_numba import cli, on_simulator
from attn_numba.bench import cases, grid as G, inputs, summary as S
from attn_numba.reference import mha_fwd_ref
from attn_numba.testing import random_qkv

LOG = Path(__file__).resolve().parents[1] / "attn_numba" / "data" / "nvbench_run_mha_fwd_a30.log"
LOG_CFG = dict(num_seqs=1, num_heads=32, num_kv_heads=8, head_size=128, window_left=128,
               window_right=128)


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def log_table():
    """(seq_len, causal) -> {column: cell} from the A30 log's results table."""
    rows, header = {}, None
    for line in LOG.read_text().splitlines():
        if line.startswith("| num_seqs"):
            header = [c.strip() for c in line.strip("|").split("|")]
        elif header and line.startswith("|") and not line.startswith("|--"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            row = dict(zip(header, cells))
            rows[(int(row["seq_len"]), int(row["causal"]))] = row
    return rows


# --------------------------------------------------------------------------- columns

def test_default_grid_is_the_logs():
    table = log_table()
    cfgs = list(G.iter_configs(G.DEFAULT_GRID))
    assert [(c.seq_len, c.causal) for c in cfgs] == list(table)  # same rows, same order


@pytest.mark.parametrize("seq_len", [512, 1024, 2048, 4096, 8192])
def test_columns_match_the_log(seq_len):
    row = log_table()[(seq_len, 0)]
    d = G.derived(G.Config(seq_len=seq_len, causal=0, **LOG_CFG))
    assert G.fmt_mib(d["q_bytes"]) == row["Q Tensor"]
    assert G.fmt_mib(d["k_bytes"]) == row["K Tensor"]
    assert G.fmt_mib(d["out_bytes"]) == row["Output"]
    assert d["tokens"] == int(row["Tokens"])
    assert d["dense_flops"] == int(row["Est. FLOPS"])  # the log's 2*S^2*H*D
    assert d["bytes"] == int(row["Memory Usage"]) * 2**20  # Q+K+V+O in MiB


def test_windowed_flops_at_512_non_causal():
    s, h, dh, w = 512, 32, 128, 128
    i, j = np.arange(s)[:, None], np.arange(s)[None, :]
    pairs = int(np.count_nonzero(np.abs(i - j) <= w))  # brute force: |i - j| <= 128
    d = G.derived(G.Config(seq_len=s, causal=0, **LOG_CFG))
    assert d["flops"] == 4 * dh * h * pairs == 1885339648
    dc = G.derived(G.Config(seq_len=s, causal=1, **LOG_CFG))
    assert dc["flops"] == 4 * dh * h * int(np.count_nonzero((j <= i) & (j >= i - w)))
    assert dc["dense_flops"] == d["dense_flops"]


def test_device_slug():
    assert G.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert G.device_slug("  ") == "unknown-device"


def test_quick_and_overrides():
    args = cli.build_parser().parse_args(["bench", "--quick", "--kernels", "naive,sdpa",
                                          "--causal", "1"])
    from attn_numba.bench.cli import resolve
    kernels, grid = resolve(args)
    assert kernels == ["naive", "sdpa"]
    assert grid["seq_len"] == [1024, 8192] and grid["causal"] == [1]
    with pytest.raises(ValueError, match="unknown kernel"):
        resolve(cli.build_parser().parse_args(["bench", "--kernels", "nope"]))


# --------------------------------------------------------------------------- reference on row blocks

@pytest.mark.parametrize("window,causal,sk", [((3, 2), False, 29), ((4, 0), True, 29),
                                              ((-1, 5), False, 29), ((6, -1), False, 29),
                                              ((-1, -1), True, 29), ((2, 3), False, 35),
                                              ((5, 1), True, 23)])
def test_reference_rows_equals_full_reference(rng, window, causal, sk):
    q, k, v = random_qkv(rng, 2, 29, sk, 4, 2, 8, np.float32)
    full, full_lse = mha_fwd_ref(q, k, v, window_size=window, causal=causal)
    for r0, r1 in [(0, 7), (10, 19), (22, 29), (0, 29)]:
        out, lse = cases.reference_rows(q, k, v, r0, r1, window, causal)
        np.testing.assert_allclose(out, full[:, r0:r1], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(full_lse[:, :, r0:r1]))
        fin = np.isfinite(lse)
        np.testing.assert_allclose(lse[fin], full_lse[:, :, r0:r1][fin], rtol=1e-12)


def test_check_blocks():
    assert cases.check_blocks(100) == [(0, 100)]
    assert cases.check_blocks(8192) == [(0, 64), (4064, 4128), (8128, 8192)]


def test_random_normal_is_chunked_reproducible_and_fresh(monkeypatch):
    monkeypatch.setattr(inputs, "_CHUNK", 1000)  # many chunks, several threads
    a = cases.random_normal([1, 2], (3, 700, 2))
    assert a.dtype == np.float16 and a.shape == (3, 700, 2)
    assert np.array_equal(a, cases.random_normal([1, 2], (3, 700, 2)))
    assert not np.array_equal(a, cases.random_normal([1, 3], (3, 700, 2)))
    x = a.astype(np.float64).ravel()
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05 and np.count_nonzero(x) > 4190
    for i in range(4):  # chunks differ from one another (no repeated stream)
        assert not np.array_equal(x[i * 1000:(i + 1) * 1000], x[(i + 1) * 1000:(i + 2) * 1000])
    assert cases.random_normal([0], (0, 5)).shape == (0, 5)


def test_inputs_for_an_unbounded_window():
    grid = G.make_grid(seq_len=[7], window_left=[-1], window_right=[-1], num_heads=[2],
                      num_kv_heads=[1], head_size=[8], causal=[0])
    cfg = next(G.iter_configs(grid))
    inp = cases.get_inputs(cfg)
    assert inp.q.shape == (1, 7, 2, 8) and inp.k.shape == (1, 7, 1, 8)
    assert np.all(np.isfinite(inp.q.astype(np.float32))) and np.any(inp.v != 0)


# --------------------------------------------------------------------------- summary schema

def _nvbench_doc(states):
    """A document in NVBench's JSON format (as written by --json) for run_mha_fwd."""
    out = []
    for kernel, cfg, t, skipped in states:
        axis_values = [{"name": "Kernel", "type": "string", "value": kernel}] + [
            {"name": a, "type": "int64", "value": str(getattr(cfg, a))} for a in G.INT_AXES]
        summ = [] if skipped else [
            {"tag": "nv/cold/time/gpu/mean", "name": "GPU Time",
             "data": [{"name": "value", "type": "float64", "value": repr(t)}]},
            {"tag": "nv/cold/sample_size", "name": "Samples",
             "data": [{"name": "value", "type": "int64", "value": "12"}]},
            {"tag": "nv/cold/time/gpu/stdev/relative", "name": "Noise",
             "data": [{"name": "value", "type": "float64", "value": "0.004"}]},
            {"tag": "nv/python/Q Tensor", "name": "Q Tensor",
             "data": [{"name": "value", "type": "string", "value": "4.000 MiB"}]}]
        out.append({"name": "Device=0", "device": 0, "axis_values": axis_values,
                    "summaries": summ, "is_skipped": skipped,
                    "skip_reason": "why" if skipped else None})
    return {"meta": {}, "devices": [{"id": 0, "name": "Fake GPU"}],
            "benchmarks": [{"name": "run_mha_fwd", "axes": [], "states": out}]}


def test_records_from_nvbench_json(tmp_path):
    c512 = G.Config(seq_len=512, causal=0, **LOG_CFG)
    c1k = G.Config(seq_len=1024, causal=1, **LOG_CFG)
    path = tmp_path / "nv.json"
    path.write_text(json.dumps(_nvbench_doc([("naive", c512, 2e-3, False),
                                             ("sdpa", c1k, None, True)])))
    recs = S.records_from_nvbench(path, {("naive", c512.key()): {"ok": True}})
    assert len(recs) == 2
    r = recs[0]
    assert r["kernel"] == "naive" and r["seq_len"] == 512 and r["causal"] == 0
    assert r["gpu_time_s"] == pytest.approx(2e-3) and r["samples"] == 12
    assert r["noise"] == pytest.approx(0.004) and r["batch_gpu_time_s"] is None
    assert r["tflops"] == pytest.approx(1885339648 / 2e-3 / 1e12)
    assert r["gbps"] == pytest.approx(10 * 2**20 / 2e-3 / 1e9)
    assert r["check"] == {"ok": True}
    assert recs[1]["skipped"] and recs[1]["gpu_time_s"] is None and recs[1]["check"] is None
    doc = {"device": "Fake GPU", "date": S.now_iso(), "versions": S.versions(),
           "ceilings": {}, "records": recs}
    S.write(tmp_path / "summary.json", doc)
    assert S.load(tmp_path / "summary.json")["records"] == json.loads(json.dumps(recs))


def test_schema_rejects_bad_summaries():
    good = S.make_record("naive", G.Config(seq_len=512, causal=0, **LOG_CFG), gpu_time_s=1e-3)
    base = {"device": "x", "date": "d", "versions": {}, "ceilings": {}}
    S.validate({**base, "records": [good]})
    with pytest.raises(ValueError, match="missing key 'records'"):
        S.validate(base)
    with pytest.raises(ValueError, match="lacks"):
        S.validate({**base, "records": [{k: v for k, v in good.items() if k != "gbps"}]})
    with pytest.raises(ValueError, match="must be an int"):
        S.validate({**base, "records": [{**good, "seq_len": "512"}]})
    with pytest.raises(ValueError, match="not skipped"):
        S.validate({**base, "records": [{**good, "gpu_time_s": None}]})


def test_merge_replaces_same_states():
    c = G.Config(seq_len=512, causal=0, **LOG_CFG)
    old = {"ceilings": {"copy_gbps": 1.0}, "records": [S.make_record("naive", c, gpu_time_s=1.0),
                                                       S.make_record("sdpa", c, gpu_time_s=2.0)]}
    new = {"ceilings": {"error": "no"}, "records": [S.make_record("naive", c, gpu_time_s=0.5)]}
    m = S.merge(old, new)
    assert sorted((r["kernel"], r["gpu_time_s"]) for r in m["records"]) == [("naive", 0.5),
                                                                            ("sdpa", 2.0)]
    assert m["ceilings"] == {"copy_gbps": 1.0}
    old["backward"] = {"records": [{"pass": "bwd"}]}   # a section new does not have stays
    assert S.merge(old, new)["backward"] == old["backward"]


# --------------------------------------------------------------------------- CLI

def test_help_lists_commands():
    rc, out, _ = run_cli(["--help"])
    assert rc == 0
    for name in ("bench", "plot", "explain", "report"):
        assert name in out


@pytest.mark.skipif(not on_simulator(), reason="checks the no-GPU path")
def test_bench_without_gpu_says_so(tmp_path):
    rc, out, err = run_cli(["bench", "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "no CUDA GPU available" in err and "--simulate" in err
    assert not (tmp_path / "r").exists()


def test_bench_list(tmp_path):
    rc, out, _ = run_cli(["bench", "--list", "--quick", "--kernels", "naive"])
    assert rc == 0 and "4 configs x 1 kernels" in out


@pytest.mark.skipif(not on_simulator(), reason="the simulated run needs the simulator")
def test_bench_simulate_writes_a_simulated_summary(tmp_path):
    rc, out, err = run_cli(["bench", "--simulate", "--kernels", "naive", "--seq-lens", "20",
                            "--out", str(tmp_path)])
    assert rc == 0, err
    doc = S.load(tmp_path / "summary.json")
    assert doc["simulated"] is True
    recs = doc["records"]
    assert [(r["kernel"], r["seq_len"], r["causal"]) for r in recs] == [("naive", 20, 0),
                                                                         ("naive", 20, 1)]
    for r in recs:
        assert r["check"]["ok"] and r["check"]["rows_checked"] == 20
        assert r["gpu_time_s"] > 0 and r["num_heads"] == 4 and r["head_size"] == 16


# --------------------------------------------------------------------------- NVBench definition, faked

class _FakeStream:
    def addressof(self):
        return None  # the cases read None as the default stream (the simulator has no others)


class _FakeState:
    def __init__(self, point):
        self.point, self.summaries, self.skipped, self.exec_kw = point, {}, None, None
        self.times = []

    def get_string(self, name):
        return self.point[name]

    def get_int64(self, name):
        return self.point[name]

    def get_stream(self):
        return _FakeStream()

    def skip(self, reason):
        self.skipped = reason

    def add_summary(self, name, value):
        self.summaries[name] = value

    def add_element_count(self, n, column_name=None):
        self.summaries["elements:" + str(column_name)] = n

    def add_global_memory_reads(self, n, column_name=""):
        self.summaries["reads"] = n

    def add_global_memory_writes(self, n, column_name=""):
        self.summaries["writes"] = n

    def exec(self, fn, batched=None, sync=False, timer=False):
        import time

        from numba import cuda
        self.exec_kw = dict(timer=timer)

        class Launch:
            def get_stream(self):
                return _FakeStream()

        class Timer:
            def start(t):
                t.t0 = time.perf_counter()

            def stop(t):
                cuda.synchronize()
                self.times.append(time.perf_counter() - t.t0)

        for _ in range(2):
            if timer:
                fn(Launch(), Timer())
            else:  # NVBench's own timing: a wall clock around the launcher here
                t = Timer()
                t.start()
                fn(Launch())
                t.stop()


def _fake_cuda_bench(states):
    mod = types.ModuleType("cuda.bench")

    class Benchmark:
        def __init__(self, fn):
            self.fn, self.axes, self.name = fn, [], None

        def set_name(self, name):
            self.name = name
            return self

        def add_string_axis(self, name, values):
            self.axes.append((name, list(values)))
            return self

        add_int64_axis = add_string_axis

    registered = []

    def register(fn):
        registered.append(Benchmark(fn))
        return registered[-1]

    def run_all_benchmarks(argv):
        b = registered[-1]
        names = [a for a, _ in b.axes]
        docs = []
        for combo in itertools.product(*(v for _, v in reversed(b.axes))):
            st = _FakeState(dict(zip(reversed(names), combo)))
            b.fn(st)
            states.append(st)
            cfg = G.Config(**{a: st.point[a] for a in G.INT_AXES})
            t = float(np.median(st.times)) if st.times else None
            docs.append((st.point["Kernel"], cfg, t, st.skipped is not None))
        Path(argv[argv.index("--json") + 1]).write_text(json.dumps(_nvbench_doc(docs)))
        Path(argv[argv.index("--md") + 3]).write_text("| fake |\n")

    mod.register, mod.run_all_benchmarks, mod.State = register, run_all_benchmarks, _FakeState
    return mod


@pytest.mark.skipif(not on_simulator(), reason="drives the benchmark on the simulator")
def test_nvbench_definition_with_fake_cuda_bench(tmp_path, monkeypatch):
    import cuda as cuda_pkg
    states = []
    fake = _fake_cuda_bench(states)
    monkeypatch.setitem(sys.modules, "cuda.bench", fake)
    monkeypatch.setattr(cuda_pkg, "bench", fake, raising=False)
    from attn_numba.bench import cli as bench_cli
    monkeypatch.setattr(bench_cli, "gpu_status", lambda: (True, "Fake GPU"))
    rc, out, err = run_cli(["bench", "--kernels", "naive,sdpa", "--seq-lens", "20", "--num-heads",
                            "4", "--num-kv-heads", "2", "--head-size", "16", "--window-left", "5",
                            "--window-right", "3", "--no-ceilings", "--out", str(tmp_path)])
    assert rc == 0, err
    by = {(s.point["Kernel"], s.point["causal"]): s for s in states}
    assert set(by) == {("naive", 0), ("naive", 1), ("sdpa", 0), ("sdpa", 1)}
    for c in (0, 1):
        st = by[("naive", c)]
        # our kernels: plain state.exec (cold + batch), no manual timer
        assert st.skipped is None and st.exec_kw == {"timer": False} and len(st.times) == 2
        assert st.summaries["Q Tensor"] == G.fmt_mib(20 * 4 * 16 * 2)
        assert st.summaries["elements:Tokens"] == 20
        assert st.summaries["reads"] + st.summaries["writes"] == 2 * 20 * (4 + 2) * 16 * 2
        assert by[("sdpa", c)].skipped  # no torch here: skipped with a reason, not an error
    doc = S.load(tmp_path / "summary.json")
    naive = [r for r in doc["records"] if r["kernel"] == "naive"]
    assert all(r["check"]["ok"] and r["gpu_time_s"] > 0 for r in naive)
    assert all("call_time_s" in r for r in doc["records"])  # null here: no torch/GPU
    assert all(r["skipped"] for r in doc["records"] if r["kernel"] == "sdpa")
    assert doc["ceilings"] == {"error": "not measured (--no-ceilings)"}


def test_committed_nvbench_json_matches_committed_summary():
    """The plain JSON reader (used without cuda-bench) reproduces the records that the GPU run
    built with cuda.bench.results from the same NVBench JSON files."""
    root = Path(__file__).resolve().parents[1] / "results"
    checked = 0
    for spath in S.find(root):
        doc = S.load(spath)
        runs = doc.get("nvbench_runs") or ([doc["nvbench"]] if doc.get("nvbench") else [])
        by = {S.record_key(r): r for r in doc["records"]}
        latest = {}  # merged runs: a later run's state replaces an earlier one's (S.merge)
        for run in runs:
            for r in S.records_from_nvbench(spath.parent / run["json"]):
                latest[S.record_key(r)] = r
        for key, r in latest.items():
            o = by[key]
            for k in ("gpu_time_s", "batch_gpu_time_s", "samples", "noise", "tflops", "gbps"):
                assert o[k] == r[k], (spath, key, k)
            checked += 1
    if not checked:
        pytest.skip("no committed NVBench results")


# --------------------------------------------------------------------------- long-sequence sweep

def test_long_sweep_resolves_to_the_long_grid():
    from attn_numba import available_kernels
    from attn_numba.bench import cli as bench_cli
    p = __import__("argparse").ArgumentParser()
    bench_cli.add_arguments(p)
    kernels, grid = bench_cli.resolve(p.parse_args(["--long"]))
    assert grid["seq_len"] == [16384, 65536, 131072, 262144, 524288]
    assert grid["causal"] == [0, 1] and grid["num_heads"] == [32] and grid["window_left"] == [128]
    assert "flexattention" in kernels and "sdpa" not in kernels and "naive" not in kernels
    assert [k for k in kernels if k != "flexattention"] == \
        [k for k in G.LONG_KERNELS if k in available_kernels()]
    kernels, grid = bench_cli.resolve(p.parse_args(["--long", "--kernels", "flash_tc",
                                                    "--seq-lens", "16384"]))
    assert kernels == ["flash_tc"] and grid["seq_len"] == [16384]
    assert G.is_long(16384) and not G.is_long(8192)


@pytest.mark.parametrize("extra", [["--simulate"], ["--quick"]])
def test_long_sweep_refuses_simulate_and_quick(extra):
    rc, out, err = run_cli(["bench", "--long", *extra])
    assert rc == 2 and "--long" in err
