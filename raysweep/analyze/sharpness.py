"""Curvature against the stability thresholds, from the curves' ``sharpness``, ``batch_sharpness`` and
``preconditioned_sharpness`` columns and the trials' ``initial_sharpness`` (``experiment.curvature``).

- Edge of stability (Cohen et al. 2021): full-batch GD at rate ``eta`` is stable on a quadratic while
  ``lambda_max(H) < 2 / eta``; on a network the sharpness rises (progressive sharpening) until it reaches
  ``2 / eta`` and then hovers there. The threshold uses each trial's ``lr_effective`` (the readout layer's rate,
  the rate of every layer under the ``study`` rule).
- SGD: its batch sharpness ``E_b[g_b^T H_b g_b / |g_b|^2]`` settles at ``2 / eta`` (Andreyev and Beneventano 2024).
- Adam (beta1 = 0.9): its preconditioned sharpness settles at ``(2 + 2 beta1) / ((1 - beta1) eta)`` = ``38 / eta``
  (Cohen et al. 2022).
- The stability edge of a sweep, ``eta_max(B)`` (:func:`raysweep.analyze.optimum.eta_max`), beside the classical
  bound at initialization ``2 / lambda_max(H(theta_0))``: progressive sharpening and catapults put the measured edge
  away from it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raysweep.analyze.load import CONFIG_COLUMNS, ensure_prepared, group_columns
from raysweep.analyze.optimum import eta_max

BETA1 = 0.9  # raysweep.step.ADAM_BETAS[0] (this package imports no torch)
CURVATURE_COLUMNS = ("sharpness", "batch_sharpness", "preconditioned_sharpness", "hessian_trace")


def sgd_threshold(lr: float | np.ndarray) -> float | np.ndarray:
    """``2 / lr``: GD's (and SGD's batch-sharpness) stability threshold."""
    return 2.0 / np.asarray(lr, float)


def adam_threshold(lr: float | np.ndarray, beta1: float = BETA1) -> float | np.ndarray:
    """``(2 + 2 beta1) / ((1 - beta1) lr)``: Adam's preconditioned-sharpness threshold (38 / lr at beta1 = 0.9)."""
    return (2 + 2 * beta1) / ((1 - beta1) * np.asarray(lr, float))


def has_curvature(curves: pd.DataFrame) -> bool:
    """Whether ``curves`` carries measured curvature (the experiment had ``curvature`` on)."""
    return any(c in curves.columns and bool(curves[c].notna().any()) for c in CURVATURE_COLUMNS)


def sharpness_curves(curves: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """The curve rows that measured curvature, with each trial's axes, ``lr_effective``, ``initial_sharpness`` and
    thresholds: ``edge`` (``2 / lr_effective``) and ``adam_edge`` (:func:`adam_threshold` at the trial's beta1: ``38 /
    lr_effective`` at 0.9)."""
    trials = ensure_prepared(trials)
    axes = [c for c in CONFIG_COLUMNS if c in trials.columns]
    extra = [c for c in ("lr_effective", "initial_sharpness", "status", "diverged_step") if c in trials.columns]
    values = [c for c in CURVATURE_COLUMNS if c in curves.columns]
    if not values or not has_curvature(curves):
        return pd.DataFrame(columns=["config_key", *axes, *extra, "step", *CURVATURE_COLUMNS, "edge", "adam_edge"])
    c = curves[["config_key", "step", *values]].dropna(subset=values, how="all")
    out = trials[["config_key", *axes, *extra]].merge(c, on="config_key", how="inner")
    for col in CURVATURE_COLUMNS:
        if col not in out.columns:
            out[col] = np.nan
    lr = pd.to_numeric(out["lr_effective"] if "lr_effective" in out.columns else out["eta"], errors="coerce")
    out["edge"] = sgd_threshold(lr.to_numpy(float))
    beta1 = pd.to_numeric(out["beta1"], errors="coerce").fillna(BETA1) if "beta1" in out.columns else BETA1
    out["adam_edge"] = adam_threshold(lr.to_numpy(float), np.asarray(beta1, float))  # each trial's beta1
    return out.sort_values([*axes, "step"]).reset_index(drop=True)


def edge_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The stability edge per (group, B) (:func:`raysweep.analyze.optimum.eta_max`) beside the bound at
    initialization: ``initial_sharpness`` (median over the group's trials) and ``eta_init_bound`` =
    ``2 / initial_sharpness`` in base-eta units (divided by ``lr_effective / eta``, the rule's multiplier)."""
    trials = ensure_prepared(trials)
    edge = eta_max(trials)
    if "initial_sharpness" not in trials.columns or trials["initial_sharpness"].isna().all():
        return edge.assign(initial_sharpness=np.nan, eta_init_bound=np.nan)
    by = [c for c in group_columns(trials, exclude=("batch_size", "eta")) if c in edge.columns] + ["batch_size"]
    t = trials.dropna(subset=["initial_sharpness"])
    mult = (pd.to_numeric(t["lr_effective"], errors="coerce") / t["eta"]) if "lr_effective" in t.columns else 1.0
    t = t.assign(_bound=2.0 / (t["initial_sharpness"] * mult))
    init = t.groupby(by, dropna=False).agg(initial_sharpness=("initial_sharpness", "median"),
                                           eta_init_bound=("_bound", "median")).reset_index()
    return edge.merge(init, on=by, how="left")


def window_stats(table: pd.DataFrame, column: str, threshold: str, start: float, end: float) -> pd.DataFrame:
    """Per configuration: ``column`` over the steps ``[start, end]`` of :func:`sharpness_curves` relative to its
    ``threshold`` column: ``n_reports``, ``mean_ratio``, ``min_ratio``, ``max_ratio`` and ``max_deviation``
    (``max |ratio - 1|``)."""
    w = table[(table["step"] >= start) & (table["step"] <= end)].dropna(subset=[column])
    w = w.assign(_ratio=w[column] / w[threshold])
    out = w.groupby("config_key").agg(n_reports=("step", "size"), mean_ratio=("_ratio", "mean"),
                                      min_ratio=("_ratio", "min"), max_ratio=("_ratio", "max")).reset_index()
    out["max_deviation"] = np.maximum(out["max_ratio"] - 1, 1 - out["min_ratio"])
    return out
