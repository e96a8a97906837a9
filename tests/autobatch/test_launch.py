"""Autobatch in a real Ray: shares sized by the fitted model never overcommit a (logical) GPU and every trial caps
its memory; the launcher resolves ``batch_size: auto`` in CPU mode, caches the model and reuses it; configs that
cannot fit land as failed rows (``infeasible: fail``) or stop the launch (``refuse``); ``--dry-run`` shows the plan.

The GPU part runs on the session's logical GPUs (no CUDA): the model is fitted from the FAKE device of
``tests/support/fake_device.py`` and only the CUDA calls of the memory cap are mocked, inside each trial.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from raysweep.autobatch import (
    AutobatchConfig,
    MemoryModel,
    ModeFit,
    ModelCache,
    cache_key,
    cap_fraction,
    cpu_device_info,
    max_concurrent_per_gpu,
    plan_resources,
    request_from_spec,
)
from raysweep.results import read_trials
from raysweep.schema import TRIALS_SCHEMA
from raysweep.points import config_key
from raysweep.space import parse_spec
from tests.support.fake_device import FakeDevice, GiB, MiB, probe_fake

pytestmark = pytest.mark.ray


# ---------------------------------------------------------------------------------------------------------------
# 1. Logical GPUs: sized trials never overcommit, every trial caps its memory, a bigger share gets fewer neighbours
# ---------------------------------------------------------------------------------------------------------------

BARRIER_TIMEOUT_S = 120.0


def packed_trial(config: dict) -> None:
    """A Tune trial that records where it ran and what it held, applies the memory cap with the CUDA calls mocked,
    waits until every trial of the experiment has started (so that they overlap), then holds ~1 s."""
    import ray
    import torch
    from ray import tune

    from raysweep.autobatch import apply_memory_cap

    start = time.time()
    ctx = ray.get_runtime_context()
    assigned = ctx.get_assigned_resources()
    share = float(assigned.get("GPU", 0.0))
    fractions = []
    saved = torch.cuda.is_available, torch.cuda.set_per_process_memory_fraction
    torch.cuda.is_available = lambda: True  # no CUDA here: only the calls the cap makes are mocked
    torch.cuda.set_per_process_memory_fraction = lambda fraction, device=None: fractions.append(float(fraction))
    try:
        applied = apply_memory_cap(share, "cuda")
    finally:
        torch.cuda.is_available, torch.cuda.set_per_process_memory_fraction = saved
    barrier = Path(config["barrier"])
    (barrier / config["bundle"]).touch()
    while len(list(barrier.iterdir())) < config["n_trials"] and time.time() - start < BARRIER_TIMEOUT_S:
        time.sleep(0.05)
    time.sleep(1.0)
    tune.report({"bundle": config["bundle"], "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "share": share,
                 "cpu": float(assigned.get("CPU", 0.0)), "applied": applied, "fractions": fractions,
                 "start": start, "end": time.time()})


def sum_and_neighbours(rows: list[dict]) -> tuple[dict[str, float], dict[str, int]]:
    """Per GPU id the largest sum of shares at any instant; per trial the most trials it shared its GPU with at
    any instant of its run. The instants checked are every start (where a sum can grow)."""
    peak_sum: dict[str, float] = {}
    neighbours = {r["bundle"]: 0 for r in rows}
    for gpu in {r["gpu_ids"][0] for r in rows}:
        on = [r for r in rows if r["gpu_ids"][0] == gpu]
        for t in sorted(r["start"] for r in on):
            live = [r for r in on if r["start"] <= t <= r["end"]]
            peak_sum[gpu] = max(peak_sum.get(gpu, 0.0), sum(r["share"] for r in live))
            for r in live:
                neighbours[r["bundle"]] = max(neighbours[r["bundle"]], len(live) - 1)
    return peak_sum, neighbours


@pytest.mark.slow  # 7 Ray workers importing torch: 30-60 s on 2 loaded cores
def test_sized_trials_never_overcommit_a_gpu_and_cap_their_memory(ray_cluster, tmp_path, monkeypatch):
    from ray import tune

    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    # a 16 GiB (fake) GPU measured by the probe logic; 6 seeds of a width needing ~1/4 of it and one config of a
    # width needing ~1/2 (few trials: each is a worker process importing torch on 2 shared cores)
    spec = parse_spec({
        "name": "pack",
        "experiment": {"family": "poly_online", "dim": 32, "steps": 10},
        "space": {"batch_size": [16384], "width": [4096, 8192], "depth": [3], "eta": [0.1], "optimizer": ["Adam"],
                  "seed": {"range": [0, 6]}},
        "fusion": {"enabled": False},
        "resources": {"cpus_per_trial": 0.1},
    })
    dev = FakeDevice(total=16 * GiB, free=15 * GiB + 512 * MiB, context=500 * MiB, name="FakeGPU-16G")
    _, _, model = probe_fake(dev, spec)
    points = [p for p in spec.points() if p["width"] == 4096 or p["seed"] == 0]
    sized = plan_resources(spec, points, device_info=model.device, model=model)
    assert not sized["infeasible"] and len(sized["resources"]) == 7
    experiment = spec.experiment.as_dict()
    large = config_key(experiment, next(p for p in points if p["width"] == 8192))
    small = {config_key(experiment, p) for p in points if p["width"] == 4096}
    big_share, small_share = sized["resources"][large]["gpu"], sized["resources"][min(small)]["gpu"]
    # (0.49, 0.24): a GPU holds the large config and 2 small ones, or 4 small ones
    assert 0.4 <= big_share <= 0.5 and 0.2 <= small_share <= 0.25, (big_share, small_share)
    with_big = max_concurrent_per_gpu([big_share] + [small_share] * 6)  # first fit, as Ray packs fractions
    alone = max_concurrent_per_gpu(small_share)
    assert (with_big, alone) == (3, 4)
    assert {sized["resources"][k]["gpu"] for k in small} == {small_share}
    resources = sized["resources"]

    barrier = tmp_path / "barrier"
    barrier.mkdir()
    tuner = tune.Tuner(
        tune.with_resources(packed_trial, lambda cfg: resources[cfg["bundle"]]),
        param_space={"bundle": tune.grid_search(sorted(resources, key=lambda k: k != large)),
                     "barrier": str(barrier), "n_trials": len(resources)},
        run_config=tune.RunConfig(name="pack", storage_path=str(tmp_path / "tune"), verbose=0),
    )
    grid = tuner.fit()
    assert not grid.errors, grid.errors
    rows = [r.metrics for r in grid]
    assert sorted(r["bundle"] for r in rows) == sorted(resources)

    for r in rows:
        want = resources[r["bundle"]]
        assert r["share"] == pytest.approx(want["gpu"]) and r["cpu"] == pytest.approx(want["cpu"])
        assert len(r["gpu_ids"]) == 1  # a fractional share lives on one GPU
        # the cap was applied, once, at the share (the guard's default cap: share x total >= share x usable)
        assert r["applied"] is True
        assert r["fractions"] == [pytest.approx(cap_fraction(want["gpu"]))] == [pytest.approx(want["gpu"])]
    peak_sum, neighbours = sum_and_neighbours(rows)
    assert all(s <= 1 + 1e-9 for s in peak_sum.values()), peak_sum
    big_neighbours = neighbours[large]
    small_neighbours = max(neighbours[k] for k in small)
    # the capacity bounds the sizing implies, and the trials did share GPUs up to them
    assert big_neighbours <= with_big - 1 and small_neighbours <= alone - 1
    assert big_neighbours < small_neighbours, (neighbours, peak_sum)
    assert max(peak_sum.values()) > 0.8  # one GPU was packed close to full, never over


# ---------------------------------------------------------------------------------------------------------------
# 2. CPU mode end to end through the command line: batch_size: auto resolved, the model cached and reused
# ---------------------------------------------------------------------------------------------------------------


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow  # the probe: ~20 real steps, each in a fresh process (about a minute on 2 loaded cores)
def test_cli_cpu_mode_resolves_auto_caches_the_model_and_reuses_it(ray_cluster, executions, run_cli, tmp_path):
    spec = {
        "name": "abcpu",
        # dim 7 tags this test's executions in the side channel
        "experiment": {"family": "poly_online", "dim": 7, "n_train": 256, "steps": 40, "report_every": 20},
        "space": {"batch_size": ["auto", 16], "eta": [0.1, 0.2], "width": 16, "depth": 2},
        "autobatch": {"max_batch_size": 4096},
    }
    path = write_spec(tmp_path / "abcpu.yaml", spec)
    storage = tmp_path / "results"
    args = (str(path), "--storage", str(storage), "--address", ray_cluster)
    first = run_cli("raysweep.launch", *args)
    assert first.returncode == 0, first.stderr
    assert "autobatch: probed" in first.stderr and "cpu-rss" in first.stderr, first.stderr
    sweep = storage / "abcpu"
    assert (sweep / "autobatch_cache.json").exists()
    df = read_trials(sweep).to_pandas()
    assert read_trials(sweep).schema == TRIALS_SCHEMA
    assert len(df) == 4 and (df.status == "completed").all(), df[["batch_size", "status", "error"]]
    assert df.batch_size.dtype == "int64" and df.batch_size.notna().all()
    auto = df[df.batch_size != 16]
    assert len(auto) == 2 and set(auto.batch_size) == {4096}  # a tiny MLP: the top of the search range fits
    assert (df.temperature == df.eta / df.batch_size).all()
    # CPU mode: trials held Ray's `memory` resource, sized by the model (a bigger batch needs more)
    assert df.memory_bytes.notna().all() and (df.memory_bytes > 0).all()
    assert auto.memory_bytes.min() > df[df.batch_size == 16].memory_bytes.max()
    assert df.gpu_share.eq(0).all() and df.memory_cap.isna().all()

    # a larger eta axis: the cached model is reused (no probe) and only the two new points run
    spec["space"]["eta"] = [0.1, 0.2, 0.4]
    write_spec(path, spec)
    mark = time.time()
    second = run_cli("raysweep.launch", *args)
    assert second.returncode == 0, second.stderr
    assert "probed" not in second.stderr and "cached memory model" in second.stderr, second.stderr
    ran = executions(mark, dim=7)
    assert sorted((r["eta"], r["batch_size"]) for r in ran) == [(0.4, 16), (0.4, 4096)]
    df = read_trials(sweep).to_pandas()
    assert len(df) == 6 and df.config_key.is_unique and df.batch_size.notna().all()
    assert sorted(df[df.eta == 0.4].batch_size) == [16, 4096]


# ---------------------------------------------------------------------------------------------------------------
# 3. Configs that cannot fit even alone: failed rows (infeasible: fail) or no launch at all (refuse)
# 4. --dry-run shows the autobatch plan
# ---------------------------------------------------------------------------------------------------------------


def seed_cpu_model(sweep_dir: Path, spec) -> MemoryModel:
    """A pre-fitted cpu-rss model of ``spec``'s shapes on this machine's CPU, cached in ``sweep_dir`` under the key
    the launcher looks up, so that the launch sizes without probing. Hand-made coefficients (bytes per regressor):
    a 10 MiB context, 8 GiB free; width 16 needs ~12 MiB, width 2048 (depth 3, 2 members) ~290 MiB."""
    info = cpu_device_info()
    fits = {f"SGD/{mode}": ModeFit("SGD", mode, {"overhead": 2**20, "param": 1.0, "sample": 4.0, "readout": 2.0,
                                                 "hidden": 3.0 if mode == "train" else 1.0}, 0.1, 0.1, 0.1, "seeded")
            for mode in ("train", "val")}
    model = MemoryModel(dim=spec.experiment.as_dict()["dim"], n_out=1, dtype="float32", loss="mse", device=info,
                        context_bytes=10 * MiB, available_bytes=8 * GiB, fits=fits, covered={"width": [16, 4096]})
    config = spec.autobatch or AutobatchConfig()
    ModelCache(sweep_dir).store(cache_key(request_from_spec(spec, config), info), model)
    return model


def infeasible_spec(name: str, **autobatch) -> dict:
    # usable = 0.005 x 8 GiB = 41 MiB: width 16 fits (auto resolves to max_batch_size), width 2048 never does
    return {
        "name": name,
        # dim 6 tags this test's executions; device cpu: the driver describes the CPU itself (no probe actor)
        "experiment": {"family": "poly_online", "dim": 6, "n_train": 256, "steps": 40, "report_every": 20,
                       "device": "cpu"},
        "space": {"batch_size": ["auto", 16], "eta": [0.1, 0.2], "width": [16, 2048], "depth": 3},
        "autobatch": {"target_memory_fraction": 0.005, "max_batch_size": 1024, **autobatch},
    }


@pytest.fixture
def launch_in_process(ray_cluster, monkeypatch, capsys):
    """``python -m raysweep.launch ARGS`` in this process, on the session's Ray: (exit code, stdout, stderr)."""
    from raysweep import launch

    for var in ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "RAY_AIR_NEW_OUTPUT", "TUNE_DISABLE_STRICT_METRIC_CHECKING",
                "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"):
        monkeypatch.setenv(var, {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_"
                                 "THRESHOLD_S": "1000"}.get(var, "1"))  # launch's setdefaults: restored after

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = launch.main([*args, "--address", ray_cluster])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_infeasible_fail_lands_failed_rows_and_runs_the_rest(launch_in_process, executions, tmp_path):
    spec_dict = infeasible_spec("abfail", infeasible="fail")
    path = write_spec(tmp_path / "abfail.yaml", spec_dict)
    spec = parse_spec(spec_dict)
    storage = tmp_path / "results"
    seed_cpu_model(storage / "abfail", spec)
    mark = time.time()
    code, out, err = launch_in_process(str(path), "--storage", str(storage))
    assert code == 0, err
    assert "cached memory model" in err and "probed" not in err and "2 infeasible" in err, err
    df = read_trials(storage / "abfail").to_pandas()
    assert len(df) == 8 and df.config_key.is_unique
    bad, good = df[df.width == 2048], df[df.width == 16]
    assert (bad.status == "failed").all() and bad.error.str.startswith("infeasible:").all()
    assert bad.error.str.contains("even alone").any()
    assert bad[bad.temperature.isna()].batch_size.isna().all()  # batch_size: auto that cannot fit: null
    assert sorted(bad.batch_size.dropna()) == [16, 16]
    assert bad.batch_size.isna().sum() == 2 and (bad.steps == 0).all()
    assert (good.status == "completed").all() and sorted(good.batch_size) == [16, 16, 1024, 1024]
    assert good.memory_bytes.notna().all() and bad.memory_bytes.isna().all()
    ran = executions(mark, dim=6)
    assert sorted((r["width"], r["batch_size"]) for r in ran) == [(16, 16)] * 2 + [(16, 1024)] * 2


def test_infeasible_refuse_exits_1_listing_them_and_runs_nothing(launch_in_process, executions, tmp_path):
    spec_dict = infeasible_spec("abrefuse")  # infeasible: refuse is the default
    path = write_spec(tmp_path / "abrefuse.yaml", spec_dict)
    storage = tmp_path / "results"
    seed_cpu_model(storage / "abrefuse", parse_spec(spec_dict))
    mark = time.time()
    code, out, err = launch_in_process(str(path), "--storage", str(storage))
    assert code == 1, (out, err)
    assert "2 trial(s) cannot fit on" in err and "even alone" in err and "autobatch.infeasible: fail" in err, err
    assert err.count("(width=2048 depth=3") == 2 and "width=16 " not in err  # both width-2048 bundles are listed
    assert "batch_size=auto" in err and "batch_size=16" in err
    assert read_trials(storage / "abrefuse").num_rows == 0
    assert not executions(mark, dim=6)


def test_dry_run_shows_the_autobatch_plan(launch_in_process, tmp_path):
    spec_dict = infeasible_spec("abdry", infeasible="fail")
    path = write_spec(tmp_path / "abdry.yaml", spec_dict)
    storage = tmp_path / "results"
    code, out, err = launch_in_process(str(path), "--storage", str(storage), "--dry-run")
    assert code == 0, err
    assert "trials are sized by autobatch at launch" in out and "target memory fraction 0.005" in out, out
    assert "batch_size: auto = the largest pow2 batch in [1, 1024]" in out
    assert "no cached memory model of this machine's CPU" in out and "memory=" not in out
    # with a cached model of this CPU: every trial's resources and resolved batch size, from plan_resources
    spec = parse_spec(spec_dict)
    model = seed_cpu_model(storage / "abdry", spec)
    code, out, err = launch_in_process(str(path), "--storage", str(storage), "--dry-run")
    assert code == 0, err
    from raysweep.plan import build_plan

    plan, _ = build_plan(spec)
    sized = plan_resources(spec, list(plan.bundles.values()), device_info=model.device, model=model)
    assert f"autobatch plan from the cached cpu-rss model of {model.device.name}: 2 trials sized, 2 infeasible" in out
    for bid, bundle in plan.bundles.items():
        (line,) = [x for x in out.splitlines() if x.startswith(f"  {bid}: ") and ("memory=" in x or "infeasible" in x)]
        if bundle.points[0]["width"] == 2048:
            assert "infeasible (lands as failed)" in line, line
            assert ("does not fit" if bundle.points[0]["batch_size"] == "auto" else "even alone") in line, line
        else:
            mib = sized["resources"][bid]["memory"] / 2**20
            want = 1024 if bundle.points[0]["batch_size"] == "auto" else 16
            assert f"cpu=1, memory={mib:.0f} MiB; batch_size={want}" in line, line
    assert not (storage / "abdry" / "trials").exists()  # a dry run starts nothing
    # a spec without autobatch says nothing about it
    plain = {**spec_dict, "name": "abplain", "space": {**spec_dict["space"], "batch_size": [16]}}
    plain.pop("autobatch")
    code, out, _ = launch_in_process(str(write_spec(tmp_path / "plain.yaml", plain)), "--storage", str(storage),
                                     "--dry-run")
    assert code == 0 and "autobatch" not in out
