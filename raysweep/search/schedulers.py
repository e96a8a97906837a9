"""Ray Tune schedulers that stop bad trials early: ASHA, asynchronous Hyperband and the median stopping rule, one
per cell.

Time is counted in optimizer steps (the ``step`` of every report), the value is ``search.metric`` in
``search.direction``. Defaults: ``grace_period`` = experiment.report_every (the first report), ``reduction_factor``
= 3, ``max_t`` = experiment.steps, Hyperband ``brackets`` = every bracket that fits between grace_period and max_t,
median ``min_samples_required`` = 3.

Scope: a rung (or the median) compares trials of one *cell* only (:class:`CellScheduler` keeps one Ray scheduler
per cell). At an equal step, trials that differ in batch size have seen different numbers of samples, and
trials that differ in width or gamma answer different questions: comparing them would prune a whole cell (a small
B) against another. The cell of an Optuna search is its study (every axis Optuna does not search); under grid,
random and the eta scans it is every axis but ``eta`` and ``seed`` (:func:`cell_axes`), the group in which the
analysis picks eta*.

Divergence: a trial's diverged report carries no metric (see :mod:`raysweep.trial`), so no scheduler ever compares
NaN, Inf or an exploded loss; ASHA ignores a result without its metric. Ray's MedianStoppingRule does not: it keeps
the completed trial's last result and later reads its metric (KeyError), and it *pauses* trials while it has too
few samples. :class:`MedianStopping` drops metric-less results and never pauses. ``hyperband`` is the asynchronous
Hyperband; ``hyperband_sync`` is Ray's synchronous HyperBandScheduler (:class:`SyncHyperBand`), which *pauses*
trials until their rung is full: a paused trial's process ends, and it resumes exactly from the checkpoint its
trial saved at that report (with ``hyperband_sync`` a trial saves one at every report, raysweep.checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    TrialScheduler,
)

from raysweep.search.cells import TIME_ATTR, cell_axes, settings
from raysweep.points import AXES


class MedianStopping(MedianStoppingRule):
    """Ray's median stopping rule, hard stop only, that skips results without a finite metric and never pauses."""

    def on_trial_complete(self, tune_controller, trial, result):
        value = (result or {}).get(self._metric)
        if value is not None and math.isfinite(value):
            super().on_trial_complete(tune_controller, trial, result)

    def _on_insufficient_samples(self, tune_controller, trial, time):
        return TrialScheduler.CONTINUE


class SyncHyperBand(HyperBandScheduler):
    """Ray's synchronous HyperBand (``hyperband_sync``), fed only results that carry a finite metric: a diverged
    or failed trial's last report has none (and a failed one's step is -1), and it ends right after, which removes
    it from its bracket. Every other report of a trial (its checkpoint at each report lets a paused one resume
    exactly, :mod:`raysweep.checkpoint`) goes to Ray's rule unchanged."""

    def on_trial_result(self, tune_controller, trial, result):
        value = result.get(self._metric)
        if value is None or not math.isfinite(value) or result.get(self._time_attr, -1) < 0:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class CellOf:
    """A trial's cell: the values of ``axes`` in its configuration, as a tuple of (axis, value) pairs.

    A Tune config names its point (``{"bundle", "key", "point"}``, a configuration a searcher chose) or a bundle of
    the plan (``{"bundle": id}``, grid and random), whose first point is looked up in ``points``. A config that
    names neither belongs to the cell ``()``.
    """

    def __init__(self, axes: tuple[str, ...], points: Mapping[str, Mapping[str, Any]] = {}):
        self.axes, self.points = tuple(axes), dict(points)

    def __call__(self, config: Mapping[str, Any]) -> tuple:
        point = config.get("point") or self.points.get(config.get("bundle"))
        if point is None:
            return ()
        return tuple((axis, point.get(axis)) for axis in self.axes)


class CellScheduler(FIFOScheduler):
    """One inner Ray scheduler per cell, created by ``make()`` when the cell's first trial is added.

    Every hook goes to the inner scheduler of the trial's cell (``cell_of(trial.config)``), so that ASHA's rungs,
    Hyperband's brackets and the median rule only ever hold trials of that cell. Trials run in submission order
    (FIFO), as they do under each inner scheduler. ``metric`` and ``mode`` are those the inner schedulers were
    built with; Tune may not set others.
    """

    def __init__(self, make: Callable[[], TrialScheduler], cell_of: Callable[[Mapping], tuple], *,
                 metric: str | None = None, mode: str | None = None):
        super().__init__()
        self._make, self._cell_of = make, cell_of
        self._metric, self._mode = metric, mode
        self.cells: dict[tuple, TrialScheduler] = {}
        self._cell_of_trial: dict[str, tuple] = {}  # Tune trial id -> its cell

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if (self._metric and metric and metric != self._metric) or (self._mode and mode and mode != self._mode):
            return False  # Ray's schedulers refuse a second metric or mode the same way
        self._metric, self._mode = self._metric or metric, self._mode or mode
        return True

    def scheduler_of(self, trial) -> TrialScheduler:
        """The inner scheduler of ``trial``'s cell (created on first use)."""
        cell = self._cell_of_trial.get(trial.trial_id)
        if cell is None:
            cell = self._cell_of_trial[trial.trial_id] = self._cell_of(trial.config)
        if cell not in self.cells:
            self.cells[cell] = self._make()
        return self.cells[cell]

    def on_trial_add(self, tune_controller, trial) -> None:
        # also called again for a trial Tune requeues after an error: same cell, the inner scheduler re-adds it
        self.scheduler_of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self.scheduler_of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.scheduler_of(trial).on_trial_error(tune_controller, trial)  # the cell stays: Tune may requeue it

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self.scheduler_of(trial).on_trial_complete(tune_controller, trial, result)
        self._cell_of_trial.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self.scheduler_of(trial).on_trial_remove(tune_controller, trial)
        self._cell_of_trial.pop(trial.trial_id, None)

    def choose_trial_to_run(self, tune_controller):
        """FIFO, except for synchronous HyperBand, whose cells choose (a paused trial runs again only when its
        rung is done, the pending ones bracket by bracket)."""
        sync = [inner for inner in self.cells.values() if isinstance(inner, HyperBandScheduler)]
        if not sync:
            return super().choose_trial_to_run(tune_controller)
        for inner in sync:
            trial = inner.choose_trial_to_run(tune_controller)
            if trial is not None:
                return trial
        return None

    def debug_string(self) -> str:
        lines = [f"One scheduler per cell: {len(self.cells)} cells"]
        for cell, inner in self.cells.items():
            label = ",".join(f"{a}={v}" for a, v in cell) or "(all)"
            lines.append(f"{label}: " + inner.debug_string().replace("\n", "\n  "))
        return "\n".join(lines)


def make_scheduler(s: dict) -> TrialScheduler:
    """One Ray scheduler from :func:`settings` (the scheduler of one cell)."""
    if s["type"] == "hyperband_sync":
        return SyncHyperBand(time_attr=s["time"], metric=s["metric"], mode=s["mode"], max_t=s["max_t"],
                             reduction_factor=s["reduction_factor"], stop_last_trials=True)
    common = {"time_attr": TIME_ATTR, "metric": s["metric"], "mode": s["mode"], "grace_period": s["grace_period"]}
    if s["type"] == "median":
        return MedianStopping(**common, min_samples_required=s["min_samples_required"], hard_stop=True)
    return AsyncHyperBandScheduler(**common, max_t=s["max_t"], reduction_factor=s["reduction_factor"],
                                   brackets=s.get("brackets", 1))


def build_scheduler(spec, plan=None) -> CellScheduler | None:
    """The Tune scheduler of ``spec.search.scheduler`` (one per cell, see the module docstring), or None.

    ``plan``: the plan whose bundle ids grid and random trials name (their configs carry no point)."""
    s = settings(spec)
    if not s:
        return None
    points = {bid: b.points[0] for bid, b in plan.bundles.items() if b.points} if plan is not None else {}
    return CellScheduler(lambda: make_scheduler(s), CellOf(cell_axes(spec, AXES), points),
                         metric=s["metric"], mode=s["mode"])
