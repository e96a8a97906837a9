"""How good is the autobatch memory model on a real GPU, and does a run packed by its shares stay free of OOMs?

    python benchmarks/autobatch_gpu.py [--json OUT.json] [--cpu]

Prints, on a CUDA machine:

1. the probe's wall time (``probe_and_fit`` in a Ray actor on the GPU: real steps, one fresh process per point);
2. predicted vs measured peak memory (peak reserved bytes of a fresh process) on >= 10 held-out (width, depth,
   batch, K, mode) points the probe never ran: median and worst relative error, and whether each measurement
   stays under the margin-inflated prediction;
3. a packed run: real trials (``raysweep.train.train_bundle`` on the online poly teacher), each asking Ray for the
   GPU share ``plan_resources`` gives it and capping itself with ``apply_memory_cap``, all on one GPU at once as
   far as the shares allow: the number of OOMs (expected 0), the most trials running at once, and each trial's
   measured peak (CUDA: peak reserved + the model's context; CPU: the Ray worker's whole peak RSS) against the
   need it was sized for.

Without CUDA it prints "no CUDA: unmeasured" and exits 0. ``--cpu`` runs the same three parts in cpu-rss mode,
smaller, to check the script (and the CPU model) on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACES = {  # the probed space = the packed run's trials
    "cuda": {"batch_size": [256, 2048, 16384], "width": [1024, 4096, 8192], "depth": [2, 3, 4]},
    "cpu": {"batch_size": [256, 1024, 4096], "width": [256, 512, 1024], "depth": [2, 3]},
}
HELD_OUT = {  # (width, depth, batch_size, n_members, mode): none of them is a design point
    "cuda": [(1536, 2, 512, 1, "train"), (3072, 3, 1024, 1, "train"), (6144, 3, 4096, 1, "train"),
             (2048, 4, 8192, 1, "train"), (5120, 2, 12288, 1, "train"), (7168, 3, 768, 1, "train"),
             (1024, 3, 32768, 1, "train"), (3072, 4, 3000, 1, "train"), (2048, 3, 4096, 4, "train"),
             (4096, 2, 2048, 8, "train"), (3072, 3, 10000, 1, "val"), (6144, 4, 20000, 1, "val")],
    "cpu": [(384, 2, 512, 1, "train"), (768, 3, 768, 1, "train"), (640, 2, 3072, 1, "train"),
            (896, 3, 2048, 1, "train"), (320, 3, 6144, 1, "train"), (1024, 2, 1536, 1, "train"),
            (512, 2, 2048, 4, "train"), (768, 3, 5000, 1, "val"), (384, 2, 12000, 1, "val"),
            (1000, 3, 1000, 1, "train")],
}
STEPS = {"cuda": 100, "cpu": 20}


def make_spec(kind: str):
    from raysweep.space import parse_spec

    return parse_spec({
        "name": f"autobatch-bench-{kind}",
        "experiment": {"family": "poly_online", "dim": 32, "n_train": 4096, "steps": STEPS[kind],
                       "report_every": STEPS[kind], "device": kind},
        "space": {**SPACES[kind], "eta": [1e-3], "optimizer": ["Adam"], "parametrization": ["muP"]},
        "fusion": {"enabled": False},
    })


def probe(kind: str, spec):
    """The production path: probe_and_fit in a Ray actor on the target device (no cache)."""
    from raysweep.autobatch import AutobatchConfig, probe_and_fit, request_from_spec

    config = AutobatchConfig()
    started = time.perf_counter()
    model = probe_and_fit(spec, config=config, use_ray=True)
    return request_from_spec(spec, config), model, time.perf_counter() - started


def held_out(kind, request, model) -> list[dict]:
    """Measure the held-out points from a Ray task on the device (this driver never touches CUDA), one fresh child
    process per point, exactly as the probe's own points."""
    import ray

    return ray.get(ray.remote(_held_out).options(num_gpus=1 if kind == "cuda" else 0).remote(kind, request, model))


def _held_out(kind, request, model) -> list[dict]:
    from raysweep.autobatch.device import counters_for
    from raysweep.autobatch.probe import ProcessExecutor, design

    executor = ProcessExecutor(counters_for(kind))

    designed = {(p["width"], p["depth"], p["batch_size"], p["n_members"], p["mode"])
                for m in request.modes for p in design(request, "Adam", m)}
    rows = []
    for width, depth, batch, k, mode in HELD_OUT[kind]:
        assert (width, depth, batch, k, mode) not in designed
        point = {"width": width, "depth": depth, "batch_size": batch, "n_members": k, "optimizer": "Adam",
                 "mode": mode, "role": "benchmark"}
        m = executor.run(request, point)
        if m["status"] != "ok":
            rows.append({**point, "status": m["status"], "error": m.get("error")})
            continue
        predicted = model.predict(width, depth, batch, optimizer="Adam", n_members=k, mode=mode)
        margin = model.fit_for("Adam", mode).margin
        rows.append({**point, "status": "ok", "measured_bytes": m["peak_bytes"], "predicted_bytes": predicted,
                     "rel_error": (predicted - m["peak_bytes"]) / m["peak_bytes"],
                     "under_margin": m["peak_bytes"] <= predicted * (1 + margin),
                     "context_measured_bytes": m["context_bytes"]})
    return rows


def _trial(kind: str, experiment: dict, point: dict, share: float | None) -> dict:
    """One real trial in a Ray worker: cap, train to the end, report the peak and whether it ran out of memory."""
    import torch

    from raysweep.autobatch import apply_malloc_policy, apply_memory_cap, is_oom
    from raysweep.autobatch.device import CpuRssCounters
    from raysweep.data import build_task
    from raysweep.train import train_bundle

    started = time.time()
    capped = apply_memory_cap(share, kind) if kind == "cuda" else apply_malloc_policy()
    rss = CpuRssCounters()
    if kind == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        rss.reset_peak()
    status, error = "completed", None
    try:
        task = build_task(experiment, device=kind)
        for _ in train_bundle(task, experiment, [point], device=kind):
            pass
    except Exception as exc:  # noqa: BLE001
        status, error = ("oom" if is_oom(exc) else "failed"), f"{type(exc).__name__}: {str(exc)[:200]}"
    # CUDA: peak reserved (the context is not separable from other processes'); CPU: the worker's whole peak RSS
    peak = torch.cuda.max_memory_reserved() if kind == "cuda" else rss.peak_bytes()[0] + rss._base
    return {"status": status, "error": error, "peak_bytes": int(peak), "capped": capped, "start": started,
            "end": time.time()}


def packed_run(kind: str, spec, model) -> dict:
    import ray

    from raysweep.autobatch import plan_resources
    from raysweep.points import config_key

    experiment = spec.experiment.as_dict()
    points = spec.points()
    plan = plan_resources(spec, points, device_info=model.device, model=model)
    trial = ray.remote(_trial)
    refs, keys = [], []
    for p in points:
        key = config_key(experiment, p)
        if key not in plan["resources"]:
            continue
        res = plan["resources"][key]
        opts = ({"num_gpus": res["gpu"], "num_cpus": 0.25} if kind == "cuda"
                else {"num_cpus": 1, "memory": res["memory"]})
        refs.append(trial.options(**opts).remote(kind, experiment, p, res.get("gpu")))
        keys.append(key)
    started = time.perf_counter()
    out = ray.get(refs)
    wall = time.perf_counter() - started
    events = sorted([(r["start"], 1) for r in out] + [(r["end"], -1) for r in out])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    trials = []
    for key, r in zip(keys, out):
        need = plan["need"][key]
        used = r["peak_bytes"] + (model.context_bytes if kind == "cuda" else 0)
        trials.append({**r, "key": key, "need_bytes": need["need_bytes"], "share": plan["resources"][key],
                       "measured_with_context_bytes": used, "measured_over_need": used / need["need_bytes"]})
    return {"n_trials": len(out), "n_infeasible": len(plan["infeasible"]),
            "n_oom": sum(r["status"] == "oom" for r in out), "n_failed": sum(r["status"] == "failed" for r in out),
            "max_concurrent": most, "wall_time_s": wall, "usable_bytes": plan["usable_bytes"], "trials": trials}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write every number to this file")
    ap.add_argument("--cpu", action="store_true", help="run in cpu-rss mode (checks the script without a GPU)")
    args = ap.parse_args(argv)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA: unmeasured")
        return 0
    kind = "cpu" if args.cpu else "cuda"
    spec = make_spec(kind)
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=1 if kind == "cuda" else 0, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    request, model, probe_s = probe(kind, spec)
    print(f"device: {model.device.name} ({model.label}), total {model.device.total_bytes / 2**30:.1f} GiB, "
          f"torch {model.device.torch_version}, CUDA {model.device.cuda_version}")
    print(f"probe: {len(model.probe_log)} points in {probe_s:.1f} s; context {model.context_bytes / 2**20:.0f} MiB; "
          + "; ".join(f"{k} margin {f.margin:.1%}" for k, f in model.fits.items()))
    rows = held_out(kind, request, model)
    ok = [r for r in rows if r["status"] == "ok"]
    for r in rows:
        tail = (f"predicted {r['predicted_bytes'] / 2**20:9.1f} MiB  measured {r['measured_bytes'] / 2**20:9.1f} MiB  "
                f"error {r['rel_error']:+6.1%}{'' if r['under_margin'] else '  ABOVE MARGIN'}"
                if r["status"] == "ok" else f"{r['status']}: {r.get('error')}")
        print(f"  held-out {r['mode']:5} width={r['width']:5d} depth={r['depth']} batch={r['batch_size']:6d} "
              f"K={r['n_members']}: {tail}")
    errors = [abs(r["rel_error"]) for r in ok]
    print(f"held-out: {len(ok)} points, median |error| {statistics.median(errors):.1%}, worst {max(errors):.1%}, "
          f"{sum(r['under_margin'] for r in ok)}/{len(ok)} under the margin")
    packed = packed_run(kind, spec, model)
    ray.shutdown()
    worst = max(t["measured_over_need"] for t in packed["trials"])
    print(f"packed run: {packed['n_trials']} trials ({packed['n_infeasible']} infeasible, not run), "
          f"{packed['n_oom']} OOMs, {packed['n_failed']} other failures, at most {packed['max_concurrent']} at once, "
          f"{packed['wall_time_s']:.1f} s; measured / sized need: worst {worst:.2f} "
          + ("(peak reserved + context)" if kind == "cuda" else "(the worker's whole peak RSS)"))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model.to_dict(), "probe_s": probe_s, "held_out": rows,
                                               "packed": packed}, indent=1, default=str))
    return 0 if packed["n_oom"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
