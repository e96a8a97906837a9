"""End to end through the command line: the quickstart lands readable Parquet; bad specs exit 2 without Ray;
a SIGKILLed sweep resumes exactly once; a larger space runs only its new points."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml

from raysweep.results import read_curves, read_trials
from raysweep.space import load_spec
from raysweep.schema import CURVES_SCHEMA, STATUSES, TRIALS_SCHEMA
from tests.support import ROOT

pytestmark = pytest.mark.ray


def write_space(path: Path, name: str, **space) -> Path:
    spec = {
        "name": name,
        "experiment": {"family": "poly_online", "dim": 8, "n_train": 256, "steps": 60, "report_every": 20},
        "space": {"batch_size": [16], "eta": [0.25], "width": 16, "depth": 3, **space},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def test_quickstart_lands_tables_every_reader_agrees_on(quickstart_sweep):
    proc, sweep = quickstart_sweep
    assert proc.returncode == 0, proc.stderr
    assert (sweep / "spec.yaml").exists()
    trials = read_trials(sweep)
    assert trials.num_rows == load_spec(ROOT / "search_spaces" / "quickstart.yaml").n_points()
    assert trials.schema == TRIALS_SCHEMA
    assert read_curves(sweep).schema == CURVES_SCHEMA

    import duckdb
    import pandas as pd
    import polars as pl

    for table, schema in (("trials", TRIALS_SCHEMA), ("curves", CURVES_SCHEMA)):
        glob = str(sweep / table / "*.parquet")
        counts = {
            "pyarrow": ds.dataset(sweep / table, format="parquet").to_table().num_rows,
            "pandas": len(pd.read_parquet(sweep / table)),
            "polars": pl.scan_parquet(glob).collect().height,
            "duckdb": duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall()[0][0],
        }
        assert len(set(counts.values())) == 1, counts
        assert set(pd.read_parquet(sweep / table).columns) == set(schema.names)
        assert duckdb.sql(f"select * from read_parquet('{glob}') limit 1").columns == schema.names

    df = trials.to_pandas()
    assert df.config_key.is_unique
    assert set(df.status) <= set(STATUSES)
    assert (df.temperature == df.eta / df.batch_size).all()
    assert df.batch_size.dtype == "int64" and df.eta.dtype == "float64"
    diverged = df[df.status == "diverged"]
    assert diverged.diverged_step.notna().all() and df[df.status != "diverged"].diverged_step.isna().all()
    assert (df.status == "completed").sum() >= len(df) // 3
    assert df[df.status == "completed"].final_train_loss.notna().all()


def test_diverged_and_failed_trials_land_with_their_reason(ray_cluster, tmp_path, run_cli):
    spec = {
        "name": "mixed",
        "experiment": {"family": "poly_fixed", "dim": 8, "n_train": 64, "epochs": 3, "report_every": 2},
        # B = 128 > 64 training samples: that trial fails; eta = 1e6 diverges; the rest completes
        "space": {"batch_size": [16, 128], "eta": [0.25, 1e6], "width": 16, "depth": 3},
        "fusion": {"enabled": False},
    }
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path), "--address", ray_cluster)
    assert proc.returncode == 0, proc.stderr
    df = read_trials(tmp_path / "mixed").to_pandas().set_index(["batch_size", "eta"])
    assert df.loc[(16, 0.25)].status == "completed"
    assert df.loc[(16, 1e6)].status == "diverged" and df.loc[(16, 1e6)].diverged_step >= 1
    for eta in (0.25, 1e6):
        row = df.loc[(128, eta)]
        assert row.status == "failed" and "larger than the training set" in row.error


BAD_SPECS = {
    "yaml_syntax": ("name: x\nexperiment: {family: poly_online\n", "line"),
    "empty": ("", "empty"),
    "unknown_top_key": ("name: x\nexperiment: {family: poly_online, steps: 5}\nspace: {batch_size: 1, eta: 1, width: 8}\nsearc: {}\n", "search"),
    "misspelt_axis": ("name: x\nexperiment: {family: poly_online, steps: 5}\nspace: {batch_size: 1, eta: 1, widht: 8}\n", "width"),
    "batch_negative": ("name: x\nexperiment: {family: poly_online, steps: 5}\nspace: {batch_size: [1, 2, -4], eta: 1, width: 8}\n", r"space\.batch_size\[2\]"),
    "eta_zero": ("name: x\nexperiment: {family: poly_online, steps: 5}\nspace: {batch_size: 1, eta: [0.0], width: 8}\n", r"space\.eta\[0\]"),
    "gamma_text": ("name: x\nexperiment: {family: poly_online, steps: 5}\nspace: {batch_size: 1, eta: 1, width: 8, gamma: [big]}\n", "space.gamma"),
    "param_xp": ("name: x\nexperiment: {family: poly_online, steps: 5}\nspace: {batch_size: 1, eta: 1, width: 8, parametrization: XP}\n", "space.parametrization"),
    "unknown_family": ("name: x\nexperiment: {family: mnits, steps: 5}\nspace: {batch_size: 1, eta: 1, width: 8}\n", "experiment.family"),
    "unknown_optimizer": ("name: x\nexperiment: {family: poly_online, steps: 5}\nspace: {batch_size: 1, eta: 1, width: 8, optimizer: Lion}\n", "space.optimizer"),
    "steps_zero": ("name: x\nexperiment: {family: poly_online, steps: 0}\nspace: {batch_size: 1, eta: 1, width: 8}\n", "experiment.steps"),
    "no_space": ("name: x\nexperiment: {family: poly_online, steps: 5}\n", "space"),
    "width_float": ("name: x\nexperiment: {family: poly_online, steps: 5}\nspace: {batch_size: 1, eta: 1, width: 8.5}\n", "space.width"),
    "xent_regression": ("name: x\nexperiment: {family: poly_online, steps: 5}\nspace: {batch_size: 1, eta: 1, width: 8, loss: xent}\n", "space.loss"),
    "mnist_no_path": ("name: x\nexperiment: {family: mnist, epochs: 1}\nspace: {batch_size: 1, eta: 1, width: 8}\n", "experiment.path"),
    "bad_name": ("name: 'a/b'\nexperiment: {family: poly_online, steps: 5}\nspace: {batch_size: 1, eta: 1, width: 8}\n", "name"),
}


def test_bad_specs_exit_2_naming_the_field_without_starting_ray(tmp_path, run_cli):
    paths = {}
    for label, (text, _) in BAD_SPECS.items():
        paths[label] = tmp_path / f"{label}.yaml"
        paths[label].write_text(text)
    paths["missing_file"] = tmp_path / "does_not_exist.yaml"
    expected = {label: pattern for label, (_, pattern) in BAD_SPECS.items()} | {"missing_file": "does_not_exist"}
    # one interpreter runs the launcher on every file and reports exit codes, messages and whether Ray was imported
    script = (
        "import contextlib, io, json, sys, raysweep.launch as L\n"
        "out = {}\n"
        "for label, path in json.loads(sys.argv[1]).items():\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        rc = L.main([path, '--storage', sys.argv[2]])\n"
        "    out[label] = [rc, err.getvalue()]\n"
        "print(json.dumps({'results': out, 'ray': 'ray' in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, json.dumps({k: str(v) for k, v in paths.items()}),
                           str(tmp_path / "results")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ray"] is False
    import re

    for label, pattern in expected.items():
        rc, message = report["results"][label]
        assert rc == 2, (label, message)
        assert re.search(pattern, message), (label, pattern, message)
    assert not (tmp_path / "results").exists()

    # well under 3 s: measured as the child's CPU time, which a loaded CI machine does not inflate
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = run_cli("raysweep.launch", str(paths["batch_negative"]))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 2 and "space.batch_size[2]" in proc.stderr
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) < 1.5


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, run_cli):
    path = write_space(tmp_path / "s.yaml", "dry", eta=[0.1, 0.2, 0.4])
    proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path / "r"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "3 configurations" in proc.stdout and "1 Ray trials" in proc.stdout and "cpu=1" in proc.stdout
    assert not (tmp_path / "r").exists()


def test_embedded_ray_stops_when_the_launcher_returns_and_an_attached_one_stays(ray_cluster, tmp_path):
    path = write_space(tmp_path / "s.yaml", "embedded", eta=[0.1, 0.2])
    # no --address: the launcher starts an embedded Ray, and has stopped it (no Ray process of its own left, zombies
    # aside) by the time main() returns
    script = (
        "import json, os, sys, time, ray, raysweep.launch as L\n"
        "rc = L.main([sys.argv[1], '--storage', sys.argv[2], '--quiet', '--num-cpus', '1'])\n"
        "def children():\n"
        "    out = []\n"
        "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        "            stat = open(f'/proc/{pid}/stat').read()\n"
        "        except OSError:\n"
        "            continue\n"
        "        fields = stat[stat.rindex(')') + 2:].split()\n"
        "        if int(fields[1]) == os.getpid() and fields[0] != 'Z':\n"
        "            out.append(stat[stat.index('(') + 1:stat.rindex(')')])\n"
        "    return out\n"
        "deadline = time.time() + 10\n"
        "while children() and time.time() < deadline:\n"
        "    time.sleep(0.1)\n"
        "print(json.dumps({'rc': rc, 'initialized': ray.is_initialized(), 'children': children()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "r")], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"rc": 0, "initialized": False, "children": []}, report
    assert read_trials(tmp_path / "r" / "embedded").num_rows == 2

    # in a process whose Ray someone else started (here: the test session's), the launcher leaves it running
    import ray

    from raysweep import launch

    assert launch.main([str(path), "--storage", str(tmp_path / "r2"), "--quiet"]) == 0
    assert ray.is_initialized() and read_trials(tmp_path / "r2" / "embedded").num_rows == 2


def test_sigkill_then_relaunch_runs_each_config_exactly_once(ray_cluster, executions, tmp_path):
    etas = [2.0**-k for k in range(12)]
    common = {"batch_size": [8], "width": 32, "seed": [0]}
    small = write_space(tmp_path / "small.yaml", "crash", eta=etas, **common)
    spec = yaml.safe_load(small.read_text())
    # dim tags this test's executions in the log; 6000 steps keep a trial ~0.5 s of CPU (the hand-written backward
    # made 1500 steps so fast that all 12 trials landed before the driver could be killed mid-sweep)
    spec["experiment"].update(steps=6000, report_every=2000, dim=9)
    spec["fusion"] = {"enabled": False}
    spec["search"] = {"max_concurrent": 2}
    small.write_text(yaml.safe_dump(spec))
    storage = tmp_path / "store"
    args = [sys.executable, "-m", "raysweep.launch", str(small), "--storage", str(storage), "--address", ray_cluster]

    # a reader loops over the tables the whole time the sweep runs and must never fail
    reader_errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                if (storage / "crash" / "trials").exists():
                    ds.dataset(storage / "crash" / "trials", format="parquet").to_table()
                    read_trials(storage / "crash")
                    read_curves(storage / "crash")
            except Exception as exc:  # noqa: BLE001 - the test collects every failure
                reader_errors.append(repr(exc))
            time.sleep(0.01)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and read_trials(storage / "crash").num_rows < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    before = set(read_trials(storage / "crash").column("config_key").to_pylist())
    assert 3 <= len(before) < len(etas), "kill the driver mid-sweep"
    etas_before = {r["eta"] for r in read_trials(storage / "crash").to_pylist()}
    time.sleep(2.0)  # the killed driver's trials are torn down by Ray
    mark = time.time()

    assert subprocess.run(args, cwd=ROOT, capture_output=True, timeout=400).returncode == 0
    after = read_trials(storage / "crash").to_pandas()
    assert len(after) == len(etas) and after.config_key.is_unique
    rerun = [r["eta"] for r in executions(mark, dim=9)]
    assert not etas_before & set(rerun), "a config with a row ran again"
    curves = read_curves(storage / "crash").to_pandas()
    assert not curves.duplicated(["config_key", "step"]).any()
    assert set(curves.config_key) == set(after.config_key)

    # a larger space in the same sweep: only the new points run
    bigger = dict(spec)
    bigger["space"] = {**spec["space"], "eta": etas + [2.0**-12, 2.0**-13]}
    small.write_text(yaml.safe_dump(bigger))
    mark = time.time()
    assert subprocess.run(args, cwd=ROOT, capture_output=True, timeout=400).returncode == 0
    assert sorted(r["eta"] for r in executions(mark, dim=9)) == [2.0**-13, 2.0**-12]
    assert read_trials(storage / "crash").num_rows == len(etas) + 2
    stop.set()
    thread.join()
    assert not reader_errors, reader_errors[:3]


def test_changed_experiment_in_the_same_sweep_is_refused(ray_cluster, tmp_path, run_cli):
    path = write_space(tmp_path / "s.yaml", "same")
    assert run_cli("raysweep.launch", str(path), "--storage", str(tmp_path), "--address", ray_cluster).returncode == 0
    spec = yaml.safe_load(path.read_text())
    spec["experiment"]["steps"] = 80
    path.write_text(yaml.safe_dump(spec))
    proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path), "--address", ray_cluster)
    assert proc.returncode == 2 and "experiment" in proc.stderr
