"""Autobatch for model factories (raysweep.autobatch.factory) on a fake device: the exact sizes measured for
``batch_size: auto``, one measurement per shape, the split of a bundle that does not fit, an infeasible member
refused with its evidence or landed as failed rows, the measurement cache; the launcher's wiring."""

from __future__ import annotations

import json

import pytest

from raysweep.autobatch import launching
from raysweep.autobatch.factory import SimulatedSweepTrials, SweepJob, size_factory_plan
from raysweep.errors import NothingFitsError
from raysweep.plan import build_plan, bundle_id
from raysweep.space import parse_spec

N_EVAL = 360  # the digits' eval set (raysweep.examples.cnn:digits_images); 1437 training samples


def cnn_spec(batch_size, etas, **autobatch):
    raw = {
        "name": "fab",
        "experiment": {"family": "custom", "factory": "raysweep.examples.cnn:digits_images", "epochs": 1,
                       "model": {"factory": "raysweep.examples.cnn:build"}},
        "space": {"batch_size": batch_size, "eta": etas, "width": 8, "depth": 3, "parametrization": "muP",
                  "optimizer": "SGD", "loss": "xent"},
        "autobatch": {"target_memory_fraction": 1.0, **autobatch},
    }
    return parse_spec(raw)


def linear_peak(per_sample_train: int, per_sample_val: int):
    """Peak bytes = K x per-sample bytes x batch (train) or x the eval set (val)."""

    def peak_of(job: SweepJob, b: int) -> int:
        return job.n_members * b * (per_sample_train if job.mode == "train" else per_sample_val)

    return peak_of


def test_auto_sequence_and_one_measurement_per_shape(tmp_path):
    # K = 2 members; usable 1e6 B, margin 5%: train need 1.05 * 2000 b <= 1e6 up to b = 476 -> 256 on pow2 [1, 1024].
    # The eval forward (2 x 100 x 360 B) is measured once for both bundles (same shape, same K).
    spec = cnn_spec(["auto", 16], [0.1, 0.2], max_batch_size=1024)
    plan, _ = build_plan(spec)
    dev = SimulatedSweepTrials(linear_peak(1000, 100), 10**6)
    lines = []
    sized_plan, sized = size_factory_plan(spec, plan, dev, storage=tmp_path, log=lines.append)
    assert dev.calls == [("val", 2, N_EVAL), ("train", 2, 1024), ("train", 2, 1), ("train", 2, 32),
                         ("train", 2, 128), ("train", 2, 256), ("train", 2, 512), ("train", 2, 16)]
    auto_id = next(b for b, x in plan.bundles.items() if x.points[0]["batch_size"] == "auto")
    swept_id = next(b for b in plan.bundles if b != auto_id)
    assert sized["batch_size"] == {auto_id: 256, swept_id: 16} and not sized["infeasible"]
    assert sized["resources"][auto_id] == {"cpu": 1.0, "memory": int(1.05 * 2000 * 256)}
    assert sized["resources"][swept_id] == {"cpu": 1.0, "memory": int(1.05 * 2 * 100 * N_EVAL)}  # eval peaks
    assert sized_plan.bundles == plan.bundles and sized["measured"] == 8
    assert sum("train n_members=2 batch" in line for line in lines) == 7
    # a relaunch: every measurement from the cache, nothing run
    again = SimulatedSweepTrials(linear_peak(1000, 100), 10**6)
    lines.clear()
    _, cached = size_factory_plan(spec, plan, again, storage=tmp_path, log=lines.append)
    assert again.calls == [] and cached["batch_size"] == sized["batch_size"] and cached["measured"] == 0
    assert cached["resources"] == sized["resources"]
    assert any("nothing measured" in line for line in lines), lines
    # the max batch is the training set: 1437 samples -> 1024 at most, whatever max_batch_size says
    big = SimulatedSweepTrials(lambda job, b: 1, 10**9)
    _, wide = size_factory_plan(cnn_spec(["auto"], [0.1], max_batch_size=65536), build_plan(
        cnn_spec(["auto"], [0.1], max_batch_size=65536))[0], big, log=lambda _m: None)
    assert big.calls == [("val", 1, N_EVAL), ("train", 1, 1024)] and set(wide["batch_size"].values()) == {1024}


def test_an_online_teacher_searches_past_its_block():
    # poly_online: blocks of 64 fresh samples, but a batch may span blocks: auto goes up to max_batch_size
    spec = parse_spec({"name": "fo", "experiment": {"family": "poly_online", "dim": 8, "n_train": 64, "steps": 10,
                                                    "model": {"factory": "tests.support.factories:mlp"}},
                       "space": {"batch_size": "auto", "eta": 0.1, "width": 8, "parametrization": "muP"},
                       "autobatch": {"target_memory_fraction": 1.0, "max_batch_size": 4096}})
    dev = SimulatedSweepTrials(lambda job, b: 1, 10**9)
    _, sized = size_factory_plan(spec, build_plan(spec)[0], dev, log=lambda _m: None)
    assert ("train", 1, 4096) in dev.calls and set(sized["batch_size"].values()) == {4096}


def test_a_bundle_that_does_not_fit_is_split_into_the_largest_halving_that_does():
    # 5 members at batch 64; need(K) = 1.05 * 1000 * 64 * K: K = 5 and 3 exceed 200,000 B, K = 2 fits -> chunks of
    # 2, 2 and a last one of 1 (sized on its own).
    spec = cnn_spec([64], [0.1, 0.2, 0.3, 0.4, 0.5])
    plan, _ = build_plan(spec)
    (bundle,) = plan.bundles.values()
    dev = SimulatedSweepTrials(linear_peak(1000, 1), 200_000)
    lines = []
    sized_plan, sized = size_factory_plan(spec, plan, dev, log=lines.append)
    assert dev.calls == [("val", 5, N_EVAL), ("train", 5, 64), ("val", 3, N_EVAL), ("train", 3, 64),
                         ("val", 2, N_EVAL), ("train", 2, 64), ("val", 1, N_EVAL), ("train", 1, 64)]
    keys = bundle.keys
    want = [bundle_id(keys[0:2]), bundle_id(keys[2:4]), bundle_id(keys[4:5])]
    assert list(sized_plan.bundles) == want
    assert [sized_plan.bundles[b].keys for b in want] == [keys[0:2], keys[2:4], keys[4:5]]
    assert [sized["resources"][b]["memory"] for b in want] == [int(1.05 * 128_000)] * 2 + [int(1.05 * 64_000)]
    assert any("1 bundle(s) split" in line and "(1 -> 3 trials)" in line for line in lines), lines


def test_an_auto_bundle_splits_when_nothing_fits_at_min_batch_size():
    # 4 members, pow2 [32, 256], need 1.05 * 1000 K b <= 100,000: K = 4 fails even at 32 (the search: 256, 32);
    # K = 2 fits at 32 (measured first), then its own search: 256 no, 32 (known), 64 no -> 32
    spec = cnn_spec(["auto"], [0.1, 0.2, 0.3, 0.4], min_batch_size=32, max_batch_size=256)
    plan, _ = build_plan(spec)
    dev = SimulatedSweepTrials(linear_peak(1000, 1), 100_000)
    sized_plan, sized = size_factory_plan(spec, plan, dev, log=lambda _m: None)
    assert dev.calls == [("val", 4, N_EVAL), ("train", 4, 256), ("train", 4, 32), ("val", 2, N_EVAL),
                         ("train", 2, 32), ("train", 2, 256), ("train", 2, 64)]
    assert len(sized_plan.bundles) == 2 and set(sized["batch_size"].values()) == {32}


def factory_size_plan(monkeypatch, dev):
    """launching.size_plan with the fake device in place of the real one."""
    monkeypatch.setattr(launching, "measure_and_size", lambda spec, plan, storage, *, cuda, log:
                        size_factory_plan(spec, plan, dev, storage=storage, log=log))
    monkeypatch.setattr(launching, "_cluster_has_real_gpus", lambda: False)
    return launching.size_plan


def test_an_infeasible_member_is_refused_with_evidence(monkeypatch, tmp_path):
    # width 8 fits; a member that needs 1.05 MB of a 1 MB budget does not fit alone, at 64 or at any auto size
    spec = cnn_spec([64, "auto"], [0.1], min_batch_size=64, max_batch_size=128)
    plan, _ = build_plan(spec)
    dev = SimulatedSweepTrials(lambda job, b: 10**6 if job.mode == "train" else 10, 10**6)
    size_plan = factory_size_plan(monkeypatch, dev)
    with pytest.raises(NothingFitsError) as err:
        size_plan(spec, plan, tmp_path, log=lambda _m: None)
    text = str(err.value)
    assert "2 trial(s) cannot fit on simulated even alone" in text and "autobatch.infeasible: fail" in text
    assert "batch_size=64 n_members=1" in text and "batch_size=auto n_members=1" in text
    bad = err.value.evidence["infeasible"]
    assert {b["id"] for b in bad} == set(plan.bundles) and err.value.evidence["budget_bytes"] == 10**6
    swept = next(b for b in bad if b["batch_size"] == 64)
    assert swept["need_bytes"] == int(1.05 * 10**6) and "even alone" in swept["reason"]
    assert [(t["mode"], t["batch_size"], t["status"]) for t in swept["trials"]] == [
        ("val", N_EVAL, "ok"), ("train", 64, "over_budget")]
    auto = next(b for b in bad if b["batch_size"] == "auto")
    assert [t["batch_size"] for t in auto["trials"] if t["mode"] == "train"] == [128, 64]


def test_infeasible_fail_lands_failed_rows_and_sizes_the_rest(monkeypatch, tmp_path):
    spec = cnn_spec([16, 512], [0.1, 0.2], infeasible="fail")
    plan, _ = build_plan(spec)
    dev = SimulatedSweepTrials(lambda job, b: 1000 * b if job.mode == "train" else 10, 200_000)  # 512 cannot fit
    lines = []
    sized_plan, resources, failed = factory_size_plan(monkeypatch, dev)(spec, plan, tmp_path, log=lines.append)
    assert len(failed) == 2 and {r["batch_size"] for r in failed} == {512}
    assert all(r["status"] == "failed" and r["error"].startswith("infeasible: batch_size 512 does not fit")
               for r in failed)
    (kept,) = sized_plan.bundles.values()  # 2 members at 16 need 16,000 x 1.05 (this fake ignores K): fit
    assert kept.points[0]["batch_size"] == 16 and len(kept.points) == 2
    assert resources({"bundle": kept.bundle_id}) == {"cpu": 1.0, "memory": int(16_000 * 1.05)}
    assert any(line.startswith("autobatch (simulated on simulated): 1 trials sized, 1 infeasible; usable 0 MiB")
               for line in lines), lines


def test_the_launcher_probes_a_factory_spec_under_the_mlp_conditions():
    assert launching.wants_probe(cnn_spec([16], [0.1]), {})  # an autobatch: section
    assert launching.wants_probe(cnn_spec(["auto"], [0.1], max_batch_size=64), {})
    plain = parse_spec({"name": "p", "experiment": {"family": "custom", "factory": "raysweep.examples.cnn:"
                                                    "digits_images", "epochs": 1,
                                                    "model": {"factory": "raysweep.examples.cnn:build"}},
                        "space": {"batch_size": 16, "eta": 0.1, "width": 8, "loss": "xent"}})
    assert not launching.wants_probe(plain, {"GPU": 4.0})  # logical GPUs only
    assert launching.wants_probe(plain, {"GPU": 1.0, "accelerator_type:H100": 1.0})


class FlatCounters:
    """CUDA-like counters that see nothing (the steps run on the CPU): the in-process trial's mechanics only."""

    index = 0

    def free_bytes(self):
        return 10**9

    def current_bytes(self):
        return 0

    def reset_peak(self):
        pass

    def peak_bytes(self):
        return 0, 0

    def release(self):
        pass


def test_a_sweep_job_crosses_as_plain_data_and_runs_the_real_step_in_process():
    from raysweep.autobatch.trials import CudaTrials, job_from_dict

    spec = cnn_spec([8], [0.1, 0.2])
    job = SweepJob(spec.experiment.as_dict(), spec.points()[0], 2, "train", 2)
    again = job_from_dict(json.loads(json.dumps(job.to_dict())))  # the kind picks the class
    assert isinstance(again, SweepJob) and again == job
    trials = CudaTrials(again, counters=FlatCounters(), device="cpu")
    trials.check(8)
    rec = trials.run(8, 10**9)  # the real CNN's train steps of 2 members at batch 8
    assert rec["status"] == "ok" and rec["error"] is None


@pytest.mark.slow
def test_the_standalone_command_measures_a_factory_space_once(tmp_path, capsys):
    """``python -m raysweep.autobatch SPACE.yaml`` on a model factory's space: the launcher's measured sizing as a
    table (auto resolved, the need, the resources), cached for the launch; --fractions is a memory model's flag."""
    import yaml

    from raysweep.autobatch.__main__ import main

    path = tmp_path / "fab.yaml"
    path.write_text(yaml.safe_dump({
        "name": "fab", "experiment": {"family": "custom", "factory": "raysweep.examples.cnn:digits_images",
                                      "epochs": 1, "model": {"factory": "raysweep.examples.cnn:build"}},
        "space": {"batch_size": ["auto", 16], "eta": [0.1, 0.2], "width": 8, "depth": 3, "loss": "xent"},
        "autobatch": {"target_memory_fraction": 0.8, "max_batch_size": 256}}))
    out = tmp_path / "sized.json"
    args = [str(path), "--storage", str(tmp_path / "res"), "--no-ray", "--output", str(out)]
    assert main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert sorted(r["batch_size"] for r in rows) == [16, 256] and all(r["n_members"] == 2 for r in rows)
    assert all(r["resources"]["memory"] == r["need_bytes"] > 0 and r["infeasible"] is None for r in rows)
    assert (tmp_path / "res" / "fab" / "autobatch_modules.json").exists()
    capsys.readouterr()
    assert main(args) == 0  # the launch (and a second look) reads the measurements
    assert "nothing measured" in capsys.readouterr().out
    assert main([str(path), "--fractions", "0.5"]) == 2
    assert "--fractions: not with a model factory's space" in capsys.readouterr().err


def test_dry_run_reads_the_sizes_from_the_cache_and_measures_nothing(tmp_path):
    """--dry-run of a factory sweep: without measurements of this CPU it says so; with them (a launch's, or the
    standalone command's) it prints every trial's resources and batch size; it never measures nor writes."""
    from raysweep.api import RunOptions, run
    from raysweep.autobatch.factory import CpuSweepTrials

    spec = cnn_spec(["auto", 16], [0.1, 0.2], max_batch_size=256)
    options = RunOptions(storage=str(tmp_path), dry_run=True)
    text = run(spec, options).text
    assert "not every bundle shape is measured on this machine's CPU yet" in text
    assert not (tmp_path / "fab").exists()
    # the measurements a launch on this CPU would take, in the sweep folder's cache (a fake device with the real
    # CPU's description: the same cache keys)
    fake = SimulatedSweepTrials(linear_peak(1000, 100), 10**9)
    real = CpuSweepTrials()
    fake.label, fake.describe = real.label, real.describe
    (tmp_path / "fab").mkdir()
    size_factory_plan(spec, build_plan(spec)[0], fake, storage=tmp_path / "fab", log=lambda _m: None)
    cached = (tmp_path / "fab" / "autobatch_modules.json").read_text()
    text = run(spec, options).text
    assert "autobatch plan from the cached measurements" in text and "2 trials sized, 0 infeasible" in text
    assert "batch_size=256 (auto)" in text and "batch_size=16" in text
    assert (tmp_path / "fab" / "autobatch_modules.json").read_text() == cached  # nothing measured or written
