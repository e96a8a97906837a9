"""Sizing: from a fitted :class:`MemoryModel` to what each trial asks Ray for. Pure: no torch, no CUDA, no Ray.

A trial (a bundle of K members at batch size B) needs, in bytes::

    need = context + data + noise + curvature + max(M_train(N, L, B, K) * (1 + margin_train),
                                        M_val(N, L, n_eval, K) * (1 + margin_val),
                                        M_val(N, L, n_f0, K) * (1 + margin_val))

``M_val`` is evaluated at the eval set size (a trial evaluates the whole eval set in one no-grad forward) and at
``n_f0`` (:func:`f0_pass_size`: ``raysweep.train`` computes ``f(x; theta_0)`` of a whole online block, or of the
whole training set when that cache is small enough, in one no-grad forward); both are left out when the model has
no eval fit. ``data`` (:func:`data_bytes`) is the task's tensors on the trial's device:
training set (or one online block per data stream), eval set and the cached ``f(x; theta_0)``; exact from the
spec for synthetic families, an upper bound for file data sets (the registry's, :mod:`raysweep.families`).
``noise`` (:func:`noise_bytes`) is 0 unless ``experiment.grad_noise_scale`` is on, ``curvature``
(:func:`curvature_bytes`) unless ``experiment.curvature`` is on.

- CUDA: ``gpu = need / usable``, rounded *up* to a multiple of 0.01, where ``usable = target_memory_fraction *
  available`` (global free memory at probe time); a trial whose share exceeds 1.0 cannot fit even alone.
- CPU (``cpu-rss``): ``{"cpu": cpus_per_trial, "memory": need}`` (Ray's ``memory`` resource, in bytes); a trial
  whose need exceeds ``usable`` cannot fit even alone.

A swept ``batch_size`` is never changed: the share is sized for it. ``batch_size: "auto"`` takes the largest grid
batch whose need fits ``usable`` (:func:`raysweep.autobatch.search.largest_under_budget`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from raysweep import families
from raysweep.autobatch.cache import ModelCache, cache_key
from raysweep.autobatch.config import MODES, AutobatchConfig
from raysweep.autobatch.memory import ITEMSIZE, MemoryModel, memory_optimizer, n_params
from raysweep.autobatch.probe import ProbeRequest, floor_batch
from raysweep.autobatch.search import SearchResult, largest_under_budget
from raysweep.errors import NoCachedModelError, NothingFitsError, RaysweepError
from raysweep.families import n_eval
from raysweep.limits import F0_CACHE_BYTES
from raysweep.instrument_spec import curvature_option, grad_noise_option
from raysweep.points import BUNDLE_KEYS, config_key
from raysweep.space import AUTO, Experiment, setting

SHARE_GRID = 0.01
ExperimentLike = Experiment | Mapping[str, Any]  # the typed Experiment, or a flat experiment mapping


def gpu_share(need_bytes: float, usable_bytes: float, *, grid: float = SHARE_GRID) -> float:
    """``need / usable`` rounded up to a multiple of ``grid`` (at least one step). Above 1.0: does not fit alone."""
    if usable_bytes <= 0:
        raise ValueError(f"usable_bytes must be > 0, got {usable_bytes}")
    steps = max(1, math.ceil(need_bytes / usable_bytes / grid - 1e-9))
    return round(steps * grid, 10)


def max_concurrent_per_gpu(shares: Sequence[float] | float) -> int:
    """How many trials one GPU runs at once: ``floor(1 / share)`` for one share; for a list, how many of them a
    first-fit in the given order packs into one GPU (Ray packs fractional GPUs per device)."""
    if isinstance(shares, (int, float)):
        return math.floor(1 / shares + 1e-9)
    used, n = 0.0, 0
    for s in shares:
        if used + s <= 1 + 1e-9:
            used += s
            n += 1
    return n


def _n_train(experiment: ExperimentLike, batch_size: int) -> tuple[int, bool]:
    """Training samples on the device (an online block holds at least one batch) and whether they are online."""
    n, online = families.n_train(experiment), families.is_online(experiment)
    return (max(n, batch_size) if online else n), online


def f0_pass_size(experiment: ExperimentLike, *, n_members: int = 1, batch_size: int = 1) -> int:
    """Samples in the trainer's one-shot ``f(x; theta_0)`` forward: the online block, or the training set when its
    cache fits :data:`F0_CACHE_BYTES` (else 0: f0 is computed per batch, inside the measured step)."""
    n_train, online = _n_train(experiment, batch_size)
    if online:
        return n_train
    n_out = families.shape(experiment)[1]
    cached = n_members * n_train * n_out * ITEMSIZE[setting(experiment, "dtype")] <= F0_CACHE_BYTES
    return n_train if cached else 0


def data_bytes(experiment: ExperimentLike, *, n_members: int = 1, batch_size: int = 1, n_streams: int = 1) -> int:
    """The task's tensors on a trial's device (see the module docstring); ``n_streams`` = distinct seeds."""
    s = ITEMSIZE[setting(experiment, "dtype")]
    dim, n_out = families.shape(experiment)
    classification = families.get(setting(experiment, "family")).kind == "classification"
    per_sample = dim * s + (8 + n_out * s if classification else n_out * s)  # labels (+ one-hot targets)
    n_train, online = _n_train(experiment, batch_size)
    train = (n_streams if online else 1) * n_train * per_sample
    f0 = n_members * n_train * n_out * s
    if not online and f0 > F0_CACHE_BYTES:
        f0 = 0  # not cached: computed per batch (counted in the per-sample activations)
    ne = n_eval(experiment)
    return int(train + f0 + ne * per_sample + n_members * ne * n_out * s)


def noise_bytes(experiment: ExperimentLike, width: int, depth: int, batch_size: int, *,
                n_members: int = 1, n_streams: int = 1) -> tuple[int, int]:
    """``(chunk size b, bytes)`` the gradient-noise-scale metric adds at a report: the noise batch of every stream
    (``m b`` inputs, targets and ``f(x; theta_0)``) and two copies of the members' weight gradients (the chunk
    gradient and the running sum). Its gradient steps on ``b`` samples are a training step's activations."""
    option = grad_noise_option(setting(experiment, "grad_noise_scale"))
    chunk = int(option["batch_size"] or batch_size)
    s = ITEMSIZE[setting(experiment, "dtype")]
    dim, n_out = families.shape(experiment)
    samples = n_streams * option["batches"] * chunk * (dim + 2 * n_out) * s
    grads = 2 * n_members * n_params(dim, width, depth, n_out) * s
    return chunk, int(samples + grads)


def curvature_bytes(experiment: ExperimentLike, width: int, depth: int, *, n_members: int = 1,
                    n_streams: int = 1) -> int:
    """Bytes curvature tracking (:mod:`raysweep.sharpness`) adds to a trial: the curvature batch of every stream
    (inputs, targets, ``f(x; theta_0)``) and, while the members are measured (all at once), per member its Lanczos
    basis and probes (``steps + 4`` copies of its weights, with the double-backward's gradients), its copy of the
    curvature batch's targets and ``f0``, and the double-backward graph over the curvature batch (six copies of its
    activations)."""
    option = curvature_option(setting(experiment, "curvature"))
    s = ITEMSIZE[setting(experiment, "dtype")]
    dim, n_out = families.shape(experiment)
    n = int(option["batch"])
    batch = n_streams * n * (dim + 2 * n_out) * s
    lanczos = (int(option["steps"]) + 4) * n_params(dim, width, depth, n_out) * s
    graph = (6 * ((depth - 1) * width + n_out) + 2 * n_out) * n * s
    return int(batch + n_members * (lanczos + graph))


def trial_need(model: MemoryModel, point: Mapping[str, Any], *, n_members: int = 1, n_streams: int = 1,
               experiment: ExperimentLike | None = None, batch_size: int | None = None) -> dict:
    """The bytes a trial of ``point`` (a bundle of ``n_members``) needs, with its parts."""
    b = int(point["batch_size"] if batch_size is None else batch_size)
    w, d, opt = int(point["width"]), int(point["depth"]), memory_optimizer(point)
    parts = {"train": model.predict(w, d, b, optimizer=opt, n_members=n_members, mode="train", n_streams=n_streams)
             * (1 + model.fit_for(opt, "train").margin)}
    if f"{opt}/val" in model.fits and experiment is not None:
        val = lambda n: model.predict(w, d, n, optimizer=opt, n_members=n_members, mode="val",  # noqa: E731
                                      n_streams=n_streams) * (1 + model.fit_for(opt, "val").margin)
        parts["val"] = val(n_eval(experiment))
        n_f0 = f0_pass_size(experiment, n_members=n_members, batch_size=b)
        if n_f0:
            parts["f0"] = val(n_f0)
    data = data_bytes(experiment, n_members=n_members, batch_size=b, n_streams=n_streams) if experiment else 0
    noise = 0
    if experiment and setting(experiment, "grad_noise_scale") not in (None, False):
        chunk, noise = noise_bytes(experiment, w, d, b, n_members=n_members, n_streams=n_streams)
        if chunk > b:  # a noise chunk larger than the training batch: its step, not the training one, peaks
            parts["noise"] = model.predict(w, d, chunk, optimizer=opt, n_members=n_members, mode="train",
                                           n_streams=n_streams) * (1 + model.fit_for(opt, "train").margin)
    if experiment and setting(experiment, "curvature") not in (None, False):
        noise += curvature_bytes(experiment, w, d, n_members=n_members, n_streams=n_streams)
    total = model.context_bytes + max(parts.values()) + data + noise
    return {"need_bytes": int(total), "context_bytes": model.context_bytes, "data_bytes": int(data + noise),
            **{f"{k}_bytes": int(v) for k, v in parts.items()}}


def auto_batch_size(model: MemoryModel, point: Mapping[str, Any], config: AutobatchConfig, *, n_members: int = 1,
                    n_streams: int = 1, experiment: ExperimentLike | None = None,
                    mode: str = "train") -> SearchResult:
    """``batch_size: auto``: the largest grid batch size whose need fits ``target_memory_fraction * available``.

    ``mode="val"`` sizes an eval batch instead (context + M_val (1 + margin)). Raises NothingFitsError with the
    sizes tried, the bytes each needed and the budget."""
    s = config.for_mode(mode)
    usable = model.usable_bytes(s.target_memory_fraction)
    w, d, opt = int(point["width"]), int(point["depth"]), memory_optimizer(point)
    def data(b: int) -> int:
        return data_bytes(experiment, n_members=n_members, batch_size=b, n_streams=n_streams) if experiment else 0

    def need(b: int) -> int:
        if mode == "train":
            return trial_need(model, {**point, "batch_size": b}, n_members=n_members, n_streams=n_streams,
                              experiment=experiment)["need_bytes"]
        return model.need_bytes(w, d, b, optimizer=opt, n_members=n_members, mode="val", n_streams=n_streams) \
            + data(b)

    what = f"{mode} batch size for width={w} depth={d} optimizer={opt} n_members={n_members} on {model.device.name}"
    return largest_under_budget(need, usable, s.min_batch_size, s.max_batch_size, config.batch_grid, what=what,
                                evidence={"device": model.device.name, "label": model.label,
                                          "probe_points": len(model.probe_log)})


def split_to_fit(model: MemoryModel, points: Sequence[Mapping[str, Any]], usable: float, *,
                 experiment: ExperimentLike | None, min_batch_size: int = 1) -> list[list[Mapping[str, Any]]]:
    """Consecutive chunks of a bundle's ``points`` whose need (:func:`trial_need`, members and data streams
    counted) fits ``usable``: the memory bound on the bundle size. Greedy in the bundle's order. When one member
    cannot fit even alone the bundle is kept whole (sizing reports it infeasible; splitting would not help: the
    members share their shapes). ``batch_size: auto`` is judged at ``min_batch_size`` (the smallest batch the
    search may pick)."""

    def need(chunk: list[Mapping[str, Any]]) -> int:
        p = chunk[0]
        batch = min_batch_size if p["batch_size"] == AUTO else int(p["batch_size"])
        return trial_need(model, p, n_members=len(chunk), n_streams=len({q.get("seed") for q in chunk}),
                          experiment=experiment, batch_size=batch)["need_bytes"]

    if not points or need([points[0]]) > usable:
        return [list(points)]
    chunks: list[list[Mapping[str, Any]]] = []
    for p in points:
        if chunks and need(chunks[-1] + [p]) <= usable:
            chunks[-1].append(p)
        else:
            chunks.append([p])
    return chunks


def request_from_spec(spec, config: AutobatchConfig | None = None) -> ProbeRequest:
    """The probe request of a validated spec: its shapes, the batch ranges per mode (the sizes this module asks
    about: the swept batches, the eval set, the one-shot f0 pass), the largest bundle."""
    config = config or getattr(spec, "autobatch", None) or AutobatchConfig()
    experiment = spec.experiment.as_dict()
    dim, n_out = families.shape(experiment)
    space = spec.space
    swept = [b for b in space.batch_size if b != AUTO]
    if len(swept) < len(space.batch_size) or not swept:  # "auto": probe from the bottom of the search range
        swept = swept + [config.for_mode("train").min_batch_size]
    # the largest probe batch makes the activations measurable above allocator noise (see probe.py)
    big = {mode: floor_batch(dim, n_out, max(space.width), max(space.depth), spec.experiment.dtype, mode)
           for mode in MODES}
    train = sorted(set(swept) | {max(max(swept), big["train"])})
    # eval mode also sizes the trainer's one-shot f(x; theta_0) pass over a block / the training set
    one_shot = {n_eval(experiment)} | {f0_pass_size(experiment, batch_size=b) for b in swept} - {0}
    val = sorted(set(swept) | one_shot | {max(max(swept), *one_shot, big["val"])})
    n_members = 1
    if spec.fusion.enabled:
        groups = Counter(tuple(p[k] for k in BUNDLE_KEYS) for p in spec.points())
        n_members = min(spec.fusion.max_members, max(groups.values(), default=1))
    return ProbeRequest(
        dim=dim, n_out=n_out, widths=tuple(space.width), depths=tuple(space.depth),
        batch_sizes={"train": tuple(train), "val": tuple(val)},
        optimizers=tuple(sorted({memory_optimizer(p) for p in spec.points()})), modes=tuple(config.modes), dtype=spec.experiment.dtype,
        loss="mse" if "mse" in space.loss else "xent", n_members=n_members,
        steps={"train": config.steps_per_trial, "val": config.steps_per_trial_val},
        target_memory_fraction=config.target_memory_fraction,
        cpus_per_trial=max(1, int(spec.resources.cpus_per_trial)), device=spec.experiment.device,
    )


def _items(spec, bundles_or_points) -> list[tuple[str, list[Mapping[str, Any]]]]:
    experiment = spec.experiment.as_dict()
    out = []
    for item in bundles_or_points:
        if hasattr(item, "points"):
            out.append((item.bundle_id, list(item.points)))
        else:
            out.append((config_key(experiment, item), [item]))
    return out


def plan_resources(spec, bundles_or_points, *, device_info, model: MemoryModel | None = None,
                   config: AutobatchConfig | None = None, storage=None) -> dict:
    """Ray resources for every bundle (``raysweep.trial.Bundle``: keyed by ``bundle_id``) or point (a dict:
    keyed by its ``config_key``), and the configs that cannot fit even alone.

    ``model`` defaults to the cached one in ``storage`` for ``device_info``; with neither, RaysweepError says to
    probe first. Never touches CUDA. Returns ``{"label", "device", "usable_bytes", "target_memory_fraction",
    "resources": {id: {"gpu": share, "cpu": c} or {"cpu": c, "memory": bytes}}, "need": {id: parts},
    "batch_size": {id: int}, "infeasible": [{"id", ..., "reason"}]}``; infeasible ids have no resources.
    """
    config = config or getattr(spec, "autobatch", None) or AutobatchConfig()
    if model is None and storage is not None:
        model = ModelCache(storage).lookup(cache_key(request_from_spec(spec, config), device_info))
    if model is None:
        raise NoCachedModelError(f"no memory model of sweep {spec.name} on {device_info.name}: run "
                                 "raysweep.autobatch.probe_and_fit(spec, storage=...) first")
    if (model.device.kind, model.device.name, model.device.total_bytes) != (
            device_info.kind, device_info.name, device_info.total_bytes):
        raise RaysweepError(f"the memory model was measured on {model.device.name} ({model.device.kind}), "
                            f"not on {device_info.name} ({device_info.kind}): probe this device")
    experiment = spec.experiment
    usable = model.usable_bytes(config.target_memory_fraction)
    cpus = spec.resources.cpus_per_trial
    plan = {"label": model.label, "device": model.device.to_dict(), "usable_bytes": usable,
            "target_memory_fraction": config.target_memory_fraction, "resources": {}, "need": {},
            "batch_size": {}, "infeasible": []}
    for ident, points in _items(spec, bundles_or_points):
        p, k = points[0], len(points)
        n_streams = len({q.get("seed") for q in points})
        try:
            batch = (auto_batch_size(model, p, config, n_members=k, n_streams=n_streams, experiment=experiment)
                     .batch_size if p["batch_size"] == AUTO else int(p["batch_size"]))
        except NothingFitsError as exc:
            plan["infeasible"].append({"id": ident, **_shape(p, k), "batch_size": AUTO, "reason": str(exc),
                                       "usable_bytes": usable})
            continue
        need = trial_need(model, p, n_members=k, n_streams=n_streams, experiment=experiment, batch_size=batch)
        plan["need"][ident], plan["batch_size"][ident] = need, batch
        fits = need["need_bytes"] <= usable
        if fits:
            plan["resources"][ident] = ({"gpu": gpu_share(need["need_bytes"], usable), "cpu": cpus}
                                        if model.device.kind == "cuda" else {"cpu": cpus, "memory": need["need_bytes"]})
            continue
        reason = (f"needs {need['need_bytes'] / 2**20:.0f} MiB (context {need['context_bytes'] / 2**20:.0f}, data "
                  f"{need['data_bytes'] / 2**20:.0f}, steps with margin) but {config.target_memory_fraction:g} of "
                  f"{model.device.name}'s free memory is {usable / 2**20:.0f} MiB, even alone")
        plan["infeasible"].append({"id": ident, **_shape(p, k), "batch_size": batch, "need_bytes": need["need_bytes"],
                                   "usable_bytes": usable, "reason": reason})
    return plan


def _shape(p: Mapping[str, Any], k: int) -> dict:
    return {"width": p["width"], "depth": p["depth"], "optimizer": memory_optimizer(p), "n_members": k}


def raise_if_infeasible(plan: dict, config: AutobatchConfig | None = None) -> None:
    """With ``infeasible: refuse`` (the default), raise NothingFitsError listing every config that cannot fit even
    alone, before anything starts. With ``fail`` do nothing: the launcher lands those as failed rows with their
    ``reason``."""
    config = config or AutobatchConfig()
    bad = plan["infeasible"]
    if not bad or config.infeasible == "fail":
        return
    shown = "; ".join(f"{b['id']} (width={b['width']} depth={b['depth']} batch_size={b['batch_size']} "
                      f"n_members={b['n_members']}): {b['reason']}" for b in bad[:5])
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise NothingFitsError(
        f"{len(bad)} trial(s) cannot fit on {plan['device']['name']} even alone: {shown}{more}. Lower their "
        "batch_size / width / fusion.max_members, raise autobatch.target_memory_fraction, or set "
        "autobatch.infeasible: fail to run the rest",
        {"infeasible": bad, "budget_bytes": plan["usable_bytes"], "device": plan["device"]},
    )
