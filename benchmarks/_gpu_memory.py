"""Checks 1 and 2 of ``gpu_check.py``: the autobatch memory model against measured peaks, and the per-trial cap.

1. The probe runs as a launch runs it without Ray: ``probe_and_fit(spec, use_ray=False)`` (a probe subprocess on
   the device, one fresh forkserver child per point). Its fit is judged on its own held-out points and on a few
   points it never ran, measured the same way (``ProcessExecutor``: a fresh child per point).
2. Two trial processes (``raysweep.trial.run_bundle``, the function a Ray trial calls) start together, each sized by
   ``plan_resources`` from that model; one trains a bundle far larger than the one it was sized for.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _gpu_common import EXPERIMENT, ROOT, TITLES, CheckResult, Settings

MiB = 2**20


def probe_spec(s: Settings):
    """The probed space: the check's widths, depths and batch sizes, SGD and Adam, a bundle of probe_members."""
    from raysweep.space import parse_spec

    return parse_spec({
        "name": "gpu_check_probe",
        "experiment": {**EXPERIMENT, "steps": 100, "device": s.kind},
        "space": {"batch_size": list(s.probe_batch_sizes), "width": list(s.probe_widths),
                  "depth": list(s.probe_depths), "eta": [2.0**-k for k in range(s.probe_members)],
                  "optimizer": ["SGD", "Adam"], "parametrization": "muP"},
        "fusion": {"enabled": True, "max_members": s.probe_members},
    })


def probe_model(s: Settings, log=None):
    """``(model, request, wall seconds)``: ``probe_and_fit`` in its subprocess mode, no cache."""
    from raysweep.autobatch import AutobatchConfig, probe_and_fit, request_from_spec

    spec, config = probe_spec(s), AutobatchConfig()
    started = time.perf_counter()
    model = probe_and_fit(spec, config=config, use_ray=False, log=log)
    return model, request_from_spec(spec, config), time.perf_counter() - started


def _geo(lo: float, hi: float, t: float) -> float:
    return math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))


def extra_points(request, n: int) -> list[dict]:
    """``n`` points per optimizer and mode that the probe's design never ran: widths and batch sizes between the
    probed ones (geometrically), alternating depths, the third with the largest bundle."""
    from raysweep.autobatch.probe import design

    designed = {(p["width"], p["depth"], p["batch_size"], p["n_members"], p["mode"])
                for o in request.optimizers for m in request.modes for p in design(request, o, m)}
    fractions = (0.3, 0.7, 0.5, 0.2, 0.8)
    out = []
    for optimizer in request.optimizers:
        for mode in request.modes:
            ws, bs, ds = request.widths, request.batch_sizes[mode], sorted(request.depths)
            for i in range(n):
                t = fractions[i % len(fractions)]
                width = max(8, 8 * round(_geo(min(ws), max(ws), t) / 8))
                batch = max(1, round(_geo(min(bs), max(bs), 1 - t)))
                depth, k = ds[i % len(ds)], (request.n_members if i == 2 else 1)
                while (width, depth, batch, k, mode) in designed:
                    width += 8
                out.append({"width": width, "depth": depth, "batch_size": batch, "n_members": k,
                            "optimizer": optimizer, "mode": mode, "role": "extra"})
    return out


def measure_extra(request, model, points: list[dict]) -> list[dict]:
    """Measure ``points`` as the probe measures its own (a fresh child per point) and compare with the model."""
    from raysweep.autobatch.device import counters_for
    from raysweep.autobatch.probe import ProcessExecutor, lower_bound_bytes

    counters = counters_for(model.device.kind)
    executor = ProcessExecutor(counters)
    budget = request.target_memory_fraction * counters.free_bytes()
    rows = []
    for p in points:
        if lower_bound_bytes(request, p) > budget:
            rows.append({**p, "status": "skipped", "error": "lower bound above the budget"})
            continue
        m = executor.run(request, p)
        if m["status"] != "ok":
            rows.append({**p, "status": m["status"], "error": m.get("error")})
            continue
        predicted = model.predict(p["width"], p["depth"], p["batch_size"], optimizer=p["optimizer"],
                                  n_members=p["n_members"], mode=p["mode"])
        rows.append({**p, "status": "ok", "measured_bytes": int(m["peak_bytes"]), "predicted_bytes": int(predicted),
                     "rel_error": (predicted - m["peak_bytes"]) / max(m["peak_bytes"], 1),
                     "context_bytes": int(m["context_bytes"])})
    return rows


def check_probe(s: Settings, keep: dict) -> CheckResult:
    """Check 1; leaves the fitted model in ``keep["model"]`` for the cap check."""
    model, request, wall = probe_model(s, log=lambda line: print(f"    {line}", flush=True))
    keep["model"] = model
    extra = measure_extra(request, model, extra_points(request, s.extra_points))
    result = CheckResult("probe", TITLES["probe"])
    result.columns = ["optimizer / mode", "fit points", "held-out points (probe + never probed)", "median abs error",
                      "p95 abs error", "worst error", "margin", "measured <= predicted x (1 + margin)"]
    everything = []
    for key, fit in model.fits.items():
        optimizer, mode = key.split("/")
        held = [e for e in fit.errors if e["role"] == "heldout"]
        more = [e for e in extra if e["optimizer"] == optimizer and e["mode"] == mode and e["status"] == "ok"]
        points = [(e["rel_error"], e["measured_bytes"], e["predicted_bytes"]) for e in held + more]
        everything += [(*p, fit.margin) for p in points]
        result.rows.append([key, sum(e["role"] == "fit" for e in fit.errors), f"{len(held)} + {len(more)}",
                            *_error_cells(points, fit.margin)])
    result.rows.append(["all", sum(r[1] for r in result.rows), f"{len(everything)}",
                        *_error_cells([p[:3] for p in everything], None, [p[3] for p in everything])])
    records = model.probe_log
    ok = [r for r in records if r["status"] == "ok"]
    contexts = [r["context_bytes"] for r in ok]
    what = ("a fresh process's CUDA context (global free memory before it started minus while it held its memory, "
            "less its allocator's reserved bytes)" if model.device.kind == "cuda" else
            "cpu-rss: the larger of a probe child's baseline RSS and the probe process's RSS with the trial modules")
    result.summary = [
        f"device: {model.device.name} ({model.label}), torch {model.device.torch_version}, CUDA "
        f"{model.device.cuda_version}; available {model.available_bytes / 2**30:.1f} GiB",
        f"probe: {len(ok)} points measured, {sum(r['status'] == 'skipped' for r in records)} skipped, "
        f"{sum(r['status'] == 'oom' for r in records)} out of memory; {model.probe_wall_time_s:.1f} s in the probe "
        f"process, {wall:.1f} s for probe_and_fit (subprocess start and fit included)",
        f"context: {model.context_bytes / MiB:.0f} MiB ({what}); per point {min(contexts) / MiB:.0f} .. "
        f"{max(contexts) / MiB:.0f} MiB" if contexts else "context: no point measured",
        f"shapes: widths {list(request.widths)}, depths {list(request.depths)}, batch sizes train "
        f"{list(request.batch_sizes['train'])} / val {list(request.batch_sizes['val'])}, bundles up to "
        f"{request.n_members} members; {len(extra)} extra held-out points never probed (error: (predicted - "
        f"measured) / measured)",
    ]
    everything_row = result.rows[-1]
    result.headline = (f"{model.label}: median abs error {everything_row[3]}, p95 {everything_row[4]}, worst "
                       f"{everything_row[5]} on {everything_row[2]} held-out points ({everything_row[7]} under the "
                       f"margin); {len(ok)} probe points in {model.probe_wall_time_s:.0f} s; context "
                       f"{model.context_bytes / MiB:.0f} MiB")
    result.data = {"model": model.to_dict(), "request": request.to_dict(), "probe_and_fit_s": wall, "extra": extra,
                   "context_bytes_per_point": contexts}
    return result


def _error_cells(points, margin, margins=None) -> list:
    """median |error|, p95 |error|, the error of largest magnitude, the margin, and how many stay under it."""
    if not points:
        return [None, None, None, margin, "-"]
    errs = np.array([p[0] for p in points])
    margins = margins or [margin] * len(points)
    under = sum(meas <= pred * (1 + m) for (_, meas, pred), m in zip(points, margins))
    return [f"{np.median(np.abs(errs)):.1%}", f"{np.percentile(np.abs(errs), 95):.1%}",
            f"{errs[np.argmax(np.abs(errs))]:+.1%}", None if margin is None else f"{margin:.1%}",
            f"{under}/{len(points)}"]


# --------------------------------------------------------------------------------------------- 2. the cap


def cap_spec(s: Settings):
    width, depth, batch, k = s.cap_shape
    return {
        "name": "gpu_check_cap",
        "experiment": {**EXPERIMENT, "steps": s.cap_steps, "report_every": max(1, s.cap_steps // 6),
                       "eval_samples": 256, "device": s.kind},
        "space": {"batch_size": [batch], "width": [width], "depth": [depth],
                  "eta": [2.0 ** (-6 - 0.5 * i) for i in range(k)], "optimizer": ["SGD"], "parametrization": "muP"},
    }


def check_cap(s: Settings, keep: dict) -> CheckResult:
    """Check 2, sized by the probe check's model (probed here when that check did not run)."""
    from raysweep.autobatch.guard import cap_fraction
    from raysweep.autobatch.sizing import plan_resources, trial_need
    from raysweep.plan import build_plan, bundle_id
    from raysweep.points import config_key
    from raysweep.space import parse_spec

    model = keep.get("model") or probe_model(s)[0]
    spec = parse_spec(cap_spec(s))
    plan, _ = build_plan(spec)
    (bundle,) = plan.bundles.values()
    sized = plan_resources(spec, [bundle], device_info=model.device, model=model)
    if bundle.bundle_id not in sized["resources"]:
        raise RuntimeError(f"the sized trial does not fit the device: {sized['infeasible']}")
    resources, need = sized["resources"][bundle.bundle_id], sized["need"][bundle.bundle_id]
    big_points = tuple({**p, "batch_size": s.cap_big_batch_size} for p in bundle.points)
    big_keys = tuple(config_key(plan.experiment.as_dict(), p) for p in big_points)
    big_need = trial_need(model, big_points[0], n_members=len(big_points), experiment=plan.experiment)["need_bytes"]
    cuda = model.device.kind == "cuda"
    if cuda:  # the trial's own cap: set_per_process_memory_fraction(cap_fraction(share)) of the whole device
        share = resources["gpu"]
        cap_bytes = cap_fraction(share) * model.device.total_bytes
        mechanism = "set_per_process_memory_fraction (the trial's apply_memory_cap of its GPU share)"
        shown_share = f"gpu {share:g} -> allocator cap {cap_bytes / MiB:,.0f} MiB"
        over = (big_need - model.context_bytes) / cap_bytes
    else:  # CPU trials do not cap themselves; the equivalent limit: their data segment at the need they were sized for
        cap_bytes = need["need_bytes"] - model.context_bytes
        mechanism = "RLIMIT_DATA (setrlimit) at the data size at start + (need - context)"
        shown_share = f"memory {need['need_bytes'] / MiB:,.0f} MiB -> +{cap_bytes / MiB:,.0f} MiB data"
        over = (big_need - model.context_bytes) / cap_bytes
    placement = {"gpu_share": resources["gpu"]} if cuda else {"memory_bytes": float(need["need_bytes"])}

    jobs = {name: {"name": name, "kind": model.device.kind, "sweep": plan.sweep,
                   "experiment": plan.experiment.as_dict(), "bundle_id": bundle_id(keys), "keys": list(keys),
                   "points": [dict(p) for p in points], "placement": placement, "cap_bytes": cap_bytes}
            for name, keys, points in (("sized", bundle.keys, bundle.points), ("oversized", big_keys, big_points))}
    outs = run_trials(jobs)

    # the sized trial alone in this process: a neighbour that ran out of memory must not have moved its numbers
    alone = _solo_losses(plan.experiment.as_dict(), bundle.points, model.device.kind)
    together = [r["final_train_loss"] for r in sorted(outs["sized"]["rows"], key=lambda r: -r["eta"])]
    diff = (max(abs(a - b) / abs(b) for a, b in zip(together, alone))
            if len(together) == len(alone) and all(v is not None for v in together) else None)
    a, b = outs["sized"], outs["oversized"]
    overlap = a["t_start"] <= b["t_end"] <= a["t_end"]
    # the sized trial's measured peak against what it was sized for above the context (allocator or RSS bytes)
    peak_over_need = a["peak_bytes"] / max(1, need["need_bytes"] - model.context_bytes)
    result = CheckResult("cap", TITLES["cap"])
    result.columns = ["trial process", "bundle", "sized for", "share", "predicted need", "status", "error",
                      "peak", "seconds"]
    w, d, bsz, k = s.cap_shape
    trials = (("sized", a, bsz, need["need_bytes"]), ("oversized", b, s.cap_big_batch_size, big_need))
    for name, out, batch, need_b in trials:
        statuses = sorted({r["status"] for r in out["rows"]})
        errors = sorted({(r["error"] or "")[:90] for r in out["rows"] if r["error"]})
        result.rows.append([name, f"{k} x width {w}, depth {d}, B {batch}", f"B {bsz}", shown_share,
                            f"{need_b / MiB:,.0f} MiB", "/".join(statuses) + f" ({len(out['rows'])} rows)",
                            "; ".join(errors) or "-", f"{out['peak_bytes'] / MiB:,.0f} MiB",
                            out["t_end"] - out["t_start"]])
    b_oom = bool(b["rows"]) and all(r["status"] == "failed" and (r["error"] or "").startswith("oom:")
                                    for r in b["rows"])
    a_ok = bool(a["rows"]) and all(r["status"] == "completed" for r in a["rows"])
    result.summary = [
        f"mechanism: {mechanism}; both processes start together (a file barrier after their imports) and run "
        "raysweep.trial.run_bundle, the trial's own code: its errors are classified by raysweep.autobatch.guard.is_oom "
        "into 'oom: ...'",
        f"oversized trial: predicted need {over:.1f}x its share above the context; "
        f"{'landed oom: rows' if b_oom else 'did NOT land oom: rows'} at "
        f"{b['t_end'] - a['t_start']:.2f} s, while the sized trial ran ({a['t_end'] - a['t_start']:.2f} s): "
        f"overlap {'yes' if overlap else 'NO'}",
        f"sized trial: {'finished, every member completed' if a_ok else 'did NOT finish'}; its final train losses vs "
        f"the same bundle alone in this process: largest relative difference {fmt_diff(diff)}",
        f"peak: {'max_memory_reserved of the trial process' if cuda else 'peak RSS growth of the trial process'}; "
        f"the sized trial's peak is {peak_over_need:.2f}x its sized need above the context "
        f"({(need['need_bytes'] - model.context_bytes) / MiB:,.0f} MiB)",
    ]
    # CPU: the same bits; CUDA: the same kernels, but cuBLAS may pick another algorithm under a memory cap
    passed = b_oom and a_ok and overlap and diff is not None and diff <= (0 if not cuda else 1e-5)
    result.headline = ("" if passed else "FAIL: ") + (f"oversized trial: {'oom: rows' if b_oom else 'NO oom: rows'} "
                       f"({'set_per_process_memory_fraction' if cuda else 'RLIMIT_DATA'}); sized neighbour: "
                       f"{'completed' if a_ok else 'NOT completed'}, losses vs alone {fmt_diff(diff)}; overlap "
                       f"{'yes' if overlap else 'NO'}")
    result.data = {"sized": a, "oversized": b, "need": need, "big_need_bytes": big_need, "cap_bytes": cap_bytes,
                   "resources": resources, "alone_final_train_loss": alone, "max_rel_diff_alone": diff,
                   "overlap": overlap, "oversized_oom": b_oom, "sized_completed": a_ok, "mechanism": mechanism,
                   "over_share": over, "peak_over_need": peak_over_need, "passed": passed}
    return result


def run_trials(jobs: dict[str, dict]) -> dict[str, dict]:
    """Start one trial process per job (``gpu_check.py --child cap``) at once; their outputs by name."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_cap_") as tmp:
        folder, procs = Path(tmp), {}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        for name, job in jobs.items():
            path = folder / f"{name}.job.json"
            path.write_text(json.dumps({**job, "folder": tmp, "peers": list(jobs)}))
            procs[name] = subprocess.Popen([sys.executable, str(Path(__file__).with_name("gpu_check.py")), "--child",
                                            "cap", str(path)], env=env)
        for proc in procs.values():
            try:
                proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        outs = {}
        for name in jobs:
            path = folder / f"{name}.out.json"
            if not path.exists():
                raise RuntimeError(f"the {name} trial process wrote nothing (exit {procs[name].returncode})")
            outs[name] = json.loads(path.read_text())
        return outs


def fmt_diff(diff) -> str:
    return "-" if diff is None else ("0 (bit for bit)" if diff == 0 else f"{diff:.1e}")


def _solo_losses(experiment: dict, points, kind: str) -> list[float]:
    """Final train loss of each member (largest eta first), the bundle trained alone in this process."""
    import torch

    from raysweep.data import build_task
    from raysweep.train import train_bundle

    task = build_task(experiment, device=kind, dtype=torch.float32)
    last = None
    for report in train_bundle(task, experiment, list(points), device=kind):
        last = report
    order = sorted(range(len(points)), key=lambda i: -points[i]["eta"])
    by_member = dict(zip(last.members, last.train_loss))
    return [by_member[i] for i in order]


def cap_child(job_path: Path) -> int:
    """One trial process of the cap check: imports, cap (CPU: RLIMIT_DATA), barrier, ``run_bundle``, report."""
    import resource

    import torch

    for name in ("raysweep.data", "raysweep.train"):  # before the limit: imports are the process's context
        importlib.import_module(name)
    from raysweep.autobatch.device import read_status
    from raysweep.trial import Bundle, Plan, run_bundle

    job = json.loads(job_path.read_text())
    folder, kind = Path(job["folder"]), job["kind"]
    bundle = Bundle(job["bundle_id"], tuple(job["keys"]), tuple(job["points"]))
    plan = Plan(sweep=job["sweep"], experiment=job["experiment"], bundles={bundle.bundle_id: bundle},
                cpus_per_trial=1.0, version="gpu_check")
    limit = None
    hard = resource.RLIM_INFINITY
    if kind == "cpu":
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = int(read_status()["VmData"] + job["cap_bytes"])
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    rss0 = read_status()["VmRSS"]
    (folder / f"{job['name']}.ready").touch()
    waited = time.time()
    while not all((folder / f"{p}.ready").exists() for p in job["peers"]) and time.time() - waited < 120:
        time.sleep(0.01)
    rows: list[dict] = []
    started = time.time()
    run_bundle(plan, bundle, lambda m: rows.extend(t["trial"] for t in m["terminal"]), job["placement"])
    ended = time.time()
    if limit is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
    if kind == "cuda":
        peak = torch.cuda.max_memory_reserved()
        n_ooms = torch.cuda.memory_stats().get("num_ooms")
    else:
        peak, n_ooms = read_status()["VmHWM"] - rss0, None
    keep = ("status", "error", "eta", "batch_size", "steps", "final_train_loss", "gpu_share", "memory_cap",
            "memory_bytes", "device")
    out = {"name": job["name"], "rows": [{k: r.get(k) for k in keep} for r in rows], "t_start": started,
           "t_end": ended, "peak_bytes": int(peak), "num_ooms": n_ooms, "rlimit_data": limit,
           "cap_bytes": job["cap_bytes"]}
    (folder / f"{job['name']}.out.json").write_text(json.dumps(out))
    return 0
