"""raysweep.checkpoint without Ray: a bundle that stops mid-way (its process killed) resumes from its latest
checkpoint with curves bit-identical to an uninterrupted run; checkpoints are safetensors and JSON under sha256
checks, a truncated or corrupt one is skipped with a warning (the previous one, or step 0), never read as weights;
the driver's side: checkpoints of landed bundles go, pending configurations regroup into their checkpoint's bundle.
Driven through :func:`raysweep.trial.run_bundle` as a Ray trial runs it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from raysweep import checkpoint, storage
from raysweep.plan import build_plan
from raysweep.space import parse_spec
from raysweep.trial import run_bundle

EXPERIMENT = {"family": "poly_fixed", "dim": 8, "n_train": 96, "epochs": 4, "report_every": 2, "dtype": "float32"}
TIMING = ("wall_time_s",)


class Killed(BaseException):
    """The process dies: nothing in run_bundle catches it."""


def plan_for(tmp_path: Path, every_steps: int | None = 6, **space):
    every = {"every_s": None, "every_steps": every_steps} if every_steps else False
    spec = parse_spec({"name": "c", "experiment": EXPERIMENT, "checkpoint": every,
                       "space": {"batch_size": 12, "width": 16, "depth": 3, "eta": [0.05, 0.1, 1e6],
                                 "seed": [0, 1], "optimizer": "Adam", **space}})
    plan, _ = build_plan(spec)
    return dataclasses.replace(plan, location=storage.resolve(tmp_path / "sweep"))


def run(plan, bundle, kill_at: int | None = None) -> list[dict]:
    out = []

    def report(metrics):
        out.append(metrics)
        if kill_at is not None and metrics["step"] >= kill_at:
            raise Killed

    try:
        run_bundle(plan, bundle, report)
    except Killed:
        pass
    return out


def landed(reports) -> dict[str, dict]:
    """config key -> (trial row without timings, curve rows without timings)."""
    out = {}
    for r in reports:
        for item in r["terminal"]:
            row = {k: v for k, v in item["trial"].items() if k not in TIMING}
            curves = [{k: v for k, v in c.items() if k not in TIMING} for c in item["curves"]]
            out[item["trial"]["config_key"]] = json.dumps({"trial": row, "curves": curves}, sort_keys=True)
    return out


def steps_on_disk(plan, bundle) -> list[int]:
    folder = Path(plan.location.path) / "checkpoints" / bundle.bundle_id
    return sorted(int(p.name) for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    plan = plan_for(tmp_path_factory.mktemp("whole"), every_steps=None)
    (bundle,) = plan.bundles.values()
    return landed(run(plan, bundle))


def test_a_killed_bundle_resumes_from_its_latest_checkpoint_bit_for_bit(tmp_path, uninterrupted):
    plan = plan_for(tmp_path)
    (bundle,) = plan.bundles.values()
    first = run(plan, bundle, kill_at=20)  # 8 steps an epoch; checkpoints at 6, 12, 18
    assert [r["step"] for r in first][-1] == 20
    assert steps_on_disk(plan, bundle) == [12, 18]  # the latest two
    here = Path(plan.location.path) / "checkpoints" / bundle.bundle_id / f"{18:012d}"
    assert sorted(p.name for p in here.iterdir()) == ["manifest.json", "state.json", "state.safetensors"]
    second = run(plan, bundle)
    assert second[0]["resumed_step"] == 18 and second[0]["step"] == 20
    assert "checkpoint_warning" not in second[0]
    # the eta = 1e6 members diverged before step 18 (their rows went out in the first run and again on resume);
    # every row and curve equals the uninterrupted run's
    assert landed(first + second) == uninterrupted == landed(second)
    assert len(uninterrupted) == 6


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_a_corrupt_checkpoint_is_skipped_for_the_previous_one_with_a_warning(tmp_path, uninterrupted, damage):
    plan = plan_for(tmp_path)
    (bundle,) = plan.bundles.values()
    run(plan, bundle, kill_at=20)
    here = Path(plan.location.path) / "checkpoints" / bundle.bundle_id / f"{18:012d}"
    blob = here / "state.safetensors"
    if damage == "truncate":
        blob.write_bytes(blob.read_bytes()[:-100])
    elif damage == "flip":  # one bit of a weight: the file still parses, only the checksum tells
        data = bytearray(blob.read_bytes())
        data[-5] ^= 0x01
        blob.write_bytes(bytes(data))
    else:
        (here / "manifest.json").write_text('{"step": 18, "sha')
    second = run(plan, bundle)
    assert second[0]["resumed_step"] == 12
    warning = second[0]["checkpoint_warning"]
    assert str(here) in warning and "restarts from the previous one (step 12)" in warning, warning
    assert landed(second) == uninterrupted


def test_no_checkpoint_that_reads_back_restarts_from_step_0_with_a_warning(tmp_path, uninterrupted):
    plan = plan_for(tmp_path)
    (bundle,) = plan.bundles.values()
    run(plan, bundle, kill_at=20)
    for step in steps_on_disk(plan, bundle):
        blob = Path(plan.location.path) / "checkpoints" / bundle.bundle_id / f"{step:012d}" / "state.json"
        blob.write_bytes(blob.read_bytes()[:10])
    second = run(plan, bundle)
    assert "resumed_step" not in second[0] and second[0]["step"] == 2
    assert "restarts from step 0" in second[0]["checkpoint_warning"]
    assert landed(second) == uninterrupted


def test_the_driver_retires_landed_checkpoints_and_regroups_pending_configurations(tmp_path):
    plan = plan_for(tmp_path)
    (bundle,) = plan.bundles.values()
    run(plan, bundle, kill_at=20)
    found = checkpoint.index(plan.location)
    assert found == {bundle.bundle_id: (18, list(bundle.keys))}
    # a relaunch whose plan has the pending configurations in other bundles (two landed meanwhile): they train
    # again as the checkpoint's bundle, under its id
    pending = dataclasses.replace(plan, bundles={})
    spec_plan = plan_for(tmp_path, eta=[0.05, 0.1])  # other bundle ids: 4 of the 6 configurations
    pending = dataclasses.replace(spec_plan, bundles=spec_plan.bundles)
    regrouped = checkpoint.regroup(pending, found)
    assert list(regrouped.bundles) == [bundle.bundle_id]
    (again,) = regrouped.bundles.values()
    assert set(again.keys) < set(bundle.keys) and len(again.keys) == 4
    # only two members remain to land: the others' rows are there; the resumed bundle trains all six, lands four
    rows = landed(run(regrouped, again))
    assert set(rows) == set(again.keys)
    assert checkpoint.retire_landed(plan.location, set(bundle.keys) - {again.keys[0]}) == []
    assert checkpoint.retire_landed(plan.location, set(bundle.keys)) == [bundle.bundle_id]
    assert checkpoint.index(plan.location) == {}


def test_checkpoint_settings_leave_config_keys_and_saved_specs_unchanged():
    base = {"name": "c", "experiment": EXPERIMENT, "space": {"batch_size": 12, "width": 16, "eta": 0.1}}
    spec = parse_spec(base)
    assert "checkpoint" not in spec.to_dict()
    other = parse_spec({**base, "checkpoint": {"every_s": 10}})
    assert other.to_dict()["checkpoint"] == {"enabled": True, "every_s": 10.0, "every_steps": None}
    assert build_plan(spec)[0].bundles.keys() == build_plan(other)[0].bundles.keys()
    assert build_plan(parse_spec({**base, "checkpoint": False}))[0].checkpoint is None
    assert checkpoint.due({"every_s": 300.0, "every_steps": None}, 10**6, 0, 10.0) is False
    assert checkpoint.due({"every_s": None, "every_steps": 50}, 100, 50, 0.0) is True
    with pytest.raises(Exception, match="checkpoint"):
        parse_spec({**base, "checkpoint": {"every_s": None}})


def test_checkpoints_on_an_object_store_resume_and_retire(s3, uninterrupted):
    """s3:// (a moto server, tests/conftest.py): each file one PUT, folders as prefixes; the same resume,
    corrupt-skip and removal."""
    plan = plan_for(Path("unused"))
    plan = dataclasses.replace(plan, location=storage.resolve(s3).join("sweep"))
    (bundle,) = plan.bundles.values()
    run(plan, bundle, kill_at=20)
    assert checkpoint.index(plan.location) == {bundle.bundle_id: (18, list(bundle.keys))}
    latest = plan.location.join("checkpoints", bundle.bundle_id, f"{18:012d}", "state.safetensors")
    storage.write_bytes_atomic(latest, latest.read_bytes()[:-1])  # truncated
    second = run(plan, bundle)
    assert second[0]["resumed_step"] == 12 and "sha256 mismatch" in second[0]["checkpoint_warning"]
    assert landed(second) == uninterrupted
    assert checkpoint.retire_landed(plan.location, set(bundle.keys)) == [bundle.bundle_id]
    assert checkpoint.index(plan.location) == {}


def test_hyperband_sync_checkpoints_every_report_and_needs_checkpoints():
    from raysweep.search.cells import settings

    base = {"name": "h", "experiment": {"family": "poly_online", "steps": 95, "report_every": 10},
            "space": {"batch_size": 8, "width": 16, "eta": [0.1, 0.2]}}
    spec = parse_spec({**base, "search": {"scheduler": {"type": "hyperband_sync", "reduction_factor": 2}}})
    assert build_plan(spec)[0].checkpoint == {"every_s": None, "every_steps": 10}
    assert settings(spec)["time"] == "report" and settings(spec)["max_t"] == 10  # 95 steps: 10 reports
    with pytest.raises(Exception, match=r"checkpoint: must be on for search.scheduler hyperband_sync"):
        parse_spec({**base, "search": {"scheduler": "hyperband_sync"}, "checkpoint": False})
    with pytest.raises(Exception, match=r"search.scheduler.grace_period: must be null for hyperband_sync"):
        parse_spec({**base, "search": {"scheduler": {"type": "hyperband_sync", "grace_period": 10}}})


def test_snapshots_and_curvature_resume_as_if_never_stopped(tmp_path):
    """The snapshots recorded before the kill travel in the checkpoint and land with the rest; the curvature
    columns after the resume (seeded from seed and step, counted in reports) equal the uninterrupted run's."""
    from raysweep.snapshots import read_member

    instruments = {"snapshots": [0, 4, 10, 22, 30], "curvature": {"every": 2, "kinds": ["sharpness"], "batch": 32}}

    def planned(folder, every_steps):
        spec = parse_spec({"name": "c", "experiment": {**EXPERIMENT, **instruments},
                           "checkpoint": {"every_s": None, "every_steps": every_steps} if every_steps else False,
                           "space": {"batch_size": 12, "width": 16, "depth": 3, "eta": [0.05, 0.1], "seed": [0, 1],
                                     "optimizer": "Adam"}})
        plan, _ = build_plan(spec)
        return dataclasses.replace(plan, location=storage.resolve(folder))

    whole = planned(tmp_path / "whole", None)
    (bundle,) = whole.bundles.values()
    expected = landed(run(whole, bundle))
    plan = planned(tmp_path / "killed", 6)
    (bundle,) = plan.bundles.values()
    run(plan, bundle, kill_at=20)  # checkpoints at 12 and 18 hold the snapshots of steps 0, 4 and 10
    assert landed(run(plan, bundle)) == expected
    assert any(json.loads(v)["curves"][-1]["sharpness"] is not None for v in expected.values())
    for key in bundle.keys:
        got, want = read_member(tmp_path / "killed", key), read_member(tmp_path / "whole", key)
        assert got.steps == want.steps == (0, 4, 10, 22, 30)
        for s in want.steps:
            assert all((a == b).all() for a, b in zip(got.deltas[s], want.deltas[s]))
