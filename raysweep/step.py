"""The training step of a stacked bundle, and the batch and loss helpers every caller of it shares.

A bundle's weights are stacked ``[K, fan_in, fan_out]``; every function here works per member (bmm, or mul and sum
for a scalar readout; pieces sized by the width, never by the bundle), so a member's numbers are bit-identical
alone and in any bundle. The trainer (:mod:`raysweep.train`), the gradient noise scale (:mod:`raysweep.noise`),
the coordinate check (:mod:`raysweep.coordcheck`) and the autobatch probe (:mod:`raysweep.autobatch.steps`) all
step, draw and score through these functions.

- batches: :func:`targets` (class labels one-hot for MSE), :func:`draw_samples` (online blocks concatenated to any
  size), :func:`forward_chunked` (a no-grad forward over many samples, in cache-sized pieces);
- loss: :func:`loss_per_member` (the public rule), :func:`loss_coefficients` and :func:`loss_and_dfa` (the same
  loss and its output gradient, by hand);
- step: :func:`train_step` (forward, loss, hand-written backward, :func:`update`), :func:`step_groups` and
  :func:`bundle_step` (a step of the members in groups whose weights stay in cache);
- optimizers: three update paths (:func:`raysweep.points.update_path`, chosen per configuration so that a member takes
  the same path alone and in any bundle): plain SGD fused into the backward (``opt`` None), Adam at torch's defaults
  (``opt`` a list of moments ``(m, v)``: :func:`update`) and the general path (``opt`` an :class:`OptState`:
  SGD with momentum, Nesterov and weight decay, Adam and AdamW with per-member betas, eps and weight decay:
  :func:`update_general`). Every path takes each member's rates for the step, the schedule already applied.

Pure: torch and :mod:`raysweep.model`; no Ray, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from raysweep import model, schedules

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# no-grad forwards over many samples (f(x; theta_0), eval) run in pieces of this many members x activations
CHUNK_MEMBERS = 8
CHUNK_ELEMENTS = 2**18
# schedule multipliers are computed and moved to the device this many steps at a time
SCHEDULE_CHUNK = 4096
# a training step runs the members in groups whose weights (and Adam state) take at most this many bytes
STEP_GROUP_BYTES = 2**22


# --- batches -------------------------------------------------------------------------------------------------------


def targets(y: torch.Tensor, loss: str, n_out: int, dtype: torch.dtype) -> torch.Tensor:
    """Regression targets as they are; class labels one-hot for MSE, kept as labels for xent."""
    if y.dtype == torch.int64 and loss == "mse":
        return F.one_hot(y, n_out).to(dtype)
    return y


def draw_samples(task, gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` samples of an online ``task``: its blocks from ``gen``, concatenated (batches larger than the
    study's block P)."""
    xs, ys = [], []
    while sum(len(x) for x in xs) < size:
        x, y = task.draw_block(gen)
        xs.append(x)
        ys.append(y)
    return torch.cat(xs)[:size], torch.cat(ys)[:size]


def forward_chunked(weights, x: torch.Tensor, *, active: torch.Tensor | None = None) -> torch.Tensor:
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
    """One piece of :func:`forward_chunked`: the raw output, and the units found active OR-ed into ``active``."""
    raw, acts = model.forward_cached(weights, x, keep=active is not None)
    for layer, h in enumerate(acts[1:]):  # acts[0] is the input; the rest are the hidden layers' outputs
        active[:, layer] |= h.amax(-2) > 0  # amax: a reduction without a [K, n, N] bool copy
    return raw


# --- loss ----------------------------------------------------------------------------------------------------------


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


def loss_coefficients(loss: str, mse_convention: str, batch_size: int, n_out: int) -> tuple[float, float]:
    """``(c_loss, c_df)``: MSE ``loss = c_loss * sum r^2`` and ``dloss/df = c_df * r`` (``r = f - f0 - y``);
    xent ``dloss/df = c_df * (softmax - onehot)`` (``c_loss`` unused). The conventions of :func:`loss_per_member`."""
    if loss == "xent":
        return 1.0, 1.0 / batch_size
    if mse_convention == "study":
        return 1.0 / (batch_size * n_out), 2.0 / (batch_size * n_out)
    return 0.5 / batch_size, 1.0 / batch_size


def loss_and_dfa(raw, out_mult, t, labels, loss_coef: float, dfa_coef):
    """Each member's minibatch loss ``[K]`` and ``dfa = a * dloss/df`` ``[K, B, out]`` (what
    :func:`raysweep.model.backward` takes), from the raw output ``raw`` (overwritten).

    MSE: ``t = a f0 + y`` and ``r = a raw - t`` is the centred residual. xent: ``t = a f0``, ``labels`` the classes.
    ``dfa_coef`` is ``a * c_df`` per member, ``[K, 1, 1]`` (see :func:`loss_coefficients`).
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


# --- the step ------------------------------------------------------------------------------------------------------


def update(weights, grads, lrs, adam, step: int) -> None:
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


@dataclass
class OptState:
    """The general update path of a bundle (:func:`update_general`): per-member hyperparameters ``[K, 1, 1]`` (per
    layer where a muP rule makes them differ, :mod:`raysweep.scaling`) and state.

    ``kind``: SGD, Adam or AdamW. ``momentum``, ``nesterov`` (SGD; nesterov 1.0 or 0.0); ``beta1``, ``beta2`` (Adam,
    float64: the bias corrections are computed in float64 and cast); ``eps`` per layer; ``coupled`` per layer: the
    decay added to the gradient (SGD, Adam: ``g + lambda w``, torch.optim's ``weight_decay``); ``decoupled`` per
    layer: the decay applied to the weights, ``w *= 1 - c lambda`` with ``c`` the step's rate (AdamW,
    torch.optim.AdamW) or, where ``independent`` is 1.0, the schedule's multiplier (every optimizer with
    ``weight_decay_scaling: independent``). ``state`` per layer: SGD the momentum buffer, Adam ``(m, v)``.
    """

    kind: str
    momentum: torch.Tensor | None
    nesterov: torch.Tensor | None
    beta1: torch.Tensor | None
    beta2: torch.Tensor | None
    eps: list | None
    coupled: list | None  # None: no member decays through its gradient
    decoupled: list | None  # None: no member decays its weights directly
    independent: torch.Tensor | None
    state: list

    def select(self, idx) -> OptState:
        """The members ``idx`` (a slice: views that updates write through; an index tensor: a copy)."""
        def pick(v):
            if v is None:
                return None
            if isinstance(v, (list, tuple)):
                return type(v)(pick(u) for u in v)
            return v[idx]
        return replace(self, **{k: pick(getattr(self, k)) for k in (
            "momentum", "nesterov", "beta1", "beta2", "eps", "coupled", "decoupled", "independent", "state")})


class ScheduleFeed:
    """Each member's schedule multiplier (:mod:`raysweep.schedules`) at every step, ``[K, 1, 1]`` on the device,
    computed :data:`SCHEDULE_CHUNK` steps at a time."""

    def __init__(self, points, total_steps: int, dtype: torch.dtype, device):
        self.points, self.total, self.dtype, self.device = list(points), total_steps, dtype, device
        self.start, self.block = 0, None

    def at(self, step: int) -> torch.Tensor:
        """The multipliers of ``step`` (from 1)."""
        t = step - 1
        if self.block is None or not self.start <= t < self.start + len(self.block):
            self.start = t
            stop = min(self.total, t + SCHEDULE_CHUNK)
            rows = schedules.table(self.points, self.total, t, max(stop, t + 1))
            self.block = torch.tensor(rows, dtype=self.dtype, device=self.device).unsqueeze(-1).unsqueeze(-1)
        return self.block[t - self.start]

    def select(self, keep: list[int]) -> None:
        """Keep only the members ``keep`` (indices into the members alive)."""
        self.points = [self.points[j] for j in keep]
        if self.block is not None:
            self.block = self.block[:, torch.tensor(keep, device=self.block.device)]


def scaled_rates(lrs, scale):
    """The step's per-layer rates: ``lrs`` times the schedule's multipliers ``scale`` (``lrs`` itself when None);
    one shared tensor stays one shared tensor (:func:`raysweep.model.backward` then applies it once)."""
    if scale is None:
        return lrs
    if all(lr is lrs[0] for lr in lrs):
        return [lrs[0] * scale] * len(lrs)
    return [lr * scale for lr in lrs]


def optimizer_state(path: str, kind: str, weights, members: list[dict]):
    """The optimizer state of a bundle on update path ``path`` (:func:`raysweep.points.update_path`): None (``sgd``),
    zero moments (``adam``) or an :class:`OptState` (``general``) from ``members``, one dict per member with
    ``momentum``, ``nesterov``, ``beta1``, ``beta2``, ``eps`` and ``weight_decay`` (one value per layer each for the
    last two) and ``independent`` (``weight_decay_scaling: independent``)."""
    if path == "sgd":
        return None
    if path == "adam":
        return [(torch.zeros_like(w), torch.zeros_like(w)) for w in weights]
    w0 = weights[0]
    depth = len(weights)

    def col(values, dtype=w0.dtype):
        return torch.tensor(values, dtype=dtype, device=w0.device).reshape(-1, 1, 1)

    def layers(name, where):
        if not any(where(m) and any(m[name]) for m in members):
            return None
        return [col([m[name][l] if where(m) else 0.0 for m in members]) for l in range(depth)]

    sgd = kind == "SGD"
    decoupled = (lambda m: kind == "AdamW" or m["independent"])
    nesterov = any(m["nesterov"] for m in members)
    independent = any(m["independent"] for m in members)
    return OptState(
        kind=kind,
        momentum=col([m["momentum"] for m in members]) if sgd else None,
        nesterov=col([float(m["nesterov"]) for m in members]) if sgd and nesterov else None,
        beta1=None if sgd else col([m["beta1"] for m in members], torch.float64),
        beta2=None if sgd else col([m["beta2"] for m in members], torch.float64),
        eps=None if sgd else [col([m["eps"][l] for m in members]) for l in range(depth)],
        coupled=layers("weight_decay", lambda m: not decoupled(m)),
        decoupled=layers("weight_decay", decoupled),
        independent=col([float(m["independent"]) for m in members]) if independent else None,
        state=[torch.zeros_like(w) for w in weights] if sgd else
        [(torch.zeros_like(w), torch.zeros_like(w)) for w in weights],
    )


def optimizer_tensors(state) -> list[torch.Tensor]:
    """The tensors of an optimizer state (:func:`optimizer_state`) in a fixed order, live (an update writes them):
    none for plain SGD, ``m, v`` per layer for Adam's path, the ``state`` of an :class:`OptState` (SGD's momentum
    buffers, or ``m, v`` per layer). What a checkpoint keeps (:class:`raysweep.train.TrainState`)."""
    if state is None:
        return []
    layers = state.state if isinstance(state, OptState) else state
    return [t for layer in layers for t in (layer if isinstance(layer, (tuple, list)) else (layer,))]


def update_general(weights, grads, lrs, opt: OptState, step: int, scale=None) -> None:
    """One step of the general path in place (torch.optim's formulas, each member with its own hyperparameters).

    ``lrs``: per layer the step's rates ``[K, 1, 1]`` (the schedule applied); ``scale``: the schedule's multipliers
    ``[K, 1, 1]`` (None: 1), for the ``independent`` decay. SGD: ``g += lambda w``; ``buf = mu buf + g`` (``buf = g``
    at the first step); ``d = g + mu buf`` (Nesterov) or ``buf``; ``w -= lr d``. Adam: ``g += lambda w``; AdamW:
    ``w *= 1 - lr lambda``; then ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``w -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    """
    if opt.coupled is not None:
        grads = [g.addcmul(w, lam) for g, w, lam in zip(grads, weights, opt.coupled)]
    if opt.decoupled is not None:
        for w, lam, lr in zip(weights, opt.decoupled, lrs):
            rate = lr if opt.independent is None else torch.where(opt.independent > 0, 1.0 if scale is None else
                                                                  scale, lr)
            w.mul_(1 - rate * lam)
    # _foreach ops: one call per quantity for all layers (per-member [K, 1, 1] factors broadcast)
    depth = len(weights)
    if opt.kind == "SGD":
        bufs = opt.state
        torch._foreach_mul_(bufs, [opt.momentum] * depth)
        torch._foreach_add_(bufs, grads)
        ds = bufs if opt.nesterov is None else [
            torch.where(opt.nesterov > 0, g.addcmul(buf, opt.momentum), buf) for g, buf in zip(grads, bufs)]
        torch._foreach_sub_(weights, torch._foreach_mul(ds, lrs))
        return
    dtype = weights[0].dtype
    c1 = (1 - opt.beta1**step).to(dtype)
    root_c2 = (1 - opt.beta2**step).sqrt().to(dtype)
    b1, b2 = opt.beta1.to(dtype), opt.beta2.to(dtype)
    one_b1, one_b2 = (1 - opt.beta1).to(dtype), (1 - opt.beta2).to(dtype)
    ms, vs = [m for m, _ in opt.state], [v for _, v in opt.state]
    torch._foreach_mul_(ms, [b1] * depth)
    torch._foreach_addcmul_(ms, grads, [one_b1] * depth)
    torch._foreach_mul_(vs, [b2] * depth)
    torch._foreach_addcmul_(vs, torch._foreach_mul(grads, grads), [one_b2] * depth)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(denom, [root_c2] * depth)
    torch._foreach_add_(denom, opt.eps)
    steps = torch._foreach_div(ms, denom)
    torch._foreach_mul_(steps, [lr / c1 for lr in lrs])
    torch._foreach_sub_(weights, steps)


def train_step(weights, x, t, labels, out_mult, loss_coef, dfa_coef, lrs, adam, step: int,
               scale=None) -> torch.Tensor:
    """One optimizer step of the members of ``weights``, in place; returns their minibatch losses ``[K]``.

    ``x``, ``t``, ``labels``: a minibatch as :func:`loss_and_dfa` takes it; ``lrs``: one ``[K, 1, 1]`` rate per
    layer (the same tensor for every layer: :func:`raysweep.model.backward` applies it once); ``adam``: per layer
    the moments ``(m, v)`` (Adam at its defaults), an :class:`OptState` (the general path), or None for SGD, whose
    update is fused into the backward; ``step``: from 1; ``scale``: the schedule's multipliers (general path).
    """
    raw, acts = model.forward_cached(weights, x)
    losses, dfa = loss_and_dfa(raw, out_mult, t, labels, loss_coef, dfa_coef)
    if adam is None:
        model.backward(weights, acts, dfa, sgd_lr=lrs)
    elif isinstance(adam, OptState):
        update_general(weights, model.backward(weights, acts, dfa), lrs, adam, step, scale)
    else:
        update(weights, model.backward(weights, acts, dfa), lrs, adam, step)
    return losses


def step_groups(n_members: int, member_bytes: int) -> list[slice]:
    """Consecutive groups of members whose weights (and Adam state) take at most ``STEP_GROUP_BYTES``: one group
    for small models; one member at a time when a member's weights alone fill the cache."""
    size = max(1, STEP_GROUP_BYTES // max(1, member_bytes))
    return [slice(a, min(a + size, n_members)) for a in range(0, n_members, size)]


def member_bytes(weights, adam) -> int:
    """Bytes of one member's weights, and of its optimizer state when ``adam`` is not None (what
    :func:`step_groups` sizes groups by)."""
    copies = 1 if adam is None else 2 if isinstance(adam, OptState) and adam.kind == "SGD" else 3
    return sum(w[0].numel() * w.element_size() for w in weights) * copies


def bundle_step(weights, x, t, labels, out_mult, loss_coef, dfa_coef, lrs, adam, step: int,
                groups: list[slice], scale=None) -> torch.Tensor:
    """:func:`train_step` of the whole bundle, one group of ``groups`` (:func:`step_groups`) at a time; returns
    every member's minibatch loss ``[K]``. ``x`` and ``labels`` are shared (``[B, ...]``) or per member."""
    if len(groups) == 1:
        return train_step(weights, x, t, labels, out_mult, loss_coef, dfa_coef, lrs, adam, step, scale)
    # large weights: a group of members at a time, so that each group's weights stay in cache
    depth = len(weights)
    return torch.cat([
        train_step([w[g] for w in weights], x if x.dim() == 2 else x[g], t[g],
                   labels if labels is None or labels.dim() == 1 else labels[g], out_mult[g], loss_coef,
                   dfa_coef[g], [lrs[0][g]] * depth if lrs[0] is lrs[-1] else [lr[g] for lr in lrs],
                   _group_state(adam, g), step, None if scale is None else scale[g])
        for g in groups])


def _group_state(adam, g: slice):
    """The optimizer state of the members ``g`` (views: the updates write through)."""
    if adam is None:
        return None
    if isinstance(adam, OptState):
        return adam.select(g)
    return [(m[g], v[g]) for m, v in adam]
