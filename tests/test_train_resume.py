"""Exact resume inside the trainer: train 2N steps == train N, export the state, write it through safetensors and
JSON, resume, train N more: every report after the checkpoint equals the uninterrupted run's bit for bit (losses,
accuracy, divergence and dead-network flags, gradient noise scale), in float64 and float32, online and fixed data,
SGD and Adam, one fused bundle with shared and distinct seeds and a member that diverges."""

from __future__ import annotations

import json
import math

import pytest
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from raysweep.train import TrainState, train_bundle
from tests.support.training import point, task_for

SYNTH = {"dim": 8, "n_train": 96, "degree": 2}
# eta factors, gammas and seeds: seed 0 twice (a shared stream), seed 1, and a member that diverges early
MEMBERS = [dict(eta=1.0, gamma=1.0, seed=0), dict(eta=2.0, gamma=0.5, seed=1), dict(eta=0.5, gamma=2.0, seed=0),
           dict(eta=1e6, gamma=1.0, seed=2)]


def experiment(family: str, dtype: str, **extra) -> dict:
    exp = {"family": family, "steps": 36, "report_every": 4, "dtype": dtype, "data_seed": 0,
           "grad_noise_scale": {"batches": 2, "batch_size": 4}, **extra}
    if family != "digits":
        exp.update(SYNTH)
    if family == "poly_online":
        exp["n_train"] = 40  # a block of 40 samples: a checkpoint lands mid-block
    return exp


def points(optimizer: str, loss: str = "mse", members=MEMBERS) -> list[dict]:
    base = 0.05 if optimizer == "SGD" else 3e-3
    return [point(batch_size=12, width=16, optimizer=optimizer, loss=loss,
                  **dict(m, eta=m["eta"] * base if m["eta"] < 1e6 else 1e6)) for m in members]


def rows(reports) -> list[tuple]:
    """Every number a report carries but the wall time, NaN made comparable."""
    def norm(v):
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        if isinstance(v, list):
            return tuple(norm(x) for x in v)
        if isinstance(v, dict):
            return tuple(sorted(v.items()))
        return v

    return [tuple(norm(getattr(r, k)) for k in (
        "step", "epoch", "samples_seen", "members", "train_loss", "eval_loss", "eval_accuracy", "initial_loss",
        "diverged", "finished", "dead", "active_fraction", "grad_sq", "grad_trace_cov", "grad_noise_scale"))
        for r in reports]


def through_files(state: TrainState) -> TrainState:
    """The state as a checkpoint stores it: safetensors bytes and JSON text."""
    return TrainState.from_parts(st_load(st_save(state.tensors())), json.loads(json.dumps(state.meta())))


def stop_after(task, exp, pts, step: int) -> TrainState:
    for r in train_bundle(task, exp, pts):
        if r.step == step:
            return through_files(r.export())
    raise AssertionError(f"no report at step {step}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("family", ["poly_online", "poly_fixed"])
def test_resume_is_bit_identical(family, optimizer, dtype):
    exp = experiment(family, dtype)
    task = task_for(exp)
    pts = points(optimizer)
    whole = list(train_bundle(task, exp, pts))
    assert whole[-1].finished and whole[-1].step == 36
    assert any(whole_r.diverged for whole_r in whole)  # the eta = 1e6 member diverges before the checkpoints
    # mid-block / mid-epoch (8 steps of 12 = 96 samples: step 8 ends an epoch of poly_fixed, 20 is inside one)
    for at in (8, 20):
        state = stop_after(task, exp, pts, at)
        assert state.step == at and 3 not in state.members
        resumed = list(train_bundle(task, exp, pts, resume=state))
        assert resumed[0].step == at + 4
        assert rows(resumed) == rows([r for r in whole if r.step > at]), (family, at)
        # a state resumes any number of times, and the second resume from the same state agrees too
        assert rows(list(train_bundle(task, exp, pts, resume=state))) == rows(resumed)


def test_resume_of_a_classification_bundle_with_xent_and_a_subset_of_members():
    """digits (cross-entropy, accuracy, dead-network rule); a state's subset resumes as a bundle of those points
    alone (float64: a member's numbers do not depend on its bundle)."""
    exp = experiment("digits", "float64", steps=24)
    task = task_for(exp)
    pts = points("Adam", "xent")
    whole = list(train_bundle(task, exp, pts))
    state = stop_after(task, exp, pts, 12)
    assert rows(list(train_bundle(task, exp, pts, resume=state))) == rows([r for r in whole if r.step > 12])
    rows_of = [state.members.index(m) for m in (2, 0)]  # members 2 and 0, in that order
    sub = list(train_bundle(task, exp, [pts[2], pts[0]], resume=state.subset(rows_of)))
    for r_sub, r in zip(sub, [r for r in whole if r.step > 12]):
        assert r_sub.members == [0, 1]
        assert r_sub.train_loss == [r.train_loss[r.members.index(2)], r.train_loss[r.members.index(0)]]
        assert r_sub.eval_accuracy == [r.eval_accuracy[r.members.index(2)], r.eval_accuracy[r.members.index(0)]]


def test_a_state_of_other_points_is_refused():
    exp = experiment("poly_online", "float64")
    task = task_for(exp)
    state = stop_after(task, exp, points("SGD"), 8)
    with pytest.raises(ValueError, match="resume"):
        list(train_bundle(task, exp, points("SGD", members=[dict(eta=1.0, gamma=1.0, seed=5)]), resume=state))
