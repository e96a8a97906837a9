"""python -m raysweep.spectra: Hessian spectra at the weight snapshots, one file per member, computed by Ray tasks;
a relaunch computes only the members without a file; the top eigenvalues are those of the dense Hessian."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from raysweep import curvature, driver, model, snapshots, spectra, storage
from raysweep.data import build_task
from raysweep.errors import OptionError
from raysweep.plan import build_plan
from raysweep.results import ResultsWriter
from raysweep.sharpness import CurvatureFeed
from raysweep.space import parse_spec
from raysweep.trial import run_bundle

from tests.support import ROOT

pytestmark = pytest.mark.ray

EXPERIMENT = {"family": "poly_fixed", "dim": 8, "n_train": 64, "steps": 20, "report_every": 10, "dtype": "float64",
              "snapshots": [0, 20], "curvature": {"batch": 64, "kinds": ["sharpness"]}}
OPTIONS = spectra.SpectraOptions(top_k=3, lanczos_steps=40, trace=True, trace_samples=4, density=True,
                                 density_probes=2, density_steps=12, grid_points=11)
CLI_FLAGS = ["--top-k", "3", "--lanczos-steps", "40", "--trace", "--trace-samples", "4", "--density",
             "--density-probes", "2", "--density-steps", "12", "--grid-points", "11"]


@pytest.fixture
def sweep(tmp_path):
    """A sweep of 4 members (eta 0.1, 0.2 x seed 0, 1) trained without Ray, with its spec, rows and snapshots."""
    spec = parse_spec({"name": "s", "experiment": EXPERIMENT,
                       "space": {"batch_size": 16, "width": 8, "depth": 3, "eta": [0.1, 0.2], "seed": [0, 1]}})
    folder = tmp_path / "s"
    folder.mkdir()
    driver.save_spec(folder, spec)
    plan, _ = build_plan(spec)
    plan = dataclasses.replace(plan, location=storage.resolve(folder))
    with ResultsWriter(folder, "s") as writer:
        for bundle in plan.bundles.values():
            reports = []
            run_bundle(plan, bundle, reports.append)
            for r in reports:
                for item in r["terminal"]:
                    writer.add({**item["trial"], "sweep": "s"}, [{**c, "sweep": "s", "config_key": item["trial"]
                                                                  ["config_key"]} for c in item["curves"]])
    return folder, spec


def _dense_top(folder, spec, key, step):
    """The top eigenvalues of the member's dense Hessian on its curvature batch, in float64."""
    snap = snapshots.read_member(folder, key)
    p = snap.point
    task = build_task(spec.experiment.as_dict(), dtype=torch.float64)
    theta0 = [torch.tensor(w.copy())[None] for w in snap.theta0]
    feed = CurvatureFeed(task, [p["seed"]], theta0, {"batch": 64}, 16, "mse", "half_sum", torch.float64,
                         torch.device("cpu"))
    a = model.readout_multiplier(p["width"], torch.tensor([p["gamma"]], dtype=torch.float64), p["parametrization"])
    loss_fn = curvature.MemberLoss(feed.x[0], feed.y[0], a, feed.f0_raw[0][None] * a, loss="mse",
                                   mse_convention="half_sum")
    w = [torch.tensor(arr.copy())[None] for arr in snap.weights(step)]
    shapes = [t.shape for t in w]
    sizes = [t.numel() for t in w]

    def flat_loss(theta):
        parts = [c.reshape(sh) for c, sh in zip(theta.split(sizes), shapes)]
        return loss_fn(parts).sum()

    hessian = torch.autograd.functional.hessian(flat_loss, torch.cat([t.flatten() for t in w]))
    return torch.linalg.eigvalsh(hessian).flip(0)[:3].numpy()


@pytest.mark.slow  # about a minute: two command-line launches besides the in-process ones
def test_spectra_are_computed_once_and_a_relaunch_computes_only_what_is_missing(sweep, ray_cluster):
    folder, spec = sweep
    keys = snapshots.member_keys(folder)
    assert len(keys) == 4
    first = spectra.run(folder, OPTIONS, query="seed == 0", address=ray_cluster, quiet=True)
    assert first == {"computed": 2, "already": 0, "failed": {}}
    done = spectra.done_keys(folder)
    assert len(done) == 2
    before = {k: (folder / "spectra" / f"{k}.parquet").stat().st_mtime_ns for k in done}
    # the command line on every member, killed (SIGKILL) once a third file landed, then relaunched: the relaunch
    # computes exactly the members without a file, and leaves the others' files as they are
    args = [sys.executable, "-m", "raysweep.spectra", str(folder.parent), "--sweep", folder.name, "--address",
            ray_cluster, "--quiet", *CLI_FLAGS]
    killed = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(spectra.done_keys(folder)) < 3 and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    present = spectra.done_keys(folder)
    assert done <= present and not [p for p in (folder / "spectra").iterdir() if p.name.startswith(".")]
    before.update({k: (folder / "spectra" / f"{k}.parquet").stat().st_mtime_ns for k in present - done})
    relaunch = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert relaunch.returncode == 0, relaunch.stderr[-2000:]
    assert f"{4 - len(present)} members computed, {len(present)} already there, 0 failed" in relaunch.stdout
    assert {k: (folder / "spectra" / f"{k}.parquet").stat().st_mtime_ns for k in present} == before
    assert spectra.done_keys(folder) == set(keys)
    assert spectra.run(folder, OPTIONS, address=ray_cluster, quiet=True) == {"computed": 0, "already": 4,
                                                                             "failed": {}}
    with pytest.raises(OptionError, match="other settings"):
        spectra.run(folder, dataclasses.replace(OPTIONS, top_k=4), address=ray_cluster, quiet=True)
    assert not [p for p in (folder / "spectra").iterdir() if p.name.startswith(".")]

    rows = spectra.read_spectra(folder).to_pandas()
    assert set(rows["config_key"]) == set(keys) and set(rows["step"]) == {0, 20}
    for (key, step), sub in rows.groupby(["config_key", "step"]):
        eig = sub[sub["kind"] == "eigenvalue"].sort_values("index")["value"].to_numpy()
        assert len(eig) == 3 and np.all(np.diff(eig) <= 0)
        assert len(sub[sub["kind"] == "trace"]) == 1 and len(sub[sub["kind"] == "trace_stderr"]) == 1
        grid = sub[sub["kind"] == "density_grid"].sort_values("index")["value"].to_numpy()
        density = sub[sub["kind"] == "density"].sort_values("index")["value"].to_numpy()
        assert len(grid) == len(density) == 11 and np.all(np.diff(grid) > 0) and np.all(density >= 0)
    key = sorted(keys)[1]
    for step in (0, 20):
        eig = rows[(rows["config_key"] == key) & (rows["step"] == step) & (rows["kind"] == "eigenvalue")]
        np.testing.assert_allclose(eig.sort_values("index")["value"].to_numpy(), _dense_top(folder, spec, key, step),
                                   rtol=1e-6)
    # the sharpness the sweep measured at its last report (step 20) is the top eigenvalue at that snapshot
    from raysweep.results import read_curves

    curves = read_curves(folder).to_pandas()
    measured = curves[(curves["config_key"] == key) & (curves["step"] == 20)]["sharpness"].iloc[0]
    top = rows[(rows["config_key"] == key) & (rows["step"] == 20) & (rows["kind"] == "eigenvalue")
               & (rows["index"] == 0)]["value"].iloc[0]
    assert measured == pytest.approx(top, rel=1e-6)


def test_bad_options_and_a_sweep_without_snapshots_exit_2(tmp_path):
    assert spectra.main([str(tmp_path), "--sweep", "nothing"]) == 2
    with pytest.raises(OptionError, match="--top-k"):
        spectra.SpectraOptions(top_k=0)
    with pytest.raises(OptionError, match="--lanczos-steps"):
        spectra.SpectraOptions(top_k=5, lanczos_steps=3)
