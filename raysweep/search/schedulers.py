"""Ray Tune schedulers that stop bad trials early: ASHA, asynchronous Hyperband and the median stopping rule.

Time is counted in optimizer steps (the ``step`` of every report), the value is ``search.metric`` in
``search.direction``. Defaults: ``grace_period`` = experiment.report_every (the first report), ``reduction_factor``
= 3, ``max_t`` = experiment.steps, Hyperband ``brackets`` = every bracket that fits between grace_period and max_t,
median ``min_samples_required`` = 3.

Divergence: a trial's diverged report carries no metric (see :mod:`raysweep.trial`), so no scheduler ever compares
NaN, Inf or an exploded loss; ASHA ignores a result without its metric. Ray's MedianStoppingRule does not: it keeps
the completed trial's last result and later reads its metric (KeyError), and it *pauses* trials while it has too
few samples. :class:`MedianStopping` drops metric-less results and never pauses (a paused raysweep trial would
restart from step 0: trials do not checkpoint mid-training). Hyperband is the asynchronous one for the same reason:
Ray's synchronous HyperBandScheduler pauses trials between rungs.
"""

from __future__ import annotations

import math

from ray.tune.schedulers import AsyncHyperBandScheduler, MedianStoppingRule, TrialScheduler

TIME_ATTR = "step"
DEFAULT_REDUCTION_FACTOR = 3.0
DEFAULT_MIN_SAMPLES = 3


class MedianStopping(MedianStoppingRule):
    """Ray's median stopping rule, hard stop only, that skips results without a finite metric and never pauses."""

    def on_trial_complete(self, tune_controller, trial, result):
        value = (result or {}).get(self._metric)
        if value is not None and math.isfinite(value):
            super().on_trial_complete(tune_controller, trial, result)

    def _on_insufficient_samples(self, tune_controller, trial, time):
        return TrialScheduler.CONTINUE


def n_brackets(grace_period: int, max_t: int, reduction_factor: float) -> int:
    """Hyperband's brackets: s = 0 .. floor(log_rf(max_t / grace_period)), at least one."""
    return max(1, int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1e-9) + 1)


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
    out.update(max_t=max_t, reduction_factor=rf, grace_period=min(grace, max_t))
    if sched.type == "hyperband":
        out["brackets"] = sched.brackets or n_brackets(out["grace_period"], max_t, rf)
    return out


def build_scheduler(spec):
    """The Tune scheduler of ``spec.search.scheduler``, or None."""
    s = settings(spec)
    if not s:
        return None
    common = {"time_attr": TIME_ATTR, "metric": s["metric"], "mode": s["mode"], "grace_period": s["grace_period"]}
    if s["type"] == "median":
        return MedianStopping(**common, min_samples_required=s["min_samples_required"], hard_stop=True)
    return AsyncHyperBandScheduler(**common, max_t=s["max_t"], reduction_factor=s["reduction_factor"],
                                   brackets=s.get("brackets", 1))


def describe(spec) -> str:
    s = settings(spec)
    if not s:
        return "scheduler: none"
    shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items() if k != "type")
    return f"scheduler: {s['type']} ({shown}); a stopped trial lands as pruned"
