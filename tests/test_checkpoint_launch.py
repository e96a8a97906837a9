"""Exact resume through the launcher: a driver SIGKILLed while its fused bundles run past their first checkpoint
is relaunched; each bundle resumes at its latest checkpoint (seen through the workers' side channel,
tests/support/workers/sitecustomize.py, which logs the step each trainer resumes after), every curve equals the
uninterrupted run's bit for bit, every configuration lands once, and no checkpoint is left once the rows landed.
float64 online data and float32 fixed data (epochs), SGD and Adam bundles, shared and distinct data streams, a
member that diverges before the checkpoint."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raysweep.plan import build_plan
from raysweep.results import read_curves, read_trials
from raysweep.space import parse_spec
from raysweep.trial import run_bundle
from tests.support import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EVERY = 300  # steps between checkpoints
CURVE_COLUMNS = ["step", "epoch", "samples_seen", "train_loss", "eval_loss", "eval_accuracy", "active_fraction"]


def spec_for(name: str, family: str, dtype: str, dim: int) -> dict:
    return {
        "name": name,
        "experiment": {"family": family, "dim": dim, "n_train": 512, "report_every": 100, "dtype": dtype,
                       **({"steps": 1200} if family == "poly_online" else {"epochs": 19})},  # 64 steps an epoch
        "space": {"batch_size": 8, "width": 32, "depth": 3, "eta": [0.01, 0.04, 1e6], "seed": [0, 1],
                  "optimizer": ["SGD", "Adam"]},
        "resources": {"cpus_per_trial": 0.5},
        "checkpoint": {"every_s": None, "every_steps": EVERY},
    }


def checkpoints(sweep: Path) -> dict[str, list[int]]:
    """bundle id -> the steps of its committed checkpoints."""
    out = {}
    for folder in sorted((sweep / "checkpoints").glob("b*")):
        out[folder.name] = sorted(int(p.parent.name) for p in folder.glob("*/manifest.json"))
    return out


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


CASES = [("poly_online", "float64", 21), ("poly_fixed", "float32", 22)]


def test_a_sigkilled_driver_relaunched_resumes_each_bundle_at_its_checkpoint_bit_for_bit(
        ray_cluster, executions, tmp_path):
    # two sweeps at once (float64 online, float32 fixed data), each of two fused bundles (SGD, Adam) of six
    # members, half a CPU per trial: the four trials run together on the session's two CPUs
    specs = {dim: spec_for(f"kill-{family}", family, dtype, dim) for family, dtype, dim in CASES}
    sweeps = {dim: tmp_path / "store" / spec["name"] for dim, spec in specs.items()}
    args = {}
    for dim, spec in specs.items():
        path = tmp_path / f"{dim}.yaml"
        path.write_text(yaml.safe_dump(spec))
        args[dim] = [sys.executable, "-m", "raysweep.launch", str(path), "--storage", str(tmp_path / "store"),
                     "--address", ray_cluster]
    procs = {dim: subprocess.Popen(a, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True) for dim, a in args.items()}
    try:
        deadline = time.time() + 240
        waiting = set(procs)
        while waiting and time.time() < deadline:
            for dim in list(waiting):
                assert procs[dim].poll() is None, procs[dim].communicate()[1][-3000:]
                found = checkpoints(sweeps[dim])
                if len(found) == 2 and all(found.values()):  # both bundles past their first checkpoint
                    os.kill(procs[dim].pid, signal.SIGKILL)
                    waiting.discard(dim)
            time.sleep(0.05)
        assert not waiting, "no checkpoint within 240 s"
        for proc in procs.values():
            proc.wait(timeout=30)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.stderr.close()
    for sweep in sweeps.values():  # killed mid-sweep: some bundle had not finished
        assert not (sweep / "trials").is_dir() or read_trials(sweep).num_rows < 12
    time.sleep(3.0)  # Ray tears down the dead drivers' trials
    at_relaunch = {dim: checkpoints(sweep) for dim, sweep in sweeps.items()}
    mark = time.time()
    procs = {dim: subprocess.Popen(a, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for dim, a in args.items()}
    for proc in procs.values():
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]

    for dim, spec in specs.items():
        sweep, found = sweeps[dim], at_relaunch[dim]
        # the side channel: each bundle's trainer resumed after a checkpoint it had (its latest), not at step 0
        runs = executions(mark, dim=dim)
        assert {r["optimizer"] for r in runs} == {"SGD", "Adam"}
        for r in runs:
            assert r["resume_step"] > 0 and r["resume_step"] % EVERY == 0, r
            assert min(max(steps) for steps in found.values()) <= r["resume_step"], (r, found)

        # every configuration once; every curve bit for bit the uninterrupted one; no checkpoint left
        trials = read_trials(sweep).to_pandas()
        assert len(trials) == 12 and trials.config_key.is_unique
        assert set(trials.status) <= {"completed", "diverged"} and (trials.status == "diverged").any()
        assert (trials.status == "completed").any()
        curves = read_curves(sweep).to_pandas()
        assert not curves.duplicated(["config_key", "step"]).any()
        want = reference(spec)
        assert set(want) == set(trials.config_key)
        for key, rows in want.items():
            got = curves[curves.config_key == key].sort_values("step")[CURVE_COLUMNS].astype(object)
            assert [tuple(map(_norm, r)) for r in got.itertuples(index=False)] == \
                [tuple(map(_norm, r)) for r in rows], key
        assert not (sweep / "checkpoints").exists() or not any((sweep / "checkpoints").iterdir())


def _norm(v):
    """A curve value as a comparable Python float (exact for these ints and float64 losses); None, NaN and pandas'
    missing values as one token."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "na"
    return float(v)
