"""Train one configuration, or a fused bundle of configurations that share their shapes, and yield reports.

A *bundle* is K members that share batch size, width, depth, parametrization, optimizer, loss and learning-rate
rule; they may differ in eta, gamma and seed. Their weights are stacked (``[K, fan_in, fan_out]``), every step is
one batched forward and backward, and each member keeps its own learning rates, centring, data stream (one per
distinct seed) and divergence state. A single trial is a bundle of one: there is only one training loop.

Divergence: a member whose minibatch loss becomes NaN or Inf is diverged at that step (tracked on the device,
without a host sync). At each report a member whose mean train loss or eval loss exceeds ``divergence_factor`` times
its initial loss (the zero-predictor loss on the eval set) is diverged at that report's step. A diverged member
reports no more rows and is dropped from the stacked tensors, so it can never touch the others' numbers.

Speed: data lives on the device; batches are index slices of a permutation (fixed data) or of a block (online
teachers), never gathered on the host; ``f(x; theta_0)`` is computed once per training sample (for the whole
training set, or once per online block) instead of once per step; the host syncs only on report steps.

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
from raysweep.errors import InfeasibleError
from raysweep.scaling import learning_rates

BUNDLE_KEYS = ("batch_size", "width", "depth", "parametrization", "optimizer", "loss", "lr_rule")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# f(x; theta_0) is kept for the whole training set when it takes at most this many bytes, else per batch.
F0_CACHE_BYTES = 256 * 2**20


def init_seed(seed: int) -> int:
    """The weight-init generator's seed for a trial ``seed``."""
    return 2 * int(seed) + 1


def data_seed(seed: int) -> int:
    """The data-order (permutations, online blocks) generator's seed for a trial ``seed``."""
    return 2 * int(seed) + 2


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


class _Stream:
    """One data stream (one distinct seed): batch positions into its current source.

    Fixed data: the source is the training set, read in a fresh random permutation every epoch; the tail smaller
    than a batch is dropped. Online: the source is a block of fresh samples, replaced when used up.
    """

    def __init__(self, task, batch_size: int, seed: int, device: torch.device):
        self.task, self.batch_size, self.device = task, batch_size, device
        self.gen = torch.Generator().manual_seed(data_seed(seed))
        # an online block holds at least one batch
        self.size = max(task.block_size, batch_size) if task.online else task.n_train
        self.pos = self.size  # the first call draws the first permutation / block
        self.order: torch.Tensor | None = None
        self.block: tuple[torch.Tensor, torch.Tensor] | None = None

    def next(self) -> tuple[torch.Tensor, bool]:
        """Positions ``[B]`` of the next batch, and whether the source changed (a new block)."""
        fresh = self.pos + self.batch_size > self.size
        if fresh:
            self.pos = 0
            if not self.task.online:
                self.order = torch.randperm(self.size, generator=self.gen).to(self.device)
            elif self.size == self.task.block_size:
                self.block = self.task.draw_block(self.gen)
            else:
                self.block = _draw(self.task, self.gen, self.size)
        if self.task.online:
            idx = torch.arange(self.pos, self.pos + self.batch_size, device=self.device)
        else:
            idx = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx, fresh and self.task.online


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
    if experiment.get("steps"):
        return int(experiment["steps"])
    if task.online:
        raise InfeasibleError(f"{task.dataset} is online: give steps, not epochs")
    return int(experiment["epochs"]) * (task.n_train // batch_size)


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
    mse_convention = experiment.get("mse_convention", "half_sum")
    dtype = torch.float64 if experiment.get("dtype") == "float64" else torch.float32
    total_steps = steps_for(experiment, task, batch_size)
    report_every = int(experiment.get("report_every") or 50)
    factor = float(experiment.get("divergence_factor") or 100.0)
    started = time.perf_counter()

    # --- model: stacked weights, per-member readout multiplier and per-layer learning rates --------------------
    widths = model.layer_widths(task.dim, width, depth, task.n_out)
    weights = model.init_weights(widths, [init_seed(p["seed"]) for p in points], dtype=dtype, device=device)
    gamma = torch.tensor([float(p["gamma"]) for p in points], dtype=dtype, device=device)
    out_mult = model.readout_multiplier(width, gamma, first["parametrization"])
    rates = [learning_rates(**{k: p[k] for k in _LR_ARGS}) for p in points]
    lrs = [torch.tensor([r.per_layer[l] for r in rates], dtype=dtype, device=device).reshape(-1, 1, 1)
           for l in range(depth)]
    init = [w.clone() for w in weights]
    for w in weights:
        w.requires_grad_(True)
    adam = [(torch.zeros_like(w), torch.zeros_like(w)) for w in weights] if optimizer == "Adam" else None

    # --- data: one stream per distinct seed; members map to their stream ----------------------------------------
    seeds = sorted({int(p["seed"]) for p in points})
    streams = [_Stream(task, batch_size, s, device) for s in seeds]
    member_stream = torch.tensor([seeds.index(int(p["seed"])) for p in points], device=device)
    shared = len(streams) == 1
    x_eval = task.x_eval.to(device=device, dtype=dtype)
    y_eval = _targets(task.y_eval.to(device), loss_name, task.n_out, dtype)
    with torch.no_grad():
        f0_eval = model.forward(init, x_eval, out_mult)
        zero = torch.zeros_like(f0_eval)
        initial_loss = loss_per_member(zero, y_eval, loss_name, mse_convention)
    if not task.online:
        x_src = task.x_train.to(device=device, dtype=dtype)
        y_src = _targets(task.y_train.to(device), loss_name, task.n_out, dtype)
        cache_f0 = len(points) * len(x_src) * task.n_out * x_src.element_size() <= F0_CACHE_BYTES
        f0_src = _f0(init, x_src, out_mult) if cache_f0 else None
    alive = list(range(len(points)))  # bundle indices of the members still training
    first_bad = torch.full((len(points),), -1, dtype=torch.int64, device=device)
    loss_sum = torch.zeros(len(points), dtype=dtype, device=device)
    n_in_window = 0

    # --- the loop: step, track divergence on the device, report (the only host sync) ----------------------------
    for step in range(1, total_steps + 1):
        batch = [s.next() for s in streams]
        if task.online and any(fresh for _, fresh in batch):
            blocks = [s.block for s in streams]
            x_src = blocks[0][0] if shared else torch.stack([b[0] for b in blocks])[member_stream]
            y_src = _targets(
                blocks[0][1] if shared else torch.stack([b[1] for b in blocks])[member_stream],
                loss_name, task.n_out, dtype,
            )
            x_src = x_src.to(dtype)
            f0_src = _f0(init, x_src, out_mult)
        x, y, f0 = _gather(batch, x_src, y_src, f0_src, init, out_mult, shared, member_stream, task.online)

        f = model.forward(weights, x, out_mult) - f0
        losses = loss_per_member(f, y, loss_name, mse_convention)
        grads = torch.autograd.grad(losses.sum(), weights)
        with torch.no_grad():
            _update(weights, grads, lrs, adam, step)
            loss_sum += losses
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(losses), step, first_bad)
        n_in_window += 1

        if step % report_every and step != total_steps:
            continue
        # report: one host sync; judge divergence, drop diverged members from the stacked tensors
        with torch.no_grad():
            f_eval = model.forward(weights, x_eval, out_mult) - f0_eval
            eval_loss = loss_per_member(f_eval, y_eval, loss_name, mse_convention)
            acc = (
                (f_eval.argmax(-1) == task.y_eval.to(device)).to(dtype).mean(1)
                if task.kind == "classification"
                else None
            )
        train_loss = (loss_sum / n_in_window).cpu().numpy()
        eval_np = eval_loss.cpu().numpy()
        acc_np = acc.cpu().numpy() if acc is not None else None
        bad_np = first_bad.cpu().numpy()
        initial_np = initial_loss.cpu().numpy()
        limit = factor * initial_np.astype(np.float64)  # float64: a large factor must not overflow a float32 loss
        diverged = {}
        for j, member in enumerate(alive):
            if bad_np[j] >= 0:
                diverged[member] = int(bad_np[j])
            elif not (np.isfinite(eval_np[j]) and train_loss[j] <= limit[j] and eval_np[j] <= limit[j]):
                diverged[member] = step
        epoch = None if task.online else step // (task.n_train // batch_size)
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
            finished=step == total_steps or len(diverged) == len(alive),
            wall_time_s=time.perf_counter() - started,
        )
        yield report
        if report.finished:
            return
        if diverged:
            keep = [j for j, m in enumerate(alive) if m not in diverged]
            sel = torch.tensor(keep, device=device)
            alive = [alive[j] for j in keep]
            weights = [w.detach()[sel].requires_grad_(True) for w in weights]
            init = [w[sel] for w in init]
            lrs = [lr[sel] for lr in lrs]
            out_mult, f0_eval = out_mult[sel], f0_eval[sel]
            initial_loss, first_bad = initial_loss[sel], first_bad[sel]
            member_stream = member_stream[sel]
            if adam is not None:
                adam = [(m[sel], v[sel]) for m, v in adam]
            if f0_src is not None:
                f0_src = f0_src[sel]
            if x_src.dim() == 3:
                x_src, y_src = x_src[sel], y_src[sel]
        loss_sum = torch.zeros(len(alive), dtype=dtype, device=device)
        n_in_window = 0


_LR_ARGS = ("eta", "gamma", "width", "depth", "parametrization", "optimizer", "lr_rule")


def _f0(init, x_src, out_mult) -> torch.Tensor:
    with torch.no_grad():
        return model.forward(init, x_src, out_mult)


def _gather(batch, x_src, y_src, f0_src, init, out_mult, shared, member_stream, online):
    """The minibatch ``(x, y, f0)``: shared ``[B, D]`` inputs when every member reads one stream, else ``[K, B, D]``."""
    if shared:
        idx = batch[0][0]
        x, y = x_src[idx], y_src[idx]
        f0 = f0_src[:, idx] if f0_src is not None else _f0(init, x, out_mult)
        return x, y, f0
    idx = torch.stack([i for i, _ in batch])[member_stream]  # [K, B]
    if online:  # x_src is [K, P, D]: each member indexes its own block
        rows = torch.arange(len(idx), device=idx.device)[:, None]
        x, y = x_src[rows, idx], y_src[rows, idx]
        f0 = f0_src[rows, idx]
    else:
        x, y = x_src[idx], y_src[idx]
        if f0_src is not None:
            rows = torch.arange(len(idx), device=idx.device)[:, None]
            f0 = f0_src[rows, idx]
        else:
            f0 = _f0(init, x, out_mult)
    return x, y, f0


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
    for w, g, lr, (m, v) in zip(weights, grads, lrs, adam):
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(c2)).add_(ADAM_EPS)
        w.sub_((lr / c1) * m / denom)


def train(task, experiment: Mapping[str, Any], point: Mapping[str, Any], *, device="cpu") -> list[Report]:
    """Train one configuration to the end and return all its reports (a bundle of one)."""
    return list(train_bundle(task, experiment, [point], device=device))
