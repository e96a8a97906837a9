"""Read a sweep's Parquet tables into pandas, and derive the columns every analysis uses.

Layout: ``<RESULTS_DIR>/<sweep>/trials/*.parquet`` (one row per trial) and ``<RESULTS_DIR>/<sweep>/curves/*.parquet``
(one row per (trial, report)), read with :func:`raysweep.results.read_trials` / :func:`~raysweep.results.read_curves`:
dot- and underscore-prefixed (temporary) files are skipped, and only curves of committed batches are returned.

Derived columns (added by :func:`prepare_trials`):

- ``final_loss``: ``final_eval_loss`` when present (non-null) on that row, else ``final_train_loss``;
  ``final_loss_source`` says which ("eval" / "train"). NaN for a diverged trial, whatever was recorded.
- ``diverged``: status ``diverged`` or ``failed``, or a final loss that is NaN/Inf although the trial completed.
  A diverged trial is masked everywhere: its loss never enters a mean, an optimum or a plot colour.
- ``usable``: completed (or status-less) with a finite loss; ``pruned`` trials are neither usable nor diverged.
- ``temperature``: ``eta / batch_size`` when the stored value is null.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from raysweep.errors import RaysweepError
from raysweep.results import read_curves, read_trials
from raysweep.schema import CURVES_SCHEMA, TRIALS_SCHEMA

DIVERGED_STATUSES = ("diverged", "failed")

# Columns that identify a configuration apart from its seed. Analyses group by those of them that are not their
# own x-axis (see :func:`group_columns`); ``sweep`` keeps several sweeps apart when they are loaded together.
CONFIG_COLUMNS = (
    "sweep",
    "family",
    "dataset",
    "parametrization",
    "optimizer",
    "lr_rule",
    "loss",
    "loss_convention",
    "depth",
    "width",
    "gamma",
    "batch_size",
    "eta",
)


class NoResultsError(RaysweepError, FileNotFoundError):
    """There are no trial rows to analyse where the user pointed (the message says where and what was expected)."""


def is_sweep_folder(folder: Path) -> bool:
    """A sweep folder holds the table folder ``trials/`` (of Parquet files). A storage root holding a sweep that
    is itself named ``trials`` holds ``trials/trials/``: that root is not a sweep folder."""
    return (folder / "trials").is_dir() and not (folder / "trials" / "trials").is_dir()


def find_sweeps(results_dir, sweep: str | None = None) -> list[Path]:
    """The sweep folders under ``results_dir`` (sorted by name), or ``[results_dir]`` when it is itself a sweep
    folder (:func:`is_sweep_folder`). ``sweep`` keeps only the folder of that name. Missing folder -> ``[]``."""
    root = Path(results_dir)
    if not root.is_dir():
        return []
    if is_sweep_folder(root):
        found = [root]
    else:
        found = sorted(p for p in root.iterdir() if p.is_dir() and is_sweep_folder(p))
    if sweep is not None:
        found = [p for p in found if p.name == sweep]
    return found


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    # Plain numpy/object columns: nullable ints would turn every later comparison into a three-valued one.
    frame = table.to_pandas(types_mapper=None)
    for name in frame.columns:
        if isinstance(frame[name].dtype, pd.StringDtype):
            frame[name] = frame[name].astype(object)
    return frame


def load_sweep(sweep_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, curves)`` of one sweep folder, trials passed through :func:`prepare_trials`."""
    sweep_dir = Path(sweep_dir)
    trials = _to_pandas(read_trials(sweep_dir))
    curves = _to_pandas(read_curves(sweep_dir))
    if len(trials):
        trials["sweep"] = trials["sweep"].where(trials["sweep"].notna(), sweep_dir.name)
    return prepare_trials(trials), curves


def load(results_dir, sweep: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, curves)`` as pandas DataFrames: every sweep under ``results_dir`` (or the one named ``sweep``, or
    ``results_dir`` itself when it is a sweep folder), concatenated; the ``sweep`` column tells them apart.
    Trials carry the derived columns of :func:`prepare_trials`. Nothing found -> two empty frames with the schema
    columns."""
    parts = [load_sweep(p) for p in find_sweeps(results_dir, sweep)]
    if not parts:
        return prepare_trials(_to_pandas(TRIALS_SCHEMA.empty_table())), _to_pandas(CURVES_SCHEMA.empty_table())
    trials = pd.concat([p[0] for p in parts], ignore_index=True) if len(parts) > 1 else parts[0][0]
    curves = pd.concat([p[1] for p in parts], ignore_index=True) if len(parts) > 1 else parts[0][1]
    return trials, curves


def prepare_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Add ``final_loss``, ``final_loss_source``, ``diverged``, ``usable`` (and fill ``temperature``); see the
    module docstring for the exact rules. Idempotent; returns a new frame."""
    t = trials.copy()
    for name in TRIALS_SCHEMA.names:
        if name not in t.columns:
            t[name] = None
    for name in ("batch_size", "eta", "width", "depth", "gamma", "seed", "temperature",
                 "final_train_loss", "final_eval_loss"):
        t[name] = pd.to_numeric(t[name], errors="coerce").astype(float)
    status = t["status"].astype(object).where(t["status"].notna(), "completed")
    eval_loss = t["final_eval_loss"].to_numpy(dtype=float)
    train_loss = t["final_train_loss"].to_numpy(dtype=float)
    has_eval = ~np.isnan(eval_loss)
    loss = np.where(has_eval, eval_loss, train_loss)
    diverged = status.isin(DIVERGED_STATUSES).to_numpy() | ((status == "completed").to_numpy() & ~np.isfinite(loss))
    usable = (status == "completed").to_numpy() & np.isfinite(loss) & ~diverged
    t["final_loss"] = np.where(usable, loss, np.nan)
    t["final_loss_source"] = pd.Series(np.where(has_eval, "eval", "train"), index=t.index, dtype=object)
    t["diverged"] = diverged
    t["usable"] = usable
    t["status"] = status
    derived = t["eta"] / t["batch_size"]
    t["temperature"] = t["temperature"].where(t["temperature"].notna(), derived)
    t["seed"] = t["seed"].fillna(0.0)
    return t


def ensure_prepared(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` itself when it already has the derived columns, else :func:`prepare_trials` of it (so that every
    analysis also accepts a raw trials table, e.g. ``read_trials(...).to_pandas()``)."""
    if {"final_loss", "diverged", "usable"} <= set(trials.columns):
        return trials
    return prepare_trials(trials)


def group_columns(trials: pd.DataFrame, exclude=()) -> list[str]:
    """The configuration columns (:data:`CONFIG_COLUMNS`) that label a group for an analysis whose own axes are
    ``exclude`` (e.g. ``("batch_size", "eta")`` for eta*(B)): present, not excluded, and not null everywhere.
    Seeds are never a grouping column: they are averaged."""
    return [c for c in CONFIG_COLUMNS if c not in exclude and c in trials.columns and trials[c].notna().any()]


def varying_columns(trials: pd.DataFrame, columns) -> list[str]:
    """Those of ``columns`` that take more than one value (what a plot title needs to tell groups apart)."""
    return [c for c in columns if trials[c].nunique(dropna=False) > 1]
