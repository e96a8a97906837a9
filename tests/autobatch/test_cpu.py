"""Autobatch for real on this machine: CPU mode (peak RSS growth of real steps in fresh processes) predicts held-out
points; probing never touches user objects nor CUDA in the driver; the command line; the probe as a Ray actor."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch
import yaml

from raysweep.autobatch import (
    AutobatchConfig,
    MemoryModel,
    ModeFit,
    ModelCache,
    cache_key,
    cpu_device_info,
    plan_resources,
    probe_and_fit,
    request_from_spec,
)
from raysweep.autobatch.device import CpuRssCounters
from raysweep.autobatch.host import format_record
from raysweep.autobatch.probe import ProcessExecutor, fit_model, run_probe
from raysweep.space import parse_spec


def spec_of(space: dict, *, name="ab", device="auto", **experiment):
    exp = {"family": "poly_online", "dim": 32, "steps": 10, "device": device, **experiment}
    return parse_spec({"name": name, "experiment": exp, "space": {"eta": [0.1], **space}})


def test_cpu_rss_model_predicts_heldout_points_within_20_percent():
    # width up to 2048 and batch up to 4096 (the design adds 8192, where activations dominate): tens to hundreds
    # of MiB, well above allocator noise. Depth 2 keeps the steps cheap (no N x N matmul).
    spec = spec_of({"batch_size": [1024, 2048, 4096], "width": [512, 1024, 2048], "depth": [2],
                    "optimizer": ["Adam"]}, device="cpu")
    request = request_from_spec(spec, AutobatchConfig(modes=("train",), steps_per_trial=2))
    counters = CpuRssCounters()
    executor = ProcessExecutor(counters)
    result = run_probe(request, executor, counters, log=lambda r: print(format_record(r)))
    model = fit_model(request, result)
    assert model.label == "cpu-rss"
    fit = model.fit_for("Adam", "train")
    held = [e for e in fit.errors if e["role"] == "heldout"]
    assert len(held) == 4
    for e in held:
        print(f"held-out width={e['width']} batch={e['batch_size']}: predicted {e['predicted_bytes'] / 2**20:.1f} "
              f"MiB, measured {e['measured_bytes'] / 2**20:.1f} MiB, error {e['rel_error']:+.1%}")
    assert max(abs(e["rel_error"]) for e in held) <= 0.20
    assert fit.margin == max(0.05, max(abs(e["rel_error"]) for e in held))
    assert max(e["measured_bytes"] for e in held) > 100 * 2**20  # measured above noise
    # and points the design never saw, each in a fresh process
    for width, batch in [(1536, 3072), (768, 6144)]:
        point = {"width": width, "depth": 2, "batch_size": batch, "n_members": 1, "optimizer": "Adam",
                 "mode": "train", "role": "check"}
        measured = executor.run(request, point)["peak_bytes"]
        predicted = model.predict(width, 2, batch, optimizer="Adam")
        err = (predicted - measured) / measured
        print(f"fresh width={width} batch={batch}: predicted {predicted / 2**20:.1f} MiB, measured "
              f"{measured / 2**20:.1f} MiB, error {err:+.1%}")
        assert abs(err) <= 0.20


def state_hash(*objects) -> str:
    h = hashlib.sha256()
    for obj in objects:
        buf = io.BytesIO()
        torch.save(obj.state_dict(), buf)
        h.update(buf.getvalue())
    return h.hexdigest()


CUDA_CALLS = ("init", "_lazy_init", "is_available", "device_count", "current_device", "mem_get_info",
              "get_device_properties", "memory_reserved", "max_memory_reserved", "synchronize",
              "set_per_process_memory_fraction")


def forbid_cuda(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the driver called torch.cuda")
    for name in CUDA_CALLS:
        monkeypatch.setattr(torch.cuda, name, boom)


@pytest.mark.slow
def test_probe_leaves_user_objects_alone_and_the_driver_never_touches_cuda(tmp_path, monkeypatch):
    # a user's model and optimizer, with optimizer state
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(8, 32)).square().mean().backward()
    opt.step()
    before = state_hash(net, opt)
    forbid_cuda(monkeypatch)

    spec = spec_of({"batch_size": [32, 64], "width": [64, 128], "depth": [2]}, name="iso")
    config = AutobatchConfig(modes=("train",))
    model = probe_and_fit(spec, config=config, storage=tmp_path, use_ray=False)  # probes in a subprocess
    assert model.label == "cpu-rss" and (tmp_path / "autobatch_cache.json").exists()
    plan = plan_resources(spec, spec.points(), device_info=model.device, config=config, storage=tmp_path)
    assert set(plan["resources"]) and not plan["infeasible"]
    assert all(set(r) == {"cpu", "memory"} and r["memory"] > model.context_bytes for r in plan["resources"].values())
    assert ModelCache(tmp_path).lookup(cache_key(request_from_spec(spec, config), model.device)) is not None

    assert state_hash(net, opt) == before
    monkeypatch.undo()
    assert not torch.cuda.is_initialized()


def seeded_storage(tmp_path, spec) -> None:
    """A cached model for ``spec`` on this CPU, so that the CLI sizes without probing."""
    info = cpu_device_info()
    fits = {f"SGD/{mode}": ModeFit("SGD", mode, {"overhead": 2**20, "param": 1.0, "sample": 4.0, "readout": 2.0,
                                                 "hidden": 3.0 if mode == "train" else 1.0},
                                   0.1, 0.1, 0.1, "seeded") for mode in ("train", "val")}
    model = MemoryModel(dim=32, n_out=1, dtype="float32", loss="mse", device=info, context_bytes=300 * 2**20,
                        available_bytes=8 * 2**30, fits=fits, covered={"width": [16, 4096]})
    ModelCache(tmp_path / spec.name).store(cache_key(request_from_spec(spec, AutobatchConfig()), info), model)


def test_cli_sizes_every_fraction_and_mode(tmp_path, run_cli):
    space = {"batch_size": [16, 64], "width": [64, 256], "depth": [3]}
    spec = spec_of(space, name="cli", device="cpu")
    seeded_storage(tmp_path, spec)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"name": "cli", "experiment": {"family": "poly_online", "dim": 32, "steps": 10,
                                                                  "device": "cpu"},
                                    "space": {"eta": [0.1], **space}}))
    out = run_cli("raysweep.autobatch", str(path), "--fractions", "0.5,0.8", "--storage", str(tmp_path),
                  "--output", str(tmp_path / "ab.json"), "--no-ray", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cpu-rss" in out.stdout and "cached memory model" in out.stdout
    report = json.loads((tmp_path / "ab.json").read_text())
    rows = report["rows"]
    assert len(rows) == 2 * 2 * 2  # fractions x modes x widths
    by = {(r["fraction"], r["mode"], r["width"]): r for r in rows}
    for width in (64, 256):
        small, big = by[(0.5, "train", width)], by[(0.8, "train", width)]
        assert big["batch_size"] >= small["batch_size"] > 64  # the largest that fits, not capped at the space's 64
        assert small["need_bytes"] <= small["usable_bytes"]
        assert set(small["shares"]) == {"16", "64"}
    assert by[(0.8, "train", 256)]["batch_size"] <= by[(0.8, "train", 64)]["batch_size"]
    csv_out = run_cli("raysweep.autobatch", str(path), "--storage", str(tmp_path), "--output",
                      str(tmp_path / "ab.csv"), "--no-ray", timeout=120)
    assert csv_out.returncode == 0, csv_out.stderr
    lines = (tmp_path / "ab.csv").read_text().splitlines()
    assert lines[0].startswith("fraction,mode,optimizer,width,depth") and len(lines) == 1 + 2 * 2
    assert "16:" in lines[1] and "64:" in lines[1]


@pytest.mark.parametrize("args, match", [
    (["missing.yaml"], "missing.yaml"),
    (["{spec}", "--fractions", "0.8,1.5"], "--fractions"),
    (["{spec}", "--modes", "train,test"], "--modes"),
    (["{spec}", "--output", "x.txt"], "--output"),
])
def test_cli_bad_input_exits_2(tmp_path, args, match, run_cli):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "experiment": {"family": "poly_online", "steps": 5},
                                    "space": {"batch_size": [8], "eta": [0.1], "width": [8]}}))
    out = run_cli("raysweep.autobatch", *[a.format(spec=path) for a in args], "--storage", str(tmp_path),
                  timeout=60)
    assert out.returncode == 2 and match in out.stderr


def test_cli_invalid_spec_exits_2_naming_the_field(tmp_path, run_cli):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "experiment": {"family": "poly_online", "steps": 5},
                                    "space": {"batch_size": [0], "eta": [0.1], "width": [8]}}))
    out = run_cli("raysweep.autobatch", str(path), timeout=60)
    assert out.returncode == 2 and "space.batch_size" in out.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_probe_runs_in_a_ray_actor(ray_cluster, tmp_path, monkeypatch):
    forbid_cuda(monkeypatch)
    spec = spec_of({"batch_size": [32], "width": [64], "depth": [2]}, name="actor")
    config = AutobatchConfig(modes=("train",))
    model = probe_and_fit(spec, config=config, storage=tmp_path)  # the session's Ray: an actor probes
    assert model.label == "cpu-rss" and model.fits["SGD/train"].margin >= 0.05
    assert len(model.probe_log) >= 5
    monkeypatch.undo()
    assert not torch.cuda.is_initialized()
