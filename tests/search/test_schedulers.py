"""Schedulers end to end: a grid with etas that blow up to NaN, etas too small to learn, and good ones. The NaN
trials stop themselves at their first report (diverged, never handed to the scheduler); the finite bad ones are
stopped by the scheduler and still land, as pruned, with their curves so far."""

from __future__ import annotations

import math

import pytest

from raysweep.results import read_curves, read_trials
from tests.support.search import write_spec

pytestmark = pytest.mark.ray

GOOD, TINY_ETAS, NAN_ETAS = [0.25], [1e-4, 2e-4], [1e6, 1e5]


@pytest.mark.parametrize("scheduler", [{"type": "asha", "grace_period": 20, "reduction_factor": 2},
                                       {"type": "median", "grace_period": 20, "min_samples_required": 1}],
                         ids=["asha", "median"])
def test_scheduler_prunes_bad_finite_trials_and_nan_trials_diverge(ray_cluster, tmp_path, scheduler, run_cli):
    # one trial at a time, the good eta first: the scheduler has its numbers before the bad ones report
    search = {"max_concurrent": 1, "scheduler": scheduler}
    path = write_spec(tmp_path / "s.yaml", "sched", search, eta=GOOD + TINY_ETAS + NAN_ETAS)
    proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path), "--address", ray_cluster, "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = read_trials(tmp_path / "sched").to_pandas().set_index("eta")
    curves = read_curves(tmp_path / "sched").to_pandas()
    n_reports = curves.groupby("config_key").size()
    assert len(rows) == 5 and rows.config_key.is_unique

    assert rows.loc[GOOD[0]].status == "completed" and rows.loc[GOOD[0]].steps == 200
    for eta in NAN_ETAS:  # stopped at the first report (step 20), which found the non-finite loss
        row = rows.loc[eta]
        assert row.status == "diverged" and 1 <= row.diverged_step <= 20 and row.steps == 20
        assert not math.isfinite(row.final_train_loss) and n_reports[row.config_key] == 1
    for eta in TINY_ETAS:  # finite but bad: the scheduler's decision, landed as pruned with its curve so far
        row = rows.loc[eta]
        assert row.status == "pruned" and row.steps < 200 and math.isfinite(row.final_train_loss)
        assert row.diverged_step != row.diverged_step and n_reports[row.config_key] == row.steps // 20
        assert row.n_bundle_members == 1  # schedulers run unfused
    assert "2 pruned" in proc.stdout and "2 diverged" in proc.stdout


def test_synchronous_hyperband_pauses_and_resumes_trials_from_checkpoints_exactly_once(ray_cluster, executions,
                                                                                      tmp_path, run_cli):
    """hyperband_sync (time in reports: 4 reports, reduction factor 2): the second bracket's trials pause at their
    second report until the rung is full; the survivors resume from the checkpoint saved at that report (the side
    channel shows where the trainer resumed), the others land as pruned. Every configuration lands once, the
    resumed curves equal uninterrupted runs bit for bit, and no checkpoint is left."""
    from raysweep.plan import build_plan
    from raysweep.search import planned_spec
    from raysweep.space import load_spec
    from raysweep.trial import run_bundle

    etas = [0.25, 0.1, 0.05, 0.2, 1e-4, 0.15]
    search = {"scheduler": {"type": "hyperband_sync", "reduction_factor": 2}}
    path = write_spec(tmp_path / "s.yaml", "hbs", search, {"steps": 80, "dim": 31}, eta=etas)
    proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path), "--address", ray_cluster, "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = read_trials(tmp_path / "hbs").to_pandas()
    assert sorted(rows.eta) == sorted(etas) and rows.config_key.is_unique
    assert set(rows.status) <= {"completed", "pruned"} and (rows.status == "pruned").any(), rows.status
    runs = executions(0.0, dim=31)
    resumed = {r["eta"]: r["resume_step"] for r in runs if r["resume_step"] > 0}
    assert resumed and set(resumed.values()) <= {20, 40, 60}, runs  # paused at a report, resumed right there
    curves = read_curves(tmp_path / "hbs").to_pandas()
    assert not curves.duplicated(["config_key", "step"]).any()
    spec = load_spec(path)
    plan, _ = build_plan(planned_spec(spec))  # one trial per configuration, as the scheduler ran them
    for bundle in plan.bundles.values():
        (point,) = bundle.points
        if point["eta"] not in resumed:
            continue
        reports: list[dict] = []
        run_bundle(plan, bundle, reports.append)
        want = [(c["step"], c["train_loss"], c["eval_loss"]) for r in reports for t in r["terminal"]
                for c in t["curves"]]
        got = curves[curves.config_key == bundle.keys[0]].sort_values("step")
        n = len(got)  # a pruned trial's curve stops where the scheduler stopped it
        assert list(zip(got.step, got.train_loss, got.eval_loss)) == want[:n] and n >= 2
    assert not (tmp_path / "hbs" / "checkpoints").exists() or not any((tmp_path / "hbs" / "checkpoints").iterdir())
