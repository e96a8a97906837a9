"""Where the driver runs, as the progress line says it: attached from a host, or on the head as a Ray job; and
Ray Client addresses, which cannot work (Tune would run the Parquet writer on the cluster), are refused.
(The attached wording is also checked end to end on two nodes in tests/test_cluster.py.)"""

from __future__ import annotations

import json

from raysweep import driver


def test_placement_says_which_host_and_node_or_which_job():
    assert driver.placement_text("10.0.0.5:6379", "laptop", False, None) == (
        "attached to 10.0.0.5:6379 from host laptop (a worker node)")
    assert driver.placement_text("10.0.0.5:6379", "head-1", True, None) == (
        "attached to 10.0.0.5:6379 from host head-1 (the head node)")
    # `ray job submit` starts the entrypoint with the job's config in RAY_JOB_CONFIG_JSON_ENV_VAR (and RAY_ADDRESS)
    job = json.dumps({"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_abc"}})
    assert driver.placement_text("10.0.0.5:6379", "head-1", True, job) == (
        "on the head node as a Ray job (raysubmit_abc)")
    assert driver.placement_text("auto", "w", False, "{}") == "on a worker node as a Ray job"


def test_ray_client_addresses_are_refused_before_ray_starts(tmp_path, run_cli):
    proc = run_cli("raysweep.launch", "search_spaces/quickstart.yaml", "--storage", str(tmp_path),
                   "--address", "ray://127.0.0.1:10001")
    assert proc.returncode == 1 and "Ray Client (ray://) is not supported" in proc.stderr
    assert "ray job submit" in proc.stderr and not list(tmp_path.iterdir())
