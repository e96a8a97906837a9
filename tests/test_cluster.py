"""Beyond one machine: a real two-node Ray cluster on this machine (launch/local_cluster.sh), attached to with
--address. The quickstart lands the same table as an embedded run and uses both nodes; losing a node mid-sweep
re-runs its trials on the head and lands every configuration exactly once; node-local storage on a multi-node
cluster is refused at once with the fix.

The cluster has its own temp dir, ports, auth token and process groups, so it coexists with the session's
in-process Ray (tests/conftest.py); its settings reach only the subprocesses given ``cluster.env``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raysweep.plan import build_plan
from raysweep.results import read_curves, read_trials
from raysweep.schema import TIMING_COLUMNS
from raysweep.space import parse_spec
from raysweep.trial import run_bundle
from tests.support import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.ray]

SCRIPT = ROOT / "launch" / "local_cluster.sh"
N_PORTS = 30  # the script's port block: BASE .. BASE + 29

# Loaded by the cluster's Ray worker processes only (through PYTHONPATH): log every configuration a worker starts
# training to <log dir>/exec-<pid>.jsonl (and the checkpoint step it resumes after), so that a test can tell which
# configuration runs on which node; then hold the trial RAYSWEEP_CLUSTER_HOLD_S seconds before it trains, and
# <log dir>/pace seconds after each report (results do not change). Why the hold: Tune reuses
# a finished trial's actor for the next trial and cancels an actor still starting, so short trials would all run on
# the first node whose worker came up; held trials outlast a worker's cold start and keep both nodes busy. It is
# also the window in which a test kills a node mid-trial.
HOOK = '''
import importlib.abc, importlib.util, json, os, sys, time

_log = os.environ.get("RAYSWEEP_CLUSTER_EXEC_LOG")
_hold = float(os.environ.get("RAYSWEEP_CLUSTER_HOLD_S", "0"))


def _patch(train):
    original = train.train_bundle

    def logged(task, experiment, points, **kwargs):
        resume = getattr(kwargs.get("resume"), "step", 0)  # the step the trainer resumes after (0: afresh)
        with open(os.path.join(_log, "exec-%d.jsonl" % os.getpid()), "a") as fh:
            for p in points:
                fh.write(json.dumps({"t": time.time(), "eta": p["eta"], "batch_size": p["batch_size"],
                                     "resume_step": resume}) + "\\n")
        time.sleep(_hold)
        try:  # <log dir>/pace: seconds to wait after each report (a test's long trial; results do not change)
            with open(os.path.join(_log, "pace")) as fh:
                pace = float(fh.read())
        except (OSError, ValueError):
            pace = 0.0
        for report in original(task, experiment, points, **kwargs):
            yield report
            time.sleep(pace)

    train.train_bundle = logged


class _PatchOnImport(importlib.abc.MetaPathFinder):  # lazily: a worker that never trains never imports torch
    def find_spec(self, name, path, target=None):
        if name != "raysweep.train":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if _log and any(a.endswith("default_worker.py") for a in sys.argv):
    sys.meta_path.insert(0, _PatchOnImport())
'''


class Cluster:
    def __init__(self, state: Path, port: int, env: dict):
        self.state, self.port, self.env = state, port, env
        self.address = f"127.0.0.2:{port}"
        self.exec_log = state / "exec"

    def script(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), command], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)

    def pgid(self, node: str) -> int:
        return int((self.state / f"{node}.pid").read_text())

    def launch(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "raysweep.launch", *args, "--address", self.address],
                                env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                **kwargs)

    def node_ids(self) -> dict[str, str]:
        """{node IP: node id} of the alive nodes, from a throwaway driver."""
        code = ("import json, ray; ray.init(address=%r, log_to_driver=False, logging_level='ERROR'); "
                "print(json.dumps({n['NodeManagerAddress']: n['NodeID'] for n in ray.nodes() if n['Alive']}))")
        out = subprocess.run([sys.executable, "-c", code % self.address], env=self.env, capture_output=True,
                             text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])


def _free_port_block() -> int:
    """A base port whose block of N_PORTS ports is free (Ray binds them on all interfaces)."""
    for _ in range(50):
        base = random.randrange(20000, 30000, 50)
        try:
            for port in range(base, base + N_PORTS):
                with socket.socket() as s:
                    s.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of ports for the local cluster")


@pytest.fixture(scope="module")
def cluster():
    """launch/local_cluster.sh start ... stop, always stopped (by its own process groups) even when a test fails."""
    if shutil.which("setsid") is None:
        pytest.skip("launch/local_cluster.sh needs setsid (util-linux)")
    state = Path(tempfile.mkdtemp(prefix="rsc-", dir="/tmp"))  # short: Ray's Unix sockets live under it
    hook = state / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    (state / "exec").mkdir()
    port = _free_port_block()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAYSWEEP_TEST"))}
    env.update({
        "RAYSWEEP_CLUSTER_DIR": str(state), "RAYSWEEP_CLUSTER_PORT": str(port),
        "RAYSWEEP_HEAD_CPUS": "2", "RAYSWEEP_WORKER_CPUS": "1",
        "RAYSWEEP_CLUSTER_EXEC_LOG": str(state / "exec"), "RAYSWEEP_CLUSTER_HOLD_S": "4",
        "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)]),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "PYTHON": sys.executable,
        # what `source $RAYSWEEP_CLUSTER_DIR/env` sets: the cluster's own auth token
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(state / "auth_token"),
        "RAY_DEDUP_LOGS": "0",
    })
    c = Cluster(state, port, env)
    try:
        started = c.script("start", timeout=180)
        logs = "".join(p.read_text()[-2000:] for p in state.glob("*.log"))
        assert started.returncode == 0, started.stderr + logs
        assert started.stdout.strip().splitlines()[-1] == c.address
        yield c
    finally:
        c.script("stop", timeout=60)
        shutil.rmtree(state, ignore_errors=True)


def _table(sweep_dir: Path) -> pd.DataFrame:
    df = read_trials(sweep_dir).to_pandas().drop(columns=list(TIMING_COLUMNS))
    return df.sort_values("config_key").reset_index(drop=True)


def test_the_quickstart_on_two_nodes_lands_the_embedded_table(cluster, tmp_path):
    # the embedded run (its own local Ray) and the cluster run go side by side. Fused, the quickstart is 3 Ray
    # trials of 1 CPU; held 4 s each on the cluster (see HOOK), they run at once on its 3 CPUs (2 on the head, 1 on
    # the second node)
    embedded = subprocess.Popen(
        [sys.executable, "-m", "raysweep.launch", "search_spaces/quickstart.yaml", "--storage", str(tmp_path / "emb"),
         "--num-cpus", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAYSWEEP_TEST")},
    )
    attached = cluster.launch("search_spaces/quickstart.yaml", "--storage", str(tmp_path / "cl"), "--shared-storage")
    out, err = attached.communicate(timeout=300)
    assert attached.returncode == 0, err
    e_out, e_err = embedded.communicate(timeout=300)
    assert embedded.returncode == 0, e_err

    # the driver says where it runs: attached from this host, on the head's raylet
    assert f"attached to {cluster.address} from host {socket.gethostname()} (the head node)" in out
    assert f"[raysweep attached to {cluster.address}" in err
    assert "embedded local Ray on host" in e_out

    cl, emb = _table(tmp_path / "cl" / "quickstart"), _table(tmp_path / "emb" / "quickstart")
    assert len(cl) == 24 and cl.config_key.is_unique
    pd.testing.assert_frame_equal(cl, emb)
    used = read_trials(tmp_path / "cl" / "quickstart").to_pandas().groupby("node_id").size().to_dict()
    assert set(used) == set(cluster.node_ids().values()), used  # trials ran on both nodes


def test_a_local_path_on_a_multi_node_cluster_is_refused_at_once(cluster, tmp_path):
    started = time.perf_counter()
    proc = cluster.launch("search_spaces/quickstart.yaml", "--storage", str(tmp_path / "r"))
    out, err = proc.communicate(timeout=60)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 1, err
    assert "2 nodes" in err and "--shared-storage" in err and "s3://" in err, err
    assert elapsed < 5.0, elapsed
    assert not (tmp_path / "r").exists()  # nothing written


def _running_on(cluster: Cluster, node: str) -> float | None:
    """The eta a Ray worker of ``node`` is training right now (the last one its process logged), if any."""
    sid = cluster.pgid(node)
    for f in cluster.exec_log.glob("exec-*.jsonl"):
        pid = int(f.stem.split("-")[1])
        try:
            if os.getsid(pid) != sid:
                continue
        except ProcessLookupError:
            continue
        lines = f.read_text().splitlines()
        if lines:
            return json.loads(lines[-1])["eta"]
    return None


def test_losing_a_node_mid_sweep_reruns_its_trials_and_lands_each_config_once(cluster, tmp_path):
    # The last test of the module: it kills the second node (and brings a fresh one back for any later use).
    # Its trial is killed past its first checkpoint (every 200 steps; paced by the HOOK: 0.25 s a report) and
    # resumes on the head from its latest checkpoint, with the curve of an uninterrupted run.
    etas = [0.01, 0.02, 0.04, 0.08]
    spec = {
        "name": "nodeloss",
        "experiment": {"family": "poly_online", "dim": 16, "n_train": 1024, "steps": 1200, "report_every": 100},
        "space": {"batch_size": [32], "eta": etas, "width": 64, "depth": 3},
        "fusion": {"enabled": False},
        "checkpoint": {"every_s": None, "every_steps": 200},
    }
    path = tmp_path / "nodeloss.yaml"
    path.write_text(yaml.safe_dump(spec))
    bundles = {p["eta"]: b.bundle_id for b in build_plan(parse_spec(spec))[0].bundles.values() for p in b.points}
    sweep = tmp_path / "r" / "nodeloss"
    nodes = cluster.node_ids()
    head_id, worker_id = nodes["127.0.0.2"], nodes["127.0.0.3"]
    (cluster.exec_log / "pace").write_text("0.25")
    mark = time.time()
    proc = cluster.launch(str(path), "--storage", str(tmp_path / "r"), "--shared-storage")
    try:
        lost = None
        deadline = time.time() + 120
        while lost is None and time.time() < deadline and proc.poll() is None:
            lost = _running_on(cluster, "worker")
            time.sleep(0.1)
        assert lost is not None, "no trial started on the second node"
        while time.time() < deadline and not list((sweep / "checkpoints" / bundles[lost]).glob("*/manifest.json")):
            time.sleep(0.05)
        saved = sorted(int(p.parent.name) for p in (sweep / "checkpoints" / bundles[lost]).glob("*/manifest.json"))
        assert saved, "the trial on the second node saved no checkpoint"
        killed = cluster.script("kill-worker")
        assert killed.returncode == 0, killed.stderr
        out, err = proc.communicate(timeout=300)
    finally:
        (cluster.exec_log / "pace").unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err

    sweep = tmp_path / "r" / "nodeloss"
    df = read_trials(sweep).to_pandas()
    assert sorted(df.eta) == etas and df.config_key.is_unique  # every configuration, exactly once
    assert (df.status == "completed").all(), df[["eta", "status", "error"]]  # a lost node is not a failed trial
    row = df.set_index("eta").loc[lost]
    assert row.node_id == head_id != worker_id  # the lost trial ran again, on the head
    runs = [json.loads(line) for f in cluster.exec_log.glob("exec-*.jsonl") for line in f.read_text().splitlines()]
    assert sum(1 for r in runs if r["eta"] == lost and r["t"] >= mark) >= 2  # started on the worker, re-run
    again = max((r for r in runs if r["eta"] == lost and r["t"] >= mark), key=lambda r: r["t"])
    assert again["resume_step"] >= saved[-1] > 0  # ... from its checkpoint, not from step 0
    curves = read_curves(sweep).to_pandas()
    assert not curves.duplicated(["config_key", "step"]).any()
    assert set(curves.config_key) == set(df.config_key)
    assert "4 configurations landed (4 completed" in out
    # the resumed curve is the uninterrupted one, bit for bit; no checkpoint outlives its landed bundle
    plan, _ = build_plan(parse_spec({**spec, "checkpoint": False}))
    (bundle,) = [b for b in plan.bundles.values() if b.points[0]["eta"] == lost]
    reports: list[dict] = []
    run_bundle(plan, bundle, reports.append)
    (item,) = [t for r in reports for t in r["terminal"]]
    got = curves[curves.config_key == bundle.keys[0]].sort_values("step")
    assert list(got.step) == [c["step"] for c in item["curves"]]
    assert list(got.train_loss) == [c["train_loss"] for c in item["curves"]]
    assert list(got.eval_loss) == [c["eval_loss"] for c in item["curves"]]
    assert not (sweep / "checkpoints").exists() or not any((sweep / "checkpoints").iterdir())
