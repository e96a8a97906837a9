"""Steps to a target loss, S(B), and the critical batch size B_crit (McCandlish et al. 2018).

S(B, eta): the first step at which the seed-mean loss curve of config (B, eta) is at or below the target, linearly
interpolated between the two reports that bracket the crossing (the first report when it already is). The curve
follows the analysis metric (:mod:`raysweep.analyze.load`): ``eval_loss`` when the curves table has any eval loss
(else the train loss), ``train_loss``, or the error ``1 - eval_accuracy``; reports with a null value are skipped
(eval is often reported less often than train). Configs with a diverged or dead seed are masked (never used);
pruned and failed trials are left out of the mean.

S(B) = min over eta of S(B, eta): the steps at the best learning rate for that batch size (``eta_best``).

Fit: S = S_min (1 + B_crit / B), i.e. S = p + q / B with S_min = p and B_crit = q / p, by linear least squares in
1/B weighted by 1/S^2 (relative residuals: the noise on a step count is multiplicative, and unweighted least squares
would let the slow small-batch points dominate). The interval on B_crit is a seeded pairs bootstrap over the B
points, only with at least :data:`~raysweep.analyze.quality.MIN_POINTS_INTERVAL` batch sizes (NaN and an
``interval_note`` below). ``samples_min`` = S_min * B_crit is the fewest samples any batch size needs (E_min).

Quality (:mod:`raysweep.analyze.quality`): 2 parameters, so ``fit_ok`` needs 3 batch sizes, S_min > 0 and an
``rmse_rel`` of at most ``MAX_RMSE_REL``; otherwise ``fit_ok`` is False and ``fit_note`` says why.

The study's science check, ``--check critical_batch``: :func:`check_critical_batch` (its rows:
:mod:`raysweep.analyze.rows`; the rules of every study: :mod:`raysweep.analyze.checks`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from raysweep.analyze.load import ensure_prepared, group_columns, metric_of
from raysweep.analyze.optimum import iter_groups
from raysweep.analyze.quality import MAX_RMSE_REL, MIN_POINTS_INTERVAL, fit_verdict, interval_note
from raysweep.analyze.rows import FAIL, Row, fit_row, info_row, row


def curve_metric(curves: pd.DataFrame, metric: str = "eval_loss") -> str:
    """The curves column for the analysis ``metric``: for ``eval_loss``, ``"eval_loss"`` when the curves have any
    eval loss, else ``"train_loss"``; ``train_loss`` and ``eval_accuracy`` as they are."""
    if metric != "eval_loss":
        return metric
    if "eval_loss" in curves.columns and pd.to_numeric(curves["eval_loss"], errors="coerce").notna().any():
        return "eval_loss"
    return "train_loss"


def _curve_values(c: pd.DataFrame, column: str) -> pd.Series:
    """The minimised curve value: the column, or the error ``1 - eval_accuracy``."""
    values = pd.to_numeric(c[column], errors="coerce").astype(float)
    return 1.0 - values if column == "eval_accuracy" else values


def seed_mean_curves(curves: pd.DataFrame, trials: pd.DataFrame, x: str = "batch_size",
                     metric: str = "auto") -> pd.DataFrame:
    """One row per (config, step) with ``curve_loss`` = the mean over the config's usable seeds of ``metric`` (a
    curves column; ``auto``: the one of the trials' analysis metric, :func:`curve_metric`; the error
    ``1 - eval_accuracy`` for ``eval_accuracy``), for configs (group columns, ``x``, ``eta``) without a diverged
    or dead seed. Sorted by config then step; also has ``n_seeds``."""
    trials = ensure_prepared(trials)
    metric = curve_metric(curves, metric_of(trials)) if metric == "auto" else metric
    by = group_columns(trials, exclude=(x, "eta"))
    keys = by + [x, "eta"]
    empty = pd.DataFrame(columns=keys + ["step", "curve_loss", "n_seeds"])
    t = trials.dropna(subset=[x, "eta"])
    if t.empty or curves.empty:
        return empty
    # Number the configs on the (small) trials table, then average the (large) curves table on two integer keys.
    config = t.groupby(keys, dropna=False, sort=True).ngroup().to_numpy()
    bad = np.zeros(config.max() + 1, dtype=bool)
    np.logical_or.at(bad, config, t["unstable"].to_numpy(bool))
    keep = t["usable"].to_numpy(bool) & ~bad[config]
    ids = pd.DataFrame({"config_key": t["config_key"].to_numpy()[keep], "_config": config[keep]})
    c = curves[["config_key", "step", metric]].assign(**{metric: lambda f: _curve_values(f, metric)})
    c = c.dropna(subset=[metric, "step"])
    merged = c.merge(ids, on="config_key", how="inner")
    merged = merged[np.isfinite(merged[metric].to_numpy(float))]
    if merged.empty:
        return empty
    out = merged.groupby(["_config", "step"], sort=True)[metric].agg(["mean", "size"]).reset_index()
    labels = t[keys].assign(_config=config).drop_duplicates("_config").set_index("_config")
    out = labels.loc[out["_config"].to_numpy()].reset_index(drop=True).join(out.drop(columns="_config"))
    return out.rename(columns={"mean": "curve_loss", "size": "n_seeds"})


def crossing_step(steps: np.ndarray, loss: np.ndarray, target: float) -> float:
    """First step where ``loss`` <= ``target``, linearly interpolated between reports; NaN if never."""
    below = np.flatnonzero(loss <= target)
    if below.size == 0:
        return np.nan
    i = below[0]
    if i == 0:
        return float(steps[0])
    s0, s1, l0, l1 = steps[i - 1], steps[i], loss[i - 1], loss[i]
    return float(s0 + (l0 - target) * (s1 - s0) / (l0 - l1))


def default_targets(mean_curves: pd.DataFrame, x: str = "batch_size", n: int = 3) -> list[float]:
    """Targets every x can reach: geometric points between the hardest-reached loss (max over x of the best loss
    any eta reached) and the median first-report loss, at fractions 0.15, 0.4, 0.7 of the way up (in log), rounded
    to 3 significant digits. ``[]`` when the curves do not go down."""
    if mean_curves.empty:
        return []
    keys = [c for c in mean_curves.columns if c not in ("step", "curve_loss", "n_seeds")]
    per_config = mean_curves.groupby(keys, dropna=False, sort=False)["curve_loss"]
    start = float(np.median(per_config.first()))
    lowest = per_config.min()
    best = lowest.groupby(level=x, dropna=False).min() if x in keys else lowest
    reach = float(best.max())
    if not (np.isfinite(start) and np.isfinite(reach)) or reach <= 0 or start <= reach:
        return []
    fracs = np.array([0.15, 0.4, 0.7][:n])
    targets = reach * (start / reach) ** fracs
    return [float(f"{v:.3g}") for v in targets]


def steps_to_target(curves: pd.DataFrame, trials: pd.DataFrame, targets=None, x: str = "batch_size",
                    metric: str = "auto", *, mean_curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """S(x) per group and target (rules in the module docstring). ``targets``: a list of losses, or None for
    :func:`default_targets` per group.

    Columns: group columns, ``x``, ``target``, ``steps`` (NaN when no eta reached it), ``eta_best``,
    ``samples`` (steps * x when x is the batch size), ``reached``, ``n_eta`` (etas with a usable curve),
    ``metric``. ``mean_curves``: a precomputed :func:`seed_mean_curves` table of the same metric (saves time)."""
    trials = ensure_prepared(trials)
    metric = curve_metric(curves, metric_of(trials)) if metric == "auto" else metric
    mean = seed_mean_curves(curves, trials, x=x, metric=metric) if mean_curves is None else mean_curves
    by = group_columns(trials, exclude=(x, "eta"))
    columns = by + [x, "target", "steps", "eta_best", "samples", "reached", "n_eta", "metric"]
    rows = []
    for gkeys, gsub in iter_groups(mean, by):
        group_targets = default_targets(gsub, x=x) if targets is None else [float(v) for v in targets]
        if not group_targets:
            continue
        for xval, xsub in gsub.groupby(x, sort=True):
            best = {t: (np.nan, np.nan) for t in group_targets}
            etas = 0
            for eta, csub in xsub.groupby("eta", sort=True):
                etas += 1
                steps, loss = csub["step"].to_numpy(float), csub["curve_loss"].to_numpy(float)
                for target in group_targets:
                    s = crossing_step(steps, loss, target)
                    if np.isfinite(s) and not s >= best[target][0]:
                        best[target] = (s, eta)
            for target in group_targets:
                s, eta = best[target]
                rows.append(
                    dict(zip(by, gkeys))
                    | {x: xval, "target": target, "steps": s, "eta_best": eta,
                       "samples": s * xval if x == "batch_size" else np.nan,
                       "reached": bool(np.isfinite(s)), "n_eta": etas, "metric": metric}
                )
    return pd.DataFrame(rows, columns=columns)


def _wls_batch(u: np.ndarray, s: np.ndarray):
    """Weighted (1/S^2) least squares of s = p + q u along the last axis; returns (p, q) arrays."""
    w = 1.0 / s**2
    sw, su, ss = w.sum(-1), (w * u).sum(-1), (w * s).sum(-1)
    suu, sus = (w * u * u).sum(-1), (w * u * s).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (sw * sus - su * ss) / (sw * suu - su**2)
        p = (ss - q * su) / sw
    return p, q


def fit_critical_batch(table: pd.DataFrame, x: str = "batch_size", *, n_boot: int = 1000, ci: float = 0.9,
                       seed: int = 0) -> pd.DataFrame:
    """Fit S = S_min (1 + B_crit / B) per group and target on a :func:`steps_to_target` table (rules in the module
    docstring). Needs 2 distinct B with a reached target (:data:`~raysweep.analyze.quality.MIN_POINTS_INTERVAL` for
    an interval); B_crit is NaN when S_min <= 0.

    Columns: group columns, ``target``, ``n_points``, ``steps_min``, ``batch_crit``, ``batch_crit_low``,
    ``batch_crit_high``, ``interval_note``, ``samples_min``, ``rmse_rel`` (root-mean-square relative residual),
    ``fit_ok``, ``fit_note``."""
    by = group_columns(table, exclude=(x, "eta"))
    columns = by + ["target", "n_points", "steps_min", "batch_crit", "batch_crit_low", "batch_crit_high",
                    "interval_note", "samples_min", "rmse_rel", "fit_ok", "fit_note"]
    rng = np.random.default_rng(seed)
    rows = []
    t = table[table["reached"].astype(bool)] if len(table) else table
    for keys, sub in iter_groups(t, by + ["target"]):
        sub = sub[sub[x].to_numpy(float) > 0]
        b, s = sub[x].to_numpy(float), sub["steps"].to_numpy(float)
        row = dict(zip(by + ["target"], keys)) | {"n_points": len(b)}
        rmse, finite = np.nan, False
        if len(np.unique(b)) >= 2:
            u = 1.0 / b
            p, q = _wls_batch(u, s)
            crit = q / p if p > 0 else np.nan
            lo = hi = np.nan
            note = interval_note(len(np.unique(b)), MIN_POINTS_INTERVAL, "batch sizes")
            if not note and n_boot <= 0:
                note = "no interval: n_boot = 0"
            if not note:
                draw = rng.integers(0, len(b), size=(n_boot, len(b)))
                ub, sb = u[draw], s[draw]
                distinct = (ub.max(axis=1) > ub.min(axis=1))
                pb, qb = _wls_batch(ub[distinct], sb[distinct])
                cb = (qb / pb)[(pb > 0) & np.isfinite(qb)]
                if cb.size:
                    lo, hi = np.quantile(cb, [(1 - ci) / 2, (1 + ci) / 2])
            resid = (s - p - q * u) / s
            rmse, finite = float(np.sqrt(np.mean(resid**2))), bool(np.isfinite(crit))
            row |= {"steps_min": p, "batch_crit": crit, "batch_crit_low": lo, "batch_crit_high": hi,
                    "interval_note": note, "samples_min": p * crit, "rmse_rel": rmse}
        ok, why = fit_verdict(len(np.unique(b)), 2, rmse, MAX_RMSE_REL, unit="(relative)", finite=finite)
        if len(np.unique(b)) >= 2 and not finite:
            why = why.replace("no finite fit", "S_min <= 0: no B_crit")
        rows.append(row | {"fit_ok": ok, "fit_note": why})
    return pd.DataFrame(rows, columns=columns)


def check_critical_batch(trials: pd.DataFrame, curves: pd.DataFrame, *, target: float | None = None,
                         tol: float = 0.2, min_reports: float = 3.0) -> list[Row]:
    """S(B) = S_min (1 + B_crit / B) within ``tol`` at every B, at the deepest default target (rules:
    :mod:`raysweep.analyze.checks`)."""
    trials = ensure_prepared(trials)
    mean = seed_mean_curves(curves, trials)
    given = target
    if target is None:
        targets = default_targets(mean)
        if not targets:
            return [Row("target loss", "none", "curves that go down", "-", FAIL)]
        target = min(targets)
    rows = [info_row("target loss (deepest default target)" if given is None else "target loss (given)", target,
                  measured=f"{target:.3g}")]
    s = steps_to_target(curves, trials, targets=[target], mean_curves=mean)
    batches = np.sort(trials["batch_size"].dropna().unique())
    reached = s[s["reached"]]
    rows.append(row("batch sizes that reach the target", len(reached), f"all {len(batches)}", "-",
                     len(reached) == len(batches), measured=f"{len(reached)}/{len(batches)}"))
    fit = fit_critical_batch(s, n_boot=200)
    if fit.empty or not np.isfinite(fit["batch_crit"].iloc[0]):
        rows.append(Row("fit S_min (1 + B_crit / B)", "no fit", "-", "-", FAIL))
        return rows
    f = fit.iloc[0]
    s_min, b_crit = float(f["steps_min"]), float(f["batch_crit"])
    steps = np.sort(curves["step"].dropna().unique())
    interval = float(np.median(np.diff(steps))) if len(steps) > 1 else math.nan
    quality = dict(rmse_column="rmse_rel", unit="rel")
    ci = (f"90%: {f['batch_crit_low']:.1f}..{f['batch_crit_high']:.1f}" if np.isfinite(f["batch_crit_low"])
          else str(f["interval_note"]))
    rows.append(fit_row("B_crit", b_crit, f"inside [{batches[0]:g}, {batches[-1]:g}]", "-",
                         batches[0] <= b_crit <= batches[-1], f, measured=f"{b_crit:.1f} ({ci})", **quality))
    rows.append(fit_row("S_min (steps)", s_min, f">= {min_reports:g} report intervals ({min_reports * interval:g})",
                         "-", s_min >= min_reports * interval, f, measured=f"{s_min:.1f}", **quality))
    for _, r in reached.sort_values("batch_size").iterrows():
        pred = s_min * (1 + b_crit / r["batch_size"])
        rel = r["steps"] / pred - 1
        rows.append(row(f"S(B={r['batch_size']:g}) / fit - 1", rel, f"0 (S={r['steps']:.1f}, fit {pred:.1f})",
                         f"+-{tol}", abs(rel) <= tol))
    return rows
