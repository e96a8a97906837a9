"""Weight snapshots of a model factory's members (experiment.snapshots, raysweep.snapshots): one file per member
named by parameter, deltas equal to the trainer's parameters minus theta_0 bit for bit, a diverged member's steps
before its diverged_step, training numbers unchanged by the hook, the same files after a resume from a checkpoint,
theta_0 files keyed by factory, kwargs, width, depth, gamma, parametrization and dtype; the spectra CLI refuses a
factory sweep without snapshots in one line; one launch on Ray."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from raysweep import driver, snapshots, spectra, storage
from raysweep.custom import train as custom_train
from raysweep.data import build_task
from raysweep.instrument_spec import snapshot_steps
from raysweep.plan import build_plan
from raysweep.space import parse_spec
from raysweep.trial import run_bundle

# 89 training images, batch 16: 5 steps an epoch; a report every 2 steps; eta 1e6 diverges at its first report
CNN = {"family": "custom", "factory": "raysweep.examples.cnn:digits_images", "kwargs": {"test_fraction": 0.95},
       "eval_samples": 64, "model": {"factory": "raysweep.examples.cnn:build"}, "steps": 14, "report_every": 2}
SPACE = {"batch_size": 16, "width": 4, "depth": 2, "eta": [0.1, 1e6], "seed": [0, 1], "optimizer": "SGD",
         "momentum": 0.9, "loss": "xent", "parametrization": "SP"}
FIELDS = ("step", "members", "train_loss", "eval_loss", "eval_accuracy", "initial_loss", "diverged", "dead")


def planned(folder, snaps, space=None, checkpoint_steps=None, dtype="float32"):
    spec = parse_spec({"name": "s", "experiment": {**CNN, "snapshots": snaps, "dtype": dtype},
                       "space": {**SPACE, **(space or {})},
                       "checkpoint": {"every_s": None, "every_steps": checkpoint_steps} if checkpoint_steps else False})
    plan, _ = build_plan(spec)
    return spec, dataclasses.replace(plan, location=storage.resolve(folder))


class Killed(Exception):
    pass


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


def numbers(reports) -> list[tuple]:
    return [tuple(repr(getattr(r, k)) for k in FIELDS) for r in reports]


def test_a_factory_trial_writes_named_deltas_per_member_bit_for_bit(tmp_path):
    spec, plan = planned(tmp_path, "log", {"width": [4, 6]})
    exp = spec.experiment
    task = build_task(exp.as_dict(), dtype=torch.float32)
    rows, theta0_names = {}, set()
    assert len(plan.bundles) == 2  # one per width
    for bundle in plan.bundles.values():
        reports: list[dict] = []
        run_bundle(plan, bundle, reports.append)
        rows.update({item["trial"]["config_key"]: item["trial"] for r in reports for item in r["terminal"]})
        # the same training with a hook of our own (the stacked parameters in Members.names order)
        points = list(bundle.points)
        names = custom_train.build_members(custom_train.as_task(task), exp, points).names
        seen: dict[int, dict] = {}

        def hook(step, members, weights):
            for slot, i in enumerate(members):
                seen.setdefault(i, {})[step] = {n: w[slot].clone().numpy() for n, w in zip(names, weights)}

        plain = list(custom_train.train_bundle(task, exp, points))
        hooked = list(custom_train.train_bundle(task, exp, points, on_weights=hook))
        assert numbers(plain) == numbers(hooked)  # the hook moves no training number
        for i, key in enumerate(bundle.keys):
            back = snapshots.read_member(tmp_path, key)
            row = rows[key]
            assert back.named and back.names == tuple(names) and back.point == dict(points[i])
            assert back.widths == tuple(tuple(w.shape) for w in seen[i][0].values())
            if row["status"] == "diverged":
                assert back.steps and all(s < row["diverged_step"] for s in back.steps)
                assert back.steps != snapshot_steps("log", 14)
            else:
                assert row["status"] == "completed"
                assert back.steps == snapshot_steps("log", 14) == (0, 1, 2, 5, 10, 14)
            assert all(np.array_equal(back.theta0[n], seen[i][0][n]) for n in names)
            for s in back.steps:
                for n in names:
                    d = back.deltas[s][n]
                    assert d.dtype == np.float32 and np.array_equal(d, seen[i][s][n] - seen[i][0][n]), (key, s, n)
                    np.testing.assert_allclose(back.weights(s)[n], seen[i][s][n], rtol=0, atol=1e-6)
            with safe_open(tmp_path / "snapshots" / f"{key}.safetensors", "np") as fh:
                meta = fh.metadata()
            assert meta["kind"] == "parameters" and meta["theta0"].startswith(f"{points[i]['seed']}_")
            theta0_names.add(meta["theta0"])
    assert {r["status"] for r in rows.values()} == {"completed", "diverged"}
    assert sorted(snapshots.member_keys(tmp_path)) == sorted(rows)  # exactly one file per member
    files = sorted(p.name for p in (tmp_path / "snapshots" / "theta0").iterdir())
    assert len(files) == 4 and set(files) == theta0_names  # once per seed and width
    assert not [p for p in (tmp_path / "snapshots").rglob("*") if p.name.startswith(".")]


def test_a_list_of_steps_resumed_from_a_checkpoint_writes_the_same_files(tmp_path):
    _, whole = planned(tmp_path / "whole", [11, 0, 3, 6, 50])
    (bundle,) = whole.bundles.values()
    run(whole, bundle)
    _, plan = planned(tmp_path / "killed", [11, 0, 3, 6, 50], checkpoint_steps=2)
    (bundle,) = plan.bundles.values()
    run(plan, bundle, kill_at=8)  # its checkpoint at step 8 holds the snapshots of steps 0, 3 and 6
    assert (tmp_path / "killed" / "checkpoints").is_dir()
    resumed = run(plan, bundle)
    assert resumed[0]["resumed_step"] == 8

    def files(folder: Path) -> dict[str, tuple]:
        """Every file's metadata and tensors (as bytes: the header's key order is the writer's own)."""
        out = {}
        for p in sorted((folder / "snapshots").rglob("*.safetensors")):
            with safe_open(p, "np") as fh:
                out[str(p.relative_to(folder))] = (fh.metadata(), {k: (fh.get_tensor(k).dtype.str,
                                                                      fh.get_tensor(k).tobytes()) for k in fh.keys()})
        return out

    want, got = files(tmp_path / "whole"), files(tmp_path / "killed")
    assert len(want) == 4 + 2 and got == want  # 4 members, 2 seeds' theta_0: metadata and tensors bit for bit
    steps = {snapshots.read_member(tmp_path / "whole", k).steps for k in bundle.keys}
    assert steps == {(0, 3, 6, 11), (0,)}  # the diverged members (at step 2) keep step 0 only


def test_theta0_files_are_keyed_by_the_factory_its_arguments_and_dtype(tmp_path):
    model = dict(parse_spec({"name": "s", "experiment": CNN, "space": SPACE}).experiment.model)
    point = {"width": 4, "depth": 2, "gamma": 1.0, "parametrization": "SP"}
    shapes = [(4, 1, 3, 3), (4,)]
    base = snapshots.factory_init_name(0, model, point, shapes, "float32")
    assert base == snapshots.factory_init_name(0, dict(model), dict(point), [list(s) for s in shapes], "float32")
    others = [
        snapshots.factory_init_name(1, model, point, shapes, "float32"),
        snapshots.factory_init_name(0, model, point, shapes, "float64"),
        snapshots.factory_init_name(0, {**model, "factory": "raysweep.examples.transformer:build"}, point, shapes,
                                    "float32"),
        snapshots.factory_init_name(0, {**model, "kwargs": {"channels": 2}}, point, shapes, "float32"),
        *(snapshots.factory_init_name(0, model, {**point, k: v}, shapes, "float32")
          for k, v in (("width", 8), ("depth", 3), ("gamma", 2.0), ("parametrization", "muP"))),
        snapshots.factory_init_name(0, model, point, [(4, 1, 5, 5), (4,)], "float32"),
    ]
    assert len({base, *others}) == len(others) + 1
    assert base.startswith("0_") and base.endswith("_float32.safetensors")
    # an MLP's files are as before
    assert snapshots.init_name(3, [8, 16, 1], "float64") == "3_8x16x1_float64.safetensors"


def test_spectra_refuses_a_factory_sweep_without_snapshots_in_one_line(tmp_path, capsys):
    spec, _ = planned(tmp_path, "log")
    folder = tmp_path / "results" / spec.name
    folder.mkdir(parents=True)
    driver.save_spec(folder, spec)
    assert spectra.main([str(tmp_path / "results"), "--sweep", spec.name]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no snapshots" in err


@pytest.mark.ray
def test_a_factory_sweep_with_snapshots_launches_on_ray(ray_cluster, tmp_path, run_cli):
    from raysweep.results import read_trials

    raw = {"name": "fsnap", "experiment": {**CNN, "snapshots": [0, 4, 14], "dtype": "float32"}, "space": SPACE,
           "resources": {"cpus_per_trial": 1}}
    path = tmp_path / "fsnap.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path / "r"), "--address", ray_cluster)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "r" / "fsnap"
    trials = read_trials(sweep).to_pandas()
    assert len(trials) == 4 and set(trials.status) == {"completed", "diverged"}
    assert sorted(snapshots.member_keys(sweep)) == sorted(trials.config_key)
    for row in trials.itertuples():
        back = snapshots.read_member(sweep, row.config_key)
        assert back.named and back.steps == ((0, 4, 14) if row.status == "completed" else (0,))
