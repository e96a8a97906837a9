"""Train one configuration, or a fused bundle of configurations that share their shapes, and yield reports.

A *bundle* is K members that share batch size, width, depth, parametrization, optimizer, loss, learning-rate
rule and update path (:func:`raysweep.points.bundle_key`); they may differ in eta, gamma, seed, the optimizer's
hyperparameters (momentum, betas, eps, weight decay) and the learning-rate schedule (:mod:`raysweep.schedules`,
a per-member multiplier of every layer's rate). Their weights are stacked (``[K, fan_in, fan_out]``), every step is
one batched forward and backward, and each member keeps its own learning rates, centring, data stream (one per
distinct seed) and divergence state. A single trial is a bundle of one: there is only one training loop.

Divergence: a member whose minibatch loss becomes NaN or Inf is diverged at that step (the window's losses stay on
the device until the report). At each report a member whose mean train loss or eval loss exceeds
``divergence_factor`` times its initial loss (the zero-predictor loss on the eval set) is diverged at that report's
step. A diverged member reports no more rows and is dropped from the stacked tensors, so it can never touch the
others' numbers.

Speed (a step of a small MLP is a few dozen tiny ops, so their number is what costs):

- no autograd: :func:`raysweep.model.forward_cached` / :func:`raysweep.model.backward` are the forward and the
  backward by hand, and for SGD the update is fused into the gradient's bmm (one pass over each weight matrix);
- members that share a seed share their data and ``theta_0``: ``f(x; theta_0)`` is computed once per distinct seed
  and per sample (once per online block or for the whole training set, in cache-sized pieces), and folded into the
  target ``t = a f0 + y``; a step only slices inputs and targets out of the current block or epoch;
- the host syncs only on report steps; eval runs in cache-sized pieces too.

Everything a member computes is per member (bmm, or mul and sum for a scalar readout; pieces sized by the width,
never by the bundle), so its numbers are bit-identical alone and in any bundle.

Dead networks (:mod:`raysweep.dead`): at each report a member is *dead* when some hidden layer has no unit active on
any eval sample, or (classification) it collapsed to chance after its loss left the band around the initial loss.
``Report.dead`` maps each member dead at a report to the first report step of its current dead streak (a member that
recovers leaves it); ``Report.active_fraction`` is, per member, the smallest fraction over hidden layers of units
active on some eval sample. Detection only flags: a dead member keeps training, and every training number is the
same with it or without it (its ops run inside the report's no-grad eval forward and write only their own tensors).

The linear student (``experiment.model: linear``): the depth-1 stack ``f(x) = w.x`` from ``w = 0`` with readout
multiplier 1 (:func:`raysweep.model.linear_student`), trained by the same step; on a task with a known population
law (``task.population``: the linear families) its eval loss and initial loss are the exact population losses.

Gradient noise scale (``experiment.grad_noise_scale``, off by default): at every report, at the current weights,
each member's ``grad_trace_cov`` (tr(Sigma)), ``grad_sq`` (|G|^2) and ``grad_noise_scale`` (B_simple) from a noise
batch of ``m`` chunks of ``b`` samples (:mod:`raysweep.noise`). The noise batches come from a generator of their
own per seed (:func:`noise_seed`), and the gradients never reach the weights or the optimizer state: turning it on
changes no other number.

Curvature (``experiment.curvature``, off by default): every ``every`` reports, each member's ``sharpness``,
``batch_sharpness``, ``preconditioned_sharpness`` and ``hessian_trace`` (the kinds asked for) at the report's
weights, on a fixed curvature batch per seed from a generator of its own (:mod:`raysweep.sharpness`); like the noise
scale it only reads the weights and the optimizer state. Snapshots (``experiment.snapshots``): ``on_weights`` sees
the weights at step 0 and at the snapshot steps (:func:`train_bundle`).

Pure: no Ray, no file output.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from raysweep import model
from raysweep.dead import CHANCE_SIGMAS, COLLAPSE_LOSS_MIN, LOSS_BAND, chance_accuracy, dead_members, outside_band
from raysweep.errors import InfeasibleError
from raysweep.limits import F0_CACHE_BYTES
from raysweep.noise import NoiseFeed
from raysweep.scaling import epsilons, learning_rates, weight_decays
from raysweep.schedules import is_constant
from raysweep.seeds import data_seed, init_seed, noise_seed
from raysweep.sharpness import CurvatureFeed
from raysweep.instrument_spec import curvature_option, grad_noise_option, snapshot_steps
from raysweep.points import BUNDLE_KEYS, axis_value, bundle_key, update_path
from raysweep.space import setting
from raysweep.step import (
    ADAM_BETAS,
    ADAM_EPS,
    OptState,
    ScheduleFeed,
    bundle_step,
    draw_samples,
    forward_chunked,
    loss_coefficients,
    loss_per_member,
    member_bytes,
    optimizer_state,
    optimizer_tensors,
    scaled_rates,
    step_groups,
    targets,
)

# the names this module has always offered, now at home in raysweep.step / raysweep.seeds / raysweep.dead
__all__ = [
    "ADAM_BETAS", "ADAM_EPS", "BUNDLE_KEYS", "CHANCE_SIGMAS", "COLLAPSE_LOSS_MIN", "F0_CACHE_BYTES", "LOSS_BAND",
    "Report", "TrainState", "bundle_key", "chance_accuracy", "data_seed", "dead_members", "divergence", "init_seed",
    "loss_per_member", "noise_seed", "optimizer_settings", "outside_band", "steps_for", "train", "train_bundle",
]  # fmt: skip



@dataclass
class Report:
    """What a bundle reports every ``report_every`` steps, for the members still running (``members``)."""

    step: int
    epoch: int | None
    samples_seen: int
    members: list[int]  # indices into the bundle's points
    train_loss: list[float]
    eval_loss: list[float]
    eval_accuracy: list[float | None]
    initial_loss: list[float]  # the zero-predictor loss on the eval set: the loss at step 0, for every gamma
    diverged: dict[int, int] = field(default_factory=dict)  # member index -> diverged step (this report)
    finished: bool = False
    wall_time_s: float = 0.0
    # gradient noise scale (None when experiment.grad_noise_scale is off): per member, the unbiased estimates of
    # |G|^2 (grad_sq) and tr(Sigma) (grad_trace_cov) at this report's weights, and their ratio B_simple
    # (grad_noise_scale); the Parquet columns of the same names (see raysweep.noise)
    grad_sq: list[float] | None = None
    grad_trace_cov: list[float] | None = None
    grad_noise_scale: list[float] | None = None
    # dead networks (module docstring): member index -> first report step of its current dead streak, for the
    # members dead at this report; per member, the smallest fraction over hidden layers of units active on some
    # eval sample (None for depth 1: no hidden layer)
    dead: dict[int, int] = field(default_factory=dict)
    active_fraction: list[float | None] | None = None
    # curvature (None unless experiment.curvature is on, measures this kind and this report is one it measures):
    # per member at this report's weights (raysweep.sharpness); None for a member not measured (diverged here;
    # preconditioned_sharpness of SGD)
    sharpness: list[float | None] | None = None
    batch_sharpness: list[float | None] | None = None
    preconditioned_sharpness: list[float | None] | None = None
    hessian_trace: list[float | None] | None = None
    initial_sharpness: list[float | None] | None = None  # sharpness at theta_0 (curvature on, with sharpness)
    # the bundle's state right after this report (:class:`TrainState`), for a checkpoint; None on the last report.
    # Call it before asking for the next report: it reads the live tensors (and copies them)
    export: Callable[[], TrainState] | None = field(default=None, repr=False, compare=False)


@dataclass
class TrainState:
    """Everything a bundle needs to continue after a report exactly as if it had never stopped: rows ``[K, ...]``
    for the ``K`` members still training, at the report's ``step`` (the window of losses is then empty).

    ``members``: indices into the bundle's points; ``weights``: per layer; ``optimizer``: the optimizer's
    per-member tensors as one list (Adam: ``m, v`` of each layer; empty for SGD); ``data_rng``: per data stream
    (its seed), the generator state *before* the current online block or epoch permutation was drawn, and
    ``position`` the samples of it already used (resuming redraws the block or permutation and skips them);
    ``noise_rng``: the noise feed's generator per seed (gradient noise scale), else empty; ``left_band`` and
    ``dead_since`` (-1: not dead) per member: the dead-network rule's memory; ``wall_time_s`` so far; ``extra``:
    tensors a caller keeps with the state (the trial's snapshots not written yet), by name. A model factory's
    bundle (:mod:`raysweep.custom.train`) keeps its stacked parameters in ``weights`` (the model's parameter order)
    and its stacked buffers by name in ``buffers`` (batch norm's running statistics...), and with ``centred`` those of
    the ``theta_0`` copy (a train-mode forward may update them) in ``init_buffers``; both are empty on the MLP path.
    The initial weights, learning rates, eval targets and curvature batches are not kept: they follow from the
    points (curvature's probes are seeded from the seed and the step, and its report count from ``step``).
    """

    step: int
    members: list[int]
    weights: list[torch.Tensor]
    optimizer: list[torch.Tensor]
    data_rng: dict[int, torch.Tensor]
    position: int
    noise_rng: dict[int, torch.Tensor]
    left_band: list[bool]
    dead_since: list[int]
    wall_time_s: float = 0.0
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    init_buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor (contiguous, CPU), e.g. for safetensors; :meth:`from_parts` reads it back."""
        out = {f"weights.{i}": w for i, w in enumerate(self.weights)}
        out.update({f"optimizer.{i}": t for i, t in enumerate(self.optimizer)})
        out.update({f"data_rng.{s}": t for s, t in self.data_rng.items()})
        out.update({f"noise_rng.{s}": t for s, t in self.noise_rng.items()})
        out.update({f"extra.{k}": t for k, t in self.extra.items()})
        out.update({f"buffers.{k}": t for k, t in self.buffers.items()})
        out.update({f"init_buffers.{k}": t for k, t in self.init_buffers.items()})
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}

    def meta(self) -> dict:
        """The JSON-able rest (:meth:`from_parts`)."""
        return {"step": self.step, "members": list(self.members), "position": self.position,
                "left_band": [bool(v) for v in self.left_band], "dead_since": [int(v) for v in self.dead_since],
                "wall_time_s": float(self.wall_time_s), "n_layers": len(self.weights),
                "n_optimizer": len(self.optimizer)}

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> TrainState:
        """The state of :meth:`tensors` and :meth:`meta`; KeyError when a piece is missing."""
        def rng(prefix):
            return {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith(prefix + ".")}

        def named(prefix):
            return {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

        return cls(step=int(meta["step"]), members=[int(m) for m in meta["members"]],
                   weights=[tensors[f"weights.{i}"] for i in range(int(meta["n_layers"]))],
                   optimizer=[tensors[f"optimizer.{i}"] for i in range(int(meta["n_optimizer"]))],
                   data_rng=rng("data_rng"), position=int(meta["position"]), noise_rng=rng("noise_rng"),
                   left_band=[bool(v) for v in meta["left_band"]], dead_since=[int(v) for v in meta["dead_since"]],
                   wall_time_s=float(meta["wall_time_s"]),
                   extra=named("extra"), buffers=named("buffers"), init_buffers=named("init_buffers"))

    def subset(self, rows: Sequence[int]) -> TrainState:
        """The members at ``rows`` (positions in :attr:`members`), renumbered ``0 .. len(rows) - 1``: the state of a
        bundle of just their points, in that order (a member's numbers do not depend on its bundle)."""
        sel = torch.tensor(list(rows), dtype=torch.long)
        return TrainState(step=self.step, members=list(range(len(rows))), weights=[w[sel] for w in self.weights],
                          optimizer=[t[sel] for t in self.optimizer], data_rng=dict(self.data_rng),
                          position=self.position, noise_rng=dict(self.noise_rng),
                          left_band=[self.left_band[r] for r in rows], dead_since=[self.dead_since[r] for r in rows],
                          wall_time_s=self.wall_time_s, buffers={k: b[sel] for k, b in self.buffers.items()},
                          init_buffers={k: b[sel] for k, b in self.init_buffers.items()})


class _Feed:
    """The bundle's minibatches: inputs ``x`` and targets with ``f(x; theta_0)`` folded in.

    One data stream per distinct seed; members that share a seed share their stream *and* their initial weights,
    so ``f(x; theta_0)`` is computed once per stream (the raw output, times each member's readout multiplier).
    All streams move in lockstep (same batch size, same source size): one position for all of them.

    Sources: online teachers draw a block of fresh samples when one is used up; fixed data sets read a fresh
    random permutation every epoch (the tail smaller than a batch is dropped). A source is *materialized* (inputs,
    and targets ``t = a f0_raw + y`` per member) once per block or epoch, so a step only slices it; a fixed data
    set read by several streams, or too large for that, is gathered per step instead.

    ``batch(lo, hi)`` gives ``(x, t, labels)``: ``x`` ``[B, D]`` when one stream feeds every member, else
    ``[K, B, D]``; for MSE ``t = a f0 + y`` and ``labels`` is None; for cross-entropy ``t = a f0`` and ``labels``
    the int64 classes (``[B]`` or ``[K, B]``).
    """

    def __init__(self, task, seeds: list[int], member_stream: list[int], init, batch_size: int, out_mult,
                 loss: str, dtype: torch.dtype, device: torch.device):
        self.task, self.init, self.loss, self.dtype, self.device = task, init, loss, dtype, device
        self.gens = [torch.Generator().manual_seed(data_seed(s)) for s in seeds]
        self.stream = torch.tensor(member_stream, device=device)  # member -> stream, for the members alive
        self.out_mult = out_mult
        # an online block holds at least one batch
        self.size = max(task.block_size, batch_size) if task.online else task.n_train
        self.shared = len(seeds) == 1
        self.f0_all = None  # fixed data: f(x; theta_0) of the whole training set per stream [S, n, out], if cached
        self.gather = False
        if not task.online:
            self.x_all = task.x_train.to(device=device, dtype=dtype)
            self.y_all = targets(task.y_train.to(device), loss, task.n_out, dtype)
            el = self.x_all.element_size()
            k, n, out = len(member_stream), self.size, task.n_out
            if len(seeds) * n * out * el <= F0_CACHE_BYTES:
                self.f0_all = forward_chunked(init, self.x_all)
            # an epoch's permuted copy (inputs, per-member targets) must fit too
            fits = (k * out + task.dim) * n * el <= F0_CACHE_BYTES
            self.gather = not (self.shared and self.f0_all is not None and fits)
        self.src: tuple | None = None
        self.orders: list[torch.Tensor] = []
        self.before: list[torch.Tensor] = []  # the generators' states before the current block / permutation

    def restore(self, before: Sequence[torch.Tensor]) -> None:
        """Set the generators to ``before`` and draw that block / permutation again (exact resume)."""
        for g, state in zip(self.gens, before):
            g.set_state(state)
        self.refresh()

    def refresh(self) -> None:
        """The next block (online) or epoch permutation (fixed) of every stream, from the stream's generator."""
        task = self.task
        self.before = [g.get_state() for g in self.gens]
        if task.online:
            blocks = [task.draw_block(g) if self.size == task.block_size else draw_samples(task, g, self.size)
                      for g in self.gens]
            x = blocks[0][0] if self.shared else torch.stack([b[0] for b in blocks])
            y = blocks[0][1] if self.shared else torch.stack([b[1] for b in blocks])
            x = x.to(self.dtype)
            y = targets(y, self.loss, task.n_out, self.dtype)
            f0 = forward_chunked(self.init, x)  # [S, P, out]
            self._materialize(x, y, f0)
            return
        self.orders = [torch.randperm(self.size, generator=g).to(self.device) for g in self.gens]
        if not self.gather:
            order = self.orders[0]
            self._materialize(self.x_all[order], self.y_all[order], self.f0_all[:, order])

    def _materialize(self, x, y, f0) -> None:
        """Keep ``x`` and the per-member targets of a whole source; per-stream tensors are spread to members."""
        if not self.shared:
            x, y = x[self.stream], y[self.stream]
        t = f0[self.stream] * self.out_mult
        if self.loss == "xent":
            self.src = (x, t, y)
        else:
            self.src = (x, t.add_(y), None)

    def batch(self, lo: int, hi: int):
        """The minibatch of source positions ``lo:hi``."""
        if not self.gather:
            x, t, labels = self.src
            if self.shared:
                return x[lo:hi], t[:, lo:hi], None if labels is None else labels[lo:hi]
            return x[:, lo:hi], t[:, lo:hi], None if labels is None else labels[:, lo:hi]
        idx = self.orders[0][lo:hi] if self.shared else torch.stack([o[lo:hi] for o in self.orders])  # [B] / [S, B]
        if self.f0_all is not None:
            streams = torch.arange(len(idx), device=idx.device)[:, None]
            f0 = self.f0_all[:, idx] if self.shared else self.f0_all[streams, idx]  # [1, B, out] / [S, B, out]
        else:
            f0 = forward_chunked(self.init, self.x_all[idx])
        if not self.shared:
            idx, f0 = idx[self.stream], f0[self.stream]
        x, y = self.x_all[idx], self.y_all[idx]
        t = f0 * self.out_mult  # [K, B, out]
        if self.loss == "xent":
            return x, t, y
        return x, t.add_(y), None

    def select(self, keep: torch.Tensor, out_mult: torch.Tensor) -> None:
        """Keep only the members ``keep`` (indices into the members alive)."""
        self.stream, self.out_mult = self.stream[keep], out_mult
        if self.src is not None:
            x, t, labels = self.src
            if not self.shared:
                x = x[keep]
                labels = None if labels is None else labels[keep]
            self.src = (x, t[keep], labels)


def steps_for(experiment: Mapping[str, Any], task, batch_size: int) -> int:
    """Total optimizer steps: ``steps``, or ``epochs * floor(n_train / B)`` (the last partial batch is dropped)."""
    if not task.online and batch_size > task.n_train:
        raise InfeasibleError(
            f"batch_size {batch_size} is larger than the training set of {task.dataset} ({task.n_train} samples)"
        )
    if setting(experiment, "steps"):
        return int(setting(experiment, "steps"))
    if task.online:
        raise InfeasibleError(f"{task.dataset} is online: give steps, not epochs")
    return int(setting(experiment, "epochs")) * (task.n_train // batch_size)


def train_bundle(
    task,
    experiment: Mapping[str, Any],
    points: Sequence[Mapping[str, Any]],
    *,
    device: torch.device | str = "cpu",
    resume: TrainState | None = None,
    on_weights=None,
) -> Iterator[Report]:
    """Train the bundle ``points`` on ``task`` and yield a :class:`Report` every ``report_every`` steps.

    The last report has ``finished=True``; every other one can :meth:`~Report.export` the bundle's state, and
    ``resume`` (such a state of these points) continues from it: the reports after its step are bit-identical to
    those of an uninterrupted run. ``on_weights(step, members, weights)``, when given, is called at step 0 and after
    each step of :func:`raysweep.instrument_spec.snapshot_steps` (``experiment.snapshots``) with the bundle indices of the
    members still training and their stacked weights: it must only read them (copy what it keeps). Raises
    :class:`InfeasibleError` for a batch larger than the data set
    and ``ValueError`` when the points do not share :data:`BUNDLE_KEYS`.
    """
    device = torch.device(device)
    keys = {bundle_key(p) for p in points}
    if len(keys) != 1:
        raise ValueError(f"a bundle's points must share {BUNDLE_KEYS}; got {sorted(keys, key=str)}")
    first = points[0]
    batch_size, width, depth = int(first["batch_size"]), int(first["width"]), int(first["depth"])
    loss_name, optimizer = first["loss"], first["optimizer"]
    mse_convention = setting(experiment, "mse_convention")
    dtype = torch.float64 if setting(experiment, "dtype") == "float64" else torch.float32
    total_steps = steps_for(experiment, task, batch_size)
    linear = setting(experiment, "model") == "linear"
    # a linear student of a linear-Gaussian task is scored by its exact population loss, not on a sample
    population = task.population if linear and loss_name == "mse" else None
    report_every = int(setting(experiment, "report_every"))
    factor = float(setting(experiment, "divergence_factor"))
    started = time.perf_counter()

    # --- model: stacked weights, per-member readout multiplier and per-layer learning rates --------------------
    gamma = torch.tensor([float(p["gamma"]) for p in points], dtype=dtype, device=device)
    if linear:  # f(x) = w.x from w = 0 (raysweep.model.linear_student)
        weights = model.linear_student(task.dim, task.n_out, len(points), dtype=dtype, device=device)
        out_mult = torch.ones(len(points), 1, 1, dtype=dtype, device=device)
    else:
        widths = model.layer_widths(task.dim, width, depth, task.n_out)
        weights = model.init_weights(widths, [init_seed(p["seed"]) for p in points], dtype=dtype, device=device)
        out_mult = model.readout_multiplier(width, gamma, first["parametrization"])
    rates = [learning_rates(**{k: p[k] for k in _LR_ARGS}, dim=task.dim) for p in points]
    lrs = [torch.tensor([r.per_layer[l] for r in rates], dtype=dtype, device=device).reshape(-1, 1, 1)
           for l in range(depth)]
    if all(len(set(r.per_layer)) == 1 for r in rates):
        lrs = [lrs[0]] * depth  # one tensor for every layer: model.backward then applies it once
    settings = [optimizer_settings(p, width, depth) for p in points]
    adam = optimizer_state(update_path(first), optimizer, weights, settings)  # None, Adam's moments or an OptState
    sched = None if all(is_constant(p) for p in points) else ScheduleFeed(points, total_steps, dtype, device)
    loss_coef, df_coef = loss_coefficients(loss_name, mse_convention, batch_size, task.n_out)
    dfa_coef = out_mult * df_coef

    # --- data: one stream per distinct seed; members that share a seed share its data and its theta_0 ---------
    seeds = sorted({int(p["seed"]) for p in points})
    member_stream = [seeds.index(int(p["seed"])) for p in points]
    init = [w[[member_stream.index(s) for s in range(len(seeds))]] for w in weights]  # [S, ...], a copy
    feed = _Feed(task, seeds, member_stream, init, batch_size, out_mult, loss_name, dtype, device)
    x_eval = task.x_eval.to(device=device, dtype=dtype)
    y_eval = targets(task.y_eval.to(device), loss_name, task.n_out, dtype)
    f0_eval = forward_chunked(init, x_eval)[feed.stream] * out_mult
    if population is None:
        initial_loss = loss_per_member(torch.zeros_like(f0_eval), y_eval, loss_name, mse_convention)
    else:
        initial_loss = population.loss(torch.zeros_like(weights[0][:, :, 0]), mse_convention)
    noise, option = None, grad_noise_option(setting(experiment, "grad_noise_scale"))
    if option is not None:
        noise = NoiseFeed(task, seeds, init, option["batches"], option["batch_size"] or batch_size, loss_name,
                          dtype, device)
        # chunks of noise.size samples: the loss coefficients of that batch size
        noise_loss_coef, noise_df_coef = loss_coefficients(loss_name, mse_convention, noise.size, task.n_out)
    curv, initial_sharpness = None, {}
    if setting(experiment, "curvature") is not None:  # its own batch and generators: no training number moves
        curv = CurvatureFeed(task, seeds, init, curvature_option(setting(experiment, "curvature")), batch_size,
                             loss_name, mse_convention, dtype, device)
        if "sharpness" in curv.option["kinds"]:  # at theta_0: the trials column initial_sharpness
            at_init = curv.measure(weights, list(range(len(points))), member_stream, out_mult, [],
                                   member_seeds=[int(p["seed"]) for p in points], kinds=["sharpness"])
            initial_sharpness = dict(enumerate(at_init["sharpness"]))
    chance = chance_accuracy(task.y_eval, task.n_out) if task.kind == "classification" else None
    left_band = np.zeros(len(points), dtype=bool)  # per bundle member: its loss left the band (dead rule 2)
    dead_since: dict[int, int] = {}  # bundle member -> first report step of its current dead streak
    alive = list(range(len(points)))  # bundle indices of the members still training
    window: list[torch.Tensor] = []  # per step: each member's minibatch loss [K]
    pos = feed.size  # the first step draws the first block / permutation
    nbytes = member_bytes(weights, adam)
    groups = step_groups(len(alive), nbytes)
    snaps = set(snapshot_steps(setting(experiment, "snapshots"), total_steps)) if on_weights else set()
    if on_weights:
        on_weights(0, list(alive), weights)

    def keep_only(keep: list[int]) -> None:
        """Drop every member but ``keep`` (positions in ``alive``) from the stacked tensors."""
        nonlocal alive, weights, lrs, out_mult, dfa_coef, f0_eval, initial_loss, groups, adam
        sel = torch.tensor(keep, device=device)
        alive = [alive[j] for j in keep]
        weights = [w[sel] for w in weights]
        lrs = [lr[sel] for lr in lrs] if lrs[0] is not lrs[-1] else [lrs[0][sel]] * depth
        out_mult, dfa_coef, f0_eval, initial_loss = out_mult[sel], dfa_coef[sel], f0_eval[sel], initial_loss[sel]
        feed.select(sel, out_mult)
        groups = step_groups(len(alive), nbytes)
        if isinstance(adam, OptState):
            adam = adam.select(sel)
        elif adam is not None:
            adam = [(m[sel], v[sel]) for m, v in adam]
        if sched is not None:
            sched.select(keep)

    def export(diverged: Mapping[int, int]) -> TrainState:
        """The state after the report whose ``diverged`` members are about to be dropped (copies, on the CPU)."""
        keep = [j for j, m in enumerate(alive) if m not in diverged]
        sel = torch.tensor(keep, device=device)
        copy = lambda t: t[sel].to("cpu", copy=True)  # noqa: E731
        members = [alive[j] for j in keep]
        return TrainState(
            step=step, members=members, weights=[copy(w) for w in weights],
            optimizer=[copy(t) for t in optimizer_tensors(adam)],
            data_rng={seeds[i]: st.clone() for i, st in enumerate(feed.before)}, position=pos,
            noise_rng={} if noise is None else {seeds[i]: g.get_state() for i, g in enumerate(noise.gens)},
            left_band=[bool(left_band[m]) for m in members], dead_since=[dead_since.get(m, -1) for m in members],
            wall_time_s=time.perf_counter() - started)

    start = 1
    if resume is not None:  # continue after the report of resume.step: its members, tensors and streams
        if not set(resume.members) <= set(alive) or not set(seeds) <= set(resume.data_rng):
            raise ValueError("resume: a state of other points")
        keep_only(list(resume.members))
        weights = [w.to(device=device, dtype=dtype).clone() for w in resume.weights]
        live = optimizer_tensors(adam)  # the state keep_only just selected (copies): filled in place
        if len(live) != len(resume.optimizer):
            raise ValueError("resume: an optimizer state of another optimizer")
        for t, saved in zip(live, resume.optimizer):
            t.copy_(saved)
        feed.restore([resume.data_rng[s] for s in seeds])
        pos = resume.position
        if noise is not None:
            for s, g in zip(seeds, noise.gens):
                g.set_state(resume.noise_rng[s])
        left_band[alive] = resume.left_band
        dead_since = {m: d for m, d in zip(alive, resume.dead_since) if d >= 0}
        start = resume.step + 1
        started -= resume.wall_time_s
        if curv is not None:  # the reports before resume.step, counted as the uninterrupted run counted them
            curv.reports = resume.step // report_every

    # --- the loop: step, report (the only host sync), drop diverged members ------------------------------------
    for step in range(start, total_steps + 1):
        if pos + batch_size > feed.size:
            feed.refresh()
            pos = 0
        x, t, labels = feed.batch(pos, pos + batch_size)
        pos += batch_size

        scale = None if sched is None else sched.at(step)
        losses = bundle_step(weights, x, t, labels, out_mult, loss_coef, dfa_coef, scaled_rates(lrs, scale), adam,
                             step, groups, scale)
        window.append(losses)
        if step in snaps:
            on_weights(step, list(alive), weights)

        if step % report_every and step != total_steps:
            continue
        # report: judge divergence and death, drop diverged members from the stacked tensors
        losses = torch.stack(window, 1)  # [K, steps in the window]
        units = torch.zeros(len(alive), depth - 1, width, dtype=torch.bool, device=device)
        with torch.no_grad():
            if population is not None:  # regression, depth 1: no accuracy, no hidden unit
                eval_loss, acc = population.loss(weights[0][:, :, 0], mse_convention), None
            else:
                f_eval = forward_chunked(weights, x_eval, active=units).mul_(out_mult).sub_(f0_eval)
                eval_loss = loss_per_member(f_eval, y_eval, loss_name, mse_convention)
                acc = (
                    (f_eval.argmax(-1) == task.y_eval.to(device)).to(dtype).mean(1)
                    if task.kind == "classification"
                    else None
                )
        eval_np = eval_loss.cpu().numpy()
        acc_np = acc.cpu().numpy() if acc is not None else None
        initial_np = initial_loss.cpu().numpy()
        train_loss, diverged = divergence(losses, step, eval_np, initial_np, factor, alive)
        # dead: judged on this report's eval pass; it only flags (a dead member keeps training)
        active = units.sum(2).amin(1).cpu().numpy() / width if depth > 1 else np.full(len(alive), np.nan)
        left_band[alive] |= outside_band(train_loss, initial_np) | outside_band(eval_np, initial_np)
        dead_now = dead_members(active, eval_np, acc_np, initial_np, left_band[alive], chance)
        for j, member in enumerate(alive):
            if dead_now[j]:
                dead_since.setdefault(member, step)
            else:
                dead_since.pop(member, None)
        epoch = None if task.online else step // (task.n_train // batch_size)
        gns = None
        if noise is not None:
            gns = noise.estimate(weights, feed.stream, out_mult, noise_loss_coef, out_mult * noise_df_coef, groups)
        curvature = None
        if curv is not None and curv.due():
            curvature = curv.measure(
                weights, alive, feed.stream.tolist(), out_mult, [j for j, m in enumerate(alive) if m in diverged],
                adam=adam, step=step, lrs=lrs,
                lr_effective=[rates[m].effective for m in alive],
                member_seeds=[int(points[m]["seed"]) for m in alive])
        report = Report(
            step=step,
            epoch=epoch,
            samples_seen=step * batch_size,
            members=list(alive),
            train_loss=[float(v) for v in train_loss],
            eval_loss=[float(v) for v in eval_np],
            eval_accuracy=[None] * len(alive) if acc_np is None else [float(v) for v in acc_np],
            initial_loss=[float(v) for v in initial_np],
            diverged=diverged,
            dead={m: dead_since[m] for m in alive if m in dead_since},
            active_fraction=[None if np.isnan(v) else float(v) for v in active],
            finished=step == total_steps or len(diverged) == len(alive),
            wall_time_s=time.perf_counter() - started,
            **(gns or {}),
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


_LR_ARGS = ("eta", "gamma", "width", "depth", "parametrization", "optimizer", "lr_rule")


def divergence(losses: torch.Tensor, step: int, eval_loss: np.ndarray, initial_loss: np.ndarray, factor: float,
               alive: Sequence[int]) -> tuple[np.ndarray, dict[int, int]]:
    """The divergence rule at a report (module docstring): ``losses`` ``[K, window]`` are the members' minibatch
    losses of the steps since the last report (the last one is ``step``). Returns each member's mean train loss
    and ``{member: diverged step}``: the first step with a non-finite loss, or ``step`` when the mean train loss or
    the eval loss exceeds ``factor`` times the initial loss (or the eval loss is not finite)."""
    finite = torch.isfinite(losses)
    first_bad = (~finite).to(torch.int8).argmax(1) + (step - losses.shape[1] + 1)  # first non-finite step
    bad_np = torch.where(finite.all(1), -1, first_bad).cpu().numpy()
    train_loss = (losses.sum(1) / losses.shape[1]).cpu().numpy()
    limit = factor * np.asarray(initial_loss).astype(np.float64)  # float64: a large factor must not overflow float32
    diverged = {}
    for j, member in enumerate(alive):
        if bad_np[j] >= 0:
            diverged[member] = int(bad_np[j])
        elif not (np.isfinite(eval_loss[j]) and train_loss[j] <= limit[j] and eval_loss[j] <= limit[j]):
            diverged[member] = step
    return train_loss, diverged


def optimizer_settings(point: Mapping[str, Any], width: int, depth: int) -> dict:
    """A member's optimizer hyperparameters, eps and weight decay per layer (raysweep.scaling's muP rules)."""
    value = lambda axis: axis_value(point, axis)  # noqa: E731
    shape = {"width": width, "depth": depth, "parametrization": point["parametrization"]}
    return {
        "momentum": value("momentum"), "nesterov": value("nesterov"), "beta1": value("beta1"),
        "beta2": value("beta2"), "eps": epsilons(eps=value("eps"), eps_scaling=value("eps_scaling"), **shape),
        "weight_decay": weight_decays(weight_decay=value("weight_decay"), optimizer=point["optimizer"],
                                      lr_rule=point["lr_rule"], scaling=value("weight_decay_scaling"), **shape),
        "independent": value("weight_decay_scaling") == "independent",
    }


def train(task, experiment: Mapping[str, Any], point: Mapping[str, Any], *, device="cpu") -> list[Report]:
    """Train one configuration to the end and return all its reports (a bundle of one)."""
    return list(train_bundle(task, experiment, [point], device=device))
