"""Bias-free MLPs in Standard (SP) and maximal-update (muP) parametrization, with richness gamma.

Every model here is a *stack* of K independent members (K = 1 for a single trial): weight matrix l is a tensor
of shape ``[K, fan_in, fan_out]``. One code path therefore serves a lone trial and a fused bundle, and a member's
numbers do not depend on which bundle it trained in.

The rule (L = depth = number of weight matrices, widths ``[D] + [N] * (L - 1) + [out]``):

- all weights ~ N(0, 1); the scaling lives in the forward pass;
- hidden layers, the first included: ``h = relu(h W / sqrt(fan_in))``;
- readout: SP ``f = h W_out / (gamma * sqrt(N))``; muP ``f = h W_out / (gamma * N)``;
- the trained function is centred, ``f(x; theta) - f(x; theta_0)``, so at step 0 every member is the zero
  predictor whatever its gamma. Callers hold ``f(x; theta_0)`` (see ``raysweep.train``) so that it is computed
  once per sample, not once per step.

The linear student (:func:`linear_student`) is the depth-1 stack with zero weights and readout multiplier 1,
``f(x) = w.x``: the same forward, backward and updates serve it.

Pure: no Ray, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

PARAMETRIZATIONS = ("SP", "muP", "torch_sp")


def layer_widths(dim: int, width: int, depth: int, n_out: int) -> list[int]:
    """``[D] + [N] * (L - 1) + [out]``: the L + 1 widths of an L-matrix MLP."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return [dim] + [width] * (depth - 1) + [n_out]


def init_weights(
    widths: Sequence[int],
    seeds: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """Stacked N(0, 1) weights, one member per seed: a list of L tensors ``[K, fan_in, fan_out]``.

    Member k is drawn from its own CPU generator seeded with ``seeds[k]``, in float64, then cast: the same seed
    gives the same weights alone or in any bundle, on any device, and float32 weights are the float64 ones rounded.
    """
    per_member = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        per_member.append(
            [torch.randn(a, b, generator=gen, dtype=torch.float64) for a, b in zip(widths[:-1], widths[1:])]
        )
    return [
        torch.stack([member[l] for member in per_member]).to(device=device, dtype=dtype)
        for l in range(len(widths) - 1)
    ]


def linear_student(dim: int, n_out: int, members: int, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """The linear student ``f(x) = w.x``: one weight stack ``[K, D, out]`` of zeros, trained with readout
    multiplier 1 (:func:`forward` of depth 1). At step 0 it is the zero predictor, so ``f(x; theta_0) = 0`` and the
    centring changes nothing; it has no seed, width, gamma or parametrization."""
    return [torch.zeros(members, dim, n_out, dtype=dtype, device=device)]


def readout_multiplier(width: int, gamma: torch.Tensor, parametrization: str) -> torch.Tensor:
    """The readout factor per member, shape ``[K, 1, 1]``: SP ``1 / (gamma sqrt(N))``, muP ``1 / (gamma N)``."""
    if parametrization in ("SP", "torch_sp"):  # torch_sp: SP's forward, per-layer rates (raysweep.scaling)
        scale = gamma * math.sqrt(width)
    elif parametrization == "muP":
        scale = gamma * width
    else:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
    return (1.0 / scale).reshape(-1, 1, 1)


def forward(
    weights: Sequence[torch.Tensor],
    x: torch.Tensor,
    out_multiplier: torch.Tensor,
    *,
    hidden: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Raw (uncentred) output ``[K, B, out]`` of the stacked MLP.

    ``x`` is ``[B, D]`` (one minibatch shared by every member) or ``[K, B, D]`` (one per member).
    If ``hidden`` is a list, the post-activation of every hidden layer is appended to it (coord checks).
    """
    h = x
    for w in weights[:-1]:
        # in place on the matmul's fresh output: the same values as relu(h W * s), two allocations fewer
        h = torch.matmul(h, w).mul_(1.0 / math.sqrt(w.shape[1])).relu_()
        if hidden is not None:
            hidden.append(h)
    w_out = weights[-1]
    if w_out.shape[-1] == 1:
        # scalar readout as a product and a sum: batched GEMV kernels reorder the sum with K, and a member's
        # numbers must not depend on its bundle
        return (h * w_out.transpose(1, 2)).sum(-1, keepdim=True) * out_multiplier
    return torch.matmul(h, w_out) * out_multiplier


def centred(
    weights: Sequence[torch.Tensor], x: torch.Tensor, out_multiplier: torch.Tensor, f0: torch.Tensor
) -> torch.Tensor:
    """The trained function ``f(x; theta) - f(x; theta_0)``, given ``f0 = f(x; theta_0)`` of shape ``[K, B, out]``."""
    return forward(weights, x, out_multiplier) - f0


# ------------------------------------------------------------------------------- the training pass, by hand
#
# Training needs one forward and one backward per step. Autograd records a graph of ~20 small ops per layer, which
# dominates the step of a small MLP; the pass below is the same rule with the backward written out (pre-activation
# masks, bmm for the gradients) and, for SGD, the update fused into the gradient's bmm.


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A scalar zero for ``baddbmm(..., beta=0)`` (its input is ignored, NaN included)."""
    return torch.zeros((), dtype=like.dtype, device=like.device)


def forward_cached(weights: Sequence[torch.Tensor], x: torch.Tensor, *, keep: bool = True):
    """Raw output ``[K, B, out]`` (before the readout multiplier) and the input of every layer ``[x, h_1, ...,
    h_{L-1}]`` (empty when ``keep`` is false), for :func:`backward`.

    The rule of :func:`forward` (``forward == raw * out_multiplier`` to rounding): ``1 / sqrt(fan_in)`` enters as
    the bmm's ``alpha``, relu is applied in place. ``x`` is ``[B, D]`` (shared) or ``[K, B, D]``. A member's
    numbers do not depend on the other members (every product is per member: bmm, or mul and sum for a scalar
    readout, as in :func:`forward`).
    """
    k = weights[0].shape[0]
    zero = _zero(weights[0])
    acts = [x] if keep else []
    h = x.expand(k, *x.shape) if x.dim() == 2 else x
    for w in weights[:-1]:
        h = torch.baddbmm(zero, h, w, beta=0.0, alpha=1.0 / math.sqrt(w.shape[1])).relu_()
        if keep:
            acts.append(h)
    w_out = weights[-1]
    if w_out.shape[-1] == 1:
        return (h * w_out.transpose(1, 2)).sum(-1, keepdim=True), acts
    return torch.bmm(h, w_out), acts


def backward(
    weights: Sequence[torch.Tensor],
    acts: Sequence[torch.Tensor],
    dfa: torch.Tensor,
    *,
    sgd_lr: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Gradients of ``sum_k loss_k`` with respect to every weight stack, by hand.

    ``acts`` are :func:`forward_cached`'s layer inputs and ``dfa = out_multiplier * dloss/df``, shape
    ``[K, B, out]`` (``f`` the multiplied output). With a readout ``f = a * h W_L`` and hidden layers
    ``h_l = relu(s_l h_{l-1} W_l)``, ``s_l = 1 / sqrt(fan_in)``:

        dW_L = h_{L-1}^T dfa,   dh_{L-1} = dfa W_L^T,
        dz_l = dh_l * [h_l > 0],   dW_l = s_l h_{l-1}^T dz_l,   dh_{l-1} = s_l dz_l W_l^T.

    A scalar readout uses mul and sum (as :func:`forward`) so that a member's numbers do not depend on its bundle.

    With ``sgd_lr`` (one ``[K, 1, 1]`` rate per layer) the SGD step ``W -= lr * dW`` is applied in place instead,
    inside the gradient's bmm, and ``[]`` is returned. Every ``dh`` is formed before its layer is updated. When
    every layer gets the same tensor (one rate per member), the rate is applied once, to ``dfa``.
    """
    depth = len(weights)
    grads: list[torch.Tensor] = [None] * depth  # type: ignore[list-item]
    rates = sgd_lr
    if sgd_lr is not None and all(lr is sgd_lr[0] for lr in sgd_lr):
        # one rate per member for every layer (every SGD rule): scale dfa once, and every dz after it carries the
        # rate, instead of one [K, B, fan] product per layer
        dfa, rates = dfa * sgd_lr[0], [None] * depth
    w_out, h = weights[-1], acts[-1]
    if h.dim() == 2:  # depth 1: the readout reads the shared inputs
        h = h.expand(w_out.shape[0], *h.shape)
    if w_out.shape[-1] == 1:
        w_t = w_out.transpose(1, 2)  # [K, 1, N]: a view, so the in-place update below lands in w_out
        dh = dfa * w_t
        g_t = (h * dfa).sum(1, keepdim=True)
        if sgd_lr is None:
            grads[-1] = g_t.transpose(1, 2)
        elif rates[-1] is None:
            w_t.sub_(g_t)
        else:
            w_t.addcmul_(g_t, rates[-1], value=-1.0)
    else:
        dh = torch.bmm(dfa, w_out.transpose(1, 2))
        if sgd_lr is None:
            grads[-1] = torch.bmm(h.transpose(1, 2), dfa)
        else:
            w_out.baddbmm_(h.transpose(1, 2), dfa if rates[-1] is None else dfa * rates[-1], alpha=-1.0)
    zero = _zero(w_out)
    for l in range(depth - 2, -1, -1):
        w, h_in = weights[l], acts[l]
        scale = 1.0 / math.sqrt(w.shape[1])
        dz = torch.ops.aten.threshold_backward(dh, acts[l + 1], 0)
        if l > 0:
            dh = torch.baddbmm(zero, dz, w.transpose(1, 2), beta=0.0, alpha=scale)
        h3 = h_in.expand(w.shape[0], *h_in.shape) if h_in.dim() == 2 else h_in
        if sgd_lr is None:
            grads[l] = torch.baddbmm(zero, h3.transpose(1, 2), dz, beta=0.0, alpha=scale)
        elif rates[l] is None:
            w.baddbmm_(h3.transpose(1, 2), dz, alpha=-scale)
        elif w.shape[1] <= w.shape[2]:  # the rate goes on the smaller operand
            w.baddbmm_((h_in * rates[l]).transpose(1, 2), dz, alpha=-scale)
        else:
            w.baddbmm_(h3.transpose(1, 2), dz * rates[l], alpha=-scale)
    return [] if sgd_lr is not None else grads
