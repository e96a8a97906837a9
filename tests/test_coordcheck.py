"""Coordinate check (microsoft/mup's test, on raysweep's model and learning-rate rules).

Five optimizer steps on one fixed batch, widths N = 64 .. 2048, 3 seeds. For each hidden layer l, the size of the
feature update ``mean |h_l(t) - h_l(0)|`` (over batch, units and seeds) is fitted as ``N^slope`` on a log-log scale.

- muP SGD and muP Adam with the per-layer rule (``lr_rule: mup_adam``): feature updates are width-independent,
  |slope| < 0.1.
- SP SGD: feature updates vanish like N^(-1/2); hidden slopes < -0.35.
- muP Adam with the study's global sqrt(N) rule (``lr_rule: study``): measured and printed, not asserted. Adam's
  first steps are sign-like, so a global sqrt(N) on every layer makes feature updates grow (slope near +1/2 before
  anything saturates); this is why the per-layer rule exists. SP Adam is printed too.

Run ``pytest -s tests/test_coordcheck.py`` to see every slope.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysweep import model
from raysweep.data import build_task
from raysweep.scaling import learning_rates
from raysweep.seeds import init_seed
from raysweep.step import loss_per_member, update


WIDTHS = [64, 128, 256, 512, 1024, 2048]
SEEDS = [0, 1, 2]
STEPS = 5
DEPTH = 3  # two hidden layers: h_1 = relu(x W_1 / sqrt(D)), h_2 = relu(h_1 W_2 / sqrt(N))
DIM, BATCH = 16, 32
DTYPE = torch.float32

# (parametrization, optimizer, lr_rule, eta): moderate SGD, small Adam (sign-like first steps must not saturate)
CASES = {
    "muP-SGD": ("muP", "SGD", "study", 0.5),
    "SP-SGD": ("SP", "SGD", "study", 0.5),
    "muP-Adam-mup_adam": ("muP", "Adam", "mup_adam", 1e-3),
    "muP-Adam-study": ("muP", "Adam", "study", 1e-3),
    "SP-Adam-study": ("SP", "Adam", "study", 1e-3),
}


@pytest.fixture(scope="module")
def batch():
    """One fixed batch of a degree-2 polynomial teacher, y = (x . w)^2 with x ~ N(0, I_16), w ~ N(0, I / 16)."""
    task = build_task({"family": "poly_fixed", "dim": DIM, "n_train": BATCH, "degree": 2, "data_seed": 0},
                      dtype=DTYPE)
    return task.x_train, task.y_train


def feature_updates(batch, parametrization: str, optimizer: str, lr_rule: str, eta: float) -> np.ndarray:
    """``mean |h_l(5) - h_l(0)|`` per (width, hidden layer), averaged over seeds: shape [len(WIDTHS), DEPTH - 1]."""
    x, y = batch
    out = np.zeros((len(WIDTHS), DEPTH - 1))
    for i, width in enumerate(WIDTHS):
        rates = learning_rates(eta=eta, gamma=1.0, width=width, depth=DEPTH, parametrization=parametrization,
                               optimizer=optimizer, lr_rule=lr_rule)
        lrs = [torch.tensor(lr, dtype=DTYPE).reshape(1, 1, 1) for lr in rates.per_layer]
        mult = model.readout_multiplier(width, torch.tensor([1.0], dtype=DTYPE), parametrization)
        for seed in SEEDS:
            weights = model.init_weights(model.layer_widths(DIM, width, DEPTH, 1), [init_seed(seed)], dtype=DTYPE)
            h0: list[torch.Tensor] = []
            with torch.no_grad():
                f0 = model.forward(weights, x, mult, hidden=h0)
            weights = [w.requires_grad_(True) for w in weights]
            adam = [(torch.zeros_like(w), torch.zeros_like(w)) for w in weights] if optimizer == "Adam" else None
            for step in range(1, STEPS + 1):
                loss = loss_per_member(model.centred(weights, x, mult, f0), y, "mse", "half_sum")
                grads = torch.autograd.grad(loss.sum(), weights)
                with torch.no_grad():
                    update(weights, grads, lrs, adam, step)
            ht: list[torch.Tensor] = []
            with torch.no_grad():
                model.forward(weights, x, mult, hidden=ht)
            out[i] += [float((a - b).abs().mean()) / len(SEEDS) for a, b in zip(ht, h0)]
    return out


def slopes(updates: np.ndarray) -> list[float]:
    """Least-squares slope of log(update) against log(N), per hidden layer."""
    log_n = np.log(WIDTHS)
    return [float(np.polyfit(log_n, np.log(updates[:, l]), 1)[0]) for l in range(updates.shape[1])]


@pytest.fixture(scope="module")
def measured(batch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible timing on a busy machine; the numbers do not depend on it
    try:
        results = {name: feature_updates(batch, *case) for name, case in CASES.items()}
    finally:
        torch.set_num_threads(before)
    print("\ncoord check: slope of log mean|h_l(5) - h_l(0)| vs log N, N = 64..2048, 3 seeds")
    for name, updates in results.items():
        s = slopes(updates)
        sizes = "  ".join(f"h{l + 1}: " + " ".join(f"{v:.2e}" for v in updates[:, l]) for l in range(DEPTH - 1))
        print(f"  {name:<20} " + "  ".join(f"h{l + 1} {v:+.3f}" for l, v in enumerate(s)) + f"   [{sizes}]")
    return results


@pytest.mark.parametrize("name", ["muP-SGD", "muP-Adam-mup_adam"])
def test_mup_feature_updates_are_width_independent(measured, name):
    """Catches a muP SGD rate of eta * sqrt(N) (slopes near -1/2) and a per-layer Adam rule without the 1/sqrt(N)
    on the hidden layers (h2 slope near +1/2). A hidden rate that is too *small* (1/N) is not visible here: h2 is
    then carried by the O(1) update of h1; the hand table in test_scaling.py catches it."""
    s = slopes(measured[name])
    assert all(abs(v) < 0.1 for v in s), f"{name}: slopes {s}"
    assert np.all(measured[name] > 0)


def test_sp_sgd_feature_updates_vanish_with_width(measured):
    """SP SGD at a fixed eta: feature updates shrink like N^(-1/2). Catches a width multiplier applied under SP."""
    s = slopes(measured["SP-SGD"])
    assert all(v < -0.35 for v in s), f"SP-SGD: slopes {s}"


def test_study_adam_rule_is_measured(measured):
    """The study's global sqrt(N) Adam rule: printed (pytest -s), not asserted."""
    s = slopes(measured["muP-Adam-study"])
    print(f"\n  muP Adam, study rule (global sqrt(N)): slopes {['%+.3f' % v for v in s]}")
    assert all(np.isfinite(s))
