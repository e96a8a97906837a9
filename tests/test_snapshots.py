"""Weight snapshots (experiment.snapshots, raysweep.snapshots): the step set, an exact round trip through the
storage layer, the trainer's numbers unchanged by the hook, and one file per member that lands with its row."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from raysweep import model, snapshots, storage
from raysweep.data import build_task
from raysweep.plan import build_plan
from raysweep.instrument_spec import snapshot_option, snapshot_steps
from raysweep.space import parse_spec
from raysweep.train import train_bundle
from raysweep.trial import run_bundle

POLY = {"family": "poly_online", "dim": 8, "n_train": 256, "steps": 60, "report_every": 20}


def test_log_steps_are_0_1_2_5_times_powers_of_ten_and_the_last():
    assert snapshot_steps("log", 300) == (0, 1, 2, 5, 10, 20, 50, 100, 200, 300)
    assert snapshot_steps("log", 1000) == (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
    assert snapshot_steps("log", 1) == (0, 1)
    assert snapshot_steps([7, 0, 3, 7, 500], 100) == (0, 3, 7)  # sorted, distinct, only the steps reached
    assert snapshot_steps(None, 100) == () and snapshot_steps(False, 100) == ()


@pytest.mark.parametrize("bad", ["linear", [], [-1], [1.5], 3, {"every": 2}])
def test_a_bad_snapshot_option_names_the_field(bad):
    with pytest.raises(Exception, match=r"experiment\.snapshots"):
        snapshot_option(bad)


def test_off_leaves_config_keys_and_as_dict_unchanged():
    base = {"name": "t", "experiment": POLY, "space": {"batch_size": 8, "width": 16, "eta": [0.1, 0.2]}}
    off = parse_spec(base)
    explicit = parse_spec({**base, "experiment": {**POLY, "snapshots": None}})
    on = parse_spec({**base, "experiment": {**POLY, "snapshots": "LOG"}})
    assert "snapshots" not in off.experiment.as_dict() and explicit == off
    assert on.experiment.snapshots == "log" and on.experiment.as_dict()["snapshots"] == "log"
    listed = parse_spec({**base, "experiment": {**POLY, "snapshots": [10, 0]}})
    assert listed.experiment.as_dict()["snapshots"] == [0, 10]
    assert parse_spec(listed.to_dict()) == listed


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_files_round_trip_exactly(tmp_path, dtype):
    np_dtype = np.dtype(dtype)
    rng = np.random.default_rng(0)
    widths = [8, 16, 16, 1]
    theta0 = [rng.standard_normal((a, b)).astype(np_dtype) for a, b in zip(widths[:-1], widths[1:])]
    deltas = {s: [rng.standard_normal(w.shape).astype(np_dtype) * 1e-3 for w in theta0] for s in (0, 5, 60)}
    point = {"eta": 0.1, "seed": 3, "width": 16, "parametrization": "muP"}
    snapshots.write_init(tmp_path, 3, widths, dtype, theta0)
    snapshots.write_member(tmp_path, "abc", seed=3, widths=widths, dtype=dtype, point=point, deltas=deltas)
    assert snapshots.member_keys(tmp_path) == ["abc"]
    back = snapshots.read_member(tmp_path, "abc")
    assert (back.config_key, back.seed, back.widths, back.dtype, back.point) == ("abc", 3, tuple(widths), dtype, point)
    assert back.steps == (0, 5, 60)
    for w, r in zip(theta0, back.theta0):
        assert r.dtype == np_dtype and np.array_equal(w, r)
    for s in deltas:
        assert all(np.array_equal(d, r) and r.dtype == np_dtype for d, r in zip(deltas[s], back.deltas[s]))
        assert all(np.array_equal(w + d, r) for w, d, r in zip(theta0, deltas[s], back.weights(s)))
    assert not [p for p in (tmp_path / "snapshots").rglob("*") if p.name.startswith(".")]  # no temporary left


def test_the_hook_reads_the_weights_without_moving_a_number():
    exp = parse_spec({"name": "t", "experiment": {**POLY, "snapshots": [0, 7, 20, 60]},
                      "space": {"batch_size": 8, "width": 16, "eta": 0.1}}).experiment
    task = build_task(exp.as_dict(), dtype=torch.float32)
    points = [{"batch_size": 8, "width": 16, "depth": 3, "parametrization": "muP", "optimizer": "SGD",
               "loss": "mse", "lr_rule": "study", "eta": eta, "gamma": 1.0, "seed": seed}
              for eta, seed in ((0.1, 0), (0.2, 0), (0.1, 1))]
    seen: dict[int, list] = {}

    def hook(step, members, weights):
        seen[step] = (list(members), [w.clone() for w in weights])

    plain = list(train_bundle(task, exp, points))
    hooked = list(train_bundle(task, exp, points, on_weights=hook))
    assert [r.train_loss for r in plain] == [r.train_loss for r in hooked]
    assert [r.eval_loss for r in plain] == [r.eval_loss for r in hooked]
    assert sorted(seen) == [0, 7, 20, 60]
    widths = model.layer_widths(task.dim, 16, 3, task.n_out)
    init = model.init_weights(widths, [2 * p["seed"] + 1 for p in points])
    assert all(torch.equal(a, b) for a, b in zip(seen[0][1], init))  # step 0: theta_0
    assert not torch.equal(seen[60][1][0], seen[7][1][0])


def test_a_trial_writes_one_file_per_member_that_reads_back_its_weights(tmp_path):
    spec = parse_spec({"name": "t", "experiment": {**POLY, "snapshots": "log"},
                       "space": {"batch_size": 8, "width": 16, "depth": 3, "eta": [0.1, 1e6], "seed": [0, 1]}})
    plan, _ = build_plan(spec)
    plan = dataclasses.replace(plan, location=storage.resolve(tmp_path))
    (bundle,) = plan.bundles.values()
    seen: dict[int, dict] = {}

    def hook(step, members, weights):  # what the trainer's weights were, to compare with the files
        for slot, i in enumerate(members):
            seen.setdefault(i, {})[step] = [w[slot].clone().numpy() for w in weights]

    reports: list[dict] = []
    run_bundle(plan, bundle, reports.append)
    rows = {item["trial"]["config_key"]: item["trial"] for r in reports for item in r["terminal"]}
    assert sorted(snapshots.member_keys(tmp_path)) == sorted(bundle.keys) == sorted(rows)
    # the same training with a hook of our own: the weights the files must hold
    task = build_task(spec.experiment.as_dict(), dtype=torch.float32)
    list(train_bundle(task, spec.experiment, list(bundle.points), on_weights=hook))
    for i, key in enumerate(bundle.keys):
        back = snapshots.read_member(tmp_path, key)
        row = rows[key]
        assert back.point == dict(bundle.points[i])
        if row["status"] == "diverged":
            assert all(s < row["diverged_step"] for s in back.steps)
        else:
            assert back.steps == snapshot_steps("log", 60) == (0, 1, 2, 5, 10, 20, 50, 60)
        for s in back.steps:
            want = seen[i][s]
            assert all(np.array_equal(w - w0, d) for w, w0, d in zip(want, seen[i][0], back.deltas[s]))
            np.testing.assert_allclose(np.concatenate([w.ravel() for w in back.weights(s)]),
                                       np.concatenate([w.ravel() for w in want]), rtol=0, atol=1e-6)
    assert len(list((tmp_path / "snapshots" / "theta0").iterdir())) == 2  # once per seed
