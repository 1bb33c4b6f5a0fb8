"""`attn-numba plot`: PNGs from a synthetic summary.json and from committed results; the log parse."""
from pathlib import Path

import pytest

from attn_numba import plots
from attn_numba.bench import grid as G, summary as S

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "attn_numba" / "data" / "nvbench_run_mha_fwd_a30.log"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_summary(path, kernels=("naive", "flash", "sdpa"), with_ceilings=True):
    recs = []
    for n, k in enumerate(kernels):
        for cfg in G.iter_configs(G.DEFAULT_GRID):
            t = (1e-3 * cfg.seq_len / 512) / (n + 1) * (0.6 if cfg.causal else 1.0)
            recs.append(S.make_record(k, cfg, gpu_time_s=t, samples=10, noise=0.01,
                                      check={"ok": True, "max_err": 1e-3, "tol": 3e-3,
                                             "lse_ok": None, "rows_checked": 192}))
    recs.append(S.make_record("flexattention", G.Config(1, 512, 32, 8, 128, 128, 128, 0),
                              skipped=True, skip_reason="torch is not installed"))
    ceil = ({"copy_gbps": 3000.0, "fp16_matmul_tflops": 700.0, "fp32_matmul_tflops_no_tf32": 50.0}
            if with_ceilings else {"error": "not measured"})
    doc = {"device": "Synthetic GPU", "date": S.now_iso(), "simulated": False,
           "versions": {}, "ceilings": ceil, "records": recs}
    return S.write(path, doc)


def _assert_pngs(paths, n=4):
    assert len(paths) == n
    for p in paths:
        data = Path(p).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, p


@pytest.mark.parametrize("with_ceilings", [True, False])
def test_plot_synthetic_summary(tmp_path, with_ceilings):
    synthetic_summary(tmp_path / "res" / "synthetic-gpu" / "summary.json",
                      with_ceilings=with_ceilings)
    done = plots.plot_all(tmp_path / "res", tmp_path / "figs")
    assert len(done) == 1
    _assert_pngs(done[0][1])
    assert all(Path(p).name.startswith("synthetic-gpu_") for p in done[0][1])


def test_plot_cli_and_simulated_summaries(tmp_path):
    from attn_numba import cli
    path = synthetic_summary(tmp_path / "res" / "sim" / "summary.json")
    doc = S.load(path)
    doc["simulated"] = True
    S.write(path, doc)
    assert cli.main(["plot", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "f")]) == 1
    assert not list((tmp_path / "f").glob("*.png")) if (tmp_path / "f").exists() else True
    assert cli.main(["plot", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "f"),
                     "--include-simulated"]) == 0
    assert len(list((tmp_path / "f").glob("sim_*.png"))) == 4


def test_plot_committed_results(tmp_path):
    found = [p for p in S.find(ROOT / "results") if not S.load(p).get("simulated")]
    if not found:
        pytest.skip("no committed GPU results yet")
    done = plots.plot_all(ROOT / "results", tmp_path)
    assert len(done) == len(found)
    for spath, pngs in done:
        has_long = any(G.is_long(r["seq_len"]) for r in S.load(spath)["records"])
        _assert_pngs(pngs, 5 if has_long else 4)


def test_long_sweep_figure(tmp_path):
    """A summary with the --long sweep gets a fifth figure; the first four keep the log's grid."""
    path = synthetic_summary(tmp_path / "res" / "g" / "summary.json",
                             kernels=("naive", "flash_tc", "flexattention"))
    doc = S.load(path)
    base = dict(num_seqs=1, num_heads=32, num_kv_heads=8, head_size=128, window_left=128,
                window_right=128)
    for s in G.LONG_SEQ_LENS:
        for c in (0, 1):
            cfg = G.Config(seq_len=s, causal=c, **base)
            doc["records"].append(S.make_record("flash_tc", cfg, gpu_time_s=s * 5e-8))
            doc["records"].append(
                S.make_record("flexattention", cfg, gpu_time_s=s * 3e-8) if s < 131072 else
                S.make_record("flexattention", cfg, skipped=True,
                              skip_reason="error: OutOfMemoryError: CUDA out of memory"))
    S.write(path, doc)
    done = plots.plot_all(tmp_path / "res", tmp_path / "figs")
    pngs = done[0][1]
    _assert_pngs(pngs, 5)
    assert Path(pngs[-1]).name == "g_long_sequences.png"
    # the main grid's time figure is the same with or without the sweep
    without = dict(doc, records=[r for r in doc["records"] if not G.is_long(r["seq_len"])])
    S.write(tmp_path / "res2" / "g" / "summary.json", without)
    done2 = plots.plot_all(tmp_path / "res2", tmp_path / "figs2")
    assert len(done2[0][1]) == 4
    assert Path(done2[0][1][0]).read_bytes() == Path(pngs[0]).read_bytes()


def test_log_times(tmp_path):
    rows = plots.parse_log_times(LOG)
    assert len(rows) == 10
    by = {(r["seq_len"], r["causal"]): r for r in rows}
    assert by[(512, 0)]["gpu_time_s"] == pytest.approx(5.502, rel=1e-3)
    assert by[(8192, 1)]["gpu_time_s"] == pytest.approx(6.387, rel=1e-3)
    assert by[(8192, 1)]["batch_gpu_time_s"] == pytest.approx(6.026, rel=1e-3)
    assert rows[0]["device"] == "NVIDIA A30"
    # a log that cannot be read leaves its line out of the figures, with a note
    synthetic_summary(tmp_path / "res" / "s" / "summary.json")
    done = plots.plot_all(tmp_path / "res", tmp_path / "figs", log=str(tmp_path / "no.log"))
    assert len(done[0][1]) == 4


def test_plot_skips_malformed_summaries(tmp_path):
    synthetic_summary(tmp_path / "res" / "good" / "summary.json")
    bad = tmp_path / "res" / "bad" / "summary.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"device": "x", "records": [{"kernel": "naive"}]}')
    done = plots.plot_all(tmp_path / "res", tmp_path / "figs")
    assert [p.parent.name for p, _ in done] == ["good"]


def test_figures_name_their_run_every_kernel_and_keep_legends_off_the_data(tmp_path,
                                                                          monkeypatch):
    """Titles say which run (a -quick set is told apart), the ceiling subtitle names every
    kernel drawn, and the ceiling and causal figures put no legend on the data axes."""
    import matplotlib
    matplotlib.use("Agg")
    figs = {}

    def keep(fig, path, title=None, rect=None):
        figs[Path(path).name] = (fig, title)

    monkeypatch.setattr(plots, "_save", keep)
    kernels = ("naive", "tiled", "flash", "flash_tc", "flash_wgmma", "sdpa")
    for name in ("h100", "h100-quick"):
        synthetic_summary(tmp_path / name / "summary.json", kernels=kernels)
    plots.plot_all(tmp_path, tmp_path / "figs", log=None)
    titles = {n: (t or f.axes[0].get_title()) for n, (f, t) in figs.items()}
    assert "run h100 (" in titles["h100_ceiling_fraction.png"]
    assert "run h100-quick (" in titles["h100-quick_ceiling_fraction.png"]
    assert titles["h100_causal_vs_noncausal.png"] != titles["h100-quick_causal_vs_noncausal.png"]
    fig, _ = figs["h100_ceiling_fraction.png"]
    subtitle = fig.axes[0].get_title()
    for k in kernels:
        assert k in subtitle, k
    assert all(ax.get_legend() is None for ax in fig.axes) and fig.legends
    fig, _ = figs["h100_causal_vs_noncausal.png"]
    leg = fig.axes[0].get_legend()
    assert leg is not None and leg.get_bbox_to_anchor().x0 >= fig.axes[0].bbox.x1 - 1
