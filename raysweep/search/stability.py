"""The study's eta-scan shortcuts: stop scanning a column of learning rates once it has shown what it needed to.

A *column* is every configuration that shares all axes but eta (one batch size, width, gamma, seed, ...). Its etas
are scanned from the largest to the smallest. A configuration is *stable* when its row says ``completed``;
``diverged``, ``failed`` and ``pruned`` are not stable.

- ``eta_stability_depth`` (:class:`StabilityDepth`): once ``depth`` consecutive etas were stable, the smaller etas
  of the column are skipped. Any unstable eta resets the count. Etas run one at a time per column (the next one
  depends on this one's outcome); columns run side by side.
- ``eta_decades_below_stable`` (:class:`DecadesBelowStable`): etas run one at a time until the first stable one,
  eta_s; then every eta >= eta_s * 10**-decades runs (at once) and the smaller ones are skipped.

Skipped configurations get no row. A configuration that already has a row (a relaunch, an earlier grid) is not
run again: its status counts as if it had just run, so a relaunch finishes the scan exactly where the rule says.
:func:`~raysweep.search.scan.scan_column` is the rule, a pure function (:mod:`raysweep.search.scan`, no Ray);
:class:`EtaScan` is the Tune searcher that applies it.
"""

from __future__ import annotations

from ray.tune.search import Searcher

from raysweep.search._base import DriverSearcher
from raysweep.search.scan import (RUNNING, DecadesBelowStable, Decision, StabilityDepth, columns, rule_of,
                                  scan_column)

__all__ = ["DecadesBelowStable", "EtaScan", "StabilityDepth", "scan_column"]

class EtaScan(DriverSearcher):
    """Releases the plan's one-configuration bundles column by column in scan order, as :func:`scan_column` says.

    ``keyed`` is every configuration of the space as (config_key, point); ``known`` maps config keys that already
    have a row to their status; the plan holds a bundle for each of the others.
    """

    def __init__(self, spec, plan, recorder, keyed: list[tuple[str, dict]], known: dict[str, str]):
        super().__init__(recorder)
        self.rule = rule_of(spec.search)
        self.status: dict[str, str] = dict(known)
        self.bundle_of_key = {b.keys[0]: bid for bid, b in plan.bundles.items()}
        self.columns = columns(keyed)
        self.live: dict[str, str] = {}  # Tune trial id -> config key
        self._next = 0  # round robin over columns, so that they advance side by side

    def _decide(self, column) -> Decision:
        return scan_column([e for e, _ in column], [self.status.get(k) for _, k in column], self.rule)

    def _suggest(self, trial_id: str):
        for turn in range(len(self.columns)):
            column = self.columns[(self._next + turn) % len(self.columns)]
            for i in self._decide(column).run:
                key = column[i][1]
                if key in self.bundle_of_key:
                    self._next = (self._next + turn + 1) % len(self.columns)
                    self.status[key] = RUNNING
                    self.live[trial_id] = key
                    return {"bundle": self.bundle_of_key[key]}
        return None if self.live else Searcher.FINISHED

    def _finish(self, trial_id: str, row: dict | None) -> None:
        key = self.live.pop(trial_id)
        if row is None:
            del self.status[key]  # never ran: the rule may release it again
        else:
            self.status[key] = row["status"]

    def n_skipped(self) -> int:
        return sum(len(self._decide(c).skipped) for c in self.columns)

    def summary(self) -> str:
        name = "eta_stability_depth" if isinstance(self.rule, StabilityDepth) else "eta_decades_below_stable"
        return f"{self.n_skipped()} configurations skipped by the {name} rule (no row)"
