"""Learning-rate rules: from the base eta to the learning rate each weight matrix trains with.

Effective learning rate = ``eta * gamma_mult * width_mult`` (L = depth, N = width):

=========  ===========================  ===========================  ============================
optimizer  gamma_mult, gamma <= 1       gamma_mult, gamma > 1        width_mult (muP; SP is 1)
=========  ===========================  ===========================  ============================
SGD        gamma**2                     gamma**(2/L)                 N
Adam       gamma                        gamma**(1/L)                 sqrt(N)
=========  ===========================  ===========================  ============================

Three named rules (``lr_rule``), recorded with every trial:

- ``study``: every layer trains at ``eta * gamma_mult * width_mult``. This is the rule of the study raysweep
  replaces. For SGD it is muP. For Adam a global ``sqrt(N)`` is *not* muP: hidden-layer feature updates then grow
  like ``sqrt(N)``. Keep it for reproducing the study; do not trust it for width transfer.
- ``mup_adam``: the muP-correct per-layer Adam rule. Input and readout layers train at ``eta * gamma_mult``,
  hidden layers (N x N) at ``eta * gamma_mult / sqrt(N)``. Under SP (no width multipliers) and for SGD (whose
  global rule is already per-layer correct) it equals ``study``.
- ``raw``: no gamma multiplier, ``eta * width_mult`` (muP SGD: ``eta * N``), for gamma-eta phase sweeps.

A third parametrization, ``torch_sp`` (PyTorch's default: weights N(0, 1/fan_in), no multipliers, no gamma
in the forward beyond SP's), has the same forward as SP (``W ~ N(0, 1/fan_in)`` is ``W' / sqrt(fan_in)`` with
``W' ~ N(0, 1)``) but trains the unscaled ``W``: a step ``-lr dL/dW`` on ``W`` is a step ``-lr * fan_in dL/dW'`` on
``W'`` for SGD and ``-lr * sqrt(fan_in) * (Adam direction)`` for Adam. So under ``torch_sp`` layer l trains at
``eta * gamma_mult * fan_in_l`` (SGD) or ``eta * gamma_mult * sqrt(fan_in_l)`` (Adam) (``raw``: no gamma_mult), and
the hidden learning rate grows with N: eta* falls about an octave per width doubling under SGD.

SGD temperature ``T = eta / batch_size`` uses the base eta. AdamW follows Adam's rules everywhere.

Weight decay and Adam's eps per layer (:func:`weight_decays`, :func:`epsilons`). Under muP with ``mup_adam`` the
hidden layers train ``sqrt(N)`` times slower than the input and readout layers, so a decay step ``lr * lambda`` (the
``lr`` scaling of torch.optim) would decay them ``sqrt(N)`` times more slowly; the hidden ``lambda`` is scaled up by
``sqrt(N)`` so that every layer has the same timescale ``1 / (lr_l lambda_l)`` (the rule of Wang and Aitchison 2024,
"How to set AdamW's weight decay as you scale model and dataset size": muP scales the hidden lr down by the fan-in
and the decay up by it). With ``weight_decay_scaling: independent`` (the decay step is ``lambda`` times the schedule,
no lr) the timescale is already the same in every layer and ``lambda`` is not scaled. Adam's ``eps`` competes with
``sqrt(v)``, the size of a gradient entry; ``eps_scaling: mup`` (Everett et al. 2024, "Scaling exponents across
parameterizations and optimizers": eps must scale like the gradient, or it swamps it at large width) scales it per
layer by that size under muP. In this forward (weights N(0, 1), multipliers in the forward) a muP gradient entry is
``O(1/N)`` in the input and readout layers and ``O(N^-3/2)`` in the hidden ones (``dz ~ 1/N``, the hidden layers'
``1/sqrt(N)`` multiplier once more). Per layer, muP, N = width:

=====================  =====================  ==========================  ======================  ==============
layer                  lr (``mup_adam``)      lambda (``lr``, mup_adam)   lambda (``independent``) eps (``mup``)
=====================  =====================  ==========================  ======================  ==============
input (D x N)          eta g                  lambda                      lambda                  eps / N
hidden (N x N)         eta g / sqrt(N)        lambda sqrt(N)              lambda                  eps / N^(3/2)
readout (N x out)      eta g                  lambda                      lambda                  eps / N
=====================  =====================  ==========================  ======================  ==============

(``g`` = gamma_mult.) Every other rule, and SP, keeps one ``lambda`` and one ``eps`` for every layer (``eps_scaling:
global``, the default, is torch.optim's: eps as given).

Pure: no Ray, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LR_RULES = ("study", "mup_adam", "raw")
OPTIMIZERS = ("SGD", "Adam", "AdamW")
ADAM_OPTIMIZERS = ("Adam", "AdamW")


def gamma_mult(optimizer: str, gamma: float, depth: int) -> float:
    """SGD: gamma**2 (gamma <= 1) or gamma**(2/L); Adam: gamma (gamma <= 1) or gamma**(1/L)."""
    if optimizer == "SGD":
        return gamma**2 if gamma <= 1 else gamma ** (2.0 / depth)
    if optimizer in ADAM_OPTIMIZERS:
        return gamma if gamma <= 1 else gamma ** (1.0 / depth)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


def width_mult(optimizer: str, width: int, parametrization: str) -> float:
    """muP: N for SGD, sqrt(N) for Adam; SP: 1 (``torch_sp`` is per layer: see :func:`learning_rates`)."""
    if parametrization in ("SP", "torch_sp"):
        return 1.0
    if optimizer == "SGD":
        return float(width)
    if optimizer in ADAM_OPTIMIZERS:
        return math.sqrt(width)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


@dataclass(frozen=True)
class LearningRates:
    """Per-layer learning rates of one trial (input layer first, readout last)."""

    per_layer: tuple[float, ...]
    rule: str

    @property
    def effective(self) -> float:
        """The rule's global rate: the readout layer's (every layer's for ``study`` and ``raw`` under SP/muP; also
        the input layer's for ``mup_adam``)."""
        return self.per_layer[-1]

    @property
    def hidden(self) -> float | None:
        """The rate of the N x N hidden layers, None when depth < 3 (there are none)."""
        return self.per_layer[1] if len(self.per_layer) > 2 else None


def learning_rates(
    *, eta: float, gamma: float, width: int, depth: int, parametrization: str, optimizer: str, lr_rule: str,
    dim: int | None = None,
) -> LearningRates:
    """The learning rate of each of the ``depth`` weight matrices under ``lr_rule`` (see the module doc).

    ``dim`` (the input dimension D) matters only under ``torch_sp``, whose input layer trains at a rate that
    grows with D; without it that layer's rate is NaN.
    """
    if lr_rule not in LR_RULES:
        raise ValueError(f"lr_rule must be one of {LR_RULES}, got {lr_rule!r}")
    if parametrization == "torch_sp":
        base = eta if lr_rule == "raw" else eta * gamma_mult(optimizer, gamma, depth)
        fan = (lambda n: float(n)) if optimizer == "SGD" else math.sqrt
        first = base * fan(dim) if dim else float("nan")
        return LearningRates((first,) + (base * fan(width),) * (depth - 1), lr_rule)
    wm = width_mult(optimizer, width, parametrization)
    if lr_rule == "raw":
        return LearningRates((eta * wm,) * depth, lr_rule)
    base = eta * gamma_mult(optimizer, gamma, depth)
    if lr_rule == "mup_adam" and optimizer in ADAM_OPTIMIZERS and parametrization == "muP":
        hidden = base / math.sqrt(width)
        return LearningRates((base,) + (hidden,) * (depth - 2) + (base,), lr_rule)
    return LearningRates((base * wm,) * depth, lr_rule)


def temperature(eta: float, batch_size: int) -> float:
    """SGD temperature ``T = eta / B``, from the base eta."""
    return eta / batch_size


def weight_decays(
    *, weight_decay: float, width: int, depth: int, parametrization: str, optimizer: str, lr_rule: str,
    scaling: str = "lr",
) -> tuple[float, ...]:
    """The weight decay ``lambda`` of each of the ``depth`` weight matrices (module doc): ``lambda sqrt(N)`` for the
    hidden layers under muP with ``mup_adam`` and the ``lr`` scaling, ``lambda`` everywhere else."""
    if scaling == "lr" and lr_rule == "mup_adam" and optimizer in ADAM_OPTIMIZERS and parametrization == "muP":
        hidden = weight_decay * math.sqrt(width)
        return (weight_decay,) + (hidden,) * (depth - 2) + (weight_decay,)
    return (weight_decay,) * depth


def epsilons(*, eps: float, width: int, depth: int, parametrization: str, eps_scaling: str = "global"
             ) -> tuple[float, ...]:
    """Adam's ``eps`` for each of the ``depth`` weight matrices (module doc): with ``eps_scaling: mup`` under muP,
    ``eps / N`` for the input and readout layers and ``eps / N^(3/2)`` for the hidden ones; else ``eps``."""
    if eps_scaling == "mup" and parametrization == "muP":
        return (eps / width,) + (eps / width**1.5,) * (depth - 2) + (eps / width,)
    return (eps,) * depth


def wd_timescale(lr: float, weight_decay: float, scaling: str = "lr") -> float | None:
    """The weight-decay timescale in steps, ``1 / (lr lambda)`` (``1 / lambda`` with the ``independent`` scaling),
    at the schedule's peak; None without decay."""
    if weight_decay <= 0:
        return None
    return 1.0 / (weight_decay if scaling == "independent" else lr * weight_decay)
