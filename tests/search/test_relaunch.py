"""Relaunching a finished sweep is a fast no-op: the launcher reads the rows (and the Optuna journal) and says
"nothing to run" before Ray is imported, for grid, eta-scan and Optuna sweeps; anything left to run (a larger
space, more trials, a trial a killed driver left RUNNING) goes the usual way."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest

from raysweep import storage
from raysweep.results import read_trials
from raysweep.search import studies
from raysweep.search.remaining import nothing_to_run
from raysweep.points import AXES
from raysweep.space import load_spec
from tests.support import ROOT
from tests.support.search import write_spec

pytestmark = pytest.mark.ray

# the launcher's main in a fresh process, and whether Ray was ever imported by it
_LAUNCH = ("import sys; from raysweep.launch import main; rc = main(sys.argv[1:]); "
           "print('ray imported:', 'ray' in sys.modules); sys.exit(rc)")
SEARCHES = {
    "grid": ({}, {"eta": [0.05, 0.1]}),
    "scan": ({"algorithm": "eta_stability_depth", "stability_depth": 1}, {"eta": [0.01, 0.05, 0.1]}),
    "optuna": ({"algorithm": "optuna", "n_trials": 3, "seed": 0}, {"eta": [0.01, 0.2], "batch_size": [8, 16]}),
}
MORE = {"grid": ({}, {"eta": [0.05, 0.1, 0.2]}), "scan": ({"stability_depth": 2}, {}), "optuna": ({"n_trials": 4}, {})}


@pytest.mark.parametrize("kind", list(SEARCHES))
def test_relaunching_a_finished_sweep_never_starts_ray(ray_cluster, tmp_path, kind, run_cli):
    search, space = SEARCHES[kind]
    path = write_spec(tmp_path / f"{kind}.yaml", kind, search, experiment={"steps": 40}, **space)
    first = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path), "--address", ray_cluster, "--quiet")
    assert first.returncode == 0, first.stderr
    n_rows = read_trials(tmp_path / kind).num_rows
    assert n_rows == {"grid": 2, "scan": 1, "optuna": 6}[kind]

    again = subprocess.run([sys.executable, "-c", _LAUNCH, str(path), "--storage", str(tmp_path), "--address",
                            ray_cluster], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"sweep {kind}: nothing to run" in again.stdout and "ray imported: False" in again.stdout
    assert read_trials(tmp_path / kind).num_rows == n_rows
    print(f"\n{kind}: {again.stdout.splitlines()[0]}")

    # something left to run (one more eta, a deeper scan, more trials): the usual way
    sweep, (more_search, more_space) = storage.resolve(str(tmp_path / kind)), MORE[kind]
    assert nothing_to_run(load_spec(path), sweep) is not None
    bigger = write_spec(tmp_path / "more.yaml", kind, {**search, **more_search}, experiment={"steps": 40},
                        **{**space, **more_space})
    assert nothing_to_run(load_spec(bigger), sweep) is None


def test_a_trial_left_running_in_the_journal_is_not_finished(ray_cluster, tmp_path, run_cli):
    search, space = SEARCHES["optuna"]
    path = write_spec(tmp_path / "o.yaml", "o", search, experiment={"steps": 40}, **space)
    proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path), "--address", ray_cluster, "--quiet")
    assert proc.returncode == 0, proc.stderr
    spec, sweep = load_spec(path), storage.resolve(str(tmp_path / "o"))
    assert nothing_to_run(spec, sweep).startswith("sweep o: nothing to run (each of its 2 Optuna studies has its 3")
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "o" / studies.JOURNAL)))
    name = studies.study_name(spec, studies.cell_grid(spec, AXES)[0])
    optuna.load_study(study_name=name, storage=journal).ask()  # as a driver killed mid-trial leaves it
    assert nothing_to_run(spec, sweep) is None
    relaunch = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path), "--address", ray_cluster, "--quiet")
    assert relaunch.returncode == 0, relaunch.stderr
    assert "marked FAIL as abandoned" in relaunch.stdout  # the searcher finished it; nothing more ran
    assert nothing_to_run(spec, sweep) is not None
