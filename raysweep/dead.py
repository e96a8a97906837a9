"""Dead networks: the rule the trainer (:mod:`raysweep.train`) applies at each report.

Past the stability edge many ReLU nets do not blow up but die, and under cross-entropy a dead centred net sits at
ln(classes), its initial loss, so the divergence threshold never fires. At a report a member is *dead* when either

1. *no active unit*: some hidden layer has no unit whose output is positive on any eval sample (the output then
   no longer depends on the input through that layer, and no gradient reaches the layers below it or the readout);
2. *collapsed to chance* (classification only): its eval accuracy is at most :func:`chance_accuracy` (the largest
   class frequency of the eval set plus ``CHANCE_SIGMAS`` binomial standard errors), its eval loss is at least
   ``COLLAPSE_LOSS_MIN`` times the initial loss, and at this or an earlier report its train or eval loss left the
   band ``[1 - LOSS_BAND, 1 + LOSS_BAND]`` times the initial loss (:func:`outside_band`: it learned, or blew up,
   and came back). A slow small-eta net that has not learned yet never left that band, so it is not dead.

Pure: numpy and torch; no Ray, no I/O.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# the band a member's loss must have left, the collapsed loss, the chance margin
LOSS_BAND = 0.05
COLLAPSE_LOSS_MIN = 0.99
CHANCE_SIGMAS = 3.0


def chance_accuracy(labels: torch.Tensor, n_classes: int, sigmas: float = CHANCE_SIGMAS) -> float:
    """The highest eval accuracy still read as chance: ``p + sigmas * sqrt(p (1 - p) / n)``, with ``p`` the largest
    class frequency among the ``n`` labels (the accuracy of the best constant guess)."""
    n = int(labels.numel())
    p = float(torch.bincount(labels.flatten().cpu(), minlength=n_classes).max()) / max(n, 1)
    return p + sigmas * math.sqrt(p * (1 - p) / max(n, 1))


def dead_members(active_fraction, eval_loss, eval_accuracy, initial_loss, left_band, chance: float | None):
    """Which members are dead at a report (rules 1 and 2 of the module docstring), as a bool array.

    ``active_fraction`` (per member, NaN for no hidden layer), ``eval_loss``, ``eval_accuracy`` (None for
    regression), ``initial_loss`` and ``left_band`` (the member's loss left the band at this or an earlier report)
    are arrays over the members; ``chance`` is :func:`chance_accuracy` (None for regression)."""
    active_fraction = np.asarray(active_fraction, dtype=np.float64)
    dead = active_fraction == 0.0
    if eval_accuracy is not None and chance is not None:
        with np.errstate(invalid="ignore"):
            collapsed = (np.asarray(eval_accuracy, np.float64) <= chance) & (
                np.asarray(eval_loss, np.float64) >= COLLAPSE_LOSS_MIN * np.asarray(initial_loss, np.float64))
        dead |= collapsed & np.asarray(left_band, dtype=bool)
    return dead


def outside_band(loss, initial_loss) -> np.ndarray:
    """Whether each finite ``loss`` lies outside ``[1 - LOSS_BAND, 1 + LOSS_BAND]`` times ``initial_loss``."""
    loss, initial = np.asarray(loss, np.float64), np.asarray(initial_loss, np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(loss) & (np.abs(loss - initial) > LOSS_BAND * initial)
