"""The planner: which configurations run, grouped how, in which order."""

from __future__ import annotations

from raysweep.plan import build_plan, bundle_cost, run_order
from raysweep.space import parse_spec


def spec_of(space, **experiment):
    return parse_spec({"name": "plan", "experiment": {"family": "poly_online", "dim": 32, "steps": 100, **experiment},
                       "space": space})


def test_bundles_group_by_shape_and_cap_members():
    spec = parse_spec({"name": "plan", "experiment": {"family": "poly_online", "dim": 32, "steps": 10},
                       "space": {"batch_size": [1, 128], "eta": [0.1, 0.2, 0.3], "width": [16, 128]},
                       "fusion": {"max_members": 2}})
    plan, n_done = build_plan(spec)
    assert n_done == 0
    sizes = sorted(len(b.points) for b in plan.bundles.values())
    assert sizes == [1, 1, 1, 1, 2, 2, 2, 2]  # 4 shapes x 3 etas, at most 2 members per bundle
    for b in plan.bundles.values():
        assert len({(p["batch_size"], p["width"]) for p in b.points}) == 1
    keys = [k for b in plan.bundles.values() for k in b.keys]
    assert len(keys) == len(set(keys)) == 12


def test_run_order_puts_the_costliest_bundle_first():
    plan, _ = build_plan(spec_of({"batch_size": [1, 128], "eta": [0.1, 0.2, 0.3], "width": [16, 128]}))
    shape = {bid: (b.points[0]["batch_size"], b.points[0]["width"]) for bid, b in plan.bundles.items()}
    # By hand, per step: 2e6 overhead + 6 K B P, K = 3; P(w=128) = 32*128 + 128*128 + 128 = 20,608 weights,
    # P(w=16) = 32*16 + 16*16 + 16 = 784: (128, 128) 49.5e6 > (128, 16) 3.81e6 > (1, 128) 2.37e6 > (1, 16) 2.01e6
    assert [shape[b] for b in run_order(plan)] == [(128, 128), (128, 16), (1, 128), (1, 16)]
    (big,) = [b for bid, b in plan.bundles.items() if shape[bid] == (128, 128)]
    assert bundle_cost(plan.experiment, big) == 100 * (2e6 + 6 * 3 * 128 * 20_608)


def test_epoch_budgets_cost_fewer_steps_at_larger_batches():
    # fixed data, 10 epochs of 1,024 samples: B = 1 takes 10,240 steps, B = 512 takes 20
    plan, _ = build_plan(spec_of({"batch_size": [1, 512], "eta": [0.1], "width": [8]}, family="poly_fixed",
                                 steps=None, epochs=10, n_train=1024))
    cost = {b.points[0]["batch_size"]: bundle_cost(plan.experiment, b) for b in plan.bundles.values()}
    p = 32 * 8 + 8 * 8 + 8
    assert cost[1] == 10_240 * (2e6 + 6 * p)
    assert cost[512] == 20 * (2e6 + 6 * 512 * p)
    assert run_order(plan)[0] == next(bid for bid, b in plan.bundles.items() if b.points[0]["batch_size"] == 1)


def test_dry_run_lists_bundles_in_run_order():
    from raysweep.plan import describe

    spec = spec_of({"batch_size": [1, 128], "eta": [0.1, 0.2], "width": [16]})
    plan, _ = build_plan(spec)
    text = describe(spec, plan, 0, cuda=False)
    assert "costliest first" in text
    assert text.index("batch_size=128") < text.index("batch_size=1 ")


def test_dry_run_names_every_axis_that_varies_within_a_bundle():
    from raysweep.plan import describe

    spec = spec_of({"batch_size": [8], "eta": [0.1, 0.2], "width": [16], "optimizer": "AdamW",
                    "beta2": [0.95, 0.999], "weight_decay": [0.0, 0.1], "schedule": "cosine", "momentum": 0.0})
    plan, _ = build_plan(spec)
    (line,) = [ln for ln in describe(spec, plan, 0, cuda=False).splitlines() if " x [" in ln]
    assert line.startswith(f"  {next(iter(plan.bundles))}: 8 x [batch_size=8 width=16")
    # varied: listed; off its default: shown once; at its default and fixed: left out
    assert "eta=[0.1, 0.2]" in line and "beta2=[0.95, 0.999]" in line and "weight_decay=[0.0, 0.1]" in line
    assert "schedule=cosine" in line and "gamma=1.0" in line and "seed=0" in line
    assert "momentum" not in line and "beta1" not in line and "warmup" not in line
