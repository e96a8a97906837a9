"""raysweep.trial without Ray: what a trial reports is what the sweep records. A bundle lands one row per member,
completed, diverged or failed, each row carrying its own configuration; a member's row comes once, in the report
where it ends, with its curve; the reports a scheduler reads never carry a non-finite number.

Driven through :func:`raysweep.trial.run_bundle` (the function a Ray trial runs) on plans made by
:func:`raysweep.plan.build_plan` from specs, as the launcher makes them."""

from __future__ import annotations

import math

import pytest

from raysweep.plan import build_plan
from raysweep.points import config_key
from raysweep.space import parse_spec
from raysweep.trial import bundle_of, run_bundle

POLY = {"family": "poly_online", "dim": 8, "n_train": 256, "steps": 60, "report_every": 20}
# B = 128 > the 64 training samples of a fixed data set: the trainer refuses it (the configuration's own failure)
INFEASIBLE = {"family": "poly_fixed", "dim": 8, "n_train": 64, "epochs": 2, "report_every": 2}


def plan_of(experiment: dict, fused: bool = True, **space):
    spec = parse_spec({"name": "t", "experiment": experiment, "fusion": {"enabled": fused},
                       "space": {"batch_size": 8, "width": 16, "depth": 3, **space}})
    plan, n_done = build_plan(spec)
    assert n_done == 0
    return spec, plan


def train(plan) -> list[tuple[object, list[dict]]]:
    """Every bundle of ``plan`` trained: (bundle, its reports)."""
    out = []
    for bundle in plan.bundles.values():
        reports = []
        run_bundle(plan, bundle, reports.append)
        out.append((bundle, reports))
    return out


def terminal_rows(reports: list[dict]) -> list[dict]:
    return [item["trial"] for r in reports for item in r["terminal"]]


@pytest.fixture(scope="module")
def mixed():
    """One fused bundle of a good eta (0.1) and one that blows up (1e6), two seeds each."""
    spec, plan = plan_of(POLY, eta=[0.1, 1e6], seed={"range": [0, 2]})
    (trained,) = train(plan)  # fused: one trial
    return spec, plan, *trained


def test_a_bundle_lands_one_row_per_member_each_once(mixed):
    spec, plan, bundle, reports = mixed
    rows = terminal_rows(reports)
    assert len(bundle.keys) == 4
    assert sorted(r["config_key"] for r in rows) == sorted(bundle.keys)  # every member, exactly once
    experiment = spec.experiment.as_dict()
    assert {config_key(experiment, p) for p in spec.points()} == set(bundle.keys)
    assert all(r["bundle_id"] == bundle.bundle_id and r["n_bundle_members"] == 4 for r in rows)


def test_each_row_carries_its_own_configuration_and_status(mixed):
    spec, plan, bundle, reports = mixed
    experiment = spec.experiment.as_dict()
    by_key = {config_key(experiment, p): p for p in spec.points()}
    for row in terminal_rows(reports):
        point = by_key[row["config_key"]]
        for axis in ("batch_size", "eta", "width", "depth", "seed", "parametrization", "optimizer", "loss"):
            assert row[axis] == point[axis], (axis, row["config_key"])
        assert row["family"] == "poly_online" and row["error"] is None
        if point["eta"] == 0.1:
            assert row["status"] == "completed" and row["steps"] == 60 and row["diverged_step"] is None
            assert math.isfinite(row["final_train_loss"])
        else:
            assert row["status"] == "diverged" and 0 < row["diverged_step"] <= row["steps"] < 60


def test_a_member_lands_in_the_report_where_it_ends_with_its_curve(mixed):
    _, _, bundle, reports = mixed
    for report in reports:
        for item in report["terminal"]:
            row, curve = item["trial"], item["curves"]
            assert curve and curve[-1]["step"] == row["steps"] == report["step"]
            assert [c["step"] for c in curve] == sorted({c["step"] for c in curve})  # no step twice
    # the diverged members stop at once and the rest run on: n_running counts the members still training
    assert reports[0]["n_running"] == 2 and reports[-1]["n_running"] == 0
    assert [r["step"] for r in reports] == [20, 40, 60]


def test_reports_never_carry_a_non_finite_loss(mixed):
    _, _, _, reports = mixed
    for report in reports:
        assert "train_loss" not in report or math.isfinite(report["train_loss"])


def test_a_failing_bundle_lands_every_member_failed_with_the_error():
    _, plan = plan_of(INFEASIBLE, batch_size=128, eta=[0.25, 0.5])
    ((bundle, reports),) = train(plan)
    rows = terminal_rows(reports)
    assert sorted(r["config_key"] for r in rows) == sorted(bundle.keys)
    assert all(r["status"] == "failed" and r["error"].startswith("InfeasibleError:") for r in rows)
    assert all(r["steps"] == 0 and r["batch_size"] == 128 for r in rows)
    assert "train_loss" not in reports[-1]  # no metric for a scheduler on a failure


def test_a_one_configuration_trial_says_its_status_on_every_report():
    _, plan = plan_of(POLY, fused=False, eta=[0.1, 1e6])
    statuses = {}
    for bundle, reports in train(plan):
        assert len(bundle.keys) == 1
        statuses[bundle.points[0]["eta"]] = [r["status"] for r in reports]
        assert len(terminal_rows(reports)) == 1
    assert statuses == {0.1: ["running", "running", "completed"], 1e6: ["diverged"]}
    _, failed = plan_of(INFEASIBLE, batch_size=128, eta=0.25)
    ((_, reports),) = train(failed)
    assert reports[-1]["status"] == "failed" and terminal_rows(reports)[0]["status"] == "failed"


def test_a_tune_config_names_a_planned_bundle_or_a_searchers_configuration():
    spec, plan = plan_of(POLY, eta=[0.1, 0.2])
    (bundle_id, bundle), = plan.bundles.items()
    assert bundle_of(plan, {"bundle": bundle_id}) == bundle
    point = dict(spec.points()[0], eta=0.15)  # chosen by a searcher at run time: not in the plan
    chosen = bundle_of(plan, {"bundle": "optuna-7", "key": "k7", "point": point})
    assert (chosen.bundle_id, chosen.keys, [dict(p) for p in chosen.points]) == ("optuna-7", ("k7",), [point])
