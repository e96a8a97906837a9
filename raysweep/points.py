"""A point of a sweep: its axes and their defaults, which update path and fused bundle it takes, whether an
optimizer reads all of it, and its config key. Pure (stdlib); :mod:`raysweep.space` builds the points of a spec.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from raysweep import fields as f
from raysweep.scaling import ADAM_OPTIMIZERS

__all__ = ["AXES", "AXIS_DEFAULTS", "BUNDLE_KEYS", "COUPLED_AXES", "axis_value", "bundle_key", "compatible",
           "config_key", "config_keys", "hashed_point", "update_path"]

# The optimizer and schedule axes and their defaults. A point whose value of one of them is its default hashes as if
# the axis did not exist (config_key), so sweeps from before these axes keep their keys.
AXIS_DEFAULTS: dict[str, Any] = {
    "momentum": 0.0, "nesterov": False, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "eps_scaling": "global",
    "weight_decay": 0.0, "weight_decay_scaling": "lr", "schedule": "constant", "warmup_steps": 0,
    "warmup_fraction": 0.0, "decay_fraction": 0.2, "final_fraction": 0.0,
}
AXES = ("batch_size", "eta", "width", "gamma", "depth", "seed", "parametrization", "optimizer", "loss", "lr_rule",
        *AXIS_DEFAULTS)
# Configurations that agree on these axes can train as one fused bundle (same data order and shapes).
BUNDLE_KEYS = ("batch_size", "width", "depth", "parametrization", "optimizer", "loss", "lr_rule")
# the axes compatible() reads: the grid counts their product point by point
COUPLED_AXES = ("lr_rule", "optimizer", "momentum", "nesterov", "beta1", "beta2", "eps", "eps_scaling")


def axis_value(point: Mapping[str, Any], axis: str) -> Any:
    """``point[axis]``, or the axis's default (:data:`AXIS_DEFAULTS`) for a point written without it."""
    return point[axis] if axis in point else AXIS_DEFAULTS[axis]


def hashed_point(point: Mapping[str, Any]) -> dict:
    """What :func:`config_key` hashes of a point: every axis except the optimizer and schedule axes at their
    defaults, so that the keys of sweeps from before those axes do not change."""
    return {k: v for k, v in point.items() if not (k in AXIS_DEFAULTS and v == AXIS_DEFAULTS[k]
                                                   and type(v) is type(AXIS_DEFAULTS[k]))}


def update_path(point: Mapping[str, Any]) -> str:
    """How a point's optimizer step runs (:mod:`raysweep.step`): ``sgd`` (plain SGD, the update fused into the
    backward), ``adam`` (Adam at torch's defaults: betas 0.9, 0.999, eps 1e-8, no weight decay) or ``general``
    (per-member momentum, betas, eps and weight decay). A schedule runs on every path."""
    opt = point["optimizer"]
    plain = axis_value(point, "weight_decay") == 0
    if opt == "SGD" and plain and axis_value(point, "momentum") == 0:
        return "sgd"
    if opt == "Adam" and plain and all(axis_value(point, a) == AXIS_DEFAULTS[a]
                                       for a in ("beta1", "beta2", "eps", "eps_scaling")):
        return "adam"
    return "general"


def bundle_key(point: Mapping[str, Any]) -> tuple:
    """Configs with equal keys can train as one fused bundle: :data:`BUNDLE_KEYS` and the :func:`update_path`
    (so that a member takes the same path alone and in any bundle: its numbers do not depend on its bundle)."""
    return (*(point[k] for k in BUNDLE_KEYS), update_path(point))


def compatible(point: Mapping) -> bool:
    """Whether the optimizer reads every axis of ``point`` (a grid skips the other points, see the module doc):
    mup_adam is a rule for Adam and AdamW; nesterov needs a momentum; SGD reads no beta or eps, Adam no momentum."""
    opt = point["optimizer"]
    if point["lr_rule"] == "mup_adam" and opt not in ADAM_OPTIMIZERS:
        return False
    if axis_value(point, "nesterov") and axis_value(point, "momentum") == 0:
        return False
    unread = ("beta1", "beta2", "eps", "eps_scaling") if opt == "SGD" else ("momentum", "nesterov")
    return all(axis_value(point, a) == AXIS_DEFAULTS[a] for a in unread)


def config_key(experiment_dict: Mapping, point: Mapping) -> str:
    """A stable 16-hex-digit key of one trial configuration: the experiment mapping plus the point (less the
    optimizer and schedule axes at their defaults: :func:`hashed_point`).

    sha256 of canonical JSON (sorted keys, no spaces, ints as ints, floats as their shortest repr, tuples as
    lists), so the same configuration gets the same key in every process and Python version, and any change
    of a value (1 vs 1.0 included) gives another key.
    """
    text = f.canonical_json({"experiment": experiment_dict, "point": hashed_point(point)})
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def config_keys(experiment_dict: Mapping, points: Iterable[Mapping]) -> list[str]:
    """``[config_key(experiment_dict, p) for p in points]``, encoding the experiment once."""
    experiment_text = f.canonical_json(experiment_dict)
    return [
        hashlib.sha256(f.canonical_pair_json("experiment", experiment_text, "point", hashed_point(p))
                       .encode("ascii")).hexdigest()[:16]
        for p in points
    ]
