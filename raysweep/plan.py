"""From a validated spec to the trials to run: pending configurations, fused bundles, resources, the dry-run text.

Pure planning: no Ray, no torch. A configuration that already has a trials row (``done``) is not planned again;
that is how a relaunch resumes and how a larger space runs only its new points.

Bundles: configurations that share :data:`raysweep.points.BUNDLE_KEYS` (batch size, width, depth,
parametrization, optimizer, loss, lr rule) train as one stacked model, at most ``fusion.max_members`` at a time.
``fusion: {enabled: false}`` gives one trial per configuration.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from raysweep import families
from raysweep._version import __version__
from raysweep.autobatch.config import AutobatchConfig
from raysweep.autobatch.device import cpu_device_info
from raysweep.autobatch.sizing import plan_resources
from raysweep.custom.spec import is_custom
from raysweep.errors import NoCachedModelError, RaysweepError
from raysweep.points import AXES, AXIS_DEFAULTS, BUNDLE_KEYS, axis_value, bundle_key, config_keys
from raysweep.space import AUTO, Experiment, SweepSpec, setting


@dataclass(frozen=True)
class Bundle:
    """Configurations that train as one Ray trial: their keys and points (dicts of the axis values)."""

    bundle_id: str
    keys: tuple[str, ...]
    points: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Plan:
    """What every trial needs: the sweep name, the typed :class:`~raysweep.space.Experiment` (a flat experiment
    mapping given here is read into one) and the bundles by id."""

    sweep: str
    experiment: Experiment
    bundles: Mapping[str, Bundle]
    cpus_per_trial: float = 1.0
    version: str = ""
    # mid-trial checkpoints (raysweep.checkpoint): {"every_s", "every_steps"} or None (off)
    checkpoint: Mapping[str, Any] | None = None
    # the sweep folder (a raysweep.storage.Location) trials write their checkpoints and snapshots under; set by the
    # driver (None: neither is written)
    location: Any = None

    def __post_init__(self):
        if not isinstance(self.experiment, Experiment):
            object.__setattr__(self, "experiment", Experiment.from_dict(self.experiment))


def bundle_id(keys: tuple[str, ...]) -> str:
    return "b" + hashlib.sha256(",".join(keys).encode()).hexdigest()[:12]


def make_bundles(keyed: list[tuple[str, dict]], *, fused: bool, max_members: int) -> list[Bundle]:
    """Group ``(config_key, point)`` pairs into bundles, keeping the spec's order within and across groups."""
    groups: dict[tuple, list[tuple[str, dict]]] = defaultdict(list)
    for i, (key, point) in enumerate(keyed):
        groups[bundle_key(point) if fused else (i,)].append((key, point))
    bundles = []
    for members in groups.values():
        for start in range(0, len(members), max_members if fused else 1):
            chunk = members[start : start + (max_members if fused else 1)]
            keys = tuple(k for k, _ in chunk)
            bundles.append(Bundle(bundle_id(keys), keys, tuple(p for _, p in chunk)))
    return bundles


def build_plan(spec: SweepSpec, done: Collection[str] = ()) -> tuple[Plan, int]:
    """The plan of the configurations without a row yet, and how many already have one."""
    experiment = spec.experiment
    points = spec.points()
    keyed = list(zip(config_keys(experiment.as_dict(), points), points))
    pending = [(k, p) for k, p in keyed if k not in done]
    bundles = make_bundles(pending, fused=spec.fusion.enabled, max_members=spec.fusion.max_members)
    if experiment.params.get("path"):  # workers may run in another folder; the key keeps the path as given
        path = os.path.abspath(os.path.expanduser(experiment.params["path"]))
        experiment = replace(experiment, params={**experiment.params, "path": path})
    plan = Plan(
        sweep=spec.name,
        experiment=experiment,
        bundles={b.bundle_id: b for b in bundles},
        cpus_per_trial=spec.resources.cpus_per_trial,
        version=__version__,
        checkpoint=checkpoint_every(spec),
    )
    return plan, len(keyed) - len(pending)


def checkpoint_every(spec: SweepSpec) -> dict | None:
    """When a running trial saves a checkpoint (raysweep.checkpoint): the spec's ``checkpoint`` section, or at
    every report under the synchronous Hyperband scheduler, whose paused trials resume from the report where they
    paused; None when off."""
    if not spec.checkpoint.enabled:
        return None
    if spec.search.scheduler is not None and spec.search.scheduler.type == "hyperband_sync":
        return {"every_s": None, "every_steps": spec.experiment.report_every}
    return {"every_s": spec.checkpoint.every_s, "every_steps": spec.checkpoint.every_steps}


STEP_OVERHEAD_FLOP = 2e6  # a step's fixed cost (kernel launches, Python) in FLOP-equivalents on a CPU core


def bundle_cost(experiment: Experiment | Mapping[str, Any], bundle: Bundle) -> float:
    """A bundle's training cost in FLOP-equivalents, for ordering: ``steps * (overhead + 6 K B P)`` with ``K``
    members of ``P`` weights at batch size ``B`` (forward and backward ~ 6 FLOP per weight per sample)."""
    p = bundle.points[0]
    b = 1 if p["batch_size"] == AUTO else int(p["batch_size"])
    dim, n_out = families.shape(experiment)
    widths = [dim] + [int(p["width"])] * (int(p["depth"]) - 1) + [n_out]
    params = sum(a * c for a, c in zip(widths[:-1], widths[1:]))
    if setting(experiment, "steps"):
        steps = int(setting(experiment, "steps"))
    else:  # an epoch budget on a fixed data set (file data sets: an upper bound of their size)
        steps = int(setting(experiment, "epochs") or 1) * max(1, families.n_train(experiment) // b)
    return steps * (STEP_OVERHEAD_FLOP + 6.0 * len(bundle.points) * b * params)


def run_order(plan: Plan) -> list[str]:
    """Bundle ids, the costliest first (:func:`bundle_cost`): the longest trials start at once and the short ones
    fill the gaps, so the last trial to finish is a short one (longest-processing-time-first scheduling)."""
    cost = {bid: bundle_cost(plan.experiment, b) for bid, b in plan.bundles.items()}
    return sorted(plan.bundles, key=lambda bid: -cost[bid])


def resources_per_trial(spec: SweepSpec, *, cuda: bool) -> dict[str, float]:
    """What each Ray trial asks for. Without CUDA trials ask for CPU only (the plan says so)."""
    res = {"cpu": spec.resources.cpus_per_trial}
    if cuda and spec.resources.gpus_per_trial:
        res["gpu"] = spec.resources.gpus_per_trial
    return res


_RAY_NAMES = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}


def unfit_resources(requests: list[dict[str, float]], nodes: list[dict[str, float]]) -> str | None:
    """Why some trial's resources fit no node (``requests``: ``{"cpu": c, "gpu": g, "memory": bytes}`` per trial;
    ``nodes``: each node's Ray resources, ``{"CPU": ..., "GPU": ..., "memory": ...}``), or None when each request
    fits some node."""
    for request in requests:
        if any(all(node.get(_RAY_NAMES.get(k, k), 0.0) >= v for k, v in request.items() if v) for node in nodes):
            continue
        for key, value in request.items():
            largest = max((node.get(_RAY_NAMES.get(key, key), 0.0) for node in nodes), default=0.0)
            if value and value > largest:
                what = {"cpu": "resources.cpus_per_trial", "gpu": "resources.gpus_per_trial"}.get(key, key)
                return f"{what}: a trial asks for {_amount(key, value)} but the largest node has {_amount(key, largest)}"
        asked = ", ".join(_amount(k, v) for k, v in request.items() if v)
        return f"a trial asks for {asked}, which no single node holds at once"
    return None


def _amount(key: str, value: float) -> str:
    return f"{value / 2**30:.2f} GiB of memory" if key == "memory" else f"{value:g} {_RAY_NAMES.get(key, key)}"


def describe(spec: SweepSpec, plan: Plan, n_done: int, *, cuda: bool, storage=None) -> str:
    """The ``--dry-run`` text: counts, bundles and the resource plan.

    ``storage``: the sweep's local folder (where ``autobatch_cache.json`` lives); with it, a spec sized by autobatch
    shows the per-trial resources of the cached model of this machine's CPU, if there is one (never touches CUDA).
    """
    n_pending = sum(len(b.points) for b in plan.bundles.values())
    res = resources_per_trial(spec, cuda=cuda)
    sizes = sorted(len(b.points) for b in plan.bundles.values())
    lines = [
        f"sweep {spec.name}: {n_pending + n_done} configurations, {n_done} already have a row, {n_pending} to run",
        f"search: {spec.search.algorithm}; fusion: {'on' if spec.fusion.enabled else 'off'}"
        f" (max {spec.fusion.max_members} members); {len(plan.bundles)} Ray trials"
        + (f", members per trial {sizes[0]}..{sizes[-1]}" if sizes else ""),
        "resources per trial: " + ", ".join(f"{k}={v:g}" for k, v in res.items())
        + ("" if "gpu" in res else " (no CUDA here or no gpus_per_trial: trials run on CPU)"),
        f"max concurrent trials: {spec.search.max_concurrent or 'as many as resources allow'}",
    ]
    guided = spec.search.guided  # a searcher picks the trials at run time
    order = list(plan.bundles) if guided else run_order(plan)
    if plan.bundles and not guided:
        lines.append("trials, costliest first (the order they start in):")
    for b in [plan.bundles[bid] for bid in order[:20]]:
        p = b.points[0]
        shape = " ".join(f"{k}={p[k]}" for k in BUNDLE_KEYS)
        lines.append(f"  {b.bundle_id}: {len(b.points)} x [{shape}] " + " ".join(
            f"{k}={v if len(v) > 1 else v[0]}" for k, v in member_axes(b.points).items()))
    if len(plan.bundles) > 20:
        lines.append(f"  ... and {len(plan.bundles) - 20} more trials")
    lines += autobatch_lines(spec, plan, cuda=cuda, storage=storage)
    return "\n".join(lines)


def member_axes(points) -> dict[str, list]:
    """What a dry-run line shows of a bundle's members beside its shape: eta, gamma and seed, and every other axis
    that varies across the members or is off its default (momentum, betas, weight decay, the schedule, ...), each
    as its sorted distinct values."""
    shown = {}
    for k in AXES:
        if k in BUNDLE_KEYS or not any(k in q for q in points):
            continue
        values = sorted({axis_value(q, k) for q in points}, key=lambda v: (str(type(v)), v))
        if k in ("eta", "gamma", "seed") or len(values) > 1 or values[0] != AXIS_DEFAULTS.get(k, values[0]):
            shown[k] = values
    return shown


def autobatch_lines(spec: SweepSpec, plan: Plan, *, cuda: bool, storage=None, limit: int = 20) -> list[str]:
    """What autobatch will do at launch, for a spec with an ``autobatch:`` section or a ``batch_size: auto``; with a
    cached memory model of this machine's CPU in ``storage``, the resources and batch sizes it gives every trial
    (:func:`raysweep.autobatch.plan_resources`). Empty for other specs."""
    auto = AUTO in spec.space.batch_size
    if spec.autobatch is None and not auto:
        return []
    config = spec.autobatch or AutobatchConfig()
    lines = [
        f"autobatch: trials are sized by autobatch at launch (target memory fraction "
        f"{config.target_memory_fraction:g}, infeasible: {config.infeasible}"
        + (f", batch_size: auto = the largest {config.batch_grid} batch in [{config.min_batch_size}, "
           f"{config.max_batch_size}] that fits" if auto else "")
        + "): a GPU share per trial (or CPU memory without CUDA) replaces the resources above; a bundle "
        "whose members together exceed the usable memory is split into bundles that fit"
    ]
    if is_custom(spec.experiment.model):
        lines.append("autobatch: a model factory's bundles are measured at launch (real steps of the training "
                     "step, one fresh process per shape and size; then cached in the sweep folder)")
        return lines
    if spec.experiment.device == "cuda" or (cuda and spec.experiment.device != "cpu"):
        lines.append("autobatch: the probe measures the GPU at launch (then cached); the dry run never touches CUDA")
        return lines
    if storage is None:
        return lines
    info = cpu_device_info()
    try:
        sized = plan_resources(spec, list(plan.bundles.values()), device_info=info, config=config, storage=storage)
    except NoCachedModelError:
        lines.append(f"autobatch: no cached memory model of this machine's CPU ({info.name}) in {storage}: the probe "
                     "runs at launch, then the model is cached there")
        return lines
    except RaysweepError as exc:
        lines.append(f"autobatch: the cached memory model cannot size this space: {exc}")
        return lines
    lines.append(f"autobatch plan from the cached {sized['label']} model of {info.name}: {len(sized['resources'])} "
                 f"trials sized, {len(sized['infeasible'])} infeasible; usable {sized['usable_bytes'] / 2**20:.0f} MiB")
    return lines + sized_lines(plan.bundles, sized, config, limit=limit)


def sized_lines(bundles: Mapping[str, Bundle], sized: Mapping[str, Any], config, *, limit: int = 20) -> list[str]:
    """One ``--dry-run`` line per trial of a sizing (:func:`raysweep.autobatch.plan_resources`'s, or a model
    factory's measured one): its resources and batch size, or why it cannot run."""
    lines = []
    bad = {b["id"]: b for b in sized["infeasible"]}
    for bid, bundle in list(bundles.items())[:limit]:
        if bid in bad:
            lines.append(f"  {bid}: infeasible ({'refused' if config.infeasible == 'refuse' else 'lands as failed'}):"
                         f" {bad[bid]['reason']}")
            continue
        res = sized["resources"][bid]
        shown = ", ".join(f"memory={v / 2**20:.0f} MiB" if k == "memory" else f"{k}={v:g}" for k, v in res.items())
        auto_note = " (auto)" if bundle.points[0]["batch_size"] == AUTO else ""
        lines.append(f"  {bid}: {shown}; batch_size={sized['batch_size'][bid]}{auto_note}")
    if len(bundles) > limit:
        lines.append(f"  ... and {len(bundles) - limit} more trials")
    return lines
