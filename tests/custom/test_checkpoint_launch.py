"""Exact resume of a model factory's bundle through the launcher: a driver SIGKILLed while the CNN's fused bundle
runs past its first checkpoint is relaunched; the bundle resumes at a checkpoint (seen through the workers' side
channel, tests/support/workers/sitecustomize.py), every curve equals the uninterrupted run's bit for bit, every
configuration lands once, and no checkpoint is left (tests/test_checkpoint_launch.py for the MLP path)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from raysweep.plan import build_plan
from raysweep.results import read_curves, read_trials
from raysweep.space import parse_spec
from raysweep.trial import run_bundle
from tests.support import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EVERY = 150  # steps between checkpoints
SPEC = {
    "name": "kill-cnn",
    "experiment": {"family": "custom", "factory": "raysweep.examples.cnn:digits_images", "eval_samples": 128,
                   "model": {"factory": "raysweep.examples.cnn:build"}, "steps": 900, "report_every": 50,
                   "dtype": "float32"},
    "space": {"batch_size": 16, "width": 4, "depth": 2, "eta": [0.05, 0.1, 1e6], "seed": [0, 1], "optimizer": "SGD",
              "momentum": 0.9, "loss": "xent", "parametrization": "SP"},
    "resources": {"cpus_per_trial": 1},
    "checkpoint": {"every_s": None, "every_steps": EVERY},
}
CURVE_COLUMNS = ["step", "epoch", "samples_seen", "train_loss", "eval_loss", "eval_accuracy"]


def checkpoints(sweep) -> dict[str, list[int]]:
    """bundle id -> the steps of its committed checkpoints."""
    return {f.name: sorted(int(p.parent.name) for p in f.glob("*/manifest.json"))
            for f in sorted((sweep / "checkpoints").glob("b*"))}


def reference(spec: dict) -> dict[str, list[tuple]]:
    """config key -> its uninterrupted curve, trained here without Ray or checkpoints."""
    plan, _ = build_plan(parse_spec({**spec, "checkpoint": False}))
    out = {}
    for bundle in plan.bundles.values():
        reports = []
        run_bundle(plan, bundle, reports.append)
        for r in reports:
            for item in r["terminal"]:
                out[item["trial"]["config_key"]] = [tuple(c[k] for k in CURVE_COLUMNS) for c in item["curves"]]
    return out


def _norm(v):
    """A curve value as a comparable float; None, NaN and pandas' missing values as one token."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "na"
    return float(v)


def test_a_sigkilled_driver_relaunched_resumes_a_factory_bundle_bit_for_bit(ray_cluster, executions, tmp_path):
    sweep = tmp_path / "store" / SPEC["name"]
    path = tmp_path / "cnn.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    args = [sys.executable, "-m", "raysweep.launch", str(path), "--storage", str(tmp_path / "store"), "--address",
            ray_cluster]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not any(checkpoints(sweep).values()):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        assert any(checkpoints(sweep).values()), "no checkpoint within 240 s"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert not (sweep / "trials").is_dir() or read_trials(sweep).num_rows < 6  # killed before the bundle landed
    time.sleep(3.0)  # Ray tears down the dead driver's trial
    found = checkpoints(sweep)
    mark = time.time()
    relaunch = subprocess.run(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=400)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]

    runs = executions(mark, trainer="raysweep.custom.train")
    assert len(runs) == 6
    for r in runs:  # resumed after a checkpoint it had, not at step 0
        assert r["resume_step"] > 0 and r["resume_step"] % EVERY == 0, r
        assert r["resume_step"] in {s for steps in found.values() for s in steps}, (r, found)

    trials = read_trials(sweep).to_pandas()
    assert len(trials) == 6 and trials.config_key.is_unique
    assert set(trials.status) == {"completed", "diverged"}
    curves = read_curves(sweep).to_pandas()
    assert not curves.duplicated(["config_key", "step"]).any()
    want = reference(SPEC)
    assert set(want) == set(trials.config_key)
    for key, rows in want.items():
        got = curves[curves.config_key == key].sort_values("step")[CURVE_COLUMNS].astype(object)
        assert [tuple(map(_norm, r)) for r in got.itertuples(index=False)] == [tuple(map(_norm, r)) for r in rows], key
    assert not (sweep / "checkpoints").exists() or not any((sweep / "checkpoints").iterdir())
