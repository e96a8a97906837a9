"""Batch-aware smoothing of loss curves.

Small batches give noisy curves, large batches smooth ones; smoothing every curve over the same number of *reports*
would over-smooth the large batches and under-smooth the small. The window is therefore set in *samples*:

    window (in reports) = max(1, round(window_samples / batch_size / report_every))

with ``report_every`` the median number of steps between two reports of that curve. So every curve is averaged
over about ``window_samples`` training samples. Default ``window_samples``: the largest ``batch_size * report_every``
among the curves (the largest batch is left unsmoothed, every other one averages the same number of samples). The
window is capped at ``max_fraction`` of the curve's reports so that a short curve keeps its shape. The average is a
trailing moving mean (the first points average what exists so far), so a smoothed curve never looks ahead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def smoothing_window(batch_size: float, report_every: float, window_samples: float) -> int:
    """Moving-average window in reports: ``max(1, round(window_samples / batch_size / report_every))``."""
    if not (batch_size > 0 and report_every > 0 and window_samples > 0):
        return 1
    return max(1, int(round(window_samples / batch_size / report_every)))


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    values = np.asarray(values, float)
    if window <= 1 or values.size == 0:
        return values.copy()
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, values.size + 1)
    start = np.maximum(idx - window, 0)
    return (csum[idx] - csum[start]) / (idx - start)


def smooth_curves(mean_curves: pd.DataFrame, *, window_samples: float | None = None,
                  max_fraction: float = 0.2) -> pd.DataFrame:
    """A copy of a :func:`~raysweep.analyze.critical.seed_mean_curves` table with ``curve_loss`` smoothed per config (rule
    in the module docstring) and a ``window`` column (reports averaged)."""
    out = mean_curves.copy()
    if out.empty:
        out["window"] = pd.Series(dtype=int)
        return out
    keys = [c for c in out.columns if c not in ("step", "curve_loss", "n_seeds", "window")]
    out = out.sort_values(keys + ["step"], kind="stable").reset_index(drop=True)
    cid = out.groupby(keys, dropna=False, sort=False).ngroup().to_numpy()
    bounds = np.flatnonzero(np.diff(cid)) + 1
    starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [len(out)]])
    steps, batch = out["step"].to_numpy(float), out["batch_size"].to_numpy(float)
    every = np.array([np.median(np.diff(steps[a:b])) if b - a > 1 else 1.0 for a, b in zip(starts, ends)])
    if window_samples is None:
        window_samples = float(np.nanmax(batch[starts] * every))
    loss = out["curve_loss"].to_numpy(float).copy()
    window = np.ones(len(out), dtype=int)
    for (a, b), rep in zip(zip(starts, ends), every):
        w = min(smoothing_window(batch[a], rep, window_samples), max(1, int((b - a) * max_fraction)))
        loss[a:b] = trailing_mean(loss[a:b], w)
        window[a:b] = w
    out["curve_loss"] = loss
    out["window"] = window
    return out
