"""Synthetic sweeps with a planted truth, written through the real results writer.

Tests and benchmarks use them to check that the analysis recovers what was planted (eta*(B), B_crit, transfer and
gamma slopes) and to time the report. Nothing here trains a model.

A *loss function* maps a config dict (axis name -> value, plus ``seed``) to its final loss, to ``None`` for a
diverged trial, to :data:`FAILED` for a failed one (no loss, an error text: an infeasible batch, out of memory) or
to ``Dead(loss)`` for a completed trial that the trainer found dead (``dead_step`` set, the loss it ended at). A
*curve function* maps a config to ``(steps, losses)``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysweep.results import ResultsWriter

BASE_CONFIG = {
    "family": "synthetic",
    "dataset": "synthetic",
    "parametrization": "muP",
    "optimizer": "SGD",
    "lr_rule": "study",
    "loss": "mse",
    "loss_convention": "half_sum",
    "batch_size": 32,
    "eta": 0.1,
    "width": 256,
    "depth": 3,
    "gamma": 1.0,
    "seed": 0,
}


FAILED = "failed"


@dataclass(frozen=True)
class Dead:
    """What a loss function returns for a dead trial: it completed at ``loss`` (typically the initial loss), dead
    since a third of the way through training."""

    loss: float


def config_key(config: dict) -> str:
    """A stable hash of a config (sorted JSON)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:20]


def parabola(config: dict, log2_eta_star: float, *, floor: float = 1.0, curvature: float = 0.2,
             noise: float = 0.0, rng: np.random.Generator | None = None) -> float:
    """``floor + curvature * (log2 eta - log2 eta*)^2``, times ``(1 + noise * N(0, 1))``."""
    value = floor + curvature * (np.log2(config["eta"]) - log2_eta_star) ** 2
    if noise and rng is not None:
        value *= 1.0 + noise * rng.standard_normal()
    return float(value)


def make_rows(axes: dict, loss_fn, *, curve_fn=None, base: dict | None = None, steps: int = 1000,
              eval_loss: bool = True):
    """Trial rows (and ``{config_key: curve rows}``) for the full product of ``axes`` (name -> values); with
    ``eval_loss=False`` every eval column is null (a run without an eval set).

    A config whose ``loss_fn`` returns ``None`` is diverged: status ``diverged``, ``diverged_step`` set, and a
    *finite, attractive* recorded train loss of 1e-9 (what a careless reader would pick as the optimum: the
    analysis must mask it). :data:`FAILED` gives a ``failed`` row (null losses, an error, no curve); ``Dead(loss)``
    a completed row with ``dead_step`` set."""
    base = dict(BASE_CONFIG if base is None else base)
    trials, curves = [], {}
    names = list(axes)
    for combo in itertools.product(*(axes[n] for n in names)):
        config = base | dict(zip(names, combo))
        key = config_key(config)
        loss = loss_fn(config)
        if isinstance(loss, str) and loss == FAILED:
            trials.append(dict(config) | {
                "config_key": key, "temperature": config["eta"] / config["batch_size"], "lr_effective": config["eta"],
                "status": "failed", "steps": 0, "samples_seen": 0,
                "error": "InfeasibleError: synthetic failure (e.g. out of memory)", "raysweep_version": "synthetic",
            })
            continue
        dead_step = None
        if isinstance(loss, Dead):
            loss, dead_step = loss.loss, steps // 3
        diverged = loss is None
        row = dict(config) | {
            "config_key": key,
            "temperature": config["eta"] / config["batch_size"],
            "lr_effective": config["eta"],
            "status": "diverged" if diverged else "completed",
            "diverged_step": steps // 3 if diverged else None,
            "dead_step": dead_step,
            "steps": steps // 3 if diverged else steps,
            "samples_seen": steps * config["batch_size"],
            "initial_loss": 2.0,
            "final_train_loss": 1e-9 if diverged else loss,
            "final_eval_loss": None if diverged or not eval_loss else loss,
            "raysweep_version": "synthetic",
        }
        trials.append(row)
        if curve_fn is not None:
            s, values = curve_fn(config)
            curves[key] = [{"step": int(a), "train_loss": float(b), "eval_loss": float(b) if eval_loss else None,
                            "samples_seen": int(a) * config["batch_size"]} for a, b in zip(s, values)]
    return trials, curves


def write_sweep(results_dir, name: str, trials: list, curves: dict | None = None) -> Path:
    """Write rows through :class:`raysweep.results.ResultsWriter` to ``results_dir/name``; returns the folder."""
    folder = Path(results_dir) / name
    writer = ResultsWriter(folder, name)
    try:
        for row in trials:
            writer.add(row, (curves or {}).get(row["config_key"], ()))
    finally:
        writer.close()
    return folder


def benchmark_sweep(results_dir, name: str = "bench", *, n_reports: int = 100, seed: int = 0) -> Path:
    """5 batch sizes x 25 etas x 2 widths x 2 gammas x 2 seeds = 1,000 trials with ``n_reports`` curve rows each
    (100,000 by default), so that every analysis and every plot runs: eta*(B) grows like B up to B = 64 then
    saturates, moves as gamma^0.3 and not with width; the stability edge sits 2 octaves above eta*."""
    rng = np.random.default_rng(seed)

    def log2_star(c):
        return -12.0 + np.log2(min(c["batch_size"], 64)) + 0.3 * np.log2(c["gamma"])

    def loss_fn(c):
        if np.log2(c["eta"]) > log2_star(c) + 2:
            return None
        return parabola(c, log2_star(c), floor=0.1, noise=0.03, rng=rng)

    def curve_fn(c):
        steps = np.arange(1, n_reports + 1) * 10
        final = parabola(c, log2_star(c), floor=0.1)
        tau = 200.0 / max(c["eta"] / 2.0 ** (log2_star(c) - 3), 0.05)
        loss = final + (2.0 - final) * np.exp(-steps / tau)
        return steps, loss * (1 + 0.05 * rng.standard_normal(len(steps)) / np.sqrt(c["batch_size"]))

    axes = {"batch_size": [4, 16, 64, 256, 1024], "eta": [2.0**k for k in np.arange(-14, -1.5, 0.5)],
            "width": [128, 512], "gamma": [0.5, 2.0], "seed": range(2)}
    trials, curves = make_rows(axes, loss_fn, curve_fn=curve_fn)
    return write_sweep(results_dir, name, trials, curves)
