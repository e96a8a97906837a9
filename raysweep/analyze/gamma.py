"""How the optimum and the stability edge move with the richness gamma (raw-eta phase sweeps).

With no gamma multiplier on the learning rate ("raw eta" mode), the lazy regime (small gamma) and the rich regime
(large gamma) scale differently. For SGD the study's rule predicts eta* ~ gamma^2 for gamma <= 1 and
gamma^(2/L) for gamma > 1 (L = depth, the number of weight matrices); for Adam gamma^1 and gamma^(1/L). Those
exponents are the ``reference_slope`` column (NaN when the depth is unknown, for the rich regime).

:func:`gamma_slopes` fits log2 of eta*, eta_max and eta_diverge_min against log2 gamma separately on the lazy points
(gamma <= ``lazy_max``, default 1/8) and the rich points (gamma >= ``rich_min``, default 4); the crossover in
between is left out. eta* points at the grid edge of the eta sweep are left out. eta_max and eta_diverge_min count
dead nets with the diverged ones (:func:`~raysweep.analyze.optimum.eta_max`).

Quality (:mod:`raysweep.analyze.quality`): each slope is a line (2 parameters), so ``fit_ok`` needs 3 gammas and a
residual ``rmse_octaves`` of at most ``MAX_RMSE_OCTAVES``; otherwise ``fit_ok`` is False and ``fit_note`` says why.

The study's science check, ``--check gamma_eta``: :func:`check_gamma_eta` (its rows: :mod:`raysweep.analyze.rows`;
the rules of every study: :mod:`raysweep.analyze.checks`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raysweep.analyze.load import ensure_prepared, group_columns
from raysweep.analyze.optimum import EDGE_GRID_HIGH, EDGE_GRID_LOW, eta_max, fit_line, iter_groups, optimal_eta
from raysweep.analyze.quality import MAX_RMSE_OCTAVES, fit_verdict, line_rmse
from raysweep.analyze.rows import FAIL, Row, fit_row, info_row, row


def reference_slope(optimizer, depth, regime: str) -> float:
    """The raw-eta exponent of eta* in gamma that the study's rule predicts (see the module docstring)."""
    power = 1.0 if str(optimizer).lower() == "adam" else 2.0
    if regime == "lazy":
        return power
    return power / depth if depth is not None and np.isfinite(depth) and depth > 0 else np.nan


def gamma_table(trials: pd.DataFrame, **kwargs) -> pd.DataFrame:
    """eta*(gamma) and the stability edge per group: :func:`optimal_eta` joined with :func:`eta_max`, both with
    ``x="gamma"``."""
    opt = optimal_eta(trials, x="gamma", **kwargs)
    edge = eta_max(trials, x="gamma")
    keys = group_columns(opt, exclude=("gamma", "eta")) + ["gamma"]
    return opt.merge(edge[keys + ["eta_max", "eta_diverge_min", "eta_blowup_min", "eta_dead_min", "non_monotone"]],
                     on=keys, how="left")


def gamma_slopes(table: pd.DataFrame, *, lazy_max: float = 1 / 8, rich_min: float = 4.0) -> pd.DataFrame:
    """Log-log slopes in gamma per group, regime and quantity. ``table``: a :func:`gamma_table`, or trials.

    Columns: group columns, ``regime`` ("lazy"/"rich"), ``quantity`` ("eta_star", "eta_max", "eta_diverge_min"),
    ``n_points``, ``slope``, ``slope_se``, ``intercept`` (log2 at gamma = 1), ``reference_slope``, ``rmse_octaves``,
    ``fit_ok``, ``fit_note`` (module docstring). A (regime, quantity) with fewer than 2 gammas is left out."""
    if "log2_eta_star" not in table.columns:
        table = gamma_table(table)
    by = group_columns(table, exclude=("gamma", "eta"))
    columns = by + ["regime", "quantity", "n_points", "slope", "slope_se", "intercept", "reference_slope",
                    "rmse_octaves", "fit_ok", "fit_note"]
    rows = []
    for keys, sub in iter_groups(table, by):
        labels = dict(zip(by, keys))
        gamma = sub["gamma"].to_numpy(float)
        grid_edge = sub["edge"].isin([EDGE_GRID_LOW, EDGE_GRID_HIGH]).to_numpy()
        quantities = {
            "eta_star": np.where(grid_edge, np.nan, sub["log2_eta_star"].to_numpy(float)),
            "eta_max": np.log2(sub["eta_max"].to_numpy(float)),
            "eta_diverge_min": np.log2(sub["eta_diverge_min"].to_numpy(float)),
        }
        for regime, in_regime in (("lazy", gamma <= lazy_max), ("rich", gamma >= rich_min)):
            in_regime &= gamma > 0
            for name, values in quantities.items():
                keep = in_regime & np.isfinite(values)
                if len(np.unique(gamma[keep])) < 2:
                    continue
                lx, ly = np.log2(gamma[keep]), values[keep]
                slope, intercept, se = fit_line(lx, ly)
                rmse = line_rmse(lx, ly, slope, intercept)
                ok, note = fit_verdict(int(keep.sum()), 2, rmse, MAX_RMSE_OCTAVES)
                rows.append(labels | {
                    "regime": regime, "quantity": name, "n_points": int(keep.sum()), "slope": slope,
                    "slope_se": se, "intercept": intercept,
                    "reference_slope": reference_slope(labels.get("optimizer"), labels.get("depth"), regime),
                    "rmse_octaves": rmse, "fit_ok": ok, "fit_note": note,
                })
    return pd.DataFrame(rows, columns=columns)


def check_gamma_eta(trials: pd.DataFrame, *, lazy_max: float = 1 / 8, rich_min: float = 4.0,
                    tol: float = 0.3) -> list[Row]:
    """Slopes of the stability edge in gamma per depth and regime (rules: :mod:`raysweep.analyze.checks`)."""
    trials = ensure_prepared(trials)
    table = gamma_table(trials, n_boot=0)
    slopes = gamma_slopes(table, lazy_max=lazy_max, rich_min=rich_min)
    rows: list[Row] = []
    eta_lo = trials.groupby("depth")["eta"].min()
    for depth in sorted(table["depth"].dropna().unique()):
        sub = table[table["depth"] == depth]
        low = eta_lo.loc[depth]
        inside = np.isfinite(sub["eta_diverge_min"].to_numpy(float)) & (sub["eta_diverge_min"].to_numpy(float) > low)
        L = int(depth)
        rows.append(row(f"L={L}: gammas with the edge inside the eta grid", int(inside.sum()), f"all {len(sub)}",
                         "-", bool(inside.all()), measured=f"{int(inside.sum())}/{len(sub)}"))
        for regime, cut, expected in (("lazy", f"gamma <= {lazy_max:g}", 2.0), ("rich", f"gamma >= {rich_min:g}",
                                                                             2.0 / L)):
            pick = slopes[(slopes["depth"] == depth) & (slopes["regime"] == regime)]
            edge = pick[pick["quantity"] == "eta_diverge_min"]
            name = f"L={L} {regime} ({cut}): slope of log2 edge vs log2 gamma"
            if edge.empty:
                rows.append(Row(name, "fewer than 2 gammas", f"{expected:.3g}", f"+-{tol}", FAIL))
            else:
                value = float(edge["slope"].iloc[0])
                rows.append(fit_row(name + f" ({int(edge['n_points'].iloc[0])} gammas)", value, f"{expected:.3g}",
                                     f"+-{tol}", abs(value - expected) <= tol, edge.iloc[0]))
            largest = pick[pick["quantity"] == "eta_max"]
            if len(largest):
                rows.append(info_row(f"L={L} {regime}: slope of log2 eta_max (largest stable eta)",
                                  float(largest["slope"].iloc[0]), f"{expected:.3g}", "info (dead ReLUs)"))
    return rows
