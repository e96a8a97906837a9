"""Exact resume of a model factory's bundle (raysweep.custom.train): train to the end while exporting the state at a
mid-epoch report and at an epoch edge, resume from each (one through raysweep.checkpoint's files), and every later
report (losses, accuracy, diverged steps, dead flags) and the final parameters and buffers equal the uninterrupted
run's bit for bit: the CNN on digits and the transformer on the Markov language, fused bundles of 4 members
(different etas and seeds, one diverging), SGD with momentum and AdamW with a schedule, float64 and float32,
centred or not, and an unfused CNN (batch norm in training mode, dropout)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from raysweep import checkpoint, storage
from raysweep.custom import train as custom_train
from raysweep.data import build_task
from raysweep.space import parse_spec
from raysweep.train import TrainState

# 89 training images / 40 sequences, batch 16 / 8: 5 steps an epoch (a tail dropped); a report every 2 steps
CNN = {"family": "custom", "factory": "raysweep.examples.cnn:digits_images", "kwargs": {"test_fraction": 0.95},
       "eval_samples": 64, "model": {"factory": "raysweep.examples.cnn:build"}}
LANGUAGE = {"family": "custom", "factory": "raysweep.examples.transformer:markov_language",
            "kwargs": {"n_train": 40, "n_test": 32, "context": 8, "vocab": 8},
            "model": {"factory": "raysweep.examples.transformer:build"}}
MID, EDGE = 6, 10  # report steps: inside the second epoch, the end of the second epoch
SGD = {"optimizer": "SGD", "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "eta": [0.05, 0.1, 0.2, 1e6]}
ADAMW = {"optimizer": "AdamW", "weight_decay": 0.1, "schedule": "cosine", "warmup_steps": 3,
         "eta": [3e-3, 1e-2, 3e-2, 1e5]}
FIELDS = ("step", "epoch", "samples_seen", "members", "train_loss", "eval_loss", "eval_accuracy", "initial_loss",
          "diverged", "finished", "dead", "active_fraction")


def setup(experiment, space, dtype, centred, steps=14):
    model = {**experiment["model"], "centred": centred, "kwargs": space.pop("model_kwargs", {})}
    spec = parse_spec({"name": "r", "experiment": {**experiment, "model": model, "dtype": dtype, "report_every": 2,
                                                   "steps": steps},
                       "space": {"loss": "xent", "depth": 2, "parametrization": "SP", "seed": [0, 1], **space}})
    exp = spec.experiment.as_dict()
    task = build_task(exp, dtype=getattr(torch, dtype))
    by_eta = {}
    for p in spec.points():  # 4 members: each eta once, seeds alternating (two data streams)
        by_eta.setdefault(p["eta"], []).append(p)
    points = [ps[i % 2] for i, ps in enumerate(by_eta.values())]
    return exp, task, points


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

    return [tuple(norm(getattr(r, k)) for k in FIELDS) for r in reports]


def through_bytes(state: TrainState) -> TrainState:
    return TrainState.from_parts(st_load(st_save(state.tensors())), json.loads(json.dumps(state.meta())))


def train(monkeypatch, task, exp, points, *, resume=None, export_at=()):
    """The reports, the states exported at ``export_at`` and the final stacked parameters and buffers."""
    built = []
    build = custom_train.build_members
    monkeypatch.setattr(custom_train, "build_members", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
    reports, states = [], {}
    for r in custom_train.train_bundle(task, exp, points, resume=resume):
        reports.append(r)
        if r.step in export_at:
            states[r.step] = r.export()
    assert reports[-1].finished and reports[-1].export is None
    members = built[-1]
    return reports, states, {**members.params, **{f"buffer:{n}": b for n, b in members.buffers.items()}}


def check(monkeypatch, tmp_path, experiment, space, dtype, centred, *, fused=True, files=False):
    exp, task, points = setup(experiment, dict(space), dtype, centred)
    whole, states, final = train(monkeypatch, task, exp, points, export_at=(MID, EDGE))
    assert whole[-1].step == 14 and any(r.diverged for r in whole if r.step <= MID)  # a member dropped early
    assert len(whole[-1].members) >= 2 and all(math.isfinite(v) for v in whole[-1].train_loss)
    for at, state in states.items():
        assert state.step == at and len(state.members) == len(points) - 1
        if files:  # through raysweep.checkpoint's files
            sweep = storage.resolve(tmp_path / "sweep")
            checkpoint.save(sweep, "b1", ["k"] * len(points), points, state, {"curves": {}, "terminal": []})
            state = checkpoint.load_latest(sweep, "b1").state
        else:
            state = through_bytes(state)
        resumed, again, final_resumed = train(monkeypatch, task, exp, points, resume=state, export_at=(EDGE,))
        assert resumed[0].step == at + 2
        assert rows(resumed) == rows([r for r in whole if r.step > at]), at
        assert final_resumed.keys() == final.keys()
        assert all(torch.equal(final_resumed[n], final[n]) for n in final), at
        if at < EDGE:  # the state it exports again: every tensor the uninterrupted run's (theta_0's buffers too)
            ours, theirs = again[EDGE].tensors(), states[EDGE].tensors()
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
            assert again[EDGE].meta() | {"wall_time_s": 0} == states[EDGE].meta() | {"wall_time_s": 0}
    return whole


@pytest.mark.parametrize("dtype,centred", [("float64", False), ("float32", True)])
def test_cnn_sgd_momentum_resumes_bit_for_bit(monkeypatch, tmp_path, dtype, centred):
    check(monkeypatch, tmp_path, CNN, {**SGD, "batch_size": 16, "width": 4}, dtype, centred, files=centred)


def test_cnn_adamw_cosine_resumes_bit_for_bit(monkeypatch, tmp_path):
    check(monkeypatch, tmp_path, CNN, {**ADAMW, "batch_size": 16, "width": 4}, "float32", False)


def test_unfused_cnn_with_batch_norm_and_dropout_resumes_bit_for_bit(monkeypatch, tmp_path):
    """Members one after another: batch norm's running statistics (the members' and the centred theta_0 copy's)
    and dropout masks drawn from each member's seed and step."""
    space = {**SGD, "batch_size": 16, "width": 4, "model_kwargs": {"batch_norm": True, "dropout": 0.25}}
    exp, task, points = setup(CNN, dict(space), "float64", True)
    assert custom_train.build_members(task, exp, points).fused is False
    check(monkeypatch, tmp_path, CNN, space, "float64", True)


@pytest.mark.parametrize("dtype,centred,space", [("float64", True, ADAMW), ("float32", False, SGD)])
def test_transformer_resumes_bit_for_bit(monkeypatch, tmp_path, dtype, centred, space):
    check(monkeypatch, tmp_path, LANGUAGE, {**space, "batch_size": 8, "width": 8}, dtype, centred)


def test_a_state_of_other_points_or_another_model_is_refused(monkeypatch):
    exp, task, points = setup(CNN, {**SGD, "batch_size": 16, "width": 4}, "float64", False)
    _, states, _ = train(monkeypatch, task, exp, points, export_at=(MID,))
    other = [dict(p, seed=5) for p in points]
    with pytest.raises(ValueError, match="resume"):
        next(custom_train.train_bundle(task, exp, other, resume=states[MID]))
    wider = [dict(p, width=8) for p in points]
    with pytest.raises(ValueError, match="resume: a state of another model"):
        next(custom_train.train_bundle(task, exp, wider, resume=states[MID]))


def test_centred_dropout_draws_the_same_masks_for_theta_and_theta_0():
    """Unfused and centred, the theta_0 forward draws the step's masks (seed and step): at step 1 the centred
    output f(x; theta) - f(x; theta_0) is exactly zero, so the first minibatch loss is the zero predictor's."""
    space = {"optimizer": "SGD", "eta": [0.1, 0.2], "batch_size": 16, "width": 4,
             "model_kwargs": {"dropout": 0.5}}
    exp, task, points = setup(CNN, space, "float64", True, steps=1)
    (report,) = custom_train.train_bundle(task, exp, points[:2])
    assert report.train_loss == pytest.approx([math.log(10)] * 2, abs=1e-12)
