"""Dead networks in raysweep.train: the rule, a constructed dead net flagged at the right report, a slow net never
flagged, the same flags alone and in a bundle, and no training number moved by the detection (bit for bit)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raysweep import model
from raysweep import train as T
from raysweep.data import build_task
from raysweep.train import chance_accuracy, dead_members, init_seed, outside_band, train_bundle
from raysweep.trial import Bundle, Plan, curve_row, trial_row

DIGITS = {"family": "digits", "epochs": 2, "report_every": 10, "dtype": "float32", "data_seed": 0}


def point(**overrides) -> dict:
    p = {"batch_size": 32, "eta": 0.5, "width": 64, "gamma": 1.0, "depth": 3, "seed": 0, "parametrization": "muP",
         "optimizer": "SGD", "loss": "xent", "lr_rule": "study"}
    return p | overrides


def reports(exp, points):
    task = build_task(exp, dtype=torch.float64 if exp["dtype"] == "float64" else torch.float32)
    return list(train_bundle(task, exp, points)), task


def numbers(rs) -> list[tuple]:
    """Every training number of a run, per report (NaN compared as equal through repr)."""
    return [(r.step, r.members, repr(r.train_loss), repr(r.eval_loss), repr(r.eval_accuracy), r.diverged,
             r.initial_loss) for r in rs]


# ------------------------------------------------------------------------------------------------------ the rule


def test_chance_accuracy_is_the_best_constant_guess_plus_three_standard_errors():
    assert chance_accuracy(torch.tensor([0, 0, 1, 2]), 3) == pytest.approx(0.5 + 3 * math.sqrt(0.25 / 4))
    assert chance_accuracy(torch.arange(1000) % 10, 10) == pytest.approx(0.1 + 3 * math.sqrt(0.09 / 1000))


def test_dead_members_rule():
    initial = np.full(7, math.log(10))
    cases = [  # active fraction, eval loss, accuracy, left the band, dead?
        (0.0, 0.20, 0.95, False, True),    # a hidden layer with no active unit, whatever else
        (0.5, 2.302, 0.09, True, True),    # learned (or blew up), came back to chance at the initial loss
        (0.5, 2.302, 0.09, False, False),  # a slow net at the initial loss that never left the band: not dead
        (0.5, 1.00, 0.09, True, False),    # loss well below the initial loss: it learned something
        (0.5, 2.302, 0.60, True, False),   # accuracy above chance
        (0.5, 2.20, 0.09, True, False),    # 4.5% below the initial loss: not collapsed
        (np.nan, 2.302, 0.09, True, True),  # no hidden layer (depth 1): only rule 2 can apply
    ]
    active, loss, acc, left, want = map(np.array, zip(*cases))
    assert dead_members(active, loss, acc, initial, left, 0.15).tolist() == want.tolist()
    # regression (no accuracy, no chance level): rule 1 only
    assert dead_members(active, loss, None, initial, left, None).tolist() == [True] + [False] * 6
    assert outside_band([1.06, 0.96, np.nan, 0.5], [1.0] * 4).tolist() == [True, False, False, True]


# ------------------------------------------------------------------------------------------- constructed cases


def test_a_constructed_dead_network_is_flagged_at_the_first_report(monkeypatch):
    """Seed 1's first layer is made all negative: digits pixels are >= 0, so every unit of layer 1 is off on every
    input from step 0 (and no gradient ever reaches it). It must be dead at every report, since the first; its
    bundle neighbour (seed 0) must be untouched: the same numbers as alone, and never dead."""
    real_init = model.init_weights

    def init(widths, seeds, **kw):
        ws = real_init(widths, seeds, **kw)
        for k, s in enumerate(seeds):
            if s == init_seed(1):
                ws[0][k] = -ws[0][k].abs()
        return ws

    monkeypatch.setattr(model, "init_weights", init)
    points = [point(seed=0), point(seed=1)]
    rs, task = reports(DIGITS, points)
    every = DIGITS["report_every"]
    class0 = float((task.y_eval == 0).double().mean())
    for r in rs:
        assert r.dead == {1: every}  # member 1 since the first report; member 0 never
        assert r.active_fraction[1] == 0.0 and r.active_fraction[0] > 0.5
        # a dead centred net is the zero predictor: ln 10, and argmax 0 everywhere
        assert r.eval_loss[1] == pytest.approx(math.log(10), rel=1e-6) and r.eval_accuracy[1] == pytest.approx(class0)
    alone, _ = reports(DIGITS, [points[0]])
    assert [(r.train_loss[0], r.eval_loss[0], r.active_fraction[0]) for r in rs] == \
        [(r.train_loss[0], r.eval_loss[0], r.active_fraction[0]) for r in alone]
    # the rows: dead_step on the trials row, active_fraction on every curve row; status stays completed
    bundle = Bundle("b", ("k0", "k1"), tuple(points))
    plan = Plan("dead", DIGITS, {"b": bundle}, version="test")
    last = rs[-1]
    assert trial_row(plan, bundle, 1, status="completed", dataset="digits", report=last, member=1)["dead_step"] == every
    assert trial_row(plan, bundle, 0, status="completed", dataset="digits", report=last, member=0)["dead_step"] is None
    assert curve_row(last, 1)["active_fraction"] == 0.0


@pytest.mark.parametrize("optimizer, eta", [("SGD", 2.0**-10), ("SGD", 2.0**-7), ("Adam", 2.0**-14)])
def test_a_slow_small_eta_net_is_not_dead(optimizer, eta):
    rs, task = reports(DIGITS, [point(optimizer=optimizer, eta=eta, seed=s) for s in range(2)])
    assert all(not r.dead for r in rs)
    assert all(min(r.active_fraction) > 0.5 for r in rs)
    if optimizer == "SGD" and eta == 2.0**-10:  # the hard case: at the initial loss all along
        assert all(v >= 0.99 * r.initial_loss[0] for r in rs for v in r.eval_loss)


def test_a_slow_regression_net_is_not_dead():
    exp = {"family": "poly_online", "dim": 16, "degree": 2, "steps": 60, "report_every": 10, "dtype": "float64",
           "data_seed": 0}
    rs, _ = reports(exp, [point(loss="mse", eta=1e-4, batch_size=16, seed=s) for s in range(2)])
    assert all(not r.dead for r in rs) and all(v == 1.0 for r in rs for v in r.active_fraction)


# ------------------------------------------------------------------------------------- training, bit for bit


LARGE = [2.0**k for k in (-3, 1, 3, 5)]  # from healthy to dying to blowing up (digits, muP, width 64)


@pytest.mark.parametrize("optimizer, etas", [("SGD", LARGE), ("Adam", [2.0**k for k in (-6, -2, 0, 2)])])
def test_detection_moves_no_training_number(monkeypatch, optimizer, etas):
    points = [point(optimizer=optimizer, eta=e, seed=s) for e in etas for s in range(2)]
    with_detection, _ = reports(DIGITS, points)
    assert any(r.dead for r in with_detection)  # the run does find dead members: the comparison is not vacuous
    real = T.forward_chunked
    monkeypatch.setattr(T, "forward_chunked", lambda weights, x, active=None: real(weights, x))
    without, _ = reports(DIGITS, points)
    assert numbers(with_detection) == numbers(without)


def test_dead_flags_are_the_same_alone_and_in_a_bundle():
    points = [point(eta=e, seed=s) for e in LARGE for s in range(2)]
    bundle, _ = reports(DIGITS, points)
    for i, p in enumerate(points):
        alone, _ = reports(DIGITS, [p])
        fused = [(r.step, r.dead.get(i), r.active_fraction[r.members.index(i)]) for r in bundle if i in r.members]
        assert fused == [(r.step, r.dead.get(0), r.active_fraction[0]) for r in alone]


def test_dead_step_starts_the_streak_that_lasts_to_the_end():
    rs, _ = reports(DIGITS | {"epochs": 4}, [point(eta=e, seed=s) for e in LARGE for s in range(3)])
    finals = {}
    for r in rs:
        for m in r.members:
            finals[m] = r
    assert any(m in r.dead for m, r in finals.items())
    for m, last in finals.items():
        if m not in last.dead:
            continue
        seen = [r for r in rs if m in r.members]
        streak = [r.step for r in seen if m in r.dead]
        start = last.dead[m]
        # every report from dead_step to the member's last is dead, and the one before it (if any) is not
        assert [r.step for r in seen if r.step >= start] == [s for s in streak if s >= start]
        before = [r for r in seen if r.step < start]
        assert not before or m not in before[-1].dead
