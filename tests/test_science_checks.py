"""Science checks (raysweep.analyze.checks) on planted truths, and end to end on real sweeps.

Each unit test writes a synthetic sweep through the real results writer (raysweep.analyze.synthetic), runs the check
the command line runs (``run_check`` on the Parquet tables), and asserts that it passes on the planted truth and
fails, on the right row, when the truth is wrong (a slope of 1 where theory says 2, an eta* that drifts, S(B) that
never saturates...). The ``slow`` tests launch the shipped search spaces that take about a minute on 2 cores and
check them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import raysweep.space
from raysweep.analyze import checks
from raysweep.analyze.__main__ import main as analyze_main
from raysweep.analyze.synthetic import make_rows, write_sweep

from tests.support import ROOT

WIDTHS = [64, 128, 256, 512, 1024]


def _run(tmp_path, study, trials, curves=None):
    write_sweep(tmp_path, f"science_{study}", trials, curves)
    return checks.run_check(tmp_path, study)


def _status(result, prefix):
    """The status of the one row whose quantity starts with ``prefix``."""
    rows = [r for r in result.rows if r.quantity.startswith(prefix)]
    assert len(rows) == 1, [r.quantity for r in result.rows]
    return rows[0].status


# ---------------------------------------------------------------------------------------------------- transfer


def _transfer_rows(mup_drift=0.0, sp_slope=0.25, torch_sp_slope=-1.0, mup_floor_slope=-0.1, pars=None):
    """eta*(N): muP 2^-1 (+ drift per doubling), SP 2^1 + sp_slope per doubling, torch_sp 2^-5 + torch_sp_slope per
    doubling; loss = floor(N) + 0.02 (log2 eta - log2 eta*)^2, diverged 2 octaves above eta*."""
    centre = {"muP": (-1.0, mup_drift), "SP": (1.0, sp_slope), "torch_sp": (-5.0, torch_sp_slope)}

    def loss_fn(c):
        at, per_doubling = centre[c["parametrization"]]
        doublings = np.log2(c["width"] / 64)
        star = at + per_doubling * doublings
        if np.log2(c["eta"]) > star + 2:
            return None
        floor_slope = mup_floor_slope if c["parametrization"] == "muP" else -0.1
        return 0.05 * 2 ** (floor_slope * doublings) + 0.02 * (np.log2(c["eta"]) - star) ** 2

    axes = {"width": WIDTHS, "eta": [2.0**k for k in range(-12, 6)], "seed": range(2),
            "parametrization": pars or ["muP", "SP", "torch_sp"]}
    return make_rows(axes, loss_fn)[0]


def test_transfer_passes_on_the_planted_truth(tmp_path):
    result = _run(tmp_path, "transfer", _transfer_rows())
    assert result.passed, result.table()
    assert _status(result, "torch_sp: eta* slope") == "pass"
    drift = [r for r in result.rows if r.quantity.startswith("muP: eta* drift")][0]
    assert drift.value == pytest.approx(0.0, abs=1e-6)
    sp = [r for r in result.rows if r.quantity.startswith("SP: eta* slope")][0]
    assert sp.value == pytest.approx(0.25, abs=1e-6)
    # at SP's own optimum wider is better (catapults): shown, never failed
    assert _status(result, "SP: loss slope vs width at eta*(N=64) =") == "info"


@pytest.mark.parametrize("wrong, row", [
    ({"mup_drift": 0.5}, "muP: eta* drift"),                      # muP eta* moves 2 octaves over 64 -> 1024
    ({"mup_floor_slope": 0.1}, "muP: loss slope vs width at eta*(N=64) ="),  # muP wider is worse
    ({"sp_slope": 0.0}, "SP: eta* slope"),                       # no drift under SP
    ({"sp_slope": -0.5}, "SP: loss slope vs width at eta*(N=64)/4"),  # eta* falls: wider looks better below it
    ({"torch_sp_slope": -0.5}, "torch_sp: eta* slope"),          # torch_sp falls half as fast as it should
])
def test_transfer_fails_on_a_wrong_truth(tmp_path, wrong, row):
    result = _run(tmp_path, "transfer", _transfer_rows(**wrong))
    assert not result.passed
    assert _status(result, row) == "FAIL", result.table()


def test_torch_sp_is_skipped_when_raysweep_has_no_such_parametrization(tmp_path, monkeypatch):
    monkeypatch.setattr(raysweep.space, "PARAMETRIZATIONS", ("SP", "muP"))
    result = _run(tmp_path, "transfer", _transfer_rows(pars=["muP", "SP"]))
    row = [r for r in result.rows if r.quantity.startswith("torch_sp")][0]
    assert row.verdict == "skipped: parametrization torch_sp not available"
    assert result.passed, result.table()  # a skipped row never fails the check
    assert "skipped: parametrization torch_sp not available" in result.table()


def test_torch_sp_without_rows_is_skipped_with_the_spec_to_launch(tmp_path, monkeypatch):
    monkeypatch.setattr(raysweep.space, "PARAMETRIZATIONS", ("SP", "muP", "torch_sp"))
    result = _run(tmp_path, "transfer", _transfer_rows(pars=["muP", "SP"]))
    row = [r for r in result.rows if r.quantity.startswith("torch_sp")][0]
    assert row.status == "skipped" and "science_transfer.yaml" in row.note


def test_torch_sp_trials_that_all_failed_fail_the_check_with_the_error(tmp_path, monkeypatch):
    monkeypatch.setattr(raysweep.space, "PARAMETRIZATIONS", ("SP", "muP", "torch_sp"))
    trials = _transfer_rows()
    for row in trials:
        if row["parametrization"] == "torch_sp":
            row.update(status="failed", error="ValueError: parametrization must be one of ('SP', 'muP')",
                       final_train_loss=None, final_eval_loss=None)
    result = _run(tmp_path, "transfer", trials)
    assert not result.passed
    row = [r for r in result.rows if r.quantity.startswith("torch_sp")][0]
    assert row.status == "FAIL" and "failed" in row.measured and "ValueError" in row.note


# --------------------------------------------------------------------------------------------------- gamma_eta


def _gamma_rows(lazy=2.0, rich_times_depth=2.0):
    """Edge: log2 eta = 1 + lazy log2 gamma (gamma <= 1), 1 + (rich_times_depth / L) log2 gamma above; quarter
    octave eta grid; eta* 1.5 octaves below the edge."""

    def edge(c):
        g = np.log2(c["gamma"])
        return 1.0 + (lazy * g if g <= 0 else rich_times_depth / c["depth"] * g)

    def loss_fn(c):
        if np.log2(c["eta"]) >= edge(c) - 1e-9:
            return None
        return 0.05 + 0.02 * (np.log2(c["eta"]) - edge(c) + 1.5) ** 2

    axes = {"gamma": [2.0**k for k in range(-5, 6)], "eta": [2.0 ** (k / 4) for k in range(-48, 33)],
            "depth": [2, 3], "seed": range(2)}
    return make_rows(axes, loss_fn, base={**_base(), "lr_rule": "raw", "width": 256})[0]


def _base():
    from raysweep.analyze.synthetic import BASE_CONFIG

    return dict(BASE_CONFIG)


def test_gamma_eta_passes_on_the_planted_truth(tmp_path):
    result = _run(tmp_path, "gamma_eta", _gamma_rows())
    assert result.passed, result.table()
    slopes = {r.quantity.split(":")[0]: r.value for r in result.rows if "slope of log2 edge" in r.quantity}
    # the quarter-octave grid quantises the edge: slopes within one grid step / log2-range of the truth
    assert slopes["L=2 lazy (gamma <= 0.125)"] == pytest.approx(2.0, abs=0.15)
    assert slopes["L=3 rich (gamma >= 4)"] == pytest.approx(2 / 3, abs=0.1)


@pytest.mark.parametrize("wrong, row", [
    ({"lazy": 1.0}, "L=2 lazy (gamma <= 0.125): slope of log2 edge"),   # slope 1 instead of 2
    ({"rich_times_depth": 1.0}, "L=2 rich (gamma >= 4): slope of log2 edge"),  # gamma^(1/L) instead of 2/L
])
def test_gamma_eta_fails_on_a_wrong_truth(tmp_path, wrong, row):
    result = _run(tmp_path, "gamma_eta", _gamma_rows(**wrong))
    assert not result.passed
    assert _status(result, row) == "FAIL", result.table()


def test_gamma_eta_fails_when_the_grid_misses_the_edge(tmp_path):
    trials = [t for t in _gamma_rows() if t["eta"] <= 2.0**4]  # the rich L=2 edges lie above 2^4
    result = _run(tmp_path, "gamma_eta", trials)
    assert _status(result, "L=2: gammas with the edge inside") == "FAIL"


# ------------------------------------------------------------------------------------------------- temperature


def _temperature_rows(collapse=True, saturate=True):
    """loss = 0.5 / (1 + x / 2^-8) + 0.05 (x / 2^-3)^2 + 0.05 (eta / 2)^4, x = T (collapse) or eta / 64; diverged
    above eta = 8. With saturate=False the last term and the divergence are gone (eta* ~ B everywhere)."""

    def loss_fn(c):
        x = c["eta"] / c["batch_size"] if collapse else c["eta"] / 64
        if saturate and c["eta"] > 8:
            return None
        return 0.5 / (1 + x / 2**-8) + 0.05 * (x / 2**-3) ** 2 + (0.05 * (c["eta"] / 2) ** 4 if saturate else 0)

    trials, _ = make_rows({"batch_size": [2**k for k in range(1, 10)], "eta": [2.0**k for k in range(-10, 7)]},
                          loss_fn)
    for row in trials:
        row["initial_loss"] = 0.5  # the zero predictor's loss: the check's "has trained" threshold is half of it
    return trials


def test_temperature_passes_on_the_planted_truth(tmp_path):
    result = _run(tmp_path, "temperature", _temperature_rows())
    assert result.passed, result.table()
    collapse = [r for r in result.rows if r.quantity.startswith("collapse score, B <=")][0]
    assert collapse.value < 0.02
    assert [r.value for r in result.rows if r.quantity.startswith("saturation")] == [32.0]


@pytest.mark.parametrize("wrong, rows", [
    ({"collapse": False}, ["eta* ~ B^alpha", "collapse score, B <="]),  # loss depends on eta, not on T
    ({"saturate": False}, ["saturation batch"]),                        # eta* ~ B at every B
])
def test_temperature_fails_on_a_wrong_truth(tmp_path, wrong, rows):
    result = _run(tmp_path, "temperature", _temperature_rows(**wrong))
    assert not result.passed
    for row in rows:
        assert _status(result, row) == "FAIL", result.table()


# ---------------------------------------------------------------------------------------------- critical_batch


def _critical_rows(shape="mccandlish"):
    """loss(step) = exp(-step * rate): S(B) at the best eta is 40 (1 + 64 / B) times ln(1/target) / ln 10
    ("mccandlish"), or 640 (B / 4)^-1/2 times that ("power": never saturates, no B_crit form). The best eta is
    2^(log2 B - 4) up to 2^2, on the half-octave grid; other etas learn slower."""

    def s_best(b):
        return 40.0 * (1 + 64.0 / b) if shape == "mccandlish" else 640.0 * (b / 4) ** -0.5

    def curve_fn(c):
        steps = np.arange(5, 2001, 5)
        best = min(np.log2(c["batch_size"]) - 4, 2.0)
        rate = np.log(10) / s_best(c["batch_size"]) * np.exp(-0.5 * (np.log2(c["eta"]) - best) ** 2)
        return steps, np.exp(-steps * rate)

    axes = {"batch_size": [2**k for k in range(2, 11)], "eta": [2.0 ** (k / 2) for k in range(-6, 9)]}
    return make_rows(axes, lambda c: 0.1, curve_fn=curve_fn)


def test_critical_batch_passes_on_the_planted_truth(tmp_path):
    result = _run(tmp_path, "critical_batch", *_critical_rows())
    assert result.passed, result.table()
    b_crit = [r for r in result.rows if r.quantity == "B_crit"][0]
    assert b_crit.value == pytest.approx(64.0, rel=0.01)
    assert sum(r.quantity.startswith("S(B=") for r in result.rows) == 9


def test_critical_batch_fails_when_s_of_b_is_a_power_law(tmp_path):
    result = _run(tmp_path, "critical_batch", *_critical_rows("power"))
    assert not result.passed
    assert _status(result, "S(B=32) / fit - 1") == "FAIL", result.table()


# -------------------------------------------------------------------------------------------- the command line


def test_check_flag_prints_the_table_and_sets_the_exit_code(tmp_path, capsys):
    write_sweep(tmp_path / "good", "science_gamma_eta", _gamma_rows())
    write_sweep(tmp_path / "bad", "science_gamma_eta", _gamma_rows(lazy=1.0))
    assert analyze_main([str(tmp_path / "good"), "--check", "gamma_eta"]) == 0
    out = capsys.readouterr().out
    first, header = out.splitlines()[:2]
    assert first.endswith(": PASS")
    assert [c.strip() for c in header.split("|")] == ["quantity", "measured", "expected", "tolerance", "pass"]
    assert analyze_main([str(tmp_path / "bad"), "--check", "gamma_eta"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert analyze_main([str(tmp_path / "missing"), "--check", "gamma_eta"]) == 2


def test_the_sweep_is_found_by_study_name_or_given(tmp_path):
    write_sweep(tmp_path, "science_temperature", _temperature_rows())
    write_sweep(tmp_path, "my_temperature_run", _temperature_rows(saturate=False))
    assert checks.run_check(tmp_path, "temperature").passed
    assert not checks.run_check(tmp_path, "temperature", sweep="my_temperature_run").passed
    with pytest.raises(checks.NoResultsError, match="science_transfer"):
        checks.run_check(tmp_path, "transfer")  # two sweeps, neither named science_transfer
    with pytest.raises(ValueError, match="study must be one of"):
        checks.run_check(tmp_path, "nonsense")


# ------------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("space, study", [
    ("science_transfer.yaml", "transfer"),          # ~35 s on 2 cores
    ("science_temperature.yaml", "temperature"),    # ~60-90 s on 2 cores
    ("science_linear_edge.yaml", "linear_edge"),    # ~60 s on 2 cores
    ("science_eos.yaml", "eos"),                    # ~20 s on 2 cores
    ("science_scaling_rules.yaml", "scaling_rules"),  # ~25 s on 2 cores
])
def test_shipped_study_passes_its_check(tmp_path, ray_cluster, space, study, run_cli):
    """Launch the shipped search space on the session's Ray, then run its check from the Parquet tables."""
    launched = run_cli("raysweep.launch", str(ROOT / "search_spaces" / space), "--address", ray_cluster,
                       "--storage", str(tmp_path), "--quiet")
    assert launched.returncode == 0, launched.stderr[-3000:]
    checked = run_cli("raysweep.analyze", str(tmp_path), "--check", study)
    assert checked.returncode == 0, checked.stdout + checked.stderr[-3000:]


# ------------------------------------------------------------------------------------------------------------ eos


def _eos_rows(overshoot=1.0, rise=True, adam=False):
    """Full-batch GD (B = 128) and SGD (B = 32) at eta 3, 4, 5: the sharpness starts at 0.2 and reaches
    ``overshoot * 2 / eta`` by step 100 (or stays at 0.2 without ``rise``), then alternates +-4% around it, every
    25 steps to 500; the batch sharpness sits at 0.9 x 2 / eta. With ``adam``, Adam trials at eta 0.01 whose
    preconditioned sharpness sits at 38 / eta."""
    axes = {"batch_size": [128, 32], "eta": [3.0, 4.0, 5.0], "optimizer": ["SGD"]}
    if adam:
        axes = {"batch_size": [128], "eta": [0.01], "optimizer": ["Adam"]}
    trials, _ = make_rows(axes, lambda c: 0.01, steps=500)
    curves = {}
    steps = np.arange(25, 501, 25)
    for row in trials:
        edge = 2.0 / row["eta"]
        level = overshoot * edge if rise else 0.2
        sharp = np.where(steps < 100, 0.2 + (level - 0.2) * steps / 100, level * (1 + 0.04 * (-1) ** (steps // 25)))
        row["initial_sharpness"] = 0.2
        curves[row["config_key"]] = [
            {"step": int(s), "train_loss": 0.01, "samples_seen": int(s) * row["batch_size"], "sharpness": float(v),
             "batch_sharpness": 0.9 * edge if row["optimizer"] == "SGD" else None,
             "preconditioned_sharpness": 38.0 / row["eta"] if row["optimizer"] == "Adam" else None}
            for s, v in zip(steps, sharp)]
    return trials, curves


def test_eos_passes_on_the_planted_truth(tmp_path):
    result = _run(tmp_path, "eos", *_eos_rows())
    assert result.passed, result.table()
    rows = {r.quantity: r for r in result.rows}
    deviation = [r for q, r in rows.items() if q.startswith("GD eta=4: max |sharpness")][0]
    assert deviation.value == pytest.approx(0.04, abs=1e-9) and deviation.status == "pass"
    batch = [r for q, r in rows.items() if q.startswith("SGD B=32 eta=4: batch sharpness")][0]
    assert batch.status == "info" and batch.value == pytest.approx(0.9)
    assert _status(result, "Adam: preconditioned") == "skipped"
    assert len([r for r in result.rows if r.status == "pass"]) == 6  # rise and edge, per GD eta


@pytest.mark.parametrize("wrong, row", [
    ({"overshoot": 1.3}, "GD eta=3: max |sharpness"),   # settles 30% above 2/eta: no edge of stability
    ({"rise": False}, "GD eta=5: sharpness rise"),      # never sharpens
])
def test_eos_fails_on_a_wrong_truth(tmp_path, wrong, row):
    result = _run(tmp_path, "eos", *_eos_rows(**wrong))
    assert not result.passed
    assert _status(result, row) == "FAIL"


def test_eos_shows_adams_preconditioned_sharpness_as_info():
    trials, curves = _eos_rows()
    adam_trials, adam_curves = _eos_rows(adam=True)
    curve_rows = [dict(r, config_key=k) for k, rs in {**curves, **adam_curves}.items() for r in rs]
    rows = checks.check_eos(pd.DataFrame(trials + adam_trials), pd.DataFrame(curve_rows), n_train=128)
    adam = [r for r in rows if r.quantity.startswith("Adam B=128 eta=0.01")]
    assert len(adam) == 1 and adam[0].status == "info" and adam[0].value == pytest.approx(1.0)
    assert all(r.status in ("pass", "info") for r in rows)


def test_eos_measures_each_adam_trial_against_its_own_beta1s_edge():
    trials, curves = _eos_rows()
    adam_trials, adam_curves = _eos_rows(adam=True)
    for t in adam_trials:  # AdamW at beta1 = 0.5 whose preconditioned sharpness sits at (2 + 1) / (0.5 eta)
        t.update(optimizer="AdamW", beta1=0.5)
        for r in adam_curves[t["config_key"]]:
            r["preconditioned_sharpness"] = 6.0 / t["eta"]
    curve_rows = [dict(r, config_key=k) for k, rs in {**curves, **adam_curves}.items() for r in rs]
    rows = checks.check_eos(pd.DataFrame(trials + adam_trials), pd.DataFrame(curve_rows), n_train=128)
    adam = [r for r in rows if r.quantity.startswith("AdamW B=128 eta=0.01")]
    assert len(adam) == 1 and adam[0].status == "info" and adam[0].value == pytest.approx(1.0)
    assert "b1=0.5" in adam[0].quantity
