"""A scheduler's settings and cells, without Ray: what ``--dry-run`` shows and :mod:`raysweep.search.schedulers`
builds its Ray schedulers from (see there for the rules).

A cell is the group of trials a rung (or the median) compares: an Optuna study's grid axes (every axis Optuna does
not search); under grid, random and the eta scans every axis but ``eta`` and ``seed``.
"""

from __future__ import annotations

import math

from raysweep.points import AXES

TIME_ATTR = "step"
REPORT_ATTR = "report"  # the number of the report, ceil(step / report_every): hyperband_sync's time
DEFAULT_REDUCTION_FACTOR = 3.0
DEFAULT_MIN_SAMPLES = 3
NOT_IN_CELL = ("eta", "seed")  # grid, random and eta scans: a cell is every other axis


def n_brackets(grace_period: int, max_t: int, reduction_factor: float) -> int:
    """Hyperband's brackets: s = 0 .. floor(log_rf(max_t / grace_period)), at least one."""
    return max(1, int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1e-9) + 1)


def cell_axes(spec, all_axes: tuple[str, ...]) -> tuple[str, ...]:
    """The axes that name a scheduler's cell: an Optuna study's grid axes (every axis Optuna does not search);
    else every axis but eta and seed."""
    left_out = spec.search.optuna_axes if spec.search.algorithm == "optuna" else NOT_IN_CELL
    return tuple(a for a in all_axes if a not in left_out)


def settings(spec) -> dict:
    """The scheduler's settings with the defaults filled in (what --dry-run shows), or {} without one."""
    sched = spec.search.scheduler
    if sched is None:
        return {}
    grace = sched.grace_period or spec.experiment.report_every
    out = {"type": sched.type, "metric": spec.search.metric, "mode": spec.search.direction, "time": TIME_ATTR,
           "grace_period": grace}
    if sched.type == "median":
        return {**out, "min_samples_required": sched.min_samples_required or DEFAULT_MIN_SAMPLES}
    max_t = sched.max_t or spec.experiment.steps
    rf = sched.reduction_factor or DEFAULT_REDUCTION_FACTOR
    if sched.type == "hyperband_sync":
        # Ray's synchronous brackets are made for one result per time unit (rungs at max_t / rf**s, ..., max_t):
        # time is counted in reports (REPORT_ATTR), so that no report jumps over a rung; no grace period
        del out["grace_period"]
        every = spec.experiment.report_every
        return {**out, "time": REPORT_ATTR, "max_t": -(-max_t // every), "reduction_factor": rf,
                "report_every": every}
    out.update(max_t=max_t, reduction_factor=rf, grace_period=min(grace, max_t))
    if sched.type == "hyperband":
        out["brackets"] = sched.brackets or n_brackets(out["grace_period"], max_t, rf)
    return out


def describe(spec) -> str:
    """The ``--dry-run`` line: the settings, and which trials a rung (or the median) compares."""
    s = settings(spec)
    if not s:
        return "scheduler: none"
    shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items() if k != "type")
    axes = cell_axes(spec, AXES)
    varying = [a for a in axes if len(getattr(spec.space, a)) > 1]
    what = "the median rule" if s["type"] == "median" else "a rung"
    if spec.search.algorithm == "optuna":
        from raysweep.search.studies import cell_grid  # optuna: only for an Optuna search

        n, own, unit = len(cell_grid(spec, AXES)), "Optuna study", "studies"
    else:
        n = math.prod(len(getattr(spec.space, a)) for a in varying)
        own, unit = "cell (every axis but eta and seed)", "cells"
    scope = (f"{what} compares a trial only with trials of its own {own}: {n} {unit}"
             + (f" ({' x '.join(varying)})" if varying else ""))
    warn = ""
    if "batch_size" not in axes and len(spec.space.batch_size) > 1:
        warn = ("; warning: Optuna searches batch_size, so a rung compares batch sizes at equal steps (unequal "
                "samples seen)")
    return f"scheduler: {s['type']} ({shown}); {scope}; a stopped trial lands as pruned{warn}"
