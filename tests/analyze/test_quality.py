"""Honest answers: no bootstrap interval below the minimum number of seeds, every fit flagged when it has too few
points or too large residuals (and never passed by a --check), the metric eta* is chosen on, and the plots that
need two batch sizes or a grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import raysweep.analyze as ra
from raysweep.analyze import checks, plots
from raysweep.analyze.__main__ import main
from raysweep.analyze.quality import MAX_RMSE_OCTAVES, MIN_SEEDS_INTERVAL, fit_verdict
from raysweep.analyze.synthetic import make_rows, parabola, write_sweep

ETAS = [2.0**k for k in range(-12, 1)]


def _sweep(tmp_path, axes, loss_fn, name="s", **kwargs):
    trials, curves = make_rows(axes, loss_fn, **kwargs)
    write_sweep(tmp_path, name, trials, curves)
    return ra.load(tmp_path, sweep=name)


# ------------------------------------------------------------------------------------------------ intervals


@pytest.mark.parametrize("n_seeds", [1, 2, 3])
def test_no_bootstrap_interval_below_the_minimum_number_of_seeds(tmp_path, n_seeds):
    rng = np.random.default_rng(0)
    trials, _ = _sweep(tmp_path, {"batch_size": [32], "eta": ETAS, "seed": range(n_seeds)},
                       lambda c: parabola(c, -6.3, noise=0.05, rng=rng))
    row = ra.optimal_eta(trials).iloc[0]
    assert np.isfinite(row["eta_star"])
    if n_seeds < MIN_SEEDS_INTERVAL:
        assert np.isnan(row["eta_star_low"]) and np.isnan(row["eta_star_high"])
        assert row["interval_note"] == f"no interval: {n_seeds} seeds < {MIN_SEEDS_INTERVAL}"
    else:
        assert row["eta_star_low"] <= row["eta_star"] <= row["eta_star_high"] and row["interval_note"] == ""


def test_b_crit_interval_needs_four_batch_sizes():
    table = pd.DataFrame({"batch_size": [16.0, 64.0, 256.0], "target": 0.1, "reached": True,
                          "steps": [100 * (1 + 64 / b) * f for b, f in zip([16, 64, 256], [1.02, 0.97, 1.01])]})
    row = ra.fit_critical_batch(table).iloc[0]
    assert np.isfinite(row["batch_crit"]) and row["fit_ok"]
    assert np.isnan(row["batch_crit_low"]) and row["interval_note"] == "no interval: 3 batch sizes < 4"


# ------------------------------------------------------------------------------------------------------ fits


def test_fit_verdict_rules():
    assert fit_verdict(5, 2, 0.1, 0.5) == (True, "")
    assert fit_verdict(2, 2, 0.0, 0.5) == (False, "2 points < 3 (2 parameters)")
    assert fit_verdict(5, 2, 1.16, 0.5) == (False, "rmse 1.16 octaves > 0.5")
    assert not fit_verdict(5, 2, np.nan, 0.5)[0]


def test_a_non_monotone_eta_star_is_not_called_saturated_without_a_flag(tmp_path):
    # eta*(B) jumps around by octaves: a broken power law "saturates" somewhere, with an rmse above an octave
    stars = {16: -8.0, 32: -5.0, 64: -7.5, 128: -4.0, 256: -7.0}
    trials, _ = _sweep(tmp_path, {"batch_size": list(stars), "eta": ETAS, "seed": range(2)},
                       lambda c: parabola(c, stars[c["batch_size"]]))
    law = ra.fit_eta_power_law(ra.optimal_eta(trials)).iloc[0]
    assert law["rmse_octaves"] > MAX_RMSE_OCTAVES
    assert not law["fit_ok"] and law["fit_note"].startswith("rmse ")


def test_a_two_point_power_law_is_flagged(tmp_path):
    trials, _ = _sweep(tmp_path, {"batch_size": [16, 64], "eta": ETAS, "seed": range(2)},
                       lambda c: parabola(c, np.log2(c["batch_size"]) - 12.3))
    law = ra.fit_eta_power_law(ra.optimal_eta(trials)).iloc[0]
    assert law["n_points"] == 2 and law["rmse_octaves"] < 1e-9
    assert not law["fit_ok"] and law["fit_note"] == "2 points < 4 (3 parameters)"


def test_a_clean_power_law_is_ok(tmp_path):
    trials, _ = _sweep(tmp_path, {"batch_size": [2**k for k in range(2, 10)], "eta": ETAS, "seed": range(2)},
                       lambda c: parabola(c, min(np.log2(c["batch_size"]), 6) - 12.3))
    law = ra.fit_eta_power_law(ra.optimal_eta(trials)).iloc[0]
    assert law["fit_ok"] and law["fit_note"] == "" and law["saturated"]


def test_transfer_slope_flags(tmp_path):
    two, _ = _sweep(tmp_path, {"width": [64, 256], "eta": ETAS, "seed": range(2)}, lambda c: parabola(c, -6.3),
                    name="two")
    row = ra.transfer_slope(two).iloc[0]
    assert row["n_widths"] == 2 and not row["fit_ok"] and "2 points < 3" in row["fit_note"]
    scatter = {64: -8.0, 128: -5.0, 256: -8.0, 512: -5.0}
    noisy, _ = _sweep(tmp_path, {"width": list(scatter), "eta": ETAS, "seed": range(2)},
                      lambda c: parabola(c, scatter[c["width"]]), name="noisy")
    row = ra.transfer_slope(noisy).iloc[0]
    assert row["rmse_octaves"] > MAX_RMSE_OCTAVES and not row["fit_ok"] and "rmse" in row["fit_note"]
    clean, _ = _sweep(tmp_path, {"width": list(scatter), "eta": ETAS, "seed": range(2)},
                      lambda c: parabola(c, -6.3), name="clean")
    assert ra.transfer_slope(clean)["fit_ok"].item()


def test_gamma_slopes_flag_a_regime_with_two_gammas(tmp_path):
    trials, _ = _sweep(tmp_path, {"gamma": [2.0**k for k in (-4, -3, 2, 3, 4)], "eta": [2.0**k for k in range(-20, 9)],
                                  "seed": range(2)},
                       lambda c: parabola(c, 2 * np.log2(c["gamma"]) if c["gamma"] < 1 else np.log2(c["gamma"]) / 1.5))
    slopes = ra.gamma_slopes(trials).set_index(["regime", "quantity"])
    lazy = slopes.loc[("lazy", "eta_star")]
    assert lazy["n_points"] == 2 and not lazy["fit_ok"] and "2 points < 3" in lazy["fit_note"]
    assert slopes.loc[("rich", "eta_star"), "fit_ok"]


def test_critical_batch_flags_bad_residuals_and_too_few_points():
    b = np.array([4.0, 16.0, 64.0, 256.0, 1024.0])
    power = pd.DataFrame({"batch_size": b, "target": 0.1, "reached": True, "steps": 1000 * (b / 4) ** -0.5})
    row = ra.fit_critical_batch(power).iloc[0]
    assert not row["fit_ok"] and "rmse" in row["fit_note"]
    two = pd.DataFrame({"batch_size": [16.0, 64.0], "target": 0.1, "reached": True, "steps": [500.0, 200.0]})
    row = ra.fit_critical_batch(two).iloc[0]
    assert not row["fit_ok"] and "2 points < 3" in row["fit_note"]


def test_collapse_with_one_bin_is_flagged(tmp_path):
    # B = 16 and 32 share one temperature bin only: T = 0.2 / 32 = 0.1 / 16
    trials, _ = _sweep(tmp_path, {"batch_size": [16, 32], "eta": [0.1, 0.2]}, lambda c: 1.0 + c["batch_size"] / 100)
    row = ra.temperature_collapse(trials).iloc[0]
    assert row["n_bins"] == 1 and not row["fit_ok"] and "1 bins" in row["fit_note"]


def test_a_flagged_fit_fails_its_check_row_and_the_table_prints_the_quality(tmp_path):
    # eta*(B) non-monotone: the temperature check's power law is flagged, so alpha and B_sat fail whatever they are
    stars = {2: -8.0, 4: -5.0, 8: -7.0, 16: -4.0, 32: -6.5, 64: -3.5, 128: -6.0, 256: -3.0}
    trials, _ = make_rows({"batch_size": list(stars), "eta": [2.0**k for k in range(-12, 2)]},
                          lambda c: 0.3 + 0.05 * (np.log2(c["eta"]) - stars[c["batch_size"]]) ** 2)
    write_sweep(tmp_path, "science_temperature", trials)
    result = checks.run_check(tmp_path, "temperature")
    alpha = [r for r in result.rows if r.quantity.startswith("eta* ~ B^alpha")][0]
    assert alpha.status == "FAIL" and alpha.note.startswith("flagged fit: rmse")
    assert "(n=8, rmse" in alpha.measured and not result.passed
    assert "flagged fit" in result.table()


# ---------------------------------------------------------------------------------------------------- metric


def _metric_rows():
    """Three optima: the eval loss at 2^-6, the train loss at 2^-7, the eval accuracy at 2^-4."""
    trials, _ = make_rows({"batch_size": [16, 64], "eta": ETAS, "seed": range(3)}, lambda c: parabola(c, -6.0))
    for row in trials:
        le = np.log2(row["eta"])
        row["final_train_loss"] = 1.0 + 0.2 * (le + 7.0) ** 2
        row["final_eval_accuracy"] = 0.9 - 0.01 * (le + 4.0) ** 2
    return trials


@pytest.mark.parametrize("metric, star, best", [("eval_loss", -6.0, 1.0), ("train_loss", -7.0, 1.0),
                                                ("eval_accuracy", -4.0, 0.1)])
def test_the_metric_chooses_eta_star(tmp_path, metric, star, best):
    write_sweep(tmp_path, "m", _metric_rows())
    trials, _ = ra.load(tmp_path, metric=metric)
    table = ra.optimal_eta(trials)
    assert table["log2_eta_star"].to_numpy() == pytest.approx(star) and (table["metric"] == metric).all()
    assert table["loss_star"].to_numpy() == pytest.approx(best)  # accuracy is maximised: its error is 1 - 0.9
    # the library functions take the metric too, from a table prepared for another one
    other = ra.optimal_eta(ra.load(tmp_path)[0], metric=metric)
    assert other["log2_eta_star"].to_numpy() == pytest.approx(star)


def test_every_table_and_the_report_state_the_metric(tmp_path, capsys):
    folder = write_sweep(tmp_path, "m", _metric_rows())
    assert main([str(folder), "--metric", "eval_accuracy", "--out", str(tmp_path / "o")]) == 0
    assert "metric eval_accuracy" in capsys.readouterr().out
    for name in ("eta_star", "eta_max", "eta_power_law", "all_diverged", "temperature_collapse"):
        assert set(pd.read_csv(tmp_path / "o" / f"{name}.csv")["metric"].dropna()) <= {"eval_accuracy"}
        assert "metric" in pd.read_csv(tmp_path / "o" / f"{name}.csv").columns
    assert pd.read_csv(tmp_path / "o" / "eta_star.csv")["log2_eta_star"].to_numpy() == pytest.approx(-4.0)
    html = (tmp_path / "o" / "report.html").read_text()
    assert "Metric: <b>eval_accuracy</b>" in html and "1 - eval_accuracy" in html
    default = ra.analyze_frames(*ra.load(tmp_path), make_plots=False)
    assert all((t["metric"] == "eval_loss").all() for k, t in default.tables.items() if len(t) and k != "noise_scale")


def test_accuracy_on_a_regression_sweep_is_a_clear_error(tmp_path, capsys):
    folder = write_sweep(tmp_path, "reg", make_rows({"batch_size": [16], "eta": ETAS}, lambda c: 1.0)[0])
    assert main([str(folder), "--metric", "eval_accuracy"]) == 2
    assert "no trial recorded an eval accuracy" in capsys.readouterr().err
    with pytest.raises(ValueError, match="metric must be one of"):
        ra.load(tmp_path, metric="accuracy")


# ----------------------------------------------------------------------------------------------------- plots


def test_a_single_batch_size_sweep_skips_the_plots_over_b_with_a_note(tmp_path):
    trials, curves = _sweep(tmp_path, {"batch_size": [32], "eta": ETAS, "seed": range(2)}, lambda c: parabola(c, -6))
    a = ra.analyze_frames(trials, curves, strict=True)
    assert not {"heatmap", "heatmap_temperature", "loss_vs_temperature"} & set(a.figures)
    assert "loss_vs_eta" in a.figures and "temperature_collapse" not in a.tables
    assert any(n.startswith("One batch size") and "heatmaps" in n for n in a.notes)


def test_a_guided_search_gets_the_loss_vs_eta_plot_with_its_pruned_trials(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for b in (8, 32, 128):  # each cell an Optuna study: etas drawn, not on a grid; a third of them pruned
        for i, le in enumerate(rng.uniform(-10, 0, size=12)):
            rows += make_rows({"batch_size": [b], "eta": [2.0**le], "seed": [i]}, lambda c: parabola(c, -5.0))[0]
    for row in rows[::3]:
        row["status"] = "pruned"
    write_sweep(tmp_path, "guided", rows)
    trials, curves = ra.load(tmp_path)
    a = ra.analyze_frames(trials, curves, strict=True)
    assert "heatmap" not in a.figures and "loss_vs_eta" in a.figures
    assert any("of the (B, eta) grid ran" in n for n in a.notes)
    fig = plots.plot_loss_vs_eta(a.trials, a.tables["eta_star"])
    hollow = [line for ax in fig.axes for line in ax.get_lines() if line.get_marker() == "^" and len(line.get_xdata())]
    assert sum(len(line.get_xdata()) for line in hollow) == 12  # every pruned trial drawn, at its last value


def test_the_heatmap_colour_bar_names_its_quantity_inside_the_figure(tmp_path):
    trials, _ = _sweep(tmp_path, {"batch_size": [16, 64], "eta": ETAS}, lambda c: parabola(c, -6))
    a = ra.analyze_frames(trials, trials.iloc[:0][[]], make_plots=False)
    fig = plots.plot_heatmap(a.trials, a.tables["eta_star"], a.tables["eta_max"])
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    label = fig.axes[-1].yaxis.label
    assert label.get_text() == "log10 final eval_loss (seed mean)"
    box = label.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.x1  # not cut off by the figure's edge
