"""Science checks: does a sweep reproduce what the theory says? Each check reads the sweep's Parquet tables through
the analysis functions of this package and compares what they measure with the expected value and a tolerance.

``python -m raysweep.analyze RESULTS_DIR --check STUDY`` prints one table, ``quantity | measured | expected |
tolerance | pass``, and exits 1 on any miss. The studies and their search spaces (``search_spaces/science_*.yaml``):

- ``transfer``: eta*(N) per parametrization (:func:`~raysweep.analyze.transfer.transfer_slope`). muP: the fitted
  drift of log2 eta* across the width range is within +-0.5 octave, and the seed-mean loss at a fixed eta falls with
  width (slope of log2 loss vs log2 N < 0) at eta = eta*(N_min) and at eta*(N_min) / 4. SP (here the NTK
  parametrization): eta* drifts up a little (0 < slope <= 0.5 octave per width doubling), and at eta*(N_min) / 4
  wider is worse (loss slope > 0): two octaves below the narrowest width's optimum, where wide NTK nets stay lazier;
  at the optimum itself, close to the edge of stability, wider measures better (shown as info). ``torch_sp``
  (PyTorch's default SP): eta* falls one octave per width doubling, slope -1 +- 0.3; reported as skipped when
  raysweep has no such parametrization or the sweep has no torch_sp rows.
- ``gamma_eta``: the slope of log2 eta_diverge_min (the stability edge: the smallest eta at which any seed
  diverged or died; :func:`~raysweep.analyze.gamma.gamma_slopes`) against log2 gamma is 2 +- 0.3 for gamma <= 1/8 and
  2/L +- 0.3 for gamma >= 4, per depth L (Atanasov et al., ICLR 2025). eta_max (the largest eta with no diverged
  seed) is shown as info: past the edge deep ReLU nets may die instead of diverging, which makes it non-monotone.
- ``temperature``: eta*(B) grows with B at small B (power-law slope >= 0.25 below the saturation batch B_sat of
  :func:`~raysweep.analyze.optimum.fit_eta_power_law`) and saturates inside the B range; for B <= B_sat and T from
  the first temperature at which every such B has at least halved the zero-predictor loss (below it nothing has
  trained and every B trivially agrees) up to the smallest optimal temperature eta*(B) / B (well below the edge),
  the :func:`~raysweep.analyze.temperature.temperature_collapse` score is <= 0.1.
- ``critical_batch``: S(B) at the deepest default target (:func:`~raysweep.analyze.critical.default_targets`,
  or ``target``) is reached at every B, fits S_min (1 + B_crit / B) within 20% at every B
  (:func:`~raysweep.analyze.critical.fit_critical_batch`), with B_crit inside the swept B range and S_min at least
  three report intervals (so that it is resolved).
- ``scaling_rules``: batch-size scaling rules (Malladi et al. 2022; :mod:`raysweep.analyze.scaling_rules`). From the
  base at the smallest batch B0, SGD under the linear rule (eta x kappa) and Adam/AdamW under the square-root rule
  (eta x sqrt(kappa), 1 - beta_i x kappa, eps / sqrt(kappa)) keep the seed-mean eval-loss curve against samples
  seen: the largest relative deviation from the base curve is <= 10% at every kappa. Adam under the linear rule must
  visibly break it: its deviation at the largest kappa is > 10% (smaller kappas are shown as info).

- ``linear_edge``: the linear student's SGD stability edge (:mod:`raysweep.analyze.linear`). At every B the
  measured edge (the smallest eta at which a seed diverged) is at most one eta grid step below the exact
  mean-square edge ``eta_edge(B)`` of :mod:`raysweep.linear_theory` and at most half an octave above it (a run can
  survive a little past the mean-square edge); below ``B_crit / 2`` the slope of log2 edge against log2 B is
  1 +- 0.25, above ``2 B_crit`` it is 0 +- 0.25 and the edge sits within half an octave of ``2 / lambda_max``. The
  largest gap, and the study's approximation's largest gap below the exact edge, are info rows.
- ``eos``: the edge of stability (Cohen et al. 2021). For every full-batch GD trial (SGD at ``batch_size`` =
  the training set of a fixed-data family) the sharpness rises from its value at init (``initial_sharpness``) by at
  least ``min_rise`` (1.5x, mean over the window), and stays within 10% of ``2 / lr_effective`` at every report of
  the window, the second half of training. Info rows: minibatch SGD's batch sharpness against ``2 / eta``
  (Andreyev and Beneventano 2024) and Adam's preconditioned sharpness against ``38 / eta`` (beta1 = 0.9; Cohen et
  al. 2022), mean over the same window (:mod:`raysweep.analyze.sharpness`).

A check passes when no row fails; ``info`` and ``skipped`` rows never fail it. Each check expects one configuration
group per parametrization (transfer) or per depth (gamma_eta), as the shipped search spaces give.

Fit quality. Every row measured on a fit (the transfer slopes, the gamma slopes, the eta* power law, B_crit and
S_min) prints the fit's quality beside its value (``n`` points and ``rmse``), and a fit that
:mod:`raysweep.analyze.quality` flags (too few points, residuals above the threshold) makes its row FAIL, with the
reason in the pass column: a check never confirms a law from a fit it does not trust (``skipped`` would let a sweep
with nothing trustworthy pass on its other rows). The stability edge (``eta_diverge_min``) counts dead nets with the
diverged ones, and failed trials are missing data (an all-failed parametrization fails its row with the error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from raysweep import space
from raysweep.analyze.critical import default_targets, fit_critical_batch, seed_mean_curves, steps_to_target
from raysweep.analyze.gamma import gamma_slopes, gamma_table
from raysweep.analyze.linear import (
    ABOVE_OCTAVES, BELOW_STEPS, SATURATION_TOL, SLOPE_TOL, LinearSetting, grid_step, read_setting, theory_table,
)
from raysweep.analyze.load import ensure_prepared, find_sweeps, load
from raysweep.analyze.optimum import config_table, eta_max, fit_eta_power_law, fit_line, optimal_eta
from raysweep.analyze.sharpness import sharpness_curves, window_stats
from raysweep.analyze.scaling_rules import rule_curves, rule_deviation
from raysweep.analyze.temperature import temperature_collapse
from raysweep.analyze.transfer import transfer_slope, transfer_table
from raysweep.errors import NoResultsError

STUDIES = ("transfer", "gamma_eta", "temperature", "critical_batch", "linear_edge", "eos", "scaling_rules")
PASS, FAIL, SKIPPED, INFO = "pass", "FAIL", "skipped", "info"


@dataclass(frozen=True)
class Row:
    """One measured quantity: ``status`` is ``pass``, ``FAIL``, ``skipped`` or ``info``; ``value`` the raw number."""

    quantity: str
    measured: str
    expected: str
    tolerance: str
    status: str
    value: float = math.nan
    note: str = ""

    @property
    def verdict(self) -> str:
        """What the ``pass`` column shows: the status, then the note (``skipped: <why>``)."""
        return f"{self.status}: {self.note}" if self.note else self.status


@dataclass
class CheckResult:
    """The rows of one study's check on one sweep."""

    study: str
    sweep: str
    rows: list[Row] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No row failed, and at least one passed."""
        return all(r.status != FAIL for r in self.rows) and any(r.status == PASS for r in self.rows)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == FAIL]

    def table(self) -> str:
        """The rows as an aligned text table with a verdict line."""
        head = ("quantity", "measured", "expected", "tolerance", "pass")
        cells = [head] + [(r.quantity, r.measured, r.expected, r.tolerance, r.verdict) for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
        lines = [" | ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip() for c in cells]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        n_fail = len(self.failed)
        verdict = "PASS" if self.passed else f"FAIL ({n_fail} of {len(self.rows)} rows missed)" if n_fail else \
            "FAIL (nothing was checked)"
        return f"check {self.study} on sweep {self.sweep}: {verdict}\n" + "\n".join(lines)


def _fmt(v: float, digits: int = 3) -> str:
    if v is None or not np.isfinite(v):
        return "nan"
    text = f"{v:.{digits}f}"
    return "0." + "0" * digits if float(text) == 0 else text  # no "-0.000"


def _row(quantity, value, expected, tolerance, ok, *, measured=None) -> Row:
    finite = value is not None and np.isfinite(value)
    status = PASS if finite and ok else FAIL
    return Row(quantity, measured if measured is not None else _fmt(value), expected, tolerance, status,
               float(value) if finite else math.nan)


def _quality(fit, rmse_column: str = "rmse_octaves", n_column: str = "n_points", unit: str = "oct") -> str:
    """The fit quality shown beside a fitted value: ``(n=5, rmse 0.12 oct)``."""
    rmse = float(fit[rmse_column]) if rmse_column in fit and fit[rmse_column] is not None else math.nan
    return f"(n={int(fit[n_column])}, rmse {_fmt(rmse, 3)} {unit})".replace(" )", ")")


def _fit_row(quantity, value, expected, tolerance, ok, fit, *, measured=None, **quality) -> Row:
    """A row measured on a fit (a row of a table with ``fit_ok`` and ``fit_note``): its quality is printed after the
    value, and a flagged fit fails the row whatever the value, with the fit's reason as the note."""
    text = f"{measured if measured is not None else _fmt(value)} {_quality(fit, **quality)}"
    if not bool(fit["fit_ok"]):
        return Row(quantity, text, expected, tolerance, FAIL,
                   float(value) if value is not None and np.isfinite(value) else math.nan,
                   note=f"flagged fit: {fit['fit_note']}")
    return _row(quantity, value, expected, tolerance, ok, measured=text)


def _info(quantity, value, expected="-", note="info", *, measured=None) -> Row:
    return Row(quantity, measured if measured is not None else _fmt(value), expected, note, INFO,
               float(value) if value is not None and np.isfinite(value) else math.nan)


# ---------------------------------------------------------------------------------------------------- transfer


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
    """muP transfer, SP (NTK) drift and wider-is-worse, torch_sp's falling eta* (rules in the module docstring)."""
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
        rows.append(_row(f"{par}: widths with an interior eta*", n_interior, f"all {len(widths)}", "-",
                         n_interior == len(widths), measured=f"{n_interior}/{len(widths)}"))
        slope = float(fit["slope"].iloc[0]) if len(fit) else math.nan
        octaves = math.log2(n_max / n_min)
        quality = dict(n_column="n_widths")
        if not len(fit):
            rows.append(Row(f"{par}: eta* slope", "no fit", "-", "-", FAIL, note="fewer than 2 interior widths"))
        elif par == "muP":
            rows.append(_fit_row(f"muP: eta* drift N={n_min}->{n_max} (octaves, fitted)", slope * octaves, "0",
                                 f"+-{drift_tol}", abs(slope * octaves) <= drift_tol, fit.iloc[0], **quality))
        elif par == "SP":
            rows.append(_fit_row("SP: eta* slope (octaves per width doubling)", slope, "small positive",
                                 f"(0, {sp_slope_max}]", 0 < slope <= sp_slope_max, fit.iloc[0], **quality))
        else:
            rows.append(_fit_row("torch_sp: eta* slope (octaves per width doubling)", slope, f"{torch_sp_slope:g}",
                                 f"+-{torch_sp_tol}", abs(slope - torch_sp_slope) <= torch_sp_tol, fit.iloc[0],
                                 **quality))
            edge = eta_max(mine, x="width")
            edge_slope = fit_line(np.log2(edge["width"].to_numpy(float)),
                                  np.log2(edge["eta_diverge_min"].to_numpy(float)))[0]
            rows.append(_info("torch_sp: slope of the stability edge (eta_diverge_min: diverged or dead)",
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
                rows.append(_row(name, value, "< 0 (wider is better)", "< 0", value < 0,
                                 measured=note or None))
            elif factor < 1:
                rows.append(_row(name, value, "> 0 (wider is worse)", "> 0", value > 0, measured=note or None))
            else:
                rows.append(_info(name, value, note="info (near the edge: not checked)", measured=note or None))
    return rows


def _torch_sp_skip() -> Row:
    if "torch_sp" not in space.PARAMETRIZATIONS:  # read at call time (patchable)
        why = "parametrization torch_sp not available"
    else:
        why = "no torch_sp rows in this sweep (launch search_spaces/science_transfer.yaml)"
    return Row("torch_sp: eta* slope (octaves per width doubling)", "-", "-1", "+-0.3", SKIPPED, note=why)


# --------------------------------------------------------------------------------------------------- gamma_eta


def check_gamma_eta(trials: pd.DataFrame, *, lazy_max: float = 1 / 8, rich_min: float = 4.0,
                    tol: float = 0.3) -> list[Row]:
    """Slopes of the stability edge in gamma per depth and regime (rules in the module docstring)."""
    trials = ensure_prepared(trials)
    table = gamma_table(trials, n_boot=0)
    slopes = gamma_slopes(table, lazy_max=lazy_max, rich_min=rich_min)
    rows: list[Row] = []
    eta_lo = trials.groupby("depth")["eta"].min()
    for depth in sorted(table["depth"].dropna().unique()):
        sub = table[table["depth"] == depth]
        low = eta_lo.loc[depth]
        inside = np.isfinite(sub["eta_diverge_min"].to_numpy(float)) & (sub["eta_diverge_min"].to_numpy(float) > low)
        L = int(depth)
        rows.append(_row(f"L={L}: gammas with the edge inside the eta grid", int(inside.sum()), f"all {len(sub)}",
                         "-", bool(inside.all()), measured=f"{int(inside.sum())}/{len(sub)}"))
        for regime, cut, expected in (("lazy", f"gamma <= {lazy_max:g}", 2.0), ("rich", f"gamma >= {rich_min:g}",
                                                                             2.0 / L)):
            pick = slopes[(slopes["depth"] == depth) & (slopes["regime"] == regime)]
            edge = pick[pick["quantity"] == "eta_diverge_min"]
            name = f"L={L} {regime} ({cut}): slope of log2 edge vs log2 gamma"
            if edge.empty:
                rows.append(Row(name, "fewer than 2 gammas", f"{expected:.3g}", f"+-{tol}", FAIL))
            else:
                value = float(edge["slope"].iloc[0])
                rows.append(_fit_row(name + f" ({int(edge['n_points'].iloc[0])} gammas)", value, f"{expected:.3g}",
                                     f"+-{tol}", abs(value - expected) <= tol, edge.iloc[0]))
            largest = pick[pick["quantity"] == "eta_max"]
            if len(largest):
                rows.append(_info(f"L={L} {regime}: slope of log2 eta_max (largest stable eta)",
                                  float(largest["slope"].iloc[0]), f"{expected:.3g}", "info (dead ReLUs)"))
    return rows


# ------------------------------------------------------------------------------------------------- temperature


def check_temperature(trials: pd.DataFrame, *, min_slope: float = 0.25, max_score: float = 0.1) -> list[Row]:
    """eta*(B) grows then saturates; the loss depends on T alone at small B and moderate T (module docstring)."""
    trials = ensure_prepared(trials)
    opt = optimal_eta(trials, n_boot=0)
    law = fit_eta_power_law(opt)
    rows: list[Row] = []
    if law.empty or not np.isfinite(law["slope"].iloc[0]):
        return [Row("eta* power law in B", "no fit", "-", "-", FAIL)]
    batches = np.sort(trials["batch_size"].dropna().unique())
    fit = law.iloc[0]
    b_sat = float(fit["batch_size_saturation"])
    alpha = float(fit["slope"])
    rows.append(_fit_row("eta* ~ B^alpha for B <= B_sat: alpha", alpha, "> 0 (grows; 1 = linear scaling)",
                         f">= {min_slope}", alpha >= min_slope, fit))
    rows.append(_fit_row("saturation batch B_sat", b_sat, f"inside ({batches[0]:g}, {batches[-1]:g})", "-",
                         batches[0] < b_sat < batches[-1], fit, measured=f"{b_sat:g}"))
    small = opt[opt["batch_size"] <= b_sat]
    t_star = (small["eta_star"] / small["batch_size"]).to_numpy(float)
    t_hi = float(np.nanmin(t_star)) if np.isfinite(t_star).any() else math.nan
    table = config_table(trials)
    table = table[table["batch_size"] <= b_sat].assign(temperature=lambda t: t["eta"] / t["batch_size"])
    # the zero-predictor loss per B (the loss at step 0); without that column, the worst loss of the B column
    initial = pd.to_numeric(trials["initial_loss"], errors="coerce").groupby(trials["batch_size"]).median()
    initial = initial.fillna(table.groupby("batch_size")["loss_mean"].max())
    half = 0.5 * table["batch_size"].map(initial).to_numpy(float)
    trained = table.assign(ok=table["loss_mean"].to_numpy(float) <= half).groupby("temperature")["ok"].all()
    t_lo = float(trained[trained].index.min()) if trained.any() else math.nan
    keep = (trials["batch_size"] <= b_sat) & (trials["temperature"] >= t_lo * (1 - 1e-9)) & (
        trials["temperature"] <= t_hi * (1 + 1e-9))
    score = temperature_collapse(trials[keep])
    value = float(score["collapse_score"].iloc[0]) if len(score) else math.nan
    n_bins = int(score["n_bins"].iloc[0]) if len(score) else 0
    rows.append(_row(f"collapse score, B <= {b_sat:g}, T in [2^{np.log2(t_lo):.2f}, 2^{np.log2(t_hi):.2f}] "
                     f"({n_bins} bins)", value, "0 (loss depends on T alone)", f"<= {max_score}",
                     value <= max_score and n_bins >= 2))
    large = temperature_collapse(trials[trials["batch_size"] >= b_sat])
    if len(large):
        rows.append(_info(f"collapse score, B >= {b_sat:g}, all T (breaks past B_sat)",
                          float(large["collapse_score"].iloc[0])))
    return rows


# ---------------------------------------------------------------------------------------------- critical_batch


def check_critical_batch(trials: pd.DataFrame, curves: pd.DataFrame, *, target: float | None = None,
                         tol: float = 0.2, min_reports: float = 3.0) -> list[Row]:
    """S(B) = S_min (1 + B_crit / B) within ``tol`` at every B, at the deepest default target (module docstring)."""
    trials = ensure_prepared(trials)
    mean = seed_mean_curves(curves, trials)
    given = target
    if target is None:
        targets = default_targets(mean)
        if not targets:
            return [Row("target loss", "none", "curves that go down", "-", FAIL)]
        target = min(targets)
    rows = [_info("target loss (deepest default target)" if given is None else "target loss (given)", target,
                  measured=f"{target:.3g}")]
    s = steps_to_target(curves, trials, targets=[target], mean_curves=mean)
    batches = np.sort(trials["batch_size"].dropna().unique())
    reached = s[s["reached"]]
    rows.append(_row("batch sizes that reach the target", len(reached), f"all {len(batches)}", "-",
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
    rows.append(_fit_row("B_crit", b_crit, f"inside [{batches[0]:g}, {batches[-1]:g}]", "-",
                         batches[0] <= b_crit <= batches[-1], f, measured=f"{b_crit:.1f} ({ci})", **quality))
    rows.append(_fit_row("S_min (steps)", s_min, f">= {min_reports:g} report intervals ({min_reports * interval:g})",
                         "-", s_min >= min_reports * interval, f, measured=f"{s_min:.1f}", **quality))
    for _, r in reached.sort_values("batch_size").iterrows():
        pred = s_min * (1 + b_crit / r["batch_size"])
        rel = r["steps"] / pred - 1
        rows.append(_row(f"S(B={r['batch_size']:g}) / fit - 1", rel, f"0 (S={r['steps']:.1f}, fit {pred:.1f})",
                         f"+-{tol}", abs(rel) <= tol))
    return rows


# ------------------------------------------------------------------------------------------------- linear_edge


def check_linear_edge(trials: pd.DataFrame, setting: LinearSetting | None) -> list[Row]:
    """The measured SGD edge of the linear student against the exact mean-square edge (module docstring)."""
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
        text = f"{_fmt(math.log2(measured))} (gap {gap:+.2f} oct)" if np.isfinite(gap) else \
            "nan (no seed diverged: widen the eta grid)"
        rows.append(_row(f"log2 edge at B={b:g}", math.log2(measured) if np.isfinite(measured) else math.nan,
                         f"{_fmt(math.log2(exact))} (exact)", f"-{below:.2f} .. +{ABOVE_OCTAVES} oct", ok,
                         measured=text))
    gaps = table.assign(gap=np.log2(table["eta_diverge_min"].to_numpy(float) / table["eta_edge"].to_numpy(float)))
    if gaps["gap"].notna().any():
        worst = gaps.loc[gaps["gap"].abs().idxmax()]
        rows.append(_info("largest gap, measured - exact", float(worst["gap"]),
                          measured=f"{float(worst['gap']):+.2f} oct at B={float(worst['batch_size']):g}"))
    worst = table.loc[table["approx_gap_octaves"].idxmax()]
    rows.append(_info("approximation below exact, largest", float(worst["approx_gap_octaves"]),
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
        rows.append(_row(f"slope of log2 edge, {label} (B_crit = {setting.b_crit:.3g})", slope,
                         f"{expected:g} (exact edge: {_fmt(exact_slope)})", f"+-{SLOPE_TOL}",
                         abs(slope - expected) <= SLOPE_TOL))
    big = b >= 2 * setting.b_crit
    if big.any():
        level = float(np.mean(log_measured[big]))
        rows.append(_row("log2 edge above 2 B_crit (mean)", level,
                         f"{_fmt(math.log2(setting.saturation()))} (2 / lambda_max)", f"+-{SATURATION_TOL} oct",
                         abs(level - math.log2(setting.saturation())) <= SATURATION_TOL))
    return rows


# --------------------------------------------------------------------------------------------------------- eos


def check_eos(trials: pd.DataFrame, curves: pd.DataFrame, *, n_train: int | None = None, window: float = 0.5,
              tol: float = 0.10, min_rise: float = 1.5) -> list[Row]:
    """Full-batch GD at the edge of stability; SGD's batch sharpness and Adam's preconditioned sharpness as info
    (rules in the module docstring). ``n_train``: the training set size (a batch this large is full-batch GD;
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
        rows.append(_row(f"{name}: sharpness rise (mean over {span} / at init {_fmt(init)})", mean / init,
                         f">= {min_rise:g} (progressive sharpening)", f">= {min_rise:g}", mean / init >= min_rise))
        rows.append(_row(f"{name}: max |sharpness / (2/eta) - 1| over {span} ({int(st['n_reports'])} reports)",
                         float(st["max_deviation"]), f"0 (2/eta = {_fmt(edge)})", f"<= {tol:g}",
                         float(st["max_deviation"]) <= tol,
                         measured=f"{_fmt(float(st['max_deviation']))} (ratio {_fmt(float(st['min_ratio']))}.."
                                  f"{_fmt(float(st['max_ratio']))})"))
    minibatch = sgd[sgd["batch_size"] < full].sort_values(["batch_size", "eta", "seed"])
    batch_stats = window_stats(table, "batch_sharpness", "edge", start, end).set_index("config_key")
    for _, t in minibatch.iterrows():
        if t["config_key"] in batch_stats.index:
            rows.append(_info(f"SGD B={t['batch_size']:g} eta={t['eta']:g}: batch sharpness / (2/eta), mean over "
                              f"{span}", float(batch_stats.loc[t["config_key"], "mean_ratio"]), "1"))
    adam = trials[trials["optimizer"].isin(("Adam", "AdamW"))].sort_values(["batch_size", "eta", "seed"])
    # adam_edge: (2 + 2 beta1) / ((1 - beta1) lr_eff) at each trial's beta1 (38 / lr_eff at 0.9)
    pre_stats = window_stats(table, "preconditioned_sharpness", "adam_edge", start, end).set_index("config_key")
    for _, t in adam.iterrows():
        if t["config_key"] in pre_stats.index:
            b1 = t.get("beta1")
            edge = "38/eta" if pd.isna(b1) or b1 == 0.9 else f"(2+2b1)/((1-b1) eta), b1={b1:g}"
            rows.append(_info(f"{t['optimizer']} B={t['batch_size']:g} eta={t['eta']:g}: preconditioned sharpness / "
                              f"({edge}), mean over {span}", float(pre_stats.loc[t["config_key"], "mean_ratio"]),
                              "1"))
    if adam.empty:
        rows.append(Row("Adam: preconditioned sharpness / (38/eta)", "-", "1", "info", SKIPPED,
                        note="no Adam trials in this sweep"))
    return rows


# --------------------------------------------------------------------------------------------------- dispatcher


def check_scaling_rules(trials: pd.DataFrame, curves: pd.DataFrame, *, tol: float = 0.1) -> list[Row]:
    """The ``scaling_rules`` rows (module doc): per optimizer, the deviation of each rule's curve from its base."""
    dev = rule_deviation(rule_curves(trials, curves))
    rows: list[Row] = []
    if dev.empty:
        return [Row("scaling rules", "no trial follows a rule from a base", "-", "-", FAIL, note="nothing to compare")]
    for (optimizer, rule), sub in dev.groupby(["optimizer", "rule"], sort=True):
        adam = optimizer != "SGD"
        must_hold = rule == ("sqrt" if adam else "linear")
        for _, r in sub.sort_values(["base_eta", "kappa"]).iterrows():
            name = f"{optimizer} {rule} rule, kappa={r['kappa']:g}: max |L/L_base - 1|"
            measured = f"{_fmt(r['max_rel_dev'])} (n={int(r['n_points'])})"
            if must_hold:
                rows.append(_row(name, r["max_rel_dev"], "0 (curves agree)", f"<= {tol:g}", r["max_rel_dev"] <= tol,
                                 measured=measured))
            elif adam and rule == "linear" and r["kappa"] == sub["kappa"].max():
                rows.append(_row(name, r["max_rel_dev"], "> tol (the rule fails)", f"> {tol:g}",
                                 r["max_rel_dev"] > tol, measured=measured))
            else:
                rows.append(_info(name, r["max_rel_dev"], measured=measured))
    return rows


def find_sweep(results_dir, study: str, sweep: str | None = None) -> Path:
    """The sweep folder a check reads: ``sweep`` if given, else ``science_<study>``, else the only sweep there."""
    name = sweep or f"science_{study}"
    found = find_sweeps(results_dir, name)
    if not found and sweep is None:
        found = find_sweeps(results_dir)
        if len(found) != 1:
            found = []
    if not found:
        have = ", ".join(p.name for p in find_sweeps(results_dir)) or "none"
        raise NoResultsError(f"no sweep {name!r} under {results_dir} (sweeps there: {have}); run "
                             f"python -m raysweep.launch search_spaces/science_{study}.yaml --storage {results_dir}, "
                             "or name the sweep with --sweep")
    return found[0]


def run_check(results_dir, study: str, *, sweep: str | None = None, target: float | None = None) -> CheckResult:
    """Load the sweep (:func:`find_sweep`) and run the check of ``study`` (one of :data:`STUDIES`) on it."""
    if study not in STUDIES:
        raise ValueError(f"study must be one of {', '.join(STUDIES)}, got {study!r}")
    folder = find_sweep(results_dir, study, sweep)
    trials, curves = load(folder)
    if trials.empty:
        raise NoResultsError(f"no trial rows in {folder}/trials")
    if study == "transfer":
        rows = check_transfer(trials)
    elif study == "gamma_eta":
        rows = check_gamma_eta(trials)
    elif study == "temperature":
        rows = check_temperature(trials)
    elif study == "linear_edge":
        rows = check_linear_edge(trials, read_setting(folder))
    elif study == "scaling_rules":
        rows = check_scaling_rules(trials, curves)
    elif study == "critical_batch":
        rows = check_critical_batch(trials, curves, target=target)
    else:
        rows = check_eos(trials, curves, n_train=_n_train(folder))
    return CheckResult(study, folder.name, rows)


def _n_train(folder: Path) -> int | None:
    """The training set size of a fixed-data sweep, from its ``spec.yaml`` (None when online or unknown)."""
    try:
        spec = space.load_spec(Path(folder) / "spec.yaml")
    except Exception:  # noqa: BLE001 - no spec (a synthetic sweep): the check falls back to the largest batch
        return None
    if spec.experiment.online:
        return None
    return spec.experiment.params.get("n_train")
