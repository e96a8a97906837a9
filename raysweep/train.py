"""Train one configuration, or a fused bundle of configurations that share their shapes, and yield reports.

A *bundle* is K members that share batch size, width, depth, parametrization, optimizer, loss and learning-rate
rule; they may differ in eta, gamma and seed. Their weights are stacked (``[K, fan_in, fan_out]``), every step is
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

Dead networks. Past the stability edge many ReLU nets do not blow up but die, and under cross-entropy a dead
centred net sits at ln(classes), its initial loss, so the divergence threshold never fires. At each report a member
is *dead* when either

1. *no active unit*: some hidden layer has no unit whose output is positive on any eval sample (the output then
   no longer depends on the input through that layer, and no gradient reaches the layers below it or the readout);
2. *collapsed to chance* (classification only): its eval accuracy is at most :func:`chance_accuracy` (the largest
   class frequency of the eval set plus ``CHANCE_SIGMAS`` binomial standard errors), its eval loss is at least
   ``COLLAPSE_LOSS_MIN`` times the initial loss, and at this or an earlier report its train or eval loss left the
   band ``[1 - LOSS_BAND, 1 + LOSS_BAND]`` times the initial loss (it learned, or blew up, and came back). A slow
   small-eta net that has not learned yet never left that band, so it is not dead.

``Report.dead`` maps each member dead at a report to the first report step of its current dead streak (a member that
recovers leaves it); ``Report.active_fraction`` is, per member, the smallest fraction over hidden layers of units
active on some eval sample. Detection only flags: a dead member keeps training, and every training number is the
same with it or without it (its ops run inside the report's no-grad eval forward and write only their own tensors).

Gradient noise scale (``experiment.grad_noise_scale``, off by default): at every report, at the current weights,
each member's ``tr(Sigma)``, ``|G|^2`` and ``B_simple`` from a noise batch of ``m`` chunks of ``b`` samples
(:mod:`raysweep.noise`). The noise batches come from a generator of their own per seed (:func:`noise_seed`), and
the gradients never reach the weights or the optimizer state: turning it on changes no other number.

Pure: no Ray, no file output.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raysweep import model
from raysweep.data._base import derive_seed
from raysweep.errors import InfeasibleError
from raysweep.scaling import learning_rates
from raysweep.space import BUNDLE_KEYS, grad_noise_option, setting

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# f(x; theta_0) is kept for the whole training set when it takes at most this many bytes, else per batch.
F0_CACHE_BYTES = 256 * 2**20
# no-grad forwards over many samples (f(x; theta_0), eval) run in pieces of this many members x activations
CHUNK_MEMBERS = 8
CHUNK_ELEMENTS = 2**18
# a training step runs the members in groups whose weights (and Adam state) take at most this many bytes
STEP_GROUP_BYTES = 2**22
# dead networks (module docstring): the band a member's loss must have left, the collapsed loss, the chance margin
LOSS_BAND = 0.05
COLLAPSE_LOSS_MIN = 0.99
CHANCE_SIGMAS = 3.0


def init_seed(seed: int) -> int:
    """The weight-init generator's seed for a trial ``seed``."""
    return 2 * int(seed) + 1


def data_seed(seed: int) -> int:
    """The data-order (permutations, online blocks) generator's seed for a trial ``seed``."""
    return 2 * int(seed) + 2


def noise_seed(seed: int) -> int:
    """The seed of the generator of a trial ``seed``'s gradient-noise batches: a 63-bit hash of the seed, so it
    collides with no trial's init or data seed (small integers)."""
    return derive_seed(seed, "grad_noise")


def bundle_key(point: Mapping[str, Any]) -> tuple:
    """Configs with equal keys can train as one bundle."""
    return tuple(point[k] for k in BUNDLE_KEYS)


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
    # |G|^2 and tr(Sigma) at this report's weights, and their ratio B_simple (see raysweep.noise)
    grad_sq: list[float] | None = None
    trace_sigma: list[float] | None = None
    noise_scale: list[float] | None = None
    # dead networks (module docstring): member index -> first report step of its current dead streak, for the
    # members dead at this report; per member, the smallest fraction over hidden layers of units active on some
    # eval sample (None for depth 1: no hidden layer)
    dead: dict[int, int] = field(default_factory=dict)
    active_fraction: list[float | None] | None = None


def loss_per_member(f: torch.Tensor, y: torch.Tensor, loss: str, mse_convention: str) -> torch.Tensor:
    """Loss of each member, shape ``[K]``, from outputs ``f [K, B, out]``.

    mse, ``half_sum``: 0.5 * mean over the batch of the sum over outputs of the squared error.
    mse, ``study``: mean of the squared error over batch and outputs (no 0.5).
    xent: mean cross-entropy over the batch; ``y`` holds int64 labels ``[B]`` or ``[K, B]``.
    """
    if loss == "xent":
        k, b, c = f.shape
        labels = y.expand(k, b) if y.dim() == 1 else y
        return F.cross_entropy(f.reshape(k * b, c), labels.reshape(k * b), reduction="none").reshape(k, b).mean(1)
    err = (f - y).square()
    if mse_convention == "study":
        return err.mean(dim=(1, 2))
    return 0.5 * err.sum(2).mean(1)


def _targets(y: torch.Tensor, loss: str, n_out: int, dtype: torch.dtype) -> torch.Tensor:
    """Regression targets as they are; class labels one-hot for MSE, kept as labels for xent."""
    if y.dtype == torch.int64 and loss == "mse":
        return F.one_hot(y, n_out).to(dtype)
    return y


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
            self.y_all = _targets(task.y_train.to(device), loss, task.n_out, dtype)
            el = self.x_all.element_size()
            k, n, out = len(member_stream), self.size, task.n_out
            if len(seeds) * n * out * el <= F0_CACHE_BYTES:
                self.f0_all = _forward_chunked(init, self.x_all)
            # an epoch's permuted copy (inputs, per-member targets) must fit too
            fits = (k * out + task.dim) * n * el <= F0_CACHE_BYTES
            self.gather = not (self.shared and self.f0_all is not None and fits)
        self.src: tuple | None = None
        self.orders: list[torch.Tensor] = []

    def refresh(self) -> None:
        """The next block (online) or epoch permutation (fixed) of every stream, from the stream's generator."""
        task = self.task
        if task.online:
            blocks = [task.draw_block(g) if self.size == task.block_size else _draw(task, g, self.size)
                      for g in self.gens]
            x = blocks[0][0] if self.shared else torch.stack([b[0] for b in blocks])
            y = blocks[0][1] if self.shared else torch.stack([b[1] for b in blocks])
            x = x.to(self.dtype)
            y = _targets(y, self.loss, task.n_out, self.dtype)
            f0 = _forward_chunked(self.init, x)  # [S, P, out]
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
            f0 = _forward_chunked(self.init, self.x_all[idx])
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


def _forward_chunked(weights, x: torch.Tensor, *, active: torch.Tensor | None = None) -> torch.Tensor:
    """The raw output ``[K, n, out]`` of :func:`raysweep.model.forward_cached` without gradients, for many samples.

    ``active`` (bool ``[K, L - 1, N]``, optional): unit j of hidden layer l of member k is set True when its output
    is positive on some sample of ``x`` (OR-ed in, read from the activations the forward computes anyway; the
    output is the same with or without it).

    Computed in pieces of at most ``CHUNK_MEMBERS`` members and ``CHUNK_ELEMENTS / width`` samples: the
    activations stay in cache and below glibc's mmap threshold (a whole 4096-sample block at once pays page faults
    on every call). The pieces depend on the width only, never on the bundle size, so a member's numbers are the
    same alone and in any bundle.
    """
    k, n = weights[0].shape[0], x.shape[-2]
    rows = max(1, CHUNK_ELEMENTS // (CHUNK_MEMBERS * max(w.shape[2] for w in weights)))
    if k <= CHUNK_MEMBERS and n <= rows:
        return _forward_piece(weights, x, active)
    out = torch.empty(k, n, weights[-1].shape[2], dtype=weights[0].dtype, device=weights[0].device)
    for a in range(0, k, CHUNK_MEMBERS):
        ws = [w[a:a + CHUNK_MEMBERS] for w in weights]
        xs = x if x.dim() == 2 else x[a:a + CHUNK_MEMBERS]
        act = None if active is None else active[a:a + CHUNK_MEMBERS]  # a view: written in place
        for lo in range(0, n, rows):
            out[a:a + CHUNK_MEMBERS, lo:lo + rows] = _forward_piece(ws, xs[..., lo:lo + rows, :], act)
    return out


def _forward_piece(weights, x: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
    """One piece of :func:`_forward_chunked`: the raw output, and the units found active OR-ed into ``active``."""
    raw, acts = model.forward_cached(weights, x, keep=active is not None)
    for layer, h in enumerate(acts[1:]):  # acts[0] is the input; the rest are the hidden layers' outputs
        active[:, layer] |= h.amax(-2) > 0  # amax: a reduction without a [K, n, N] bool copy
    return raw


def chance_accuracy(labels: torch.Tensor, n_classes: int, sigmas: float = CHANCE_SIGMAS) -> float:
    """The highest eval accuracy still read as chance: ``p + sigmas * sqrt(p (1 - p) / n)``, with ``p`` the largest
    class frequency among the ``n`` labels (the accuracy of the best constant guess)."""
    n = int(labels.numel())
    p = float(torch.bincount(labels.flatten().cpu(), minlength=n_classes).max()) / max(n, 1)
    return p + sigmas * math.sqrt(p * (1 - p) / max(n, 1))


def dead_members(active_fraction, eval_loss, eval_accuracy, initial_loss, left_band, chance: float | None):
    """Which members are dead at a report (rules 1 and 2 of the module docstring), as a bool array.

    ``active_fraction`` (per member, NaN for no hidden layer), ``eval_loss``, ``eval_accuracy`` (None for
    regression), ``initial_loss`` and ``left_band`` (the member's loss left the band at this or an earlier report)
    are arrays over the members; ``chance`` is :func:`chance_accuracy` (None for regression)."""
    active_fraction = np.asarray(active_fraction, dtype=np.float64)
    dead = active_fraction == 0.0
    if eval_accuracy is not None and chance is not None:
        with np.errstate(invalid="ignore"):
            collapsed = (np.asarray(eval_accuracy, np.float64) <= chance) & (
                np.asarray(eval_loss, np.float64) >= COLLAPSE_LOSS_MIN * np.asarray(initial_loss, np.float64))
        dead |= collapsed & np.asarray(left_band, dtype=bool)
    return dead


def outside_band(loss, initial_loss) -> np.ndarray:
    """Whether each finite ``loss`` lies outside ``[1 - LOSS_BAND, 1 + LOSS_BAND]`` times ``initial_loss``."""
    loss, initial = np.asarray(loss, np.float64), np.asarray(initial_loss, np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(loss) & (np.abs(loss - initial) > LOSS_BAND * initial)


def _draw(task, gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate online blocks until ``size`` samples (batches larger than the study's block P)."""
    xs, ys = [], []
    while sum(len(x) for x in xs) < size:
        x, y = task.draw_block(gen)
        xs.append(x)
        ys.append(y)
    return torch.cat(xs)[:size], torch.cat(ys)[:size]


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
) -> Iterator[Report]:
    """Train the bundle ``points`` on ``task`` and yield a :class:`Report` every ``report_every`` steps.

    The last report has ``finished=True``. Raises :class:`InfeasibleError` for a batch larger than the data set
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
    report_every = int(setting(experiment, "report_every"))
    factor = float(setting(experiment, "divergence_factor"))
    started = time.perf_counter()

    # --- model: stacked weights, per-member readout multiplier and per-layer learning rates --------------------
    widths = model.layer_widths(task.dim, width, depth, task.n_out)
    weights = model.init_weights(widths, [init_seed(p["seed"]) for p in points], dtype=dtype, device=device)
    gamma = torch.tensor([float(p["gamma"]) for p in points], dtype=dtype, device=device)
    out_mult = model.readout_multiplier(width, gamma, first["parametrization"])
    rates = [learning_rates(**{k: p[k] for k in _LR_ARGS}, dim=task.dim) for p in points]
    lrs = [torch.tensor([r.per_layer[l] for r in rates], dtype=dtype, device=device).reshape(-1, 1, 1)
           for l in range(depth)]
    if all(len(set(r.per_layer)) == 1 for r in rates):
        lrs = [lrs[0]] * depth  # one tensor for every layer: model.backward then applies it once
    adam = [(torch.zeros_like(w), torch.zeros_like(w)) for w in weights] if optimizer == "Adam" else None
    loss_coef, df_coef = _loss_coefficients(loss_name, mse_convention, batch_size, task.n_out)
    dfa_coef = out_mult * df_coef

    # --- data: one stream per distinct seed; members that share a seed share its data and its theta_0 ---------
    seeds = sorted({int(p["seed"]) for p in points})
    member_stream = [seeds.index(int(p["seed"])) for p in points]
    init = [w[[member_stream.index(s) for s in range(len(seeds))]] for w in weights]  # [S, ...], a copy
    feed = _Feed(task, seeds, member_stream, init, batch_size, out_mult, loss_name, dtype, device)
    x_eval = task.x_eval.to(device=device, dtype=dtype)
    y_eval = _targets(task.y_eval.to(device), loss_name, task.n_out, dtype)
    f0_eval = _forward_chunked(init, x_eval)[feed.stream] * out_mult
    initial_loss = loss_per_member(torch.zeros_like(f0_eval), y_eval, loss_name, mse_convention)
    noise, option = None, grad_noise_option(setting(experiment, "grad_noise_scale"))
    if option is not None:
        from raysweep.noise import NoiseFeed  # it reuses this module's data and loss code

        noise = NoiseFeed(task, seeds, init, option["batches"], option["batch_size"] or batch_size, loss_name,
                          dtype, device)
        # chunks of noise.size samples: the loss coefficients of that batch size
        noise_loss_coef, noise_df_coef = _loss_coefficients(loss_name, mse_convention, noise.size, task.n_out)
    chance = chance_accuracy(task.y_eval, task.n_out) if task.kind == "classification" else None
    left_band = np.zeros(len(points), dtype=bool)  # per bundle member: its loss left the band (dead rule 2)
    dead_since: dict[int, int] = {}  # bundle member -> first report step of its current dead streak
    alive = list(range(len(points)))  # bundle indices of the members still training
    window: list[torch.Tensor] = []  # per step: each member's minibatch loss [K]
    pos = feed.size  # the first step draws the first block / permutation
    member_bytes = sum(w[0].numel() * w.element_size() for w in weights) * (1 if adam is None else 3)
    groups = _groups(len(alive), member_bytes)

    # --- the loop: step, report (the only host sync), drop diverged members ------------------------------------
    for step in range(1, total_steps + 1):
        if pos + batch_size > feed.size:
            feed.refresh()
            pos = 0
        x, t, labels = feed.batch(pos, pos + batch_size)
        pos += batch_size

        if len(groups) == 1:
            losses = _step(weights, x, t, labels, out_mult, loss_coef, dfa_coef, lrs, adam, step)
        else:  # large weights: a group of members at a time, so that each group's weights stay in cache
            losses = torch.cat([
                _step([w[g] for w in weights], x if x.dim() == 2 else x[g], t[g],
                      labels if labels is None or labels.dim() == 1 else labels[g], out_mult[g], loss_coef,
                      dfa_coef[g], [lrs[0][g]] * depth if lrs[0] is lrs[-1] else [lr[g] for lr in lrs],
                      None if adam is None else [(m[g], v[g]) for m, v in adam], step)
                for g in groups])
        window.append(losses)

        if step % report_every and step != total_steps:
            continue
        # report: judge divergence and death, drop diverged members from the stacked tensors
        losses = torch.stack(window, 1)  # [K, steps in the window]
        units = torch.zeros(len(alive), depth - 1, width, dtype=torch.bool, device=device)
        with torch.no_grad():
            f_eval = _forward_chunked(weights, x_eval, active=units).mul_(out_mult).sub_(f0_eval)
            eval_loss = loss_per_member(f_eval, y_eval, loss_name, mse_convention)
            acc = (
                (f_eval.argmax(-1) == task.y_eval.to(device)).to(dtype).mean(1)
                if task.kind == "classification"
                else None
            )
        finite = torch.isfinite(losses)
        first_bad = (~finite).to(torch.int8).argmax(1) + (step - len(window) + 1)  # first non-finite step
        bad_np = torch.where(finite.all(1), -1, first_bad).cpu().numpy()
        train_loss = (losses.sum(1) / len(window)).cpu().numpy()
        eval_np = eval_loss.cpu().numpy()
        acc_np = acc.cpu().numpy() if acc is not None else None
        initial_np = initial_loss.cpu().numpy()
        limit = factor * initial_np.astype(np.float64)  # float64: a large factor must not overflow a float32 loss
        diverged = {}
        for j, member in enumerate(alive):
            if bad_np[j] >= 0:
                diverged[member] = int(bad_np[j])
            elif not (np.isfinite(eval_np[j]) and train_loss[j] <= limit[j] and eval_np[j] <= limit[j]):
                diverged[member] = step
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
        )
        yield report
        if report.finished:
            return
        window = []
        if diverged:
            keep = [j for j, m in enumerate(alive) if m not in diverged]
            sel = torch.tensor(keep, device=device)
            alive = [alive[j] for j in keep]
            weights = [w[sel] for w in weights]
            lrs = [lr[sel] for lr in lrs] if lrs[0] is not lrs[-1] else [lrs[0][sel]] * depth
            out_mult, dfa_coef, f0_eval, initial_loss = out_mult[sel], dfa_coef[sel], f0_eval[sel], initial_loss[sel]
            feed.select(sel, out_mult)
            groups = _groups(len(alive), member_bytes)
            if adam is not None:
                adam = [(m[sel], v[sel]) for m, v in adam]


_LR_ARGS = ("eta", "gamma", "width", "depth", "parametrization", "optimizer", "lr_rule")


def _groups(n_members: int, member_bytes: int) -> list[slice]:
    """Consecutive groups of members whose weights (and Adam state) take at most ``STEP_GROUP_BYTES``: one group
    for small models; one member at a time when a member's weights alone fill the cache."""
    size = max(1, STEP_GROUP_BYTES // max(1, member_bytes))
    return [slice(a, min(a + size, n_members)) for a in range(0, n_members, size)]


def _step(weights, x, t, labels, out_mult, loss_coef, dfa_coef, lrs, adam, step: int) -> torch.Tensor:
    """One optimizer step of the members of ``weights``, in place; returns their minibatch losses ``[K]``."""
    raw, acts = model.forward_cached(weights, x)
    losses, dfa = _loss_and_dfa(raw, out_mult, t, labels, loss_coef, dfa_coef)
    if adam is None:
        model.backward(weights, acts, dfa, sgd_lr=lrs)
    else:
        _update(weights, model.backward(weights, acts, dfa), lrs, adam, step)
    return losses


def _loss_coefficients(loss: str, mse_convention: str, batch_size: int, n_out: int) -> tuple[float, float]:
    """``(c_loss, c_df)``: MSE ``loss = c_loss * sum r^2`` and ``dloss/df = c_df * r`` (``r = f - f0 - y``);
    xent ``dloss/df = c_df * (softmax - onehot)`` (``c_loss`` unused). The conventions of :func:`loss_per_member`."""
    if loss == "xent":
        return 1.0, 1.0 / batch_size
    if mse_convention == "study":
        return 1.0 / (batch_size * n_out), 2.0 / (batch_size * n_out)
    return 0.5 / batch_size, 1.0 / batch_size


def _loss_and_dfa(raw, out_mult, t, labels, loss_coef: float, dfa_coef):
    """Each member's minibatch loss ``[K]`` and ``dfa = a * dloss/df`` ``[K, B, out]`` (what
    :func:`raysweep.model.backward` takes), from the raw output ``raw`` (overwritten).

    MSE: ``t = a f0 + y`` and ``r = a raw - t`` is the centred residual. xent: ``t = a f0``, ``labels`` the classes.
    ``dfa_coef`` is ``a * c_df`` per member, ``[K, 1, 1]`` (see :func:`_loss_coefficients`).
    """
    f = raw.mul_(out_mult).sub_(t)
    if labels is None:
        flat = f.flatten(1)
        return torch.linalg.vecdot(flat, flat).mul_(loss_coef), f.mul_(dfa_coef)
    logp = torch.log_softmax(f, -1)
    lab = labels.expand(f.shape[:2]).unsqueeze(-1)
    losses = logp.gather(-1, lab).squeeze(-1).mean(1).neg_()
    dfa = logp.exp_().scatter_add_(-1, lab, torch.full(lab.shape, -1.0, dtype=f.dtype, device=f.device))
    return losses, dfa.mul_(dfa_coef)


def _update(weights, grads, lrs, adam, step: int) -> None:
    """One optimizer step in place, each member at its own per-layer rate (``lr`` is ``[K, 1, 1]``).

    SGD: ``W -= lr * g``. Adam: torch.optim.Adam's update (betas 0.9, 0.999, eps 1e-8, bias-corrected).
    """
    if adam is None:
        for w, g, lr in zip(weights, grads, lrs):
            w.sub_(lr * g)
        return
    b1, b2 = ADAM_BETAS
    c1, c2 = 1 - b1**step, 1 - b2**step
    ms, vs = [m for m, _ in adam], [v for _, v in adam]
    # _foreach ops: one call per quantity for all layers (a third of the op calls of a per-layer loop)
    torch._foreach_mul_(ms, b1)
    torch._foreach_add_(ms, grads, alpha=1 - b1)
    torch._foreach_mul_(vs, b2)
    torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(denom, math.sqrt(c2))
    torch._foreach_add_(denom, ADAM_EPS)
    steps = torch._foreach_div(ms, denom)  # torch.optim.Adam: w -= (lr / c1) * m / denom
    torch._foreach_mul_(steps, [lr / c1 for lr in lrs])
    torch._foreach_sub_(weights, steps)


def train(task, experiment: Mapping[str, Any], point: Mapping[str, Any], *, device="cpu") -> list[Report]:
    """Train one configuration to the end and return all its reports (a bundle of one)."""
    return list(train_bundle(task, experiment, [point], device=device))
