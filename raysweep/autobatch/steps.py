"""The probe's real steps: a stacked MLP built from shapes, trained (or evaluated) by the trainer's own code.

What a trial of :func:`raysweep.train.train_bundle` allocates: K stacked members initialised by
:func:`raysweep.model.init_weights` (float64 on the host, then cast), an initial copy for centring, per step
``f(x; theta_0)`` of the batch (:func:`raysweep.step.forward_chunked`) folded into the target, and
:func:`raysweep.step.bundle_step`: the hand-written forward and backward, SGD fused into the backward or Adam's
update with its two moments, in the trainer's member groups. An eval step is the trainer's report pass: the no-grad
chunked forward of the current and the initial weights with the active-unit flags, the loss and the accuracy,
with the training state alive. Learning rates are tiny: the probe measures memory, not training. Only ever called
in a probe process.
"""

from __future__ import annotations

import torch

from raysweep import model
from raysweep.step import (
    bundle_step, forward_chunked, loss_coefficients, loss_per_member, member_bytes, optimizer_state, step_groups,
)

PROBE_LR = 1e-9
MSE_CONVENTION = "half_sum"


def run_steps(request, point: dict, *, device: str = "cpu") -> None:
    """Build the point's model and run ``request.steps[mode]`` steps on ``device``; raises on out-of-memory."""
    dtype = getattr(torch, request.dtype)
    k, b, width, depth = point["n_members"], point["batch_size"], point["width"], point["depth"]
    mode, optimizer, loss = point["mode"], point["optimizer"], request.loss
    widths = model.layer_widths(request.dim, width, depth, request.n_out)
    weights = model.init_weights(widths, list(range(k)), dtype=dtype, device=device)
    out_mult = model.readout_multiplier(width, torch.ones(k, dtype=dtype, device=device), "muP")
    init = [w.clone() for w in weights]
    if optimizer == "SGD+momentum":  # the general path: gradients apart, a momentum buffer per weight
        settings = {"momentum": 0.9, "nesterov": False, "beta1": 0.9, "beta2": 0.999, "eps": [1e-8] * depth,
                    "weight_decay": [1e-4] * depth, "independent": False}
        adam = optimizer_state("general", "SGD", weights, [settings] * k)
    else:
        adam = [(torch.zeros_like(w), torch.zeros_like(w)) for w in weights] if optimizer == "Adam" else None
    gen = torch.Generator(device=device).manual_seed(0)

    def batch():
        x = torch.randn(b, request.dim, generator=gen, device=device, dtype=dtype)
        if loss == "xent":
            return x, torch.randint(0, request.n_out, (b,), generator=gen, device=device)
        return x, torch.randn(b, request.n_out, generator=gen, device=device, dtype=dtype)

    if mode == "train":
        lrs = [torch.full((k, 1, 1), PROBE_LR, dtype=dtype, device=device)] * depth
        loss_coef, df_coef = loss_coefficients(loss, MSE_CONVENTION, b, request.n_out)
        dfa_coef = out_mult * df_coef
        groups = step_groups(k, member_bytes(weights, adam))
        window = []  # each step's losses stay on the device until the report, as in the trainer
        for step in range(1, request.steps["train"] + 1):
            x, y = batch()
            t = forward_chunked(init, x) * out_mult  # the trainer's target: t = a f0 (+ y for MSE)
            labels = y if loss == "xent" else None
            if labels is None:
                t.add_(y)
            window.append(bundle_step(weights, x, t, labels, out_mult, loss_coef, dfa_coef, lrs, adam, step, groups))
    else:
        with torch.no_grad():
            for _ in range(request.steps["val"]):
                x, y = batch()
                units = torch.zeros(k, depth - 1, width, dtype=torch.bool, device=device)
                f0 = forward_chunked(init, x) * out_mult
                f = forward_chunked(weights, x, active=units).mul_(out_mult).sub_(f0)
                losses = loss_per_member(f, y, loss, MSE_CONVENTION)
                if loss == "xent":
                    (f.argmax(-1) == y).to(dtype).mean(1)
                losses.sum().item()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
