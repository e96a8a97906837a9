"""The analysis recovers planted truths from synthetic sweeps written through the real results writer.

Each sweep plants a known law (eta*(B) broken power law, S(B) = S_min (1 + B_crit / B), a transfer slope, gamma
slopes) with noise and seeds; the tests assert that the analysis finds it, and that diverged trials (which record an
attractive fake loss of 1e-9) never enter an optimum or a plot colour.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import raysweep.analyze as ra
from raysweep.analyze.optimum import argmin_refine
from raysweep.analyze.synthetic import BASE_CONFIG, make_rows, parabola, write_sweep
from raysweep.results import read_trials

# ---------------------------------------------------------------- eta*(B): c B below B0, constant above

B0_LOG2, OFFSET = 6, 0.3  # eta* off the grid by 0.3 octave: only a working parabola refinement gets it


def _log2_star(batch_size: float) -> float:
    return -10.0 + OFFSET + min(np.log2(batch_size), B0_LOG2)


@pytest.fixture(scope="module")
def eta_sweep(tmp_path_factory):
    rng = np.random.default_rng(1)

    def loss_fn(c):
        star = _log2_star(c["batch_size"])
        if np.log2(c["eta"]) > star + 2:  # stability edge two octaves above the optimum
            return None
        return parabola(c, star, noise=0.02, rng=rng)

    axes = {"batch_size": [2**k for k in range(11)], "eta": [2.0**k for k in range(-14, 1)], "seed": range(3)}
    trials, _ = make_rows(axes, loss_fn)
    root = tmp_path_factory.mktemp("eta")
    write_sweep(root, "eta", trials)
    return ra.load(root)[0]


def test_eta_star_recovered_within_half_a_grid_step(eta_sweep):
    table = ra.optimal_eta(eta_sweep)
    assert len(table) == 11 and not table["at_edge"].any()
    truth = np.array([_log2_star(b) for b in table["batch_size"]])
    err = np.abs(table["log2_eta_star"].to_numpy() - truth)
    assert err.max() < 0.5
    # The grid argmin alone is off by OFFSET = 0.3 everywhere; the parabola must do better.
    assert err.mean() < 0.15
    assert (table["eta_star_low"] <= table["eta_star"]).all() and (table["eta_star"] <= table["eta_star_high"]).all()


def test_power_law_slope_and_saturation(eta_sweep):
    fit = ra.fit_eta_power_law(ra.optimal_eta(eta_sweep))
    assert len(fit) == 1
    row = fit.iloc[0]
    assert row["slope"] == pytest.approx(1.0, abs=0.1)
    assert row["slope_small"] == pytest.approx(1.0, abs=0.1)
    assert row["saturated"]
    assert 2 ** (B0_LOG2 - 1) <= row["batch_size_saturation"] <= 2 ** (B0_LOG2 + 1)
    assert np.log2(row["eta_saturation"]) == pytest.approx(_log2_star(2**B0_LOG2), abs=0.3)


def test_eta_max_and_the_smallest_diverged_eta(eta_sweep):
    edge = ra.eta_max(eta_sweep)
    for _, row in edge.iterrows():
        first_bad = np.floor(_log2_star(row["batch_size"]) + 2) + 1
        assert np.log2(row["eta_diverge_min"]) == first_bad
        assert np.log2(row["eta_max"]) == first_bad - 1
    assert not edge["non_monotone"].any()


def test_diverged_loss_never_enters_eta_star_nor_the_heatmap(eta_sweep):
    # Diverged rows record final_train_loss = 1e-9: any reader that used it would put eta* above the edge.
    assert (eta_sweep["status"] == "diverged").sum() > 50
    table = ra.optimal_eta(eta_sweep).merge(ra.eta_max(eta_sweep), on="batch_size")
    assert (table["eta_star"] < table["eta_diverge_min"]).all()
    assert (table["loss_star"] > 0.5).all()
    grid = ra.heatmap_grid(eta_sweep, x="batch_size", y="eta")
    assert grid.diverged.sum() > 10
    assert grid.loss.mask[grid.diverged].all()
    assert np.isnan(grid.loss.data[grid.diverged]).all()
    assert np.nanmin(grid.loss.filled(np.nan)) > 0.5


def test_one_diverged_seed_masks_the_config(tmp_path):
    # Best eta (2^-3) has a seed that diverged: that config is masked, eta* moves to a neighbour.
    def loss_fn(c):
        if c["eta"] == 2.0**-3 and c["seed"] == 0:
            return None
        return parabola(c, -3.0)

    trials, _ = make_rows({"batch_size": [8], "eta": [2.0**k for k in range(-6, 1)], "seed": range(3)}, loss_fn)
    write_sweep(tmp_path, "partial", trials)
    t = ra.load(tmp_path)[0]
    configs = ra.config_table(t)
    assert configs.loc[configs["eta"] == 2.0**-3, "masked"].item()
    assert np.isnan(configs.loc[configs["eta"] == 2.0**-3, "loss_mean"].item())
    row = ra.optimal_eta(t).iloc[0]
    assert row["eta_grid_best"] != 2.0**-3 and row["edge"] == "diverged"
    edge = ra.eta_max(t).iloc[0]
    assert edge["eta_diverge_min"] == 2.0**-3 and edge["eta_max"] == 1.0 and edge["non_monotone"]
    # A raw table (no derived columns), e.g. straight from pyarrow, gives the same answer.
    raw = read_trials(tmp_path / "partial").to_pandas()
    assert "diverged" not in raw.columns
    assert ra.optimal_eta(raw)["eta_star"].item() == ra.optimal_eta(t)["eta_star"].item()


def test_prepare_trials_rules():
    raw = pd.DataFrame({
        "status": ["completed", "completed", "failed", "pruned", "diverged", "completed"],
        "final_train_loss": [0.5, np.nan, 0.1, 0.2, 1e-9, 0.3],
        "final_eval_loss": [0.4, np.nan, np.nan, 0.2, np.nan, np.inf],
        "eta": 0.1, "batch_size": 4,
    })
    t = ra.prepare_trials(raw)
    # a failed trial (out of memory, infeasible batch, data error, lost worker) is missing data, never diverged
    assert t["diverged"].to_list() == [False, True, False, False, True, True]
    assert t["failed"].to_list() == [False, False, True, False, False, False]
    assert t["usable"].to_list() == [True, False, False, False, False, False]
    assert t["final_loss"].iloc[0] == 0.4 and t["final_loss"].iloc[1:].isna().all()
    assert t["final_loss_source"].to_list()[:2] == ["eval", "train"]
    assert t["temperature"].eq(0.025).all()


# ---------------------------------------------------------------- S(B) = S_min (1 + B_crit / B)

S_MIN, B_CRIT, TARGET = 100.0, 256.0, 0.5


@pytest.fixture(scope="module")
def critical_sweep(tmp_path_factory):
    rng = np.random.default_rng(2)

    def log2_best(b):
        return -8.0 + min(np.log2(b), 8)

    def steps_needed(c):
        # The best eta reaches the target in S(B) steps; other etas are slower.
        s = S_MIN * (1 + B_CRIT / c["batch_size"])
        return s * (1 + 0.5 * (np.log2(c["eta"]) - log2_best(c["batch_size"])) ** 2)

    def curve_fn(c):
        base = steps_needed(c)
        every = max(1, round(base / 20))
        steps = np.arange(0, 3 * base, every)
        s = base * (1 + 0.05 * rng.standard_normal())  # 5% noise on the crossing step, per seed
        return steps, 2 * TARGET * np.exp(-np.log(2) * steps / s)  # = TARGET at step s

    axes = {"batch_size": [2**k for k in range(2, 13)], "eta": [2.0**k for k in range(-6, 1)], "seed": range(3)}
    trials, curves = make_rows(axes, lambda c: 0.1, curve_fn=curve_fn)
    root = tmp_path_factory.mktemp("crit")
    write_sweep(root, "crit", trials, curves)
    return ra.load(root)


def test_steps_to_target_and_critical_batch(critical_sweep):
    trials, curves = critical_sweep
    steps = ra.steps_to_target(curves, trials, targets=[TARGET])
    assert steps["reached"].all() and len(steps) == 11
    truth = S_MIN * (1 + B_CRIT / steps["batch_size"])
    assert np.allclose(steps["steps"], truth, rtol=0.12)
    assert (np.log2(steps["eta_best"]) == np.minimum(np.log2(steps["batch_size"]), 8) - 8).mean() > 0.8
    fit = ra.fit_critical_batch(steps)
    row = fit.iloc[0]
    assert row["batch_crit"] == pytest.approx(B_CRIT, rel=0.10)
    assert row["steps_min"] == pytest.approx(S_MIN, rel=0.10)
    assert row["batch_crit_low"] < row["batch_crit"] < row["batch_crit_high"]
    assert row["samples_min"] == pytest.approx(row["steps_min"] * row["batch_crit"])


def test_unreached_target_is_reported_not_invented(critical_sweep):
    trials, curves = critical_sweep
    steps = ra.steps_to_target(curves, trials, targets=[1e-6])
    assert not steps["reached"].any() and steps["steps"].isna().all()
    fit = ra.fit_critical_batch(steps)
    assert fit.empty or fit["batch_crit"].isna().all()


def test_crossing_step_interpolates_linearly():
    steps = np.array([0.0, 10.0, 20.0])
    assert ra.crossing_step(steps, np.array([1.0, 0.6, 0.2]), 0.4) == pytest.approx(15.0)
    assert ra.crossing_step(steps, np.array([0.3, 0.2, 0.1]), 0.4) == 0.0
    assert np.isnan(ra.crossing_step(steps, np.array([1.0, 0.9, 0.8]), 0.4))


# ---------------------------------------------------------------- transfer: log2 eta* = a + s log2 N


@pytest.fixture(scope="module")
def transfer_sweep(tmp_path_factory):
    rng = np.random.default_rng(3)
    slopes = {"muP": 0.3, "SP": -1.0}

    def loss_fn(c):
        star = 0.7 - 6 + slopes[c["parametrization"]] * (np.log2(c["width"]) - 6)
        return parabola(c, star, noise=0.02, rng=rng)

    axes = {"parametrization": ["SP", "muP"], "width": [2**k for k in range(6, 13)],
            "eta": [2.0**k for k in range(-14, 1)], "seed": range(2)}
    trials, _ = make_rows(axes, loss_fn)
    root = tmp_path_factory.mktemp("transfer")
    write_sweep(root, "transfer", trials)
    return ra.load(root)[0]


def test_transfer_slope_recovered_per_parametrization(transfer_sweep):
    table = ra.transfer_table(transfer_sweep)
    assert "batch_size" in table.columns and "parametrization" in table.columns  # grouping adapts to the axis
    slopes = ra.transfer_slope(table).set_index("parametrization")
    assert "width" not in slopes.columns
    assert slopes.loc["muP", "slope"] == pytest.approx(0.3, abs=0.1)
    assert slopes.loc["SP", "slope"] == pytest.approx(-1.0, abs=0.1)
    assert (slopes["n_widths"] == 7).all()


# ---------------------------------------------------------------- gamma: slope 2 (lazy), 2/L (rich)


@pytest.fixture(scope="module")
def gamma_sweep(tmp_path_factory):
    rng = np.random.default_rng(4)

    def log2_star(g):
        lg = np.log2(g)
        return 0.25 + (2 * lg if lg <= 0 else 2 / 3 * lg)

    def loss_fn(c):
        star = log2_star(c["gamma"])
        if np.log2(c["eta"]) > star + 1.5:
            return None
        return parabola(c, star, noise=0.02, rng=rng)

    axes = {"gamma": [2.0**k for k in range(-8, 9)], "eta": [2.0**k for k in range(-20, 9)], "seed": range(2)}
    trials, _ = make_rows(axes, loss_fn, base={**BASE_CONFIG, "depth": 3})
    root = tmp_path_factory.mktemp("gamma")
    write_sweep(root, "gamma", trials)
    return ra.load(root)[0]


def test_gamma_slopes_lazy_and_rich(gamma_sweep):
    slopes = ra.gamma_slopes(gamma_sweep).set_index(["regime", "quantity"])
    assert slopes.loc[("lazy", "eta_star"), "slope"] == pytest.approx(2.0, abs=0.1)
    assert slopes.loc[("rich", "eta_star"), "slope"] == pytest.approx(2 / 3, abs=0.1)
    for quantity in ("eta_max", "eta_diverge_min"):
        assert slopes.loc[("lazy", quantity), "slope"] == pytest.approx(2.0, abs=0.2)
        assert slopes.loc[("rich", quantity), "slope"] == pytest.approx(2 / 3, abs=0.2)
    assert slopes.loc[("lazy", "eta_star"), "reference_slope"] == 2.0
    assert slopes.loc[("rich", "eta_star"), "reference_slope"] == pytest.approx(2 / 3)
    assert (slopes.loc["lazy", "n_points"] == 6).all()  # gamma 2^-8 .. 2^-3: the crossover is left out


# ---------------------------------------------------------------- small pure pieces


def test_argmin_refine_finds_an_exact_vertex_and_flags_edges():
    grid = np.arange(-3.0, 4.0)
    star, idx, edge = argmin_refine(grid, ((grid - 0.3) ** 2)[None, :])
    assert star[0] == pytest.approx(0.3) and edge[0] == ""
    star, idx, edge = argmin_refine(grid, ((grid + 5) ** 2)[None, :])
    assert star[0] == -3.0 and edge[0] == "grid_low"
    masked = (grid - 1.0) ** 2
    masked[grid > 1] = np.nan
    star, idx, edge = argmin_refine(grid, masked[None, :])
    assert star[0] == 1.0 and edge[0] == "diverged"
    star, idx, edge = argmin_refine(grid, np.full((1, 7), np.nan))
    assert np.isnan(star[0]) and idx[0] == -1


def test_bootstrap_is_seeded(eta_sweep):
    a = ra.optimal_eta(eta_sweep, seed=7)
    b = ra.optimal_eta(eta_sweep, seed=7)
    pd.testing.assert_frame_equal(a, b)


def test_smoothing_window_is_batch_aware():
    assert ra.smoothing_window(32, 10, 3200) == 10
    assert ra.smoothing_window(1024, 10, 3200) == 1
    assert ra.smoothing_window(8, 0, 3200) == 1
    frame = pd.DataFrame({
        "batch_size": [4.0] * 100 + [64.0] * 100, "eta": 0.1, "step": np.tile(np.arange(100) * 10, 2),
        "curve_loss": np.tile(np.r_[np.ones(50), np.zeros(50)], 2),
    })
    out = ra.smooth_curves(frame, window_samples=640)
    assert out.loc[out["batch_size"] == 4, "window"].iloc[0] == 16
    assert out.loc[out["batch_size"] == 64, "window"].iloc[0] == 1
    assert out.loc[out["batch_size"] == 64, "curve_loss"].to_list() == frame.loc[100:, "curve_loss"].to_list()
    small = out[out["batch_size"] == 4]["curve_loss"].to_numpy()
    assert small[50] == pytest.approx(15 / 16) and small[65] == 0.0  # trailing mean over 16 reports


def test_noise_scale_is_the_ratio_of_the_averaged_estimates(tmp_path):
    trials, _ = make_rows({"batch_size": [4, 16], "eta": [0.1]}, lambda c: 1.0)
    keys = [t["config_key"] for t in trials]
    # two reports per config: |G|^2 = 1 then 3, tr Sigma = 10 both times -> B_simple = 10 / 2 = 5 (the mean of the
    # per-report ratios, (10 + 10/3) / 2 = 6.67, is the biased estimate); the second config never measured it
    curves = pd.DataFrame({"sweep": "noise", "config_key": [keys[0]] * 2 + [keys[1]] * 2, "step": [50, 100] * 2,
                           "train_loss": 1.0, "eval_loss": 1.0,
                           "grad_sq": [1.0, 3.0, None, None], "grad_trace_cov": [10.0, 10.0, None, None],
                           "grad_noise_scale": [10.0, 10.0 / 3, None, None]})
    table = ra.noise_scale_table(curves, pd.DataFrame(trials))
    assert list(table["config_key"]) == [keys[0]]
    row = table.iloc[0]
    assert row["n_reports"] == 2 and row["b_simple"] == pytest.approx(5.0)
    assert row["b_simple_ratio_mean"] == pytest.approx((10 + 10 / 3) / 2)
    assert ra.noise_scale_table(curves, pd.DataFrame(trials), min_step=100).iloc[0]["b_simple"] == pytest.approx(10 / 3)
    # the analysis lists it when the sweep measured it, and not otherwise
    assert "noise_scale" in ra.analyze_frames(pd.DataFrame(trials), curves, make_plots=False).tables
    off = curves.assign(grad_sq=None, grad_trace_cov=None, grad_noise_scale=None)
    assert "noise_scale" not in ra.analyze_frames(pd.DataFrame(trials), off, make_plots=False).tables
