"""raysweep.analyze.scaling_rules on planted truths: which trials follow which scaling rule, their curves' deviation,
the collapses at equal eta / B, eta / sqrt(B) and tau, and the rise-and-fall fit of eta*(B); and the
``scaling_rules`` check passing on a planted truth and failing on a wrong one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raysweep.analyze import checks
from raysweep.analyze.scaling_rules import (
    collapse,
    fit_eta_peak,
    rule_curves,
    rule_deviation,
    rule_table,
    scaled,
)
from raysweep.analyze.synthetic import BASE_CONFIG, config_key, make_rows, write_sweep

B0, KAPPAS = 2, (1, 2, 4, 8)
SGD0 = {"eta": 2**-6, "beta1": None, "beta2": None, "eps": None}
ADAM0 = {"eta": 2**-9, "beta1": 0.99, "beta2": 0.9999, "eps": 1e-8}
SAMPLES = 4096


def test_scaled_settings():
    assert scaled(SGD0, 4, "linear") == {**SGD0, "eta": 2**-4}
    sqrt = scaled(ADAM0, 4, "sqrt")
    assert sqrt["eta"] == 2**-8 and sqrt["beta1"] == pytest.approx(0.96) and sqrt["beta2"] == pytest.approx(0.9996)
    assert sqrt["eps"] == 5e-9
    assert scaled(ADAM0, 8, "linear") == {**ADAM0, "eta": 2**-6}
    with pytest.raises(ValueError):
        scaled(ADAM0, 2, "cubic")


def _rows(adam_sqrt_gap=0.0, adam_linear_gap=0.3):
    """Trials and curves of the scaling-rules study: SGD linear and Adam square-root curves equal the base curve
    (times 1 + gap kappa-dependence for Adam square-root), Adam linear curves off by ``adam_linear_gap``."""
    trials, curves = [], {}
    cases = [("SGD", SGD0, "linear", k, 0.0) for k in KAPPAS]
    cases += [("Adam", ADAM0, "sqrt", k, adam_sqrt_gap) for k in KAPPAS]
    cases += [("Adam", ADAM0, "linear", k, adam_linear_gap) for k in KAPPAS[1:]]
    for optimizer, base, rule, kappa, gap in cases:
        hyper = scaled(base, kappa, rule)
        for seed in (0, 1):
            config = {**BASE_CONFIG, "optimizer": optimizer, "batch_size": B0 * kappa, "seed": seed, **hyper}
            key = config_key(config)
            samples = np.arange(1, 9) * 512
            loss = 0.5 + 2.0 / (1 + samples / 1000) * (1 + gap * math.log2(kappa) / 3)
            trials.append({**config, "config_key": key, "status": "completed", "steps": SAMPLES // (B0 * kappa),
                           "samples_seen": SAMPLES, "final_train_loss": float(loss[-1]),
                           "final_eval_loss": float(loss[-1]), "raysweep_version": "synthetic"})
            curves[key] = [{"step": int(s) // (B0 * kappa), "samples_seen": int(s), "train_loss": float(v),
                            "eval_loss": float(v)} for s, v in zip(samples, loss)]
    return trials, curves


def test_rules_are_found_and_measured(tmp_path):
    import pandas as pd

    trials, curves = _rows()
    t = pd.DataFrame(trials)
    table = rule_table(t)
    sgd = table[table["optimizer"] == "SGD"]
    assert sorted(sgd[sgd["rule"] == "sqrt"]["kappa"].unique()) == [1.0]  # the base follows every rule
    assert sorted(sgd[sgd["rule"] == "linear"]["kappa"].unique()) == [1.0, 2.0, 4.0, 8.0]
    adam = table[table["optimizer"] == "Adam"]
    assert sorted(adam[adam["rule"] == "sqrt"]["kappa"].unique()) == [1.0, 2.0, 4.0, 8.0]
    assert sorted(adam[adam["rule"] == "linear"]["kappa"].unique()) == [1.0, 2.0, 4.0, 8.0]
    dev = rule_deviation(rule_curves(t, pd.DataFrame([c | {"config_key": k} for k, cs in curves.items()
                                                      for c in cs])))
    lin = dev[(dev["optimizer"] == "Adam") & (dev["rule"] == "linear")].set_index("kappa")
    assert lin.loc[8.0, "max_rel_dev"] > 0.2 and lin.loc[8.0, "n_points"] == 8
    good = dev[(dev["rule"] == "sqrt") | (dev["optimizer"] == "SGD")]
    assert (good["max_rel_dev"] < 1e-12).all()


@pytest.mark.parametrize("wrong, row", [
    (dict(adam_sqrt_gap=0.3), "Adam sqrt rule, kappa=8"),       # the square-root rule does not hold
    (dict(adam_linear_gap=0.0), "Adam linear rule, kappa=8"),   # nothing tells the rules apart
])
def test_scaling_rules_check(tmp_path, wrong, row):
    write_sweep(tmp_path, "science_scaling_rules", *_rows())
    result = checks.run_check(tmp_path, "scaling_rules")
    assert result.passed, result.table()
    write_sweep(tmp_path / "wrong", "science_scaling_rules", *_rows(**wrong))
    result = checks.run_check(tmp_path / "wrong", "scaling_rules")
    assert not result.passed and any(r.quantity.startswith(row) for r in result.failed), result.table()


def test_collapses_at_the_right_variable():
    """Final loss a function of eta / B (SGD-like), of eta / sqrt(B) (Adam-like) or of tau: each collapses on its
    own variable and not on the others."""
    import pandas as pd

    axes = {"batch_size": [8, 32, 128, 512], "eta": [2.0**k for k in range(-12, 4)]}

    def rows(variable):
        def loss(c):
            b, eta = c["batch_size"], c["eta"]
            x = {"b": eta / b, "sqrt": eta / math.sqrt(b)}[variable]
            return 0.1 + (math.log2(x) + 8) ** 2 / 50
        return pd.DataFrame(make_rows(axes, loss)[0])

    sgd, adam = rows("b"), rows("sqrt")
    assert collapse(sgd, "eta_over_b")["collapse_score"].iloc[0] < 1e-9
    assert collapse(sgd, "eta_over_sqrt_b")["collapse_score"].iloc[0] > 0.05
    assert collapse(adam, "eta_over_sqrt_b")["collapse_score"].iloc[0] < 0.05
    assert collapse(adam, "eta_over_b")["collapse_score"].iloc[0] > 0.05
    # tau = B / (eta lambda D): trials at several (B, eta, lambda) whose loss depends on tau only
    tau_rows = []
    for b in (8, 32, 128):
        for tau in (0.5, 1.0, 2.0, 4.0):
            eta = 1e-3
            lam = b / (eta * tau * 1e5)
            tau_rows.append({**BASE_CONFIG, "batch_size": b, "eta": eta, "weight_decay": lam,
                             "wd_timescale_fraction": tau, "config_key": f"{b}-{lam}", "status": "completed",
                             "final_eval_loss": 0.1 + math.log2(tau) ** 2 / 100, "steps": 10})
    score = collapse(pd.DataFrame(tau_rows), "tau")
    assert score["collapse_score"].iloc[0] < 1e-9 and score["n_bins"].iloc[0] >= 2
    with pytest.raises(ValueError):
        collapse(sgd, "eta_squared")


@pytest.mark.parametrize("fall", [-0.5, 0.0])
def test_eta_star_rises_then_falls(fall):
    """eta* = 2^-10 B^0.5 up to B = 64, then B^fall: the fit finds the peak and the signs of both slopes."""
    import pandas as pd

    def star(b):
        x = math.log2(b)
        return -10 + 0.5 * min(x, 6) + fall * max(x - 6, 0)

    rows = []
    for b in [2**k for k in range(0, 12)]:
        rows.append({"batch_size": b, "log2_eta_star": star(b), "edge": "", "eta_star": 2 ** star(b)})
    fit = fit_eta_peak(pd.DataFrame(rows)).iloc[0]
    assert fit["fit_ok"] and fit["batch_size_peak"] == 64
    assert fit["slope_rise"] == pytest.approx(0.5) and fit["slope_fall"] == pytest.approx(fall, abs=1e-9)
    assert fit["falls"] == (fall < 0)
