"""raysweep.callbacks without Ray: the driver lands every terminal row exactly once, even when Tune tells it twice;
nothing for a trial that has not finished; a lost trial's unfinished members as failed; and after a stop only what
finished.

The reports are real ones (:func:`raysweep.trial.run_bundle` on plans of :func:`raysweep.plan.build_plan`), fed to
:class:`raysweep.callbacks.ResultsCallback` through Tune's callback hooks with a stand-in for Tune's trial."""

from __future__ import annotations

import pytest

from raysweep.callbacks import ResultsCallback
from raysweep.plan import build_plan
from raysweep.results import ResultsWriter, read_curves, read_trials
from raysweep.space import parse_spec
from raysweep.trial import run_bundle

POLY = {"family": "poly_online", "dim": 8, "n_train": 256, "steps": 60, "report_every": 20}


class Trial:
    """What the callback reads of a Tune trial."""

    def __init__(self, trial_id: str, bundle_id: str, error_file: str | None = None):
        self.trial_id, self.config, self.error_file = trial_id, {"bundle": bundle_id}, error_file


def trained(fused: bool, **space):
    """(plan, [(Tune trial, its reports)]) for every bundle of a tiny poly_online sweep."""
    spec = parse_spec({"name": "cb", "experiment": POLY, "fusion": {"enabled": fused},
                       "space": {"batch_size": 8, "width": 16, "depth": 3, **space}})
    plan, _ = build_plan(spec)
    out = []
    for n, (bundle_id, bundle) in enumerate(plan.bundles.items()):
        reports = []
        run_bundle(plan, bundle, reports.append)
        out.append((Trial(f"t{n}", bundle_id), reports))
    return plan, out


@pytest.fixture(scope="module")
def bundle():
    """One fused trial: etas 0.1 (completes) and 1e6 (diverges at the first report), two seeds each."""
    return trained(True, eta=[0.1, 1e6], seed={"range": [0, 2]})


@pytest.fixture(scope="module")
def single():
    """Two one-configuration trials: eta 0.1 (completes at step 60) and 1e6 (diverges)."""
    return trained(False, eta=[0.1, 1e6])


@pytest.fixture
def writer(tmp_path):
    with ResultsWriter(tmp_path, "cb") as w:
        yield w


def test_every_terminal_row_lands_once_even_when_told_twice(bundle, writer, tmp_path):
    plan, [(trial, reports)] = bundle
    cb = ResultsCallback(writer, plan)
    for r in reports + reports:  # every report twice (a retried result, a replayed stream)
        cb.on_trial_result(0, [], trial, r)
    cb.on_trial_complete(0, [], trial)
    cb.on_experiment_end([])
    rows = read_trials(tmp_path).to_pandas()
    assert len(rows) == 4 and rows.config_key.is_unique
    assert sorted(rows.status) == ["completed", "completed", "diverged", "diverged"]
    assert cb.counts == {"completed": 2, "diverged": 2, "failed": 0, "pruned": 0} and cb.n_duplicates == 4
    curves = read_curves(tmp_path).to_pandas()
    assert not curves.duplicated(["config_key", "step"]).any()
    assert sorted(curves[curves.config_key.isin(rows[rows.status == "completed"].config_key)].step) == [
        20, 20, 40, 40, 60, 60]


def test_a_trial_that_has_not_finished_lands_nothing(bundle, writer, tmp_path):
    plan, [(trial, reports)] = bundle
    cb = ResultsCallback(writer, plan)
    running = [{**r, "terminal": []} for r in reports[:2]]  # still training: no member has ended yet
    for r in running:
        cb.on_trial_result(0, [], trial, r)
    cb.on_experiment_end([])
    assert read_trials(tmp_path).num_rows == 0 and sum(cb.counts.values()) == 0


def test_after_a_stop_only_finished_rows_land(single, writer, tmp_path):
    plan, [(good, good_reports), (bad, bad_reports)] = single
    cb = ResultsCallback(writer, plan)
    cb.on_trial_result(0, [], bad, bad_reports[0])  # diverged: a finished outcome
    cb.on_trial_result(0, [], good, good_reports[0])  # running when the sweep is interrupted
    cb.stop()
    cb.on_trial_complete(0, [], good)  # torn down by the stop: not pruned, no row, runs again on relaunch
    cb.on_experiment_end([])
    rows = read_trials(tmp_path).to_pandas()
    assert list(rows.status) == ["diverged"] and cb.counts["pruned"] == 0


def test_a_lost_trial_lands_its_unfinished_members_failed_once(bundle, writer, tmp_path):
    plan, [(trial, reports)] = bundle
    cb = ResultsCallback(writer, plan)
    cb.on_trial_result(0, [], trial, reports[0])  # the diverged members end here; the others are then lost
    errored = Trial(trial.trial_id, trial.config["bundle"], error_file="worker died")
    cb.on_trial_error(0, [], errored)
    cb.on_trial_error(0, [], errored)  # told twice
    cb.on_experiment_end([])
    rows = read_trials(tmp_path).to_pandas().set_index("eta")
    assert len(rows) == 4 and rows.config_key.is_unique
    assert (rows.loc[1e6].status == "diverged").all()
    lost = rows.loc[0.1]
    assert (lost.status == "failed").all() and lost.error.str.startswith("trial lost: worker died").all()
    assert cb.counts == {"completed": 0, "diverged": 2, "failed": 2, "pruned": 0}


def test_a_completed_one_configuration_trial_is_not_also_pruned(single, writer, tmp_path):
    plan, [(good, reports), _] = single
    cb = ResultsCallback(writer, plan)
    for r in reports:
        cb.on_trial_result(0, [], good, r)
    assert cb.settle(good.trial_id, good.config)["status"] == "completed"
    cb.on_trial_complete(0, [], good)
    rows = read_trials(tmp_path).to_pandas()
    assert list(rows.status) == ["completed"] and cb.counts["pruned"] == 0 and cb.n_duplicates == 0
