"""Read a sweep's Parquet tables into pandas, and derive the columns every analysis uses.

Layout: ``<RESULTS_DIR>/<sweep>/trials/*.parquet`` (one row per trial) and ``<RESULTS_DIR>/<sweep>/curves/*.parquet``
(one row per (trial, report)), read with :func:`raysweep.results.read_trials` / :func:`~raysweep.results.read_curves`:
dot- and underscore-prefixed (temporary) files are skipped, and only curves of committed batches are returned.

The metric (``metric``, one of :data:`METRICS`; default :data:`DEFAULT_METRIC`) is what eta* minimises:

- ``eval_loss``: ``final_eval_loss``, or ``final_train_loss`` on a row without an eval loss;
- ``train_loss``: ``final_train_loss`` (the mean minibatch loss over the last report interval);
- ``eval_accuracy``: accuracy is maximised, so the analysis minimises the error ``1 - final_eval_accuracy``: every
  loss column of the tables (``final_loss``, ``loss_star``, ``loss_mean``...) then holds that error.

Derived columns (added by :func:`prepare_trials`):

- ``metric``: the metric's name, the same on every row (every table the analysis writes carries it too);
- ``final_loss``: the metric's value (the error for ``eval_accuracy``) on a usable row, NaN on every other row;
  ``metric_value``: the same value on every row that recorded one (pruned trials included: plots draw them);
  ``final_loss_source`` says which column it came from ("eval", "train" or "eval_accuracy").
- ``diverged``: status ``diverged``, or a completed trial whose recorded loss (eval, else train) is NaN/Inf.
- ``failed``: status ``failed`` (out of memory, an infeasible batch, a data error, a lost worker). A failed trial is
  *missing data*: never diverged, never dead, never usable; it masks nothing and is never a stability edge.
- ``dead``: ``dead_step`` is set (the trainer found the net dead at its last report: a hidden layer with no active
  unit, or collapsed to chance; :mod:`raysweep.train`) and the trial neither failed nor diverged (a net that blew
  up usually dies too: it counts as diverged, so that ``dead`` names what the divergence rule missed).
- ``unstable``: diverged or dead. Past the stability edge nets blow up *or die*; both count at the edge
  (``eta_diverge_min``, masked configs, ``all_diverged``).
- ``usable``: completed (or status-less), a finite metric, and not unstable; ``pruned`` trials are never usable
  (and unstable only when dead).
- ``temperature``: ``eta / batch_size`` when the stored value is null.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from raysweep.results import read_curves, read_trials
from raysweep.schema import CURVES_SCHEMA, TRIALS_SCHEMA

METRICS = ("eval_loss", "train_loss", "eval_accuracy")
DEFAULT_METRIC = "eval_loss"

# Columns that identify a configuration apart from its seed. Analyses group by those of them that are not their
# own x-axis (see :func:`group_columns`); ``sweep`` keeps several sweeps apart when they are loaded together.
CONFIG_COLUMNS = (
    "sweep",
    "family",
    "dataset",
    "model",
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
    # the optimizer and schedule axes (null in sweeps made before them, so never a group there)
    "momentum",
    "nesterov",
    "beta1",
    "beta2",
    "eps",
    "eps_scaling",
    "weight_decay",
    "weight_decay_scaling",
    "schedule",
    "warmup_steps",
    "warmup_fraction",
    "decay_fraction",
    "final_fraction",
)


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


def load_sweep(sweep_dir, metric: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, curves)`` of one sweep folder, trials passed through :func:`prepare_trials`."""
    sweep_dir = Path(sweep_dir)
    trials = _to_pandas(read_trials(sweep_dir))
    curves = _to_pandas(read_curves(sweep_dir))
    if len(trials):
        trials["sweep"] = trials["sweep"].where(trials["sweep"].notna(), sweep_dir.name)
    return prepare_trials(trials, metric), curves


def load(results_dir, sweep: str | None = None, metric: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, curves)`` as pandas DataFrames: every sweep under ``results_dir`` (or the one named ``sweep``, or
    ``results_dir`` itself when it is a sweep folder), concatenated; the ``sweep`` column tells them apart.
    Trials carry the derived columns of :func:`prepare_trials` for ``metric``. Nothing found -> two empty frames
    with the schema columns."""
    parts = [load_sweep(p, metric) for p in find_sweeps(results_dir, sweep)]
    if not parts:
        empty = prepare_trials(_to_pandas(TRIALS_SCHEMA.empty_table()), metric)
        return empty, _to_pandas(CURVES_SCHEMA.empty_table())
    trials = pd.concat([p[0] for p in parts], ignore_index=True) if len(parts) > 1 else parts[0][0]
    curves = pd.concat([p[1] for p in parts], ignore_index=True) if len(parts) > 1 else parts[0][1]
    return trials, curves


def check_metric(metric: str | None) -> str:
    """``metric`` itself when it is one of :data:`METRICS`, :data:`DEFAULT_METRIC` for None; else ValueError."""
    if metric is None:
        return DEFAULT_METRIC
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return metric


def metric_label(metric: str) -> str:
    """What the loss columns hold for ``metric`` (plot labels, the report)."""
    return "1 - eval_accuracy (error)" if metric == "eval_accuracy" else metric


def prepare_trials(trials: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Add ``metric``, ``final_loss``, ``metric_value``, ``final_loss_source``, ``diverged``, ``failed``, ``dead``,
    ``unstable``, ``usable`` (and fill ``temperature``) for ``metric`` (default :data:`DEFAULT_METRIC`); see the
    module docstring for the exact rules. Idempotent; returns a new frame. ValueError for an unknown metric, or for
    ``eval_accuracy`` on trials that recorded no accuracy (a regression sweep)."""
    metric = check_metric(metric)
    t = trials.copy()
    for name in TRIALS_SCHEMA.names:
        if name not in t.columns:
            t[name] = None
    for name in ("batch_size", "eta", "width", "depth", "gamma", "seed", "temperature", "dead_step",
                 "final_train_loss", "final_eval_loss", "final_eval_accuracy"):
        t[name] = pd.to_numeric(t[name], errors="coerce").astype(float)
    status = t["status"].astype(object).where(t["status"].notna(), "completed")
    eval_loss = t["final_eval_loss"].to_numpy(dtype=float)
    train_loss = t["final_train_loss"].to_numpy(dtype=float)
    has_eval = ~np.isnan(eval_loss)
    loss = np.where(has_eval, eval_loss, train_loss)  # the recorded loss: divergence is judged on it
    if metric == "eval_loss":
        value, source = loss, np.where(has_eval, "eval", "train")
    elif metric == "train_loss":
        value, source = train_loss, np.full(len(t), "train")
    else:
        accuracy = t["final_eval_accuracy"].to_numpy(dtype=float)
        if len(t) and np.isnan(accuracy).all():
            raise ValueError("metric eval_accuracy: no trial recorded an eval accuracy (a regression sweep?); "
                             "use eval_loss or train_loss")
        value, source = 1.0 - accuracy, np.full(len(t), "eval_accuracy")
    completed = (status == "completed").to_numpy()
    failed = (status == "failed").to_numpy()
    diverged = (status == "diverged").to_numpy() | (completed & ~np.isfinite(loss))
    dead = t["dead_step"].notna().to_numpy() & ~failed & ~diverged
    unstable = diverged | dead
    usable = completed & np.isfinite(value) & ~unstable
    t["metric"] = metric
    t["final_loss"] = np.where(usable, value, np.nan)
    t["metric_value"] = np.where(np.isfinite(value) & ~diverged & ~failed, value, np.nan)
    t["final_loss_source"] = pd.Series(source, index=t.index, dtype=object)
    t["diverged"] = diverged
    t["failed"] = failed
    t["dead"] = dead
    t["unstable"] = unstable
    t["usable"] = usable
    t["status"] = status
    derived = t["eta"] / t["batch_size"]
    t["temperature"] = t["temperature"].where(t["temperature"].notna(), derived)
    t["seed"] = t["seed"].fillna(0.0)
    return t


DERIVED = ("metric", "final_loss", "metric_value", "diverged", "failed", "dead", "unstable", "usable")


def ensure_prepared(trials: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """``trials`` itself when it already has the derived columns (for ``metric``, when one is given), else
    :func:`prepare_trials` of it (so that every analysis also accepts a raw trials table, e.g.
    ``read_trials(...).to_pandas()``)."""
    if set(DERIVED) <= set(trials.columns) and (
            metric is None or not len(trials) or (trials["metric"] == check_metric(metric)).all()):
        return trials
    return prepare_trials(trials, metric if metric is not None else _metric_of(trials))


def _metric_of(trials: pd.DataFrame) -> str | None:
    """The metric a prepared frame was prepared for (None when it was not)."""
    if "metric" in trials.columns and len(trials) and trials["metric"].notna().any():
        return str(trials["metric"].dropna().iloc[0])
    return None


def metric_of(trials: pd.DataFrame) -> str:
    """The metric of a prepared trials table (:data:`DEFAULT_METRIC` when it has none)."""
    return _metric_of(trials) or DEFAULT_METRIC


def group_columns(trials: pd.DataFrame, exclude=()) -> list[str]:
    """The configuration columns (:data:`CONFIG_COLUMNS`) that label a group for an analysis whose own axes are
    ``exclude`` (e.g. ``("batch_size", "eta")`` for eta*(B)): present, not excluded, and not null everywhere.
    Seeds are never a grouping column: they are averaged."""
    return [c for c in CONFIG_COLUMNS if c not in exclude and c in trials.columns and trials[c].notna().any()]


def varying_columns(trials: pd.DataFrame, columns) -> list[str]:
    """Those of ``columns`` that take more than one value (what a plot title needs to tell groups apart)."""
    return [c for c in columns if trials[c].nunique(dropna=False) > 1]
