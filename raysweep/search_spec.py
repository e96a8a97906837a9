"""The ``search:`` section of a search space: which configurations run, in what order, and what may stop them.

Read by ``raysweep.space`` (it re-exports :class:`Search` and :class:`Scheduler`); stdlib only, like
``raysweep.fields``, so a spec validates without Ray, Optuna or torch. What each algorithm does at run time lives
in :mod:`raysweep.search`.

Algorithms (``search.algorithm``):

- ``grid``: every point of the space. ``random``: ``n_samples`` distinct points drawn with ``seed``.
- ``optuna``: the axes in ``optuna_axes`` (default ``[eta]``) are searched by Optuna; every combination of the
  other axes is a *cell* with its own study of ``n_trials`` finished trials, sampled by ``sampler`` (tpe, gp,
  cmaes, qmc, random) seeded from ``seed``. A float axis is searched log-uniformly between its smallest and
  largest listed value; an integer or text axis is a choice among its listed values. ``diverged_as`` says what a
  diverged trial tells its study: ``worst`` (default) COMPLETE with a value no better than the worst finite value
  of the study so far nor than the trial's initial loss, so that the sampler learns where divergence lies;
  ``fail``: FAIL, which Optuna's samplers ignore (TPE keeps proposing the divergent region).
- ``eta_stability_depth``: per column (every axis but eta), etas run one at a time from the largest down; once
  ``stability_depth`` consecutive etas completed (did not diverge, fail or get pruned) the smaller ones are
  skipped.
- ``eta_decades_below_stable``: per column, etas run from the largest down until one completes (the first stable
  eta, eta_s); then the etas >= eta_s * 10**-decades_below_stable run and the smaller ones are skipped.

``metric`` (train_loss | eval_loss | eval_accuracy) and ``mode`` (min | max; default min for a loss, max for
accuracy) are what Optuna optimizes and schedulers compare, per report. ``scheduler`` may stop trials early (see
:class:`Scheduler`). Optuna, the eta scans and any scheduler need one Ray trial per configuration: they run
unfused whatever ``fusion`` says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from raysweep import fields as f

ALGORITHMS = ("grid", "random", "optuna", "eta_stability_depth", "eta_decades_below_stable")
GUIDED = ("optuna", "eta_stability_depth", "eta_decades_below_stable")
SAMPLERS = ("tpe", "gp", "cmaes", "qmc", "random")
SCHEDULERS = ("asha", "hyperband", "median", "hyperband_sync")
METRICS = ("train_loss", "eval_loss", "eval_accuracy")
MODES = ("min", "max")
DIVERGED_AS = ("worst", "fail")

_pos_int = lambda p, v: f.as_int(p, v, ge=1)  # noqa: E731
# Which algorithm owns each algorithm-specific field (the field must be null under the others).
_OWNER = {
    "n_samples": ("random",),
    "n_trials": ("optuna",),
    "sampler": ("optuna",),
    "optuna_axes": ("optuna",),
    "diverged_as": ("optuna",),
    "stability_depth": ("eta_stability_depth",),
    "decades_below_stable": ("eta_decades_below_stable",),
}
_WHAT = {
    "n_samples": "how many points to draw",
    "n_trials": "finished trials per study, i.e. per cell of the other axes",
    "stability_depth": "how many consecutive stable etas end a column's scan",
    "decades_below_stable": "how many decades below the first stable eta the scan goes on",
}


@dataclass(frozen=True, repr=False)
class Scheduler(f.ShortRepr):
    """Early stopping of trials by Ray Tune, on ``search.metric`` at every report; time is counted in steps.

    ``asha``: asynchronous successive halving; a trial that reaches a rung (``grace_period`` *
    ``reduction_factor``**k steps) with a value worse than the best 1/``reduction_factor`` of those recorded
    there is stopped. ``hyperband``: the same with ``brackets`` staggered brackets (asynchronous Hyperband).
    ``hyperband_sync``: Ray's synchronous HyperBandScheduler (Li et al.'s brackets: every trial of a rung waits,
    *paused*, for the rung to fill, then the best 1/``reduction_factor`` go on; time in reports, rungs at
    ``max_t / reduction_factor**s`` reports, no ``grace_period``): a paused trial resumes from the checkpoint its
    trial saves at every report (raysweep.checkpoint), so it needs checkpoints on. ``median``: stopped when
    its best value is worse than the median of the other trials' running means at the same step (after
    ``grace_period`` steps and ``min_samples_required`` other trials). ``max_t`` defaults to experiment.steps.
    A stopped trial lands with status ``pruned``; a diverged trial never reaches the scheduler's numbers.
    """

    type: str
    grace_period: int | None = None  # steps; default experiment.report_every (not hyperband_sync)
    reduction_factor: float | None = None  # asha, hyperband, hyperband_sync; default 3
    max_t: int | None = None  # asha, hyperband, hyperband_sync; steps, default experiment.steps
    brackets: int | None = None  # hyperband; default every bracket that fits between grace_period and max_t
    min_samples_required: int | None = None  # median; default 3

    def __post_init__(self):
        kind = f.as_choice("search.scheduler.type", self.type, SCHEDULERS)
        f.set_field(self, "type", kind)
        f.set_field(self, "grace_period", f.optional(_pos_int, "search.scheduler.grace_period", self.grace_period))
        f.set_field(self, "max_t", f.optional(_pos_int, "search.scheduler.max_t", self.max_t))
        rf = f.optional(f.as_float, "search.scheduler.reduction_factor", self.reduction_factor, gt=1)
        f.set_field(self, "reduction_factor", rf)
        f.set_field(self, "brackets", f.optional(_pos_int, "search.scheduler.brackets", self.brackets))
        n_min = f.optional(_pos_int, "search.scheduler.min_samples_required", self.min_samples_required)
        f.set_field(self, "min_samples_required", n_min)
        owners = {"reduction_factor": ("asha", "hyperband", "hyperband_sync"),
                  "max_t": ("asha", "hyperband", "hyperband_sync"), "brackets": ("hyperband",),
                  "min_samples_required": ("median",),
                  "grace_period": ("asha", "hyperband", "median")}  # fmt: skip
        for name, kinds in owners.items():
            if kind not in kinds and getattr(self, name) is not None:
                raise f.fail(f"search.scheduler.{name}", f"must be null for {kind} (it is a setting of "
                             f"{' and '.join(kinds)})", getattr(self, name))
        if self.max_t is not None and self.grace_period is not None and self.grace_period > self.max_t:
            raise f.fail("search.scheduler.grace_period", f"must be <= max_t ({self.max_t})", self.grace_period)

    def as_dict(self) -> dict:
        return {fld.name: getattr(self, fld.name) for fld in fields(self)}


def _scheduler(value) -> Scheduler | None:
    """``asha`` (a name) or ``{type: asha, grace_period: 40, ...}``; null for none."""
    if value is None or isinstance(value, Scheduler):
        return value
    if isinstance(value, str):
        return Scheduler(type=value)
    if not isinstance(value, Mapping):
        raise f.fail("search.scheduler", f"must be null, one of {', '.join(SCHEDULERS)} or a mapping", value)
    f.check_keys(value, [fld.name for fld in fields(Scheduler)], "search.scheduler")
    if "type" not in value:
        raise f.fail("search.scheduler.type", f"is required, one of {', '.join(SCHEDULERS)}", f.NOTHING)
    return Scheduler(**value)


@dataclass(frozen=True, repr=False)
class Search(f.ShortRepr):
    """Which points run and what may stop them early; see the module docstring for every algorithm."""

    algorithm: str = "grid"
    n_samples: int | None = None  # random: points to draw
    seed: int = 0  # random: the draw; optuna: the samplers
    max_concurrent: int | None = None
    n_trials: int | None = None  # optuna: finished trials per study (per cell)
    sampler: str | None = None  # optuna: tpe (default) | gp | cmaes | qmc | random
    optuna_axes: tuple[str, ...] | None = None  # optuna: axes Optuna searches, default (eta,)
    diverged_as: str | None = None  # optuna: worst (default) | fail, what a diverged trial tells its study
    metric: str = "train_loss"
    mode: str | None = None  # min | max; default from the metric
    stability_depth: int | None = None  # eta_stability_depth
    decades_below_stable: float | None = None  # eta_decades_below_stable
    scheduler: Scheduler | None = None

    def __post_init__(self):
        algorithm = f.as_choice("search.algorithm", self.algorithm, ALGORITHMS)
        f.set_field(self, "algorithm", algorithm)
        for name, owners in _OWNER.items():
            value = getattr(self, name)
            if algorithm not in owners and value is not None:
                raise f.fail(f"search.{name}", f"must be null for {algorithm} search (it is a setting of "
                             f"{' and '.join(owners)})", value)
            if algorithm in owners and value is None and name in _WHAT:
                raise f.fail(f"search.{name}", f"is required for {algorithm} search ({_WHAT[name]})", f.NOTHING)
        for name in ("n_samples", "n_trials", "stability_depth"):
            f.set_field(self, name, f.optional(_pos_int, f"search.{name}", getattr(self, name)))
        decades = f.optional(f.as_float, "search.decades_below_stable", self.decades_below_stable, ge=0)
        f.set_field(self, "decades_below_stable", decades)
        f.set_field(self, "seed", f.as_int("search.seed", self.seed, ge=0))
        f.set_field(self, "max_concurrent", f.optional(_pos_int, "search.max_concurrent", self.max_concurrent))
        f.set_field(self, "metric", f.as_choice("search.metric", self.metric, METRICS))
        f.set_field(self, "mode", None if self.mode is None else f.as_choice("search.mode", self.mode, MODES))
        f.set_field(self, "scheduler", _scheduler(self.scheduler))
        if algorithm == "optuna":
            f.set_field(self, "sampler", f.as_choice("search.sampler", self.sampler or "tpe", SAMPLERS))
            axes = ("eta",) if self.optuna_axes is None else self.optuna_axes
            f.set_field(self, "optuna_axes", _axis_names(axes))
            f.set_field(self, "diverged_as", f.as_choice("search.diverged_as", self.diverged_as or "worst",
                                                         DIVERGED_AS))

    @property
    def direction(self) -> str:
        """``mode``, or its default: max for eval_accuracy, min for a loss."""
        return self.mode or ("max" if self.metric == "eval_accuracy" else "min")

    @property
    def guided(self) -> bool:
        """True when results decide what runs next (Optuna, the eta scans)."""
        return self.algorithm in GUIDED

    @property
    def unfused(self) -> bool:
        """Guided searches and schedulers need one Ray trial per configuration."""
        return self.guided or self.scheduler is not None

    def as_dict(self) -> dict:
        """Plain values (YAML-ready); ``Search(**as_dict()) == self``."""
        out = {fld.name: getattr(self, fld.name) for fld in fields(self)}
        out["optuna_axes"] = None if self.optuna_axes is None else list(self.optuna_axes)
        out["scheduler"] = None if self.scheduler is None else self.scheduler.as_dict()
        return out


def _axis_names(value) -> tuple[str, ...]:
    """A name or a list of names, at least one, no repeats (which names exist is checked by :func:`check`)."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names:
        raise f.fail("search.optuna_axes", "must be an axis name or a non-empty list of them", value)
    out = []
    for i, name in enumerate(names):
        out.append(f.as_str(f"search.optuna_axes[{i}]", name))
    if len(set(out)) != len(out):
        raise f.fail("search.optuna_axes", "must not repeat an axis", list(out))
    return tuple(out)


def check(search: Search, space, experiment, axes: tuple[str, ...]) -> None:
    """The checks that need the other sections: Optuna axes exist, the metric suits the family, scheduler time."""
    if search.optuna_axes is not None:
        for i, name in enumerate(search.optuna_axes):
            if name not in axes:
                raise f.FieldError(f"search.optuna_axes[{i}]", f"unknown axis {name!r}{f.suggestion(name, axes)}; "
                                   f"axes: {', '.join(axes)}")
        if "mup_adam" in space.lr_rule and {"optimizer", "lr_rule"} & set(search.optuna_axes):
            raise f.fail("search.optuna_axes", "may not hold optimizer or lr_rule when space.lr_rule includes "
                         "mup_adam (an Adam-only rule: some suggestions would be invalid)", list(search.optuna_axes))
    if search.metric == "eval_accuracy" and experiment.kind == "regression":
        raise f.fail("search.metric", f"eval_accuracy needs a classification family, not {experiment.family}; "
                     "use train_loss or eval_loss", search.metric)
    sched = search.scheduler
    if sched is not None and sched.type != "median" and sched.max_t is None and experiment.steps is None:
        raise f.fail("search.scheduler.max_t", f"is required for {sched.type} when the experiment gives epochs "
                     "(steps per trial depend on batch_size): give the longest trial's steps", f.NOTHING)
