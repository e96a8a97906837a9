"""One Ray Tune trial: a bundle of configurations (often of one) trained by :mod:`raysweep.train`.

Every report sends Tune the bundle's progress (``step``, ``n_running``, the members' best ``train_loss``) and, for
each member that just reached a terminal status, its trials row and its curve rows (``terminal``). The driver's
:class:`raysweep.callbacks.ResultsCallback` lands those rows; Tune's own logs are not the record.

A trial of one configuration (what guided searches and schedulers run) also reports, for schedulers and searchers:
``status`` (running, completed, diverged or failed), its own ``train_loss``, ``eval_loss`` and ``eval_accuracy``
(finite values only), and while it runs a ``provisional`` trials row (status ``pruned``) with this report's curve
row, so that the driver can land the row of a trial that a scheduler stops.

A member that the trainer finds dead (:mod:`raysweep.train`: no active unit in a hidden layer, or collapsed to
chance) keeps its status and training; its row's ``dead_step`` says since when (null unless dead at its last
report).

A member whose loss becomes non-finite or explodes is ``diverged`` (with its step) and stops at once; its last
report carries no metric at all, so a scheduler or searcher never sees NaN, Inf or an exploded loss. An exception
makes every unfinished member ``failed`` with the error text (again without metrics), and the sweep goes on.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any

from raysweep.autobatch.guard import apply_malloc_policy, apply_memory_cap, is_oom
from raysweep.custom.spec import is_custom, model_name
from raysweep.plan import Bundle, Plan
from raysweep.scaling import LearningRates, learning_rates, temperature, wd_timescale
from raysweep.instrument_spec import CURVATURE_KINDS as CURVATURE_COLUMNS
from raysweep.points import axis_value
from raysweep.scaling import ADAM_OPTIMIZERS
from raysweep.space import AUTO, Experiment

# torch and Ray load in the worker; the driver imports this module (tune_trainable) without either

_LR_ARGS = ("eta", "gamma", "width", "depth", "parametrization", "optimizer", "lr_rule")


def trial_row(
    plan: Plan, bundle: Bundle, index: int, *, status: str, dataset: str, report=None, member: int | None = None,
    diverged_step: int | None = None, error: str | None = None, wall_time_s: float = 0.0, placement: Mapping = {},
) -> dict:
    """The trials row of bundle member ``index`` (``report`` is its last report, ``member`` its slot in it): the
    one place a row is built (:func:`failed_row` too)."""
    p = bundle.points[index]
    exp = plan.experiment
    # a model factory's parameters train at eta times their muP multipliers (raysweep.custom.mup): eta is recorded
    lrs = LearningRates((p["eta"],), p["lr_rule"]) if is_custom(exp.model) else \
        learning_rates(**{k: p[k] for k in _LR_ARGS})
    row = {
        "config_key": bundle.keys[index],
        "family": exp.family,
        "dataset": dataset,
        "model": model_name(exp.model),
        **{k: p[k] for k in ("parametrization", "optimizer", "lr_rule", "loss")},
        "loss_convention": exp.mse_convention if p["loss"] == "mse" else "mean",
        **{k: p[k] for k in ("batch_size", "eta", "width", "depth", "gamma", "seed")},
        **({"batch_size": None} if p["batch_size"] == AUTO else {}),  # unresolved: the config could not fit
        "temperature": temperature(p["eta"], p["batch_size"]) if p["batch_size"] != AUTO else None,
        "lr_effective": lrs.effective,
        "lr_hidden": lrs.hidden,
        **optimizer_columns(p, lrs.effective),
        "status": status,
        "diverged_step": diverged_step,
        "error": error,
        "wall_time_s": wall_time_s,
        "dtype": exp.dtype,
        "bundle_id": bundle.bundle_id,
        "n_bundle_members": len(bundle.points),
        "raysweep_version": plan.version,
        **placement,
    }
    if report is not None:
        tau = row["wd_timescale_samples"]
        row.update(
            wd_timescale_fraction=tau / report.samples_seen if tau is not None and report.samples_seen else None,
            steps=report.step,
            samples_seen=report.samples_seen,
            final_train_loss=report.train_loss[member],
            final_eval_loss=report.eval_loss[member],
            final_eval_accuracy=report.eval_accuracy[member],
            initial_loss=report.initial_loss[member],
            dead_step=report.dead.get(index),  # null unless dead at its last report (raysweep.train)
            initial_sharpness=report.initial_sharpness[member] if report.initial_sharpness is not None else None,
        )
    else:
        row.update(steps=0, samples_seen=0)
    return row


def optimizer_columns(p: Mapping[str, Any], lr: float) -> dict:
    """The optimizer and schedule columns of point ``p`` (README schema): the axes (null where the optimizer does
    not read them), and the weight-decay timescale at the schedule's peak from the readout layer's rate ``lr``:
    ``1 / (lr lambda)`` steps (``1 / lambda`` with the independent scaling) and ``B`` times that in samples."""
    value = {axis: axis_value(p, axis) for axis in (
        "momentum", "nesterov", "beta1", "beta2", "eps", "eps_scaling", "weight_decay", "weight_decay_scaling",
        "schedule", "warmup_steps", "warmup_fraction", "decay_fraction", "final_fraction")}
    sgd, adam = p["optimizer"] == "SGD", p["optimizer"] in ADAM_OPTIMIZERS
    for axis in ("momentum", "nesterov"):
        value[axis] = value[axis] if sgd else None
    for axis in ("beta1", "beta2", "eps", "eps_scaling"):
        value[axis] = value[axis] if adam else None
    steps = wd_timescale(lr, value["weight_decay"], value["weight_decay_scaling"])
    batch = p["batch_size"] if p["batch_size"] != AUTO else None
    return {**value, "wd_timescale_steps": steps,
            "wd_timescale_samples": steps * batch if steps is not None and batch is not None else None}


def failed_row(plan: Plan, bundle: Bundle, index: int, error: str, provisional: Mapping | None = None) -> dict:
    """The ``failed`` row of bundle member ``index`` that the driver lands (a lost worker, a config that cannot
    fit): its ``provisional`` row (the last report's, with its metrics) when the trial sent one, else a row without
    a report (dataset: the family's name)."""
    if provisional is not None:
        return {**provisional, "status": "failed", "error": error}
    return trial_row(plan, bundle, index, status="failed", dataset=plan.experiment.family, error=error)


def curve_row(report, member: int) -> dict:
    noise = report.grad_noise_scale is not None  # experiment.grad_noise_scale on: the metric's three columns
    return {
        "step": report.step,
        "epoch": report.epoch,
        "samples_seen": report.samples_seen,
        "train_loss": report.train_loss[member],
        "eval_loss": report.eval_loss[member],
        "eval_accuracy": report.eval_accuracy[member],
        "active_fraction": report.active_fraction[member] if report.active_fraction is not None else None,
        "grad_noise_scale": report.grad_noise_scale[member] if noise else None,
        "grad_sq": report.grad_sq[member] if noise else None,
        "grad_trace_cov": report.grad_trace_cov[member] if noise else None,
        **{k: getattr(report, k)[member] if getattr(report, k) is not None else None for k in CURVATURE_COLUMNS},
        "wall_time_s": report.wall_time_s,
    }


@functools.lru_cache(maxsize=4)
def _task(experiment: Experiment, device: str):
    """Data sets are built once per worker process and reused by the trials it runs."""
    import torch

    from raysweep.data import build_task  # torch: the data modules build tensors

    return build_task(experiment.as_dict(), device=device, dtype=getattr(torch, experiment.dtype))


def _device(experiment: Experiment) -> str:
    import torch

    wanted = experiment.device
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def run_bundle(plan: Plan, bundle: Bundle, report_fn, placement: Mapping = {}) -> None:
    """Train ``bundle`` and call ``report_fn(metrics)`` at every report. Never raises for a training error.

    With checkpoints on (``plan.checkpoint`` and ``plan.location``), it first looks for the bundle's latest
    checkpoint (:mod:`raysweep.checkpoint`) and resumes from it: the checkpoint's members (a superset of the
    bundle's: members whose rows have landed since train on silently, so that every number is the one of the
    uninterrupted bundle), their curves so far, and the terminal rows it had sent (sent again: the driver lands a
    row once). It saves a checkpoint at the reports :func:`raysweep.checkpoint.due` picks.
    """
    import torch

    if is_custom(plan.experiment.model):
        from raysweep.custom.train import train_bundle  # torch: a model factory's general path
    else:
        from raysweep.train import train_bundle  # torch

    started = time.perf_counter()
    torch.set_num_threads(max(1, int(plan.cpus_per_trial)))
    exp = plan.experiment
    open_members = set(range(len(bundle.points)))
    last: dict[int, tuple[Any, int]] = {}
    curves: dict[int, list[dict]] = {i: [] for i in open_members}
    dataset = exp.family
    every = plan.checkpoint if plan.location is not None else None
    if every is not None:
        from raysweep import checkpoint as ckpt  # pyarrow, safetensors: only with checkpoints on
    trained, quiet, resume = bundle, set(), None  # what the trainer trains; its members whose rows have landed
    sent: list[dict] = []  # every terminal item this bundle sent (kept in checkpoints until the bundle lands)
    notes: dict[str, Any] = {}  # the first report tells the driver where training resumed, and any warning

    def emit(step: int, terminal: list[dict], best: float | None, single: dict | None = None) -> None:
        metrics = {"step": step, "report": -(-step // exp.report_every) if step >= 0 else -1,  # hyperband_sync's time
                   "n_running": len(open_members), "terminal": terminal, **notes}
        notes.clear()
        if best is not None:  # absent, never None or NaN: schedulers compare it as a number
            metrics["train_loss"] = best
        report_fn({**metrics, **(single or {})})

    try:
        device = _device(exp)
        placement = {**placement, "device": device, "memory_cap": _cap_memory(placement, device)}
        if device == "cpu" and placement.get("memory_bytes"):
            # sized by autobatch's cpu-rss model: allocate the way the probe measured (a fixed mmap threshold)
            apply_malloc_policy()
        if every is not None:
            warned: list[str] = []
            saved = ckpt.load_latest(plan.location, bundle.bundle_id, warned.append)
            if saved is not None and not set(bundle.keys) <= set(saved.keys):
                warned.append(f"checkpoint {saved.location.uri} is of other configurations; bundle "
                              f"{bundle.bundle_id} restarts from step 0")
                saved = None
            if saved is None:
                ckpt.remove(plan.location, bundle.bundle_id)  # nothing usable: never resume from a stale one later
            else:
                trained = Bundle(saved.bundle_id, tuple(saved.keys), tuple(saved.points))
                ours = set(bundle.keys)
                alive = set(saved.state.members)
                quiet = {i for i, k in enumerate(trained.keys) if k not in ours}
                open_members = alive - quiet
                curves = {i: list(saved.pending["curves"].get(trained.keys[i], [])) for i in open_members}
                sent = list(saved.pending["terminal"])
                replay = [t for t in sent if t["trial"]["config_key"] in ours]
                resume = saved.state
                started -= saved.state.wall_time_s
                notes["resumed_step"] = saved.step
            if warned:
                for text in warned:
                    print(f"raysweep: {text}", file=sys.stderr)
                notes["checkpoint_warning"] = "; ".join(warned)
        task = _task(exp, device)
        dataset = task.dataset
        ck_step, ck_time = (resume.step if resume else 0), time.monotonic()
        pending_replay = replay if resume is not None else []
        recorder = _snapshot_recorder(plan, trained, task) if exp.snapshots is not None else None
        if recorder is not None and resume is not None:
            recorder.restore(resume.extra)
        for report in train_bundle(task, exp, list(trained.points), device=device, resume=resume,
                                   on_weights=recorder.record if recorder else None):
            terminal, pending_replay = pending_replay, []
            for slot, i in enumerate(report.members):
                if i in quiet:
                    continue
                curves[i].append(curve_row(report, slot))
                last[i] = (report, slot)
                status = "diverged" if i in report.diverged else "completed" if report.finished else None
                if status:
                    if recorder is not None:  # the member's snapshots land before its row
                        recorder.write(i, report.diverged.get(i))
                    open_members.discard(i)
                    item = {
                        "trial": trial_row(plan, trained, i, status=status, dataset=dataset, report=report,
                                           member=slot, diverged_step=report.diverged.get(i),
                                           wall_time_s=time.perf_counter() - started, placement=placement),
                        "curves": curves.pop(i),
                    }
                    terminal.append(item)
                    sent.append(item)
            if every is not None and report.export is not None and ckpt.due(every, report.step, ck_step,
                                                                            time.monotonic() - ck_time):
                pending = {"curves": {trained.keys[i]: curves[i] for i in sorted(open_members)}, "terminal": sent}
                state = report.export()
                if recorder is not None:  # the snapshots not written yet travel with the state
                    state.extra.update({k: torch.from_numpy(v) for k, v in recorder.held().items()})
                ckpt.save(plan.location, trained.bundle_id, trained.keys, trained.points, state, pending)
                ck_step, ck_time = report.step, time.monotonic()
            healthy = [s for s, i in enumerate(report.members) if i not in report.diverged and i not in quiet]
            finite = [v for v in (report.train_loss[s] for s in healthy) if _finite(v)]
            single = None
            if len(trained.points) == 1:
                row = None if terminal else trial_row(
                    plan, trained, 0, status="pruned", dataset=dataset, report=report, member=0,
                    wall_time_s=time.perf_counter() - started, placement=placement)
                single = single_metrics(report, terminal, row)
            emit(report.step, terminal, min(finite) if finite else None, single)
    except Exception as exc:  # a failed config lands as a row; the sweep goes on
        error = ("oom: " if is_oom(exc) else "") + f"{type(exc).__name__}: {exc}"
        terminal = []
        for i in sorted(open_members):
            rep, slot = last.get(i, (None, None))
            terminal.append({
                "trial": trial_row(plan, trained, i, status="failed", dataset=dataset, report=rep, member=slot,
                                   error=error, wall_time_s=time.perf_counter() - started, placement=placement),
                "curves": curves.get(i, []),
            })
        open_members.clear()
        emit(-1, terminal, None, {"status": "failed"} if len(trained.points) == 1 else None)
        if os.environ.get("RAYSWEEP_DEBUG"):
            traceback.print_exc()


def _snapshot_recorder(plan: Plan, bundle: Bundle, task):
    """The bundle's :class:`raysweep.snapshots.SnapshotRecorder` (``experiment.snapshots`` on): an MLP's layers, or
    a model factory's parameters by name (their shapes built once from the first point, as the trainer builds it)."""
    from raysweep import model  # torch
    from raysweep.snapshots import SnapshotRecorder
    from raysweep.train import steps_for  # torch

    exp, first = plan.experiment, bundle.points[0]
    total = steps_for(exp, task, int(first["batch_size"]))
    if not is_custom(exp.model):
        widths = model.layer_widths(task.dim, int(first["width"]), int(first["depth"]), task.n_out)
        return SnapshotRecorder(plan.location, bundle.keys, bundle.points, exp.snapshots, total, widths, exp.dtype)
    import torch

    from raysweep.custom.factory import build_model  # torch: the user's factory
    from raysweep.custom.train import as_task  # torch

    module = build_model(exp.model, width=int(first["width"]), depth=int(first["depth"]), gamma=float(first["gamma"]),
                         parametrization=first["parametrization"], input_shape=as_task(task).input_shape,
                         n_out=task.n_out, seed=int(first["seed"]), dtype=getattr(torch, exp.dtype))
    named = dict(module.named_parameters())  # torch.func.stack_module_state's names and order (Members.names)
    return SnapshotRecorder(plan.location, bundle.keys, bundle.points, exp.snapshots, total,
                            [tuple(p.shape) for p in named.values()], exp.dtype, names=list(named), model=exp.model)


def _cap_memory(placement: Mapping, device: str) -> float | None:
    """On CUDA, cap this process's allocator at the trial's GPU share, so that a hungry configuration runs out of
    memory itself (landing as failed with reason ``oom``) instead of starving its neighbours. The cap applied, or
    None (CPU, or no share)."""
    share = placement.get("gpu_share") or 0.0
    if not device.startswith("cuda") or share <= 0:
        return None
    return share if apply_memory_cap(share, device) else None


def _finite(v) -> bool:
    return v is not None and v == v and abs(v) != float("inf")


def single_metrics(report, terminal: list[dict], provisional: dict | None) -> dict:
    """What a one-configuration trial adds to its report for schedulers, searchers and the driver.

    ``status``: running, completed or diverged. ``train_loss``, ``eval_loss``, ``eval_accuracy``: this member's
    values when finite, and none of them on the report where it diverged (NaN, Inf and exploded losses never
    reach a scheduler). ``provisional``: while running, the row to land as ``pruned`` if a scheduler stops the
    trial after this report, with this report's curve row.
    """
    status = terminal[0]["trial"]["status"] if terminal else "running"
    out: dict[str, Any] = {"status": status}
    if status != "diverged":
        for name, values in (("train_loss", report.train_loss), ("eval_loss", report.eval_loss),
                             ("eval_accuracy", report.eval_accuracy)):  # fmt: skip
            if _finite(values[0]):
                out[name] = values[0]
    if provisional is not None:
        out["provisional"] = {"trial": provisional, "curve": curve_row(report, 0)}
    return out


def bundle_of(plan: Plan, config: Mapping[str, Any]) -> Bundle:
    """The bundle a Tune config names: one of the plan's, or one configuration a searcher chose at run time
    (``{"bundle": id, "key": config_key, "point": {...}}``)."""
    if config["bundle"] in plan.bundles:
        return plan.bundles[config["bundle"]]
    return Bundle(config["bundle"], (config["key"],), (dict(config["point"]),))


def tune_trainable(config: dict, plan: Plan) -> None:
    """The function Tune runs: look the bundle up and train it, reporting through ``ray.tune.report``."""
    import ray
    from ray import tune

    ctx = ray.get_runtime_context()
    resources = ctx.get_assigned_resources()
    placement = {
        "node_id": ctx.get_node_id(),
        "gpu_share": float(resources.get("GPU", 0.0)),
        "cpu_share": float(resources.get("CPU", 0.0)),
        "memory_bytes": float(resources["memory"]) if resources.get("memory") else None,  # Ray's `memory`, bytes
    }
    run_bundle(plan, bundle_of(plan, config), tune.report, placement)
