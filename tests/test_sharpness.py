"""Curvature tracking in training (experiment.curvature, raysweep.sharpness): every training number is bit-for-bit
the same with it on or off; the columns it fills; a member's values alone and in a bundle; the option's parsing."""

from __future__ import annotations

import math

import pytest
import torch

from raysweep.data import build_task
from raysweep.instrument_spec import curvature_option
from raysweep.points import config_keys
from raysweep.space import parse_spec
from raysweep.train import train_bundle
from raysweep.trial import curve_row

FIXED = {"family": "poly_fixed", "dim": 8, "n_train": 64, "steps": 40, "report_every": 10}
ONLINE = {"family": "poly_online", "dim": 8, "n_train": 128, "steps": 40, "report_every": 10}
ALL = ["sharpness", "batch_sharpness", "preconditioned_sharpness", "hessian_trace"]


def _points(optimizer="SGD", etas=(0.1, 0.4), seeds=(0, 1), batch_size=16):
    return [{"batch_size": batch_size, "width": 16, "depth": 3, "parametrization": "muP", "optimizer": optimizer,
             "loss": "mse", "lr_rule": "study", "eta": eta, "gamma": 1.0, "seed": seed}
            for eta in etas for seed in seeds]


def _run(base, dtype, curvature, points):
    exp = parse_spec({"name": "t", "experiment": {**base, "dtype": dtype, "curvature": curvature},
                      "space": {"batch_size": 16, "width": 16, "eta": 0.1}}).experiment
    task = build_task(exp.as_dict(), dtype=getattr(torch, dtype))
    return list(train_bundle(task, exp, points))


NUMBERS = ("train_loss", "eval_loss", "eval_accuracy", "initial_loss", "active_fraction", "diverged", "dead",
           "members", "step", "samples_seen", "epoch")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("base, optimizer", [(FIXED, "SGD"), (ONLINE, "Adam"), (FIXED, "AdamW")])
def test_curvature_on_or_off_leaves_every_loss_bit_identical(dtype, base, optimizer):
    points = _points(optimizer, etas=(0.1, 0.4) if optimizer == "SGD" else (0.01, 0.03))
    off = _run(base, dtype, None, points)
    on = _run(base, dtype, {"kinds": ALL, "batch": 48, "steps": 6, "top_k": 2}, points)
    assert len(off) == len(on)
    for a, b in zip(off, on):
        for name in NUMBERS:
            assert getattr(a, name) == getattr(b, name), name
    assert all(r.sharpness is None and r.hessian_trace is None for r in off)
    for r in on:
        assert all(math.isfinite(v) and v > 0 for v in r.sharpness)
        assert all(math.isfinite(v) for v in r.hessian_trace + r.batch_sharpness)
        if optimizer in ("Adam", "AdamW"):
            assert all(math.isfinite(v) and v > 0 for v in r.preconditioned_sharpness)
        else:
            assert r.preconditioned_sharpness == [None] * len(r.members)  # SGD: no preconditioner
        assert all(math.isfinite(v) and v > 0 for v in r.initial_sharpness)


def test_every_measures_every_nth_report_and_rows_carry_the_columns():
    points = _points()
    reports = _run(FIXED, "float64", {"every": 2, "kinds": ["sharpness"], "batch": 64}, points)
    assert [r.sharpness is not None for r in reports] == [False, True, False, True]
    row = curve_row(reports[1], 0)
    assert row["sharpness"] == reports[1].sharpness[0]
    assert row["batch_sharpness"] is None and row["hessian_trace"] is None
    assert curve_row(reports[0], 0)["sharpness"] is None
    # the initial sharpness is the same for every eta of one seed (theta_0 and the curvature batch are the seed's)
    init = reports[0].initial_sharpness
    assert init[0] == init[2] and init[1] == init[3] and init[0] != init[1]


def test_a_member_measures_the_same_alone_and_in_a_bundle():
    option = {"kinds": ["sharpness", "hessian_trace", "batch_sharpness"], "batch": 48, "steps": 8}
    bundle = _run(ONLINE, "float64", option, _points())
    alone = _run(ONLINE, "float64", option, _points(etas=(0.4,), seeds=(1,)))
    for r_b, r_a in zip(bundle, alone):
        slot = r_b.members.index(3)
        for name in ("sharpness", "hessian_trace", "batch_sharpness", "train_loss"):
            assert getattr(r_b, name)[slot] == getattr(r_a, name)[0], name


def test_the_option_parses_like_the_noise_scale_and_off_changes_no_key():
    assert curvature_option(None) is None and curvature_option(False) is None
    assert curvature_option(True) == {"every": 1, "top_k": 1, "kinds": ("sharpness",), "batch": 1024, "steps": 20}
    assert curvature_option({"kinds": ["HESSIAN_TRACE", "sharpness"]})["kinds"] == ("sharpness", "hessian_trace")
    for bad, match in [(1, "must be true, false, null or a mapping"), ({"every": 0}, r"curvature\.every"),
                       ({"kinds": ["curvy"]}, r"curvature\.kinds"), ({"kinds": []}, r"curvature\.kinds"),
                       ({"top_k": 30, "steps": 20}, r"curvature\.top_k"), ({"evry": 2}, "unknown key"),
                       ({"batch": 0}, r"curvature\.batch")]:
        with pytest.raises(Exception, match=match):
            curvature_option(bad)
    base = {"name": "t", "experiment": FIXED, "space": {"batch_size": 8, "width": 16, "eta": [0.1, 0.2]}}
    off = parse_spec(base)
    on = parse_spec({**base, "experiment": {**FIXED, "curvature": True}})
    assert "curvature" not in off.experiment.as_dict()
    assert on.experiment.as_dict()["curvature"]["kinds"] == ["sharpness"]
    assert parse_spec(on.to_dict()) == on
    assert config_keys(off.experiment.as_dict(), off.points()) == \
        config_keys(parse_spec({**base, "experiment": {**FIXED, "curvature": None}}).experiment.as_dict(), off.points())


def test_preconditioned_sharpness_reads_each_members_betas_and_eps_on_the_general_path():
    option = {"kinds": ["preconditioned_sharpness"], "batch": 48, "steps": 12}
    adam = _run(ONLINE, "float64", option, _points("Adam", etas=(0.01,), seeds=(0,)))
    # AdamW without decay runs the general path with torch's betas and eps: the same preconditioner and numbers
    adamw = _run(ONLINE, "float64", option, _points("AdamW", etas=(0.01,), seeds=(0,)))
    for a, b in zip(adam, adamw):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-12)
        assert a.preconditioned_sharpness == pytest.approx(b.preconditioned_sharpness, rel=1e-8)
    # other betas or eps give another preconditioner (were they ignored, these would equal the defaults' values)
    for changed in ({"beta2": 0.9}, {"eps": 1e-3}):
        other = _run(ONLINE, "float64", option, [p | changed for p in _points("AdamW", etas=(0.01,), seeds=(0,))])
        assert other[-1].preconditioned_sharpness[0] != pytest.approx(adam[-1].preconditioned_sharpness[0],
                                                                       rel=1e-3), changed
