"""The probe's real steps: a stacked MLP built from shapes, trained (or evaluated) exactly as a trial does.

Mirrors :func:`raysweep.train.train_bundle`'s memory: K stacked members initialised by
:func:`raysweep.model.init_weights` (float64 on the host, then cast), an initial copy for centring, the centred
output ``f(x; theta) - f(x; theta_0)`` with ``f(x; theta_0)`` computed under ``no_grad``,
``raysweep.train.loss_per_member``, ``torch.autograd.grad`` (the gradients stay referenced until the next step's
are computed), and the in-place SGD / Adam update with its temporaries. Learning rates are tiny: the probe
measures memory, not training. Only ever called in a probe process.
"""

from __future__ import annotations

import math

import torch

from raysweep import model
from raysweep.train import loss_per_member

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def _update(weights, grads, lr: float, adam, step: int) -> None:
    """As ``raysweep.train``: SGD ``W -= lr g``; Adam with bias correction and the same temporaries."""
    if adam is None:
        for w, g in zip(weights, grads):
            w.sub_(lr * g)
        return
    b1, b2 = ADAM_BETAS
    c1, c2 = 1 - b1**step, 1 - b2**step
    for w, g, (m, v) in zip(weights, grads, adam):
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(c2)).add_(ADAM_EPS)
        w.sub_((lr / c1) * m / denom)


def run_steps(request, point: dict, *, device: str = "cpu") -> None:
    """Build the point's model and run ``request.steps[mode]`` steps on ``device``; raises on out-of-memory."""
    dtype = getattr(torch, request.dtype)
    k, b, width, depth = point["n_members"], point["batch_size"], point["width"], point["depth"]
    mode, optimizer, loss = point["mode"], point["optimizer"], request.loss
    widths = model.layer_widths(request.dim, width, depth, request.n_out)
    weights = model.init_weights(widths, list(range(k)), dtype=dtype, device=device)
    out_mult = model.readout_multiplier(width, torch.ones(k, dtype=dtype, device=device), "muP")
    init = [w.clone() for w in weights]
    adam = [(torch.zeros_like(w), torch.zeros_like(w)) for w in weights] if optimizer == "Adam" else None
    gen = torch.Generator(device=device).manual_seed(0)

    def batch():
        x = torch.randn(b, request.dim, generator=gen, device=device, dtype=dtype)
        if loss == "xent":
            return x, torch.randint(0, request.n_out, (b,), generator=gen, device=device)
        return x, torch.randn(b, request.n_out, generator=gen, device=device, dtype=dtype)

    if mode == "train":
        for w in weights:
            w.requires_grad_(True)
        grads = None
        for step in range(1, request.steps["train"] + 1):
            x, y = batch()
            with torch.no_grad():
                f0 = model.forward(init, x, out_mult)
            losses = loss_per_member(model.forward(weights, x, out_mult) - f0, y, loss, "half_sum")
            grads = torch.autograd.grad(losses.sum(), weights)  # noqa: F841 - alive into the next step, as in train
            with torch.no_grad():
                _update(weights, grads, 1e-9, adam, step)
    else:
        grads = [torch.zeros_like(w) for w in weights]  # noqa: F841 - a trial evaluates with its gradients alive
        with torch.no_grad():
            for _ in range(request.steps["val"]):
                x, y = batch()
                f = model.forward(weights, x, out_mult) - model.forward(init, x, out_mult)
                losses = loss_per_member(f, y, loss, "half_sum")
                if loss == "xent":
                    (f.argmax(-1) == y).to(dtype).mean(1)
                losses.sum().item()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
