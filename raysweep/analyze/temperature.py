"""SGD temperature T = eta / B: does the final loss depend on (B, eta) only through T?

In the small-batch (SDE) regime the final loss is a function of T alone, so the curves of loss against log2 T for
different batch sizes lie on top of each other; past the critical batch they separate.

Collapse score (per group, all configuration columns but batch_size and eta): bin log2 T into bins of width
``bin_width`` octaves (default 1, centred on integers); in each bin holding finite losses from at least two batch
sizes, take the standard deviation across batch sizes of the natural log of the seed-mean final loss (a batch size
with several points in the bin contributes their mean); the score is the mean over those bins. 0 is a perfect
collapse; 0.1 means the batch sizes disagree by about 10% at equal temperature. Masked (diverged) configs are left
out. NaN when no bin has two batch sizes; ``fit_ok`` is False (with ``fit_note``) when fewer than 2 bins have two
batch sizes (one bin is a single comparison, not a collapse).

The study's science check, ``--check temperature``: :func:`check_temperature` (its rows:
:mod:`raysweep.analyze.rows`; the rules of every study: :mod:`raysweep.analyze.checks`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from raysweep.analyze.load import ensure_prepared, group_columns
from raysweep.analyze.optimum import config_table, fit_eta_power_law, iter_groups, optimal_eta
from raysweep.analyze.rows import FAIL, Row, fit_row, info_row, row


MIN_BINS = 2


def temperature_table(trials: pd.DataFrame, *, metric: str | None = None) -> pd.DataFrame:
    """:func:`~raysweep.analyze.optimum.config_table` over (batch_size, eta) with ``temperature`` and
    ``log2_temperature`` added."""
    table = config_table(trials, x="batch_size", metric=metric)
    table["temperature"] = table["eta"].astype(float) / table["batch_size"].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        table["log2_temperature"] = np.log2(table["temperature"].to_numpy(float))
    return table


def temperature_collapse(trials: pd.DataFrame, *, bin_width: float = 1.0) -> pd.DataFrame:
    """Collapse score per group (rule in the module docstring). ``trials`` may also be a :func:`temperature_table`.

    Columns: group columns, ``collapse_score``, ``n_bins`` (bins used), ``n_batch_sizes``, ``fit_ok``,
    ``fit_note``."""
    table = trials if "log2_temperature" in trials.columns else temperature_table(trials)
    by = group_columns(table, exclude=("batch_size", "eta"))
    columns = by + ["collapse_score", "n_bins", "n_batch_sizes", "fit_ok", "fit_note"]
    rows = []
    for keys, sub in iter_groups(table, by):
        sub = sub[np.isfinite(sub["loss_mean"].to_numpy(float)) & (sub["loss_mean"].to_numpy(float) > 0)
                  & np.isfinite(sub["log2_temperature"].to_numpy(float))]
        score, n_bins = np.nan, 0
        if len(sub):
            frame = pd.DataFrame({
                "bin": np.round(sub["log2_temperature"].to_numpy(float) / bin_width),
                "batch_size": sub["batch_size"].to_numpy(float),
                "log_loss": np.log(sub["loss_mean"].to_numpy(float)),
            })
            per_b = frame.groupby(["bin", "batch_size"])["log_loss"].mean().reset_index()
            spread = per_b.groupby("bin")["log_loss"].agg(lambda v: np.std(v) if len(v) >= 2 else np.nan).dropna()
            n_bins = len(spread)
            score = float(spread.mean()) if n_bins else np.nan
        ok = n_bins >= MIN_BINS
        rows.append(dict(zip(by, keys)) | {
            "collapse_score": score, "n_bins": n_bins, "n_batch_sizes": int(sub["batch_size"].nunique()),
            "fit_ok": ok, "fit_note": "" if ok else f"{n_bins} bins with two batch sizes < {MIN_BINS}"})
    return pd.DataFrame(rows, columns=columns)


def check_temperature(trials: pd.DataFrame, *, min_slope: float = 0.25, max_score: float = 0.1) -> list[Row]:
    """eta*(B) grows then saturates; the loss depends on T alone at small B and moderate T (rules:
    :mod:`raysweep.analyze.checks`)."""
    trials = ensure_prepared(trials)
    opt = optimal_eta(trials, n_boot=0)
    law = fit_eta_power_law(opt)
    rows: list[Row] = []
    if law.empty or not np.isfinite(law["slope"].iloc[0]):
        return [Row("eta* power law in B", "no fit", "-", "-", FAIL)]
    batches = np.sort(trials["batch_size"].dropna().unique())
    fit = law.iloc[0]
    b_sat = float(fit["batch_size_saturation"])
    alpha = float(fit["slope"])
    rows.append(fit_row("eta* ~ B^alpha for B <= B_sat: alpha", alpha, "> 0 (grows; 1 = linear scaling)",
                         f">= {min_slope}", alpha >= min_slope, fit))
    rows.append(fit_row("saturation batch B_sat", b_sat, f"inside ({batches[0]:g}, {batches[-1]:g})", "-",
                         batches[0] < b_sat < batches[-1], fit, measured=f"{b_sat:g}"))
    small = opt[opt["batch_size"] <= b_sat]
    t_star = (small["eta_star"] / small["batch_size"]).to_numpy(float)
    t_hi = float(np.nanmin(t_star)) if np.isfinite(t_star).any() else math.nan
    table = config_table(trials)
    table = table[table["batch_size"] <= b_sat].assign(temperature=lambda t: t["eta"] / t["batch_size"])
    # the zero-predictor loss per B (the loss at step 0); without that column, the worst loss of the B column
    initial = pd.to_numeric(trials["initial_loss"], errors="coerce").groupby(trials["batch_size"]).median()
    initial = initial.fillna(table.groupby("batch_size")["loss_mean"].max())
    half = 0.5 * table["batch_size"].map(initial).to_numpy(float)
    trained = table.assign(ok=table["loss_mean"].to_numpy(float) <= half).groupby("temperature")["ok"].all()
    t_lo = float(trained[trained].index.min()) if trained.any() else math.nan
    keep = (trials["batch_size"] <= b_sat) & (trials["temperature"] >= t_lo * (1 - 1e-9)) & (
        trials["temperature"] <= t_hi * (1 + 1e-9))
    score = temperature_collapse(trials[keep])
    value = float(score["collapse_score"].iloc[0]) if len(score) else math.nan
    n_bins = int(score["n_bins"].iloc[0]) if len(score) else 0
    rows.append(row(f"collapse score, B <= {b_sat:g}, T in [2^{np.log2(t_lo):.2f}, 2^{np.log2(t_hi):.2f}] "
                     f"({n_bins} bins)", value, "0 (loss depends on T alone)", f"<= {max_score}",
                     value <= max_score and n_bins >= 2))
    large = temperature_collapse(trials[trials["batch_size"] >= b_sat])
    if len(large):
        rows.append(info_row(f"collapse score, B >= {b_sat:g}, all T (breaks past B_sat)",
                          float(large["collapse_score"].iloc[0])))
    return rows
