"""The linear student (``experiment.model: linear``): its spec, its training against the closed forms of
raysweep.linear_theory, fusion, and the analysis of its stability edge (``linear_theory`` table, ``--check
linear_edge`` on planted truths; the shipped study runs end to end in tests/test_science_checks.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raysweep import linear_theory
from raysweep.analyze import checks
from raysweep.analyze.linear import LinearSetting, read_setting, theory_table
from raysweep.analyze.load import load
from raysweep.analyze.synthetic import BASE_CONFIG, make_rows, write_sweep
from raysweep.data import build_task
from raysweep.errors import SpecError
from raysweep.space import LINEAR_STUDENT_AXES, load_spec, parse_spec
from raysweep.storage import SPEC_FILE
from raysweep.train import train, train_bundle

from tests.support import ROOT


def _spec(experiment=None, space=None, name="lin"):
    exp = {"family": "noisy_linear", "model": "linear", "dim": 32, "alpha": 1.0, "steps": 200, "report_every": 50,
           "dtype": "float64", **(experiment or {})}
    return parse_spec({"name": name, "experiment": exp,
                       "space": {"batch_size": [4], "eta": [0.25], "seed": [0], **(space or {})}})


# --- the spec --------------------------------------------------------------------------------------------------------


def test_a_linear_student_takes_no_width_and_carries_its_fixed_axes():
    spec = _spec()
    assert spec.experiment.model == "linear"
    point = spec.points()[0]
    assert {k: point[k] for k in LINEAR_STUDENT_AXES} == LINEAR_STUDENT_AXES
    assert spec.experiment.as_dict()["model"] == "linear"


@pytest.mark.parametrize("axis, value", [("width", [64]), ("depth", [3]), ("gamma", [2.0]),
                                         ("parametrization", ["muP"]), ("lr_rule", ["study"])])
def test_an_mlp_axis_on_a_linear_student_is_a_one_line_error(axis, value):
    with pytest.raises(SpecError, match=rf"^space\.{axis}: must not be given with experiment\.model linear"):
        _spec(space={axis: value})


def test_the_saved_spec_of_a_linear_sweep_reads_back(tmp_path):
    spec = _spec()
    (tmp_path / "spec.yaml").write_text(spec.to_yaml())
    assert load_spec(tmp_path / "spec.yaml").experiment == spec.experiment


def test_the_mlp_default_leaves_the_experiment_and_every_config_key_as_before():
    spec = load_spec(ROOT / "search_spaces" / "quickstart.yaml")
    assert spec.experiment.model == "mlp" and "model" not in spec.experiment.as_dict()
    with pytest.raises(SpecError, match=r"^experiment\.model: must be one of mlp, linear"):
        _spec(experiment={"model": "cnn"})
    with pytest.raises(SpecError, match=r"^space\.depth\[0\]: must be an integer >= 2, got 1"):
        parse_spec({"name": "x", "experiment": {"family": "poly_online", "steps": 10},
                    "space": {"batch_size": [1], "eta": [1.0], "width": [8], "depth": [1]}})


# --- training --------------------------------------------------------------------------------------------------------


def test_population_loss_of_the_task_equals_the_closed_form():
    spec = _spec(experiment={"rho": 0.3})
    task = build_task(spec.experiment.as_dict(), dtype=torch.float64)
    lam = linear_theory.spectrum(32, 1.0)
    w_t = math.sqrt(0.7) * linear_theory.teacher(32, 1.0, 0.25)
    w = np.random.default_rng(0).normal(size=(3, 32))
    got = task.population.loss(torch.from_numpy(w), "half_sum").numpy()
    want = [linear_theory.population_loss(v, w_t, lam, 0.3) for v in w]
    np.testing.assert_allclose(got, want, rtol=1e-13)
    study = task.population.loss(torch.from_numpy(w), "study").numpy()
    np.testing.assert_allclose(study, [linear_theory.population_loss(v, w_t, lam, 0.3, "study") for v in w],
                               rtol=1e-13)


def test_the_student_starts_at_the_zero_predictor_with_the_exact_initial_loss():
    for convention, expected in (("half_sum", 0.5), ("study", 1.0)):  # Var y = 1
        spec = _spec(experiment={"mse_convention": convention, "steps": 50})
        task = build_task(spec.experiment.as_dict(), dtype=torch.float64)
        report = train(task, spec.experiment.as_dict(), spec.points()[0])[0]
        assert report.initial_loss[0] == pytest.approx(expected, rel=1e-12)
        assert report.active_fraction == [None]


def test_the_seed_mean_loss_follows_the_exact_sgd_learning_curve():
    """E[L_t] of online SGD on noisy_linear is linear_theory.loss_curve (the second-moment map iterated): the mean
    of the exact population losses over 48 seeds agrees with it within 4 standard errors at every report."""
    eta, batch, seeds = 0.25, 4, 48
    spec = _spec(experiment={"steps": 200, "report_every": 25}, space={"eta": [eta], "seed": list(range(seeds)),
                                                                        "batch_size": [batch]})
    exp = spec.experiment.as_dict()
    task = build_task(exp, dtype=torch.float64)
    reports = list(train_bundle(task, exp, spec.points()))
    lam = linear_theory.spectrum(32, 1.0)
    w_t = math.sqrt(1 - 0.25) * linear_theory.teacher(32, 1.0, 0.25)
    curve = linear_theory.loss_curve(w_t, lam, eta, batch, 200, rho=0.25)
    for r in reports:
        losses = np.array(r.eval_loss)
        assert len(losses) == seeds
        mean, se = losses.mean(), losses.std(ddof=1) / math.sqrt(seeds)
        assert abs(mean - curve[r.step]) <= 4 * se, (r.step, mean, curve[r.step], se)
    assert reports[-1].eval_loss[0] < 0.5  # it learned


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("online", [True, False])
def test_fused_linear_students_equal_solo_ones_bit_for_bit(optimizer, online):
    experiment = {"online": online, "n_train": 256, "steps": 60, "report_every": 20}
    spec = _spec(experiment=experiment, space={"eta": [0.05, 0.2, 3.0], "seed": [0, 1], "optimizer": [optimizer]})
    exp = spec.experiment.as_dict()
    task = build_task(exp, dtype=torch.float64)
    points = spec.points()
    fused = list(train_bundle(task, exp, points))
    for i, point in enumerate(points):
        solo = train(task, exp, point)
        mine = [(r.step, r.train_loss[r.members.index(i)], r.eval_loss[r.members.index(i)])
                for r in fused if i in r.members]
        assert mine == [(r.step, r.train_loss[0], r.eval_loss[0]) for r in solo]


# --- analysis --------------------------------------------------------------------------------------------------------

SETTING = LinearSetting(linear_theory.spectrum(256, 0.5), 0.0, "half_sum")
BATCHES = [2**k for k in range(9)]
ETAS = [2.0 ** (k / 4) for k in range(-16, 9)]
EDGE_SPEC = _spec(experiment={"family": "linear", "dim": 256, "alpha": 0.5, "steps": 10}, name="science_linear_edge")


def _edge_rows(offset=0.2, saturate=True):
    """A planted edge ``offset`` octaves above the exact one (or one that keeps growing like B)."""
    def loss_fn(c):
        b = c["batch_size"]
        edge = SETTING.edge(b) if saturate else SETTING.edge(1) * b
        return None if math.log2(c["eta"]) >= math.log2(edge) + offset else 0.01
    base = {"model": "linear", "parametrization": "SP", "lr_rule": "raw", "width": 1, "depth": 1}
    return make_rows({"batch_size": BATCHES, "eta": ETAS, "seed": range(2)}, loss_fn,
                     base={**BASE_CONFIG, **base})[0]


def _write(tmp_path, rows):
    folder = write_sweep(tmp_path, "science_linear_edge", rows)
    (folder / SPEC_FILE).write_text(EDGE_SPEC.to_yaml())
    return folder


def test_the_theory_table_sets_the_exact_edge_beside_the_measured_one(tmp_path):
    folder = _write(tmp_path, _edge_rows())
    setting = read_setting(folder)
    assert setting is not None and setting.b_crit == pytest.approx(30.5709, rel=1e-4)
    table = theory_table(load(folder)[0], setting)
    assert list(table["batch_size"]) == BATCHES
    np.testing.assert_allclose(table["eta_edge"], [linear_theory.eta_edge(SETTING.lambdas, b) for b in BATCHES])
    # the study's approximation sits below the exact edge, most (0.645 octave) near B_crit
    gap = table.set_index("batch_size")["approx_gap_octaves"]
    assert (gap > 0).all() and gap.idxmax() == 32 and gap.max() == pytest.approx(0.645, abs=0.005)
    assert (table["edge_gap_octaves"] > 0).all() and (table["edge_gap_octaves"] <= 0.45).all()


def test_the_linear_edge_check_passes_on_the_planted_truth(tmp_path):
    _write(tmp_path, _edge_rows())
    result = checks.run_check(tmp_path, "linear_edge")
    assert result.passed, result.table()
    assert sum(r.quantity.startswith("log2 edge at B=") for r in result.rows) == len(BATCHES)


@pytest.mark.parametrize("rows, failing", [
    (dict(offset=0.8), "log2 edge at B=1"),                      # far past the mean-square edge
    (dict(offset=-0.6), "log2 edge at B=1"),                     # diverges well below it
    (dict(saturate=False), "slope of log2 edge, B >= 2 B_crit"),  # never saturates
])
def test_the_linear_edge_check_fails_on_a_wrong_truth(tmp_path, rows, failing):
    _write(tmp_path, _edge_rows(**rows))
    result = checks.run_check(tmp_path, "linear_edge")
    assert not result.passed
    assert any(r.quantity.startswith(failing) and r.status == checks.FAIL for r in result.rows), result.table()


def test_the_linear_edge_check_fails_on_a_sweep_without_a_linear_student(tmp_path):
    write_sweep(tmp_path, "science_linear_edge", _edge_rows())  # no spec.yaml: nothing says what it trained
    result = checks.run_check(tmp_path, "linear_edge")
    assert not result.passed and result.rows[0].quantity == "linear theory"
