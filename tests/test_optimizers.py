"""Optimizers and learning-rate schedules as axes (raysweep.step, raysweep.schedules, raysweep.scaling, raysweep.space).

- Every optimizer and schedule equals torch.optim (SGD with momentum / Nesterov / weight decay, Adam, AdamW with
  their betas and eps) and torch.optim.lr_scheduler.LambdaLR (the formula of raysweep.schedules) on a plain
  nn.Module MLP built from the same weights: float64 loss curves to 1e-10 relative over 200 steps, under the
  ``raw`` rule and SP; and under muP with mup_adam, whose per-layer rates, weight decays and eps are a hand table.
- Fused members with different momentum, betas, eps, weight decay and schedules equal their solo runs bit for bit
  (float64), also in several step groups and after a member diverged and was dropped.
- Old sweeps keep their config keys: main's keys of the shipped specs are recorded here as literals.
"""

from __future__ import annotations

import glob
import hashlib
import math

import pytest
import torch

from raysweep import model
from raysweep.scaling import epsilons, learning_rates, wd_timescale, weight_decays
from raysweep.schedules import multiplier, multipliers
from raysweep.seeds import init_seed
from raysweep.points import AXIS_DEFAULTS, bundle_key, config_key, config_keys, update_path
from raysweep.space import load_spec, parse_spec
from raysweep.train import train, train_bundle
from tests.support.training import point, task_for

STEPS = 200
RTOL = 1e-10
EXP = {"family": "poly_fixed", "dim": 8, "n_train": 32, "degree": 2, "steps": STEPS, "report_every": 1,
       "dtype": "float64", "data_seed": 0, "divergence_factor": 100.0, "mse_convention": "half_sum",
       "eval_samples": 32}


class MLP(torch.nn.Module):
    """The plain PyTorch MLP: raysweep's forward rule (weights N(0, 1), 1 / sqrt(fan_in) and the readout factor in
    the forward), one nn.Parameter per weight matrix."""

    def __init__(self, weights, readout: float):
        super().__init__()
        self.layers = torch.nn.ParameterList([torch.nn.Parameter(w.clone()) for w in weights])
        self.readout = readout

    def forward(self, x):
        h = x
        for w in self.layers[:-1]:
            h = torch.relu(h @ w / math.sqrt(w.shape[0]))
        return h @ self.layers[-1] * self.readout


def torch_curve(p: dict, exp: dict = EXP) -> list[float]:
    """Full-batch training losses of ``p`` with torch.optim and LambdaLR (one param group per layer)."""
    task = task_for(exp)
    depth, width = p["depth"], p["width"]
    w0 = [w[0] for w in model.init_weights(model.layer_widths(task.dim, width, depth, 1), [init_seed(p["seed"])],
                                           dtype=torch.float64)]
    a = 1 / (p["gamma"] * (math.sqrt(width) if p["parametrization"] == "SP" else width))
    net = MLP(w0, a)
    x, y = task.x_train, task.y_train
    with torch.no_grad():
        f0 = net(x)
    v = {k: p.get(k, d) for k, d in AXIS_DEFAULTS.items()}
    lrs = learning_rates(**{k: p[k] for k in ("eta", "gamma", "width", "depth", "parametrization", "optimizer",
                                               "lr_rule")}).per_layer
    wds = weight_decays(weight_decay=v["weight_decay"], width=width, depth=depth, parametrization=p["parametrization"],
                        optimizer=p["optimizer"], lr_rule=p["lr_rule"], scaling=v["weight_decay_scaling"])
    eps = epsilons(eps=v["eps"], width=width, depth=depth, parametrization=p["parametrization"],
                   eps_scaling=v["eps_scaling"])
    independent = v["weight_decay_scaling"] == "independent"
    groups = []
    for l, q in enumerate(net.layers):
        # independent scaling: AdamW's decay step lr_t * wd' is s(t) * wd with wd' = wd / lr; SGD: by hand below
        wd = (0.0 if p["optimizer"] == "SGD" else wds[l] / lrs[l]) if independent else wds[l]
        group = {"params": [q], "lr": lrs[l], "weight_decay": wd}
        if p["optimizer"] != "SGD":
            group.update(betas=(v["beta1"], v["beta2"]), eps=eps[l])
        groups.append(group)
    if p["optimizer"] == "SGD":
        opt = torch.optim.SGD(groups, momentum=v["momentum"], nesterov=v["nesterov"])
    else:  # independent decay is decoupled for Adam too: AdamW's
        opt = getattr(torch.optim, "AdamW" if independent else p["optimizer"])(groups)
    schedule = lambda t: multiplier(  # noqa: E731
        t, STEPS, v["schedule"], warmup_steps=v["warmup_steps"], warmup_fraction=v["warmup_fraction"],
        decay_fraction=v["decay_fraction"], final_fraction=v["final_fraction"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    losses = []
    for t in range(STEPS):
        opt.zero_grad()
        loss = 0.5 * ((net(x) - f0 - y) ** 2).sum(1).mean()
        loss.backward()
        if independent and p["optimizer"] == "SGD":  # decoupled, lr-independent: w *= 1 - s(t) lambda
            with torch.no_grad():
                for q, lam in zip(net.layers, wds):
                    q.mul_(1 - schedule(t) * lam)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def our_curve(p: dict, exp: dict = EXP) -> list[float]:
    reports = train(task_for(exp), exp, p)
    assert len(reports) == STEPS and not reports[-1].diverged
    return [r.train_loss[0] for r in reports]


def max_rel(a: list[float], b: list[float]) -> float:
    return max(abs(u - v) / abs(v) for u, v in zip(a, b))


BASE = dict(batch_size=32, width=16, depth=3, seed=3, parametrization="SP", lr_rule="raw", gamma=1.0)
CASES = {
    "sgd_momentum": dict(optimizer="SGD", eta=0.05, momentum=0.9),
    "sgd_nesterov_wd_cosine": dict(optimizer="SGD", eta=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2,
                                   schedule="cosine", warmup_steps=20, final_fraction=0.1),
    "sgd_wd_linear": dict(optimizer="SGD", eta=0.2, weight_decay=3e-2, schedule="linear"),
    "sgd_plain_wsd": dict(optimizer="SGD", eta=0.2, schedule="wsd", warmup_fraction=0.05, decay_fraction=0.3),
    "adam_default_cosine": dict(optimizer="Adam", eta=3e-3, schedule="cosine", warmup_fraction=0.1),
    "adam_betas_eps_wd_wsd": dict(optimizer="Adam", eta=3e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=1e-2,
                                  schedule="wsd", decay_fraction=0.25, final_fraction=0.05),
    "adamw_cosine": dict(optimizer="AdamW", eta=3e-3, beta1=0.85, beta2=0.95, eps=1e-7, weight_decay=0.1,
                         schedule="cosine", warmup_steps=10, final_fraction=0.1),
    "adamw_independent_linear": dict(optimizer="AdamW", eta=3e-3, weight_decay=1e-3,
                                     weight_decay_scaling="independent", schedule="linear", warmup_steps=5),
    "sgd_momentum_independent_wsd": dict(optimizer="SGD", eta=0.05, momentum=0.9, weight_decay=1e-2,
                                         weight_decay_scaling="independent", schedule="wsd", warmup_steps=10),
    "adam_independent": dict(optimizer="Adam", eta=3e-3, weight_decay=1e-3, weight_decay_scaling="independent"),
    "adamw_mup_per_layer": dict(optimizer="AdamW", eta=2e-2, weight_decay=0.05, eps=1e-4, eps_scaling="mup",
                                parametrization="muP", lr_rule="mup_adam", schedule="cosine", warmup_steps=10),
}


@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_and_schedule_equal_torch_optim(case):
    """200 full-batch float64 steps: raysweep's train() and torch.optim + LambdaLR give the same loss curve."""
    p = point(**{**BASE, **CASES[case]})
    ours, want = our_curve(p), torch_curve(p)
    assert ours[-1] < 0.9 * ours[0]  # it trains
    assert max_rel(ours, want) < RTOL, f"{case}: max rel error {max_rel(ours, want):.3g}"


def test_mup_per_layer_table():
    """The muP per-layer weight decay and eps (raysweep.scaling), against the table written out by hand."""
    n, lam, eps = 64, 0.1, 1e-8
    shape = dict(width=n, depth=4, parametrization="muP")
    assert weight_decays(weight_decay=lam, optimizer="AdamW", lr_rule="mup_adam", scaling="lr", **shape) == (
        0.1, 0.1 * 8, 0.1 * 8, 0.1)
    assert weight_decays(weight_decay=lam, optimizer="AdamW", lr_rule="mup_adam", scaling="independent",
                         **shape) == (0.1,) * 4
    assert weight_decays(weight_decay=lam, optimizer="AdamW", lr_rule="study", **shape) == (0.1,) * 4
    assert weight_decays(weight_decay=lam, optimizer="AdamW", lr_rule="mup_adam",
                         **{**shape, "parametrization": "SP"}) == (0.1,) * 4
    assert epsilons(eps=eps, eps_scaling="mup", **shape) == (eps / 64, eps / 512, eps / 512, eps / 64)
    assert epsilons(eps=eps, eps_scaling="global", **shape) == (eps,) * 4
    assert epsilons(eps=eps, eps_scaling="mup", **{**shape, "parametrization": "SP"}) == (eps,) * 4
    rates = learning_rates(eta=1e-3, gamma=1.0, optimizer="AdamW", lr_rule="mup_adam", **shape).per_layer
    decays = weight_decays(weight_decay=lam, optimizer="AdamW", lr_rule="mup_adam", **shape)
    timescales = [1 / (r * d) for r, d in zip(rates, decays)]
    assert timescales == pytest.approx([timescales[0]] * 4, rel=1e-14)  # one decay timescale in every layer
    assert wd_timescale(1e-3, lam) == pytest.approx(1e4) and wd_timescale(1e-3, lam, "independent") == 10.0
    assert wd_timescale(1e-3, 0.0) is None


def test_schedule_formulas():
    """The documented formulas at a few steps (T = 10)."""
    assert [multiplier(t, 10) for t in range(10)] == [1.0] * 10
    assert [multiplier(t, 10, warmup_steps=4) for t in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert multiplier(0, 10, "cosine") == 1.0 and multiplier(5, 10, "cosine") == pytest.approx(0.5)
    assert multiplier(5, 10, "cosine", final_fraction=0.2) == pytest.approx(0.6)
    assert [multiplier(t, 10, "linear") for t in (0, 5, 9)] == pytest.approx([1.0, 0.5, 0.1])
    assert [multiplier(t, 10, "wsd", decay_fraction=0.3) for t in (6, 7, 8, 9)] == pytest.approx(
        [1.0, 1.0, 2 / 3, 1 / 3])
    assert multiplier(2, 10, "cosine", warmup_fraction=0.2) == 1.0
    steps = torch.arange(10).numpy()
    assert list(multipliers(steps, 10, "cosine", warmup_steps=3)) == [multiplier(t, 10, "cosine", warmup_steps=3)
                                                                        for t in range(10)]


# --------------------------------------------------------------------------------------- fused == solo


FUSED = {
    "sgd_general": [dict(momentum=0.9), dict(momentum=0.5, nesterov=True, schedule="cosine", warmup_steps=5),
                    dict(weight_decay=1e-2, schedule="wsd"), dict(momentum=0.7, weight_decay=1e-3,
                    weight_decay_scaling="independent", schedule="linear", final_fraction=0.2),
                    dict(momentum=0.9, eta=40.0)],  # diverges: dropped mid-run
    "sgd_plain": [dict(), dict(schedule="cosine", warmup_fraction=0.1), dict(eta=0.1, schedule="wsd"),
                  dict(eta=80.0)],
    "adam": [dict(), dict(schedule="linear"), dict(eta=3.0)],
    "adam_general": [dict(beta1=0.8, beta2=0.99, eps=1e-6), dict(weight_decay=1e-2, schedule="cosine"),
                     dict(eps=1e-4, eps_scaling="mup", schedule="wsd", warmup_steps=3), dict(eta=3.0, beta2=0.9)],
    "adamw": [dict(weight_decay=0.1), dict(beta1=0.5, beta2=0.9, eps=1e-5, weight_decay=0.01, schedule="cosine"),
              dict(weight_decay=1e-3, weight_decay_scaling="independent", schedule="wsd"),
              dict(lr_rule="mup_adam", weight_decay=0.2)],
}
OPT = {"sgd_general": "SGD", "sgd_plain": "SGD", "adam": "Adam", "adam_general": "Adam", "adamw": "AdamW"}


def member_curves(reports, n: int) -> list[list[tuple]]:
    rows: list[list[tuple]] = [[] for _ in range(n)]
    for r in reports:
        for j, m in enumerate(r.members):
            rows[m].append((r.step, r.train_loss[j], r.eval_loss[j], r.diverged.get(m)))
    return rows


@pytest.mark.parametrize("groups", [False, True], ids=["one_group", "step_groups"])
@pytest.mark.parametrize("case", list(FUSED))
def test_fused_members_equal_solo_runs_bit_for_bit(case, groups, monkeypatch):
    """A bundle whose members differ in momentum, betas, eps, weight decay and schedule: every member's curve is
    bit-identical to its solo run (float64), in one step group or several, and after a member diverged."""
    exp = {**EXP, "steps": 60, "report_every": 10, "family": "poly_online", "n_train": 64}
    task = task_for(exp)
    eta = 0.05 if OPT[case] == "SGD" else 3e-3
    lr_rule = "mup_adam" if case == "adamw" else "study"
    pts = [point(**{"batch_size": 16, "width": 16, "eta": eta, "optimizer": OPT[case], "seed": k % 2,
                    "lr_rule": lr_rule, **m}) for k, m in enumerate(FUSED[case])]
    assert len({bundle_key(p) for p in pts}) == 1
    if groups:
        monkeypatch.setattr("raysweep.step.STEP_GROUP_BYTES", 1)  # one member per group
    fused = member_curves(list(train_bundle(task, exp, pts)), len(pts))
    for k, p in enumerate(pts):
        assert fused[k] == member_curves(train(task, exp, p), 1)[0], f"member {k}"
    if case != "adamw":
        assert fused[-1][-1][3] is not None  # the last member diverged
        assert fused[0][-1][0] == exp["steps"]


def test_update_paths_and_bundle_keys():
    """A member's update path depends on its own point: plain SGD and default Adam keep their fast paths, anything
    else trains on the general path, in bundles of its own."""
    assert update_path(point()) == "sgd" and update_path(point(schedule="cosine")) == "sgd"
    assert update_path(point(momentum=0.9)) == "general" and update_path(point(weight_decay=0.1)) == "general"
    assert update_path(point(optimizer="Adam")) == "adam"
    assert update_path(point(optimizer="Adam", warmup_steps=3)) == "adam"
    assert update_path(point(optimizer="Adam", beta2=0.99)) == "general"
    assert update_path(point(optimizer="AdamW")) == "general"
    assert bundle_key(point()) != bundle_key(point(momentum=0.9))


# --------------------------------------------------------------------------------------- config keys


# main's keys before the optimizer and schedule axes: (count, first key, last key, sha256 of all keys joined)
MAIN_KEYS = {
    "quickstart.yaml": (24, "51019a7006f4be3b", "7f2e5a481235a8aa", "fe25ba7742a768e1"),
    "width_sweep.yaml": (195, "f0eecbb6b13ad817", "c975626328d1c1dc", "35ce4f8180fe0229"),
    "study_small_mup.yaml": (60, "f20860f849dd0c6d", "1eee21e42eca5b2f", "47655836019ad3d2"),
    "gamma_eta_phase.yaml": (550, "aca96fa5dbd5940e", "d547239c6ae4eba3", "444a9052dc3c67de"),
}


@pytest.mark.parametrize("name", sorted(MAIN_KEYS))
def test_shipped_specs_keep_their_config_keys(name):
    spec = load_spec(f"search_spaces/{name}")
    keys = config_keys(spec.experiment.as_dict(), spec.points())
    assert (len(keys), keys[0], keys[-1], hashlib.sha256(",".join(keys).encode()).hexdigest()[:16]) == MAIN_KEYS[name]


@pytest.mark.parametrize("path", sorted(p for p in glob.glob("search_spaces/*.yaml") if "scaling_rules" not in p))
def test_new_axes_at_their_defaults_change_no_key(path):
    """Every shipped spec from before the optimizer axes: the new axes written out at their defaults give the same points' keys; off their default
    they give other keys."""
    spec = load_spec(path)
    exp = spec.experiment.as_dict()
    points = spec.points()[:50]
    old = config_keys(exp, [{k: v for k, v in p.items() if k not in AXIS_DEFAULTS} for p in points])
    assert config_keys(exp, points) == old == [config_key(exp, p) for p in points]
    assert config_key(exp, {**points[0], "weight_decay": 0.1}) != old[0]
    assert config_key(exp, {**points[0], "schedule": "cosine"}) != old[0]


def test_grid_skips_points_no_optimizer_reads():
    """A grid over SGD and Adam with momentum, nesterov and betas keeps only the points each optimizer reads; its
    count matches the points."""
    spec = parse_spec({"name": "opt", "experiment": {"family": "poly_online", "steps": 10},
                       "space": {"batch_size": 8, "eta": [0.1, 0.01], "width": 16,
                                 "optimizer": ["SGD", "Adam", "AdamW"],
                                 "momentum": [0.0, 0.9], "nesterov": [False, True], "beta2": [0.99, 0.999],
                                 "lr_rule": ["study", "mup_adam"]}})
    points = spec.points()
    assert spec.n_points() == len(points)
    # SGD: (0, F), (0.9, F), (0.9, T) at beta2 default, study only: 3; Adam, AdamW: 2 beta2 x 2 rules each: 8
    assert len(points) == 2 * (3 + 8)
    assert not any(p["nesterov"] and p["momentum"] == 0 for p in points)
    with pytest.raises(Exception, match="warmup"):
        parse_spec({"name": "opt", "experiment": {"family": "poly_online", "steps": 10},
                    "space": {"batch_size": 8, "eta": 0.1, "width": 16, "warmup_steps": 5, "warmup_fraction": 0.1}})


# --------------------------------------------------------------------------------------- Parquet columns


def test_rows_carry_the_optimizer_columns_and_old_files_read_them_as_null(tmp_path):
    """run_bundle's rows hold each member's optimizer and schedule settings and the weight-decay timescale; they
    land in Parquet, and a trials file written before these columns reads back with them null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raysweep.plan import build_plan
    from raysweep.results import ResultsWriter, read_trials
    from raysweep.schema import TRIALS_SCHEMA
    from raysweep.trial import run_bundle

    spec = parse_spec({"name": "t", "experiment": {"family": "poly_online", "dim": 8, "n_train": 256, "steps": 20,
                                                   "report_every": 10},
                       "space": {"batch_size": 8, "width": 16, "eta": 1e-3, "optimizer": ["SGD", "AdamW"],
                                 "weight_decay": [0.0, 0.1], "schedule": "cosine", "warmup_steps": 2}})
    plan, _ = build_plan(spec)
    rows = []
    for bundle in plan.bundles.values():
        reports: list = []
        run_bundle(plan, bundle, reports.append)
        rows += [item["trial"] for r in reports for item in r["terminal"]]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    by = {(r["optimizer"], r["weight_decay"]): r for r in rows}
    sgd, adamw = by[("SGD", 0.1)], by[("AdamW", 0.1)]
    assert sgd["momentum"] == 0.0 and sgd["nesterov"] is False and sgd["beta1"] is None and sgd["eps"] is None
    assert adamw["momentum"] is None and adamw["beta2"] == 0.999 and adamw["eps"] == 1e-8
    assert adamw["schedule"] == "cosine" and adamw["warmup_steps"] == 2
    assert adamw["wd_timescale_steps"] == pytest.approx(1 / (adamw["lr_effective"] * 0.1))
    assert adamw["wd_timescale_samples"] == pytest.approx(8 * adamw["wd_timescale_steps"])
    assert adamw["wd_timescale_fraction"] == pytest.approx(adamw["wd_timescale_samples"] / (20 * 8))
    assert by[("SGD", 0.0)]["wd_timescale_steps"] is None and by[("SGD", 0.0)]["wd_timescale_fraction"] is None
    with ResultsWriter(tmp_path / "t", "t") as writer:
        for r in rows:
            writer.add(r)
    table = read_trials(tmp_path / "t")
    assert table.schema == TRIALS_SCHEMA and sorted(table.column("schedule").to_pylist()) == ["cosine"] * 4
    old = tmp_path / "old"
    (old / "trials").mkdir(parents=True)
    (old / "curves").mkdir()
    legacy = pa.table({"sweep": ["old"], "config_key": ["k"], "status": ["completed"], "eta": [0.1]})
    pq.write_table(legacy, old / "trials" / "part-0.parquet")
    got = read_trials(old).to_pylist()[0]
    assert got["eta"] == 0.1 and got["momentum"] is None and got["schedule"] is None
    assert got["wd_timescale_steps"] is None


def test_zip_rows_tie_axes_together():
    """space.zip: the grid is the product of the other axes and the rows; it round-trips through to_dict, its keys
    are those of the same points written as a product, and it is refused where it cannot hold."""
    space = {"width": 16, "seed": [0, 1], "optimizer": "Adam",
             "zip": [{"batch_size": 8, "eta": 0.01, "beta2": 0.999}, {"batch_size": 16, "eta": 0.02, "beta2": 0.998}]}
    spec = parse_spec({"name": "z", "experiment": {"family": "poly_online", "steps": 10}, "space": space})
    points = spec.points()
    assert [(p["seed"], p["batch_size"], p["eta"], p["beta2"]) for p in points] == [
        (0, 8, 0.01, 0.999), (0, 16, 0.02, 0.998), (1, 8, 0.01, 0.999), (1, 16, 0.02, 0.998)]
    assert spec.n_points() == 4 and spec.space.batch_size == (8, 16) and spec.space.zipped == (
        "batch_size", "eta", "beta2")
    assert parse_spec(spec.to_dict()) == spec
    single = parse_spec({"name": "z", "experiment": {"family": "poly_online", "steps": 10},
                         "space": {"width": 16, "seed": 0, "optimizer": "Adam", "batch_size": 8, "eta": 0.01}})
    exp = spec.experiment.as_dict()
    assert config_key(exp, points[0]) == config_key(exp, single.points()[0])
    bad = [({**space, "eta": 0.1}, "zipped"),
           ({**space, "zip": [{"batch_size": 8, "eta": 0.1}, {"eta": 0.1}]}, "same axes"),
           ({**space, "zip": [{"batch_size": [8, 16], "eta": 0.1}]}, "one value"),
           ({**space, "zip": [{"batch_size": 8, "eta": 0.1, "etaa": 1.0}]}, "etaa")]
    for mapping, match in bad:
        with pytest.raises(Exception, match=match):
            parse_spec({"name": "z", "experiment": {"family": "poly_online", "steps": 10}, "space": mapping})
    with pytest.raises(Exception, match="grid"):
        parse_spec({"name": "z", "experiment": {"family": "poly_online", "steps": 10}, "space": space,
                    "search": {"algorithm": "random", "n_samples": 2}})
    shipped = load_spec("search_spaces/science_scaling_rules.yaml")
    assert shipped.n_points() == len(shipped.points()) == 22
