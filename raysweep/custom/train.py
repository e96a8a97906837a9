"""Train a bundle of user models (``experiment.model: {factory: ...}``) and yield :class:`raysweep.train.Report`s.

The general path beside the MLP's hand-written one (:mod:`raysweep.train`), with the same contract: K members that
share :func:`raysweep.points.bundle_key` (they may differ in eta, gamma, seed, the optimizer's hyperparameters and
the schedule); one data stream per distinct seed (a fresh permutation of a fixed training set every epoch, the
tail smaller than a batch dropped; or an online teacher's fresh blocks, as the MLP path draws them); a report every ``report_every`` steps with the train loss (mean over the window),
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
Unfused, the random numbers of a member's forwards at a step (dropout; the ``theta_0`` forward's too, so that
both terms of the centred function draw the same masks) come from its seed and the step alone.

Gradient noise scale (``experiment.grad_noise_scale``), as the MLP path: at every report each member's
``grad_sq``, ``grad_trace_cov`` and ``grad_noise_scale`` from noise batches of its stream's own generator, by the
trainer's own gradients (:mod:`raysweep.custom.noise`); no training number moves. Curvature
(``experiment.curvature``), as the MLP path: every ``every`` reports the kinds asked for, and ``initial_sharpness``
at ``theta_0``, by exact Hessian-vector products of the trained loss (:mod:`raysweep.custom.curvature`).

Checkpoints (:mod:`raysweep.checkpoint`), as the MLP path: every report but the last exports a
:class:`raysweep.train.TrainState` (the stacked parameters and buffers, the optimizer's tensors, the members alive
and their dead-rule memory, each data stream's generator state before the current epoch and the position in it,
the buffers of the centred ``theta_0`` copy, the noise batches' generators) and ``resume`` continues from it bit for bit. ``theta_0``'s
parameters, the rates, the eval outputs at ``theta_0`` and the schedule follow from the points and are rebuilt.

Pure: torch and the user's factory; no Ray, no I/O.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from raysweep.custom import functional, mup
from raysweep.custom.curvature import CurvatureFeed
from raysweep.custom.factory import build_model
from raysweep.custom.noise import NoiseFeed
from raysweep.dead import chance_accuracy, dead_members, outside_band
from raysweep.instrument_spec import curvature_option, grad_noise_option, snapshot_steps
from raysweep.points import axis_value, bundle_key, update_path
from raysweep.schedules import is_constant
from raysweep.seeds import data_seed, derive_seed
from raysweep.space import setting
from raysweep.step import (
    OptState, ScheduleFeed, draw_samples, optimizer_state, optimizer_tensors, scaled_rates, update, update_general,
)
from raysweep.train import Report, TrainState, divergence, steps_for

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
        eps_mult = mup.eps_multipliers(shapes, named) if first["parametrization"] == "muP" else {}
        settings = [_optimizer_settings(p, [self.lr_mult[n] for n in self.names],
                                        [eps_mult.get(n, 1.0) for n in self.names]) for p in points]
        self.opt = optimizer_state(update_path(first), first["optimizer"], self.flat(self.params), settings)

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def flat(self, tensors: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Stacked tensors as ``[K, numel, 1]``, in parameter order (what raysweep.step's updates take): views of
        contiguous ones (the parameters, whose updates write through), copies of the others (vmap's gradients)."""
        return [tensors[n].reshape(tensors[n].shape[0], -1, 1) for n in self.names]

    def rng_seeds(self, step: int) -> list[int] | None:
        """Unfused, each member's seed of the random numbers (dropout) of ``step``'s forwards: a function of its
        seed and the step (:func:`raysweep.seeds.derive_seed`), the same alone, in a bundle, or resumed; fused,
        None (a vmapped forward draws none)."""
        return None if self.fused else [derive_seed(seed, f"forward:{step}") for seed in self.seeds]

    def step(self, fn, x, y, f0, shared: bool, step: int, scale) -> torch.Tensor:
        """One optimizer step of every member in place; returns their minibatch losses ``[K]``. Unfused, each
        member's random numbers come from :meth:`rng_seeds`."""
        if self.fused:
            grads, losses = functional.grads_fused(fn, self.params, self.buffers, x, y, f0, shared)
        else:
            grads, losses = functional.grads_unfused(fn, self.params, self.buffers, x, y, f0, shared,
                                                     self.rng_seeds(step))
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

    def load(self, params: Sequence[torch.Tensor], buffers: Mapping[str, torch.Tensor],
             optimizer: Sequence[torch.Tensor]) -> None:
        """Overwrite the members' parameters (``params`` in :attr:`names` order), buffers (by name) and optimizer
        tensors (:func:`raysweep.step.optimizer_tensors`' order) with saved ones of the same shapes (a resume)."""
        live = [self.params[n] for n in self.names] + [self.buffers[n] for n in self.buffers]
        saved = list(params) + [buffers.get(n) for n in self.buffers]
        opt = optimizer_tensors(self.opt)
        if len(params) != len(self.names) or set(buffers) != set(self.buffers) or any(
                s is None or tuple(s.shape) != tuple(t.shape) for s, t in zip(saved, live)):
            raise ValueError("resume: a state of another model (parameters or buffers differ)")
        if len(opt) != len(optimizer) or any(tuple(s.shape) != tuple(t.shape) for s, t in zip(optimizer, opt)):
            raise ValueError("resume: an optimizer state of another optimizer")
        for t, s in zip(live + opt, saved + list(optimizer)):
            t.copy_(s)


def _optimizer_settings(point: Mapping[str, Any], lr_mult: Sequence[float], eps_mult: Sequence[float]) -> dict:
    """A member's optimizer hyperparameters, one eps and weight decay per parameter: with the ``lr`` scaling the
    decay is ``lambda / lr_mult`` (one timescale per parameter, the muP rule of raysweep.custom.mup); with
    ``eps_scaling: mup`` (under muP) the eps is ``eps * eps_mult`` (:func:`raysweep.custom.mup.eps_multipliers`)."""
    value = lambda axis: axis_value(point, axis)  # noqa: E731
    lam, independent = value("weight_decay"), value("weight_decay_scaling") == "independent"
    eps = [value("eps") * m for m in eps_mult] if value("eps_scaling") == "mup" else [value("eps")] * len(lr_mult)
    return {
        "momentum": value("momentum"), "nesterov": value("nesterov"), "beta1": value("beta1"),
        "beta2": value("beta2"), "eps": eps,
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
    shapes = None if first["parametrization"] == "torch_sp" else mup.base_shapes(
        model, gamma=float(first["gamma"]), parametrization=first["parametrization"], **shape_args)
    if fused is None:
        fused = functional.vmap_reason(modules[0], task.x_eval[:2], task.n_out) is None
    return Members(modules, points, shapes, fused=fused)


class _Feed:
    """Minibatches: one stream per distinct seed. A fixed training set is read in a fresh permutation per epoch;
    an online teacher gives a block of fresh samples per stream when one is used up (at least one batch: the MLP
    path's blocks, :class:`raysweep.train` ``_Feed``). ``size``: the samples of a source (epoch or block)."""

    def __init__(self, task, seeds: list[int], member_stream: list[int], batch_size: int, device):
        self.task, self.batch_size = task, batch_size
        self.gens = [torch.Generator().manual_seed(data_seed(s)) for s in seeds]
        self.stream = list(member_stream)
        self.shared = len(seeds) == 1
        self.size = max(task.block_size, batch_size) if task.online else task.n_train
        self.orders: list[torch.Tensor] = []
        self.blocks: list[tuple[torch.Tensor, torch.Tensor]] = []  # online: the current block of every stream
        self.before: list[torch.Tensor] = []  # the generators' states before the current permutations / blocks
        self.device = device

    def refresh(self) -> None:
        self.before = [g.get_state() for g in self.gens]
        if self.task.online:
            self.blocks = [self.task.draw_block(g) if self.size == self.task.block_size
                           else draw_samples(self.task, g, self.size) for g in self.gens]
            return
        self.orders = [torch.randperm(self.task.n_train, generator=g).to(self.device) for g in self.gens]

    def restore(self, before: Sequence[torch.Tensor]) -> None:
        """Set the generators to ``before`` and draw that epoch's permutations again (exact resume)."""
        for g, state in zip(self.gens, before):
            g.set_state(state)
        self.refresh()

    def batch(self, lo: int, hi: int):
        """``(x, y)``: ``[B, ...]`` when one stream feeds every member, else ``[K, B, ...]``."""
        if self.task.online:
            if self.shared:
                x, y = self.blocks[0]
                return x[lo:hi], y[lo:hi]
            return (torch.stack([self.blocks[s][0][lo:hi] for s in self.stream]),
                    torch.stack([self.blocks[s][1][lo:hi] for s in self.stream]))
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

    ``fused``: force (True) or forbid (False) the vmapped step; None decides from the model. Every report but the
    last can :meth:`~raysweep.train.Report.export` the bundle's :class:`raysweep.train.TrainState`, and ``resume``
    (such a state of these points) continues from it: the reports after its step are bit-identical to those of an
    uninterrupted run (:func:`raysweep.train.train_bundle`'s contract). Raises ``ValueError`` when the points do not
    share :func:`raysweep.points.bundle_key` or ``resume`` is a state of other points, InfeasibleError for a batch
    larger than the training set. ``on_weights(step, members, weights)`` (``experiment.snapshots``), when given, is
    called as the MLP path calls it: at step 0 and after each step of
    :func:`raysweep.instrument_spec.snapshot_steps`, with the bundle indices of the members still training and their
    stacked parameters ``[K, *shape]`` in :attr:`Members.names` order; it must only read them (copy what it keeps).
    """
    device = torch.device(device)
    if len({bundle_key(p) for p in points}) != 1:
        raise ValueError("a bundle's points must share raysweep.points.bundle_key")
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
    noise, option = None, grad_noise_option(setting(experiment, "grad_noise_scale"))
    if option is not None:  # its own generators: the training stream never moves for it
        noise = NoiseFeed(task, seeds, option["batches"], option["batch_size"] or batch_size, device)
    curv, initial_sharpness = None, {}
    if setting(experiment, "curvature") is not None:  # its own batch, generators and buffer copies
        curv = CurvatureFeed(task, seeds, curvature_option(setting(experiment, "curvature")), batch_size, device)
        if "sharpness" in curv.option["kinds"]:  # at theta_0: the trials column initial_sharpness
            at_init = curv.measure(members, fn, feed.stream, [], init=(init_params, init_buffers) if centred else None,
                                   kinds=["sharpness"])
            initial_sharpness = dict(enumerate(at_init["sharpness"]))
    x_eval, y_eval = task.x_eval.to(device), task.y_eval.to(device)
    out0 = members.outputs(x_eval)  # f(x_eval; theta_0), eval mode
    f0_eval = out0 if centred else None
    initial_loss = _losses(torch.zeros_like(out0) if centred else out0, y_eval, loss_name, mse_convention, task.n_out)
    chance = chance_accuracy(task.y_eval, task.n_out) if task.kind == "classification" else None
    left_band = np.zeros(len(points), dtype=bool)
    dead_since: dict[int, int] = {}
    alive = list(range(len(points)))
    snaps = set(snapshot_steps(setting(experiment, "snapshots"), total_steps)) if on_weights else set()
    if on_weights:  # theta_0, before a resume loads its state
        on_weights(0, list(alive), [members.params[n] for n in members.names])
    window: list[torch.Tensor] = []
    pos = feed.size  # the first step draws the first permutation / block

    def keep_only(keep: list[int]) -> None:
        """Drop every member but ``keep`` (positions in ``alive``) from the stacked tensors."""
        nonlocal alive, init_params, init_buffers, f0_eval, initial_loss
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

    def export(diverged: Mapping[int, int]) -> TrainState:
        """The state after the report whose ``diverged`` members are about to be dropped (copies, on the CPU).
        ``theta_0`` is not kept (the factory rebuilds it from the seeds), its buffers are (``init_buffers``)."""
        keep = [j for j, m in enumerate(alive) if m not in diverged]
        sel = torch.tensor(keep, device=device)
        copy = lambda t: t[sel].to("cpu", copy=True)  # noqa: E731
        kept = [alive[j] for j in keep]
        return TrainState(
            step=step, members=kept, weights=[copy(members.params[n]) for n in members.names],
            optimizer=[copy(t) for t in optimizer_tensors(members.opt)],
            data_rng={seeds[i]: st.clone() for i, st in enumerate(feed.before)}, position=pos,
            noise_rng={} if noise is None else dict(zip(seeds, noise.states())),
            left_band=[bool(left_band[m]) for m in kept], dead_since=[dead_since.get(m, -1) for m in kept],
            wall_time_s=time.perf_counter() - started, buffers={n: copy(b) for n, b in members.buffers.items()},
            init_buffers={n: copy(b) for n, b in init_buffers.items()} if centred else {})

    start = 1
    if resume is not None:  # continue after the report of resume.step: its members, tensors and streams
        if not set(resume.members) <= set(alive) or not set(seeds) <= set(resume.data_rng):
            raise ValueError("resume: a state of other points")
        keep_only(list(resume.members))
        members.load(resume.weights, resume.buffers, resume.optimizer)
        if centred and resume.init_buffers:
            for n, b in init_buffers.items():
                b.copy_(resume.init_buffers[n])
        feed.restore([resume.data_rng[s] for s in seeds])
        if noise is not None:
            noise.restore([resume.noise_rng[s] for s in seeds])
        pos = resume.position
        left_band[alive] = resume.left_band
        dead_since = {m: d for m, d in zip(alive, resume.dead_since) if d >= 0}
        start = resume.step + 1
        started -= resume.wall_time_s
        if curv is not None:  # the reports before resume.step, counted as the uninterrupted run counted them
            curv.reports = resume.step // report_every

    # --- the loop: step, report, drop diverged members ---------------------------------------------------------
    for step in range(start, total_steps + 1):
        if pos + batch_size > feed.size:
            feed.refresh()
            pos = 0
        x, y = feed.batch(pos, pos + batch_size)
        pos += batch_size
        f0 = None
        if centred:  # f(x; theta_0) of this batch, per member (train mode, the step's random numbers)
            f0 = functional.outputs(members.body, members.forward_mult, init_params, init_buffers, x, members.fused,
                                    feed.shared, members.rng_seeds(step))
        scale = None if sched is None else sched.at(step)
        window.append(members.step(fn, x, y, f0, feed.shared, step, scale))
        if step in snaps:
            on_weights(step, list(alive), [members.params[n] for n in members.names])

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
        gns = {}
        if noise is not None:
            gns = noise.estimate(members, fn, feed.stream, step,
                                 (init_params, init_buffers) if centred else None)
        curvature = None
        if curv is not None and curv.due():
            curvature = curv.measure(members, fn, feed.stream, [j for j, m in enumerate(alive) if m in diverged],
                                     step=step, init=(init_params, init_buffers) if centred else None,
                                     lr_effective=[float(points[m]["eta"]) for m in alive])
        report = Report(
            step=step,
            epoch=None if task.online else step // (task.n_train // batch_size),
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
            **gns,
            **(curvature or {}),
            initial_sharpness=[initial_sharpness[m] for m in alive] if initial_sharpness else None,
        )
        if not report.finished:
            report.export = functools.partial(export, diverged)
        yield report
        if report.finished:
            return
        window = []
        if diverged:
            keep_only([j for j, m in enumerate(alive) if m not in diverged])


def _losses(out: torch.Tensor, y: torch.Tensor, loss: str, mse_convention: str, n_out: int) -> torch.Tensor:
    """Each member's loss ``[K]`` of outputs ``[K, n, ..., out]``."""
    return torch.stack([functional.member_loss(o, y, loss, mse_convention, n_out) for o in out])


def as_task(task):
    """The task as this trainer reads it: a CustomTask as it is; a built-in family's Task with inputs of shape
    ``(dim,)``: a fixed data set as a CustomTask, an online teacher as an OnlineTeacher."""
    from raysweep.custom.data import CustomTask, OnlineTeacher  # the same attributes

    if hasattr(task, "input_shape"):
        return task
    if task.online:
        return OnlineTeacher(task)
    return CustomTask(dataset=task.dataset, kind=task.kind, input_shape=(task.dim,), n_out=task.n_out,
                      x_eval=task.x_eval, y_eval=task.y_eval, x_train=task.x_train, y_train=task.y_train,
                      params=task.params)
