"""Steps to a target loss, S(B), and the critical batch size B_crit (McCandlish et al. 2018).

S(B, eta): the first step at which the seed-mean loss curve of config (B, eta) is at or below the target, linearly
interpolated between the two reports that bracket the crossing (the first report when it already is). The curve is
the eval loss when the curves table has any eval loss, else the train loss; reports with a null value are skipped
(eval is often reported less often than train). Configs with a diverged seed are masked (never used); pruned trials
are left out of the mean.

S(B) = min over eta of S(B, eta): the steps at the best learning rate for that batch size (``eta_best``).

Fit: S = S_min (1 + B_crit / B), i.e. S = p + q / B with S_min = p and B_crit = q / p, by linear least squares in
1/B weighted by 1/S^2 (relative residuals: the noise on a step count is multiplicative, and unweighted least squares
would let the slow small-batch points dominate). The interval on B_crit is a seeded pairs bootstrap over the B
points. ``samples_min`` = S_min * B_crit is the fewest samples any batch size needs (E_min).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raysweep.analyze.load import ensure_prepared, group_columns
from raysweep.analyze.optimum import _groups


def curve_metric(curves: pd.DataFrame) -> str:
    """``"eval_loss"`` when the curves have any eval loss, else ``"train_loss"``."""
    if "eval_loss" in curves.columns and pd.to_numeric(curves["eval_loss"], errors="coerce").notna().any():
        return "eval_loss"
    return "train_loss"


def seed_mean_curves(curves: pd.DataFrame, trials: pd.DataFrame, x: str = "batch_size",
                     metric: str = "auto") -> pd.DataFrame:
    """One row per (config, step) with ``curve_loss`` = the mean over the config's usable seeds of ``metric``, for configs
    (group columns, ``x``, ``eta``) without a diverged seed. Sorted by config then step; also has ``n_seeds``."""
    trials = ensure_prepared(trials)
    metric = curve_metric(curves) if metric == "auto" else metric
    by = group_columns(trials, exclude=(x, "eta"))
    keys = by + [x, "eta"]
    empty = pd.DataFrame(columns=keys + ["step", "curve_loss", "n_seeds"])
    t = trials.dropna(subset=[x, "eta"])
    if t.empty or curves.empty:
        return empty
    # Number the configs on the (small) trials table, then average the (large) curves table on two integer keys.
    config = t.groupby(keys, dropna=False, sort=True).ngroup().to_numpy()
    bad = np.zeros(config.max() + 1, dtype=bool)
    np.logical_or.at(bad, config, t["diverged"].to_numpy(bool))
    keep = t["usable"].to_numpy(bool) & ~bad[config]
    ids = pd.DataFrame({"config_key": t["config_key"].to_numpy()[keep], "_config": config[keep]})
    c = curves[["config_key", "step", metric]].dropna(subset=[metric, "step"])
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
    metric = curve_metric(curves) if metric == "auto" else metric
    mean = seed_mean_curves(curves, trials, x=x, metric=metric) if mean_curves is None else mean_curves
    by = group_columns(trials, exclude=(x, "eta"))
    columns = by + [x, "target", "steps", "eta_best", "samples", "reached", "n_eta", "metric"]
    rows = []
    for gkeys, gsub in _groups(mean, by):
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
    docstring). Needs 2 distinct B with a reached target (3 for an interval); B_crit is NaN when S_min <= 0.

    Columns: group columns, ``target``, ``n_points``, ``steps_min``, ``batch_crit``, ``batch_crit_low``,
    ``batch_crit_high``, ``samples_min``, ``rmse_rel`` (root-mean-square relative residual)."""
    by = group_columns(table, exclude=(x, "eta"))
    columns = by + ["target", "n_points", "steps_min", "batch_crit", "batch_crit_low", "batch_crit_high",
                    "samples_min", "rmse_rel"]
    rng = np.random.default_rng(seed)
    rows = []
    t = table[table["reached"].astype(bool)] if len(table) else table
    for keys, sub in _groups(t, by + ["target"]):
        sub = sub[sub[x].to_numpy(float) > 0]
        b, s = sub[x].to_numpy(float), sub["steps"].to_numpy(float)
        row = dict(zip(by + ["target"], keys)) | {"n_points": len(b)}
        if len(np.unique(b)) >= 2:
            u = 1.0 / b
            p, q = _wls_batch(u, s)
            crit = q / p if p > 0 else np.nan
            lo = hi = np.nan
            if len(np.unique(b)) >= 3 and n_boot > 0:
                draw = rng.integers(0, len(b), size=(n_boot, len(b)))
                ub, sb = u[draw], s[draw]
                distinct = (ub.max(axis=1) > ub.min(axis=1))
                pb, qb = _wls_batch(ub[distinct], sb[distinct])
                cb = (qb / pb)[(pb > 0) & np.isfinite(qb)]
                if cb.size:
                    lo, hi = np.quantile(cb, [(1 - ci) / 2, (1 + ci) / 2])
            resid = (s - p - q * u) / s
            row |= {"steps_min": p, "batch_crit": crit, "batch_crit_low": lo, "batch_crit_high": hi,
                    "samples_min": p * crit, "rmse_rel": float(np.sqrt(np.mean(resid**2)))}
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)
