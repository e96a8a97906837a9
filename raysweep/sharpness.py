"""Curvature tracking in training (``experiment.curvature``): each member's Hessian sharpness, batch sharpness,
preconditioned sharpness and Hessian trace at a report's weights, on a fixed curvature batch.

The curvature batch is drawn once per data stream (distinct seed) from a generator of its own,
:func:`raysweep.seeds.curvature_seed`: ``batch`` fresh samples of an online teacher, or ``batch`` training samples
drawn without replacement from a fixed data set (the whole set, in a fixed order, when ``batch >= n_train``: the
full-batch Hessian). ``f(x; theta_0)`` comes from the stream's initial weights, as in the trainer's feed. The loss is
the one the trainer optimizes (:func:`raysweep.curvature.member_loss`: the centred output, the MSE convention or
cross-entropy), as a mean over the curvature batch.

Kinds (every value per member, float64):

- ``sharpness``: the largest eigenvalue of the Hessian, by ``steps`` Lanczos steps (the top ``top_k`` found);
- ``batch_sharpness``: ``E_b [g_b^T H_b g_b / |g_b|^2]`` over minibatches ``b`` of the trial's batch size cut from
  the curvature batch (Andreyev and Beneventano 2024, "Edge of Stochastic Stability"): what SGD's stability
  depends on, where GD's is the sharpness;
- ``preconditioned_sharpness``: Adam and AdamW only (null for SGD): the largest eigenvalue of ``P^-1 H`` with Adam's
  preconditioner ``P = (1 - beta1^t) (diag(sqrt(v_hat)) + eps)``, each layer's scaled by ``lr_eff / lr_layer`` so that
  its stability threshold is ``(2 + 2 beta1) / ((1 - beta1) lr_eff)`` = 38 / ``lr_eff`` at beta1 = 0.9
  (each member's beta1, beta2 and eps; Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability");
- ``hessian_trace``: Hutchinson's estimate of tr(H) with ``steps`` Rademacher probes.

All members are measured at once (the Hessian of the bundle is block-diagonal across members), each with probes from
a generator of its own seeded from its seed and the step, so its numbers are the same alone and in any bundle. Nothing here writes a weight, an optimizer moment or the training data stream: with
it on, every training number is bit-for-bit what it is off.

Pure: torch and raysweep's model, step and curvature code; no Ray, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from raysweep import curvature
from raysweep.seeds import curvature_seed, derive_seed
from raysweep.step import ADAM_BETAS, OptState, draw_samples, forward_chunked, targets

COLUMNS = ("sharpness", "batch_sharpness", "preconditioned_sharpness", "hessian_trace")


def curvature_batch(task, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed curvature batch of the data stream of ``seed``, from a generator of its own
    (:func:`raysweep.seeds.curvature_seed`): ``n`` fresh samples of an online teacher, the whole training set when
    ``n`` covers it, else ``n`` training samples drawn without replacement. ``(x, y)`` as the task holds them."""
    gen = torch.Generator().manual_seed(curvature_seed(seed))
    if task.online:
        return draw_samples(task, gen, n)
    if n >= task.n_train:
        return task.x_train, task.y_train
    idx = torch.randperm(task.n_train, generator=gen)[:n]
    return task.x_train[idx.to(task.x_train.device)], task.y_train[idx.to(task.y_train.device)]


class CurvatureFeed:
    """The fixed curvature batch of every stream, and the measurement at a report (:meth:`measure`)."""

    def __init__(self, task, seeds: Sequence[int], init, option: Mapping, batch_size: int, loss: str,
                 mse_convention: str, dtype: torch.dtype, device: torch.device):
        self.option, self.batch_size, self.loss, self.mse_convention = option, batch_size, loss, mse_convention
        self.seeds = list(seeds)
        n = int(option["batch"])
        xs, ys = [], []
        for s in self.seeds:
            x, y = curvature_batch(task, s, n)
            xs.append(x.to(device=device, dtype=dtype))
            ys.append(targets(y.to(device), loss, task.n_out, dtype))
        self.x, self.y = xs, ys
        self.f0_raw = [forward_chunked([w[[s]] for w in init], x)[0] for s, x in enumerate(xs)]  # [n, out] each
        self.reports = 0

    def due(self) -> bool:
        """Count a report; True when this one measures (every ``every`` reports)."""
        self.reports += 1
        return self.reports % int(self.option["every"]) == 0

    def measure(self, weights, members: Sequence[int], stream: Sequence[int], out_mult, skip: Sequence[int],
                adam=None, step: int = 0, lrs=None, lr_effective: Sequence[float] | None = None,
                member_seeds: Sequence[int] = (), kinds: Sequence[str] | None = None) -> dict[str, list]:
        """Each kind's list (one value per member slot, None where not measured) at ``weights``; ``kinds``: the
        option's by default.

        ``members``: bundle indices of the slots; ``stream``: each slot's stream; ``skip``: slots not to measure
        (diverged at this report); ``adam``: per layer ``(m, v)`` (Adam at its defaults) or the general path's
        :class:`raysweep.step.OptState` (Adam or AdamW with its own betas and eps; SGD's is not measured), and ``step``
        its count; ``lrs``: per layer
        ``[K, 1, 1]`` rates; ``lr_effective``: each slot's ``lr_eff``; ``member_seeds``: each slot's seed (its
        probes come from a generator of its own, seeded from it and ``step``).
        """
        kinds, option = self.option["kinds"] if kinds is None else kinds, self.option
        out = {k: [None] * len(members) for k in COLUMNS if k in kinds}
        slots = [j for j in range(len(members)) if j not in set(skip)]
        if not slots:
            return out
        sel = torch.tensor(slots, device=out_mult.device)
        w = [t[sel].detach() for t in weights]
        a = out_mult[sel]
        streams = [int(stream[j]) for j in slots]
        if len(set(streams)) == 1:
            x, y = self.x[streams[0]], self.y[streams[0]]
        else:
            x, y = torch.stack([self.x[s] for s in streams]), torch.stack([self.y[s] for s in streams])
        f0 = torch.stack([self.f0_raw[s] for s in streams]) * a

        def gens():
            return [torch.Generator().manual_seed(derive_seed(member_seeds[j], f"curvature:{step}")) for j in slots]

        def put(kind: str, values) -> None:
            for j, v in zip(slots, values.tolist()):
                out[kind][j] = float(v)

        loss_fn = curvature.MemberLoss(x, y, a, f0, loss=self.loss, mse_convention=self.mse_convention)
        k = len(slots)
        if "sharpness" in kinds or "hessian_trace" in kinds:
            hessian_kinds(curvature.hessian_matvec(loss_fn, w), w, k, option, kinds, gens, put)
        if "batch_sharpness" in kinds:
            n, b = x.shape[-2], min(self.batch_size, x.shape[-2])
            y_dim = y.dim() - (1 if self.loss == "xent" else 2)  # labels [n] / [K, n]; targets [n, out] / [K, n, out]
            batches = [(x.narrow(-2, lo, b), y.narrow(y_dim, lo, b), f0.narrow(1, lo, b))
                       for lo in range(0, n - b + 1, b)]

            def of_batch(ws, batch):
                xb, yb, fb = batch
                return curvature.member_loss(ws, xb, yb, a, fb, loss=self.loss, mse_convention=self.mse_convention)

            put("batch_sharpness", curvature.batch_sharpness(of_batch, w, batches))
        if isinstance(adam, OptState) and adam.kind == "SGD":
            adam = None  # SGD with momentum or decay: no preconditioner
        if "preconditioned_sharpness" in kinds and adam is not None:
            per_member = {}
            if isinstance(adam, OptState):  # the general path: each member's betas and eps
                per_member = {"beta1": adam.beta1[sel], "beta2": adam.beta2[sel], "eps": [e[sel] for e in adam.eps]}
                adam = adam.state
            precond = adam_preconditioner([(m[sel], v[sel]) for m, v in adam], step, [lr[sel] for lr in lrs],
                                          torch.tensor([lr_effective[j] for j in slots], dtype=w[0].dtype,
                                                       device=w[0].device).reshape(-1, 1, 1), **per_member)
            put("preconditioned_sharpness", curvature.preconditioned_sharpness(
                loss_fn, w, precond, steps=int(option["steps"]), generator=gens()))
        return out


def hessian_kinds(op, w, k: int, option: Mapping, kinds, gens, put) -> None:
    """The ``sharpness`` (Lanczos top eigenvalue) and ``hessian_trace`` (Hutchinson) of the Hessian matvec ``op`` of
    ``k`` members at ``w``, those of ``kinds`` asked for, each with fresh per-member probe generators ``gens()``,
    handed to ``put(kind, values)``: the MLP and the factory paths measure them alike."""
    if "sharpness" in kinds:
        top = curvature.lanczos_top(op, w, k, top_k=int(option["top_k"]), steps=int(option["steps"]), generator=gens())
        put("sharpness", top[:, 0])
    if "hessian_trace" in kinds:
        mean, _ = curvature.hutchinson_trace(op, w, k, samples=int(option["steps"]), generator=gens())
        put("hessian_trace", mean)


def adam_preconditioner(moments, step: int, lrs, lr_effective, *, beta1=None, beta2=None,
                        eps=None) -> list[torch.Tensor]:
    """Adam's preconditioner per layer as Cohen et al. 2022 define it, ``(1 - beta1^t) (sqrt(v_hat) + eps)``
    (:func:`raysweep.curvature.adam_preconditioner` times ``1 - beta1^t``), each layer's scaled by
    ``lr_eff / lr_layer`` (``[K, 1, 1]`` each), from the moments ``(m, v)`` after ``step`` updates (step >= 1).
    ``beta1``, ``beta2`` (``[K, 1, 1]``, float64) and ``eps`` (per layer) are each member's on the general update
    path (an :class:`raysweep.step.OptState`); None: torch's defaults."""
    if beta1 is None:
        c1 = 1 - ADAM_BETAS[0] ** step
    else:
        c1 = (1 - beta1**step).to(moments[0][1].dtype)
    return [p.mul_(c1 * lr_effective / lr) for p, lr in
            zip(curvature.adam_preconditioner(moments, step, eps=eps, beta2=beta2), lrs)]
