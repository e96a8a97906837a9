"""The power-law linear teacher's closed forms: the feature spectrum and the teacher. Pure: numpy only.

Features ``x ~ N(0, Sigma)``, ``Sigma = diag(lambda)``, ``lambda_i = i^-alpha`` (``i = 1..D``): ``x = z sqrt(lambda)``
with ``z ~ N(0, I_D)``. Teacher ``w*_i`` proportional to ``i^-(1/2 + alpha (beta - 1) / 2)``, normalised so that
``y = w*.x`` has unit variance: ``sum_i lambda_i w*_i^2 = 1``. The teacher's power on feature ``i``,
``lambda_i w*_i^2``, is proportional to ``i^-(1 + alpha beta)`` (the source condition: larger beta, a teacher easier
to learn from the top of the spectrum). Both depend on ``(D, alpha, beta)`` only, never on a seed.

The data builder (``raysweep.data.synthetic.build_linear``) and the closed-form theory read both from here.
"""

from __future__ import annotations

import numpy as np

# |1 + alpha beta| is clipped here before it multiplies log i (<= 21.5 for D <= 2**31 - 1), so that the product stays
# finite; beyond it the normalised power is already a single feature (i = 1 or i = D) in float64, so the clip
# changes no number
POWER_EXPONENT_CLIP = 1e15


def spectrum(dim: int, alpha: float) -> np.ndarray:
    """``lambda_i = i^-alpha`` for ``i = 1..dim``: the feature variances, float64 ``[dim]``."""
    return np.arange(1, dim + 1, dtype=np.float64) ** -float(alpha)


def teacher_power(dim: int, alpha: float, beta: float) -> np.ndarray:
    """``lambda_i w*_i^2``, proportional to ``i^-(1 + alpha beta)`` and summing to 1: the teacher's share of
    ``Var y`` on each feature, float64 ``[dim]`` (computed from logarithms, so no term overflows)."""
    exponent = min(max(1.0 + float(alpha) * float(beta), -POWER_EXPONENT_CLIP), POWER_EXPONENT_CLIP)
    log_power = -exponent * np.log(np.arange(1, dim + 1, dtype=np.float64))
    power = np.exp(log_power - log_power.max())
    return power / power.sum()


def teacher(dim: int, alpha: float, beta: float) -> np.ndarray:
    """``w*_i``, proportional to ``i^-(1/2 + alpha (beta - 1) / 2)``, with ``sum_i lambda_i w*_i^2 = 1``: float64
    ``[dim]``, every entry >= 0."""
    return np.sqrt(teacher_power(dim, alpha, beta) / spectrum(dim, alpha))
