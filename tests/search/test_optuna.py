"""Optuna-guided sweeps end to end through the command line: faithful trial states next to the Parquet rows, one
study per grid cell with its eta*, a SIGKILLed driver that relaunches to exactly n_trials, and optuna-dashboard
serving the journal while nothing else holds it."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from raysweep.results import read_curves, read_trials
from tests.support import ROOT
from tests.support.search import counted, load_studies, write_spec

pytestmark = pytest.mark.ray

N_TRIALS = 30
STATE_OF_STATUS = {"completed": "COMPLETE", "pruned": "PRUNED", "diverged": "FAIL", "failed": "FAIL"}


@pytest.fixture(scope="module")
def asha_sweep(ray_cluster, tmp_path_factory, run_cli):
    """30 Optuna trials over eta in [2^-8, 2^6] (the top etas diverge) with ASHA, on the tiny poly teacher."""
    tmp = tmp_path_factory.mktemp("optuna-asha")
    search = {"algorithm": "optuna", "n_trials": N_TRIALS, "seed": 3, "sampler": "tpe", "diverged_as": "fail",
              "scheduler": {"type": "asha", "grace_period": 20, "reduction_factor": 3}}
    path = write_spec(tmp / "asha.yaml", "asha", search, eta=[2.0**-8, 2.0**6])
    started = time.perf_counter()
    proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp), "--address", ray_cluster, "--quiet")
    assert proc.returncode == 0, proc.stderr
    return {"dir": tmp / "asha", "stdout": proc.stdout, "wall_s": time.perf_counter() - started}


def test_optuna_with_asha_keeps_optuna_states(asha_sweep):
    studies = load_studies(asha_sweep["dir"] / "optuna.journal")  # optuna.load_study in a fresh process
    assert list(studies) == ["asha"]
    trials = studies["asha"]["trials"]
    rows = read_trials(asha_sweep["dir"]).to_pandas().set_index("config_key")
    curves = read_curves(asha_sweep["dir"]).to_pandas()

    states = [t["state"] for t in trials]
    assert len(trials) == N_TRIALS and "RUNNING" not in states
    assert len(rows) == N_TRIALS and rows.index.is_unique
    expected = rows.status.map(STATE_OF_STATUS).value_counts().to_dict()
    assert {s: states.count(s) for s in set(states)} == expected
    assert expected.get("PRUNED", 0) >= 1 and expected.get("FAIL", 0) >= 1 and expected.get("COMPLETE", 0) >= 1
    for t in trials:
        row = rows.loc[t["user_attrs"]["config_key"]]
        assert t["state"] == STATE_OF_STATUS[row.status] and t["user_attrs"]["status"] == row.status
        assert t["params"]["eta"] == row.eta
        curve = curves[curves.config_key == row.name].sort_values("step")
        if row.status == "diverged":  # the report where it diverged carries no metric
            assert t["user_attrs"]["diverged_step"] == row.diverged_step
            curve = curve.iloc[:-1]
        assert t["intermediate"] == {str(s): v for s, v in zip(curve.step, curve.train_loss)}, t["number"]
        if row.status == "completed":
            assert t["value"] == row.final_train_loss == curve.train_loss.iloc[-1]
        if row.status == "pruned":  # Optuna keeps a pruned trial's last intermediate value as its value
            assert row.steps < 200 and t["value"] == row.final_train_loss == curve.train_loss.iloc[-1]
    print(f"\n30-trial Optuna+ASHA: {expected} in {asha_sweep['wall_s']:.0f}s; {asha_sweep['stdout'].strip()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_serves_the_journal(asha_sweep):
    exe = shutil.which("optuna-dashboard")
    if exe is None:
        pytest.skip("optuna-dashboard is not installed (pip install 'raysweep[dashboard]')")
    port = _free_port()
    proc = subprocess.Popen([exe, str(asha_sweep["dir"] / "optuna.journal"), "--port", str(port),
                             "--host", "127.0.0.1", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, body = time.time() + 60, None
        while time.time() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as resp:
                    body = json.loads(resp.read())
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.3)
        assert body is not None, "optuna-dashboard did not answer within 60 s"
        (summary,) = body["study_summaries"]
        assert summary["study_name"] == "asha"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=10) as r:
            assert len(json.loads(r.read())["trials"]) == N_TRIALS
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


def test_one_study_per_grid_cell_records_eta_star(ray_cluster, tmp_path, run_cli):
    search = {"algorithm": "optuna", "n_trials": 2, "seed": 0, "optuna_axes": ["eta"], "diverged_as": "fail"}
    path = write_spec(tmp_path / "cells.yaml", "cells", search, experiment={"steps": 60},
                      batch_size=[8, 32], width=[8, 16], eta=[2.0**-5, 2.0**0])
    proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path), "--address", ray_cluster, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "4 Optuna studies, 8 finished trials" in proc.stdout
    studies = load_studies(tmp_path / "cells" / "optuna.journal")
    assert sorted(studies) == [f"cells:batch_size={b},width={w}" for b in (32, 8) for w in (16, 8)]
    rows = read_trials(tmp_path / "cells").to_pandas()
    assert len(rows) == 8 and rows.config_key.is_unique
    for name, study in studies.items():
        cell = study["user_attrs"]["cell"]
        assert name == f"cells:batch_size={cell['batch_size']},width={cell['width']}"
        assert sum(counted(t) for t in study["trials"]) == 2
        mine = rows[(rows.batch_size == cell["batch_size"]) & (rows.width == cell["width"])]
        assert set(mine.config_key) == {t["user_attrs"]["config_key"] for t in study["trials"]}
        completed = mine[mine.status == "completed"]
        if completed.empty:
            assert study["best_params"] is None
            continue
        best = completed.loc[completed.final_train_loss.idxmin()]  # the analysis' eta*, from Parquet alone
        assert study["best_params"] == {"eta": best.eta} and study["user_attrs"]["eta_star"] == best.eta
        assert study["user_attrs"]["best"] == {"eta": best.eta, "value": best.final_train_loss,
                                               "config_key": best.config_key}


def test_sigkill_mid_study_then_relaunch_finishes_each_study_exactly(ray_cluster, tmp_path):
    n_trials = 4
    search = {"algorithm": "optuna", "n_trials": n_trials, "seed": 1, "max_concurrent": 2}
    path = write_spec(tmp_path / "kill.yaml", "kill", search, experiment={"steps": 300, "report_every": 100},
                      batch_size=[8, 16], eta=[2.0**-6, 2.0**0])
    sweep = tmp_path / "kill"
    args = [sys.executable, "-m", "raysweep.launch", str(path), "--storage", str(tmp_path),
            "--address", ray_cluster, "--quiet"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and read_trials(sweep).num_rows < 3 and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    n_rows_before = read_trials(sweep).num_rows
    assert 3 <= n_rows_before < 2 * n_trials, "kill the driver mid-study"
    before = load_studies(sweep / "optuna.journal")
    assert sum(t["state"] == "RUNNING" for s in before.values() for t in s["trials"]) >= 1
    time.sleep(2.0)  # the killed driver's trials are torn down by Ray

    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr
    after = load_studies(sweep / "optuna.journal")
    rows = read_trials(sweep).to_pandas()
    assert rows.config_key.is_unique and len(rows) >= n_rows_before
    counted_keys = set()
    for name, study in after.items():
        assert not [t for t in study["trials"] if t["state"] in ("RUNNING", "WAITING")], name
        assert sum(counted(t) for t in study["trials"]) == n_trials, name
        counted_keys |= {t["user_attrs"]["config_key"] for t in study["trials"] if counted(t)}
        for t in study["trials"]:
            if not counted(t):  # abandoned by the killed driver: FAIL, no row, replaced by a new trial
                assert t["state"] == "FAIL" and t["user_attrs"].get("config_key") not in set(rows.config_key)
    assert counted_keys == set(rows.config_key)  # every finished trial has its row, every row its trial
    curves = read_curves(sweep).to_pandas()
    assert not curves.duplicated(["config_key", "step"]).any()
