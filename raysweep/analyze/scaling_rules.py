"""Batch-size scaling rules for SGD and Adam, loss collapses across batch sizes, and an eta*(B) that rises then falls.

Scaling rules (Malladi, Lyu, Panigrahi and Arora 2022, "On the SDEs and scaling rules for adaptive gradient
algorithms"): from a base ``(B0, eta0, beta1, beta2, eps)``, a batch ``kappa B0`` keeps the loss curve against
*samples seen* when, in the SDE (small-eta, noise-dominated) regime,

- SGD, the linear rule: ``eta = kappa eta0``;
- Adam/AdamW, the square-root rule: ``eta = sqrt(kappa) eta0``, ``1 - beta_i = kappa (1 - beta_i0)``,
  ``eps = eps0 / sqrt(kappa)``;

whereas Adam under the linear rule (``eta = kappa eta0``, betas and eps unchanged) does not. :func:`scaled` gives a
rule's settings, :func:`rule_table` finds which trials of a sweep follow which rule from which base (the trials at the
smallest batch size of their group), :func:`rule_curves` their seed-mean loss curves against samples seen, and
:func:`rule_deviation` the largest relative deviation ``|L_kappa(s) / L_1(s) - 1|`` over the samples ``s`` at which
both curves report (eval loss by default: the loss at the weights reached after ``s`` samples).

Collapses (:func:`collapse`): the final loss as a function of one scaled variable across batch sizes: ``eta / B``
(SGD's temperature), ``eta / sqrt(B)`` (Adam's square-root rule) or the AdamW timescale ``tau = B / (eta lambda D)``
(``wd_timescale_fraction``, Wang and Aitchison 2024). The score is the rule of
:mod:`raysweep.analyze.temperature`: bins of one octave of the variable, the standard deviation across batch sizes
of the log seed-mean loss in each bin holding two batch sizes, averaged over the bins.

Rise and fall (:func:`fit_eta_peak`): ``log2 eta* = a + alpha min(x, x0) + beta max(x - x0, 0)`` in ``x = log2 B``,
a broken line whose second slope is free (``beta < 0``: eta* falls past the peak, as it does for Adam past the
critical batch; ``beta = 0`` is :func:`~raysweep.analyze.optimum.fit_eta_power_law`'s saturation), ``x0`` chosen on
the grid by least squares.

The study's science check, ``--check scaling_rules``: :func:`check_scaling_rules` (its rows:
:mod:`raysweep.analyze.rows`; the rules of every study: :mod:`raysweep.analyze.checks`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from raysweep.analyze.load import ensure_prepared, group_columns
from raysweep.analyze.optimum import config_table, eta_star_points, iter_groups, optimal_eta
from raysweep.analyze.quality import MAX_RMSE_OCTAVES, fit_verdict
from raysweep.analyze.rows import FAIL, Row, fmt, info_row, row

RULES = ("linear", "sqrt")
HYPER = ("eta", "beta1", "beta2", "eps")
MATCH_RTOL = 1e-6  # a trial follows a rule when its settings equal the rule's to this relative tolerance
COLLAPSE_VARIABLES = ("eta_over_b", "eta_over_sqrt_b", "tau")
MIN_BINS = 2


def scaled(base: dict, kappa: float, rule: str) -> dict:
    """The settings ``rule`` gives at ``kappa`` times the base batch: ``base`` holds ``eta`` and, for Adam,
    ``beta1``, ``beta2`` and ``eps`` (None for SGD; they are then left None)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule == "linear":
        return {**base, "eta": base["eta"] * kappa}
    out = {**base, "eta": base["eta"] * math.sqrt(kappa)}
    for beta in ("beta1", "beta2"):
        if base.get(beta) is not None:
            out[beta] = 1 - (1 - base[beta]) * kappa
    if base.get("eps") is not None:
        out["eps"] = base["eps"] / math.sqrt(kappa)
    return out


def _same(a, b) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return (a is None or a != a) and (b is None or b != b)
    return abs(a - b) <= MATCH_RTOL * max(abs(a), abs(b))


def rule_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, base, rule) it follows: ``config_key``, ``seed``, the group columns (every configuration
    column but batch size, eta and the scaled settings), ``base_eta``, ``rule``, ``kappa`` (B / B0). A trial at the
    base batch is ``kappa`` 1 of every rule of its base; a trial that follows neither rule is left out."""
    t = ensure_prepared(trials)
    hyper = [h for h in HYPER if h in t.columns]
    by = [c for c in group_columns(t, exclude=("batch_size", "eta")) if c not in hyper]
    rows = []
    for keys, sub in iter_groups(t, by):
        b0 = float(sub["batch_size"].min())
        records = sub.to_dict("records")
        bases = {r["eta"]: {h: _value(r, h) for h in hyper} for r in records if float(r["batch_size"]) == b0}
        for r in records:
            kappa = float(r["batch_size"]) / b0
            for base_eta, base in bases.items():
                for rule in RULES:
                    want = scaled(base, kappa, rule)
                    if all(_same(_value(r, h), want.get(h)) for h in hyper):
                        rows.append({**dict(zip(by, keys)), "config_key": r["config_key"], "seed": r["seed"],
                                     "base_eta": base_eta, "rule": rule, "kappa": kappa,
                                     "batch_size": r["batch_size"], "eta": r["eta"]})
    return pd.DataFrame(rows, columns=by + ["config_key", "seed", "base_eta", "rule", "kappa", "batch_size", "eta"])


def _value(row: dict, column: str):
    v = row.get(column)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def rule_curves(trials: pd.DataFrame, curves: pd.DataFrame, *, metric: str = "eval_loss") -> pd.DataFrame:
    """The seed-mean ``metric`` against ``samples_seen`` of every (group, base, rule, kappa) of :func:`rule_table`.
    Columns: the group columns, ``base_eta``, ``rule``, ``kappa``, ``samples_seen``, ``value`` (the seed mean),
    ``n_seeds``."""
    table = rule_table(trials)
    keys = [c for c in table.columns if c not in ("config_key", "seed", "batch_size", "eta")]
    if table.empty or curves.empty:
        return pd.DataFrame(columns=keys + ["samples_seen", "value", "n_seeds"])
    c = curves[["config_key", "samples_seen", metric]].rename(columns={metric: "value"})
    merged = table.merge(c, on="config_key", how="inner")
    merged = merged[np.isfinite(pd.to_numeric(merged["value"], errors="coerce").to_numpy(float))]
    return merged.groupby(keys + ["samples_seen"], dropna=False).agg(
        value=("value", "mean"), n_seeds=("seed", "nunique")).reset_index()


def rule_deviation(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (group, base, rule, kappa > 1) of :func:`rule_curves`: ``max_rel_dev``, the largest ``|L_kappa(s) /
    L_1(s) - 1|`` over the samples ``s`` where both report, ``final_rel_dev`` at the last of them and ``n_points``.
    NaN without a common sample count."""
    by = [c for c in curves.columns if c not in ("kappa", "samples_seen", "value", "n_seeds")]
    rows = []
    for keys, sub in iter_groups(curves, by):
        base = sub[sub["kappa"] == 1.0].set_index("samples_seen")["value"]
        for kappa, cur in sub[sub["kappa"] > 1.0].groupby("kappa"):
            c = cur.set_index("samples_seen")["value"]
            common = sorted(set(c.index) & set(base.index))
            dev = np.abs(c.loc[common].to_numpy(float) / base.loc[common].to_numpy(float) - 1) if common else []
            rows.append({**dict(zip(by, keys)), "kappa": float(kappa), "n_points": len(common),
                         "max_rel_dev": float(np.max(dev)) if len(dev) else np.nan,
                         "final_rel_dev": float(dev[-1]) if len(dev) else np.nan})
    return pd.DataFrame(rows, columns=by + ["kappa", "n_points", "max_rel_dev", "final_rel_dev"])


def collapse(trials: pd.DataFrame, variable: str = "eta_over_b", *, bin_width: float = 1.0) -> pd.DataFrame:
    """How well the final loss collapses across batch sizes at equal ``variable`` (module doc): ``eta_over_b``,
    ``eta_over_sqrt_b`` or ``tau`` (the ``wd_timescale_fraction`` column). Groups: every configuration column but
    batch size, eta (and the weight decay for ``tau``). Columns: group columns, ``variable``, ``collapse_score``,
    ``n_bins``, ``n_batch_sizes``, ``fit_ok``, ``fit_note``."""
    if variable not in COLLAPSE_VARIABLES:
        raise ValueError(f"variable must be one of {COLLAPSE_VARIABLES}, got {variable!r}")
    t = ensure_prepared(trials)
    if variable == "tau":
        t = t.assign(eta=pd.to_numeric(t["wd_timescale_fraction"], errors="coerce")).drop(columns=["weight_decay"])
    table = config_table(t, x="batch_size")
    b = table["batch_size"].to_numpy(float)
    value = table["eta"].to_numpy(float) / {"eta_over_b": b, "eta_over_sqrt_b": np.sqrt(b), "tau": 1.0}[variable]
    by = group_columns(table, exclude=("batch_size", "eta"))
    rows = []
    with np.errstate(divide="ignore", invalid="ignore"):
        table = table.assign(_lx=np.log2(value))
    for keys, sub in iter_groups(table, by):
        loss = sub["loss_mean"].to_numpy(float)
        sub = sub[np.isfinite(loss) & (loss > 0) & np.isfinite(sub["_lx"].to_numpy(float))]
        frame = pd.DataFrame({"bin": np.round(sub["_lx"].to_numpy(float) / bin_width),
                              "batch_size": sub["batch_size"].to_numpy(float),
                              "log_loss": np.log(sub["loss_mean"].to_numpy(float))})
        per_b = frame.groupby(["bin", "batch_size"])["log_loss"].mean().reset_index()
        spread = per_b.groupby("bin")["log_loss"].agg(lambda v: np.std(v) if len(v) >= 2 else np.nan).dropna()
        n_bins = len(spread)
        ok = n_bins >= MIN_BINS
        rows.append({**dict(zip(by, keys)), "variable": variable,
                     "collapse_score": float(spread.mean()) if n_bins else np.nan, "n_bins": n_bins,
                     "n_batch_sizes": int(sub["batch_size"].nunique()), "fit_ok": ok,
                     "fit_note": "" if ok else f"{n_bins} bins with two batch sizes < {MIN_BINS}"})
    return pd.DataFrame(rows, columns=by + ["variable", "collapse_score", "n_bins", "n_batch_sizes", "fit_ok",
                                            "fit_note"])


def _peak_fit(lx: np.ndarray, ly: np.ndarray):
    """Least squares of ``ly = a + alpha min(lx, x0) + beta max(lx - x0, 0)`` over x0 on the grid ``lx`` (two points
    at or below x0, one above, or x0 the largest x). Returns ``(alpha, beta, a, x0, rss)``."""
    best = (np.nan, np.nan, np.nan, np.nan, np.inf)
    for x0 in np.unique(lx):
        if (lx <= x0).sum() < 2:
            continue
        design = np.column_stack([np.ones_like(lx), np.minimum(lx, x0), np.maximum(lx - x0, 0)])
        coef, *_ = np.linalg.lstsq(design, ly, rcond=None)
        if not (lx > x0).any():
            coef[2] = 0.0
        rss = float(((design @ coef - ly) ** 2).sum())
        if rss < best[4] - 1e-12:
            best = (float(coef[1]), float(coef[2]), float(coef[0]), float(x0), rss)
    return best


def fit_eta_peak(table: pd.DataFrame, x: str = "batch_size") -> pd.DataFrame:
    """The rise-and-fall fit of eta*(x) per group (module doc). ``table``: an
    :func:`~raysweep.analyze.optimum.optimal_eta` table (or trials). Grid-edge optima are left out as in
    :func:`~raysweep.analyze.optimum.fit_eta_power_law`. Quality: 4 parameters, so ``fit_ok`` needs 5 points and an
    ``rmse_octaves`` of at most ``MAX_RMSE_OCTAVES``.

    Columns: group columns, ``n_points``, ``slope_rise`` (alpha), ``slope_fall`` (beta), ``<x>_peak`` (x0),
    ``eta_peak``, ``falls`` (beta < 0 with points past the peak), ``rmse_octaves``, ``fit_ok``, ``fit_note``."""
    if "log2_eta_star" not in table.columns:
        table = optimal_eta(table, x=x)
    by = group_columns(table, exclude=(x, "eta"))
    peak = f"{x}_peak"
    columns = by + ["n_points", "slope_rise", "slope_fall", peak, "eta_peak", "falls", "rmse_octaves", "fit_ok",
                    "fit_note"]
    rows = []
    for keys, sub in iter_groups(table, by):
        lx, ly = eta_star_points(sub, x)
        row = dict(zip(by, keys)) | {"n_points": len(lx)}
        rmse = np.nan
        if len(np.unique(lx)) >= 3:
            alpha, beta, a, x0, rss = _peak_fit(lx, ly)
            rmse = float(np.sqrt(rss / len(lx)))
            row |= {"slope_rise": alpha, "slope_fall": beta, peak: 2.0**x0, "eta_peak": 2.0 ** (a + alpha * x0),
                    "falls": bool(beta < 0 and x0 < lx.max()), "rmse_octaves": rmse}
        ok, note = fit_verdict(len(lx), 4, rmse, MAX_RMSE_OCTAVES, finite=np.isfinite(row.get("slope_rise", np.nan)))
        rows.append(row | {"fit_ok": ok, "fit_note": note})
    return pd.DataFrame(rows, columns=columns)


def check_scaling_rules(trials: pd.DataFrame, curves: pd.DataFrame, *, tol: float = 0.1) -> list[Row]:
    """The ``scaling_rules`` rows (rules: :mod:`raysweep.analyze.checks`): per optimizer, the deviation of each rule's
    curve from its base."""
    dev = rule_deviation(rule_curves(trials, curves))
    rows: list[Row] = []
    if dev.empty:
        return [Row("scaling rules", "no trial follows a rule from a base", "-", "-", FAIL, note="nothing to compare")]
    for (optimizer, rule), sub in dev.groupby(["optimizer", "rule"], sort=True):
        adam = optimizer != "SGD"
        must_hold = rule == ("sqrt" if adam else "linear")
        for _, r in sub.sort_values(["base_eta", "kappa"]).iterrows():
            name = f"{optimizer} {rule} rule, kappa={r['kappa']:g}: max |L/L_base - 1|"
            measured = f"{fmt(r['max_rel_dev'])} (n={int(r['n_points'])})"
            if must_hold:
                rows.append(row(name, r["max_rel_dev"], "0 (curves agree)", f"<= {tol:g}", r["max_rel_dev"] <= tol,
                                 measured=measured))
            elif adam and rule == "linear" and r["kappa"] == sub["kappa"].max():
                rows.append(row(name, r["max_rel_dev"], "> tol (the rule fails)", f"> {tol:g}",
                                 r["max_rel_dev"] > tol, measured=measured))
            else:
                rows.append(info_row(name, r["max_rel_dev"], measured=measured))
    return rows
