"""The eta scans' rule as a pure function (no Ray): which etas of a column run next, and which are skipped.

See :mod:`raysweep.search.stability` for the two rules and the searcher that applies them; this module is what a
relaunch reads, before Ray starts, to decide that a finished scan has nothing left to run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

RUNNING = "running"
_REL = 1e-9  # eta * 10**-k is compared with this relative slack (10**-k is not exact in binary)


@dataclass(frozen=True)
class StabilityDepth:
    depth: int


@dataclass(frozen=True)
class DecadesBelowStable:
    decades: float


class Decision(NamedTuple):
    run: list[int]  # indices to start now
    skipped: list[int]  # indices the rule will never run (no row, not running)
    waiting: bool  # a running index decides what comes next


def scan_column(etas: list[float], status: list[str | None], rule) -> Decision:
    """What to do with one column. ``etas`` sorted from largest to smallest; ``status[i]`` is None (no row yet),
    ``"running"``, or the row's status. The column is done when ``run`` is empty and ``waiting`` is False."""
    n_stable = 0
    for i, s in enumerate(status):
        if s == RUNNING:
            return Decision([], [], True)
        if s is None:
            return Decision([i], [], False)
        n_stable = n_stable + 1 if s == "completed" else 0
        rest = range(i + 1, len(etas))
        if isinstance(rule, StabilityDepth) and n_stable >= rule.depth:
            return Decision([], [j for j in rest if status[j] is None], False)
        if isinstance(rule, DecadesBelowStable) and s == "completed":
            floor = etas[i] * 10.0 ** -rule.decades * (1 - _REL)
            keep = [j for j in rest if etas[j] >= floor]
            return Decision([j for j in keep if status[j] is None],
                            [j for j in rest if etas[j] < floor and status[j] is None],
                            any(status[j] == RUNNING for j in keep))
    return Decision([], [], False)


def rule_of(search):
    if search.algorithm == "eta_stability_depth":
        return StabilityDepth(search.stability_depth)
    return DecadesBelowStable(search.decades_below_stable)


def columns(keyed: list[tuple[str, dict]]) -> list[list[tuple[float, str]]]:
    """The columns of ``keyed`` ((config_key, point) pairs): points that share every axis but eta, each column
    as (eta, config_key) pairs from the largest eta to the smallest."""
    out: dict[tuple, list[tuple[float, str]]] = defaultdict(list)
    for key, point in keyed:
        out[tuple((k, v) for k, v in point.items() if k != "eta")].append((point["eta"], key))
    return [sorted(c, key=lambda ek: -ek[0]) for c in out.values()]
