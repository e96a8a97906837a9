"""python -m raysweep.spectra on a model factory's snapshots: the top eigenvalue is the dense Hessian's of the
trainer's loss at the snapshot (fused CNN, centred; batch norm measured unfused in training mode; dropout's masks
those of the trainer's measurement at the step), the trace
within 3 standard errors of the dense trace, one file per member, a relaunch computes nothing; a model with a
buffer that its forward changes (not batch norm's statistics) is refused in one line."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from raysweep import driver, snapshots, spectra, storage
from raysweep.custom import functional
from raysweep.custom.train import as_task, build_members
from raysweep.data import build_task
from raysweep.plan import build_plan
from raysweep.seeds import derive_seed
from raysweep.sharpness import curvature_batch
from raysweep.space import parse_spec, setting
from raysweep.trial import run_bundle

# 89 training images; the curvature batch is 24 of them
CNN = {"family": "custom", "factory": "raysweep.examples.cnn:digits_images", "kwargs": {"test_fraction": 0.95},
       "eval_samples": 32, "model": {"factory": "raysweep.examples.cnn:build"}, "steps": 6, "report_every": 3,
       "dtype": "float64", "snapshots": [0, 6], "curvature": {"batch": 24, "kinds": ["sharpness"], "steps": 80}}
SPACE = {"batch_size": 16, "width": 2, "depth": 2, "eta": 0.1, "seed": [0, 1], "optimizer": "SGD", "loss": "xent",
         "parametrization": "SP"}
OPTIONS = spectra.SpectraOptions(top_k=2, lanczos_steps=80, trace=True, trace_samples=30, density=True,
                                 density_probes=2, density_steps=10, grid_points=7, batch=24)


def make_sweep(folder, model=None, space=None):
    """A factory sweep trained without Ray, with its spec and snapshots (run_bundle writes them); returns the spec
    and the sharpness each member measured in training at its last report (step 6)."""
    experiment = {**CNN, "model": {**CNN["model"], **(model or {})}}
    spec = parse_spec({"name": folder.name, "experiment": experiment, "space": {**SPACE, **(space or {})}})
    folder.mkdir(parents=True)
    driver.save_spec(folder, spec)
    plan, _ = build_plan(spec)
    plan = dataclasses.replace(plan, location=storage.resolve(folder))
    measured = {}

    def report(metrics):
        for item in metrics["terminal"]:
            measured[item["trial"]["config_key"]] = [c["sharpness"] for c in item["curves"] if c["step"] == 6][0]

    for bundle in plan.bundles.values():
        run_bundle(plan, bundle, report)
    return spec, measured


def dense(spec, snap, step):
    """The dense Hessian (float64) of the trainer's loss at the snapshot, by torch.autograd.functional.hessian."""
    experiment = spec.experiment.as_dict()
    task = as_task(build_task(experiment, dtype=torch.float64))
    point = snap.point
    members = build_members(task, experiment, [point])
    members.body.train()
    fn = functional.loss_fn(members.body, members.forward_mult, point["loss"], setting(experiment, "mse_convention"),
                            task.n_out)
    x, y = curvature_batch(task, int(point["seed"]), OPTIONS.batch)
    names = members.names
    buffers = {n: b[0].clone() for n, b in members.buffers.items()}
    theta0 = {n: torch.tensor(snap.theta0[n].copy()) for n in names}
    centred = bool(setting(experiment, "model")["centred"])
    seed = derive_seed(int(point["seed"]), f"curvature-forward:{step}:all")  # dropout: the trainer's masks

    def seeded(call):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return call()

    with torch.no_grad():
        forward = functional.forward_fn(members.body, members.forward_mult)
        f0 = seeded(lambda: forward(theta0, dict(buffers), x)) if centred else None
    weights = snap.weights(step)
    w = [torch.tensor(weights[n].copy()) for n in names]
    shapes, sizes = [t.shape for t in w], [t.numel() for t in w]

    def flat_loss(theta):
        parts = {n: c.reshape(sh) for n, c, sh in zip(names, theta.split(sizes), shapes)}
        return seeded(lambda: fn(parts, {n: b.clone() for n, b in buffers.items()}, x, y, f0))

    return torch.autograd.functional.hessian(flat_loss, torch.cat([t.flatten() for t in w]))


def check_against_dense(spec, folder, key):
    snap = snapshots.read_member(folder, key)
    rows = spectra.member_rows(folder, spec.experiment.as_dict(), key, OPTIONS)
    assert {r["step"] for r in rows} == set(snap.steps) == {0, 6}
    out = {}
    for step in snap.steps:
        mine = {kind: [r["value"] for r in sorted(rows, key=lambda r: r["index"])
                       if r["step"] == step and r["kind"] == kind]
                for kind in ("eigenvalue", "trace", "trace_stderr", "density_grid", "density")}
        hessian = dense(spec, snap, step)
        top = float(torch.linalg.eigvalsh(hessian)[-1])
        trace = float(torch.diagonal(hessian).sum())
        assert len(mine["eigenvalue"]) == 2 and mine["eigenvalue"][0] >= mine["eigenvalue"][1]
        assert abs(mine["eigenvalue"][0] - top) <= 1e-8 * abs(top), (step, mine["eigenvalue"][0], top)
        assert abs(mine["trace"][0] - trace) <= 3 * mine["trace_stderr"][0], (step, mine["trace"], trace)
        assert len(mine["density_grid"]) == len(mine["density"]) == 7 and min(mine["density"]) >= 0
        out[step] = (mine["eigenvalue"][0], top, mine["trace"][0], mine["trace_stderr"][0], trace)
    return out


def test_top_eigenvalue_and_trace_equal_the_dense_hessians_of_a_centred_cnn(tmp_path):
    spec, measured = make_sweep(tmp_path / "c", model={"centred": True})
    key = sorted(snapshots.member_keys(tmp_path / "c"))[1]
    found = check_against_dense(spec, tmp_path / "c", key)
    assert measured[key] == pytest.approx(found[6][0], rel=1e-8)  # the sharpness the trainer measured at step 6


def test_batch_norm_is_measured_unfused_in_training_mode(tmp_path):
    spec, measured = make_sweep(tmp_path / "bn", model={"kwargs": {"batch_norm": True}})
    key = sorted(snapshots.member_keys(tmp_path / "bn"))[0]
    found = check_against_dense(spec, tmp_path / "bn", key)
    assert measured[key] == pytest.approx(found[6][0], rel=1e-8)


def test_dropout_draws_its_masks_from_the_seed_and_the_step(tmp_path):
    spec, measured = make_sweep(tmp_path / "d", model={"kwargs": {"dropout": 0.3}, "centred": True},
                                space={"seed": 1})
    (key,) = snapshots.member_keys(tmp_path / "d")
    found = check_against_dense(spec, tmp_path / "d", key)
    assert measured[key] == pytest.approx(found[6][0], rel=1e-8)  # the masks of the trainer's measurement


class Counting(torch.nn.Module):
    """The CNN with a buffer its forward changes (a count of forwards): state the snapshots do not keep."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        return self.inner(x)


def counting(**kwargs):
    from raysweep.examples.cnn import build

    return Counting(build(**kwargs))


def test_a_model_with_a_buffer_its_forward_changes_is_refused_in_one_line(tmp_path, capsys):
    # torch.func cannot train such a model (an in-place write to a captured buffer): the snapshots are a CNN's, the
    # sweep's spec then names the counting model, whose buffer the refusal finds on the driver, before any task
    spec, _ = make_sweep(tmp_path / "r" / "k", space={"seed": 0})
    experiment = spec.experiment.as_dict()
    counted = parse_spec({"name": "k", "space": {**SPACE, "seed": 0}, "experiment": {
        **CNN, "model": {**CNN["model"], "factory": "tests.custom.test_spectra:counting"}}})
    driver.save_spec(tmp_path / "r" / "k", counted)
    assert spectra.main([str(tmp_path / "r"), "--sweep", "k"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the buffer calls changes in a training-mode forward" in err, err
    assert not (tmp_path / "r" / "k" / "spectra").exists()
    # batch norm's running statistics change too, but a training-mode forward does not read them
    task = as_task(build_task(experiment, dtype=torch.float64))
    point = {**snapshots.read_member(tmp_path / "r" / "k", snapshots.member_keys(tmp_path / "r" / "k")[0]).point}
    bn = build_members(task, {**experiment, "model": {**experiment["model"], "kwargs": {"batch_norm": True}}},
                       [point])
    assert bn.buffers and spectra.factory_refusal(bn, task.x_train[:4]) is None


@pytest.mark.ray
@pytest.mark.slow  # 15 to 75 s on a shared 2-core machine: an embedded Ray worker starts and imports torch
def test_files_land_once_on_ray_and_a_relaunch_computes_nothing(tmp_path, ray_cluster):
    folder = tmp_path / "s"
    spec, _ = make_sweep(folder, space={"seed": 0})  # one member: one Ray worker to start
    keys = snapshots.member_keys(folder)
    assert spectra.run(folder, OPTIONS, address=ray_cluster, quiet=True) == {"computed": 1, "already": 0,
                                                                             "failed": {}}
    assert spectra.done_keys(folder) == set(keys)
    before = {k: (folder / "spectra" / f"{k}.parquet").stat().st_mtime_ns for k in keys}
    assert spectra.run(folder, OPTIONS, address=ray_cluster, quiet=True) == {"computed": 0, "already": 1,
                                                                             "failed": {}}
    assert {k: (folder / "spectra" / f"{k}.parquet").stat().st_mtime_ns for k in keys} == before
    assert sorted(p.name for p in (folder / "spectra").iterdir()) == sorted([*(f"{k}.parquet" for k in keys),
                                                                             "settings.json"])
    rows = spectra.read_spectra(folder).to_pandas()
    assert set(rows["config_key"]) == set(keys) and set(rows["step"]) == {0, 6}
    assert set(rows["kind"]) == {"eigenvalue", "trace", "trace_stderr", "density_grid", "density"}
    # the rows of the in-process computation (the same seeds: the same numbers)
    for key in keys:
        got = rows[rows["config_key"] == key].sort_values(["step", "kind", "index"])
        direct = pd.DataFrame(spectra.member_rows(folder, spec.experiment.as_dict(), key, OPTIONS))
        direct = direct.sort_values(["step", "kind", "index"])
        assert len(got) == 2 * (2 + 2 + 2 * 7) and got["value"].tolist() == direct["value"].tolist()
