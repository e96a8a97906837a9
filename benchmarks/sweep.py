"""A 200-configuration sweep end to end: raysweep's launcher vs a plain PyTorch loop vs plain Ray Tune, one run.

    python benchmarks/sweep.py [--skip-tune] [--plain-threads N] [--keep DIR]

The sweep: B = 2^0 .. 2^7 x eta = 2^-12 .. 2^12 (8 x 25 = 200 configurations), muP SGD, width 128, L = 3, the
online polynomial teacher (D = 32, blocks of P = 4,096 fresh samples), 1,000 steps, float32, a report (train loss
of the window and eval loss on the 2,048-sample eval set) every 50 steps. Three ways to run it, each in a fresh
process, timed from the outside (wall clock, and the CPU time of the process and of every process it started,
Ray's GCS, raylet and workers included; see `TreeCPU`):

- raysweep: ``python -m raysweep.launch SPACE.yaml --storage TMP --quiet`` (the space file is written to a temp
  folder): an embedded Ray started from scratch, fused bundles, every row in Parquet. Everything is counted.
- (a) plain loop: the same 200 trainings one after the other in one Python process, no Ray: a hand-written MLP of
  the same rule (weights N(0, 1), ``relu(h W / sqrt(fan_in))``, readout ``/ (gamma N)``) with the same initial
  weights, ``torch.optim.SGD`` with the muP rates, autograd, the centred function ``f - f0`` with ``f0`` computed
  once per block, the same teacher blocks (same generator, same cost), ``loss.item()`` every step and a stop at
  the first non-finite loss (as a researcher would), and the same eval loss every 50 steps. By default it runs
  with one torch thread: for these tiny matmuls that is faster than torch's default (``--plain-threads 0``).
- (b) plain Ray Tune: ``tune.Tuner`` over the same grid, one trial per configuration, the trainable of (a)
  reporting every 50 steps, ``reuse_actors=True``, Tune's logger files off (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``).

Printed: seconds (wall, CPU) of each, the ratios, and per method the numbers of trials that stopped early, as a
check that the three did the same work (and how many final eval losses of (a) and raysweep agree); for scale, the
time an embedded Ray takes to start, run one torch-importing task per CPU and stop, with nothing else.
Goal: raysweep <= 0.25x of (a), and faster than (b).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _plain
from _plain import plain_training

EXPERIMENT = {"family": "poly_online", "steps": 1000, "report_every": 50}
SPACE = {"batch_size": {"pow2": [0, 7]}, "eta": {"pow2": [-12, 12]}, "width": [128], "depth": [3],
         "parametrization": ["muP"], "optimizer": ["SGD"]}
BATCH_SIZES = [2**i for i in range(8)]
RAY_ALONE = """
import os, ray
ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
@ray.remote(num_cpus=1)
def imports_torch():
    import torch
    return torch.get_num_threads()
ray.get([imports_torch.remote() for _ in range(os.cpu_count())])
ray.shutdown()
"""
ETAS = [2.0**e for e in range(-12, 13)]
WIDTH, DEPTH = 128, 3


# --------------------------------------------------------------------------------------- the plain trainable


def plain_trial(task, batch_size: int, eta: float, report=None) -> dict:
    """One configuration the way a plain study loop trains it (see the module doc and ``_plain``)."""
    point = {"batch_size": batch_size, "eta": eta, "width": WIDTH, "depth": DEPTH, "gamma": 1.0, "seed": 0,
             "parametrization": "muP", "optimizer": "SGD", "lr_rule": "study"}
    return plain_training(task, point, EXPERIMENT["steps"], EXPERIMENT["report_every"], report)


def build_task():
    import torch

    from raysweep.data import build_task as build

    return build(EXPERIMENT, dtype=torch.float32)


def run_plain(threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    task = build_task()
    outcomes = [plain_trial(task, b, eta) for b in BATCH_SIZES for eta in ETAS]
    return {"n": len(outcomes), "stopped_early": sum(o["status"] == "diverged" for o in outcomes),
            "threads": torch.get_num_threads(),
            "final_eval": [o["curve"][-1][2] if o["status"] == "completed" and o["curve"] else None
                           for o in outcomes]}


def _tune_trainable(config: dict) -> None:
    from ray import tune

    outcome = plain_trial(_tune_task(), config["batch_size"], config["eta"], report=tune.report)
    if outcome["status"] == "diverged":
        tune.report({"step": outcome["step"], "diverged": 1})


_TASK = None


def _tune_task():
    global _TASK
    if _TASK is None:  # one task per worker process, reused across the trials an actor runs (as raysweep does)
        _TASK = build_task()
    return _TASK


def run_tune(storage: str) -> dict:
    import ray
    from ray import tune

    ray.cloudpickle.register_pickle_by_value(_plain)  # the workers cannot import this folder's modules
    # a fresh local Ray, as raysweep starts one (never a cluster some other process left in /tmp/ray)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    tuner = tune.Tuner(
        tune.with_resources(_tune_trainable, {"cpu": 1}),
        param_space={"batch_size": tune.grid_search(BATCH_SIZES), "eta": tune.grid_search(ETAS)},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(storage_path=storage, name="plain_tune", verbose=0),
    )
    results = tuner.fit()
    stopped = sum(1 for r in results if r.metrics and r.metrics.get("diverged"))
    ray.shutdown()
    return {"n": len(results), "stopped_early": stopped, "errors": results.num_errors}


# ------------------------------------------------------------------------------------------- the harness


def write_space(folder: Path) -> Path:
    import yaml

    path = folder / "bench_sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "bench_sweep", "experiment": EXPERIMENT, "space": SPACE,
                                    "resources": {"cpus_per_trial": 1}}, sort_keys=False))
    return path


class TreeCPU:
    """CPU seconds of a process and all its descendants (Ray's raylet, GCS and workers included), from /proc.

    A sampler thread reads ``utime + stime`` of every process in the tree every 0.1 s and keeps the last value per
    process: a process that lives less than a sampling period, or its last 0.1 s, is missed (a few % at most).
    ``getrusage(RUSAGE_CHILDREN)`` would miss Ray's workers entirely (nobody reaps them through the tree).
    """

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, root: int):
        import threading

        self.root, self.seen, self.stop = root, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        parent, times = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
            parent[int(entry)] = int(fields[1])
            times[int(entry)] = (int(fields[11]) + int(fields[12])) / self.TICK
        tree, grew = {self.root}, True
        while grew:
            grew = False
            for pid, ppid in parent.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        for pid in tree & times.keys():
            self.seen[pid] = max(self.seen.get(pid, 0.0), times[pid])

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            self._sample()

    def total(self) -> float:
        self.stop.set()
        self.thread.join()
        return sum(self.seen.values())


def timed_child(cmd: list[str], env: dict | None = None, timeout: float = 1800) -> tuple[float, float, int]:
    """(wall s, CPU s of the child and every process it started, exit code)."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "RAY_ADDRESS"}  # both start their own
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cpu_tree = TreeCPU(proc.pid)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        print(f"timed out after {timeout:.0f} s: {' '.join(cmd)}", file=sys.stderr)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cpu = max(cpu_tree.total(), reaped)  # the child's own final CPU time reaches us through the reaped count
    if proc.returncode:
        print(out[-3000:], file=sys.stderr)
    return wall, cpu, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["plain", "tune"], help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--skip-tune", action="store_true", help="skip (b), plain Ray Tune")
    parser.add_argument("--plain-threads", type=int, default=1,
                        help="torch threads of the plain loop (default 1; 0: torch's default)")
    parser.add_argument("--keep", type=Path, help="write the space file and results here instead of a temp folder")
    args = parser.parse_args()
    if args.mode:
        result = run_plain(args.plain_threads) if args.mode == "plain" else run_tune(tempfile.mkdtemp())
        Path(args.out).write_text(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        space = write_space(root)
        print(f"sweep: 8 batch sizes x 25 etas = 200 configs, muP SGD, width {WIDTH}, L={DEPTH}, poly_online D=32, "
              f"{EXPERIMENT['steps']} steps, eval every {EXPERIMENT['report_every']}; {os.cpu_count()} CPUs; "
              f"space file {space}", flush=True)
        rows = {}

        wall, cpu, rc = timed_child([sys.executable, "-m", "raysweep.launch", str(space), "--storage",
                                     str(root / "results"), "--quiet"])
        import pyarrow.parquet as pq

        trials = pq.read_table(root / "results" / "bench_sweep" / "trials").to_pydict() if rc == 0 else {}
        statuses = trials.get("status", [])
        rows["raysweep"] = (wall, cpu, f"{len(statuses)} rows, {statuses.count('diverged')} diverged "
                                       f"(NaN/Inf or > 100x the initial loss), rc {rc}")
        print(f"raysweep          {wall:7.1f} s wall  {cpu:7.1f} s CPU   {rows['raysweep'][2]}", flush=True)
        wall, cpu, rc = timed_child([sys.executable, "-c", RAY_ALONE])
        print(f"  (reference: starting and stopping an embedded Ray with one worker per CPU that imports torch, "
              f"nothing else: {wall:.1f} s wall, {cpu:.1f} s CPU)", flush=True)

        out = root / "plain.json"
        wall, cpu, rc = timed_child([sys.executable, __file__, "--mode", "plain", "--out", str(out),
                                     "--plain-threads", str(args.plain_threads)])
        plain = json.loads(out.read_text()) if rc == 0 else {}
        rows["plain"] = (wall, cpu, f"{plain.get('n')} trainings, {plain.get('stopped_early')} stopped at a "
                                    f"non-finite loss, {plain.get('threads')} torch thread(s), rc {rc}")
        print(f"(a) plain loop    {wall:7.1f} s wall  {cpu:7.1f} s CPU   {rows['plain'][2]}", flush=True)
        if rc == 0 and statuses:
            # same trainings: the final eval loss of the configurations both completed agree (float32, same init,
            # same data; the chaotic ones near the edge may drift)
            mine = dict(zip(zip(trials["batch_size"], trials["eta"]), zip(statuses, trials["final_eval_loss"])))
            pairs = [(mine[(b, e)][1], v) for (b, e), v in zip([(b, e) for b in BATCH_SIZES for e in ETAS],
                                                              plain["final_eval"])
                     if v is not None and mine.get((b, e), ("", None))[0] == "completed"]
            close = sum(abs(a - v) <= 1e-3 * abs(v) + 1e-6 for a, v in pairs)
            print(f"    check: {close} of {len(pairs)} configurations completed by both end at the same eval loss "
                  "(rel 1e-3)", flush=True)

        if not args.skip_tune:
            out = root / "tune.json"
            wall, cpu, rc = timed_child([sys.executable, __file__, "--mode", "tune", "--out", str(out)],
                                        env={"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0"})
            tune_res = json.loads(out.read_text()) if rc == 0 else {}
            rows["tune"] = (wall, cpu, f"{tune_res.get('n')} trials, {tune_res.get('stopped_early')} stopped at a "
                                       f"non-finite loss, {tune_res.get('errors')} errors, rc {rc}")
            print(f"(b) plain Tune    {wall:7.1f} s wall  {cpu:7.1f} s CPU   {rows['tune'][2]}", flush=True)

        ours = rows["raysweep"]
        for key, label in (("plain", "(a) plain loop"), ("tune", "(b) plain Ray Tune")):
            if key in rows:
                other = rows[key]
                print(f"raysweep / {label}: {ours[0] / other[0]:.3f}x wall, {ours[1] / other[1]:.3f}x CPU "
                      f"({other[0] / ours[0]:.1f}x faster by wall clock)")
        print("goal: raysweep <= 0.25x of (a) and faster than (b)")


if __name__ == "__main__":
    main()
