"""One configuration trained the way a PyTorch user writes it: the baseline of fusion.py and sweep.py.

The rule of :mod:`raysweep.model` (bias-free MLP, weights N(0, 1), ``relu(h W / sqrt(fan_in))``, readout
``/ (gamma N)`` for muP or ``/ (gamma sqrt(N))`` for SP, the centred function ``f - f0``), the same initial
weights and the same online teacher blocks as raysweep's trainer, written plainly: autograd, ``torch.optim.SGD``,
``torch.optim.Adam`` or ``torch.optim.AdamW`` (the point's betas, eps and weight decay) with one parameter group per
layer at raysweep's learning rates, a ``LambdaLR`` for a schedule (:mod:`raysweep.schedules`), ``f0`` computed once per
block, ``loss.item()`` every step and a stop at the first non-finite loss (as a researcher would), an eval loss
every ``report_every`` steps. MSE with the half_sum convention, on the task's device (the weights are drawn on the
host, as raysweep draws them, then moved there). It must reach raysweep's losses to float32 rounding: both
benchmarks check it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from raysweep.scaling import learning_rates
from raysweep.schedules import is_constant, multiplier, schedule_args
from raysweep.seeds import data_seed, init_seed
from raysweep.step import ADAM_BETAS, ADAM_EPS


def plain_training(task, point: Mapping[str, Any], steps: int, report_every: int,
                   report: Callable[[dict], None] | None = None) -> dict:
    """Train ``point`` (batch_size, eta, width, depth, gamma, seed, parametrization, optimizer, lr_rule) on the
    online ``task``; returns ``{"status", "step", "curve": [(step, mean train loss, eval loss), ...]}``."""
    batch_size, width, depth, gamma = point["batch_size"], point["width"], point["depth"], point["gamma"]
    widths = [task.dim] + [width] * (depth - 1) + [task.n_out]
    gen = torch.Generator().manual_seed(init_seed(point["seed"]))
    # drawn on the host (as raysweep.model.init_weights), then moved to the task's device
    weights = [torch.randn(a, b, generator=gen, dtype=torch.float64).to(task.device, torch.float32)
               .requires_grad_(True) for a, b in zip(widths[:-1], widths[1:])]
    readout = 1.0 / (gamma * (width if point["parametrization"] == "muP" else math.sqrt(width)))

    def f(ws, x):
        h = x
        for w in ws[:-1]:
            h = torch.relu(h @ w / math.sqrt(w.shape[0]))
        return h @ ws[-1] * readout

    lrs = learning_rates(**{k: point[k] for k in ("eta", "gamma", "width", "depth", "parametrization",
                                                  "optimizer", "lr_rule")}, dim=task.dim).per_layer
    # one group when every layer shares the rate (muP and SP SGD): torch.optim's foreach update is one call
    groups = ([{"params": weights, "lr": lrs[0]}] if len(set(lrs)) == 1
              else [{"params": [w], "lr": lr} for w, lr in zip(weights, lrs)])
    if point["optimizer"] == "SGD":
        opt = torch.optim.SGD(groups)
    elif point["optimizer"] == "AdamW":  # the point's betas, eps and (decoupled) weight decay
        opt = torch.optim.AdamW(groups, betas=(point.get("beta1", ADAM_BETAS[0]), point.get("beta2", ADAM_BETAS[1])),
                                eps=point.get("eps", ADAM_EPS), weight_decay=point.get("weight_decay", 0.0))
    else:
        opt = torch.optim.Adam(groups, betas=ADAM_BETAS, eps=ADAM_EPS)
    args = schedule_args(point)
    name = args.pop("schedule")
    sched = None if is_constant(point) else torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: multiplier(t, steps, name, **args))
    init = [w.detach().clone() for w in weights]
    data = torch.Generator().manual_seed(data_seed(point["seed"]))
    with torch.no_grad():
        f0_eval = f(init, task.x_eval)
    block = max(task.block_size, batch_size)
    pos, window, curve = block, [], []
    x_blk = y_blk = f0_blk = None
    for step in range(1, steps + 1):
        if pos + batch_size > block:
            parts = [task.draw_block(data) for _ in range(-(-block // task.block_size))]
            x_blk, y_blk = torch.cat([p[0] for p in parts])[:block], torch.cat([p[1] for p in parts])[:block]
            with torch.no_grad():
                f0_blk = f(init, x_blk)
            pos = 0
        x, y, f0 = x_blk[pos:pos + batch_size], y_blk[pos:pos + batch_size], f0_blk[pos:pos + batch_size]
        pos += batch_size
        loss = 0.5 * ((f(weights, x) - f0 - y) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        value = loss.item()
        if not math.isfinite(value):
            return {"status": "diverged", "step": step, "curve": curve}
        window.append(value)
        if step % report_every == 0 or step == steps:
            with torch.no_grad():
                eval_loss = 0.5 * ((f(weights, task.x_eval) - f0_eval - task.y_eval) ** 2).sum(1).mean().item()
            curve.append((step, sum(window) / len(window), eval_loss))
            window = []
            if report is not None:
                report({"step": step, "train_loss": curve[-1][1], "eval_loss": eval_loss})
    return {"status": "completed", "step": steps, "curve": curve}
