"""Checks 3, 4 and 3b of ``gpu_check.py``: the fused trainer's throughput, the 200-configuration grid, and the trainer
under ``torch.compile``.

Throughput is read between reports: ``train_bundle`` (or ``_plain.plain_training``) runs with a report every ``r``
steps, each report syncs the host with the device (the trainer's ``.cpu()``, the plain loop's ``.item()``; a
``torch.cuda.synchronize`` is added on CUDA), and the rate is members x steps / seconds between the first report
(after a warm-up interval: first block, allocator, kernels, compilation) and the report that closes a window of at
least ``window_s`` seconds; then the generator is closed. Initialisation is not timed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from _gpu_common import EXPERIMENT, ROOT, TITLES, CheckResult, Deadline, Settings

# The trainer check's task: the eval set is small so that the reports that close a timing window cost little.
TRAINER_EXPERIMENT = {**EXPERIMENT, "eval_samples": 64, "mse_convention": "half_sum", "divergence_factor": 100.0}
BATCH, DEPTH = 32, 3
# log2 eta of the members: a band where muP L = 3 trains without diverging (fusion.py's bands, ends pulled in)
ETA_BAND = {"SGD": (-8.0, -2.0), "Adam": (-14.0, -8.0)}
HUGE_STEPS = 10**9  # the runs stop when their window is timed, not at a step count
COMPILE_TIMEOUT_S = {"cuda": 240.0, "cpu": 300.0}


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def points(k: int, width: int, optimizer: str) -> list[dict]:
    """``k`` members of one bundle (an eta column, seed 0) spread over the optimizer's stable eta band."""
    lo, hi = ETA_BAND[optimizer]
    logs = [(lo + hi) / 2] if k == 1 else [lo + (hi - lo) * i / (k - 1) for i in range(k)]
    return [{"batch_size": BATCH, "eta": 2.0**e, "width": width, "gamma": 1.0, "depth": DEPTH, "seed": 0,
             "parametrization": "muP", "optimizer": optimizer, "loss": "mse", "lr_rule": "study"} for e in logs]


def n_weights(width: int, dim: int = EXPERIMENT["dim"]) -> int:
    widths = [dim] + [width] * (DEPTH - 1) + [1]
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def step_groups(k: int, width: int, optimizer: str) -> int:
    """How many member groups a step of the trainer runs (``raysweep.step.STEP_GROUP_BYTES`` of weights each)."""
    from raysweep.step import STEP_GROUP_BYTES

    member_bytes = n_weights(width) * 4 * (1 if optimizer == "SGD" else 3)
    return math.ceil(k / max(1, STEP_GROUP_BYTES // member_bytes))


@contextmanager
def one_step_group():
    """The trainer with its step groups (sized for a CPU cache) lifted: every member in one batched step."""
    from raysweep import step

    saved = step.STEP_GROUP_BYTES
    step.STEP_GROUP_BYTES = 2**62
    try:
        yield
    finally:
        step.STEP_GROUP_BYTES = saved


def _window(marks: list[tuple[int, float, int]]) -> dict:
    (s1, t1, _), (s2, t2, k2) = marks[1], marks[-1]
    return {"steps_timed": s2 - s1, "seconds": t2 - t1, "member_steps_per_s": k2 * (s2 - s1) / (t2 - t1)}


def trainer_rate(task, experiment: dict, pts: list[dict], device: str, window_s: float, report_every: int) -> dict:
    """Member-steps/s of ``train_bundle(pts)`` (see the module docstring); ``n_diverged`` members dropped out."""
    from raysweep.train import train_bundle

    exp = {**experiment, "steps": HUGE_STEPS, "report_every": report_every}
    marks, diverged = [], 0
    called = time.perf_counter()
    reports = train_bundle(task, exp, pts, device=device)
    try:
        for r in reports:
            sync(device)
            marks.append((r.step, time.perf_counter(), len(r.members) - len(r.diverged)))
            diverged += len(r.diverged)
            if r.finished or (len(marks) >= 3 and marks[-1][1] - marks[1][1] >= window_s):
                break
    finally:
        reports.close()
    if len(marks) < 3:
        raise RuntimeError(f"every member diverged by step {marks[-1][0]}")
    return {**_window(marks), "report_every": report_every, "first_report_s": marks[0][1] - called,
            "n_diverged": diverged}


class _Enough(Exception):
    """Raised from the plain loop's report callback once the window is timed."""


def plain_rate(task, point: dict, window_s: float, report_every: int) -> dict:
    """Steps/s of one plain PyTorch training (``_plain.plain_training``), read between its reports."""
    from _plain import plain_training

    marks = []

    def report(_: dict) -> None:
        marks.append((_["step"], time.perf_counter(), 1))
        if len(marks) >= 3 and marks[-1][1] - marks[1][1] >= window_s:
            raise _Enough

    try:
        out = plain_training(task, point, HUGE_STEPS, report_every, report)
        raise RuntimeError(f"the plain training stopped: {out['status']} at step {out['step']}")
    except _Enough:
        pass
    return {**_window(marks), "report_every": report_every}


def _guarded(measure, device: str, *args) -> dict:
    """``measure(*args)``, or ``{"error": ...}`` when it raises: one failed measurement costs one cell."""
    try:
        return measure(*args)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory at the largest bundle, every member diverged
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()
        return {"error": f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"}


def _report_every(est_step_s: float | None, s: Settings) -> int:
    """Steps between reports: about a quarter of the window (at least 4 timed intervals), between 1 and 200."""
    if est_step_s is None:
        return 10 if s.quick else 25
    return int(min(200, max(1, s.window_s / 4 / est_step_s)))


def _free_bytes(device: str) -> tuple[int, int]:
    """(device free bytes, host available bytes)."""
    from raysweep.autobatch.device import read_meminfo

    host = read_meminfo().get("MemAvailable", 0)
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0]), host
    return host, host


def _skip_reason(k: int, width: int, optimizer: str, est_step_s: float | None, report_every: int, s: Settings,
                 deadline: Deadline) -> str | None:
    """Why a measurement is not run: too much memory (device state, or the host's float64 initialisation), or
    estimated longer than the check allows."""
    p = n_weights(width)
    state = k * p * 4 * (3 if optimizer == "SGD" else 5)
    init = k * p * 8 * 2  # the float64 draw of every member and its stacked copy (raysweep.model.init_weights)
    device_free, host = _free_bytes(s.kind)
    if (state + (init if s.kind == "cpu" else 0)) > 0.4 * device_free or init > 0.4 * host:
        return f"skipped: needs {(state + init) / 2**30:.1f} GiB"
    if est_step_s is not None:
        est = k * p * 3e-8 + 3.5 * report_every * est_step_s
        if est > min(s.max_measure_s, deadline.left()):
            return f"skipped: about {est:.0f} s here"
    return None


def check_trainer(s: Settings, deadline: Deadline) -> CheckResult:
    import torch

    from raysweep.data import build_task

    task = build_task(TRAINER_EXPERIMENT, device=s.kind, dtype=torch.float32)
    result = CheckResult("trainer", TITLES["trainer"])
    result.columns = ["width", "optimizer", "members K", "step groups", "fused", "fused, one step group",
                      "unfused (1 member)", "plain PyTorch (1 member)", "fused / unfused", "fused / plain",
                      "one group / fused"]
    raw = []
    for width in s.widths:
        for optimizer in s.optimizers:
            plain = _guarded(plain_rate, s.kind, task, points(1, width, optimizer)[0], s.window_s,
                             _report_every(None, s))
            pl = plain.get("member_steps_per_s")
            # K = 1 through the trainer; (K, step seconds) of the last measurement, the plain loop's to begin with
            unfused, prev = None, (1, 1 / pl) if pl else None
            for k in s.members:
                est = None if prev is None else prev[1] * k / prev[0]
                every = _report_every(est, s)
                skip = _skip_reason(k, width, optimizer, est, every, s, deadline)
                groups = step_groups(k, width, optimizer)
                row = {"width": width, "optimizer": optimizer, "k": k, "groups": groups, "plain": plain}
                raw.append(row)
                if skip:
                    row["skipped"] = skip
                    result.rows.append([width, optimizer, k, groups, skip, None, None, pl, None, None, None])
                    continue
                pts = points(k, width, optimizer)
                row["fused"] = fused = _guarded(trainer_rate, s.kind, task, TRAINER_EXPERIMENT, pts, s.kind,
                                                s.window_s, every)
                if groups > 1:
                    with one_step_group():
                        row["one_group"] = _guarded(trainer_rate, s.kind, task, TRAINER_EXPERIMENT, pts, s.kind,
                                                    s.window_s, every)
                if k == 1:
                    unfused = fused
                f, u = fused.get("member_steps_per_s"), (unfused or {}).get("member_steps_per_s")
                one = row.get("one_group")
                o = one.get("member_steps_per_s") if one else None
                result.rows.append([width, optimizer, k, groups, f or fused["error"],
                                    (o or one["error"]) if one else "= fused", u, pl,
                                    f"{f / u:.2f}x" if f and u else None, f"{f / pl:.2f}x" if f and pl else None,
                                    f"{o / f:.2f}x" if o and f else None])
                if f:
                    prev = (k, k / f)
    ok = [r for r in raw if (r.get("fused") or {}).get("member_steps_per_s") and r["plain"].get("member_steps_per_s")]
    diverged = sum((r.get("fused") or {}).get("n_diverged", 0) + (r.get("one_group") or {}).get("n_diverged", 0)
                   for r in raw)
    best = max(ok, key=lambda r: r["fused"]["member_steps_per_s"] / r["plain"]["member_steps_per_s"], default=None)
    result.summary = [
        f"member-steps/s: members x steps / seconds between reports after a warm-up interval, the device synchronised "
        f"at both ends; B = {BATCH}, L = {DEPTH}, muP, float32, online poly teacher D = {EXPERIMENT['dim']}, eval on "
        f"{TRAINER_EXPERIMENT['eval_samples']} samples per report; etas spread over a stable band "
        f"({'; '.join(f'{o} 2^{lo:g}..2^{hi:g}' for o, (lo, hi) in ETA_BAND.items())}); window "
        f"{s.window_s:g} s",
        "fused: raysweep.train.train_bundle, the trial's trainer; unfused: the same trainer with one configuration; "
        "plain PyTorch: _plain.plain_training (autograd, torch.optim, loss.item() every step), one configuration",
        "step groups: the trainer steps members in groups of at most raysweep.step.STEP_GROUP_BYTES of weights "
        "(sized for a CPU cache); 'one step group' lifts that limit",
        (f"best fused / plain: {best['fused']['member_steps_per_s'] / best['plain']['member_steps_per_s']:.1f}x "
         f"(width {best['width']}, {best['optimizer']}, K = {best['k']})" if best else "nothing measured")
        + f"; members that diverged during timing: {diverged}",
    ]
    alone = {(u["width"], u["optimizer"]): u["fused"]["member_steps_per_s"] for u in ok if u["k"] == 1}
    ratios = [(r["fused"]["member_steps_per_s"] / alone[(r["width"], r["optimizer"])], r) for r in ok
              if (r["width"], r["optimizer"]) in alone]
    top = max(ratios, key=lambda x: x[0], default=None)
    result.headline = ((f"fused / unfused up to {top[0]:.1f}x (width {top[1]['width']}, {top[1]['optimizer']}, "
                        f"K = {top[1]['k']})" if top else "")
                       + (f"; fused / plain PyTorch up to "
                          f"{best['fused']['member_steps_per_s'] / best['plain']['member_steps_per_s']:.1f}x (width "
                          f"{best['width']}, {best['optimizer']}, K = {best['k']})" if best else ""))
    result.data = {"measurements": raw, "experiment": TRAINER_EXPERIMENT, "eta_band": ETA_BAND}
    return result


# ------------------------------------------------------------------------------------------------ 4. grid


def grid_spec(s: Settings) -> dict:
    """benchmarks/sweep.py's 200-configuration grid (smaller in quick mode), on this check's device."""
    import sweep

    space = dict(sweep.SPACE)
    experiment = {**sweep.EXPERIMENT, "device": s.kind}
    if s.grid_batch_sizes is not None:
        space["batch_size"] = list(s.grid_batch_sizes)
    if s.grid_etas is not None:
        space["eta"] = list(s.grid_etas)
    if s.grid_steps is not None:
        experiment["steps"] = s.grid_steps
    return {"name": "gpu_check_grid", "experiment": experiment, "space": space}


ROW_KEYS = ("sweep", "family", "dataset", "parametrization", "optimizer", "lr_rule", "loss", "loss_convention", "depth",
            "width", "gamma", "batch_size", "eta", "seed", "status", "final_train_loss", "final_eval_loss")


def check_grid(s: Settings, deadline: Deadline) -> CheckResult:
    import numpy as np
    import pandas as pd
    import torch
    from _plain import plain_training

    from raysweep.analyze.optimum import optimal_eta
    from raysweep.data import build_task
    from raysweep.plan import build_plan, run_order
    from raysweep.space import parse_spec
    from raysweep.train import train_bundle
    from raysweep.trial import trial_row

    spec = parse_spec(grid_spec(s))
    plan, _ = build_plan(spec)
    exp = plan.experiment
    task = build_task(exp.as_dict(), device=s.kind, dtype=torch.float32)
    steps, every = exp.steps, exp.report_every

    # the trainer: the plan's bundles in their run order, rows as a trial makes them
    ours = []
    sync(s.kind)
    started = time.perf_counter()
    for bid in run_order(plan):
        bundle = plan.bundles[bid]
        for report in train_bundle(task, exp, list(bundle.points), device=s.kind):
            for slot, i in enumerate(report.members):
                status = "diverged" if i in report.diverged else "completed" if report.finished else None
                if status:
                    ours.append({"sweep": plan.sweep, **trial_row(
                        plan, bundle, i, status=status, dataset=task.dataset, report=report, member=slot,
                        diverged_step=report.diverged.get(i))})
    sync(s.kind)
    trainer_s = time.perf_counter() - started

    # the plain sequential loop: every configuration, one after the other, on the same device
    plain, cut = [], None
    started = time.perf_counter()
    for p in spec.points():
        if deadline.left() <= 0:
            cut = f"the plain loop stopped at the time budget after {len(plain)} of {spec.n_points()} configurations"
            break
        out = plain_training(task, p, steps, every)
        last = out["curve"][-1] if out["curve"] else (None, None, None)
        plain.append({**{k: ours[0][k] for k in ("sweep", "family", "dataset", "loss_convention")},
                      **{k: p[k] for k in ROW_KEYS if k in p},
                      "status": "diverged" if out["status"] == "diverged" else "completed",
                      "final_train_loss": last[1], "final_eval_loss": last[2]})
    sync(s.kind)
    plain_s = time.perf_counter() - started

    a = pd.DataFrame([{k: r[k] for k in ROW_KEYS} for r in ours])
    b = pd.DataFrame(plain, columns=list(ROW_KEYS))
    star_a = optimal_eta(a).set_index("batch_size")
    star_b = optimal_eta(b).set_index("batch_size") if len(b) else None
    log2_step = float(np.median(np.diff(np.log2(sorted(set(spec.space.eta))))))
    result = CheckResult("grid", TITLES["grid"])
    result.columns = ["B", "eta* trainer", "eta* plain loop", "difference (octaves)", "trainer: diverged",
                      "plain: stopped at a non-finite loss", "final eval losses equal (rel 1e-3)"]
    mine = {(r["batch_size"], r["eta"]): r for r in ours}
    agree_all, n_eta = [], len(spec.space.eta)
    for batch in sorted(star_a.index):
        ra = star_a.loc[batch]
        rb = star_b.loc[batch] if star_b is not None and batch in star_b.index else None
        theirs = [r for r in plain if r["batch_size"] == batch]
        complete = len(theirs) == n_eta
        diff = (abs(ra["log2_eta_star"] - rb["log2_eta_star"])
                if rb is not None and complete else None)
        both = [(mine[(batch, r["eta"])]["final_eval_loss"], r["final_eval_loss"]) for r in theirs
                if r["status"] == "completed" and mine[(batch, r["eta"])]["status"] == "completed"]
        equal = sum(abs(x - y) <= 1e-3 * abs(y) + 1e-6 for x, y in both)
        agree_all.append(diff is not None and diff <= log2_step + 1e-9)
        result.rows.append([int(batch), _eta_cell(ra), _eta_cell(rb) if complete else "-",
                            None if diff is None else round(diff, 2),
                            f"{int(ra['n_diverged'])}/{n_eta}",
                            f"{sum(r['status'] == 'diverged' for r in theirs)}/{len(theirs)}",
                            f"{equal}/{len(both)}"])
    n_bundles = len(plan.bundles)
    result.summary = [
        f"{spec.n_points()} configurations (B = {sorted(spec.space.batch_size)}, {n_eta} etas "
        f"2^{math.log2(min(spec.space.eta)):g}..2^{math.log2(max(spec.space.eta)):g}), muP SGD, width "
        f"{spec.space.width[0]}, L = {spec.space.depth[0]}, {steps} steps, eval every {every} (benchmarks/sweep.py's "
        f"grid{', smaller' if s.quick else ''}), float32 on {s.kind}",
        f"trainer: {n_bundles} bundles as raysweep.plan makes them (fusion max {spec.fusion.max_members}), run order "
        f"costliest first, {trainer_s:.1f} s; plain sequential loop (_plain.plain_training): {plain_s:.1f} s; "
        f"trainer / plain = {trainer_s / plain_s:.3f}x ({plain_s / trainer_s:.1f}x faster)" if plain_s else "",
        f"eta* as raysweep.analyze.optimal_eta computes it (argmin, parabola refinement); the trainer also marks a "
        f"loss above 100x the initial one diverged, the plain loop stops only at a non-finite loss; eta* agree "
        f"within one grid step ({log2_step:g} octave) at {sum(agree_all)}/{len(agree_all)} batch sizes"
        + (f"; {cut}" if cut else ""),
    ]
    passed = bool(agree_all) and all(agree_all) and cut is None
    result.headline = ("" if passed else "FAIL: ") + (
                       f"{spec.n_points()} configurations: trainer {trainer_s:.1f} s, plain loop {plain_s:.1f} s "
                       f"({plain_s / trainer_s:.1f}x); eta* agree within one grid step at {sum(agree_all)}/"
                       f"{len(agree_all)} batch sizes" + (" (plain loop cut short)" if cut else ""))
    result.data = {"trainer_s": trainer_s, "plain_s": plain_s, "n_bundles": n_bundles, "grid_step_octaves": log2_step,
                   "eta_star_trainer": star_a.reset_index().to_dict("records"),
                   "eta_star_plain": [] if star_b is None else star_b.reset_index().to_dict("records"),
                   "agree_within_one_step": agree_all, "cut": cut, "passed": passed,
                   "rows_trainer": [{k: r[k] for k in ROW_KEYS} for r in ours], "rows_plain": plain}
    return result


def _eta_cell(row) -> str:
    if row is None or not math.isfinite(row["eta_star"]):
        return "-"
    return f"{row['eta_star']:.3g}" + (f" ({row['edge']})" if row["at_edge"] else "")


# --------------------------------------------------------------------------------------------- 3b. compile


def check_compile(s: Settings, deadline: Deadline) -> CheckResult:
    """The compiled trainer in a child process with a time limit (a compiler that hangs or crashes costs only this
    check); each shape is measured compiled and uncompiled in that child, with the same report interval."""
    import tempfile

    result = CheckResult("compile", TITLES["compile"])
    timeout = min(COMPILE_TIMEOUT_S[s.kind], max(5.0, deadline.left() - 5))
    with tempfile.TemporaryDirectory(prefix="gpu_check_compile_") as tmp:
        folder = Path(tmp)
        job = {"kind": s.kind, "shapes": [list(x) for x in s.compile_shapes], "modes": list(s.compile_modes),
               "window_s": s.window_s, "out": str(folder / "out.json")}
        (folder / "job.json").write_text(json.dumps(job))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        script = Path(__file__).with_name("gpu_check.py")
        proc = subprocess.Popen([sys.executable, str(script), "--child", "compile", str(folder / "job.json")],
                                env=env)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = f"killed after {timeout:.0f} s"
        rows = json.loads(Path(job["out"]).read_text()) if Path(job["out"]).exists() else []
    result.columns = ["width", "optimizer", "members K", "mode", "compile + warm-up (s)", "compiled",
                      "uncompiled", "compiled / uncompiled", "note"]
    for r in rows:
        c, u = r.get("compiled") or {}, r.get("uncompiled") or {}
        rate_c, rate_u = c.get("member_steps_per_s"), u.get("member_steps_per_s")
        result.rows.append([r["width"], r["optimizer"], r["k"], r["mode"], c.get("first_report_s"), rate_c, rate_u,
                            f"{rate_c / rate_u:.2f}x" if rate_c and rate_u else None, r.get("note") or "-"])
    done = {(r["width"], r["optimizer"], r["k"], r["mode"]) for r in rows}
    for mode in s.compile_modes:
        for width, k, optimizer in s.compile_shapes:
            if (width, optimizer, k, mode) not in done:
                result.rows.append([width, optimizer, k, mode, None, None, None, None, f"not reached (child: {rc})"])
    if s.kind == "cpu":
        result.rows.append(["-", "-", "-", "reduce-overhead", None, None, None, None,
                            "CUDA graphs: not applicable on CPU"])
    gains = [(r["compiled"]["member_steps_per_s"] / r["uncompiled"]["member_steps_per_s"], r["mode"]) for r in rows
             if (r.get("compiled") or {}).get("member_steps_per_s") and r.get("uncompiled")]
    best = max(gains, default=None)
    result.summary = [
        "the trainer's step (raysweep.step.train_step: forward, loss, hand-written backward, update) in torch.compile "
        "(mode default; on CUDA also reduce-overhead, which records CUDA graphs), measured as in check 3 in one "
        "child process, compiled and uncompiled; compile + warm-up: seconds to the first report",
        (f"helps: {'yes' if best[0] > 1.1 else 'no'} (best {best[0]:.2f}x, mode {best[1]})" if best
         else "no compiled measurement") + f"; child exit: {rc}",
    ]
    result.headline = ((f"compiled / uncompiled at best {best[0]:.2f}x ({best[1]}): "
                        f"{'helps' if best[0] > 1.1 else 'no gain'}" if best else "nothing compiled")
                       + ("; CUDA graphs: not applicable on CPU" if s.kind == "cpu" else ""))
    result.data = {"rows": rows, "exit": rc, "timeout_s": timeout}
    if rc != 0 and not rows:
        result.status, result.error = "error", f"the compile child produced nothing (exit: {rc})"
    return result


def compile_child(job_path: Path) -> int:
    """The compile check's child: per mode and shape, the compiled trainer and then the uncompiled one."""
    import torch

    from raysweep import step
    from raysweep.data import build_task

    job = json.loads(job_path.read_text())
    kind, out = job["kind"], Path(job["out"])
    if kind == "cpu":
        torch.set_num_threads(1)
    task = build_task(TRAINER_EXPERIMENT, device=kind, dtype=torch.float32)
    original, rows, every = step.train_step, [], {}
    for mode in job["modes"]:
        if mode == "reduce-overhead" and kind != "cuda":
            continue
        for width, k, optimizer in job["shapes"]:
            row = {"width": width, "optimizer": optimizer, "k": k, "mode": mode}
            pts = points(k, width, optimizer)
            if (width, k, optimizer) not in every:  # the report interval of check 3, from a short uncompiled run
                first = trainer_rate(task, TRAINER_EXPERIMENT, pts, kind, job["window_s"] / 4, 10)
                step_s = k / first["member_steps_per_s"]
                every[width, k, optimizer] = int(min(200, max(1, job["window_s"] / 4 / step_s)))
            row["report_every"] = r = every[width, k, optimizer]
            torch._dynamo.reset()
            skips = _cudagraph_skips()
            step.train_step = torch.compile(original, mode=None if mode == "default" else mode)
            try:
                row["compiled"] = trainer_rate(task, TRAINER_EXPERIMENT, pts, kind, job["window_s"], r)
            except Exception as exc:  # noqa: BLE001 - a compiler failure is this row's result
                row["note"] = f"compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            finally:
                step.train_step = original
            after = _cudagraph_skips()
            if mode == "reduce-overhead" and after is not None and skips is not None and after > skips:
                row["note"] = f"CUDA graphs skipped {after - skips} time(s) (torch's cudagraph_skips counter)"
            row["uncompiled"] = trainer_rate(task, TRAINER_EXPERIMENT, pts, kind, job["window_s"], r)
            rows.append(row)
            out.write_text(json.dumps(rows))  # after every row: a later hang or crash keeps it
    out.write_text(json.dumps(rows))
    return 0


def _cudagraph_skips() -> int | None:
    try:
        from torch._dynamo.utils import counters

        return int(counters["inductor"].get("cudagraph_skips", 0))
    except Exception:  # noqa: BLE001 - a private counter that may move between torch versions
        return None
