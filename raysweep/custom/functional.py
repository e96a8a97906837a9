"""A bundle of user models as stacked functional parameters: one ``vmap(grad(functional_call))`` step, or one member
at a time when the model cannot be vmapped.

:func:`stack` stacks the members' parameters and buffers (``torch.func.stack_module_state``: ``[K, *shape]``) and
keeps a copy of the module on the meta device as the function's body. The loss of one member
(:func:`member_loss`) is the MLP path's rule (:func:`raysweep.step.loss_per_member`) for outputs of any rank
``[B, ..., out]``: mse ``half_sum`` 0.5 * mean over samples (and positions) of the sum over outputs of the squared
error, ``study`` the mean over everything; xent the mean cross-entropy over samples and positions. A parameter with
a forward multiplier (the muP readout, :mod:`raysweep.custom.mup`) enters the forward as ``multiplier * p``.

Fused (:func:`grads_fused`): ``vmap`` over the members of ``grad_and_value`` of one member's loss, the inputs shared
(``in_dims`` None) when one data stream feeds every member. Unfused (:func:`grads_unfused`): the same function of
each member in turn. Both return per-member gradients ``[K, *shape]`` and losses ``[K]``; the update is
:mod:`raysweep.step`'s. A model is fusable when its forward is a pure function of parameters and inputs:
:func:`vmap_reason` says why not (batch norm in training mode updates its running statistics in place, dropout
draws random numbers, a forward calls ``.item()``...). Pure: torch; no Ray, no I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

EVAL_CHUNK = 1024  # eval and f(x; theta_0) forwards run over this many samples at a time


def stack(modules) -> tuple[dict, dict, torch.nn.Module]:
    """``(params, buffers, body)``: the members' parameters and buffers stacked ``[K, *shape]`` (detached, no
    grad) and the first module copied to the meta device (the functional forward's body)."""
    params, buffers = stack_module_state(list(modules))
    params = {n: p.detach().requires_grad_(False) for n, p in params.items()}
    body = copy.deepcopy(modules[0]).to("meta")
    return params, buffers, body


def member_loss(out: torch.Tensor, y: torch.Tensor, loss: str, mse_convention: str, n_out: int) -> torch.Tensor:
    """One member's loss of outputs ``out [B, ..., n_out]`` against labels ``[B, ...]`` or targets (module doc)."""
    if loss == "xent":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    target = F.one_hot(y, n_out).to(out.dtype) if not y.is_floating_point() else y
    err = (out - target).square()
    return err.mean() if mse_convention == "study" else 0.5 * err.sum(-1).mean()


def forward_fn(body: torch.nn.Module, forward_mult: Mapping[str, float]):
    """``f(params, buffers, x)`` of one member, the forward multipliers applied."""
    def f(params, buffers, x):
        if forward_mult:
            params = {n: p * forward_mult[n] if n in forward_mult else p for n, p in params.items()}
        return functional_call(body, (params, buffers), (x,))
    return f


def loss_fn(body, forward_mult, loss: str, mse_convention: str, n_out: int):
    """``l(params, buffers, x, y, f0)`` of one member: the loss of ``f(x) - f0`` (``f0`` None: uncentred)."""
    f = forward_fn(body, forward_mult)

    def l(params, buffers, x, y, f0):
        out = f(params, buffers, x)
        return member_loss(out if f0 is None else out - f0, y, loss, mse_convention, n_out)
    return l


def grads_fused(fn, params, buffers, x, y, f0, shared: bool):
    """Per-member gradients (a dict ``[K, *shape]``) and losses ``[K]`` of the loss ``fn`` in one vmapped call;
    ``x``, ``y`` shared by every member (``shared``) or ``[K, B, ...]``; ``f0`` ``[K, B, ..., out]`` or None."""
    data_dim = None if shared else 0
    return vmap(grad_and_value(fn), in_dims=(0, 0, data_dim, data_dim, None if f0 is None else 0))(
        params, buffers, x, y, f0)


def grads_unfused(fn, params, buffers, x, y, f0, shared: bool, rng_seeds=None):
    """:func:`grads_fused`, one member at a time (buffers updated in place through views of the stack).

    ``rng_seeds`` (one int per member, or None): each member's forward draws its random numbers (dropout) from
    torch's global generator seeded with its own seed, on a forked RNG, so that they do not depend on the other
    members of the bundle."""
    grads, losses = [], []
    device = next(iter(params.values())).device
    for k in range(next(iter(params.values())).shape[0]):
        pk = {n: p[k] for n, p in params.items()}
        bk = {n: b[k] for n, b in buffers.items()}
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                   enabled=rng_seeds is not None):
            if rng_seeds is not None:
                torch.manual_seed(int(rng_seeds[k]))
            g, value = grad_and_value(fn)(pk, bk, x if shared else x[k], y if shared else y[k],
                                           None if f0 is None else f0[k])
        grads.append(g)
        losses.append(value)
    return {n: torch.stack([g[n] for g in grads]) for n in params}, torch.stack(losses)


def outputs(body, forward_mult, params, buffers, x, fused: bool, shared: bool = True,
            rng_seeds=None) -> torch.Tensor:
    """Every member's outputs ``[K, n, ..., out]`` without gradients, :data:`EVAL_CHUNK` samples at a time.

    ``rng_seeds`` (unfused, one int per member, or None): each member's random numbers (dropout in training mode)
    come from its own seed on a forked RNG, over the whole of ``x`` at once, as :func:`grads_unfused` draws them."""
    f = forward_fn(body, forward_mult)
    first = next(iter(params.values()))
    k, device = first.shape[0], first.device
    n = x.shape[0] if shared else x.shape[1]
    chunk = EVAL_CHUNK if rng_seeds is None else max(n, 1)

    def member(j, xs):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=rng_seeds is not None):
            if rng_seeds is not None:
                torch.manual_seed(int(rng_seeds[j]))
            return f({m: p[j] for m, p in params.items()}, {m: b[j] for m, b in buffers.items()},
                     xs if shared else xs[j])

    pieces = []
    with torch.no_grad():
        for lo in range(0, n, chunk):
            xs = x[lo:lo + chunk] if shared else x[:, lo:lo + chunk]
            if fused:
                pieces.append(vmap(f, in_dims=(0, 0, None if shared else 0))(params, buffers, xs))
            else:
                pieces.append(torch.stack([member(j, xs) for j in range(k)]))
    return torch.cat(pieces, 1)


def vmap_reason(module: torch.nn.Module, x: torch.Tensor, n_out: int) -> str | None:
    """None when the model's training step can be vmapped over members (a forward that is a pure function of
    parameters and inputs), else a one-line reason: batch norm in training mode (it updates running statistics in
    place), or the error torch.func raised on a trial step of two members on ``x``."""
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            return (f"{name or 'the model'} is a {type(m).__name__} in training mode, which updates its running "
                    "statistics in place (not a pure function of parameters and inputs)")
    try:
        params, buffers, body = stack([module, module])
        params = {n: p.clone() for n, p in params.items()}
        buffers = {n: b.clone() for n, b in buffers.items()}
        fn = loss_fn(body, {}, "xent", "half_sum", n_out)
        out = outputs(body, {}, params, buffers, x, fused=True)
        y = torch.zeros(out.shape[1:-1], dtype=torch.int64, device=x.device)
        grads_fused(fn, params, buffers, x, y, None, shared=True)
    except Exception as exc:  # torch.func's refusal, whatever its class
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"torch.func.vmap cannot run its step ({type(exc).__name__}: {text[:160]})"
    return None
