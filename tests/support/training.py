"""The trainer tests' small helpers: a configuration point with overrides and the task an experiment builds."""

from __future__ import annotations

import torch

from raysweep.data import build_task


def point(**overrides) -> dict:
    """A muP SGD width-32 depth-3 point, ``overrides`` applied."""
    p = {"batch_size": 16, "eta": 0.05, "width": 32, "gamma": 1.0, "depth": 3, "seed": 0,
         "parametrization": "muP", "optimizer": "SGD", "loss": "mse", "lr_rule": "study"}
    p.update(overrides)
    return p


def task_for(exp: dict):
    """The task of ``exp`` in its dtype."""
    return build_task(exp, dtype=torch.float64 if exp.get("dtype") == "float64" else torch.float32)
