"""Optuna-guided searches as a Ray Tune searcher that keeps Optuna's meaning: one study per cell, in a journal.

Why not Ray's ``OptunaSearch`` (ray 2.60, optuna 5.0; pinned by tests/search/test_units.py): it tells a trial
that a scheduler stopped as COMPLETE (the last result has a value); a diverged trial is PRUNED (no value) or,
if the value is NaN, ``tell`` fails and the trial stays RUNNING forever; its intermediate values miss the result
a scheduler stopped on (Tune does not pass that result to ``on_trial_result``) and are indexed by
``training_iteration``, not step; it holds one study, so a grid of cells with a study each cannot be expressed
(``grid_search`` axes are rejected); and a trial a killed driver left RUNNING stays so. Every raysweep study can
diverge, so ``OptunaSearch`` is right for none of them. :class:`OptunaStudies` uses Optuna's own samplers through
``study.ask(fixed_distributions)`` / ``study.tell`` and decides states from the Parquet rows (see
:mod:`raysweep.search.studies` for the table).

Flow: ``suggest`` picks the cell that lacks the most trials, asks its study, and returns the configuration; each
result with a finite metric becomes an intermediate value at its step; when Tune completes the trial, the row
lands first (``ResultsCallback.settle``), then the study is told. A relaunch first finishes the trials the killed
driver left RUNNING (from their row if it landed, else FAIL as abandoned, not counted), then asks until each study
has exactly ``n_trials`` finished trials.

Repeated suggestions: Optuna may suggest a configuration that already has a row (a categorical axis). It is not
trained again: the Optuna trial gets that row's outcome (user attr ``copy_of``) and counts; if the configuration
is still running, the copy waits for it.
"""

from __future__ import annotations

import optuna
from ray.tune.search import Searcher

from raysweep.search import studies
from raysweep.search._base import DriverSearcher, bundle_config
from raysweep.points import AXES, config_key

_MAX_ASKS = 1000  # per suggest call: copies of landed rows finish at once, so this only bounds a degenerate space


class _Live:
    __slots__ = ("cell", "trial", "key", "steps")

    def __init__(self, cell, trial, key):
        self.cell, self.trial, self.key, self.steps = cell, trial, key, set()


class OptunaStudies(DriverSearcher):
    """One Optuna study per cell of ``spec``'s non-Optuna axes; see the module docstring.

    ``rows`` and ``curves`` (config key -> trials row / curve rows) are what Parquet already holds.
    """

    def __init__(self, spec, recorder, sweep_dir, rows: dict[str, dict], curves: dict[str, list[dict]]):
        super().__init__(recorder)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec, self.metric_name = spec, spec.search.metric
        self.experiment = spec.experiment.as_dict()
        self.rows = dict(rows)
        self.storage = studies.open_storage(sweep_dir)
        self.cells = [studies.open_cell(spec, self.storage, c) for c in studies.cell_grid(spec, AXES)]
        self.recovered = {"from_row": 0, "abandoned": 0}
        for cell in self.cells:
            for k, v in studies.recover(cell, self.rows, curves, self.metric_name).items():
                self.recovered[k] += v
        self.live: dict[str, _Live] = {}  # Tune trial id -> its Optuna trial
        self.n_copies = 0

    # ---------------------------------------------------------------------------------------------- asking
    def _suggest(self, trial_id: str):
        for _ in range(_MAX_ASKS):
            cell = max(self.cells, key=lambda c: c.wants(), default=None)
            if cell is None or cell.wants() <= 0:
                return None if self.live or any(c.waiting for c in self.cells) else Searcher.FINISHED
            trial = cell.study.ask(cell.distributions)
            point = {axis: cell.values.get(axis, trial.params.get(axis)) for axis in AXES}
            key = config_key(self.experiment, point)
            trial.set_user_attr("config_key", key)
            if key in self.rows:
                self._copy(cell, trial, self.rows[key])
                continue
            if any(live.key == key for live in self.live.values()):
                cell.waiting.append((trial, key))  # same configuration running: take its outcome when it lands
                continue
            cell.n_live += 1
            self.live[trial_id] = _Live(cell, trial, key)
            return bundle_config(key, point)
        return None

    def _copy(self, cell, trial, row: dict) -> None:
        trial.set_user_attr("copy_of", row["config_key"])
        studies.tell_row(cell, trial, row, self.metric_name)
        self.n_copies += 1

    # --------------------------------------------------------------------------------------------- telling
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        live = self.live.get(trial_id)
        if live is not None:
            self._report(live, result)

    def _report(self, live: _Live, result: dict) -> None:
        """The metric at this report's step, when the trial reported one (never on the diverged report)."""
        value, step = result.get(self.metric_name), result.get("step")
        if value is not None and step is not None and step >= 0 and step not in live.steps:
            live.trial.report(float(value), int(step))
            live.steps.add(step)

    def _before_settle(self, trial_id: str, result: dict) -> None:
        live = self.live.get(trial_id)
        if live is not None:  # the result a scheduler stopped the trial on never reached on_trial_result
            self._report(live, result)

    def _finish(self, trial_id: str, row: dict | None, why: str = "the trial never ran") -> None:
        live = self.live.pop(trial_id)
        live.cell.n_live -= 1
        studies.tell_row(live.cell, live.trial, row, self.metric_name, why_abandoned=why)
        if row is not None:
            self.rows[live.key] = row
        for cell in self.cells:
            for trial, key in [w for w in cell.waiting if w[1] == live.key]:
                cell.waiting.remove((trial, key))
                if row is None:
                    studies.tell_row(cell, trial, None, self.metric_name, why_abandoned="its configuration never ran")
                else:
                    self._copy(cell, trial, row)

    def close(self) -> None:
        """The Tuner returned (or was interrupted) with trials open: a trial whose row landed is told from it,
        the others FAIL as abandoned (not counted; a relaunch runs replacements)."""
        self.recorder.writer.flush()
        for trial_id in list(self.live):
            self._finish(trial_id, self.recorder.landed.get(trial_id), "the sweep stopped before the trial ended")

    def summary(self) -> str:
        n_done = sum(c.n_finished for c in self.cells)
        text = f"{len(self.cells)} Optuna studies, {n_done} finished trials in {studies.JOURNAL}"
        if self.recovered["from_row"] or self.recovered["abandoned"]:
            text += (f" ({self.recovered['from_row']} left running by a stopped driver finished from their rows, "
                     f"{self.recovered['abandoned']} marked FAIL as abandoned)")
        return text + (f"; {self.n_copies} repeated suggestions took an existing row's outcome" if self.n_copies
                       else "")
