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

Pure: no Ray, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

PARAMETRIZATIONS = ("SP", "muP")


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


def readout_multiplier(width: int, gamma: torch.Tensor, parametrization: str) -> torch.Tensor:
    """The readout factor per member, shape ``[K, 1, 1]``: SP ``1 / (gamma sqrt(N))``, muP ``1 / (gamma N)``."""
    if parametrization == "SP":
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
        h = torch.relu(torch.matmul(h, w) * (1.0 / math.sqrt(w.shape[1])))
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
