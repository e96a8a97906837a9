"""How the launcher uses autobatch: when to probe, and the sized plan it hands to Tune.

The probe runs (once per model shape and device; then from the cache) when the spec has an ``autobatch:``
section, when a ``batch_size`` is ``auto``, or when the cluster has real GPUs (Ray advertises an
``accelerator_type:*`` resource for them; logical ``num_gpus`` alone do not count) and the spec sets no
``resources.gpus_per_trial``. Otherwise trials keep the flat resources of ``resources:``.

An MLP sweep is sized from the fitted memory model (:func:`raysweep.autobatch.host.probe_and_fit`); a model
factory's by measuring its bundles' real training steps (:mod:`raysweep.autobatch.factory`), under the same
conditions, with the same resources, splits, ``auto`` resolution and infeasible handling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from raysweep.autobatch.factory import measure_and_size
from raysweep.autobatch.host import probe_and_fit
from raysweep.autobatch.sizing import plan_resources, raise_if_infeasible, split_to_fit
from raysweep.custom.spec import is_custom
from raysweep.plan import Bundle, bundle_id
from raysweep.space import AUTO
from raysweep.trial import failed_row


def has_real_gpus(cluster_resources: Mapping[str, float]) -> bool:
    return cluster_resources.get("GPU", 0) > 0 and any(k.startswith("accelerator_type:") for k in cluster_resources)


def wants_probe(spec, cluster_resources: Mapping[str, float]) -> bool:
    auto = AUTO in spec.space.batch_size
    gpus = has_real_gpus(cluster_resources) and spec.experiment.device != "cpu" and not spec.resources.gpus_per_trial
    return spec.autobatch is not None or auto or gpus


def size_plan(spec, plan, sweep_dir, *, log: Callable[[str], None] = print) -> tuple[Any, Callable, list[dict]]:
    """Probe (or read the cache), size every bundle, resolve ``batch_size: auto``.

    Returns the plan with resolved batch sizes and without infeasible bundles, a resources callable for
    ``tune.with_resources`` (``config -> {"gpu": share, "cpu": c}`` or ``{"cpu": c, "memory": bytes}``), and
    the trials rows to land as ``failed`` for configs that cannot fit even alone (``autobatch.infeasible: fail``;
    with ``refuse``, the default, :class:`~raysweep.errors.NothingFitsError` lists them and nothing starts).
    """
    if is_custom(spec.experiment.model):  # a model factory: its bundles' real steps are measured
        plan, sized = measure_and_size(spec, plan, sweep_dir, cuda=_cluster_has_real_gpus(), log=log)
    else:
        model = probe_and_fit(spec, config=spec.autobatch, storage=sweep_dir, log=log)
        plan = split_bundles(plan, model, spec.autobatch, log=log)
        sized = plan_resources(spec, list(plan.bundles.values()), device_info=model.device, model=model,
                               config=spec.autobatch, storage=sweep_dir)
    raise_if_infeasible(sized, spec.autobatch)
    failed = []
    for bad in sized["infeasible"]:
        bundle = plan.bundles[bad["id"]]
        for i in range(len(bundle.points)):
            failed.append(failed_row(plan, bundle, i, f"infeasible: {bad['reason']}"))
    bundles = {}
    for bid, bundle in plan.bundles.items():
        if bid not in sized["resources"]:  # infeasible (a swept batch size that cannot fit has a batch_size entry)
            continue
        size = sized["batch_size"][bid]
        points = tuple({**p, "batch_size": size} if p["batch_size"] == AUTO else p for p in bundle.points)
        bundles[bid] = Bundle(bid, bundle.keys, points)
    resources = sized["resources"]
    log(f"autobatch ({sized['label']} on {sized['device']['name']}): {len(bundles)} trials sized, "
        f"{len(sized['infeasible'])} infeasible; usable {sized['usable_bytes'] / 2**20:.0f} MiB")
    return replace(plan, bundles=bundles), (lambda config: resources[config["bundle"]]), failed


def _cluster_has_real_gpus() -> bool:
    import ray  # the connected cluster's resources (the launcher has started Ray before sizing)

    return ray.is_initialized() and has_real_gpus(ray.cluster_resources())


def split_bundles(plan, model, config, *, log: Callable[[str], None] = print):
    """The memory bound on bundle size: split every bundle whose members together exceed the usable memory into
    consecutive bundles that fit (:func:`raysweep.autobatch.sizing.split_to_fit`); the others are kept as they
    are (same ids)."""
    usable = model.usable_bytes(config.target_memory_fraction)
    bundles, n_split = {}, 0
    for bid, bundle in plan.bundles.items():
        chunks = split_to_fit(model, bundle.points, usable, experiment=plan.experiment,
                              min_batch_size=config.min_batch_size)
        if len(chunks) == 1:
            bundles[bid] = bundle
            continue
        n_split += 1
        start = 0
        for chunk in chunks:
            keys = bundle.keys[start:start + len(chunk)]
            start += len(chunk)
            bundles[bundle_id(keys)] = Bundle(bundle_id(keys), keys, tuple(chunk))
    if n_split:
        log(f"autobatch: {n_split} bundle(s) split to fit {usable / 2**20:.0f} MiB "
            f"({len(plan.bundles)} -> {len(bundles)} trials)")
    return replace(plan, bundles=bundles)
