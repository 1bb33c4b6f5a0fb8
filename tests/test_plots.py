"""`attn-numba plot`: PNGs from a synthetic summary.json and from committed results; the log parse."""
from pathlib import Path

import pytest

from attn_numba import plot_style, plots, plots_backward
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


@pytest.mark.slow  # draws every committed figure (about 9 s on 2 cores); the synthetic tests cover the code
def test_plot_committed_results(tmp_path):
    found = [p for p in S.find(ROOT / "results") if not S.load(p).get("simulated")]
    if not found:
        pytest.skip("no committed GPU results yet")
    done = plots.plot_all(ROOT / "results", tmp_path)
    assert len(done) == len(found)
    for spath, pngs in done:
        doc = S.load(spath)
        has_long = any(G.is_long(r["seq_len"]) for r in doc["records"])
        has_bwd = bool(plots_backward.timed_records(doc)[0])
        _assert_pngs(pngs, 4 + has_long + has_bwd)
        assert (Path(pngs[-1]).name.endswith("_backward.png")) == has_bwd


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


def _with_backward(path, kernels=("flash_tc", "flexattention"), timed=True):
    """The synthetic summary at ``path`` plus a backward section: both passes of ``kernels``
    on the log's grid (``timed=False``: every state skipped)."""
    doc = S.load(path)
    recs = []
    for n, k in enumerate(kernels):
        for cfg in G.iter_configs(G.DEFAULT_GRID):
            for p, f in (("bwd", 1.0), ("fwd+bwd", 1.3)):
                t = 2e-4 * f * cfg.seq_len / 512 / (n + 1) if timed else None
                r = S.make_record(k, cfg, gpu_time_s=t, skipped=not timed,
                                  skip_reason=None if timed else "error: out of memory")
                recs.append(dict(r, **{"pass": p}))
    doc["backward"] = {"date": "2026-12-02T10:00:00+00:00", "records": recs}
    return S.write(path, doc)


def test_backward_figure_only_with_a_backward_section(tmp_path, monkeypatch):
    """A summary with a timed backward section gets <set>_backward.png (a PNG; its title
    names the run and the section's date, its subtitle every kernel, its legend is off the
    data); one without the section, or with every backward state skipped, gets none."""
    _with_backward(synthetic_summary(tmp_path / "res" / "g" / "summary.json"))
    pngs = plots.plot_all(tmp_path / "res", tmp_path / "figs")[0][1]
    _assert_pngs(pngs, 5)
    assert Path(pngs[-1]).name == "g_backward.png"
    synthetic_summary(tmp_path / "res2" / "g" / "summary.json")
    assert len(plots.plot_all(tmp_path / "res2", tmp_path / "figs2")[0][1]) == 4
    _with_backward(synthetic_summary(tmp_path / "res3" / "g" / "summary.json"), timed=False)
    assert len(plots.plot_all(tmp_path / "res3", tmp_path / "figs3")[0][1]) == 4
    assert not list((tmp_path / "figs2").glob("*backward*")) + list(
        (tmp_path / "figs3").glob("*backward*"))

    import matplotlib
    matplotlib.use("Agg")
    seen = {}
    monkeypatch.setattr(plot_style, "_save", lambda fig, path, title=None, rect=None:
                        seen.update({Path(path).name: (fig, title)}))
    doc = S.load(_with_backward(synthetic_summary(tmp_path / "r4" / "h200" / "summary.json"),
                                kernels=("flash_tc", "flash", "flexattention")))
    assert plots_backward.plot_backward(doc, "h200", tmp_path / "f4")
    fig, title = seen["h200_backward.png"]
    assert "Synthetic GPU, run h200 (2026-12-02)" in title
    assert "32 heads / 8 KV heads, D=128, window (128, 128)" in title
    names = ("flash_tc", "flash", "flexattention")
    subtitle = title.splitlines()[-len(names):]             # one line per kernel
    for k in names:
        assert any(line.startswith(f"{k} (") for line in subtitle), (k, subtitle)
    assert len(fig.axes) == 4  # time panels over ratio panels, causal 0 and 1
    assert all(ax.get_legend() is None for ax in fig.axes) and fig.legends
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "flash_tc fwd+bwd" in labels and "flexattention (PyTorch) bwd alone" in labels
    # the ratio panels: each of ours over FlexAttention, per pass (times 1/(n+1), n = 0, 1, 2)
    for ax in fig.axes[2:]:
        ratios = sorted({round(float(y), 9) for ln in ax.lines[:4] for y in ln.get_ydata()})
        assert ratios == [1.5, 3.0] and len(ax.lines) == 5  # 2 kernels x 2 passes, parity
