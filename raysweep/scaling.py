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

SGD temperature ``T = eta / batch_size`` uses the base eta.

Pure: no Ray, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LR_RULES = ("study", "mup_adam", "raw")
OPTIMIZERS = ("SGD", "Adam")


def gamma_mult(optimizer: str, gamma: float, depth: int) -> float:
    """SGD: gamma**2 (gamma <= 1) or gamma**(2/L); Adam: gamma (gamma <= 1) or gamma**(1/L)."""
    if optimizer == "SGD":
        return gamma**2 if gamma <= 1 else gamma ** (2.0 / depth)
    if optimizer == "Adam":
        return gamma if gamma <= 1 else gamma ** (1.0 / depth)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


def width_mult(optimizer: str, width: int, parametrization: str) -> float:
    """muP: N for SGD, sqrt(N) for Adam; SP: 1."""
    if parametrization == "SP":
        return 1.0
    if optimizer == "SGD":
        return float(width)
    if optimizer == "Adam":
        return math.sqrt(width)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


@dataclass(frozen=True)
class LearningRates:
    """Per-layer learning rates of one trial (input layer first, readout last)."""

    per_layer: tuple[float, ...]
    rule: str

    @property
    def effective(self) -> float:
        """The rule's global rate: the input layer's (for ``mup_adam`` also the readout's)."""
        return self.per_layer[0]

    @property
    def hidden(self) -> float | None:
        """The rate of the N x N hidden layers, None when depth < 3 (there are none)."""
        return self.per_layer[1] if len(self.per_layer) > 2 else None


def learning_rates(
    *, eta: float, gamma: float, width: int, depth: int, parametrization: str, optimizer: str, lr_rule: str
) -> LearningRates:
    """The learning rate of each of the ``depth`` weight matrices under ``lr_rule`` (see the module doc)."""
    if lr_rule not in LR_RULES:
        raise ValueError(f"lr_rule must be one of {LR_RULES}, got {lr_rule!r}")
    wm = width_mult(optimizer, width, parametrization)
    if lr_rule == "raw":
        return LearningRates((eta * wm,) * depth, lr_rule)
    base = eta * gamma_mult(optimizer, gamma, depth)
    if lr_rule == "mup_adam" and optimizer == "Adam" and parametrization == "muP":
        hidden = base / math.sqrt(width)
        return LearningRates((base,) + (hidden,) * (depth - 2) + (base,), lr_rule)
    return LearningRates((base * wm,) * depth, lr_rule)


def temperature(eta: float, batch_size: int) -> float:
    """SGD temperature ``T = eta / B``, from the base eta."""
    return eta / batch_size
