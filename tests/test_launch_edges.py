"""The launcher's edges, tried as a careless or hostile user would: links out of the sweep folder, signals, bad
flags, missing data files, unparsable saved specs, retries of failed rows, resources no node holds, unreachable
storage or clusters, corrupt and foreign result files. Each refusal is one line, names the field or file, and
writes nothing outside the sweep; each landing is exactly once."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from raysweep import launch
from raysweep.analyze.load import find_sweeps
from raysweep.errors import NotASweepError
from raysweep.results import read_curves, read_trials
from tests.support import ROOT

pytestmark = pytest.mark.ray


def write_space(path: Path, name: str, experiment=None, **space) -> Path:
    spec = {
        "name": name,
        "experiment": {"family": "poly_online", "dim": 8, "n_train": 256, "steps": 60, "report_every": 20,
                       **(experiment or {})},
        "space": {"batch_size": [16], "eta": [0.25], "width": 16, "depth": 3, **space},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def run_main(*argv: str) -> tuple[int, str]:
    """``python -m raysweep.launch`` in this process (its Ray is the session's): exit code and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = launch.main(list(argv))
    return rc, err.getvalue()


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if not line.startswith("[raysweep")]
    assert len(lines) == 1, lines
    return lines[0]


# ------------------------------------------------------------------------------------------------ 1. links
def test_links_out_of_the_sweep_folder_are_refused_and_their_targets_untouched(ray_cluster, tmp_path):
    path = write_space(tmp_path / "s.yaml", "linked")
    victim = tmp_path / "precious.txt"
    victim.write_text("precious")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    sweep = tmp_path / "store" / "linked"
    sweep.mkdir(parents=True)
    (sweep / ".lock").symlink_to(victim)
    rc, err = run_main(str(path), "--storage", str(tmp_path / "store"), "--address", ray_cluster)
    assert rc == 1 and ".lock: a symbolic link" in one_line(err), err
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in sweep.iterdir()) == [".lock"]  # nothing written, not even spec.yaml

    (sweep / ".lock").unlink()
    (sweep / "trials").symlink_to(outside, target_is_directory=True)
    rc, err = run_main(str(path), "--storage", str(tmp_path / "store"), "--address", ray_cluster)
    assert rc == 1 and "trials: a symbolic link" in one_line(err), err
    assert list(outside.iterdir()) == []

    # the second line of defence: the lock is opened without following a link even if the first check missed it
    from raysweep import storage
    from raysweep.results import ResultsWriter

    (sweep / "trials").unlink()
    (sweep / ".lock").symlink_to(victim)
    original = storage.check_no_links
    storage.check_no_links = lambda location: None
    try:
        with pytest.raises(storage.StorageError, match="lock file"):
            ResultsWriter(sweep, "linked")
    finally:
        storage.check_no_links = original
    assert victim.read_text() == "precious"

    # a link at a final name is replaced by the new file, never written through
    (sweep / ".lock").unlink()
    (sweep / "spec.yaml").symlink_to(victim)
    storage.write_bytes_atomic(storage.resolve(sweep / "spec.yaml"), b"name: x\n")
    assert not (sweep / "spec.yaml").is_symlink() and victim.read_text() == "precious"


# ------------------------------------------------------------------------------------------------ 3. signals
def _wait_for_rows(sweep: Path, n: int, proc, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (sweep / "trials").is_dir() and read_trials(sweep).num_rows >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} rows landed (driver exit code {proc.poll()})")


def test_sigint_and_sigterm_land_what_finished_and_exit_130_and_143(ray_cluster, executions, tmp_path):
    etas = [2.0**-k for k in range(10)]
    path = write_space(tmp_path / "s.yaml", "signals", {"steps": 6000, "report_every": 2000, "dim": 12},
                       batch_size=[8], width=32, eta=etas)
    spec = yaml.safe_load(path.read_text())
    spec["fusion"] = {"enabled": False}
    spec["search"] = {"max_concurrent": 2}
    path.write_text(yaml.safe_dump(spec))
    sweep = tmp_path / "store" / "signals"
    args = [sys.executable, "-m", "raysweep.launch", str(path), "--storage", str(tmp_path / "store"),
            "--address", ray_cluster]
    landed = 0
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        _wait_for_rows(sweep, landed + 1, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == code, err[-3000:]
        message = err.strip().splitlines()[-1]
        assert message.startswith(f"interrupted ({sig.name}): ") and "relaunch the same command" in message, message
        assert "Traceback" not in err
        trials = read_trials(sweep).to_pandas()
        # finished outcomes only: a trial torn down by the signal is neither pruned nor failed, it has no row
        assert trials.config_key.is_unique and set(trials.status) <= {"completed", "diverged"}, trials.status
        assert landed < len(trials) < len(etas), "the signal must land mid-sweep"
        assert f"{len(trials)} of {len(etas)} configurations have a row" in message
        entry = json.loads((sweep / "manifest.json").read_text())["launches"][-1]  # the launch records its end
        assert entry["interrupted"] == sig.name and entry["end"] and entry["error"] is None
        assert sum(entry["counts"].values()) == len(trials) - landed
        landed = len(trials)
    before = set(read_trials(sweep).column("config_key").to_pylist())
    etas_before = {r["eta"] for r in read_trials(sweep).to_pylist()}
    time.sleep(2.0)
    mark = time.time()
    assert subprocess.run(args, cwd=ROOT, capture_output=True, timeout=400).returncode == 0
    after = read_trials(sweep).to_pandas()
    assert len(after) == len(etas) and after.config_key.is_unique and before <= set(after.config_key)
    assert not etas_before & {r["eta"] for r in executions(mark, dim=12)}, "a config with a row ran again"
    curves = read_curves(sweep).to_pandas()
    assert not curves.duplicated(["config_key", "step"]).any() and set(curves.config_key) == set(after.config_key)


def test_sigterm_to_the_process_group_of_an_embedded_ray_still_lands_and_exits_143(tmp_path):
    """SIGTERM to the whole group (what a batch scheduler sends) reaches the embedded Ray's processes too: they
    ignore it (else the raylet's death would end the driver with Ray's exit 1), and the driver lands and exits
    143."""
    path = write_space(tmp_path / "s.yaml", "group", {"steps": 4000, "report_every": 1000},
                       batch_size=[8], width=32, eta=[2.0**-k for k in range(8)])
    spec = yaml.safe_load(path.read_text())
    spec["fusion"] = {"enabled": False}
    path.write_text(yaml.safe_dump(spec))
    sweep = tmp_path / "store" / "group"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "raysweep.launch", str(path), "--storage", str(tmp_path / "store"),
                             "--num-cpus", "2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)
    _wait_for_rows(sweep, 1, proc)
    sent = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert time.time() - sent < 40
    assert err.strip().splitlines()[-1].startswith("interrupted (SIGTERM): ")
    trials = read_trials(sweep).to_pandas()
    assert len(trials) >= 1 and trials.config_key.is_unique and set(trials.status) <= {"completed", "diverged"}
    entry = json.loads((sweep / "manifest.json").read_text())["launches"][-1]  # recorded before the forced exit
    assert entry["interrupted"] == "SIGTERM" and entry["end"] and sum(entry["counts"].values()) <= len(trials)


# ------------------------------------------------------------------------------------------- 5. flags, data
def test_bad_flags_exit_2_before_anything_is_written_or_imported(tmp_path):
    path = write_space(tmp_path / "s.yaml", "flags")
    cases = {
        "num_cpus_negative": (["--num-cpus", "-1"], "--num-cpus"),
        "num_cpus_zero": (["--num-cpus", "0"], "--num-cpus"),
        "num_gpus_negative": (["--num-gpus", "-1"], "--num-gpus"),
        "num_gpus_nan": (["--num-gpus", "nan"], "--num-gpus"),
        "address_not_a_host": (["--address", "not a host"], "--address"),
        "address_bad_port": (["--address", "10.0.0.5:99999"], "--address"),
        "storage_empty": (["--storage", ""], "--storage"),
        "name_empty": (["--name", ""], "--name"),
        "name_300": (["--name", "a" * 300], "--name"),
        "name_trials": (["--name", "trials"], "--name"),
        "max_concurrent_zero": (["--max-concurrent", "0"], "--max-concurrent"),
    }
    script = (
        "import contextlib, io, json, sys, raysweep.launch as L\n"
        "out = {}\n"
        "for label, extra in json.loads(sys.argv[1]).items():\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        rc = L.main([sys.argv[2], '--storage', sys.argv[3]] + extra)\n"
        "    out[label] = [rc, err.getvalue()]\n"
        "print(json.dumps({'results': out, 'ray': 'ray' in sys.modules, 'torch': 'torch' in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, json.dumps({k: v for k, (v, _) in cases.items()}),
                           str(path), str(tmp_path / "results")], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ray"] is False and report["torch"] is False
    for label, (_, flag) in cases.items():
        rc, message = report["results"][label]
        assert rc == 2 and one_line(message).startswith(f"error: {flag}"), (label, rc, message)
    assert not (tmp_path / "results").exists()


def _npz(path: Path, n_train: int = 40, n_test: int = 20, **override) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": np.arange(n_train) % 10,
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": np.arange(n_test) % 10,
    }
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def test_data_files_are_checked_before_ray_starts(tmp_path):
    good = _npz(tmp_path / "good.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    shapes = _npz(tmp_path / "shapes.npz", x_train=np.zeros((40, 27, 28), np.uint8))
    labels = _npz(tmp_path / "labels.npz", y_train=np.arange(40) % 12)
    missing_key = tmp_path / "missing_key.npz"
    np.savez(missing_key, x_train=np.zeros((4, 784), np.uint8))
    specs = {}
    for label, family, data_path, extra in (
        ("missing", "mnist1m", tmp_path / "nope.npz", {}),
        ("truncated", "mnist1m", truncated, {}),
        ("shapes", "mnist1m", shapes, {}),
        ("labels", "mnist1m", labels, {}),
        ("missing_key", "mnist", missing_key, {}),
        ("idx_folder", "mnist", tmp_path, {}),
        ("too_many", "mnist1m_sampled", good, {"max_train_samples": 41}),
        ("good", "mnist1m_sampled", good, {"max_train_samples": 20}),
    ):
        path = tmp_path / f"{label}.yaml"
        path.write_text(yaml.safe_dump({
            "name": label, "experiment": {"family": family, "path": str(data_path), "epochs": 1, **extra},
            "space": {"batch_size": [4], "eta": [0.1], "width": 8, "loss": "xent"}}))
        specs[label] = str(path)
    script = (
        "import contextlib, io, json, sys, raysweep.launch as L\n"
        "out = {}\n"
        "ray = False\n"
        "for label, path in json.loads(sys.argv[1]).items():\n"
        "    ray = ray or 'ray' in sys.modules\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
        "        rc = L.main([path, '--storage', sys.argv[2], '--dry-run'])\n"
        "    out[label] = [rc, err.getvalue()]\n"
        "print(json.dumps({'results': out, 'ray': ray}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(specs), str(tmp_path / "results")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ray"] is False  # every bad file is found before Ray is even imported (the good one runs last)
    expected = {"missing": "no file", "truncated": "cannot read", "shapes": r"x_train must be \[n, 28, 28\]",
                "labels": "labels must be in 0..9", "missing_key": "lacks", "idx_folder": "no file",
                "too_many": "max_train_samples must be <= 40"}
    import re

    for label, pattern in expected.items():
        rc, message = report["results"][label]
        line = one_line(message)
        field = "experiment.max_train_samples" if label == "too_many" else "experiment.path"
        assert rc == 2 and line.startswith(f"error: {field}: ") and re.search(pattern, line), (label, message)
    assert report["results"]["good"][0] == 0
    assert not (tmp_path / "results").exists()


def test_a_saved_spec_that_does_not_read_back_is_named(ray_cluster, tmp_path):
    path = write_space(tmp_path / "s.yaml", "saved")
    sweep = tmp_path / "store" / "saved"
    sweep.mkdir(parents=True)
    (sweep / "spec.yaml").write_text("name: saved\nexperiment: [this is not\n")
    rc, err = run_main(str(path), "--storage", str(tmp_path / "store"), "--address", ray_cluster)
    line = one_line(err)
    assert rc == 2 and f"{sweep / 'spec.yaml'}: the spec saved by an earlier launch" in line, err
    assert not (sweep / "trials").exists()


def test_retry_failed_runs_failures_outside_the_configuration_again_exactly_once(ray_cluster, exec_log, executions,
                                                                                 tmp_path):
    # B = 128 > 64 training samples: infeasible, the configuration's own failure; a fault injected into the next
    # B = 16 bundle of this experiment (tests/support/workers/sitecustomize.py) is a failure outside it
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "retry",
        "experiment": {"family": "poly_fixed", "n_train": 64, "epochs": 2, "report_every": 2, "dim": 11},
        "space": {"batch_size": [16, 128], "eta": [0.25, 0.5], "width": 16, "depth": 3},
        "fusion": {"enabled": False},
    }))
    (exec_log / "fault-11-16").write_text("")
    sweep = tmp_path / "store" / "retry"
    common = [str(path), "--storage", str(tmp_path / "store"), "--address", ray_cluster]
    assert run_main(*common)[0] == 0
    rows = read_trials(sweep).to_pandas().set_index("config_key")
    faulted = rows[rows.error.fillna("").str.startswith("OSError: injected fault")]
    assert len(rows) == 4 and len(faulted) == 1
    assert (rows[rows.batch_size == 128].error.str.startswith("InfeasibleError:")).all()

    assert run_main(*common)[0] == 0  # without the flag: every configuration has a row, nothing runs
    assert read_trials(sweep).num_rows == 4
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert launch.main(common + ["--retry-failed", "--dry-run"]) == 0
    assert "--retry-failed: 1 failed configurations would run again" in out.getvalue()

    mark = time.time()
    rc, err = run_main(*common, "--retry-failed")
    assert rc == 0 and "--retry-failed: 1 failed configurations run again" in err
    ran = executions(mark, dim=11)
    assert [(r["batch_size"], r["eta"]) for r in ran] == [(16, faulted.iloc[0].eta)]
    after = read_trials(sweep).to_pandas()
    assert len(after) == 4 and after.config_key.is_unique
    assert after.set_index("config_key").loc[faulted.index[0]].status == "completed"
    assert (after[after.batch_size == 128].status == "failed").all()
    curves = read_curves(sweep).to_pandas()
    assert not curves.duplicated(["config_key", "step"]).any()
    assert curves[curves.config_key == faulted.index[0]].step.tolist() == sorted(
        curves[curves.config_key == faulted.index[0]].step)


def test_retry_failed_is_refused_for_guided_searches(tmp_path):
    path = write_space(tmp_path / "s.yaml", "guided", eta={"pow2": [-4, 0]})
    spec = yaml.safe_load(path.read_text())
    spec["search"] = {"algorithm": "eta_stability_depth", "stability_depth": 2}
    path.write_text(yaml.safe_dump(spec))
    rc, err = run_main(str(path), "--storage", str(tmp_path / "r"), "--retry-failed", "--dry-run")
    assert rc == 2 and one_line(err).startswith("error: --retry-failed: not for eta_stability_depth")


# ------------------------------------------------------------------------------------------------ 7. hangs
def test_a_trial_larger_than_every_node_of_an_embedded_ray_is_refused_with_both_numbers(tmp_path, run_cli):
    path = write_space(tmp_path / "s.yaml", "big")
    spec = yaml.safe_load(path.read_text())
    spec["resources"] = {"cpus_per_trial": 3}
    path.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.time()
    proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path / "r"), "--num-cpus", "2", env=env,
                   timeout=180)
    line = one_line(proc.stderr)
    assert proc.returncode == 1 and "resources.cpus_per_trial: a trial asks for 3 CPU but the largest node has 2 " \
        "CPU" in line, proc.stderr
    assert time.time() - started < 120
    assert read_trials(tmp_path / "r" / "big").num_rows == 0


def test_resources_that_fit_no_node_are_named():
    from raysweep.plan import unfit_resources

    nodes = [{"CPU": 8.0, "GPU": 0.0, "memory": 2**34}, {"CPU": 1.0, "GPU": 1.0, "memory": 2**33}]
    assert unfit_resources([{"cpu": 4, "gpu": 0.0}, {"cpu": 1, "gpu": 0.5}], nodes) is None
    assert unfit_resources([{"gpu": 2}], nodes) == (
        "resources.gpus_per_trial: a trial asks for 2 GPU but the largest node has 1 GPU")
    assert unfit_resources([{"cpu": 1, "memory": 2**35}], nodes) == (
        "memory: a trial asks for 32.00 GiB of memory but the largest node has 16.00 GiB of memory")
    assert unfit_resources([{"cpu": 4, "gpu": 1}], nodes) == (
        "a trial asks for 4 CPU, 1 GPU, which no single node holds at once")
    assert unfit_resources([{"cpu": 1}], []) is not None


def test_unreachable_cluster_and_storage_fail_within_seconds(tmp_path, run_cli):
    path = write_space(tmp_path / "s.yaml", "unreachable")
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.time()
    proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path / "r"), "--address", f"127.0.0.1:{port}",
                   timeout=60)
    assert proc.returncode == 1 and "cannot reach a Ray cluster there" in one_line(proc.stderr), proc.stderr
    assert time.time() - started < 30 and not (tmp_path / "r").exists()

    # an object store that does not answer (a non-routable endpoint): a one-line error after the timeout
    env = {"RAYSWEEP_STORAGE_TIMEOUT_S": "2", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_EC2_METADATA_DISABLED": "true"}
    started = time.time()
    proc = run_cli("raysweep.launch", str(path), "--storage",
                   "s3://bucket/prefix?endpoint_override=10.255.255.1:9000&scheme=http&connect_timeout=60",
                   "--dry-run", env=env, timeout=120)
    assert proc.returncode == 1 and one_line(proc.stderr).startswith("error: --storage s3://bucket/prefix"), proc.stderr
    assert time.time() - started < 60


# ------------------------------------------------------------------------------------------ 8. corrupt files
def test_corrupt_and_foreign_result_files_are_named_and_quarantined(ray_cluster, tmp_path, run_cli):
    path = write_space(tmp_path / "s.yaml", "corrupt", eta=[0.125, 0.25, 0.5])
    spec = yaml.safe_load(path.read_text())
    spec["fusion"] = {"enabled": False}
    path.write_text(yaml.safe_dump(spec))
    store = tmp_path / "store"
    common = [str(path), "--storage", str(store), "--address", ray_cluster]
    assert run_main(*common)[0] == 0
    sweep = store / "corrupt"
    victim = sorted((sweep / "trials").glob("*.parquet"))[0]
    n_victim = read_trials(sweep).num_rows - sum(
        pd.read_parquet(p).shape[0] for p in (sweep / "trials").glob("*.parquet") if p != victim)
    victim.write_bytes(victim.read_bytes()[:100])  # truncated

    for extra in ([], ["--dry-run"]):
        rc, err = run_main(*common, *extra)
        line = one_line(err)
        assert rc == 1 and f"{victim}: not a readable Parquet file" in line and "--quarantine" in line, err
    proc = run_cli("raysweep.analyze", str(store))
    assert proc.returncode == 1 and str(victim) in one_line(proc.stderr) and "Traceback" not in proc.stderr

    rc, err = run_main(*common, "--quarantine")
    assert rc == 0 and f"quarantined trials/{victim.name}" in err
    assert (sweep / "quarantine" / "trials" / victim.name).exists() and not victim.exists()
    trials = read_trials(sweep).to_pandas()
    assert len(trials) == 3 and trials.config_key.is_unique and n_victim >= 1
    curves = read_curves(sweep).to_pandas()
    assert not curves.duplicated(["config_key", "step"]).any() and set(curves.config_key) == set(trials.config_key)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (sweep / "analysis").symlink_to(elsewhere, target_is_directory=True)  # the analysis never follows a link out
    proc = run_cli("raysweep.analyze", str(sweep))
    assert proc.returncode == 1 and "analysis: a symbolic link" in one_line(proc.stderr), proc.stderr
    assert list(elsewhere.iterdir()) == []
    (sweep / "analysis").unlink()

    foreign = sweep / "trials" / "part-foreign.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(foreign)
    rc, err = run_main(*common)
    assert rc == 1 and f"{foreign}: not a raysweep trials file: no config_key, status column" in one_line(err)
    pd.DataFrame({"config_key": ["k"], "status": [3]}).to_parquet(foreign)
    rc, err = run_main(*common)
    assert rc == 1 and "column 'status' is int64, not string" in one_line(err)
    foreign.unlink()

    # a sweep named "trials" beside others (made before the name was refused) hides none of them
    import shutil

    shutil.copytree(sweep, store / "trials")
    assert [p.name for p in find_sweeps(store)] == ["corrupt", "trials"]
    with pytest.raises(NotASweepError, match="storage root holding the sweeps corrupt, trials"):
        read_trials(store)
