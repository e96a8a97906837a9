"""The report, the plots and the command line of raysweep.analyze, on small synthetic sweeps."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

import raysweep.analyze as ra
from raysweep.analyze.__main__ import main
from raysweep.analyze.report import FIGURES
from raysweep.analyze.synthetic import make_rows, parabola, write_sweep

IMG = '<img src="data:image/png;base64,'


def _curve(c, n=20):
    steps = np.arange(1, n + 1) * 10
    final = parabola(c, np.log2(c["batch_size"]) - 9)
    return steps, final + np.exp(-steps * c["eta"] * 4)


def _full_rows(all_diverged_group=True):
    """Every axis swept: B x eta x width x gamma x seed, with one (B, width, gamma) group where all diverged."""

    def loss_fn(c):
        if all_diverged_group and (c["batch_size"], c["width"], c["gamma"]) == (64, 256, 2.0):
            return None
        star = np.log2(c["batch_size"]) - 9 + 0.3 * np.log2(c["gamma"])
        if np.log2(c["eta"]) > star + 2:
            return None
        return parabola(c, star)

    axes = {"batch_size": [4, 16, 64], "eta": [2.0**k for k in range(-9, -1)], "width": [64, 256],
            "gamma": [0.5, 2.0], "seed": range(2)}
    return make_rows(axes, loss_fn, curve_fn=_curve)


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    write_sweep(root, "full", *_full_rows())
    return root


def _section(html: str, key: str) -> str:
    start = html.index(f"<small>({key})</small>")
    ends = [i for i in (html.find("<h2>", start), html.find("<h3>", start)) if i > 0]
    return html[start: min(ends, default=len(html))]


def test_report_holds_every_plot_inline_and_no_url(full_sweep, tmp_path):
    analyses = ra.analyze(full_sweep, out=tmp_path / "tables", report=tmp_path / "r.html", strict=True,
                          max_panels=3)
    a = analyses["full"]
    assert set(a.figures) == set(FIGURES)  # every kind of plot: this sweep has every axis
    html = (tmp_path / "r.html").read_text()
    assert html.count(IMG) == len(FIGURES)
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "<script" not in html
    for name, png in a.figures.items():
        assert png.startswith(b"\x89PNG") and b"matplotlib.org" not in png
        assert (tmp_path / "tables" / f"{name}.png").read_bytes() == png
    for name in ("eta_star", "eta_max", "eta_power_law", "all_diverged", "temperature_collapse",
                 "steps_to_target", "critical_batch", "transfer", "transfer_slope", "gamma", "gamma_slopes"):
        assert (tmp_path / "tables" / f"{name}.parquet").is_file() and (tmp_path / "tables" / f"{name}.csv").is_file()
        assert f"<small>({name})</small>" in html
    assert pq.read_table(tmp_path / "tables" / "eta_star.parquet").schema.field("batch_size").type == "int64"


def test_all_diverged_group_is_reported_not_dropped(full_sweep, tmp_path):
    trials, curves = ra.load(full_sweep)
    table = ra.all_diverged(trials)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["batch_size"], row["width"], row["gamma"]) == (64, 256, 2.0) and row["n_trials"] == 16
    eta_star = ra.optimal_eta(trials)
    gone = eta_star[(eta_star["batch_size"] == 64) & (eta_star["width"] == 256) & (eta_star["gamma"] == 2.0)]
    assert len(gone) == 1 and gone["all_diverged"].item() and np.isnan(gone["eta_star"].item())
    html = ra.render_html([ra.analyze_frames(trials, curves, name="full", make_plots=False)])
    section = _section(html, "all_diverged")
    assert section.count("<tr") == 2  # header + the one group
    assert re.search(r"<td>64</td>\s*<td>0\.5</td>|<td>256</td>", section)


def test_heatmap_masks_diverged_cells_in_the_figure_data(full_sweep):
    trials, _ = ra.load(full_sweep)
    sub = trials[(trials["width"] == 64) & (trials["gamma"] == 0.5)]
    grid = ra.heatmap_grid(sub)
    assert grid.loss.shape == (8, 3) and grid.diverged.any() and (~grid.diverged).any()
    assert grid.loss.mask[grid.diverged].all() and np.isnan(grid.loss.data[grid.diverged]).all()
    assert np.all(np.isfinite(grid.loss.compressed()))


@pytest.mark.parametrize("case", ["single_point", "all_diverged", "no_eval", "one_batch_size"])
def test_degenerate_sweeps_never_crash(case, tmp_path):
    axes = {"batch_size": [16], "eta": [0.01], "seed": [0]}
    loss_fn = lambda c: parabola(c, -6.0)  # noqa: E731
    kwargs = {}
    if case == "all_diverged":
        axes = {"batch_size": [4, 16], "eta": [0.1, 1.0], "seed": [0, 1]}
        loss_fn = lambda c: None  # noqa: E731
    elif case == "no_eval":
        axes = {"batch_size": [4, 16, 64], "eta": [2.0**k for k in range(-8, 0)], "seed": [0, 1]}
        kwargs = {"eval_loss": False}
    elif case == "one_batch_size":
        axes = {"batch_size": [16], "eta": [2.0**k for k in range(-8, 0)], "seed": [0, 1]}
    trials, curves = make_rows(axes, loss_fn, curve_fn=_curve, **kwargs)
    write_sweep(tmp_path, case, trials, curves)
    a = ra.analyze(tmp_path, report=tmp_path / "r.html", strict=True, max_panels=2)[case]
    html = (tmp_path / "r.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert html.count(IMG) == len(a.figures) >= 1
    t = a.trials
    if case == "all_diverged":
        assert a.tables["eta_star"]["all_diverged"].all() and a.tables["eta_star"]["eta_star"].isna().all()
        assert len(a.tables["all_diverged"]) == 2
    if case == "no_eval":
        assert (t.loc[t["usable"], "final_loss_source"] == "train").all()
        assert a.tables["steps_to_target"]["metric"].eq("train_loss").all()
        assert "curves" in a.figures and a.tables["eta_star"]["eta_star"].notna().all()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "raysweep.analyze", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_cli_writes_tables_and_report(full_sweep, tmp_path):
    result = _cli(full_sweep, "--report", tmp_path / "out.html", "--max-panels", "2")
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "out.html").read_text()
    assert html.count(IMG) == len(FIGURES)
    analysis = full_sweep / "full" / "analysis"
    for name in ("eta_star", "eta_max", "critical_batch", "all_diverged"):
        assert (analysis / f"{name}.parquet").is_file() and (analysis / f"{name}.csv").is_file()


def test_cli_on_a_sweep_folder_with_out_and_targets(tmp_path, capsys):
    # In-process (same code path as the module entry point; a subprocess costs seconds of imports).
    trials, curves = make_rows({"batch_size": [4, 16], "eta": [2.0**k for k in range(-8, -4)], "seed": [0]},
                               lambda c: parabola(c, -6.0), curve_fn=_curve)
    folder = write_sweep(tmp_path, "small", trials, curves)
    assert main([str(folder), "--out", str(tmp_path / "o"), "--target", "1.5", "--max-panels", "1"]) == 0
    assert (tmp_path / "o" / "report.html").is_file() and "report:" in capsys.readouterr().out
    assert set(pq.read_table(tmp_path / "o" / "steps_to_target.parquet").column("target").to_pylist()) == {1.5}
    assert main([str(tmp_path), "--sweep", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    # Two sweeps under one folder: tables beside each, one report for both.
    write_sweep(tmp_path, "other", trials, curves)
    assert main([str(tmp_path), "--report", str(tmp_path / "both.html"), "--max-panels", "1"]) == 0
    html = (tmp_path / "both.html").read_text()
    assert "<h2>Sweep small</h2>" in html and "<h2>Sweep other</h2>" in html
    assert (tmp_path / "small" / "analysis" / "eta_star.csv").is_file()
    assert (tmp_path / "other" / "analysis" / "eta_star.csv").is_file()


def test_cli_exits_2_without_tables_and_imports_neither_ray_nor_torch(tmp_path):
    (tmp_path / "empty_sweep" / "trials").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "raysweep.analyze", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no trial rows" in result.stderr and "trials/*.parquet" in result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import")}
    assert "raysweep.analyze.plots" in imported and "matplotlib" in imported  # the whole package was imported
    assert not {m for m in imported if m.split(".")[0] in ("ray", "torch")}
