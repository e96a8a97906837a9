"""muP transfer: does eta* move with width?

eta*(N) is :func:`~raysweep.analyze.optimum.optimal_eta` with ``x="width"`` (so the batch size, gamma, depth...
are grouping columns). The transfer slope is the least-squares slope of log2 eta* against log2 N: octaves of eta*
per width doubling. Under muP with a width-correct learning-rate rule it is ~0 (the optimum transfers); under SP
with SGD the optimum typically moves by about -1 octave per doubling. Points at the grid edge of the eta sweep are
left out (their optimum lies outside the grid).

Quality (:mod:`raysweep.analyze.quality`): a line has 2 parameters, so ``fit_ok`` needs 3 widths and a residual
``rmse_octaves`` of at most ``MAX_RMSE_OCTAVES``; otherwise ``fit_ok`` is False and ``fit_note`` says why.

The study's science check, ``--check transfer``: :func:`check_transfer` (its rows: :mod:`raysweep.analyze.rows`; the
rules of every study: :mod:`raysweep.analyze.checks`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from raysweep import space
from raysweep.analyze.load import ensure_prepared, group_columns
from raysweep.analyze.optimum import (
    EDGE_GRID_HIGH, EDGE_GRID_LOW, config_table, eta_max, fit_line, iter_groups, optimal_eta,
)
from raysweep.analyze.quality import MAX_RMSE_OCTAVES, fit_verdict, line_rmse
from raysweep.analyze.rows import FAIL, SKIPPED, Row, fit_row, info_row, row


def transfer_table(trials: pd.DataFrame, **kwargs) -> pd.DataFrame:
    """eta*(width) per group: :func:`optimal_eta` with ``x="width"``."""
    return optimal_eta(trials, x="width", **kwargs)


def transfer_slope(table: pd.DataFrame) -> pd.DataFrame:
    """Per group (all configuration columns but width and eta): ``n_widths``, ``slope`` (octaves of eta* per width
    doubling), ``slope_se`` (its standard error; NaN with 2 widths), ``intercept`` (log2 eta* at width 1),
    ``rmse_octaves``, ``fit_ok``, ``fit_note`` (module docstring). Groups with fewer than 2 widths are left out.
    ``table``: a :func:`transfer_table`, or trials."""
    if "log2_eta_star" not in table.columns:
        table = transfer_table(table)
    by = group_columns(table, exclude=("width", "eta"))
    columns = by + ["n_widths", "slope", "slope_se", "intercept", "rmse_octaves", "fit_ok", "fit_note"]
    rows = []
    for keys, sub in iter_groups(table, by):
        keep = np.isfinite(sub["log2_eta_star"].to_numpy(float)) & ~sub["edge"].isin(
            [EDGE_GRID_LOW, EDGE_GRID_HIGH]).to_numpy() & (sub["width"].to_numpy(float) > 0)
        sub = sub[keep]
        if sub["width"].nunique() < 2:
            continue
        lx, ly = np.log2(sub["width"].to_numpy(float)), sub["log2_eta_star"].to_numpy(float)
        slope, intercept, se = fit_line(lx, ly)
        rmse = line_rmse(lx, ly, slope, intercept)
        n = int(sub["width"].nunique())
        ok, note = fit_verdict(n, 2, rmse, MAX_RMSE_OCTAVES)
        rows.append(dict(zip(by, keys)) | {"n_widths": n, "slope": slope, "slope_se": se, "intercept": intercept,
                                           "rmse_octaves": rmse, "fit_ok": ok, "fit_note": note})
    return pd.DataFrame(rows, columns=columns)


def _loss_slope_at(ct: pd.DataFrame, eta: float) -> tuple[float, str]:
    """Slope of log2(seed-mean loss) against log2(width) at one eta, and a note naming masked widths."""
    at = ct[np.isclose(ct["eta"].to_numpy(float), eta, rtol=1e-9)]
    bad = at[at["masked"]]["width"].astype(int).tolist()
    if bad:
        return math.nan, f"diverged or dead at N={bad}"
    slope, _, _ = fit_line(np.log2(at["width"].to_numpy(float)), np.log2(at["loss_mean"].to_numpy(float)))
    return slope, ""


def check_transfer(trials: pd.DataFrame, *, drift_tol: float = 0.5, sp_slope_max: float = 0.5,
                   torch_sp_slope: float = -1.0, torch_sp_tol: float = 0.3) -> list[Row]:
    """muP transfer, SP (NTK) drift and wider-is-worse, torch_sp's falling eta* (rules:
    :mod:`raysweep.analyze.checks`)."""
    trials = ensure_prepared(trials)
    table = transfer_table(trials)
    slopes = transfer_slope(table)
    ct = config_table(trials, x="width")
    rows: list[Row] = []
    for par in ("muP", "SP", "torch_sp"):
        sub = table[table["parametrization"] == par]
        if par == "torch_sp" and sub.empty:
            rows.append(_torch_sp_skip())
            continue
        mine = trials[trials["parametrization"] == par]
        if len(mine) and (mine["status"] == "failed").all():
            error = str(mine["error"].dropna().iloc[0]) if mine["error"].notna().any() else "no error text"
            rows.append(Row(f"{par}: trials", f"all {len(mine)} failed", "completed trials", "-", FAIL,
                            note=error[:120]))
            continue
        if sub.empty:
            rows.append(Row(f"{par}: trials", "0", "rows of this parametrization", "-", FAIL))
            continue
        widths = np.sort(sub["width"].unique())
        n_min, n_max = int(widths[0]), int(widths[-1])
        fit = slopes[slopes["parametrization"] == par]
        n_interior = int(fit["n_widths"].iloc[0]) if len(fit) else 0
        rows.append(row(f"{par}: widths with an interior eta*", n_interior, f"all {len(widths)}", "-",
                         n_interior == len(widths), measured=f"{n_interior}/{len(widths)}"))
        slope = float(fit["slope"].iloc[0]) if len(fit) else math.nan
        octaves = math.log2(n_max / n_min)
        quality = dict(n_column="n_widths")
        if not len(fit):
            rows.append(Row(f"{par}: eta* slope", "no fit", "-", "-", FAIL, note="fewer than 2 interior widths"))
        elif par == "muP":
            rows.append(fit_row(f"muP: eta* drift N={n_min}->{n_max} (octaves, fitted)", slope * octaves, "0",
                                 f"+-{drift_tol}", abs(slope * octaves) <= drift_tol, fit.iloc[0], **quality))
        elif par == "SP":
            rows.append(fit_row("SP: eta* slope (octaves per width doubling)", slope, "small positive",
                                 f"(0, {sp_slope_max}]", 0 < slope <= sp_slope_max, fit.iloc[0], **quality))
        else:
            rows.append(fit_row("torch_sp: eta* slope (octaves per width doubling)", slope, f"{torch_sp_slope:g}",
                                 f"+-{torch_sp_tol}", abs(slope - torch_sp_slope) <= torch_sp_tol, fit.iloc[0],
                                 **quality))
            edge = eta_max(mine, x="width")
            edge_slope = fit_line(np.log2(edge["width"].to_numpy(float)),
                                  np.log2(edge["eta_diverge_min"].to_numpy(float)))[0]
            rows.append(info_row("torch_sp: slope of the stability edge (eta_diverge_min: diverged or dead)",
                              edge_slope, f"{torch_sp_slope:g}"))
        best = sub[sub["width"] == n_min]["eta_grid_best"].iloc[0]
        if par == "torch_sp" or not np.isfinite(best):
            continue
        grid = np.sort(ct[ct["parametrization"] == par]["eta"].unique())
        for factor, label in ((1.0, f"eta*(N={n_min})"), (0.25, f"eta*(N={n_min})/4")):
            eta = best * factor
            name = f"{par}: loss slope vs width at {label} = {eta:g}"
            if not np.isclose(grid, eta).any():
                rows.append(Row(name, "not on grid", "-", "-", FAIL))
                continue
            value, note = _loss_slope_at(ct[ct["parametrization"] == par], eta)
            if par == "muP":
                rows.append(row(name, value, "< 0 (wider is better)", "< 0", value < 0,
                                 measured=note or None))
            elif factor < 1:
                rows.append(row(name, value, "> 0 (wider is worse)", "> 0", value > 0, measured=note or None))
            else:
                rows.append(info_row(name, value, note="info (near the edge: not checked)", measured=note or None))
    return rows


def _torch_sp_skip() -> Row:
    if "torch_sp" not in space.PARAMETRIZATIONS:  # read at call time (patchable)
        why = "parametrization torch_sp not available"
    else:
        why = "no torch_sp rows in this sweep (launch search_spaces/science_transfer.yaml)"
    return Row("torch_sp: eta* slope (octaves per width doubling)", "-", "-1", "+-0.3", SKIPPED, note=why)
