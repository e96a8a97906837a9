"""The study's eta-scan shortcuts end to end: exactly the etas the rule keeps run, largest first, and in that
order per column; the skipped ones get no row and the summary counts them; a relaunch runs nothing again."""

from __future__ import annotations

import time

import pytest

from raysweep.results import read_trials
from tests.support.search import write_spec

pytestmark = pytest.mark.ray

# At width 16 (muP SGD, poly teacher D=8) etas 1e6 and 1e5 blow up within 20 steps; 0.25 .. 0.01 train stably.
ETAS = [0.01, 1e5, 0.25, 0.025, 0.05, 1e6, 0.1]  # any order: the scan sorts them, largest first


@pytest.fixture
def run(run_cli):
    """``run(tmp_path, ray_cluster, name, search, dim, **space)``: launch a tiny spec; return its output."""

    def run(tmp_path, ray_cluster, name, search, dim, **space):
        path = write_spec(tmp_path / f"{name}.yaml", name, search, experiment={"steps": 60, "dim": dim}, **space)
        proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path), "--address", ray_cluster, "--quiet")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    return run


def test_eta_stability_depth_skips_what_the_rule_skips(ray_cluster, executions, run, tmp_path):
    mark = time.time()
    out = run(tmp_path, ray_cluster, "depth", {"algorithm": "eta_stability_depth", "stability_depth": 2}, dim=5,
              batch_size=[8, 32], eta=ETAS)
    # per column, scan 1e6, 1e5 (diverged: the count stays 0), 0.25, 0.1 (two stable in a row): stop there
    expected = {1e6: "diverged", 1e5: "diverged", 0.25: "completed", 0.1: "completed"}
    rows = read_trials(tmp_path / "depth").to_pandas()
    for b in (8, 32):
        mine = rows[rows.batch_size == b]
        assert dict(zip(mine.eta, mine.status)) == expected, b
        ran = [r["eta"] for r in sorted(executions(mark, dim=5, batch_size=b), key=lambda r: r["t"])]
        assert ran == [1e6, 1e5, 0.25, 0.1], b  # in scan order, one at a time, nothing skipped ran
    assert "6 configurations skipped by the eta_stability_depth rule" in out

    mark = time.time()  # the same command again: every column is settled, nothing runs, the count holds
    out = run(tmp_path, ray_cluster, "depth", {"algorithm": "eta_stability_depth", "stability_depth": 2}, dim=5,
              batch_size=[8, 32], eta=ETAS)
    assert executions(mark, dim=5) == [] and read_trials(tmp_path / "depth").num_rows == 8
    assert "6 configurations skipped" in out


def test_decades_below_stable_runs_k_decades_below_the_first_stable_eta(ray_cluster, executions, run, tmp_path):
    mark = time.time()
    out = run(tmp_path, ray_cluster, "decades", {"algorithm": "eta_decades_below_stable", "decades_below_stable": 1},
              dim=6, batch_size=[8], eta=ETAS)
    # 1e6, 1e5 diverge; 0.25 is the first stable eta: run down to 0.025 (included), skip 0.01
    rows = read_trials(tmp_path / "decades").to_pandas()
    assert sorted(rows.eta, reverse=True) == [1e6, 1e5, 0.25, 0.1, 0.05, 0.025]
    ran = [r["eta"] for r in sorted(executions(mark, dim=6), key=lambda r: r["t"])]
    assert ran[:3] == [1e6, 1e5, 0.25] and sorted(ran[3:]) == [0.025, 0.05, 0.1]
    assert "1 configurations skipped by the eta_decades_below_stable rule" in out
