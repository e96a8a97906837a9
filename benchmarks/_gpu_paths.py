"""Check 5 of ``gpu_check.py``: the paths built after the first GPU runs, on the device. Each row is a claim the CPU
tests make bit for bit, measured where they have never run, with its wall time:

- ``general``: the general update path (AdamW, decoupled decay, warmup + cosine, muP per-layer rates): a fused
  bundle's members against each member trained alone (``raysweep.train.train_bundle``); pass: every report's train
  and eval loss equal bit for bit.
- ``resume``: that bundle exported at its middle report, written as a checkpoint stores it (safetensors bytes and
  JSON, on the CPU) and resumed on the device; pass: every later report equal to the uninterrupted run.
- ``curvature``: the same bundle with every curvature kind measured at every report; pass: every loss equal to the
  run without it (an instrument never moves a training number); the time ratio is printed.
- ``factory``: the shipped CNN (``raysweep.examples.cnn``, a model factory) fused over its members against each
  alone; pass: bit for bit. Also its fused (timed warm) and unfused member-steps/s.
- ``factory resume``: the CNN with AdamW + cosine exported, written and resumed; pass: bit for bit.
- ``find_batch_size``: ``raysweep.autobatch.find_batch_size`` of a plain ``nn.Module`` under a fixed budget (CUDA:
  the allocator's peak in this process; CPU: RSS in fresh processes); pass: the answer fits, twice it does not.

Standard library at import time (the probe's children import the main script); torch and raysweep inside.
"""

from __future__ import annotations

import json
import math
import time

from _gpu_common import EXPERIMENT, TITLES, CheckResult, Deadline, Settings

FBS_DIM, FBS_WIDTH = 64, 1024  # the find_batch_size module: 64 -> 1024 -> 1024 -> 1


def fbs_model():
    """The module find_batch_size sizes (by reference: a CPU trial imports it in a fresh process)."""
    import torch

    return torch.nn.Sequential(torch.nn.Linear(FBS_DIM, FBS_WIDTH), torch.nn.ReLU(),
                               torch.nn.Linear(FBS_WIDTH, FBS_WIDTH), torch.nn.ReLU(), torch.nn.Linear(FBS_WIDTH, 1))


def fbs_batch(batch_size: int):
    import torch

    return torch.randn(batch_size, FBS_DIM), torch.randn(batch_size, 1)


def _spec(space: dict, experiment: dict):
    from raysweep.space import parse_spec

    return parse_spec({"name": "paths", "experiment": experiment, "space": space})


def _numbers(reports, slot: int | None = None) -> list[tuple]:
    """Per report: step and the (member's) train and eval loss; ``slot`` None: every member."""
    out = []
    for r in reports:
        pick = range(len(r.members)) if slot is None else [slot]
        out.append((r.step, tuple(r.train_loss[j] for j in pick), tuple(r.eval_loss[j] for j in pick)))
    return out


def _gap(a: list[tuple], b: list[tuple]) -> float:
    """The largest relative difference between two ``_numbers`` lists (0.0: bit for bit; inf: other steps)."""
    if [x[0] for x in a] != [x[0] for x in b]:
        return math.inf
    gaps = [0.0]
    for (_, ta, ea), (_, tb, eb) in zip(a, b):
        for u, v in zip(ta + ea, tb + eb):
            if u != v:
                gaps.append(abs(u - v) / max(abs(v), 1e-30) if math.isfinite(u) and math.isfinite(v) else math.inf)
    return max(gaps)


def _alone_vs_fused(train, task, exp, points, device, **kw) -> tuple[float, float, float]:
    """The largest relative gap between each member alone and in the fused bundle; the fused and the alone runs'
    seconds."""
    t = time.perf_counter()
    fused = list(train(task, exp, points, device=device, **kw))
    fused_s = time.perf_counter() - t
    gap, alone_s = 0.0, 0.0
    for i, p in enumerate(points):
        t = time.perf_counter()
        alone = list(train(task, exp, [p], device=device, **kw))
        alone_s += time.perf_counter() - t
        slots = [r.members.index(i) for r in fused]
        gap = max(gap, _gap([_numbers([r], s)[0] for r, s in zip(fused, slots)], _numbers(alone)))
    return gap, fused_s, alone_s


def _resume_gap(train, task, exp, points, device, at: int, **kw) -> float:
    """Export at report step ``at``, write as a checkpoint does (safetensors bytes, JSON, CPU), resume: the largest
    relative gap of the later reports against the uninterrupted run."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from raysweep.train import TrainState

    whole, state = [], None
    for r in train(task, exp, points, device=device, **kw):
        whole.append(r)
        if r.step == at:
            s = r.export()
            state = TrainState.from_parts(st_load(st_save({k: v.cpu() for k, v in s.tensors().items()})),
                                          json.loads(json.dumps(s.meta())))
    if state is None:
        return math.inf
    resumed = list(train(task, exp, points, device=device, resume=state, **kw))
    return _gap(_numbers(resumed), _numbers([r for r in whole if r.step > at]))


def check_paths(s: Settings, deadline: Deadline) -> CheckResult:
    import torch

    from raysweep.custom.train import train_bundle as train_factory
    from raysweep.data import build_task
    from raysweep.train import train_bundle

    dev = s.kind
    result = CheckResult("paths", TITLES["paths"])
    result.columns = ["check", "shape", "result", "s", "pass"]
    rows: dict[str, dict] = {}

    def row(name: str, shape: str, text: str, seconds: float, passed: bool, **data) -> None:
        rows[name] = {"shape": shape, "result": text, "s": seconds, "passed": passed, **data}
        result.rows.append([name, shape, text, round(seconds, 2), "yes" if passed else "NO"])

    # --- the MLP's general path: fused == alone, resume, curvature on/off ----------------------------------------
    steps, width, k = s.paths_steps, s.paths_width, s.paths_members
    mlp = {**EXPERIMENT, "steps": steps, "report_every": steps // 4, "eval_samples": 256}
    spec = _spec({"batch_size": s.paths_batch, "eta": [2.0**e for e in range(-12, -12 + k // 2)], "seed": [0, 1],
                  "width": width, "optimizer": "AdamW", "weight_decay": 0.1, "schedule": "cosine",
                  "warmup_steps": steps // 10, "lr_rule": "mup_adam"}, mlp)
    exp, pts = spec.experiment, spec.points()
    task = build_task(exp.as_dict(), device=dev, dtype=torch.float32)
    shape = f"MLP muP AdamW+cosine, width {width}, {len(pts)} members, B {s.paths_batch}, {steps} steps"
    gap, fused_s, alone_s = _alone_vs_fused(train_bundle, task, exp, pts, dev)
    row("general", shape, f"max gap {gap:.2g}; fused {fused_s:.2f} s, alone {alone_s:.2f} s", fused_s + alone_s,
        gap == 0.0, gap=gap)
    t = time.perf_counter()
    gap = _resume_gap(train_bundle, task, exp, pts, dev, at=steps // 2)
    row("resume", shape + f", resumed at {steps // 2}", f"max gap {gap:.2g}", time.perf_counter() - t, gap == 0.0,
        gap=gap)
    two = {"batch_size": s.paths_batch, "eta": [2.0**-10], "seed": [0, 1], "width": width, "optimizer": "AdamW",
           "weight_decay": 0.1, "lr_rule": "mup_adam"}
    kinds = ["sharpness", "batch_sharpness", "preconditioned_sharpness", "hessian_trace"]
    plain = _spec(two, mlp)
    curv = _spec(two, {**mlp, "curvature": {"kinds": kinds, "batch": s.paths_batch * 4, "steps": 8}})
    t = time.perf_counter()
    off = list(train_bundle(task, plain.experiment, plain.points(), device=dev))
    off_s, t = time.perf_counter() - t, time.perf_counter()
    on = list(train_bundle(task, curv.experiment, curv.points(), device=dev))
    on_s = time.perf_counter() - t
    gap = _gap(_numbers(on), _numbers(off))
    sharp = [v for r in on for v in (r.sharpness or []) if v is not None]
    finite = bool(sharp) and all(math.isfinite(v) for v in sharp)
    row("curvature", f"MLP AdamW width {width}, 2 members, 4 kinds every report",
        f"loss gap {gap:.2g}; {on_s / off_s:.1f}x the time; sharpness {sharp[-1]:.3g}" if sharp else "no sharpness",
        off_s + on_s, gap == 0.0 and finite, gap=gap, time_ratio=on_s / off_s)

    # --- a model factory: the shipped CNN on the digits -----------------------------------------------------------
    cnn = {"family": "custom", "factory": "raysweep.examples.cnn:digits_images", "steps": s.paths_cnn_steps,
           "report_every": s.paths_cnn_steps // 2, "dtype": "float32", "model": {"factory": "raysweep.examples.cnn:build"}}
    spec = _spec({"batch_size": 32, "eta": [2.0 ** (e / 2) for e in range(-12, -12 + k)], "width": s.paths_cnn_width,
                  "depth": 3, "parametrization": "muP", "optimizer": "SGD", "momentum": 0.9, "loss": "xent"}, cnn)
    exp, pts = spec.experiment, spec.points()
    task = build_task(exp.as_dict(), device=dev, dtype=torch.float32)
    gap, _, alone_s = _alone_vs_fused(train_factory, task, exp, pts, dev, fused=True)
    t = time.perf_counter()  # timed again, warm (vmap's first call traces the model)
    list(train_factory(task, exp, pts, device=dev, fused=True))
    fused_s, t = time.perf_counter() - t, time.perf_counter()
    list(train_factory(task, exp, pts, device=dev, fused=False))
    unfused_s = time.perf_counter() - t
    rate = len(pts) * s.paths_cnn_steps
    row("factory", f"CNN width {s.paths_cnn_width}, {len(pts)} members, SGD momentum, {s.paths_cnn_steps} steps",
        f"max gap {gap:.2g}; member-steps/s fused {rate / fused_s:,.0f}, unfused {rate / unfused_s:,.0f}",
        fused_s + alone_s + unfused_s, gap == 0.0, gap=gap, fused_rate=rate / fused_s, unfused_rate=rate / unfused_s)
    spec = _spec({"batch_size": 32, "eta": [1e-3, 3e-3], "seed": [0, 1], "width": s.paths_cnn_width, "depth": 3,
                  "parametrization": "muP", "optimizer": "AdamW", "weight_decay": 0.1, "schedule": "cosine",
                  "warmup_steps": 2, "loss": "xent"}, cnn)
    t = time.perf_counter()
    gap = _resume_gap(train_factory, task, spec.experiment, spec.points(), dev, at=s.paths_cnn_steps // 2)
    row("factory resume", f"CNN AdamW+cosine, 4 members, resumed at {s.paths_cnn_steps // 2}", f"max gap {gap:.2g}",
        time.perf_counter() - t, gap == 0.0, gap=gap)

    # --- find_batch_size of a plain module --------------------------------------------------------------------------
    from raysweep.autobatch.module import find_batch_size

    budget = s.paths_fbs_budget_mib * 2**20
    t = time.perf_counter()
    found = find_batch_size("_gpu_paths:fbs_model", "_gpu_paths:fbs_batch", "mse", optimizer="Adam",
                            device="cuda" if dev == "cuda" else "cpu", budget_bytes=budget,
                            max_batch_size=2**22)
    tried = {tr.batch_size: tr for tr in found.trials}
    answer, double = tried[found.batch_size], tried.get(2 * found.batch_size)
    fits = answer.need_bytes <= budget and (double is None or not double.fits)
    row("find_batch_size", f"MLP {FBS_DIM}-{FBS_WIDTH}-{FBS_WIDTH}-1 Adam, budget {s.paths_fbs_budget_mib} MiB",
        f"batch {found.batch_size} (need {answer.need_bytes / 2**20:.0f} MiB); tried {found.sizes_tried}",
        time.perf_counter() - t, fits and (double is not None or found.batch_size == 2**22),
        batch_size=found.batch_size, sizes_tried=found.sizes_tried, need_bytes=answer.need_bytes)

    result.data = {"rows": rows, "passed": all(r["passed"] for r in rows.values())}
    failed = [n for n, r in rows.items() if not r["passed"]]
    result.headline = "every claim holds" if not failed else f"does not hold: {', '.join(failed)}"
    result.summary = [f"{n}: {r['result']}" for n, r in rows.items()]
    return result
