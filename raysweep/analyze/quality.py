"""When an interval or a fit means something: the documented minimums and thresholds every analysis applies.

Intervals. A bootstrap over n units has C(2n - 1, n) distinct resamples: 3 for 2 seeds, 10 for 3, 35 for 4. With 2
seeds a "90% interval" is the spread of three numbers (e.g. [2.8315, 2.8332] for a quantity whose seeds disagree
by an octave), so no interval is reported below :data:`MIN_SEEDS_INTERVAL` seeds (eta*: seeds are resampled) or
:data:`MIN_POINTS_INTERVAL` points (B_crit: the batch sizes are resampled): the bounds are NaN and an
``interval_note`` column says why.

Fits. Every fit reports ``n_points`` and its residuals (``rmse_octaves`` for fits in log2 eta, ``rmse_rel`` for
S(B)), and ``fit_ok`` is False, with the reason in ``fit_note``, when

- it has fewer than ``n_params + 1`` points (at least one degree of freedom: a line through 2 points, or a broken
  power law (c, alpha, B0) through 3, fits any data exactly, with an rmse of 0);
- its rmse exceeds the threshold: :data:`MAX_RMSE_OCTAVES` (one octave: a typical residual above a factor 2 in
  eta, one step of the usual octave grid) for eta*, eta_max and eta_diverge_min fits against log2 B, log2 N or
  log2 gamma; :data:`MAX_RMSE_REL` (15%) for S = S_min (1 + B_crit / B);
- its parameters are not finite or not physical (S_min <= 0).

A flagged fit keeps its numbers (for inspection), and the ``--check`` studies never pass a row on it.
"""

from __future__ import annotations

import numpy as np

MIN_SEEDS_INTERVAL = 3
MIN_POINTS_INTERVAL = 4
MAX_RMSE_OCTAVES = 1.0
MAX_RMSE_REL = 0.15


def interval_note(n_units: int, minimum: int, unit: str = "seeds") -> str:
    """``""`` when ``n_units`` reach ``minimum``, else the note saying why there is no interval."""
    if n_units >= minimum:
        return ""
    return f"no interval: {n_units} {unit} < {minimum}"


def fit_verdict(n_points: int, n_params: int, rmse: float, max_rmse: float, unit: str = "octaves",
                finite: bool = True) -> tuple[bool, str]:
    """``(fit_ok, fit_note)`` of a fit with ``n_points`` points, ``n_params`` parameters and residual ``rmse``
    (rules in the module docstring); the note is empty when the fit is ok."""
    reasons = []
    if n_points < n_params + 1:
        reasons.append(f"{n_points} points < {n_params + 1} ({n_params} parameters)")
    if not finite:
        reasons.append("no finite fit")
    elif not np.isfinite(rmse) or rmse > max_rmse:
        reasons.append(f"rmse {rmse:.3g} {unit} > {max_rmse:g}")
    return not reasons, "; ".join(reasons)


def line_rmse(xs, ys, slope: float, intercept: float) -> float:
    """Root-mean-square residual of ``y = intercept + slope x`` over the finite points."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    keep = np.isfinite(xs) & np.isfinite(ys)
    if not keep.any() or not (np.isfinite(slope) and np.isfinite(intercept)):
        return np.nan
    return float(np.sqrt(np.mean((ys[keep] - intercept - slope * xs[keep]) ** 2)))
