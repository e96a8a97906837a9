"""The linear student's exact SGD stability edge beside the measured one.

For a sweep of the linear student (``experiment.model: linear``) on a linear family (``linear``, ``noisy_linear``),
:mod:`raysweep.linear_theory` gives the mean-square stability edge ``eta_edge(B)`` of minibatch SGD exactly, the
study's approximation ``2 / (lambda_max (1 + 1/B) + tr(Sigma) / B)`` and ``B_crit = tr(Sigma) / lambda_max``.
:func:`theory_table` sets them beside the measured edge (:func:`raysweep.analyze.optimum.eta_max`: the smallest eta
at which a seed diverged, the largest at which none did); the heatmaps draw the exact edge, the approximation and
a vertical ``B_crit`` line; :func:`check_linear_edge` is ``--check linear_edge``.

What the measured edge should do. A run is stable when its own loss stays bounded (almost-sure stability); the
exact edge is where the loss's *mean* stops being bounded (mean-square stability). A single run can survive a
little past the mean-square edge, never diverge much below it: the check accepts a measured edge from one grid step
below the exact edge to half an octave above it. Below ``B_crit`` the edge grows about linearly in ``B`` (slope 1
in log-log), above it saturates at ``2 / lambda_max`` (slope 0).

The study's science check, ``--check linear_edge``: :func:`check_linear_edge` (its rows:
:mod:`raysweep.analyze.rows`; the rules of every study: :mod:`raysweep.analyze.checks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from raysweep import linear_theory, space
from raysweep.analyze.load import ensure_prepared
from raysweep.analyze.optimum import eta_max, fit_line
from raysweep.analyze.rows import FAIL, Row, fmt, info_row, row
from raysweep.errors import SpecError
from raysweep.storage import SPEC_FILE

THEORY_FAMILIES = ("linear", "noisy_linear")
CURVE_POINTS = 64  # points per octave-spanning theory line on a heatmap
# the check's tolerances (module docstring)
BELOW_STEPS = 1.0  # grid steps the measured edge may sit below the exact one
ABOVE_OCTAVES = 0.5  # octaves it may sit above
SLOPE_TOL = 0.25  # on the log-log slopes: 1 below B_crit / 2, 0 above 2 B_crit
SATURATION_TOL = 0.5  # octaves between the saturated edge and 2 / lambda_max


@dataclass(frozen=True)
class LinearSetting:
    """What the theory needs of a linear-student sweep: the spectrum ``lambdas``, the label noise ``rho`` and the
    MSE convention the trials ran."""

    lambdas: np.ndarray
    rho: float
    convention: str

    @property
    def b_crit(self) -> float:
        return linear_theory.critical_batch(self.lambdas)

    @property
    def lambda_max(self) -> float:
        return float(np.max(self.lambdas))

    def saturation(self) -> float:
        """``2 / lambda_max`` in the run's convention: the edge at ``B -> infinity``."""
        return linear_theory.eta_edge(self.lambdas, math.inf, self.convention)

    def edge(self, batch_size: float) -> float:
        return linear_theory.eta_edge(self.lambdas, batch_size, self.convention)

    def approx(self, batch_size: float) -> float:
        return linear_theory.eta_edge_approx(self.lambdas, batch_size, self.convention)


def linear_setting(experiment: space.Experiment) -> LinearSetting | None:
    """The :class:`LinearSetting` of a linear-student experiment on a linear family, else None."""
    if experiment.model != "linear" or experiment.family not in THEORY_FAMILIES:
        return None
    p = experiment.params
    return LinearSetting(linear_theory.spectrum(p["dim"], p["alpha"]), float(p.get("rho", 0.0)),
                         experiment.mse_convention)


def read_setting(folder) -> LinearSetting | None:
    """:func:`linear_setting` of the spec a sweep folder keeps; None without one or for any other sweep."""
    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        return None
    try:
        return linear_setting(space.load_spec(path).experiment)
    except SpecError:
        return None


def _sgd(table: pd.DataFrame) -> pd.Series:
    """Rows the SGD theory covers (MSE, SGD)."""
    ok = pd.Series(True, index=table.index)
    for column, value in (("optimizer", "SGD"), ("loss", "mse")):
        if column in table.columns:
            ok &= table[column] == value
    return ok


def theory_table(trials: pd.DataFrame, setting: LinearSetting) -> pd.DataFrame:
    """Per (group, batch size): ``eta_edge`` (exact), ``eta_edge_approx`` (the study's approximation),
    ``approx_gap_octaves`` (log2 exact / approximation), ``b_crit``, and the measured ``eta_diverge_min``
    (smallest eta at which a seed diverged) and ``eta_max`` (largest eta at which none did), with
    ``edge_gap_octaves`` = log2(eta_diverge_min / eta_edge). Theory columns are NaN off SGD."""
    table = eta_max(ensure_prepared(trials), x="batch_size")
    keep = [c for c in table.columns if c not in ("eta_blowup_min", "eta_dead_min", "n_eta_dead", "n_eta_failed",
                                                    "all_failed", "non_monotone")]
    table = table[keep].copy()
    sgd = _sgd(table)
    b = table["batch_size"].to_numpy(float)
    table["eta_edge"] = np.where(sgd, [setting.edge(v) for v in b], np.nan)
    table["eta_edge_approx"] = np.where(sgd, [setting.approx(v) for v in b], np.nan)
    table["approx_gap_octaves"] = np.log2(table["eta_edge"] / table["eta_edge_approx"])
    table["b_crit"] = setting.b_crit
    with np.errstate(invalid="ignore", divide="ignore"):
        table["edge_gap_octaves"] = np.log2(table["eta_diverge_min"].to_numpy(float) / table["eta_edge"])
    return table


def theory_lines(setting: LinearSetting, b_min: float, b_max: float) -> pd.DataFrame:
    """The exact edge and the approximation on a fine grid of batch sizes in ``[b_min, b_max]`` (for plots)."""
    n = max(2, int(CURVE_POINTS * max(1.0, math.log2(b_max / b_min))))
    bs = np.geomspace(b_min, b_max, n)
    return pd.DataFrame({"batch_size": bs, "eta_edge": [setting.edge(v) for v in bs],
                         "eta_edge_approx": [setting.approx(v) for v in bs]})


def grid_step(etas) -> float:
    """The eta grid's spacing in octaves (the median of consecutive log2 differences); NaN with one eta."""
    logs = np.log2(np.unique(np.asarray(etas, float)))
    return float(np.median(np.diff(logs))) if len(logs) > 1 else math.nan


def check_linear_edge(trials: pd.DataFrame, setting: LinearSetting | None) -> list[Row]:
    """The measured SGD edge of the linear student against the exact mean-square edge (rules:
    :mod:`raysweep.analyze.checks`)."""
    if setting is None:
        return [Row("linear theory", "none", "a linear student (experiment.model: linear) on linear or "
                    "noisy_linear", "-", FAIL, note="the sweep's spec.yaml has no such experiment")]
    table = theory_table(trials, setting)
    table = table[np.isfinite(table["eta_edge"].to_numpy(float))].sort_values("batch_size")
    if table.empty:
        return [Row("linear theory", "no SGD rows", "SGD on MSE", "-", FAIL)]
    step = grid_step(trials["eta"])
    below = BELOW_STEPS * step
    rows: list[Row] = []
    for _, r in table.iterrows():
        b, exact, measured = float(r["batch_size"]), float(r["eta_edge"]), float(r["eta_diverge_min"])
        gap = math.log2(measured / exact) if np.isfinite(measured) else math.nan
        ok = np.isfinite(gap) and -below - 1e-9 <= gap <= ABOVE_OCTAVES + 1e-9
        text = f"{fmt(math.log2(measured))} (gap {gap:+.2f} oct)" if np.isfinite(gap) else \
            "nan (no seed diverged: widen the eta grid)"
        rows.append(row(f"log2 edge at B={b:g}", math.log2(measured) if np.isfinite(measured) else math.nan,
                         f"{fmt(math.log2(exact))} (exact)", f"-{below:.2f} .. +{ABOVE_OCTAVES} oct", ok,
                         measured=text))
    gaps = table.assign(gap=np.log2(table["eta_diverge_min"].to_numpy(float) / table["eta_edge"].to_numpy(float)))
    if gaps["gap"].notna().any():
        worst = gaps.loc[gaps["gap"].abs().idxmax()]
        rows.append(info_row("largest gap, measured - exact", float(worst["gap"]),
                          measured=f"{float(worst['gap']):+.2f} oct at B={float(worst['batch_size']):g}"))
    worst = table.loc[table["approx_gap_octaves"].idxmax()]
    rows.append(info_row("approximation below exact, largest", float(worst["approx_gap_octaves"]),
                      measured=f"{float(worst['approx_gap_octaves']):.2f} oct at B={float(worst['batch_size']):g}"))
    b = table["batch_size"].to_numpy(float)
    log_measured = np.log2(table["eta_diverge_min"].to_numpy(float))
    log_exact = np.log2(table["eta_edge"].to_numpy(float))
    for label, keep, expected in (("B <= B_crit / 2", b <= setting.b_crit / 2, 1.0),
                                  ("B >= 2 B_crit", b >= 2 * setting.b_crit, 0.0)):
        if keep.sum() < 2:
            rows.append(Row(f"slope of log2 edge, {label}", "too few B", f"{expected:g}", "-", FAIL,
                            note=f"needs two batch sizes there (B_crit = {setting.b_crit:.3g})"))
            continue
        slope = fit_line(np.log2(b[keep]), log_measured[keep])[0]
        exact_slope = fit_line(np.log2(b[keep]), log_exact[keep])[0]
        rows.append(row(f"slope of log2 edge, {label} (B_crit = {setting.b_crit:.3g})", slope,
                         f"{expected:g} (exact edge: {fmt(exact_slope)})", f"+-{SLOPE_TOL}",
                         abs(slope - expected) <= SLOPE_TOL))
    big = b >= 2 * setting.b_crit
    if big.any():
        level = float(np.mean(log_measured[big]))
        rows.append(row("log2 edge above 2 B_crit (mean)", level,
                         f"{fmt(math.log2(setting.saturation()))} (2 / lambda_max)", f"+-{SATURATION_TOL} oct",
                         abs(level - math.log2(setting.saturation())) <= SATURATION_TOL))
    return rows
