"""Failed trials are missing data, never a stability edge; dead trials count at the edge beside diverged ones.

Synthetic sweeps are written through the real results writer and read back through the real Parquet readers; one
case trains for real (an infeasible batch size on digits fails inside the trainer, exactly as in a sweep).
"""

from __future__ import annotations

import numpy as np

import raysweep.analyze as ra
from raysweep.analyze.synthetic import FAILED, Dead, make_rows, parabola, write_sweep

ETAS = [2.0**k for k in range(-10, 1)]


def _digits_like(tmp_path, name="digits"):
    """B = 16, 64, 256 train (eta* = 2^-6, diverged from 2^-3); B = 4096 is infeasible: every trial failed."""

    def loss_fn(c):
        if c["batch_size"] == 4096:
            return FAILED
        if c["eta"] >= 2.0**-3:
            return None
        return parabola(c, -6.0)

    axes = {"batch_size": [16, 64, 256, 4096], "eta": ETAS, "seed": range(3)}
    trials, _ = make_rows(axes, loss_fn, base={**_base(), "family": "digits", "dataset": "digits", "loss": "xent"})
    write_sweep(tmp_path, name, trials)
    return ra.load(tmp_path, sweep=name)[0]


def _base():
    from raysweep.analyze.synthetic import BASE_CONFIG

    return dict(BASE_CONFIG)


def test_an_infeasible_batch_column_is_no_edge(tmp_path):
    trials = _digits_like(tmp_path)
    assert (trials.loc[trials["batch_size"] == 4096, "status"] == "failed").all()
    assert not trials.loc[trials["batch_size"] == 4096, "diverged"].any()
    edge = ra.eta_max(trials).set_index("batch_size")
    assert np.isnan(edge.loc[4096, "eta_diverge_min"]) and np.isnan(edge.loc[4096, "eta_max"])
    assert edge.loc[4096, "all_failed"] and edge.loc[4096, "n_eta_failed"] == len(ETAS)
    assert edge.loc[4096, "n_eta_diverged"] == 0
    for b in (16, 64, 256):  # the feasible columns keep their planted edge
        assert edge.loc[b, "eta_diverge_min"] == 2.0**-3 and edge.loc[b, "eta_max"] == 2.0**-4
    star = ra.optimal_eta(trials).set_index("batch_size")
    assert star.loc[4096, "all_failed"] and not star.loc[4096, "all_diverged"]
    assert np.isnan(star.loc[4096, "eta_star"]) and star.loc[4096, "n_failed"] == 3 * len(ETAS)
    assert ra.all_diverged(trials).empty
    failed = ra.all_failed(trials)
    assert len(failed) == 1 and failed["batch_size"].item() == 4096 and "synthetic failure" in failed["error"].item()
    grid = ra.heatmap_grid(trials)
    col = list(grid.xs).index(4096)
    assert grid.failed[:, col].all() and not grid.diverged[:, col].any() and not grid.failed[:, :col].any()


def test_a_sweep_whose_rows_all_failed_reports_no_edge(tmp_path):
    # an MNIST sweep whose data file was missing: every trial failed inside the worker
    trials, _ = make_rows({"batch_size": [32, 128], "eta": ETAS, "seed": range(2)}, lambda c: FAILED,
                          base={**_base(), "family": "mnist", "dataset": "mnist", "loss": "xent"})
    write_sweep(tmp_path, "mnist", trials)
    a = ra.analyze(tmp_path, report=tmp_path / "r.html", strict=True)["mnist"]
    assert a.tables["eta_max"]["eta_diverge_min"].isna().all() and a.tables["eta_max"]["all_failed"].all()
    assert not a.tables["eta_star"]["all_diverged"].any() and a.tables["eta_star"]["all_failed"].all()
    assert a.tables["all_diverged"].empty and len(a.tables["all_failed"]) == 2  # one group per batch size
    assert any("every trial failed" in n for n in a.notes)
    html = (tmp_path / "r.html").read_text()
    assert "<small>(all_failed)</small>" in html


def test_a_failed_seed_is_missing_not_a_mask(tmp_path):
    def loss_fn(c):
        if c["eta"] == 2.0**-6 and c["seed"] == 0:
            return FAILED  # the optimum lost a seed (e.g. a worker died): the other two still count
        if c["eta"] == 2.0**-4:
            return FAILED  # a whole eta lost: missing, not diverged
        return parabola(c, -6.0)

    trials, _ = make_rows({"batch_size": [32], "eta": ETAS, "seed": range(3)}, loss_fn)
    write_sweep(tmp_path, "s", trials)
    t = ra.load(tmp_path)[0]
    configs = ra.config_table(t).set_index("eta")
    assert not configs.loc[2.0**-6, "masked"] and configs.loc[2.0**-6, "n_failed"] == 1
    assert configs.loc[2.0**-4, "masked"] and configs.loc[2.0**-4, "n_diverged"] == 0
    row = ra.optimal_eta(t).iloc[0]
    assert row["eta_grid_best"] == 2.0**-6 and row["edge"] == "" and row["n_failed"] == 4
    edge = ra.eta_max(t).iloc[0]
    assert np.isnan(edge["eta_diverge_min"]) and edge["eta_max"] == 1.0 and edge["n_eta_failed"] == 1


def test_a_missing_neighbour_is_labelled_missing(tmp_path):
    trials, _ = make_rows({"batch_size": [32], "eta": ETAS, "seed": range(3)},
                          lambda c: FAILED if c["eta"] == 2.0**-5 else parabola(c, -6.0))
    write_sweep(tmp_path, "s", trials)
    row = ra.optimal_eta(ra.load(tmp_path)[0]).iloc[0]
    assert row["eta_grid_best"] == 2.0**-6 and row["edge"] == "missing" and row["at_edge"]


def test_an_infeasible_batch_fails_in_the_trainer_and_is_no_edge(tmp_path):
    """End to end without Ray: run_bundle trains digits at B = 32 and fails at B = 4096 > the 1,437 training
    images (InfeasibleError inside the trial), the rows land through the results writer, and the analysis reads a
    missing column, not an edge."""
    from raysweep.trial import Bundle, Plan, run_bundle

    exp = {"family": "digits", "epochs": 1, "report_every": 20, "dtype": "float32", "data_seed": 0}
    rows = []
    for b in (32, 4096):
        points = tuple({"batch_size": b, "eta": eta, "width": 32, "gamma": 1.0, "depth": 3, "seed": 0,
                        "parametrization": "muP", "optimizer": "SGD", "loss": "xent", "lr_rule": "study"}
                       for eta in (0.25, 1.0, 4.0))
        bundle = Bundle(f"b{b}", tuple(f"k{b}-{i}" for i in range(3)), points)
        plan = Plan("infeasible", exp, {bundle.bundle_id: bundle}, version="test")
        run_bundle(plan, bundle, lambda m: rows.extend(m["terminal"]))
    from raysweep.results import ResultsWriter

    with ResultsWriter(tmp_path / "infeasible", "infeasible") as writer:
        for r in rows:
            writer.add(r["trial"], r["curves"])
    trials = ra.load(tmp_path)[0]
    big = trials[trials["batch_size"] == 4096]
    assert len(big) == 3 and (big["status"] == "failed").all() and big["error"].str.contains("InfeasibleError").all()
    edge = ra.eta_max(trials).set_index("batch_size")
    assert np.isnan(edge.loc[4096, "eta_diverge_min"]) and edge.loc[4096, "all_failed"]
    assert ra.all_diverged(trials).empty
    assert ra.all_failed(trials)["batch_size"].tolist() == [4096]


# ------------------------------------------------------------------------------------------------ dead at the edge


def _dead_rows(tmp_path):
    """eta* = 2^-6; nets die (loss = the initial loss 2.0) from 2^-4 for seed 1 and 2^-3 for all; blow up from
    2^-1."""

    def loss_fn(c):
        if c["eta"] >= 2.0**-1:
            return None
        if c["eta"] >= 2.0**-3 or (c["eta"] == 2.0**-4 and c["seed"] == 1):
            return Dead(2.0)
        return parabola(c, -6.0)

    trials, _ = make_rows({"batch_size": [32, 128], "eta": ETAS, "seed": range(3)}, loss_fn)
    write_sweep(tmp_path, "dead", trials)
    return ra.load(tmp_path)[0]


def test_dead_nets_set_the_edge_with_the_diverged_ones(tmp_path):
    trials = _dead_rows(tmp_path)
    assert trials["dead"].sum() == 2 * 3 * 2 + 2 and not trials.loc[trials["dead"], "diverged"].any()
    edge = ra.eta_max(trials)
    assert (edge["eta_diverge_min"] == 2.0**-4).all()  # the first dead seed ("any seed")
    assert (edge["eta_dead_min"] == 2.0**-4).all() and (edge["eta_blowup_min"] == 2.0**-1).all()
    assert (edge["eta_max"] == 2.0**-5).all() and (edge["n_eta_dead"] == 3).all()
    configs = ra.config_table(trials)
    dead = configs[configs["eta"] == 2.0**-4]
    assert dead["masked"].all() and (dead["n_dead"] == 1).all() and dead["loss_mean"].isna().all()
    star = ra.optimal_eta(trials)
    assert (star["eta_grid_best"] == 2.0**-6).all() and (star["n_dead"] == 7).all()
    grid = ra.heatmap_grid(trials)
    assert grid.dead.any() and grid.loss.mask[grid.dead].all() and not (grid.dead & grid.diverged).any()


def test_a_group_that_only_died_or_diverged_is_all_diverged(tmp_path):
    trials, _ = make_rows({"batch_size": [32], "eta": ETAS[-4:], "seed": range(2)},
                          lambda c: None if c["eta"] == 1.0 else Dead(2.0))
    write_sweep(tmp_path, "s", trials)
    t = ra.load(tmp_path)[0]
    table = ra.all_diverged(t)
    assert len(table) == 1 and table["n_dead"].item() == 6 and table["n_diverged"].item() == 2
    assert table["statuses"].item() == "completed(dead),diverged"
    assert ra.optimal_eta(t)["all_diverged"].item() and np.isnan(ra.optimal_eta(t)["eta_star"].item())
