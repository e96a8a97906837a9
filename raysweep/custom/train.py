"""Train a bundle of user models (``experiment.model: {factory: ...}``) and yield :class:`raysweep.train.Report`s.

The general path beside the MLP's hand-written one (:mod:`raysweep.train`), with the same contract: K members that
share :func:`raysweep.space.bundle_key` (they may differ in eta, gamma, seed, the optimizer's hyperparameters and
the schedule); one data stream per distinct seed (a fresh permutation of the training set every epoch, the tail
smaller than a batch dropped); a report every ``report_every`` steps with the train loss (mean over the window),
the eval loss and accuracy, the initial loss; divergence by :func:`raysweep.train.divergence` (a non-finite
minibatch loss, or a loss past ``divergence_factor`` x the initial loss), a diverged member dropped from the stack;
dead by :func:`raysweep.dead.dead_members` (the collapse-to-chance rule: a user model has no hidden units to count,
so ``active_fraction`` is null).

Step: autograd through ``torch.func`` (:mod:`raysweep.custom.functional`), fused over the members with ``vmap`` when
the model allows it, else one member at a time; then the update of :mod:`raysweep.step` on each parameter's stack
seen as ``[K, numel, 1]``: plain SGD ``p -= lr g`` (torch.optim.SGD), Adam at its defaults (:func:`raysweep.step.update`)
or the general path (:func:`raysweep.step.update_general`: momentum, Nesterov, betas, eps, coupled or decoupled
weight decay), every rate times the member's schedule multiplier. Parameter p of member k trains at
``eta_k * lr_mult_p`` (the base-shape multipliers of :mod:`raysweep.custom.mup`: SP, the NTK parametrization, or
muP; 1 at the base width). With
``centred: true`` the trained function is ``f(x; theta) - f(x; theta_0)`` (the MLP path's centring, and the initial
loss is the zero predictor's); otherwise it is the model's output and the initial loss that of ``theta_0``.

Pure: torch and the user's factory; no Ray, no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from raysweep.custom import functional, mup
from raysweep.custom.factory import build_model
from raysweep.dead import chance_accuracy, dead_members, outside_band
from raysweep.schedules import is_constant
from raysweep.seeds import data_seed, derive_seed
from raysweep.space import axis_value, bundle_key, setting, update_path
from raysweep.step import OptState, ScheduleFeed, optimizer_state, scaled_rates, update, update_general
from raysweep.train import Report, divergence, steps_for

__all__ = ["Members", "as_task", "build_members", "train_bundle"]


class Members:
    """The bundle's models as stacked functional parameters, with their rates and optimizer state.

    ``params``, ``buffers``: ``{name: [K, *shape]}``; ``lr_mult`` / ``forward_mult``: the muP multipliers per name;
    ``lrs``: per parameter the members' base rates ``[K, 1, 1]``; ``opt``: :func:`raysweep.step.optimizer_state` of
    the update path (None: plain SGD; Adam's moments; an OptState) over the flat views ``[K, numel, 1]``.
    """

    def __init__(self, modules, points: Sequence[Mapping[str, Any]], shapes, *, fused: bool):
        first = points[0]
        self.params, self.buffers, self.body = functional.stack(modules)  # contiguous: flat() views them
        self.names = list(self.params)
        named = {n: tuple(p.shape[1:]) for n, p in self.params.items()}
        self.lr_mult, self.forward_mult = mup.multipliers(shapes, named, first["optimizer"], first["parametrization"])
        self.fused = fused
        self.seeds = [int(p["seed"]) for p in points]
        w0 = next(iter(self.params.values()))
        self.lrs = [torch.tensor([float(p["eta"]) * self.lr_mult[n] for p in points], dtype=w0.dtype,
                                 device=w0.device).reshape(-1, 1, 1) for n in self.names]
        settings = [_optimizer_settings(p, [self.lr_mult[n] for n in self.names]) for p in points]
        self.opt = optimizer_state(update_path(first), first["optimizer"], self.flat(self.params), settings)

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def flat(self, tensors: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Stacked tensors as ``[K, numel, 1]``, in parameter order (what raysweep.step's updates take): views of
        contiguous ones (the parameters, whose updates write through), copies of the others (vmap's gradients)."""
        return [tensors[n].reshape(tensors[n].shape[0], -1, 1) for n in self.names]

    def step(self, fn, x, y, f0, shared: bool, step: int, scale) -> torch.Tensor:
        """One optimizer step of every member in place; returns their minibatch losses ``[K]``. Unfused, each
        member's random numbers (dropout) come from its own seed and the step (:func:`raysweep.seeds.derive_seed`)."""
        if self.fused:
            grads, losses = functional.grads_fused(fn, self.params, self.buffers, x, y, f0, shared)
        else:
            rng = [derive_seed(seed, f"forward:{step}") for seed in self.seeds]
            grads, losses = functional.grads_unfused(fn, self.params, self.buffers, x, y, f0, shared, rng)
        weights, grads = self.flat(self.params), self.flat(grads)
        rates = scaled_rates(self.lrs, scale)
        if self.opt is None:
            for w, g, lr in zip(weights, grads, rates):
                w.sub_(lr * g)
        elif isinstance(self.opt, OptState):
            update_general(weights, grads, rates, self.opt, step, scale)
        else:
            update(weights, grads, rates, self.opt, step)
        return losses.detach()

    def outputs(self, x, *, shared: bool = True, params=None, buffers=None) -> torch.Tensor:
        """Every member's outputs ``[K, n, ..., out]`` in eval mode (no gradients)."""
        self.body.eval()
        try:
            return functional.outputs(self.body, self.forward_mult, self.params if params is None else params,
                                      self.buffers if buffers is None else buffers, x, self.fused, shared)
        finally:
            self.body.train()

    def select(self, sel: torch.Tensor) -> None:
        """Keep the members ``sel`` (indices into the members alive)."""
        self.params = {n: p[sel] for n, p in self.params.items()}
        self.buffers = {n: b[sel] for n, b in self.buffers.items()}
        self.lrs = [lr[sel] for lr in self.lrs]
        self.seeds = [self.seeds[j] for j in sel.tolist()]
        if isinstance(self.opt, OptState):
            self.opt = self.opt.select(sel)
        elif self.opt is not None:
            self.opt = [(m[sel], v[sel]) for m, v in self.opt]


def _optimizer_settings(point: Mapping[str, Any], lr_mult: Sequence[float]) -> dict:
    """A member's optimizer hyperparameters, one eps and weight decay per parameter: with the ``lr`` scaling the
    decay is ``lambda / lr_mult`` (one timescale per parameter, the muP rule of raysweep.custom.mup)."""
    value = lambda axis: axis_value(point, axis)  # noqa: E731
    lam, independent = value("weight_decay"), value("weight_decay_scaling") == "independent"
    return {
        "momentum": value("momentum"), "nesterov": value("nesterov"), "beta1": value("beta1"),
        "beta2": value("beta2"), "eps": [value("eps")] * len(lr_mult),
        "weight_decay": [lam if independent else lam / m for m in lr_mult], "independent": independent,
    }


def build_members(task, experiment: Mapping[str, Any], points: Sequence[Mapping[str, Any]], *, device="cpu",
                  fused: bool | None = None) -> Members:
    """Build every member's model (seeded by its seed) and stack them. ``fused`` None: vmapped when the model
    allows it (:func:`raysweep.custom.functional.vmap_reason`)."""
    model = setting(experiment, "model")
    dtype = torch.float64 if setting(experiment, "dtype") == "float64" else torch.float32
    first = points[0]
    shape_args = dict(depth=int(first["depth"]), input_shape=task.input_shape, n_out=task.n_out)
    modules = [build_model(model, width=int(p["width"]), gamma=float(p["gamma"]), parametrization=p["parametrization"],
                           seed=int(p["seed"]), dtype=dtype, device=device, **shape_args) for p in points]
    shapes = mup.base_shapes(model, gamma=float(first["gamma"]), parametrization=first["parametrization"],
                             **shape_args)
    if fused is None:
        fused = functional.vmap_reason(modules[0], task.x_train[:2], task.n_out) is None
    return Members(modules, points, shapes, fused=fused)


class _Feed:
    """Minibatches of a fixed training set: one stream per distinct seed, a fresh permutation per epoch."""

    def __init__(self, task, seeds: list[int], member_stream: list[int], batch_size: int, device):
        self.task, self.batch_size = task, batch_size
        self.gens = [torch.Generator().manual_seed(data_seed(s)) for s in seeds]
        self.stream = list(member_stream)
        self.shared = len(seeds) == 1
        self.orders: list[torch.Tensor] = []
        self.device = device

    def refresh(self) -> None:
        self.orders = [torch.randperm(self.task.n_train, generator=g).to(self.device) for g in self.gens]

    def batch(self, lo: int, hi: int):
        """``(x, y)``: ``[B, ...]`` when one stream feeds every member, else ``[K, B, ...]``."""
        if self.shared:
            idx = self.orders[0][lo:hi]
        else:
            idx = torch.stack([self.orders[s][lo:hi] for s in self.stream])
        return self.task.x_train[idx], self.task.y_train[idx]

    def select(self, keep: list[int]) -> None:
        self.stream = [self.stream[j] for j in keep]


def train_bundle(task, experiment: Mapping[str, Any], points: Sequence[Mapping[str, Any]], *,
                 device: torch.device | str = "cpu", fused: bool | None = None, resume=None,
                 on_weights=None) -> Iterator[Report]:
    """Train the bundle ``points`` of a user model on ``task`` (a :class:`raysweep.custom.data.CustomTask`, or a
    built-in family's Task) and yield a Report every ``report_every`` steps; the last has ``finished=True``.

    ``fused``: force (True) or forbid (False) the vmapped step; None decides from the model. Raises
    ``ValueError`` when the points do not share :func:`raysweep.space.bundle_key`, InfeasibleError for a batch
    larger than the training set. ``resume`` and ``on_weights`` (:func:`raysweep.train.train_bundle`'s checkpoint
    resume and snapshots) are the MLP path's: here they must be None (its reports export no state).
    """
    if resume is not None or on_weights is not None:
        raise ValueError("a model factory's bundle has no checkpoint resume or weight snapshots (MLP path only)")
    device = torch.device(device)
    if len({bundle_key(p) for p in points}) != 1:
        raise ValueError("a bundle's points must share raysweep.space.bundle_key")
    first = points[0]
    batch_size, loss_name = int(first["batch_size"]), first["loss"]
    mse_convention = setting(experiment, "mse_convention")
    total_steps = steps_for(experiment, task, batch_size)
    report_every = int(setting(experiment, "report_every"))
    factor = float(setting(experiment, "divergence_factor"))
    centred = bool(setting(experiment, "model")["centred"])
    started = time.perf_counter()
    task = as_task(task)

    # --- model: the members' parameters stacked, their rates and optimizer state --------------------------------
    members = build_members(task, experiment, points, device=device, fused=fused)
    init_params = {n: p.clone() for n, p in members.params.items()} if centred else None
    init_buffers = {n: b.clone() for n, b in members.buffers.items()} if centred else None
    fn = functional.loss_fn(members.body, members.forward_mult, loss_name, mse_convention, task.n_out)
    sched = None if all(is_constant(p) for p in points) else ScheduleFeed(points, total_steps,
                                                                          members.lrs[0].dtype, device)

    # --- data: one stream per distinct seed --------------------------------------------------------------------
    seeds = sorted({int(p["seed"]) for p in points})
    feed = _Feed(task, seeds, [seeds.index(int(p["seed"])) for p in points], batch_size, device)
    x_eval, y_eval = task.x_eval.to(device), task.y_eval.to(device)
    out0 = members.outputs(x_eval)  # f(x_eval; theta_0), eval mode
    f0_eval = out0 if centred else None
    initial_loss = _losses(torch.zeros_like(out0) if centred else out0, y_eval, loss_name, mse_convention, task.n_out)
    chance = chance_accuracy(task.y_eval, task.n_out) if task.kind == "classification" else None
    left_band = np.zeros(len(points), dtype=bool)
    dead_since: dict[int, int] = {}
    alive = list(range(len(points)))
    window: list[torch.Tensor] = []
    pos = task.n_train  # the first step draws the first permutation

    # --- the loop: step, report, drop diverged members ---------------------------------------------------------
    for step in range(1, total_steps + 1):
        if pos + batch_size > task.n_train:
            feed.refresh()
            pos = 0
        x, y = feed.batch(pos, pos + batch_size)
        pos += batch_size
        f0 = None
        if centred:  # f(x; theta_0) of this batch, per member (train mode, as the step's forward)
            f0 = functional.outputs(members.body, members.forward_mult, init_params, init_buffers, x, members.fused,
                                    feed.shared)
        scale = None if sched is None else sched.at(step)
        window.append(members.step(fn, x, y, f0, feed.shared, step, scale))

        if step % report_every and step != total_steps:
            continue
        # report: judge divergence and death, drop diverged members
        out = members.outputs(x_eval)
        if centred:
            out = out - f0_eval
        eval_loss = _losses(out, y_eval, loss_name, mse_convention, task.n_out)
        acc = (out.argmax(-1) == y_eval).to(torch.float64).flatten(1).mean(1).cpu().numpy() \
            if task.kind == "classification" else None
        eval_np, initial_np = eval_loss.cpu().numpy(), initial_loss.cpu().numpy()
        train_loss, diverged = divergence(torch.stack(window, 1), step, eval_np, initial_np, factor, alive)
        left_band[alive] |= outside_band(train_loss, initial_np) | outside_band(eval_np, initial_np)
        dead_now = dead_members(np.full(len(alive), np.nan), eval_np, acc, initial_np, left_band[alive], chance)
        for j, member in enumerate(alive):
            if dead_now[j]:
                dead_since.setdefault(member, step)
            else:
                dead_since.pop(member, None)
        report = Report(
            step=step,
            epoch=step // (task.n_train // batch_size),
            samples_seen=step * batch_size,
            members=list(alive),
            train_loss=[float(v) for v in train_loss],
            eval_loss=[float(v) for v in eval_np],
            eval_accuracy=[None] * len(alive) if acc is None else [float(v) for v in acc],
            initial_loss=[float(v) for v in initial_np],
            diverged=diverged,
            dead={m: dead_since[m] for m in alive if m in dead_since},
            active_fraction=[None] * len(alive),
            finished=step == total_steps or len(diverged) == len(alive),
            wall_time_s=time.perf_counter() - started,
        )
        yield report
        if report.finished:
            return
        window = []
        if diverged:
            keep = [j for j, m in enumerate(alive) if m not in diverged]
            sel = torch.tensor(keep, device=device)
            alive = [alive[j] for j in keep]
            members.select(sel)
            if centred:
                init_params = {n: p[sel] for n, p in init_params.items()}
                init_buffers = {n: b[sel] for n, b in init_buffers.items()}
                f0_eval = f0_eval[sel]
            initial_loss = initial_loss[sel]
            feed.select(keep)
            if sched is not None:
                sched.select(keep)


def _losses(out: torch.Tensor, y: torch.Tensor, loss: str, mse_convention: str, n_out: int) -> torch.Tensor:
    """Each member's loss ``[K]`` of outputs ``[K, n, ..., out]``."""
    return torch.stack([functional.member_loss(o, y, loss, mse_convention, n_out) for o in out])


def as_task(task):
    """The task as this trainer reads it: a CustomTask as it is; a built-in family's Task with inputs of shape
    ``(dim,)`` (fixed data sets only)."""
    from raysweep.custom.data import CustomTask  # the same attributes

    if hasattr(task, "input_shape"):
        return task
    if task.online:
        raise ValueError(f"{task.dataset} is online; a model factory trains on fixed data sets (custom, digits, "
                         "mnist, ... or an online family with online: false)")
    return CustomTask(dataset=task.dataset, kind=task.kind, input_shape=(task.dim,), n_out=task.n_out,
                      x_eval=task.x_eval, y_eval=task.y_eval, x_train=task.x_train, y_train=task.y_train,
                      params=task.params)
