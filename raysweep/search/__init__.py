"""Search modes: which configurations a sweep runs, in what order, and what stops them early.

- ``grid`` / ``random``: every planned bundle runs (Tune's ``grid_search`` over bundle ids); fusion applies.
- ``optuna``: one Optuna study per cell of the non-Optuna axes, in ``<sweep>/optuna.journal``
  (:mod:`raysweep.search.optuna_search`, :mod:`raysweep.search.studies`).
- ``eta_stability_depth`` / ``eta_decades_below_stable``: the study's eta-scan shortcuts
  (:mod:`raysweep.search.stability`).
- ``search.scheduler``: ASHA, asynchronous Hyperband, median stopping, one per cell: a trial is only ever compared
  with trials of its own cell (:mod:`raysweep.search.schedulers`).
- A finished sweep relaunched is a no-op, decided before Ray starts (:mod:`raysweep.search.remaining`).

Guided searches and schedulers need one Ray trial per configuration, so they run unfused whatever ``fusion``
says (:func:`planned_spec`). The launcher calls :func:`build_search` for the Tuner's arguments.
"""

from __future__ import annotations

import dataclasses

from raysweep.errors import RaysweepError
from raysweep.plan import run_order
from raysweep.search.cells import describe as describe_scheduler  # not schedulers: no Ray here
from raysweep.points import AXES, config_key

# Ray Tune loads when the Tuner's search is built, never for --dry-run

__all__ = ["build_search", "describe_search", "planned_spec"]


def planned_spec(spec):
    """``spec`` as it is planned: fusion off for guided searches and schedulers (one trial per configuration)."""
    if spec.search.unfused and spec.fusion.enabled:
        return dataclasses.replace(spec, fusion=dataclasses.replace(spec.fusion, enabled=False))
    return spec


def describe_search(spec, plan_text: str) -> str:
    """The ``--dry-run`` text: the plan's text, and what the search mode does with it."""
    s = spec.search
    lines = []
    if s.algorithm == "optuna":
        from raysweep.search import studies  # optuna: only for an Optuna search

        cells = studies.cell_grid(spec, _axes())
        varying = [a for a in _axes() if a not in s.optuna_axes and len(getattr(spec.space, a)) > 1]
        lines.append(f"sweep {spec.name}: Optuna search, {len(cells)} "
                     + (f"studies (one per cell of {' x '.join(varying)})" if varying else "study")
                     + f" x {s.n_trials} finished trials; configurations are chosen at run time")
        dists = studies.distributions(spec.space, s.optuna_axes)
        told = ("COMPLETE with the study's worst value" if s.diverged_as == "worst" else "FAIL (the sampler ignores "
                "them)")
        lines.append(f"optuna: sampler {s.sampler} (seed {s.seed}), {s.metric} ({s.direction}); diverged trials "
                     f"told as {told} (diverged_as: {s.diverged_as}); searches "
                     + "; ".join(f"{a} ~ {_show(d)}" for a, d in dists.items())
                     + f"; journal {spec.name}/{studies.JOURNAL}")
        try:
            studies.check_sampler(s.sampler)
        except RaysweepError as exc:
            lines.append(f"warning: {exc}")
        lines += [line for line in plan_text.splitlines()[1:] if line.startswith(("resources", "max concurrent"))]
    else:
        lines.append(plan_text)
        if s.guided:
            lines.append(f"{s.algorithm}: etas scanned from the largest down per column; "
                         + (f"a column stops after {s.stability_depth} consecutive stable etas"
                            if s.algorithm == "eta_stability_depth"
                            else f"a column stops {s.decades_below_stable:g} decades below its first stable eta")
                         + "; skipped configurations get no row (the count above is an upper bound)")
    lines.append(describe_scheduler(spec))
    if s.unfused:
        lines.append("fusion: ignored (guided searches and schedulers run one Ray trial per configuration)")
    return "\n".join(lines)


def _axes():
    return AXES


def _show(dist) -> str:
    if hasattr(dist, "choices"):
        return f"one of {list(dist.choices)}"
    return f"log-uniform [{dist.low:g}, {dist.high:g}]"


def build_search(spec, plan, recorder):
    """The Tuner's search arguments (:class:`~raysweep.search._base.SearchSetup`) for ``spec``.

    ``plan`` is the planned (see :func:`planned_spec`) plan of configurations without a row; ``recorder`` the
    driver's :class:`~raysweep.callbacks.ResultsCallback`, whose writer's folder holds the Parquet and journal.
    """
    from ray import tune

    from raysweep.results import read_curves, read_trials  # pyarrow: the launcher imports this package
    from raysweep.search._base import SearchSetup  # Ray: a Searcher subclass
    from raysweep.search.schedulers import build_scheduler  # Ray: Tune's schedulers

    scheduler = build_scheduler(spec, plan)
    n_planned = sum(len(b.points) for b in plan.bundles.values())
    if not spec.search.guided:
        return SearchSetup(plan, {"bundle": tune.grid_search(run_order(plan))}, scheduler=scheduler,
                           n_total=n_planned)
    sweep_dir = recorder.writer.sweep_dir
    rows = {r["config_key"]: r for r in read_trials(sweep_dir).to_pylist()}
    if spec.search.algorithm == "optuna":
        from raysweep.search import studies  # optuna
        from raysweep.search.optuna_search import OptunaStudies  # optuna and Ray: a Tune Searcher

        studies.check_sampler(spec.search.sampler)
        curves: dict[str, list[dict]] = {}
        for c in read_curves(sweep_dir).to_pylist():
            curves.setdefault(c["config_key"], []).append(c)
        searcher = OptunaStudies(spec, recorder, recorder.writer.local_dir, rows, curves)  # the journal needs POSIX
        plan = dataclasses.replace(plan, bundles={})  # configurations come from the studies at run time
        n_total = sum(max(0, c.wants()) for c in searcher.cells)
    else:
        from raysweep.search.stability import EtaScan  # Ray: a Tune Searcher

        experiment = spec.experiment.as_dict()
        keyed = [(config_key(experiment, p), p) for p in spec.points()]
        searcher = EtaScan(spec, plan, recorder, keyed, {k: r["status"] for k, r in rows.items()})
        n_total = n_planned
    return SearchSetup(plan, {}, searcher, scheduler, num_samples=-1, n_total=n_total, summary=searcher.summary)
