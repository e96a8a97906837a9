"""The optimal learning rate eta* and the stability edge, along any axis x (batch size, width, gamma).

Seed averaging. A *config* is one point of the grid (group columns, x, eta); its seeds are averaged. A config is
*masked* when any of its seeds diverged (or none has a finite loss): it never enters eta*, and plots show it as
diverged, never as a finite loss.

eta*(x): the argmin over the eta grid of the seed-mean final loss, refined by the vertex of the parabola in log2 eta
through the minimum and its two grid neighbours. When a neighbour is missing (grid edge) or masked (diverged), the
grid value is kept and ``edge`` says why (``grid_low``, ``grid_high``, ``diverged``); ``at_edge`` is then True.
The confidence interval comes from a seeded bootstrap over seeds (seeds are resampled jointly across etas, since a
seed fixes init and data order for every eta).

eta_max(x): the largest eta with no diverged seed. Past the stability edge many ReLU nets die (flat loss near the
zero-predictor level) instead of blowing up, so a large eta can look "stable"; ``eta_diverge_min``, the smallest eta
where any seed diverged, is the edge to trust. ``non_monotone`` flags groups where eta_max > eta_diverge_min.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raysweep.analyze.load import ensure_prepared, group_columns

EDGE_GRID_LOW, EDGE_GRID_HIGH, EDGE_DIVERGED = "grid_low", "grid_high", "diverged"


def _groups(trials: pd.DataFrame, by: list[str]):
    """(keys tuple, sub-frame) pairs in sorted order; nulls in group columns form their own group."""
    if not by:
        yield (), trials
        return
    for keys, sub in trials.groupby(by, dropna=False, sort=True):
        yield (keys if isinstance(keys, tuple) else (keys,)), sub


def eta_matrix(sub: pd.DataFrame):
    """One (group, x) slice as arrays: ``etas`` (sorted), ``losses`` (n_eta, n_seed; NaN where missing or not
    usable), ``masked`` (n_eta,: any seed diverged, or no finite seed)."""
    etas, eta_idx = np.unique(sub["eta"].to_numpy(dtype=float), return_inverse=True)
    seeds, seed_idx = np.unique(sub["seed"].to_numpy(dtype=float), return_inverse=True)
    losses = np.full((len(etas), len(seeds)), np.nan)
    losses[eta_idx, seed_idx] = sub["final_loss"].to_numpy(dtype=float)
    any_div = np.zeros(len(etas), dtype=bool)
    np.logical_or.at(any_div, eta_idx, sub["diverged"].to_numpy(dtype=bool))
    masked = any_div | ~np.isfinite(losses).any(axis=1)
    return etas, losses, masked


def config_table(trials: pd.DataFrame, x: str = "batch_size") -> pd.DataFrame:
    """One row per config (group columns, ``x``, ``eta``): ``n_seeds``, ``n_finite``, ``n_diverged``, ``loss_mean``
    and ``loss_std`` over the finite seeds, and ``masked`` (any seed diverged or none finite; ``loss_mean`` is NaN
    then). Rows with a null ``x`` or ``eta`` are dropped."""
    trials = ensure_prepared(trials)
    by = group_columns(trials, exclude=(x, "eta"))
    t = trials.dropna(subset=[x, "eta"])
    keys = by + [x, "eta"]
    if t.empty:
        return pd.DataFrame(columns=keys + ["n_seeds", "n_finite", "n_diverged", "loss_mean", "loss_std", "masked"])
    g = t.groupby(keys, dropna=False, sort=True)
    out = g.agg(
        n_seeds=("seed", "size"),
        n_finite=("final_loss", "count"),
        n_diverged=("diverged", "sum"),
        loss_mean=("final_loss", "mean"),
        loss_std=("final_loss", "std"),
    ).reset_index()
    out["n_diverged"] = out["n_diverged"].astype(int)
    out["masked"] = (out["n_diverged"] > 0) | (out["n_finite"] == 0)
    out.loc[out["masked"], "loss_mean"] = np.nan
    return out


def argmin_refine(log_eta: np.ndarray, means: np.ndarray):
    """Vectorised eta* over rows of ``means`` (n_rows, n_eta; NaN = masked) on the grid ``log_eta`` (sorted).

    Returns ``(log_eta_star, index, edge)``: the parabola vertex in log2 eta through the grid minimum and its two
    neighbours (clipped to their span), or the grid value when a neighbour is missing/masked; ``index`` is the grid
    argmin (-1 when the row has no finite value); ``edge`` is "" or one of the ``EDGE_*`` codes."""
    means = np.atleast_2d(means)
    n_rows, n = means.shape
    finite = np.isfinite(means)
    has = finite.any(axis=1)
    idx = np.argmin(np.where(finite, means, np.inf), axis=1)
    out = np.where(has, log_eta[idx], np.nan)
    edge = np.full(n_rows, "", dtype=object)
    lo, hi = idx - 1, idx + 1
    edge[has & (lo < 0)] = EDGE_GRID_LOW
    edge[has & (hi >= n)] = EDGE_GRID_HIGH
    lo_c, hi_c = np.clip(lo, 0, n - 1), np.clip(hi, 0, n - 1)
    rows = np.arange(n_rows)
    interior = has & (lo >= 0) & (hi < n)
    bad_nb = interior & ~(finite[rows, lo_c] & finite[rows, hi_c])
    edge[bad_nb] = EDGE_DIVERGED
    ok = interior & ~bad_nb
    if ok.any():
        x0, x1, x2 = log_eta[lo_c[ok]], log_eta[idx[ok]], log_eta[hi_c[ok]]
        y0, y1, y2 = means[rows[ok], lo_c[ok]], means[rows[ok], idx[ok]], means[rows[ok], hi_c[ok]]
        # Vertex of the parabola through three points with arbitrary spacing.
        d0, d2 = (y0 - y1) / (x0 - x1), (y2 - y1) / (x2 - x1)
        curv = (d2 - d0) / (x2 - x0)
        with np.errstate(divide="ignore", invalid="ignore"):
            # Newton form p(x) = y1 + d0 (x - x1) + curv (x - x1)(x - x0)  ->  p'(x) = d0 + curv (2x - x1 - x0) = 0
            vertex = 0.5 * (x0 + x1) - d0 / (2 * curv)
        vertex = np.where(np.isfinite(vertex) & (curv > 0), np.clip(vertex, x0, x2), x1)
        out[ok] = vertex
    return out, np.where(has, idx, -1), edge


def optimal_eta(trials: pd.DataFrame, x: str = "batch_size", *, n_boot: int = 200, ci: float = 0.9,
                seed: int = 0) -> pd.DataFrame:
    """eta*(x) per group (group columns: :func:`group_columns` minus ``x`` and ``eta``); rules in the module
    docstring. One row per (group, x), also where no eta is usable: ``eta_star`` is NaN there and
    ``all_diverged`` says whether every trial diverged.

    Columns: group columns, ``x``, ``eta_star``, ``log2_eta_star``, ``eta_star_low`` / ``eta_star_high`` (bootstrap
    ``ci`` interval over seeds, ``n_boot`` draws, generator seeded with ``seed``), ``eta_grid_best``, ``loss_star``
    (seed-mean loss at the grid argmin), ``edge``, ``at_edge``, ``n_eta``, ``n_eta_stable``, ``n_seeds``,
    ``n_trials``, ``n_diverged``, ``all_diverged``."""
    trials = ensure_prepared(trials)
    by = group_columns(trials, exclude=(x, "eta"))
    t = trials.dropna(subset=[x, "eta"])
    rng = np.random.default_rng(seed)
    rows = []
    for keys, sub in _groups(t, by + [x]):
        etas, losses, masked = eta_matrix(sub)
        log_eta = np.log2(etas)
        finite = np.isfinite(losses)
        count = finite.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(finite, losses, 0.0).sum(axis=1) / count
        means[masked] = np.nan
        star, idx, edge = argmin_refine(log_eta, means[None, :])
        lo = hi = np.nan
        n_seed = losses.shape[1]
        if idx[0] >= 0 and n_boot > 0 and n_seed > 1:
            draw = rng.integers(0, n_seed, size=(n_boot, n_seed))
            sample = losses[:, draw]  # (n_eta, n_boot, n_seed)
            fin = np.isfinite(sample)
            with np.errstate(invalid="ignore", divide="ignore"):
                boot = (np.where(fin, sample, 0.0).sum(axis=2) / fin.sum(axis=2)).T
            boot[:, masked] = np.nan
            boot_star, _, _ = argmin_refine(log_eta, boot)
            boot_star = boot_star[np.isfinite(boot_star)]
            if boot_star.size:
                lo, hi = np.quantile(boot_star, [(1 - ci) / 2, (1 + ci) / 2])
        elif idx[0] >= 0:
            lo = hi = star[0]
        diverged = sub["diverged"].to_numpy(dtype=bool)
        rows.append(
            dict(zip(by + [x], keys))
            | {
                "eta_star": 2.0 ** star[0],
                "log2_eta_star": star[0],
                "eta_star_low": 2.0**lo,
                "eta_star_high": 2.0**hi,
                "eta_grid_best": etas[idx[0]] if idx[0] >= 0 else np.nan,
                "loss_star": means[idx[0]] if idx[0] >= 0 else np.nan,
                "edge": edge[0],
                "at_edge": bool(edge[0]),
                "n_eta": len(etas),
                "n_eta_stable": int((~masked).sum()),
                "n_seeds": n_seed,
                "n_trials": len(sub),
                "n_diverged": int(diverged.sum()),
                "all_diverged": bool(diverged.all()),
            }
        )
    columns = by + [x, "eta_star", "log2_eta_star", "eta_star_low", "eta_star_high", "eta_grid_best", "loss_star",
                    "edge", "at_edge", "n_eta", "n_eta_stable", "n_seeds", "n_trials", "n_diverged", "all_diverged"]
    return pd.DataFrame(rows, columns=columns)


def eta_max(trials: pd.DataFrame, x: str = "batch_size") -> pd.DataFrame:
    """The stability edge per (group, x): ``eta_max`` (largest eta with no diverged seed; NaN if every eta had a
    diverged seed), ``eta_diverge_min`` (smallest eta where any seed diverged; NaN if none did), ``non_monotone``
    (eta_max > eta_diverge_min: a larger eta survived although a smaller one diverged, typically dead ReLUs),
    ``n_eta``, ``n_eta_diverged``."""
    trials = ensure_prepared(trials)
    by = group_columns(trials, exclude=(x, "eta"))
    t = trials.dropna(subset=[x, "eta"])
    columns = by + [x, "eta_max", "eta_diverge_min", "non_monotone", "n_eta", "n_eta_diverged"]
    if t.empty:
        return pd.DataFrame(columns=columns)
    per_eta = t.groupby(by + [x, "eta"], dropna=False, sort=True)["diverged"].any().reset_index()
    stable = per_eta[~per_eta["diverged"]].groupby(by + [x], dropna=False)["eta"].max().rename("eta_max")
    edge = per_eta[per_eta["diverged"]].groupby(by + [x], dropna=False)["eta"].min().rename("eta_diverge_min")
    counts = per_eta.groupby(by + [x], dropna=False).agg(
        n_eta=("eta", "size"), n_eta_diverged=("diverged", "sum")
    )
    out = counts.join(stable).join(edge).reset_index()
    out["non_monotone"] = (out["eta_max"] > out["eta_diverge_min"]).fillna(False).astype(bool)
    out["n_eta_diverged"] = out["n_eta_diverged"].astype(int)
    return out[columns]


def fit_line(xs: np.ndarray, ys: np.ndarray):
    """Ordinary least squares ``y = a + b x``: ``(b, a, standard error of b)``; NaNs with fewer than 2 distinct x."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if len(np.unique(xs)) < 2:
        return np.nan, np.nan, np.nan
    xm, ym = xs.mean(), ys.mean()
    sxx = ((xs - xm) ** 2).sum()
    b = ((xs - xm) * (ys - ym)).sum() / sxx
    a = ym - b * xm
    dof = len(xs) - 2
    se = np.sqrt(((ys - a - b * xs) ** 2).sum() / dof / sxx) if dof > 0 else np.nan
    return float(b), float(a), float(se)


def _broken_fit(lx: np.ndarray, ly: np.ndarray):
    """Least squares of ``ly = a + alpha * min(lx, x0)`` over x0 on the grid ``lx`` (at least 2 points at or below
    x0). Returns ``(alpha, a, x0, rss)``."""
    best = (np.nan, np.nan, np.nan, np.inf)
    for x0 in np.unique(lx):
        if (lx <= x0).sum() < 2:
            continue
        design = np.column_stack([np.ones_like(lx), np.minimum(lx, x0)])
        coef, *_ = np.linalg.lstsq(design, ly, rcond=None)
        rss = float(((design @ coef - ly) ** 2).sum())
        if rss < best[3] - 1e-12:
            best = (float(coef[1]), float(coef[0]), float(x0), rss)
    return best


def fit_eta_power_law(table: pd.DataFrame, x: str = "batch_size") -> pd.DataFrame:
    """Broken power law of eta* in ``x`` per group: ``eta* = c x^alpha`` for ``x <= x0`` and ``c x0^alpha`` above,
    fitted in log2-log2 by least squares with x0 chosen on the grid (continuous at x0).

    ``table`` is an :func:`optimal_eta` table (or trials, from which it is computed). Points at the grid edge of the
    eta sweep (``grid_low``/``grid_high``: the true optimum lies outside the grid) are left out; points whose
    neighbour diverged are kept (the optimum sits at the stability edge, typical of the saturated regime).

    Columns: group columns, ``n_points``, ``slope`` (alpha of the broken fit), ``slope_small`` (plain log-log slope
    on the points at or below x0), ``c``, ``<x>_saturation`` (x0), ``eta_saturation`` (c x0^alpha), ``saturated``
    (x0 below the largest x), ``rmse_octaves``."""
    if "log2_eta_star" not in table.columns:
        table = optimal_eta(table, x=x)
    by = group_columns(table, exclude=(x, "eta"))
    sat = f"{x}_saturation"
    columns = by + ["n_points", "slope", "slope_small", "c", sat, "eta_saturation", "saturated", "rmse_octaves"]
    rows = []
    for keys, sub in _groups(table, by):
        keep = np.isfinite(sub["log2_eta_star"].to_numpy(float)) & ~sub["edge"].isin(
            [EDGE_GRID_LOW, EDGE_GRID_HIGH]).to_numpy()
        sub = sub[keep & (sub[x].to_numpy(float) > 0)]
        lx, ly = np.log2(sub[x].to_numpy(float)), sub["log2_eta_star"].to_numpy(float)
        row = dict(zip(by, keys)) | {"n_points": len(lx)}
        if len(np.unique(lx)) >= 2:
            alpha, a, x0, rss = _broken_fit(lx, ly)
            small = lx <= x0
            row |= {
                "slope": alpha,
                "slope_small": fit_line(lx[small], ly[small])[0],
                "c": 2.0**a,
                sat: 2.0**x0,
                "eta_saturation": 2.0 ** (a + alpha * x0),
                "saturated": bool(x0 < lx.max()),
                "rmse_octaves": float(np.sqrt(rss / len(lx))),
            }
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def all_diverged(trials: pd.DataFrame) -> pd.DataFrame:
    """Groups (every configuration column but eta; seeds pooled) in which every trial diverged, so that no eta*
    exists there: reported rather than dropped. Columns: group columns, ``n_trials``, ``n_eta``, ``eta_min`` and
    ``eta_max_tried`` (the eta range tried: lower the grid below ``eta_min``), ``statuses``."""
    trials = ensure_prepared(trials)
    by = group_columns(trials, exclude=("eta",))
    columns = by + ["n_trials", "n_eta", "eta_min", "eta_max_tried", "statuses"]
    if trials.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for keys, sub in _groups(trials, by):
        if len(sub) and sub["diverged"].all():
            rows.append(dict(zip(by, keys)) | {
                "n_trials": len(sub), "n_eta": int(sub["eta"].nunique()), "eta_min": sub["eta"].min(),
                "eta_max_tried": sub["eta"].max(), "statuses": ",".join(sorted(set(sub["status"].astype(str)))),
            })
    return pd.DataFrame(rows, columns=columns)
