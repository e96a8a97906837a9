"""SGD temperature T = eta / B: does the final loss depend on (B, eta) only through T?

In the small-batch (SDE) regime the final loss is a function of T alone, so the curves of loss against log2 T for
different batch sizes lie on top of each other; past the critical batch they separate.

Collapse score (per group, all configuration columns but batch_size and eta): bin log2 T into bins of width
``bin_width`` octaves (default 1, centred on integers); in each bin holding finite losses from at least two batch
sizes, take the standard deviation across batch sizes of the natural log of the seed-mean final loss (a batch size
with several points in the bin contributes their mean); the score is the mean over those bins. 0 is a perfect
collapse; 0.1 means the batch sizes disagree by about 10% at equal temperature. Masked (diverged) configs are left
out. NaN when no bin has two batch sizes; ``fit_ok`` is False (with ``fit_note``) when fewer than 2 bins have two
batch sizes (one bin is a single comparison, not a collapse).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raysweep.analyze.load import group_columns
from raysweep.analyze.optimum import iter_groups, config_table


MIN_BINS = 2


def temperature_table(trials: pd.DataFrame, *, metric: str | None = None) -> pd.DataFrame:
    """:func:`~raysweep.analyze.optimum.config_table` over (batch_size, eta) with ``temperature`` and
    ``log2_temperature`` added."""
    table = config_table(trials, x="batch_size", metric=metric)
    table["temperature"] = table["eta"].astype(float) / table["batch_size"].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        table["log2_temperature"] = np.log2(table["temperature"].to_numpy(float))
    return table


def temperature_collapse(trials: pd.DataFrame, *, bin_width: float = 1.0) -> pd.DataFrame:
    """Collapse score per group (rule in the module docstring). ``trials`` may also be a :func:`temperature_table`.

    Columns: group columns, ``collapse_score``, ``n_bins`` (bins used), ``n_batch_sizes``, ``fit_ok``,
    ``fit_note``."""
    table = trials if "log2_temperature" in trials.columns else temperature_table(trials)
    by = group_columns(table, exclude=("batch_size", "eta"))
    columns = by + ["collapse_score", "n_bins", "n_batch_sizes", "fit_ok", "fit_note"]
    rows = []
    for keys, sub in iter_groups(table, by):
        sub = sub[np.isfinite(sub["loss_mean"].to_numpy(float)) & (sub["loss_mean"].to_numpy(float) > 0)
                  & np.isfinite(sub["log2_temperature"].to_numpy(float))]
        score, n_bins = np.nan, 0
        if len(sub):
            frame = pd.DataFrame({
                "bin": np.round(sub["log2_temperature"].to_numpy(float) / bin_width),
                "batch_size": sub["batch_size"].to_numpy(float),
                "log_loss": np.log(sub["loss_mean"].to_numpy(float)),
            })
            per_b = frame.groupby(["bin", "batch_size"])["log_loss"].mean().reset_index()
            spread = per_b.groupby("bin")["log_loss"].agg(lambda v: np.std(v) if len(v) >= 2 else np.nan).dropna()
            n_bins = len(spread)
            score = float(spread.mean()) if n_bins else np.nan
        ok = n_bins >= MIN_BINS
        rows.append(dict(zip(by, keys)) | {
            "collapse_score": score, "n_bins": n_bins, "n_batch_sizes": int(sub["batch_size"].nunique()),
            "fit_ok": ok, "fit_note": "" if ok else f"{n_bins} bins with two batch sizes < {MIN_BINS}"})
    return pd.DataFrame(rows, columns=columns)
