"""raysweep's CUDA path proved in one short run: the autobatch probe, the per-trial memory cap, the fused trainer
and a 200-configuration grid, measured on the GPU and written as JSON and Markdown tables.

    PYTHONPATH=. python benchmarks/gpu_check.py --out DIR [--cpu] [--quick] [--budget-s S] [--checks NAMES]

Writes ``DIR/gpu_check.json`` (every number) and ``DIR/gpu_check.md`` (one Markdown table per check, ready for the
README), both rewritten after every check: a run cut short keeps what it measured. Checks, in the order they run:

1. ``probe``: the autobatch probe in its subprocess mode (no Ray; one fresh process per point) for MLPs of a few
   widths and depths, SGD and Adam, train and eval modes; the fitted memory model's predicted peak against the
   measured peak on held-out (width, depth, batch, members) points (the probe's own and a few it never ran):
   median, p95 and worst relative error, the probe's wall time, and the context (CUDA: the context of a fresh
   process, from global free memory; CPU: the cpu-rss baseline the probe reports).
2. ``cap``: two trial processes at once (``raysweep.trial.run_bundle``, what a Ray trial runs), each sized by the
   model (``plan_resources``): one trains the bundle it was sized for, the other a bundle far larger than its share.
   The second must land ``failed`` rows whose error starts with ``oom:`` (``raysweep.autobatch.guard.is_oom``), the
   first must finish with the losses it has alone. CUDA: the trial's own cap, ``set_per_process_memory_fraction``
   of its GPU share; CPU (where trials do not cap themselves): ``RLIMIT_DATA`` at the need it was sized for.
3. ``trainer``: member-steps/s of ``raysweep.train.train_bundle`` (the trial's trainer) for 1, 16, 64 and 256
   members at widths 64, 256 and 1024 (B = 32, float32, SGD and Adam), against one unfused member (the trainer with
   one configuration) and against plain PyTorch (``_plain.plain_training``: autograd, ``torch.optim``); also with
   the trainer's step groups (sized for a CPU cache) merged into one group.
4. ``grid``: the 200-configuration grid of ``benchmarks/sweep.py`` trained by the trainer directly (bundles as
   ``raysweep.plan`` makes them, no Ray) and by the plain sequential loop on the same device, and eta*(B) of both
   (``raysweep.analyze.optimal_eta``).
5. ``paths``: what the CPU tests claim bit for bit, on the device (``_gpu_paths``): the general optimizer path's
   fused members against each alone, exact resume through a checkpoint's bytes, curvature on/off, a model factory
   (the shipped CNN) fused against alone and its resume, and ``find_batch_size`` of a plain module.
6. ``compile`` (table 3b): the trainer's step under ``torch.compile`` (and, on CUDA, its ``reduce-overhead`` mode,
   which replays CUDA graphs), in a child process with a time limit: whether either helps.

On an H200 every check together takes under 8 minutes (``--budget-s``, default 450 s on CUDA: a check that would
start past it is skipped and says so). ``--cpu`` runs every check on the CPU; ``--cpu --quick`` does it in about a
minute with smaller shapes, fewer members, steps and configurations (what the tests run). Exit 0 when every check
ran, 1 when one failed, 2 for bad arguments (``--cpu`` is required on a machine without CUDA).

Needs only what the GPU image has: torch, numpy, pandas, pyarrow, pyyaml, scikit-learn. No Ray, no optuna, no
matplotlib. Top-level imports stay in the standard library: the probe's children import this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):  # _plain, sweep and the helpers; raysweep from this checkout
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _gpu_common import TITLES, CheckResult, Deadline, Settings, fmt, json_safe, settings  # noqa: E402

CHECKS = tuple(TITLES)


class Output:
    """``gpu_check.json`` and ``gpu_check.md`` in ``folder``, rewritten whenever a check lands."""

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta, self.checks = folder, meta, {}
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, result: CheckResult) -> None:
        self.checks[result.name] = result
        self.write()

    def write(self) -> None:
        doc = {"meta": self.meta, "checks": {k: asdict(v) for k, v in self.checks.items()}}
        tmp = self.folder / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(json_safe(doc), indent=1, default=str))
        tmp.replace(self.folder / "gpu_check.json")
        (self.folder / "gpu_check.md").write_text(self.markdown())

    def markdown(self) -> str:
        m = self.meta
        lines = [f"## gpu_check: {m['device']} ({m['mode']})", "",
                 f"torch {m['torch']}, CUDA {m['cuda']}, Python {m['python']}, {m['cpus']} CPUs; "
                 f"{m.get('wall_time_s', 0):.0f} s in all; `{m['command']}`", "",
                 "| check | result | s |", "|---|---|---|"]
        lines += [f"| {r.title.split(':')[0]} | {fmt(r.headline if r.status == 'ok' else f'{r.status}: {r.error}')} | "
                  f"{r.wall_time_s:.0f} |" for r in self.checks.values()]
        lines.append("")
        for r in self.checks.values():
            lines += [f"### {r.title}", ""]
            if r.status != "ok":
                lines += [f"**{r.status}**: {r.error}", ""]
            lines += [f"{s}  " for s in r.summary] + ([""] if r.summary else [])
            if r.columns and r.rows:
                lines.append("| " + " | ".join(r.columns) + " |")
                lines.append("|" + "---|" * len(r.columns))
                lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in r.rows]
                lines.append("")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- the run


def meta_of(s: Settings, argv: list[str]) -> dict:
    import torch

    if s.kind == "cuda":
        props = torch.cuda.get_device_properties(0)
        device = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    else:
        from raysweep.autobatch.device import cpu_device_info

        device = cpu_device_info().name
    return {"device": device, "kind": s.kind, "mode": s.kind + (" quick" if s.quick else ""),
            "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "command": " ".join(["gpu_check.py"] + argv),
            "settings": s.to_dict(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def run_check(out: Output, name: str, deadline: Deadline, fn, *args) -> CheckResult:
    """Run one check and land its result; a failure is recorded (with its traceback) and the run goes on."""
    title = TITLES[name]
    print(f"[{deadline.elapsed():6.1f} s] {name}: {title}", flush=True)
    started = time.perf_counter()
    if deadline.left() <= 0:
        result = CheckResult(name, title, status="skipped", error=f"time budget spent ({deadline.elapsed():.0f} s)")
    else:
        try:
            result = fn(*args)
        except Exception as exc:  # noqa: BLE001 - one check's defect must not cost the others
            result = CheckResult(name, title, status="error", error=f"{type(exc).__name__}: {exc}",
                                 data={"traceback": traceback.format_exc()})
            print(result.data["traceback"], file=sys.stderr, flush=True)
    result.wall_time_s = time.perf_counter() - started
    out.meta["wall_time_s"] = deadline.elapsed()
    out.add(result)
    for line in result.summary:
        print(f"    {line}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # a process this script started (the cap check's trials, the compile check)
        return child_main(argv[1], Path(argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--cpu", action="store_true", help="run every check on the CPU")
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer members, steps, configurations")
    parser.add_argument("--budget-s", type=float, help="skip checks that would start after this many seconds "
                        "(default 450 on CUDA, none on CPU)")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    args = parser.parse_args(argv)
    wanted = [c.strip() for c in args.checks.split(",") if c.strip()]
    if not wanted or set(wanted) - set(CHECKS):
        parser.error(f"--checks: names must be among {','.join(CHECKS)}, got {args.checks!r}")
    import torch

    torch.set_num_threads(1)  # as a trial with cpus_per_trial: 1 (raysweep.trial); fusion.py measures one thread too
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device here: run on a GPU machine, or add --cpu to run every check on the CPU")
    # every process this run starts (the probe subprocess, the trial processes) imports raysweep from this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    s = settings("cpu" if args.cpu else "cuda", args.quick, args.budget_s)
    deadline = Deadline(s.budget_s)
    out = Output(args.out, meta_of(s, argv))
    print(f"gpu_check on {out.meta['device']} ({out.meta['mode']}), torch {out.meta['torch']}; "
          f"budget {'none' if s.budget_s is None else f'{s.budget_s:.0f} s'}; writing {args.out}", flush=True)

    import _gpu_memory
    import _gpu_paths
    import _gpu_speed

    keep: dict = {}  # the probe's memory model, for the cap check
    checks = {"probe": (_gpu_memory.check_probe, s, keep), "cap": (_gpu_memory.check_cap, s, keep),
              "trainer": (_gpu_speed.check_trainer, s, deadline), "grid": (_gpu_speed.check_grid, s, deadline),
              "paths": (_gpu_paths.check_paths, s, deadline), "compile": (_gpu_speed.check_compile, s, deadline)}
    for name in CHECKS:
        if name in wanted:
            run_check(out, name, deadline, *checks[name])
    out.meta["wall_time_s"] = deadline.elapsed()
    out.write()
    bad = [r.name for r in out.checks.values() if r.status == "error" or r.data.get("passed") is False]
    print(f"done in {deadline.elapsed():.0f} s: {args.out / 'gpu_check.md'}"
          + (f"; FAILED: {', '.join(bad)}" if bad else ""), flush=True)
    return 1 if bad else 0


def child_main(role: str, job: Path) -> int:
    """The side of a process this script started: ``cap`` (one trial) or ``compile`` (the compiled trainer)."""
    if role == "cap":
        import _gpu_memory

        return _gpu_memory.cap_child(job)
    if role == "compile":
        import _gpu_speed

        return _gpu_speed.compile_child(job)
    print(f"unknown child role {role!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
