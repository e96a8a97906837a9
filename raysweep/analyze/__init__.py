"""Analysis of a sweep's Parquet tables: eta*(B), the stability edge, power laws, the critical batch size, muP
transfer, gamma slopes, temperature collapse, plots and a self-contained HTML report.

Reads ``<RESULTS_DIR>/<sweep>/trials/*.parquet`` and ``curves/*.parquet`` (columns: :mod:`raysweep.schema`) with
pyarrow; computes with numpy/pandas; draws with matplotlib's Agg canvas. Imports neither Ray nor torch, and
matplotlib only when a plot or the report is first used: the tables (``optimal_eta``, ``eta_max``, ...) work
without it.

Typical use::

    from raysweep import analyze as ra
    trials, curves = ra.load("results", sweep="quickstart")
    ra.optimal_eta(trials)                   # eta*(B) per group, with a bootstrap interval
    ra.fit_eta_power_law(ra.optimal_eta(trials))
    ra.fit_critical_batch(ra.steps_to_target(curves, trials, targets=[0.1]))
    ra.build_report("results", "report.html")

Command line: ``python -m raysweep.analyze RESULTS_DIR [--sweep NAME] [--report F.html] [--out DIR]
[--metric eval_loss|train_loss|eval_accuracy]``.
"""

import importlib

from raysweep.analyze.critical import (
    crossing_step,
    default_targets,
    fit_critical_batch,
    seed_mean_curves,
    steps_to_target,
)
from raysweep.analyze.curves import smooth_curves, smoothing_window
from raysweep.analyze.gamma import gamma_slopes, gamma_table
from raysweep.analyze.load import (
    DEFAULT_METRIC,
    METRICS,
    find_sweeps,
    group_columns,
    load,
    prepare_trials,
)
from raysweep.analyze.noise import noise_scale_table
from raysweep.analyze.sharpness import edge_table, sharpness_curves
from raysweep.analyze.optimum import (
    all_diverged,
    all_failed,
    config_table,
    eta_max,
    fit_eta_power_law,
    optimal_eta,
)
from raysweep.analyze.scaling_rules import collapse, fit_eta_peak, rule_curves, rule_deviation, scaled
from raysweep.analyze.temperature import temperature_collapse, temperature_table
from raysweep.analyze.transfer import transfer_slope, transfer_table
from raysweep.errors import NoResultsError

# Names that need matplotlib, imported on first use (PEP 562).
_LAZY = {
    "HeatmapGrid": "plots", "heatmap_grid": "plots", "Analysis": "report", "analyze": "report",
    "analyze_frames": "report", "build_report": "report", "render_html": "report", "write_outputs": "report",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"raysweep.analyze.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'raysweep.analyze' has no attribute {name!r}")

__all__ = [
    "DEFAULT_METRIC",
    "METRICS",
    "Analysis",
    "HeatmapGrid",
    "NoResultsError",
    "all_diverged",
    "all_failed",
    "analyze",
    "analyze_frames",
    "build_report",
    "collapse",
    "config_table",
    "crossing_step",
    "default_targets",
    "edge_table",
    "eta_max",
    "find_sweeps",
    "fit_critical_batch",
    "fit_eta_peak",
    "fit_eta_power_law",
    "gamma_slopes",
    "gamma_table",
    "group_columns",
    "heatmap_grid",
    "load",
    "noise_scale_table",
    "optimal_eta",
    "prepare_trials",
    "render_html",
    "rule_curves",
    "rule_deviation",
    "scaled",
    "seed_mean_curves",
    "sharpness_curves",
    "smooth_curves",
    "smoothing_window",
    "steps_to_target",
    "temperature_collapse",
    "temperature_table",
    "transfer_slope",
    "transfer_table",
    "write_outputs",
]
