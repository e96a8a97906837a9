"""What a search mode hands the launcher, and the base of raysweep's own Ray Tune searchers.

The launcher builds one Tuner from a :class:`SearchSetup`: ``param_space``, ``searcher`` (a Tune Searcher or
None), ``scheduler`` (or None), ``num_samples``. Grid and random searches are a ``grid_search`` over the plan's
bundle ids, exactly as before guided searches existed.

Our searchers (:class:`DriverSearcher`) keep Optuna's and the eta scans' meaning by reading outcomes from the rows
that land in Parquet, never from Tune's flags: when Tune completes a trial the searcher asks the
:class:`~raysweep.callbacks.ResultsCallback` to :meth:`~raysweep.callbacks.ResultsCallback.settle` it, which
lands (and flushes) the row first, a scheduler-stopped trial as ``pruned``. The row's status is the outcome:

- ``completed``: finished its steps;  ``pruned``: stopped by the scheduler;
- ``diverged``: stopped itself on a NaN/Inf or exploded loss;  ``failed``: raised, or its worker was lost;
- no row: the trial never ran (Tune removed it, or the driver stopped first); it is abandoned, not counted.

Their state lives in the journal and in Parquet, so a relaunch rebuilds them; Tune's experiment checkpoints
(which Tune pickles) skip them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher

from raysweep.plan import Plan, bundle_id


@dataclass
class SearchSetup:
    """The Tuner's search arguments for one sweep, and the lines the summary adds."""

    plan: Plan
    param_space: dict
    searcher: Searcher | None = None
    scheduler: Any = None
    num_samples: int = 1
    n_total: int = 0  # what the progress line counts towards (an upper bound for the eta scans)
    summary: Callable[[], str] = field(default=lambda: "")


class DriverSearcher(Searcher):
    """A Tune Searcher whose state is the journal and the Parquet rows: nothing to pickle or checkpoint.

    ``suggest`` returns a Tune config, None while it waits for a result (only when a trial is in flight), or
    :data:`Searcher.FINISHED`. Subclasses implement ``_suggest`` and ``_finish(trial_id, row)``, where ``row``
    is the trials row the configuration landed with (None: it never ran).
    """

    def __init__(self, recorder):
        super().__init__(metric=None, mode=None)  # no Tune-level metric: outcomes come from the rows
        self.recorder = recorder
        self.configs: dict[str, dict] = {}  # Tune trial id -> the config suggested for it

    def suggest(self, trial_id: str):
        config = self._suggest(trial_id)
        if isinstance(config, dict):
            self.configs[trial_id] = config
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        config = self.configs.pop(trial_id, None)
        if config is None:
            return
        self._before_settle(trial_id, result or {})
        row = self.recorder.settle(trial_id, config, error=error)
        self._finish(trial_id, row)

    def _before_settle(self, trial_id: str, result: dict) -> None:
        """Hook: see the trial's last result (the one a scheduler stopped it on) before the row lands."""

    def _suggest(self, trial_id: str):
        raise NotImplementedError

    def _finish(self, trial_id: str, row: dict | None) -> None:
        raise NotImplementedError

    def summary(self) -> str:
        return ""

    def close(self) -> None:
        """Called once after the Tuner returns (or raised): settle what is still open."""

    # Tune pickles its search algorithm into the (temporary) experiment folder; ours lives on the driver only.
    def __getstate__(self):
        return {}

    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


def bundle_config(key: str, point: dict) -> dict:
    """The Tune config of one configuration chosen at run time (see :func:`raysweep.trial.bundle_of`)."""
    return {"bundle": bundle_id((key,)), "key": key, "point": dict(point)}
