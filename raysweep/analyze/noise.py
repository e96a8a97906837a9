"""The gradient noise scale per configuration, from the curves' ``grad_sq`` and ``grad_trace_cov`` columns.

One report's two-batch estimates are noisy and the ratio of two noisy estimates is biased, so B_simple is the
ratio of the *averages* over reports (McCandlish et al. 2018, App. A.1): ``mean(tr Sigma) / mean(|G|^2)``. The
mean of the per-report ratios is shown beside it, as ``b_simple_ratio_mean``, for comparison only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raysweep.analyze.load import CONFIG_COLUMNS, ensure_prepared

NOISE_COLUMNS = ("grad_sq", "grad_trace_cov", "grad_noise_scale")


def has_noise_scale(curves: pd.DataFrame) -> bool:
    """Whether ``curves`` carries measured noise-scale columns (the experiment had ``grad_noise_scale`` on)."""
    return set(NOISE_COLUMNS) <= set(curves.columns) and bool(curves["grad_sq"].notna().any())


def noise_scale_table(curves: pd.DataFrame, trials: pd.DataFrame, *, min_step: int = 0) -> pd.DataFrame:
    """One row per configuration with noise-scale reports at ``step >= min_step``: its axes, ``n_reports``,
    ``grad_sq`` and ``grad_trace_cov`` (means over reports), ``b_simple`` (their ratio) and
    ``b_simple_ratio_mean`` (the biased mean of the per-report ratios). Empty when nothing was measured."""
    trials = ensure_prepared(trials)
    axes = [c for c in CONFIG_COLUMNS if c in trials.columns]
    if not has_noise_scale(curves):
        return pd.DataFrame(columns=["config_key", *axes, "n_reports", "grad_sq", "grad_trace_cov", "b_simple",
                                     "b_simple_ratio_mean"])
    c = curves[(curves["step"] >= min_step) & curves["grad_sq"].notna() & curves["grad_trace_cov"].notna()]
    c = c[np.isfinite(c["grad_sq"]) & np.isfinite(c["grad_trace_cov"])]
    per = c.groupby("config_key").agg(n_reports=("step", "size"), grad_sq=("grad_sq", "mean"),
                                      grad_trace_cov=("grad_trace_cov", "mean"),
                                      b_simple_ratio_mean=("grad_noise_scale", "mean")).reset_index()
    per["b_simple"] = per["grad_trace_cov"] / per["grad_sq"].where(per["grad_sq"] != 0)
    table = trials[["config_key", *axes]].merge(per, on="config_key", how="inner")
    cols = ["config_key", *axes, "n_reports", "grad_sq", "grad_trace_cov", "b_simple", "b_simple_ratio_mean"]
    return table[cols].sort_values(axes or "config_key").reset_index(drop=True)
