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

The study's science check, ``--check eos``: :func:`check_eos` (its rows: :mod:`raysweep.analyze.rows`; the rules of
every study: :mod:`raysweep.analyze.checks`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from raysweep.analyze.load import CONFIG_COLUMNS, ensure_prepared, group_columns
from raysweep.analyze.optimum import eta_max
from raysweep.analyze.rows import FAIL, SKIPPED, Row, fmt, info_row, row

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


def check_eos(trials: pd.DataFrame, curves: pd.DataFrame, *, n_train: int | None = None, window: float = 0.5,
              tol: float = 0.10, min_rise: float = 1.5) -> list[Row]:
    """Full-batch GD at the edge of stability; SGD's batch sharpness and Adam's preconditioned sharpness as info
    (rules: :mod:`raysweep.analyze.checks`). ``n_train``: the training set size (a batch this large is full-batch GD;
    default: the largest SGD batch size of the sweep); ``window``: the fraction of training where it starts."""
    trials = ensure_prepared(trials)
    table = sharpness_curves(curves, trials)
    if table.empty or table["sharpness"].isna().all():
        return [Row("sharpness curves", "none", "experiment.curvature with kinds [sharpness]", "-", FAIL)]
    sgd = trials[trials["optimizer"] == "SGD"]
    full = n_train if n_train is not None else (sgd["batch_size"].max() if len(sgd) else math.nan)
    gd = sgd[sgd["batch_size"] >= full].sort_values(["eta", "seed"])
    total = float(pd.to_numeric(trials["steps"], errors="coerce").max())
    start, end = window * total, total
    span = f"steps {start:g}-{end:g}"
    rows: list[Row] = []
    if gd.empty:
        rows.append(Row("full-batch GD trials", "0", f"SGD at batch_size {full:g}", "-", FAIL))
    seeds = gd["seed"].nunique() > 1
    stats = window_stats(table, "sharpness", "edge", start, end).set_index("config_key")
    for _, t in gd.iterrows():
        name = f"GD eta={t['eta']:g}" + (f" seed {int(t['seed'])}" if seeds else "")
        if t["status"] != "completed":
            rows.append(Row(f"{name}: status", str(t["status"]), "completed", "-", FAIL,
                            note=str(t.get("error") or "")[:120]))
            continue
        edge = 2.0 / float(t["lr_effective"])
        init = float(t["initial_sharpness"]) if pd.notna(t.get("initial_sharpness")) else math.nan
        if t["config_key"] not in stats.index:
            rows.append(Row(f"{name}: sharpness reports in {span}", "0", ">= 1", "-", FAIL))
            continue
        st = stats.loc[t["config_key"]]
        mean = float(st["mean_ratio"]) * edge
        rows.append(row(f"{name}: sharpness rise (mean over {span} / at init {fmt(init)})", mean / init,
                         f">= {min_rise:g} (progressive sharpening)", f">= {min_rise:g}", mean / init >= min_rise))
        rows.append(row(f"{name}: max |sharpness / (2/eta) - 1| over {span} ({int(st['n_reports'])} reports)",
                         float(st["max_deviation"]), f"0 (2/eta = {fmt(edge)})", f"<= {tol:g}",
                         float(st["max_deviation"]) <= tol,
                         measured=f"{fmt(float(st['max_deviation']))} (ratio {fmt(float(st['min_ratio']))}.."
                                  f"{fmt(float(st['max_ratio']))})"))
    minibatch = sgd[sgd["batch_size"] < full].sort_values(["batch_size", "eta", "seed"])
    batch_stats = window_stats(table, "batch_sharpness", "edge", start, end).set_index("config_key")
    for _, t in minibatch.iterrows():
        if t["config_key"] in batch_stats.index:
            rows.append(info_row(f"SGD B={t['batch_size']:g} eta={t['eta']:g}: batch sharpness / (2/eta), mean over "
                              f"{span}", float(batch_stats.loc[t["config_key"], "mean_ratio"]), "1"))
    adam = trials[trials["optimizer"].isin(("Adam", "AdamW"))].sort_values(["batch_size", "eta", "seed"])
    # adam_edge: (2 + 2 beta1) / ((1 - beta1) lr_eff) at each trial's beta1 (38 / lr_eff at 0.9)
    pre_stats = window_stats(table, "preconditioned_sharpness", "adam_edge", start, end).set_index("config_key")
    for _, t in adam.iterrows():
        if t["config_key"] in pre_stats.index:
            b1 = t.get("beta1")
            edge = "38/eta" if pd.isna(b1) or b1 == 0.9 else f"(2+2b1)/((1-b1) eta), b1={b1:g}"
            rows.append(info_row(f"{t['optimizer']} B={t['batch_size']:g} eta={t['eta']:g}: preconditioned sharpness / "
                              f"({edge}), mean over {span}", float(pre_stats.loc[t["config_key"], "mean_ratio"]),
                              "1"))
    if adam.empty:
        rows.append(Row("Adam: preconditioned sharpness / (38/eta)", "-", "1", "info", SKIPPED,
                        note="no Adam trials in this sweep"))
    return rows
