"""The probe logic, the fit, the margin, the shares and the cache against a FAKE device: counters (total, free,
peak) and an out-of-memory error above a threshold, the bytes a step "uses" computed from its shapes."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from raysweep.autobatch import (
    MIN_MARGIN,
    AutobatchConfig,
    MemoryModel,
    ModeFit,
    ModelCache,
    auto_batch_size,
    cache_key,
    data_bytes,
    plan_resources,
    raise_if_infeasible,
    request_from_spec,
    static_bytes,
)
from raysweep.autobatch import host as host_module
from raysweep.autobatch.probe import InProcessExecutor, design, run_probe
from raysweep.errors import NothingFitsError, RaysweepError
from raysweep.space import parse_spec
from raysweep.trial import Bundle
from tests.support.fake_device import TRUE, FakeDevice, GiB, MiB, make_spec, probe_fake, runner_for, true_bytes


def test_static_bytes_hand_worked():
    # D=32, N=1024, L=3, out=1: 32*1024 + 1024*1024 + 1024*1 = 1,082,368 weights per member
    assert static_bytes(32, 1024, 3, 1, optimizer="Adam") == 1_082_368 * 5 * 4
    assert static_bytes(32, 1024, 3, 1, optimizer="SGD") == 1_082_368 * 3 * 4
    assert static_bytes(32, 1024, 3, 1, optimizer="SGD", dtype="float64", n_members=3) == 3 * 1_082_368 * 3 * 8


def test_fake_probe_recovers_the_model_and_the_context():
    dev = FakeDevice()
    request, result, model = probe_fake(dev)
    assert request.n_members == 2  # the two etas fuse into one bundle
    assert all(r["status"] == "ok" for r in result["records"])
    assert dev.n_runs == len(result["records"]) == 2 * len(design(request, "Adam", "train"))
    assert model.context_bytes == 500 * MiB  # from the global free-memory delta
    assert model.available_bytes == 79 * GiB + 500 * MiB  # free at probe time + the probe's own context
    assert model.label == "cuda"
    for mode in ("train", "val"):
        fit = model.fit_for("Adam", mode)
        assert fit.coef == pytest.approx(TRUE, rel=1e-6, abs=1e-3)
        assert fit.margin == MIN_MARGIN  # exact fit: the floor
        assert fit.max_rel_error == pytest.approx(0, abs=1e-9)
    # a shape never probed is predicted exactly (static exact, the rest linear)
    p = {"width": 3000, "depth": 4, "batch_size": 777, "n_members": 5, "optimizer": "Adam"}
    assert model.predict(3000, 4, 777, optimizer="Adam", n_members=5) == pytest.approx(true_bytes(request, p), rel=1e-6)
    assert model.need_bytes(3000, 4, 777, optimizer="Adam", n_members=5) == pytest.approx(
        500 * MiB + true_bytes(request, p) * (1 + MIN_MARGIN), rel=1e-6)


def test_margin_is_the_largest_heldout_error():
    dev = FakeDevice()
    # held-out points at the middle width measure 12% more (or 4% more at depth 3) than the shapes say
    def distort(p):
        if p["role"] != "heldout" or p["mode"] != "train":
            return 1.0
        return 1.12 if p["width"] == 1024 and p["depth"] == 2 else 1.04
    _, _, model = probe_fake(dev, distort=distort)
    fit = model.fit_for("Adam", "train")
    assert fit.coef == pytest.approx(TRUE, rel=1e-6, abs=1e-3)  # the fit points are undistorted
    assert fit.margin == pytest.approx(1 - 1 / 1.12, rel=1e-6)  # |pred - meas| / meas = 1 - 1/1.12
    assert fit.max_rel_error == fit.margin
    assert model.fit_for("Adam", "val").margin == MIN_MARGIN


def test_oom_points_are_recorded_and_larger_ones_skipped():
    spec = make_spec()
    request = request_from_spec(spec)
    train = design(request, "Adam", "train")
    biggest = max(train, key=lambda p: true_bytes(request, p))
    # OOM just below the biggest training point (e.g. fragmentation the free memory did not show)
    dev = FakeDevice(oom_above=true_bytes(request, biggest) - 1)
    _, result, model = probe_fake(dev, spec)
    recs = {(r["mode"], r["width"], r["depth"], r["batch_size"], r["n_members"]): r for r in result["records"]}
    key = ("train", biggest["width"], biggest["depth"], biggest["batch_size"], 1)
    assert recs[key]["status"] == "oom" and "out of memory" in recs[key]["error"]
    assert model.fit_for("Adam", "train").coef == pytest.approx(TRUE, rel=1e-6, abs=1e-3)  # fitted from the rest


def test_a_point_larger_than_an_oom_is_skipped_not_run():
    spec = make_spec(depth=[2], width=[4096])
    request = request_from_spec(spec, AutobatchConfig(modes=("train",)))
    pts = sorted(design(request, "Adam", "train"), key=lambda p: true_bytes(request, p))
    dev = FakeDevice(oom_above=true_bytes(request, pts[-2]) - 1)  # the second largest OOMs; the largest is bigger
    _, result, _ = probe_fake(dev, spec, AutobatchConfig(modes=("train",)))
    status = [r["status"] for r in result["records"]]
    assert status[-2:] == ["oom", "skipped"]
    assert "ran out of memory" in result["records"][-1]["error"]
    assert dev.n_runs == len(pts) - 1


def test_nothing_fits_is_a_typed_error_with_evidence():
    dev = FakeDevice(total=2 * GiB, free=502 * MiB, context=500 * MiB)  # 2 MiB left: below the overhead
    with pytest.raises(NothingFitsError, match="FakeGPU") as err:
        probe_fake(dev)
    ev = err.value.evidence
    assert ev["sizes_tried"] and len(ev["sizes_tried"]) == len(ev["bytes_measured"]) == len(ev["records"])
    assert ev["budget_bytes"] == int(0.8 * 502 * MiB)
    assert {r["status"] for r in ev["records"]} <= {"oom", "skipped"}


def hand_model(context=1 * GiB, available=10 * GiB, margin=0.1):
    """M = the exact static bytes only (all fitted coefficients 0), SGD train; no eval fit."""
    fit = ModeFit("SGD", "train", {"overhead": 0.0, "param": 0.0, "sample": 0.0, "hidden": 0.0, "readout": 0.0}, margin,
                  None, None, "hand")
    return MemoryModel(dim=32, n_out=1, dtype="float32", loss="mse", device=FakeDevice().describe(),
                       context_bytes=context, available_bytes=available, fits={"SGD/train": fit})


def test_share_hand_worked():
    spec = parse_spec({"name": "hand", "experiment": {"family": "poly_online", "dim": 32, "n_train": 4096,
                                                      "steps": 10},
                       "space": {"batch_size": [128], "eta": [0.1], "width": [1024], "depth": [3]}})
    model = hand_model()
    plan = plan_resources(spec, spec.points(), device_info=model.device, model=model)
    (ident,) = plan["resources"]
    # params 32*1024 + 1024*1024 + 1024 = 1,082,368; SGD static = 3 copies * 4 B = 12,988,416 B
    # data: train block 4096 * (32*4 + 4) = 540,672; f0 of the block 4096 * 4 = 16,384;
    #       eval 2048 * 132 = 270,336; f0_eval 2048 * 4 = 8,192 -> 835,584 B
    assert data_bytes(spec.experiment.as_dict(), batch_size=128) == 835_584
    need = 2**30 + 12_988_416 * 1.1 + 835_584
    assert plan["need"][ident]["need_bytes"] == int(need)
    usable = 0.8 * 10 * 2**30
    assert plan["usable_bytes"] == int(usable)
    assert plan["resources"][ident] == {"gpu": math.ceil(need / usable * 100) / 100, "cpu": 1.0}
    assert plan["resources"][ident]["gpu"] == 0.13
    assert plan["batch_size"][ident] == 128  # a swept batch size is never changed


def test_plan_sizes_bundles_by_members_and_lists_infeasible():
    dev = FakeDevice()
    _, _, model = probe_fake(dev)
    spec = make_spec(width=[256, 1024, 4096, 65536])  # 65536^2 weights with Adam: > 80 GB even alone
    pts = [p for p in spec.points() if p["depth"] == 3 and p["batch_size"] == 64]
    single = plan_resources(spec, pts, device_info=model.device, model=model)
    bundles = [Bundle(f"b{w}", ("k1", "k2"), tuple(p for p in pts if p["width"] == w)) for w in (256, 1024, 4096)]
    fused = plan_resources(spec, bundles, device_info=model.device, model=model)
    p4096 = [p for p in pts if p["width"] == 4096]
    alone = plan_resources(spec, p4096[:1], device_info=model.device, model=model)
    (need_alone,) = alone["need"].values()
    margin = model.fit_for("Adam", "train").margin
    # K members need K x the per-member bytes (params, activations), one overhead and one shared input minibatch
    assert fused["need"]["b4096"]["train_bytes"] == int(
        model.predict(4096, 3, 64, optimizer="Adam", n_members=2) * (1 + margin))
    shared = (TRUE["overhead"] + TRUE["sample"] * 64 * 32 * 4) * (1 + margin)
    assert fused["need"]["b4096"]["train_bytes"] == pytest.approx(2 * need_alone["train_bytes"] - shared, rel=1e-6)
    # members with their own seeds read their own minibatches: S = 2 input minibatches
    two_seeds = Bundle("s", ("k1", "k2"), tuple({**p, "seed": i} for i, p in enumerate(p4096[:1] * 2)))
    split = plan_resources(spec, [two_seeds], device_info=model.device, model=model)["need"]["s"]
    assert split["train_bytes"] - fused["need"]["b4096"]["train_bytes"] == pytest.approx(
        TRUE["sample"] * 64 * 32 * 4 * (1 + margin), abs=2)
    assert {b["width"] for b in single["infeasible"]} == {65536}
    assert all("even alone" in b["reason"] for b in single["infeasible"])
    assert all(0 < r["gpu"] <= 1 and round(r["gpu"] * 100) == r["gpu"] * 100 for r in single["resources"].values())
    with pytest.raises(NothingFitsError, match="cannot fit on FakeGPU even alone") as err:
        raise_if_infeasible(single, AutobatchConfig())
    assert err.value.evidence["infeasible"] == single["infeasible"]
    raise_if_infeasible(single, AutobatchConfig(infeasible="fail"))  # the launcher lands them as failed rows


def test_plan_refuses_a_model_of_another_device():
    model = hand_model()
    spec = make_spec()
    other = replace(model.device, name="OtherGPU")
    with pytest.raises(RaysweepError, match="not on OtherGPU"):
        plan_resources(spec, spec.points()[:1], device_info=other, model=model)
    with pytest.raises(RaysweepError, match="probe_and_fit"):
        plan_resources(spec, spec.points()[:1], device_info=other)


def test_auto_batch_size_is_the_largest_that_fits():
    dev = FakeDevice()
    _, _, model = probe_fake(dev)
    config = AutobatchConfig(target_memory_fraction=0.5)
    point = {"width": 4096, "depth": 3, "optimizer": "Adam"}
    exp = make_spec().experiment.as_dict()
    found = auto_batch_size(model, point, config, n_members=2, experiment=exp)
    from raysweep.autobatch import trial_need

    need = lambda b: trial_need(model, {**point, "batch_size": b}, n_members=2, experiment=exp)["need_bytes"]  # noqa
    usable = model.usable_bytes(0.5)
    assert need(found.batch_size) <= usable < need(2 * found.batch_size)
    assert found.batch_size & (found.batch_size - 1) == 0
    # through plan_resources, "auto" resolves to the same size
    plan = plan_resources(make_spec(), [Bundle("b", ("a", "b"), tuple({**point, "batch_size": "auto", "seed": 0,
                                                                         "eta": e} for e in (0.1, 0.2)))],
                          device_info=model.device, model=model, config=config)
    assert plan["batch_size"]["b"] == found.batch_size


def test_cache_roundtrip_and_every_key_field_misses(tmp_path):
    dev = FakeDevice()
    request, _, model = probe_fake(dev)
    key = cache_key(request, dev.describe())
    cache = ModelCache(tmp_path)
    cache.store(key, model)
    assert [p.name for p in tmp_path.iterdir()] == ["autobatch_cache.json"]  # no temporary file left behind
    json.loads((tmp_path / "autobatch_cache.json").read_text())
    hit = cache.lookup(key)
    assert hit is not None and hit.to_dict() == json.loads(json.dumps(model.to_dict()))
    assert hit.predict(1024, 3, 100, optimizer="Adam") == model.predict(1024, 3, 100, optimizer="Adam")
    # a change of any key field misses, whether it comes from the spec or from the device
    changes = {
        "dim": replace(request, dim=33), "n_out": replace(request, n_out=2), "depths": replace(request, depths=(2,)),
        "dtype": replace(request, dtype="float64"), "optimizers": replace(request, optimizers=("SGD",)),
        "loss": replace(request, loss="xent"), "modes": replace(request, modes=("train",)),
        "steps": replace(request, steps={"train": 4, "val": 2}),
    }
    for field, req in changes.items():
        assert cache.lookup(cache_key(req, dev.describe())) is None, field
    info = dev.describe()
    for field, value in {"name": "H100", "total_bytes": info.total_bytes + 1, "torch_version": "2.0.0",
                         "cuda_version": "11.8", "kind": "cpu"}.items():
        assert cache.lookup(cache_key(request, replace(info, **{field: value}))) is None, field
    assert set(key) == set(changes) | {"device_kind", "device_name", "device_total_bytes", "torch_version",
                                       "cuda_version", "probe_version"}
    for field in key:  # and at the key level: every single field
        assert cache.lookup({**key, field: "changed"}) is None, field


def test_cache_tolerates_a_corrupt_file(tmp_path):
    (tmp_path / "autobatch_cache.json").write_text("{not json")
    assert ModelCache(tmp_path).lookup({"a": 1}) is None
    ModelCache(tmp_path).store({"a": 1}, hand_model())
    assert ModelCache(tmp_path).lookup({"a": 1}) is not None


def test_probe_and_fit_stores_then_hits_the_cache_without_probing(tmp_path, monkeypatch):
    dev = FakeDevice()
    calls = []

    def call(self, method, request=None):  # the probe subprocess, replaced by the fake device
        calls.append(method)
        if method == "describe":
            return dev.describe().to_dict()
        req = host_module.ProbeRequest.from_dict(request)
        return run_probe(req, InProcessExecutor(dev, runner_for(dev)), dev)

    monkeypatch.setattr(host_module._SubprocessHost, "call", call)
    spec = make_spec()
    first = host_module.probe_and_fit(spec, storage=tmp_path, use_ray=False)
    assert calls == ["describe", "probe"]
    second = host_module.probe_and_fit(spec, storage=tmp_path, use_ray=False)
    assert calls == ["describe", "probe", "describe"]  # a hit: no probe
    assert second.to_dict() == json.loads(json.dumps(first.to_dict()))
    # plan_resources finds it in the storage folder, given the device descriptor
    plan = plan_resources(spec, spec.points()[:3], device_info=dev.describe(), storage=tmp_path)
    assert len(plan["resources"]) == 3
    # another device misses and probes again
    dev.name = "FakeGPU-2"
    host_module.probe_and_fit(spec, storage=tmp_path, use_ray=False)
    assert calls[-2:] == ["describe", "probe"]


def test_bundles_larger_than_memory_are_split_into_bundles_that_fit():
    from raysweep.autobatch.launching import split_bundles
    from raysweep.plan import build_plan

    spec = parse_spec({"name": "split", "experiment": {"family": "poly_online", "dim": 32, "n_train": 4096,
                                                       "steps": 10},
                       "space": {"batch_size": [128], "eta": [0.1, 0.2, 0.3, 0.4, 0.5], "width": [4096],
                                 "depth": [3], "optimizer": ["SGD"]}})
    plan, _ = build_plan(spec)
    (bundle,) = plan.bundles.values()
    assert len(bundle.points) == 5
    # By hand: params 32*4096 + 4096^2 + 4096 = 16,912,384; SGD static 3 copies * 4 B = 202,948,608 B per member,
    # times 1.1 (margin); data 811,008 B + 24,576 B per member (f0 of the block and of the eval set);
    # usable 0.8 * 2 GiB; context 1 GiB -> k members fit while 1 GiB + k (223,243,468.8 + 24,576) + 811,008 <= usable:
    # k <= 2.88, so 5 members -> 2 + 2 + 1.
    model = hand_model(available=2 * GiB)
    split = split_bundles(plan, model, AutobatchConfig(), log=lambda m: None)
    sizes = [len(b.points) for b in split.bundles.values()]
    assert sizes == [2, 2, 1]
    assert [k for b in split.bundles.values() for k in b.keys] == list(bundle.keys)  # every member once, in order
    assert all(b.bundle_id not in plan.bundles for b in split.bundles.values())
    sized = plan_resources(spec, list(split.bundles.values()), device_info=model.device, model=model)
    assert not sized["infeasible"] and len(sized["resources"]) == 3
    # a bundle that fits is kept as it is (same id)
    roomy = split_bundles(plan, hand_model(available=80 * GiB), AutobatchConfig(), log=lambda m: None)
    assert roomy.bundles == plan.bundles


def test_the_gradient_noise_scale_adds_its_batch_and_two_gradient_copies():
    space = {"batch_size": [128], "eta": [0.1], "width": [1024], "depth": [3]}
    experiment = {"family": "poly_online", "dim": 32, "n_train": 4096, "steps": 10}
    off = parse_spec({"name": "hand", "experiment": experiment, "space": space})
    on = parse_spec({"name": "hand", "experiment": {**experiment, "grad_noise_scale": {"batches": 4}},
                     "space": space})
    model = hand_model()
    need_off = plan_resources(off, off.points(), device_info=model.device, model=model)["need"]
    need_on = plan_resources(on, on.points(), device_info=model.device, model=model)["need"]
    # by hand: 4 chunks of B = 128 samples, each 32 inputs + target + f0 (4 B each): 4 * 128 * 34 * 4 = 69,632;
    # two gradient copies of 1,082,368 weights: 2 * 1,082,368 * 4 = 8,658,944
    (a,), (b,) = need_off.values(), need_on.values()
    assert b["need_bytes"] - a["need_bytes"] == 69_632 + 8_658_944
    assert b["data_bytes"] - a["data_bytes"] == 69_632 + 8_658_944


def test_curvature_tracking_adds_its_batch_and_per_member_lanczos_and_graph():
    space = {"batch_size": [128], "eta": [0.1], "width": [1024], "depth": [3]}
    experiment = {"family": "poly_online", "dim": 32, "n_train": 4096, "steps": 10}
    off = parse_spec({"name": "hand", "experiment": experiment, "space": space})
    on = parse_spec({"name": "hand", "experiment": {**experiment, "curvature": {"batch": 256, "steps": 10}},
                     "space": space})
    model = hand_model()
    need_off = plan_resources(off, off.points(), device_info=model.device, model=model)["need"]
    need_on = plan_resources(on, on.points(), device_info=model.device, model=model)["need"]
    # by hand: the curvature batch, 256 samples of 32 inputs + target + f0 (4 B each): 256 * 34 * 4 = 34,816;
    # one member: 14 copies of its 1,082,368 weights (10 Lanczos steps + 4), 14 * 1,082,368 * 4 = 60,612,608,
    # and the graph, (6 * (2 * 1024 + 1) + 2) * 256 * 4 = 12,591,104
    (a,), (b,) = need_off.values(), need_on.values()
    assert b["need_bytes"] - a["need_bytes"] == 34_816 + 60_612_608 + 12_591_104


def test_the_memory_model_sizes_optimizers_by_the_state_they_hold():
    from raysweep.autobatch.memory import STATE_COPIES, memory_optimizer

    assert memory_optimizer({"optimizer": "SGD"}) == "SGD"  # fused into the backward
    assert memory_optimizer({"optimizer": "SGD", "momentum": 0.9}) == "SGD+momentum"
    assert memory_optimizer({"optimizer": "SGD", "weight_decay": 0.1}) == "SGD+momentum"
    assert memory_optimizer({"optimizer": "Adam", "beta2": 0.99}) == "Adam"
    assert memory_optimizer({"optimizer": "AdamW", "weight_decay": 0.1}) == "Adam"
    assert {memory_optimizer({"optimizer": k}) for k in STATE_COPIES} == set(STATE_COPIES)
    assert static_bytes(8, 16, 2, 1, optimizer="SGD+momentum") * 3 == static_bytes(8, 16, 2, 1, optimizer="SGD") * 4


def test_an_sgd_momentum_probe_runs_the_general_path_on_cpu():
    from raysweep.autobatch.steps import run_steps

    request = host_module.ProbeRequest(dim=8, n_out=1, widths=(16,), depths=(2,), batch_sizes={"train": (4,), "val": (4,)},
                           optimizers=("SGD+momentum",), modes=("train",), dtype="float32", loss="mse",
                           n_members=2, steps={"train": 2, "val": 1})
    run_steps(request, {"mode": "train", "optimizer": "SGD+momentum", "n_members": 2, "batch_size": 4, "width": 16,
                        "depth": 2})
