"""Curvature tracking of a model factory's bundle (``experiment.curvature``): the MLP path's columns
(:mod:`raysweep.sharpness`) with exact Hessian-vector products of the general path's loss.

The loss is the one the trainer optimizes (:func:`raysweep.custom.functional.loss_fn`: the forward multipliers of
muP, the centred ``f - f0`` when the model is, the spec's loss and MSE convention), a mean over the curvature batch,
differentiated with respect to every parameter as stored (the stacked ``[K, *shape]`` tensors, in
:attr:`~raysweep.custom.train.Members.names` order). The curvature batch of each data stream (distinct seed) is drawn
once from a generator of its own (:func:`raysweep.seeds.curvature_seed`), as :class:`raysweep.sharpness.CurvatureFeed`
draws it: ``batch`` fresh samples of an online teacher, or ``batch`` training samples without replacement (the
whole training set, in order, when ``batch >= n_train``). ``sharpness`` (Lanczos), ``hessian_trace`` (Hutchinson),
``batch_sharpness`` (minibatches of the trial's batch size cut from the curvature batch) and
``preconditioned_sharpness`` are :mod:`raysweep.curvature`'s, with probes from each member's generator seeded from
its seed and the step: a member's numbers do not depend on its bundle.

Hessian-vector products:

- fused models (a forward that is a pure function of parameters and inputs): ``vmap`` over the members of
  ``torch.func.jvp(torch.func.grad(loss), (theta,), (v,))`` (forward-over-reverse, Pearlmutter 1994), recomputed at
  each product;
- models that cannot be vmapped (batch norm in training mode, dropout): measured in training mode, as they train,
  one member at a time by double backward (:func:`raysweep.curvature.hessian_matvec`) through a graph built once per
  measurement. Each member's forward draws its random numbers (dropout masks) on a forked generator seeded from its
  seed, the step and the batch (``f0``'s forward draws the same masks, as in training), so the measured loss is one
  fixed function of the parameters; batch norm normalises by the statistics of the batch measured (the curvature
  batch, or the minibatch of ``batch_sharpness``) and updates the running statistics of copies of the buffers only.

Preconditioned sharpness (Adam, AdamW; null for SGD): ``lambda_max(P^-1 H)`` with Cohen et al.'s (2022)
preconditioner ``(1 - beta1^t) (sqrt(v_hat) + eps)`` of each member's moments, betas and eps
(:func:`raysweep.sharpness.adam_preconditioner`). Parameter ``p`` trains at ``eta * lr_mult[p]``, so Adam's step is
``eta P_p^-1 m`` with ``P_p`` the preconditioner divided by ``lr_mult[p]``: each parameter's is scaled by
``eta / (eta lr_mult[p]) = 1 / lr_mult[p]``, and the stability threshold is ``38 / eta`` at ``beta1 = 0.9`` (the
schedule's multiplier left out, as on the MLP path).

Cost and memory: a product is about two training steps on the batch measured, per member. Fused, each product
is one vmapped forward and backward over the whole curvature batch (not cut into chunks); unfused, every member's
double-backward graph over it is held during a measurement. Autobatch's factory probe runs one measurement after
its training steps (:mod:`raysweep.custom.probe`), so a trial's measured need includes it.

Nothing here writes a parameter, a buffer, an optimizer moment, a data stream or torch's global generator: with it
on, every training number is bit-for-bit what it is off. Pure: torch; no Ray, no I/O.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch.func import grad, jvp, vmap

from raysweep import curvature
from raysweep.custom import functional
from raysweep.seeds import derive_seed
from raysweep.sharpness import COLUMNS, adam_preconditioner, curvature_batch, hessian_kinds
from raysweep.step import OptState

__all__ = ["CurvatureFeed", "fused_matvec", "unfused_loss"]


def fused_matvec(fn, names: Sequence[str], params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor],
                 x, y, f0, shared: bool):
    """The operator ``v -> H v`` of every member's loss ``fn(params, buffers, x, y, f0)`` (one member's, as
    :func:`raysweep.custom.functional.loss_fn` gives it) on lists of ``[K, *shape]`` tensors in ``names`` order:
    ``vmap`` over the members of forward-over-reverse products. ``x``, ``y`` shared (``shared``) or ``[K, n, ...]``;
    ``f0`` ``[K, n, ..., out]`` or None."""
    _forward_ad_ready()
    data = None if shared else 0

    def one(p, b, xs, ys, f0s, v):
        return jvp(grad(lambda q: fn(q, b, xs, ys, f0s)), (p,), (v,))[1]

    products = vmap(one, in_dims=(0, 0, data, data, None if f0 is None else 0, 0))

    def matvec(vectors):
        out = products(dict(params), dict(buffers), x, y, f0, dict(zip(names, vectors)))
        return [out[n] for n in names]

    return matvec


@functools.cache
def _forward_ad_ready() -> None:
    """Load torch's forward-mode decompositions once: torch scripts them with ``torch.jit.script``, whose
    DeprecationWarning (torch's own, on its first ``jvp``) is not the caller's to see."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        jvp(torch.sin, (torch.zeros(1),), (torch.ones(1),))


def unfused_loss(fn, names: Sequence[str], buffers: Mapping[str, torch.Tensor], x, y, f0, shared: bool,
                 rng_seeds: Sequence[int]):
    """``weights -> [K]``: every member's loss, one member at a time, for weights given as a list of ``[K, *shape]``
    tensors in ``names`` order (what :func:`raysweep.curvature.hessian_matvec` differentiates). Member k's forward
    runs on copies of its buffers, its random numbers from torch's generator seeded with ``rng_seeds[k]`` on a
    forked RNG."""
    def loss(weights):
        first = weights[0]
        device = first.device
        out = []
        for k in range(first.shape[0]):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(int(rng_seeds[k]))
                out.append(fn({n: w[k] for n, w in zip(names, weights)}, {n: b[k].clone() for n, b in buffers.items()},
                              x if shared else x[k], y if shared else y[k], None if f0 is None else f0[k]))
        return torch.stack(out)

    return loss


class CurvatureFeed:
    """The fixed curvature batch of every stream of a factory bundle, and the measurement at a report
    (:meth:`measure`). ``option``: :func:`raysweep.instrument_spec.curvature_option`'s."""

    def __init__(self, task, seeds: Sequence[int], option: Mapping, batch_size: int, device):
        self.option, self.batch_size = option, int(batch_size)
        n = int(option["batch"])
        self.x, self.y = [], []
        for s in seeds:
            x, y = curvature_batch(task, s, n)  # the MLP path's curvature batch of the stream
            self.x.append(x.to(device))
            self.y.append(y.to(device))
        self.reports = 0

    def due(self) -> bool:
        """Count a report; True when this one measures (every ``every`` reports)."""
        self.reports += 1
        return self.reports % int(self.option["every"]) == 0

    def measure(self, members, fn, stream: Sequence[int], skip: Sequence[int], *, step: int = 0, init=None,
                lr_effective: Sequence[float] = (), kinds: Sequence[str] | None = None) -> dict[str, list]:
        """Each kind's list (one value per member alive, None where not measured) at the members' parameters;
        ``kinds``: the option's by default.

        ``members``: the bundle's :class:`raysweep.custom.train.Members` (read only); ``fn``: the trainer's loss;
        ``stream``: each member's stream; ``skip``: members not to measure (diverged at this report); ``step``: the
        optimizer's step count (the probes' and forwards' seeds); ``init``: ``(params, buffers)`` at ``theta_0``
        when the model is centred, else None; ``lr_effective``: each member's ``eta`` (preconditioned sharpness).
        """
        kinds, option = self.option["kinds"] if kinds is None else kinds, self.option
        out = {k: [None] * len(stream) for k in COLUMNS if k in kinds}
        slots = [j for j in range(len(stream)) if j not in set(skip)]
        if not slots:
            return out
        first = members.params[members.names[0]]
        sel = torch.tensor(slots, device=first.device)
        names, fused = members.names, members.fused
        params = {n: p[sel] for n, p in members.params.items()}  # copies: nothing here writes the members
        buffers = {n: b[sel] for n, b in members.buffers.items()}
        init = None if init is None else ({n: p[sel] for n, p in init[0].items()},
                                          {n: b[sel] for n, b in init[1].items()})
        w = [params[n] for n in names]
        seeds = [members.seeds[j] for j in slots]
        streams = [int(stream[j]) for j in slots]
        shared = len(set(streams)) == 1
        if shared:
            x, y = self.x[streams[0]], self.y[streams[0]]
        else:
            x, y = torch.stack([self.x[s] for s in streams]), torch.stack([self.y[s] for s in streams])
        k = len(slots)

        def gens():
            return [torch.Generator().manual_seed(derive_seed(s, f"curvature:{step}")) for s in seeds]

        def put(kind: str, values) -> None:
            for j, v in zip(slots, values.tolist()):
                out[kind][j] = float(v)

        def centre(xb, tag: str):
            """``(f0, rng)`` of batch ``xb``: ``f(xb; theta_0)`` (None uncentred) and, unfused, each member's seed
            of the batch's forwards (theta_0's draws the same masks as theta's, as in training)."""
            rng = None if fused else [derive_seed(s, f"curvature-forward:{step}:{tag}") for s in seeds]
            return (None if init is None else _outputs(members, init[0], init[1], xb, shared, rng)), rng

        def operator(xb, yb, tag: str):
            f0, rng = centre(xb, tag)
            if fused:
                return fused_matvec(fn, names, params, buffers, xb, yb, f0, shared)
            return curvature.hessian_matvec(unfused_loss(fn, names, buffers, xb, yb, f0, shared, rng), w)

        if "sharpness" in kinds or "hessian_trace" in kinds or "preconditioned_sharpness" in kinds:
            op = operator(x, y, "all")
            hessian_kinds(op, w, k, option, kinds, gens, put)
            precond = _preconditioner(members, sel, slots, step, lr_effective) \
                if "preconditioned_sharpness" in kinds else None
            if precond is not None:
                top = curvature.lanczos_top(curvature.preconditioned_operator(op, precond), w, k, top_k=1,
                                            steps=int(option["steps"]), generator=gens())
                put("preconditioned_sharpness", top[:, 0])
            del op  # an unfused operator holds its graph
        if "batch_sharpness" in kinds:
            n = x.shape[0] if shared else x.shape[1]
            b = min(self.batch_size, n)
            cut = (lambda t, lo: t[lo:lo + b]) if shared else (lambda t, lo: t[:, lo:lo + b])  # noqa: E731
            batches = [(cut(x, lo), cut(y, lo), str(lo)) for lo in range(0, n - b + 1, b)]
            if fused:
                def products(batch):
                    xb, yb, tag = batch
                    f0, _ = centre(xb, tag)
                    g = functional.grads_fused(fn, params, buffers, xb, yb, f0, shared)[0]
                    g = [g[name] for name in names]
                    return g, fused_matvec(fn, names, params, buffers, xb, yb, f0, shared)(g)

                put("batch_sharpness", curvature.batch_sharpness_of(products, batches))
            else:
                def of_batch(ws, batch):
                    xb, yb, tag = batch
                    f0, rng = centre(xb, tag)
                    return unfused_loss(fn, names, buffers, xb, yb, f0, shared, rng)(ws)

                put("batch_sharpness", curvature.batch_sharpness(of_batch, w, batches))
        return out


def _outputs(members, params, buffers, x, shared: bool, rng_seeds):
    """Every member's outputs ``[K, n, ..., out]`` in the body's (training) mode, without gradients, on copies of
    the buffers: vmapped over the whole batch at once (fused) or one member at a time with ``rng_seeds``."""
    buffers = {n: b.clone() for n, b in buffers.items()}
    if rng_seeds is not None:
        return functional.outputs(members.body, members.forward_mult, params, buffers, x, False, shared, rng_seeds)
    f = functional.forward_fn(members.body, members.forward_mult)
    with torch.no_grad():
        return vmap(f, in_dims=(0, 0, None if shared else 0))(params, buffers, x)


def _preconditioner(members, sel, slots, step: int, lr_effective):
    """Each member's preconditioner as parameter-shaped tensors (module docstring), or None (SGD)."""
    opt = members.opt
    if opt is None or (isinstance(opt, OptState) and opt.kind == "SGD"):
        return None
    per_member = {}
    if isinstance(opt, OptState):  # the general path: each member's betas and eps
        per_member = {"beta1": opt.beta1[sel], "beta2": opt.beta2[sel], "eps": [e[sel] for e in opt.eps]}
        opt = opt.state
    first = members.params[members.names[0]]
    eta = torch.tensor([float(lr_effective[j]) for j in slots], dtype=first.dtype,
                       device=first.device).reshape(-1, 1, 1)
    flat = adam_preconditioner([(m[sel], v[sel]) for m, v in opt], step, [lr[sel] for lr in members.lrs], eta,
                               **per_member)
    return [p.reshape(len(slots), *members.params[n].shape[1:]) for p, n in zip(flat, members.names)]
