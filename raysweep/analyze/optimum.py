"""The optimal learning rate eta* and the stability edge, along any axis x (batch size, width, gamma).

Seed averaging. A *config* is one point of the grid (group columns, x, eta); its seeds are averaged. A config is
*masked* when any of its seeds is unstable (diverged, or dead: see :mod:`raysweep.analyze.load`) or none has a
finite metric: it never enters eta*, and plots show it as diverged or dead, never as a finite loss. Failed trials
are missing data: they mask nothing, and a seed that failed is simply absent from the mean.

eta*(x): the argmin over the eta grid of the seed-mean final metric, refined by the vertex of the parabola in log2
eta through the minimum and its two grid neighbours. When a neighbour is absent (grid edge) or masked, the grid value
is kept and ``edge`` says why (``grid_low``, ``grid_high``; ``diverged`` or ``dead``: the neighbour has an unstable
seed; ``missing``: it has no finite value, e.g. every seed failed); ``at_edge`` is then True. The confidence interval
comes from a seeded bootstrap over seeds (seeds are resampled jointly across etas, since a seed fixes init and data
order for every eta), and only with at least :data:`~raysweep.analyze.quality.MIN_SEEDS_INTERVAL` seeds.

eta_max(x): the largest eta with no unstable seed (and a usable one). Past the stability edge many ReLU nets die
(flat loss at the zero-predictor level, which under cross-entropy is the initial loss, so no divergence threshold
fires) instead of blowing up; the trainer flags them dead, and ``eta_diverge_min``, the smallest eta where any seed
diverged *or died*, is the edge to trust (``eta_blowup_min`` and ``eta_dead_min`` split it). ``non_monotone`` flags
groups where eta_max > eta_diverge_min.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raysweep.analyze.load import ensure_prepared, group_columns, metric_of
from raysweep.analyze.quality import (
    MAX_RMSE_OCTAVES,
    MIN_SEEDS_INTERVAL,
    fit_verdict,
    interval_note,
)

EDGE_GRID_LOW, EDGE_GRID_HIGH, EDGE_DIVERGED = "grid_low", "grid_high", "diverged"
EDGE_DEAD, EDGE_MISSING = "dead", "missing"


def iter_groups(trials: pd.DataFrame, by: list[str]):
    """(keys tuple, sub-frame) pairs in sorted order; nulls in group columns form their own group."""
    if not by:
        yield (), trials
        return
    for keys, sub in trials.groupby(by, dropna=False, sort=True):
        yield (keys if isinstance(keys, tuple) else (keys,)), sub


def eta_matrix(sub: pd.DataFrame):
    """One (group, x) slice as arrays: ``etas`` (sorted), ``losses`` (n_eta, n_seed; NaN where missing or not
    usable), ``masked`` (n_eta,: any seed unstable, or no finite seed) and ``reason`` (n_eta,: why a masked eta is
    masked, one of ``diverged``, ``dead``, ``missing``; "" where not masked)."""
    etas, eta_idx = np.unique(sub["eta"].to_numpy(dtype=float), return_inverse=True)
    seeds, seed_idx = np.unique(sub["seed"].to_numpy(dtype=float), return_inverse=True)
    losses = np.full((len(etas), len(seeds)), np.nan)
    losses[eta_idx, seed_idx] = sub["final_loss"].to_numpy(dtype=float)
    any_div, any_dead = np.zeros(len(etas), dtype=bool), np.zeros(len(etas), dtype=bool)
    np.logical_or.at(any_div, eta_idx, sub["diverged"].to_numpy(dtype=bool))
    np.logical_or.at(any_dead, eta_idx, sub["dead"].to_numpy(dtype=bool))
    empty = ~np.isfinite(losses).any(axis=1)
    masked = any_div | any_dead | empty
    reason = np.where(any_div, EDGE_DIVERGED, np.where(any_dead, EDGE_DEAD, np.where(empty, EDGE_MISSING, "")))
    return etas, losses, masked, reason.astype(object)


def config_table(trials: pd.DataFrame, x: str = "batch_size", *, metric: str | None = None) -> pd.DataFrame:
    """One row per config (group columns, ``x``, ``eta``): ``n_seeds``, ``n_finite``, ``n_diverged``, ``n_dead``,
    ``n_failed``, ``loss_mean`` and ``loss_std`` of the metric over the finite seeds, ``masked`` (any seed diverged
    or died, or none finite; ``loss_mean`` is NaN then) and ``metric``. Rows with a null ``x`` or ``eta`` are
    dropped."""
    trials = ensure_prepared(trials, metric)
    by = group_columns(trials, exclude=(x, "eta"))
    t = trials.dropna(subset=[x, "eta"])
    keys = by + [x, "eta"]
    counts = ["n_seeds", "n_finite", "n_diverged", "n_dead", "n_failed"]
    if t.empty:
        return pd.DataFrame(columns=keys + counts + ["loss_mean", "loss_std", "masked", "metric"])
    g = t.groupby(keys, dropna=False, sort=True)
    out = g.agg(
        n_seeds=("seed", "size"),
        n_finite=("final_loss", "count"),
        n_diverged=("diverged", "sum"),
        n_dead=("dead", "sum"),
        n_failed=("failed", "sum"),
        loss_mean=("final_loss", "mean"),
        loss_std=("final_loss", "std"),
    ).reset_index()
    for c in counts[2:]:
        out[c] = out[c].astype(int)
    out["masked"] = (out["n_diverged"] > 0) | (out["n_dead"] > 0) | (out["n_finite"] == 0)
    out.loc[out["masked"], "loss_mean"] = np.nan
    out["metric"] = metric_of(trials)
    return out


def argmin_refine(log_eta: np.ndarray, means: np.ndarray, reason=None):
    """Vectorised eta* over rows of ``means`` (n_rows, n_eta; NaN = masked) on the grid ``log_eta`` (sorted).

    Returns ``(log_eta_star, index, edge)``: the parabola vertex in log2 eta through the grid minimum and its two
    neighbours (clipped to their span), or the grid value when a neighbour is missing/masked; ``index`` is the grid
    argmin (-1 when the row has no finite value); ``edge`` is "" or one of the ``EDGE_*`` codes. ``reason``
    (n_eta,: why each masked eta is masked, as :func:`eta_matrix` gives it) names a masked neighbour's edge code;
    without it a masked neighbour reads ``diverged``."""
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
    if reason is not None and bad_nb.any():
        reason = np.asarray(reason, dtype=object)
        # the masked neighbour's reason; when both are masked, the stronger one (diverged > dead > missing)
        low_bad = ~finite[rows, lo_c]
        first = np.where(low_bad, reason[lo_c], reason[hi_c])
        other = np.where(low_bad & ~finite[rows, hi_c], reason[hi_c], first)
        rank = {EDGE_DIVERGED: 0, EDGE_DEAD: 1, EDGE_MISSING: 2, "": 3}
        pick = np.array([a if rank.get(a, 3) <= rank.get(b, 3) else b for a, b in zip(first, other)], dtype=object)
        pick[pick == ""] = EDGE_MISSING  # a neighbour with NaN and no reason (bootstrap draw): no data
        edge[bad_nb] = pick[bad_nb]
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
                seed: int = 0, metric: str | None = None) -> pd.DataFrame:
    """eta*(x) per group (group columns: :func:`group_columns` minus ``x`` and ``eta``) of ``metric`` (default: the
    one the trials were prepared for, else eval_loss); rules in the module docstring. One row per (group, x), also
    where no eta is usable: ``eta_star`` is NaN there, and ``all_diverged`` (every trial that ran diverged or died)
    or ``all_failed`` (every trial failed: no data, no edge) says why.

    Columns: group columns, ``x``, ``eta_star``, ``log2_eta_star``, ``eta_star_low`` / ``eta_star_high`` (bootstrap
    ``ci`` interval over seeds, ``n_boot`` draws, generator seeded with ``seed``; NaN below
    :data:`~raysweep.analyze.quality.MIN_SEEDS_INTERVAL` seeds with a usable value, ``interval_note`` says so),
    ``interval_note``, ``eta_grid_best``, ``loss_star`` (seed-mean metric at the grid argmin), ``edge``,
    ``at_edge``, ``n_eta``, ``n_eta_stable``, ``n_seeds``, ``n_trials``, ``n_diverged``, ``n_dead``, ``n_failed``,
    ``all_diverged``, ``all_failed``, ``metric``."""
    trials = ensure_prepared(trials, metric)
    by = group_columns(trials, exclude=(x, "eta"))
    t = trials.dropna(subset=[x, "eta"])
    rng = np.random.default_rng(seed)
    rows = []
    for keys, sub in iter_groups(t, by + [x]):
        etas, losses, masked, reason = eta_matrix(sub)
        log_eta = np.log2(etas)
        finite = np.isfinite(losses)
        count = finite.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(finite, losses, 0.0).sum(axis=1) / count
        means[masked] = np.nan
        star, idx, edge = argmin_refine(log_eta, means[None, :], reason)
        lo = hi = np.nan
        usable_seeds = finite.any(axis=0)
        n_usable = int(usable_seeds.sum())
        note = interval_note(n_usable, MIN_SEEDS_INTERVAL) if idx[0] >= 0 else ""
        if idx[0] >= 0 and n_boot > 0 and not note:
            kept = losses[:, usable_seeds]  # seeds with no usable value (all failed, pruned) are not resampled
            draw = rng.integers(0, n_usable, size=(n_boot, n_usable))
            sample = kept[:, draw]  # (n_eta, n_boot, n_seed)
            fin = np.isfinite(sample)
            with np.errstate(invalid="ignore", divide="ignore"):
                boot = (np.where(fin, sample, 0.0).sum(axis=2) / fin.sum(axis=2)).T
            boot[:, masked] = np.nan
            boot_star, _, _ = argmin_refine(log_eta, boot)
            boot_star = boot_star[np.isfinite(boot_star)]
            if boot_star.size:
                lo, hi = np.quantile(boot_star, [(1 - ci) / 2, (1 + ci) / 2])
        elif idx[0] >= 0 and n_boot <= 0:
            note = "no interval: n_boot = 0"
        unstable, failed = sub["unstable"].to_numpy(dtype=bool), sub["failed"].to_numpy(dtype=bool)
        ran = ~failed
        rows.append(
            dict(zip(by + [x], keys))
            | {
                "eta_star": 2.0 ** star[0],
                "log2_eta_star": star[0],
                "eta_star_low": 2.0**lo,
                "eta_star_high": 2.0**hi,
                "interval_note": note,
                "eta_grid_best": etas[idx[0]] if idx[0] >= 0 else np.nan,
                "loss_star": means[idx[0]] if idx[0] >= 0 else np.nan,
                "edge": edge[0],
                "at_edge": bool(edge[0]),
                "n_eta": len(etas),
                "n_eta_stable": int((~masked).sum()),
                "n_seeds": losses.shape[1],
                "n_trials": len(sub),
                "n_diverged": int(sub["diverged"].sum()),
                "n_dead": int(sub["dead"].sum()),
                "n_failed": int(failed.sum()),
                "all_diverged": bool(ran.any() and unstable[ran].all()),
                "all_failed": bool(failed.all()),
            }
        )
    columns = by + [x, "eta_star", "log2_eta_star", "eta_star_low", "eta_star_high", "interval_note",
                    "eta_grid_best", "loss_star", "edge", "at_edge", "n_eta", "n_eta_stable", "n_seeds", "n_trials",
                    "n_diverged", "n_dead", "n_failed", "all_diverged", "all_failed"]
    out = pd.DataFrame(rows, columns=columns)
    out["metric"] = metric_of(trials)
    return out


def eta_max(trials: pd.DataFrame, x: str = "batch_size") -> pd.DataFrame:
    """The stability edge per (group, x), seeds pooled ("any seed"): ``eta_max`` (largest eta with a usable seed
    and none diverged or dead; NaN if there is none), ``eta_diverge_min`` (smallest eta where any seed diverged or
    died: the edge; NaN if none did), ``eta_blowup_min`` (smallest eta where any seed diverged: NaN/Inf or past the
    divergence threshold), ``eta_dead_min`` (smallest eta where any seed died), ``non_monotone`` (eta_max >
    eta_diverge_min: a larger eta survived although a smaller one did not), ``n_eta``, ``n_eta_diverged`` (etas with
    a seed that diverged or died), ``n_eta_dead``, ``n_eta_failed`` (etas where every trial failed: missing data,
    never an edge) and ``all_failed``. Failed trials count nowhere else."""
    trials = ensure_prepared(trials)
    by = group_columns(trials, exclude=(x, "eta"))
    t = trials.dropna(subset=[x, "eta"])
    columns = by + [x, "eta_max", "eta_diverge_min", "eta_blowup_min", "eta_dead_min", "non_monotone", "n_eta",
                    "n_eta_diverged", "n_eta_dead", "n_eta_failed", "all_failed"]
    if t.empty:
        return pd.DataFrame(columns=columns)
    keys = by + [x]
    per_eta = t.assign(_ok=t["usable"], _ran=~t["failed"]).groupby(keys + ["eta"], dropna=False, sort=True).agg(
        unstable=("unstable", "any"), diverged=("diverged", "any"), dead=("dead", "any"), ok=("_ok", "any"),
        ran=("_ran", "any")).reset_index()

    def smallest(mask, name):
        return per_eta[mask].groupby(keys, dropna=False)["eta"].min().rename(name)

    stable = per_eta[~per_eta["unstable"] & per_eta["ok"]].groupby(keys, dropna=False)["eta"].max().rename("eta_max")
    counts = per_eta.assign(failed_eta=~per_eta["ran"]).groupby(keys, dropna=False).agg(
        n_eta=("eta", "size"), n_eta_diverged=("unstable", "sum"), n_eta_dead=("dead", "sum"),
        n_eta_failed=("failed_eta", "sum"))
    out = (counts.join(stable).join(smallest(per_eta["unstable"], "eta_diverge_min"))
           .join(smallest(per_eta["diverged"], "eta_blowup_min")).join(smallest(per_eta["dead"], "eta_dead_min"))
           .reset_index())
    out["non_monotone"] = (out["eta_max"] > out["eta_diverge_min"]).fillna(False).astype(bool)
    for c in ("n_eta_diverged", "n_eta_dead", "n_eta_failed"):
        out[c] = out[c].astype(int)
    out["all_failed"] = out["n_eta_failed"] == out["n_eta"]
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
    neighbour is masked (diverged, dead or missing) are kept (the optimum sits at the stability edge, typical of the
    saturated regime).

    Quality (:mod:`raysweep.analyze.quality`): 3 parameters (c, alpha, x0), so ``fit_ok`` needs 4 points and an
    ``rmse_octaves`` of at most ``MAX_RMSE_OCTAVES``; otherwise ``fit_ok`` is False and ``fit_note`` says why (a
    non-monotone eta*(B) is not "saturated": its rmse flags it).

    Columns: group columns, ``n_points``, ``slope`` (alpha of the broken fit), ``slope_small`` (plain log-log slope
    on the points at or below x0), ``c``, ``<x>_saturation`` (x0), ``eta_saturation`` (c x0^alpha), ``saturated``
    (x0 below the largest x), ``rmse_octaves``, ``fit_ok``, ``fit_note``."""
    if "log2_eta_star" not in table.columns:
        table = optimal_eta(table, x=x)
    by = group_columns(table, exclude=(x, "eta"))
    sat = f"{x}_saturation"
    columns = by + ["n_points", "slope", "slope_small", "c", sat, "eta_saturation", "saturated", "rmse_octaves",
                    "fit_ok", "fit_note"]
    rows = []
    for keys, sub in iter_groups(table, by):
        lx, ly = eta_star_points(sub, x)
        row = dict(zip(by, keys)) | {"n_points": len(lx)}
        rmse = np.nan
        if len(np.unique(lx)) >= 2:
            alpha, a, x0, rss = _broken_fit(lx, ly)
            small = lx <= x0
            rmse = float(np.sqrt(rss / len(lx)))
            row |= {
                "slope": alpha,
                "slope_small": fit_line(lx[small], ly[small])[0],
                "c": 2.0**a,
                sat: 2.0**x0,
                "eta_saturation": 2.0 ** (a + alpha * x0),
                "saturated": bool(x0 < lx.max()),
                "rmse_octaves": rmse,
            }
        ok, note = fit_verdict(len(lx), 3, rmse, MAX_RMSE_OCTAVES, finite=np.isfinite(row.get("slope", np.nan)))
        rows.append(row | {"fit_ok": ok, "fit_note": note})
    return pd.DataFrame(rows, columns=columns)


def eta_star_points(eta_star: pd.DataFrame, x: str) -> tuple[np.ndarray, np.ndarray]:
    """``(log2 x, log2 eta*)`` of a group's rows that a fit of eta*(x) may use: eta* finite and inside the eta grid
    (not at its edge), x > 0."""
    keep = np.isfinite(eta_star["log2_eta_star"].to_numpy(float)) & ~eta_star["edge"].isin(
        [EDGE_GRID_LOW, EDGE_GRID_HIGH]).to_numpy()
    sub = eta_star[keep & (eta_star[x].to_numpy(float) > 0)]
    return np.log2(sub[x].to_numpy(float)), sub["log2_eta_star"].to_numpy(float)


def all_diverged(trials: pd.DataFrame) -> pd.DataFrame:
    """Groups (every configuration column but eta; seeds pooled) in which every trial that ran diverged or died
    (failed trials did not run: they are missing data), so that no eta* exists there: reported rather than dropped.
    Columns: group columns, ``n_trials``, ``n_diverged``, ``n_dead``, ``n_failed``, ``n_eta``, ``eta_min`` and
    ``eta_max_tried`` (the eta range tried: lower the grid below ``eta_min``), ``statuses``."""
    trials = ensure_prepared(trials)
    by = group_columns(trials, exclude=("eta",))
    columns = by + ["n_trials", "n_diverged", "n_dead", "n_failed", "n_eta", "eta_min", "eta_max_tried", "statuses"]
    if trials.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for keys, sub in iter_groups(trials, by):
        ran = sub[~sub["failed"]]
        if len(ran) and ran["unstable"].all():
            rows.append(dict(zip(by, keys)) | {
                "n_trials": len(sub), "n_diverged": int(ran["diverged"].sum()), "n_dead": int(ran["dead"].sum()),
                "n_failed": int(sub["failed"].sum()), "n_eta": int(ran["eta"].nunique()), "eta_min": ran["eta"].min(),
                "eta_max_tried": ran["eta"].max(), "statuses": _statuses(sub),
            })
    return pd.DataFrame(rows, columns=columns)


def all_failed(trials: pd.DataFrame) -> pd.DataFrame:
    """Groups (every configuration column but eta; seeds pooled) in which every trial failed (out of memory, an
    infeasible batch, a data error, a lost worker): no data, so neither an eta* nor a stability edge. Columns: group
    columns, ``n_trials``, ``n_eta``, ``eta_min``, ``eta_max_tried``, ``error`` (the first error text, cut to 200
    characters)."""
    trials = ensure_prepared(trials)
    by = group_columns(trials, exclude=("eta",))
    columns = by + ["n_trials", "n_eta", "eta_min", "eta_max_tried", "error"]
    rows = []
    for keys, sub in iter_groups(trials, by) if len(trials) else ():
        if len(sub) and sub["failed"].all():
            errors = sub["error"].dropna().astype(str)
            rows.append(dict(zip(by, keys)) | {
                "n_trials": len(sub), "n_eta": int(sub["eta"].nunique()), "eta_min": sub["eta"].min(),
                "eta_max_tried": sub["eta"].max(), "error": errors.iloc[0][:200] if len(errors) else "",
            })
    return pd.DataFrame(rows, columns=columns)


def _statuses(sub: pd.DataFrame) -> str:
    """The statuses of a group, with ``dead`` for the dead trials among them (e.g. ``completed(dead),diverged``)."""
    names = np.where(sub["dead"].to_numpy(bool), sub["status"].astype(str) + "(dead)", sub["status"].astype(str))
    return ",".join(sorted(set(names)))
