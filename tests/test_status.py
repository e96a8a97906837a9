"""``python -m raysweep.status`` and ``<sweep>/manifest.json``: the status of the quickstart, of a half-finished
sweep (rows landed through the writer, one configuration checkpointed) and of an empty folder (exit 2, naming where
it looked); what each search plans; the manifest after one launch and after a second."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
from importlib import metadata

import pytest

import raysweep
from raysweep import driver, manifest
from raysweep.errors import NoResultsError
from raysweep.results import ResultsWriter, read_trials
from raysweep.points import AXES, config_keys
from raysweep.space import load_spec, parse_spec
from raysweep.status import checkpointed_keys, optuna_cells, read_status, sweep_status
from tests.support import ROOT

QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"

# runs `python -m raysweep.status ARGS`, then says which heavy libraries it imported
_STATUS = (
    "import json, runpy, sys\n"
    "sys.argv = ['raysweep.status', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('raysweep.status', run_name='__main__', alter_sys=True)\n"
    "except SystemExit as exc:\n"
    "    rc = exc.code\n"
    "print(json.dumps({'rc': rc, 'loaded': [m for m in ('ray', 'torch', 'optuna') if m in sys.modules]}))\n"
)


def land(sweep, spec, n: int, statuses=("completed", "diverged")) -> list[str]:
    """Save ``spec`` in ``sweep`` and land rows for its first ``n`` configurations through the writer; their keys."""
    sweep.mkdir(parents=True, exist_ok=True)
    driver.save_spec(sweep, spec)
    points = spec.points()
    keys = config_keys(spec.experiment.as_dict(), points)
    with ResultsWriter(sweep, spec.name) as writer:
        for i, (key, point) in enumerate(zip(keys[:n], points)):
            writer.add({"config_key": key, "status": statuses[i % len(statuses)], **point,
                        "final_train_loss": 1.0 + i, "final_eval_loss": 2.0 + i})
    return keys


# ------------------------------------------------------------------------------------------------ the quickstart
@pytest.mark.ray
def test_status_of_the_quickstart_says_it_is_done_without_ray_or_torch(quickstart_sweep):
    proc, sweep = quickstart_sweep
    assert proc.returncode == 0, proc.stderr
    run = subprocess.run([sys.executable, "-c", _STATUS, str(sweep.parent)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"rc": 0, "loaded": []}, (report, run.stderr[-2000:])
    text = run.stdout
    trials = read_trials(sweep).to_pandas()
    counts = trials.status.value_counts()
    assert f"sweep quickstart ({sweep})" in text
    assert "planned:     24 configurations (grid)" in text
    assert f"landed:      24 ({counts.get('completed', 0)} completed, {counts.get('diverged', 0)} diverged" in text
    assert "missing:     0\n" in text and "in progress: 0 (checkpointed)" in text
    best = trials[trials.status == "completed"].sort_values("final_train_loss").iloc[0]
    assert f"best:        final_train_loss {best.final_train_loss:.6g} (min) at batch_size={best.batch_size} " \
           f"eta={best.eta:g} [{best.config_key}]" in text
    assert "last launch: " in text and f"host {socket.gethostname()}" in text and "landed 24 (" in text

    (status,) = raysweep.sweep_status(sweep.parent, name="quickstart")
    assert (status.planned, status.n_landed, status.missing, status.in_progress) == (24, 24, 0, 0)
    assert status.best["config_key"] == best.config_key and status.last_launch["end"] is not None


@pytest.mark.ray
def test_the_manifest_records_the_launch(quickstart_sweep, ray_cluster):
    _, sweep = quickstart_sweep
    data = json.loads((sweep / "manifest.json").read_text())
    assert data["schema_version"] == manifest.SCHEMA_VERSION and data["sweep"] == "quickstart"
    versions = data["versions"]
    assert versions["raysweep"] == raysweep.__version__
    assert versions["torch"] == metadata.version("torch") and versions["ray"] == metadata.version("ray")
    assert versions["optuna"] == metadata.version("optuna")
    assert data["git"] == manifest.git_state(ROOT)  # the launcher ran in the checkout (or null outside one)
    assert data["spec_sha256"] == hashlib.sha256((sweep / "spec.yaml").read_bytes()).hexdigest()
    (entry,) = data["launches"]
    assert entry["start"] <= entry["end"] and entry["host"] == socket.gethostname()
    assert entry["address"] == ray_cluster and "attached to" in entry["where"]
    devices = entry["devices"]
    assert (devices["nodes"], devices["CPU"], devices["GPU"]) == (1, 2.0, 4.0)
    assert isinstance(devices["accelerators"], list)
    statuses = read_trials(sweep).to_pandas().status.value_counts().to_dict()
    assert {k: v for k, v in entry["counts"].items() if v} == statuses
    assert (entry["rows_before"], entry["interrupted"], entry["error"]) == (0, None, None)
    assert (entry["versions"], entry["git"], entry["spec_sha256"]) == (versions, data["git"], data["spec_sha256"])


@pytest.mark.ray
def test_a_second_launch_adds_its_entry(quickstart_sweep, ray_cluster, tmp_path):
    _, original = quickstart_sweep
    sweep = tmp_path / "r" / "quickstart"
    shutil.copytree(original, sweep)
    first = json.loads((sweep / "manifest.json").read_text())
    spec = load_spec(QUICKSTART).to_dict()
    spec["space"]["eta"] = spec["space"]["eta"] + [8.0]  # 3 new configurations, one per batch size
    summary = raysweep.run(spec, raysweep.RunOptions(storage=tmp_path / "r", address=ray_cluster, quiet=True))
    assert summary.landed == 3

    data = json.loads((sweep / "manifest.json").read_text())
    assert data["launches"][0] == first["launches"][0]
    second = data["launches"][1]
    assert second["rows_before"] == 24 and sum(second["counts"].values()) == 3
    assert second["start"] >= first["launches"][0]["end"] and second["end"] >= second["start"]
    assert data["spec_sha256"] == second["spec_sha256"] != first["spec_sha256"]
    assert data["spec_sha256"] == hashlib.sha256((sweep / "spec.yaml").read_bytes()).hexdigest()
    (status,) = read_status(sweep)
    assert (status.planned, status.n_landed, status.missing, status.launches) == (27, 27, 0, 2)


# ------------------------------------------------------------------------------------------------ no Ray
def test_a_half_finished_sweep_counts_missing_and_checkpointed_configurations(tmp_path, run_cli):
    spec = load_spec(QUICKSTART)
    sweep = tmp_path / "r" / "quickstart"
    keys = land(sweep, spec, 10)
    assert checkpointed_keys(sweep) == set()  # no checkpoints folder yet
    meta = sweep / "checkpoints" / "b0123456789ab"
    meta.mkdir(parents=True)
    # a missing configuration and a landed one named in metadata; a torn file and a dot file are not read
    (meta / "step-100.json").write_text(json.dumps({"bundle": "b0123456789ab", "members": [{"key": keys[12]},
                                                                                          {"key": keys[0]}]}))
    (meta / "torn.json").write_text('{"members": ["' + keys[13])
    (meta / f".{keys[14]}.json.tmp.json").write_text(json.dumps([keys[14]]))
    assert checkpointed_keys(sweep) == {keys[12], keys[0]}

    proc = run_cli("raysweep.status", str(tmp_path / "r"), "--missing")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "planned:     24 configurations (grid)" in out
    assert "landed:      10 (5 completed, 5 diverged, 0 failed, 0 pruned)" in out
    assert "missing:     14\n" in out and "in progress: 1 (checkpointed)" in out
    assert f"best:        final_train_loss 1 (min) at batch_size=8 eta=0.03125 [{keys[0]}]" in out
    assert "last launch: none recorded (no manifest.json)" in out
    listed = out.split("missing configurations (14):\n")[1].splitlines()
    assert [line.split("[")[1][:16] for line in listed] == keys[10:]
    assert [line for line in listed if line.endswith("(checkpointed)")] == [listed[2]]
    assert listed[0].strip() == f"batch_size=32 eta=0.125 [{keys[10]}]"

    status = sweep_status(sweep)
    assert (status.planned, status.n_landed, status.missing, status.in_progress) == (24, 10, 14, 1)
    assert [c["config_key"] for c in status.missing_configs] == keys[10:]
    assert proc.stdout.strip() == status.text(missing=True)


def test_nothing_there_exits_2_saying_where_it_looked(tmp_path, run_cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes").mkdir()  # a folder that is not a sweep
    proc = run_cli("raysweep.status", str(empty))
    assert proc.returncode == 2 and not proc.stdout
    assert proc.stderr.strip() == (f"raysweep.status: no sweep in {empty}: looked for spec.yaml, manifest.json or "
                                   f"trials/ in {empty} and in each folder directly under it")
    with pytest.raises(NoResultsError, match="does not exist"):
        read_status(tmp_path / "nowhere")
    land(tmp_path / "r" / "quickstart", load_spec(QUICKSTART), 1)
    with pytest.raises(NoResultsError, match=f"no sweep named other in {tmp_path / 'r'}: looked for"):
        read_status(tmp_path / "r", name="other")


def _tiny(**search) -> dict:
    return {"name": "tiny", "experiment": {"family": "poly_online", "dim": 4, "steps": 20, "report_every": 10},
            "space": {"batch_size": [8, 16], "eta": [0.5, 0.25, 0.125, 0.0625], "width": 8}, "search": search}


def test_what_each_search_plans(tmp_path):
    # random: the points drawn
    spec = parse_spec(_tiny(algorithm="random", n_samples=5, seed=3))
    land(tmp_path / "random", spec, 2)
    status = sweep_status(tmp_path / "random")
    assert (status.planned, status.n_landed, status.missing) == (5, 2, 3)
    assert "planned:     5 configurations (random search: the points drawn)" in status.text()

    # an eta scan: once the largest eta of a column completes, depth 1 skips the smaller ones (no row, not missing)
    spec = parse_spec(_tiny(algorithm="eta_stability_depth", stability_depth=1))
    points = spec.points()
    keys = config_keys(spec.experiment.as_dict(), points)
    first = [i for i, p in enumerate(points) if p["batch_size"] == 8 and p["eta"] == 0.5]
    (tmp_path / "scan").mkdir()
    driver.save_spec(tmp_path / "scan", spec)
    with ResultsWriter(tmp_path / "scan", "tiny") as writer:
        writer.add({"config_key": keys[first[0]], "status": "completed", **points[first[0]], "final_train_loss": 1.0})
    status = sweep_status(tmp_path / "scan")
    assert (status.planned, status.n_landed, status.skipped, status.missing) == (8, 1, 3, 4)
    assert {c["batch_size"] for c in status.missing_configs} == {16}
    assert "missing:     4 (3 more skipped by the scan's rule)" in status.text()

    # optuna: n_trials per cell is the budget; missing counts, per cell, the trials short of n_trials
    spec = parse_spec(_tiny(algorithm="optuna", n_trials=3))
    sweep = tmp_path / "optuna"
    sweep.mkdir()
    driver.save_spec(sweep, spec)
    grid = list(load_spec_points(spec))
    with ResultsWriter(sweep, "tiny") as writer:
        for key, point in grid:
            if point["batch_size"] == 8 or point["eta"] == 0.5:  # 4 rows in cell B = 8, 1 in cell B = 16
                writer.add({"config_key": key, "status": "completed", **point, "final_train_loss": point["eta"]})
    status = sweep_status(sweep)
    assert (status.planned, status.n_landed, status.missing) == (6, 5, 2)
    assert status.missing_configs == ({"batch_size": 16, "trials_left": 2},)
    assert "planned:     6 trials (Optuna: n_trials x studies, the trial budget)" in status.text()
    assert "    batch_size=16: 2 trials without a row" in status.text(missing=True)
    assert status.best["eta"] == 0.0625 and status.best["mode"] == "min"
    studies = pytest.importorskip("raysweep.search.studies")
    assert optuna_cells(spec) == studies.cell_grid(spec, AXES)


def load_spec_points(spec):
    points = spec.points()
    return zip(config_keys(spec.experiment.as_dict(), points), points)


# ------------------------------------------------------------------------------------------------ the manifest
def test_manifest_entries_are_kept_and_an_unreadable_one_is_set_aside(tmp_path, capsys):
    spec = parse_spec(_tiny())
    sweep = tmp_path / "tiny"
    keys = land(sweep, spec, 2)
    launch = manifest.Launch(sweep, spec, address=None, keys_before=keys[:1], cwd=tmp_path).begin()
    data = manifest.read_manifest(sweep)
    assert data["git"] is None  # not a git checkout
    assert [e["end"] for e in data["launches"]] == [None]
    launch.end(error=RuntimeError("storage gone\nsecond line"))
    (entry,) = manifest.read_manifest(sweep)["launches"]
    assert entry["error"] == "RuntimeError: storage gone" and entry["counts"] == {
        "completed": 0, "diverged": 1, "failed": 0, "pruned": 0}
    assert "no end recorded" not in sweep_status(sweep).text()

    manifest.Launch(sweep, spec, address="10.0.0.5:6379", keys_before=keys, cwd=tmp_path).begin()
    status = sweep_status(sweep)
    assert status.launches == 2 and "no end recorded (still running, or the driver was killed)" in status.text()

    (sweep / "manifest.json").write_text("{not json")
    manifest.Launch(sweep, spec, address=None, keys_before=keys, cwd=tmp_path).begin()
    assert len(manifest.read_manifest(sweep)["launches"]) == 1
    (aside,) = (sweep / "quarantine").iterdir()
    assert aside.name.startswith("manifest.json.") and aside.read_text() == "{not json"
    assert "unreadable" in capsys.readouterr().err
