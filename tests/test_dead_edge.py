"""The stability edge on digits under cross-entropy counts dead networks (issue: past the edge the nets died at
ln 10, their initial loss, so the divergence threshold never fired and the reported edge sat 1-3 octaves above the
etas where every net ended at chance).

Trains for real through :func:`raysweep.trial.run_bundle` (the trial Ray runs, without Ray), lands the rows through
the results writer and reads them back with the analysis: muP, width 128, depth 3, SGD and Adam, B = 32, 5 epochs,
eta on octaves, 3 seeds. The edge (``eta_diverge_min``: the smallest eta where any seed diverged or died) must be at
most one grid step from the smallest eta at which any seed ends at chance accuracy (at most 1.5 / 10).
"""

from __future__ import annotations

import numpy as np
import pytest

import raysweep.analyze as ra
from raysweep.results import ResultsWriter
from raysweep.trial import Bundle, Plan, run_bundle

EXPERIMENT = {"family": "digits", "epochs": 5, "report_every": 50, "dtype": "float32", "data_seed": 0}
CHANCE = 1.5 / 10


def _sweep(tmp_path, optimizer: str):
    points = tuple({"batch_size": 32, "eta": 2.0**k, "width": 128, "gamma": 1.0, "depth": 3, "seed": s,
                    "parametrization": "muP", "optimizer": optimizer, "loss": "xent", "lr_rule": "study"}
                   for k in range(-8, 7) for s in range(3))
    bundle = Bundle(optimizer, tuple(f"{optimizer}-{i}" for i in range(len(points))), points)
    plan = Plan(f"digits_{optimizer}", EXPERIMENT, {optimizer: bundle}, version="test")
    rows = []
    run_bundle(plan, bundle, lambda metrics: rows.extend(metrics["terminal"]))
    with ResultsWriter(tmp_path / plan.sweep, plan.sweep) as writer:
        for r in rows:
            writer.add(r["trial"], r["curves"])
    return ra.load(tmp_path, sweep=plan.sweep)[0]


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
def test_the_edge_is_within_one_octave_of_the_first_eta_at_chance(tmp_path, optimizer):
    trials = _sweep(tmp_path, optimizer)
    assert (trials["status"] != "failed").all()
    at_chance = trials[trials["final_eval_accuracy"] <= CHANCE]["eta"]
    assert len(at_chance), "the grid must reach the dead region"
    first_chance = float(at_chance.min())
    edge = ra.eta_max(trials).iloc[0]
    assert abs(np.log2(edge["eta_diverge_min"]) - np.log2(first_chance)) <= 1.0, edge.to_dict()
    # the blow-up alone (what the edge was before dead nets counted) lies above the dead region
    assert edge["eta_blowup_min"] > edge["eta_diverge_min"] and edge["eta_dead_min"] == edge["eta_diverge_min"]
    # eta_max, the largest eta with no unstable seed, sits below the chance region too
    assert edge["eta_max"] < first_chance * 2
    # dead trials completed (status unchanged) and carry the step they died at
    dead = trials[trials["dead"]]
    assert (dead["status"].isin(["completed", "diverged"])).all() and (dead["dead_step"] > 0).all()
