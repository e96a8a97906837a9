"""Shared fixtures. Ray starts once per test session (2 CPUs, 4 logical GPUs, no dashboard); CLI tests attach to it
with ``--address`` so that each launch does not pay Ray's start-up."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from tests.support import ROOT, WORKERS

# tests are timed on 2 loaded cores: one thread per process avoids oversubscription (and matches a Ray trial)
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Back to one thread before every test: an in-process trial sets torch's threads to its cpus_per_trial."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _environment_restored():
    """What a test changes in os.environ, or the code it runs in-process (``launch.main`` sets Tune's variables),
    is undone after it."""
    before = dict(os.environ)
    yield
    for name in set(os.environ) - set(before):
        del os.environ[name]
    for name, value in before.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


@pytest.fixture(scope="session")
def exec_log(tmp_path_factory) -> Path:
    """A folder where Ray workers log every configuration they train (see tests/support/workers/sitecustomize.py)."""
    return tmp_path_factory.mktemp("exec-log")


@pytest.fixture(scope="session")
def executions(exec_log):
    """``executions(since=0.0, **match)``: the configurations the Ray workers trained since ``since`` (a
    time.time()), from the side channel of tests/support/workers/sitecustomize.py, filtered by the axis values in
    ``match``."""

    def executions(since: float = 0.0, **match) -> list[dict]:
        rows = []
        for f in exec_log.glob("exec-*.jsonl"):
            for line in f.read_text().splitlines():
                row = json.loads(line)
                if row["t"] >= since and all(row.get(k) == v for k, v in match.items()):
                    rows.append(row)
        return rows

    return executions


@pytest.fixture(scope="session")
def ray_cluster(exec_log):
    """The session's Ray: yields its address. Workers get the execution side channel through PYTHONPATH; the
    environment is restored when the session ends."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAYSWEEP_TEST_EXEC_LOG", str(exec_log))
        mp.setenv("PYTHONPATH", os.pathsep.join(
            [str(WORKERS), str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        if "RAY_DEDUP_LOGS" not in os.environ:
            mp.setenv("RAY_DEDUP_LOGS", "0")
        ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(module, *args, timeout=600, env=None)``: run ``python -m module args`` from the repository in a
    subprocess (the test's environment plus ``env``); return the CompletedProcess (text)."""

    def run_cli(module: str, *args: str, timeout: float = 600, env: dict | None = None):
        full_env = {**os.environ, **(env or {})}
        return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                              timeout=timeout, env=full_env, cwd=ROOT)

    return run_cli


@pytest.fixture(scope="session")
def quickstart_sweep(ray_cluster, tmp_path_factory, run_cli):
    """``(proc, sweep)``: ``python -m raysweep.launch search_spaces/quickstart.yaml`` run once for the session on its
    Ray, and the sweep folder it landed in (``<storage>/quickstart``). Tests read it and never change it (copy it
    first)."""
    storage = tmp_path_factory.mktemp("quickstart")
    proc = run_cli("raysweep.launch", "search_spaces/quickstart.yaml", "--storage", str(storage),
                   "--address", ray_cluster)
    return proc, storage / "quickstart"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 (never another interface); yields the environment that points at it."""
    if subprocess.run([sys.executable, "-c", "import moto.server, flask"], capture_output=True).returncode:
        pytest.skip('moto is not installed (pip install "moto[server]"): the s3:// tests need its local S3 server')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.1)
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
        admin = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                                  endpoint_override=f"127.0.0.1:{port}", allow_bucket_creation=True)
        admin.create_dir("raysweep")
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RAYSWEEP_LOCAL_DIR", str(tmp_path / "local"))
    return f"s3://raysweep/{tmp_path.name}"
