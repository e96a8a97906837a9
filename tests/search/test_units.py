"""raysweep.search without a Ray cluster: the search spec, the eta-scan rule, how rows become Optuna states, journal
recovery, what a one-configuration trial reports, the driver's pruned rows, and the OptunaSearch gaps that make
raysweep use its own searcher (pinned, so that a Ray upgrade that fixes them shows up here)."""

from __future__ import annotations

import math

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from raysweep.errors import RaysweepError, SpecError
from raysweep.results import ResultsWriter, read_curves, read_trials
from raysweep.search import describe_search, planned_spec, studies
from raysweep.search.stability import DecadesBelowStable, StabilityDepth, scan_column
from raysweep.space import Scheduler, Search, load_spec, parse_spec

BASE = {
    "name": "u",
    "experiment": {"family": "poly_online", "dim": 8, "n_train": 256, "steps": 60, "report_every": 20},
    "space": {"batch_size": [8, 32], "eta": [0.1, 1.0], "width": [16]},
}
OPTUNA = {"algorithm": "optuna", "n_trials": 5}


def spec_of(search: dict, **space):
    return parse_spec({**BASE, "space": {**BASE["space"], **space}, "search": search})


# ---------------------------------------------------------------------------------------------------- the spec


def test_optuna_spec_defaults_and_round_trip(tmp_path):
    spec = spec_of({**OPTUNA, "scheduler": "asha"})
    s = spec.search
    assert (s.sampler, s.optuna_axes, s.metric, s.direction, s.seed) == ("tpe", ("eta",), "train_loss", "min", 0)
    assert s.scheduler == Scheduler(type="asha") and s.guided and s.unfused
    assert parse_spec(spec.to_dict()) == spec
    path = tmp_path / "s.yaml"
    path.write_text(spec.to_yaml())
    assert load_spec(path) == spec and yaml.safe_load(spec.to_yaml())["search"]["optuna_axes"] == ["eta"]
    assert repr(Search()) == "Search()" and not Search().unfused
    assert planned_spec(spec).fusion.enabled is False and planned_spec(parse_spec(BASE)) == parse_spec(BASE)
    assert spec_of({"scheduler": {"type": "median", "grace_period": 40}}).search.unfused
    assert spec_of({"algorithm": "eta_stability_depth", "stability_depth": 2}).n_points() == 4


@pytest.mark.parametrize(
    ("search", "pattern"),
    [
        ({"algorithm": "optuna"}, r"^search\.n_trials: is required for optuna search"),
        ({**OPTUNA, "sampler": "tpee"}, r"^search\.sampler: must be one of tpe, .*did you mean 'tpe'"),
        ({**OPTUNA, "optuna_axes": ["etta"]}, r"^search\.optuna_axes\[0\]: unknown axis 'etta'; did you mean 'eta'"),
        ({**OPTUNA, "optuna_axes": []}, r"^search\.optuna_axes: must be an axis name or a non-empty list"),
        ({"algorithm": "grid", "n_trials": 3}, r"^search\.n_trials: must be null for grid search"),
        ({"algorithm": "random", "n_samples": 2, "sampler": "tpe"}, r"^search\.sampler: must be null for random"),
        ({"algorithm": "eta_stability_depth"}, r"^search\.stability_depth: is required"),
        ({"algorithm": "eta_decades_below_stable", "decades_below_stable": -1}, r"^search\.decades_below_stable: "),
        ({**OPTUNA, "metric": "eval_accuracy"}, r"^search\.metric: eval_accuracy needs a classification family"),
        ({**OPTUNA, "mode": "minimise"}, r"^search\.mode: must be one of min, max"),
        ({"scheduler": "sha"}, r"^search\.scheduler\.type: must be one of asha, hyperband, median"),
        ({"scheduler": {"grace_period": 2}}, r"^search\.scheduler\.type: is required"),
        ({"scheduler": {"type": "asha", "grace": 2}}, r"^search\.scheduler\.grace: unknown key; did you mean"),
        ({"scheduler": {"type": "median", "reduction_factor": 2}}, r"^search\.scheduler\.reduction_factor: must be null"),
        ({"scheduler": {"type": "asha", "max_t": 10, "grace_period": 20}}, r"^search\.scheduler\.grace_period: must"),
        ({"scheduler": {"type": "asha", "reduction_factor": 1}}, r"^search\.scheduler\.reduction_factor: must be > 1"),
    ],
)
def test_bad_search_sections_name_the_field(search, pattern):
    with pytest.raises(SpecError, match=pattern):
        spec_of(search)


def test_scheduler_on_an_epoch_experiment_needs_max_t():
    mapping = {**BASE, "experiment": {"family": "poly_fixed", "dim": 8, "epochs": 2}, "search": {"scheduler": "asha"}}
    with pytest.raises(SpecError, match=r"^search\.scheduler\.max_t: is required for asha when the experiment"):
        parse_spec(mapping)
    parse_spec({**mapping, "search": {"scheduler": {"type": "asha", "max_t": 500}}})


def test_dry_run_text_says_fusion_is_ignored():
    spec = spec_of({**OPTUNA, "scheduler": "hyperband"}, width=[16, 32])
    text = describe_search(spec, "sweep u: ...\nresources per trial: cpu=1")
    assert "4 studies (one per cell of batch_size x width) x 5 finished trials" in text and "eta ~ log-uniform [0.1, 1]" in text
    assert "scheduler: hyperband" in text and "brackets=" in text and "fusion: ignored" in text


# ------------------------------------------------------------------------------------------- the eta-scan rule

D2, K1 = StabilityDepth(2), DecadesBelowStable(1.0)
ETAS = [100.0, 10.0, 1.0, 0.1, 0.01, 0.001]


@pytest.mark.parametrize(
    ("rule", "status", "run", "skipped", "waiting"),
    [
        (D2, [None] * 6, [0], [], False),
        (D2, ["diverged", "running", None, None, None, None], [], [], True),
        (D2, ["diverged", "completed", None, None, None, None], [2], [], False),
        (D2, ["completed", "diverged", "completed", None, None, None], [3], [], False),  # an unstable eta resets
        (D2, ["diverged", "completed", "completed", None, None, None], [], [3, 4, 5], False),
        (D2, ["completed", "pruned", "failed", "completed", "completed", None], [], [5], False),
        (D2, ["diverged"] * 6, [], [], False),  # nothing stable: every eta ran
        (D2, ["diverged", "completed", "completed", None, "completed", None], [], [3, 5], False),  # rows stay rows
        (K1, ["diverged", None, None, None, None, None], [1], [], False),
        (K1, ["diverged", "completed", None, None, None, None], [2], [3, 4, 5], False),  # 10 -> down to 1.0
        (K1, ["diverged", "completed", "running", None, None, None], [], [3, 4, 5], True),
        (K1, ["diverged", "diverged", "completed", "completed", None, None], [], [4, 5], False),
        (DecadesBelowStable(2.0), ["completed", None, None, None, None, None], [1, 2], [3, 4, 5], False),
        (DecadesBelowStable(0.0), ["diverged", "completed", None, None, None, None], [], [2, 3, 4, 5], False),
    ],
)
def test_scan_column(rule, status, run, skipped, waiting):
    decision = scan_column(ETAS, status, rule)
    assert (decision.run, decision.skipped, decision.waiting) == (run, skipped, waiting)


def test_decades_boundary_is_inclusive_despite_binary_rounding():
    etas = [0.3, 0.03, 0.003, 0.0003]  # 0.3 * 10**-2 != 0.003 in binary
    assert scan_column(etas, ["completed", None, None, None], DecadesBelowStable(2.0)).run == [1, 2]


# -------------------------------------------------------------------------------------- rows -> Optuna states


def _cell(n_trials=3, diverged_as="fail"):
    spec = spec_of({**OPTUNA, "n_trials": n_trials, "diverged_as": diverged_as})
    storage = optuna.storages.InMemoryStorage()
    return studies.open_cell(spec, storage, studies.cell_grid(spec, ("batch_size", "eta", "width"))[0])


def _row(status, **extra):
    return {"config_key": "k", "status": status, "final_train_loss": 0.5, "diverged_step": None, "error": None,
            **extra}


def test_rows_become_faithful_optuna_states():
    cell = _cell()
    outcomes = [_row("completed"), _row("pruned"), _row("diverged", diverged_step=7, final_train_loss=math.nan),
                _row("failed", error="boom"), None]
    for row in outcomes:
        trial = cell.study.ask(cell.distributions)
        trial.report(1.0, 20)
        studies.tell_row(cell, trial, row, "train_loss")
    states = [t.state for t in cell.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL, TrialState.FAIL]
    t = cell.study.trials
    assert t[0].value == 0.5 and t[1].intermediate_values == {20: 1.0}
    assert t[2].user_attrs["diverged_step"] == 7 and t[3].user_attrs["error"] == "boom"
    assert "abandoned" in t[4].user_attrs and [studies.counted(x) for x in t] == [True] * 4 + [False]
    assert cell.n_finished == 4
    assert cell.study.user_attrs["eta_star"] == t[0].params["eta"] == cell.study.best_params["eta"]


def test_study_names_cells_and_distributions():
    spec = spec_of({**OPTUNA, "optuna_axes": ["eta", "width"]}, width=[8, 16], gamma=[1.0, 2.0])
    cells = studies.cell_grid(spec, ("batch_size", "eta", "width", "gamma", "seed"))
    assert cells == [{"batch_size": b, "gamma": g, "seed": 0} for b in (8, 32) for g in (1.0, 2.0)]
    assert studies.study_name(spec, cells[1]) == "u:batch_size=8,gamma=2.0"
    d = studies.distributions(spec.space, spec.search.optuna_axes)
    assert d["eta"] == optuna.distributions.FloatDistribution(0.1, 1.0, log=True)
    assert d["width"] == optuna.distributions.CategoricalDistribution([8, 16])
    assert studies.sampler_seed(0, "u", 0) != studies.sampler_seed(0, "u", 3)


def test_missing_sampler_package_names_the_extra(monkeypatch):
    real = studies.importlib.util.find_spec
    monkeypatch.setattr(studies.importlib.util, "find_spec", lambda n: None if n == "cmaes" else real(n))
    with pytest.raises(RaysweepError, match=r"search\.sampler: cmaes needs the package 'cmaes'.*raysweep\[cmaes\]"):
        studies.make_sampler("cmaes", 0)
    studies.make_sampler("tpe", 0)


def test_recovery_finishes_trials_a_killed_driver_left_running(tmp_path):
    spec = spec_of({**OPTUNA, "n_trials": 4})
    (tmp_path / studies.JOURNAL).write_bytes(b"")
    cell = studies.open_cell(spec, studies.open_storage(tmp_path), studies.cell_grid(spec, ("batch_size",))[0])
    done = cell.study.ask(cell.distributions)
    studies.tell_row(cell, done, _row("completed"), "train_loss")
    landed, lost = cell.study.ask(cell.distributions), cell.study.ask(cell.distributions)
    landed.set_user_attr("config_key", "a")
    landed.report(2.0, 20)
    lost.set_user_attr("config_key", "b")
    with open(tmp_path / studies.JOURNAL, "ab") as fh:
        fh.write(b'{"op_code": 5, "worker_id": "x", "tri')  # a torn last line, as a kill mid-write could leave
    (tmp_path / (studies.JOURNAL + ".lock")).symlink_to("nowhere")  # a stale lock of the killed driver

    cell = studies.open_cell(spec, studies.open_storage(tmp_path), studies.cell_grid(spec, ("batch_size",))[0])
    curves = {"a": [{"step": 20, "train_loss": 2.0}, {"step": 40, "train_loss": 1.5}, {"step": 60, "train_loss": 1.2}]}
    counts = studies.recover(cell, {"a": _row("pruned", config_key="a")}, curves, "train_loss")
    assert counts == {"from_row": 1, "abandoned": 1}
    by_key = {t.user_attrs.get("config_key"): t for t in cell.study.trials}
    assert by_key["a"].state == TrialState.PRUNED and by_key["a"].intermediate_values == {20: 2.0, 40: 1.5, 60: 1.2}
    assert by_key["b"].state == TrialState.FAIL and "abandoned" in by_key["b"].user_attrs
    assert cell.n_finished == 2 and cell.wants() == 2
    assert not cell.study.get_trials(states=(TrialState.RUNNING,))


def test_curve_values_drop_the_diverged_report_and_non_finite_values():
    rows = [{"step": 40, "train_loss": 1.0}, {"step": 20, "train_loss": 2.0}, {"step": 60, "train_loss": math.inf}]
    assert studies.curve_values(rows, "train_loss", "diverged") == {20: 2.0, 40: 1.0}
    assert studies.curve_values(rows, "train_loss", "completed") == {20: 2.0, 40: 1.0}


# ------------------------------------------------------------------------------ trial reports and pruned rows


def _reports(etas, steps=60):
    from raysweep.plan import build_plan

    spec = parse_spec({**BASE, "experiment": {**BASE["experiment"], "steps": steps},
                       "space": {"batch_size": 8, "eta": etas, "width": 16}})
    plan, _ = build_plan(spec)
    from raysweep.trial import run_bundle

    out = []
    run_bundle(plan, next(iter(plan.bundles.values())), out.append)
    return plan, out


def test_one_config_trials_report_status_metrics_and_a_provisional_row():
    _, good = _reports([0.1])
    assert [r["status"] for r in good] == ["running", "running", "completed"]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["eval_loss"]) for r in good)
    assert "eval_accuracy" not in good[0]  # regression: no accuracy, and never None
    assert [r["provisional"]["curve"]["step"] for r in good[:2]] == [20, 40] and "provisional" not in good[-1]
    assert good[0]["provisional"]["trial"]["status"] == "pruned" and good[0]["provisional"]["trial"]["steps"] == 20
    _, bad = _reports([1e6])
    assert len(bad) == 1 and bad[0]["status"] == "diverged" and bad[0]["terminal"][0]["trial"]["status"] == "diverged"
    assert not {"train_loss", "eval_loss", "eval_accuracy", "provisional"} & set(bad[0])  # nothing to compare
    _, fused = _reports([0.1, 1e6])
    assert "status" not in fused[0] and math.isfinite(fused[0]["train_loss"])  # a bundle: the best healthy member


class _Trial:
    def __init__(self, trial_id, config):
        self.trial_id, self.config, self.error_file = trial_id, config, None


def test_results_callback_lands_a_stopped_trial_as_pruned_once(tmp_path):
    from raysweep.callbacks import ResultsCallback

    plan, reports = _reports([0.1])
    bundle_id = next(iter(plan.bundles))
    with ResultsWriter(tmp_path, "u") as writer:
        cb = ResultsCallback(writer, plan)
        trial = _Trial("t1", {"bundle": bundle_id})
        for r in reports[:2]:  # a scheduler stops it after the second report
            cb.on_trial_result(0, [], trial, r)
        row = cb.settle("t1", trial.config)
        assert row["status"] == "pruned" and row["steps"] == 40
        assert read_trials(tmp_path).num_rows == 1  # settle flushed: the row is on disk before Optuna is told
        cb.on_trial_complete(0, [], trial)  # Tune's own callback afterwards: nothing more
        assert cb.counts["pruned"] == 1 and cb.n_duplicates == 0
    assert read_curves(tmp_path).column("step").to_pylist() == [20, 40]


# ------------------------------------------------------------------------ why not Ray's OptunaSearch (ray 2.60)


def test_optunasearch_gaps_that_our_searcher_closes():
    from optuna.distributions import FloatDistribution
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    search = OptunaSearch(space={"eta": FloatDistribution(1e-3, 1.0, log=True)}, metric="train_loss", mode="min")
    search.suggest("stopped")
    search.on_trial_result("stopped", {"train_loss": 1.0, "training_iteration": 1, "step": 20})
    search.on_trial_complete("stopped", result={"train_loss": 0.9, "training_iteration": 2, "step": 40})
    stopped = search._ot_study.trials[0]
    assert stopped.state == TrialState.COMPLETE  # a scheduler stopped it: should be PRUNED
    assert stopped.intermediate_values == {1: 1.0}  # one report short, and indexed by iteration, not step
    search.suggest("nan")
    search.on_trial_complete("nan", result={"train_loss": math.nan, "training_iteration": 1})
    assert search._ot_study.trials[1].state == TrialState.RUNNING  # forever
    search.suggest("diverged")
    with pytest.raises(KeyError):
        search.on_trial_result("diverged", {"training_iteration": 1, "step": 20})  # a report without the metric
    search.on_trial_complete("diverged", result={"training_iteration": 1, "step": 20})
    assert search._ot_study.trials[2].state == TrialState.PRUNED  # should be FAIL
    with pytest.raises(ValueError, match="Grid search"):
        OptunaSearch.convert_search_space({"eta": tune.grid_search([0.1, 1.0])})


def test_median_stopping_ignores_a_diverged_trial_and_never_pauses():
    from raysweep.search.cells import n_brackets
    from raysweep.search.schedulers import MedianStopping

    rule = MedianStopping(time_attr="step", metric="train_loss", mode="min", grace_period=1, min_samples_required=1)
    rule.on_trial_complete(None, "diverged", {"step": 20})  # no metric: Ray's rule would keep it and KeyError later
    assert "diverged" not in rule._results
    assert rule._on_insufficient_samples(None, "t", 20) == "CONTINUE"
    assert (n_brackets(20, 200, 3.0), n_brackets(20, 180, 3.0), n_brackets(20, 20, 3.0)) == (3, 3, 1)


class _Recorder:
    """Stands in for ResultsCallback: every trial 'lands' completed with a loss that depends on eta."""

    class writer:  # noqa: N801 - the attribute the searcher flushes
        flush = staticmethod(lambda: None)

    def __init__(self):
        self.landed = {}

    def settle(self, trial_id, config, *, error=False):
        row = {"config_key": config["key"], "status": "completed", "final_train_loss": config["point"]["eta"]}
        self.landed[trial_id] = row
        return row


def test_repeated_categorical_suggestions_reuse_the_row_and_count(tmp_path):
    from ray.tune.search import Searcher

    from raysweep.search.optuna_search import OptunaStudies

    spec = spec_of({**OPTUNA, "n_trials": 5, "optuna_axes": ["batch_size"]}, eta=[0.1])  # 2 points, 5 trials
    searcher = OptunaStudies(spec, _Recorder(), tmp_path, rows={}, curves={})
    launched = []
    for i in range(20):
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        if config is None:  # waits for a running twin: finish the oldest running trial
            searcher.on_trial_complete(launched.pop(0))
            continue
        launched.append(f"t{i}")
    for trial_id in launched:
        searcher.on_trial_complete(trial_id)
    assert searcher.suggest("last") == Searcher.FINISHED
    trials = searcher.cells[0].study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5 and searcher.cells[0].n_finished == 5
    copies = [t for t in trials if "copy_of" in t.user_attrs]
    n_keys = len({t.user_attrs["config_key"] for t in trials})  # rows: one per distinct configuration
    assert 1 <= n_keys <= 2 and len(copies) == 5 - n_keys
