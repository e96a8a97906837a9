"""Learning-rate schedules: the multiplier ``s(t)`` of every layer's rate at step ``t``, per member.

``t`` counts the steps already taken (0 at the first step), ``T`` is the run's total number of steps and ``W``
the warmup steps (``warmup_steps``, or ``round(warmup_fraction * T)``). The rate of step ``t`` is every layer's rule
(:mod:`raysweep.scaling`) times ``s(t)``: the formula torch.optim.lr_scheduler.LambdaLR applies with
``lr_lambda = lambda t: multiplier(...)`` and ``scheduler.step()`` after every ``optimizer.step()``.

- warmup (every schedule): ``s(t) = (t + 1) / W`` for ``t < W`` (linear, reaching 1 at the last warmup step);
- ``constant``: ``s(t) = 1``;
- ``cosine``: ``s(t) = f + (1 - f) (1 + cos(pi p)) / 2`` with ``p = (t - W) / (T - W)`` (warmup then cosine decay);
- ``linear``: ``s(t) = f + (1 - f) (1 - p)``;
- ``wsd`` (warmup-stable-decay): ``s(t) = 1`` up to the decay start ``S = max(W, T - round(decay_fraction * T))``,
  then ``s(t) = f + (1 - f) (1 - (t - S) / (T - S))``: a linear decay over the last ``decay_fraction`` of training.

``f = final_fraction``; the decays reach ``f`` at ``t = T`` (one step after the last), the convention of the
schedules in common libraries. Pure: numpy only; no Ray, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SCHEDULES = ("constant", "cosine", "linear", "wsd")
SCHEDULE_AXES = ("schedule", "warmup_steps", "warmup_fraction", "decay_fraction", "final_fraction")


def warmup_length(total_steps: int, warmup_steps: int = 0, warmup_fraction: float = 0.0) -> int:
    """``W``: ``warmup_steps``, or ``round(warmup_fraction * T)``, at most ``T``."""
    return min(total_steps, int(warmup_steps) or int(round(warmup_fraction * total_steps)))


def multipliers(t, total_steps: int, schedule: str = "constant", *, warmup_steps: int = 0,
                warmup_fraction: float = 0.0, decay_fraction: float = 0.2, final_fraction: float = 0.0) -> np.ndarray:
    """``s(t)`` of the module doc for an array of steps ``t`` (0-based) of a run of ``total_steps``, float64."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    t = np.asarray(t, dtype=np.float64)
    w = warmup_length(total_steps, warmup_steps, warmup_fraction)
    f = float(final_fraction)
    if schedule == "constant":
        after = np.ones_like(t)
    elif schedule == "wsd":
        start = max(w, total_steps - int(round(decay_fraction * total_steps)))
        after = np.where(t < start, 1.0, f + (1 - f) * (1 - (t - start) / max(1, total_steps - start)))
    else:
        p = (t - w) / max(1, total_steps - w)
        after = f + (1 - f) * 0.5 * (1 + np.cos(np.pi * p)) if schedule == "cosine" else f + (1 - f) * (1 - p)
    return np.where(t < w, (t + 1) / max(w, 1), after)


def multiplier(t: int, total_steps: int, schedule: str = "constant", **kwargs) -> float:
    """``s(t)`` at one step (the value :func:`multipliers` gives there, to the bit), e.g. for a LambdaLR."""
    return float(multipliers(np.array([t]), total_steps, schedule, **kwargs)[0])


def schedule_args(point: Mapping[str, Any]) -> dict:
    """The schedule keywords of :func:`multiplier` in ``point`` (the axes' defaults for those it lacks)."""
    defaults = {"schedule": "constant", "warmup_steps": 0, "warmup_fraction": 0.0, "decay_fraction": 0.2,
                "final_fraction": 0.0}  # raysweep.points.AXIS_DEFAULTS (this module imports no spec code)
    return {k: point.get(k, v) for k, v in defaults.items()}


def is_constant(point: Mapping[str, Any]) -> bool:
    """Whether ``point``'s multiplier is 1 at every step (constant, no warmup)."""
    args = schedule_args(point)
    return args["schedule"] == "constant" and not args["warmup_steps"] and not args["warmup_fraction"]


def table(points: Sequence[Mapping[str, Any]], total_steps: int, start: int, stop: int) -> np.ndarray:
    """The multipliers of steps ``start .. stop - 1`` (0-based) of every point, float64 ``[stop - start, K]``."""
    out = np.empty((stop - start, len(points)))
    steps = np.arange(start, stop)
    for k, p in enumerate(points):
        args = schedule_args(p)
        out[:, k] = multipliers(steps, total_steps, args.pop("schedule"), **args)
    return out
