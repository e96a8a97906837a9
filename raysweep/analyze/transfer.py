"""muP transfer: does eta* move with width?

eta*(N) is :func:`~raysweep.analyze.optimum.optimal_eta` with ``x="width"`` (so the batch size, gamma, depth...
are grouping columns). The transfer slope is the least-squares slope of log2 eta* against log2 N: octaves of eta*
per width doubling. Under muP with a width-correct learning-rate rule it is ~0 (the optimum transfers); under SP
with SGD the optimum typically moves by about -1 octave per doubling. Points at the grid edge of the eta sweep are
left out (their optimum lies outside the grid).

Quality (:mod:`raysweep.analyze.quality`): a line has 2 parameters, so ``fit_ok`` needs 3 widths and a residual
``rmse_octaves`` of at most ``MAX_RMSE_OCTAVES``; otherwise ``fit_ok`` is False and ``fit_note`` says why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raysweep.analyze.load import group_columns
from raysweep.analyze.optimum import EDGE_GRID_HIGH, EDGE_GRID_LOW, fit_line, iter_groups, optimal_eta
from raysweep.analyze.quality import MAX_RMSE_OCTAVES, fit_verdict, line_rmse


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
