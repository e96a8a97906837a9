"""``python -m raysweep.launch SPACE.yaml``: run a sweep as Ray Tune trials and land every result in Parquet.

Exit codes: 0 the sweep ran (diverged and failed trials included), 2 the spec is invalid (the message names the
field; Ray is never imported), 1 any other failure.

Ray: an embedded local Ray when no address is given; ``--address`` (or ``RAY_ADDRESS``) attaches to a cluster.
Tune's per-trial JSON/CSV/TensorBoard files are off and its experiment folder is temporary: the Parquet tables
under ``<storage>/<name>/`` are the record.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from raysweep.errors import RaysweepError, SpecError
from raysweep.space import load_spec


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m raysweep.launch", description=__doc__.splitlines()[0])
    ap.add_argument("space", help="the search space YAML (see search_spaces/)")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                    help="Ray cluster to attach to (default: RAY_ADDRESS, else an embedded local Ray)")
    ap.add_argument("--storage", default="results", help="results root; the sweep lands in STORAGE/NAME (default ./results)")
    ap.add_argument("--name", help="sweep name (default: the spec's name)")
    ap.add_argument("--dry-run", action="store_true", help="print the trials, bundles and resources; start nothing")
    ap.add_argument("--max-concurrent", type=int, help="cap on trials running at once (overrides search.max_concurrent)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    ap.add_argument("--num-gpus", type=float, help="GPUs of the embedded local Ray (default: detected)")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    return ap.parse_args(argv)


def check_saved_spec(sweep_dir: Path, spec) -> None:
    """A relaunch may grow the space but not change the experiment: that would mix two studies in one table."""
    saved = sweep_dir / "spec.yaml"
    if not saved.exists():
        return
    from raysweep.space import parse_spec
    import yaml

    old = parse_spec(yaml.safe_load(saved.read_text()), source=str(saved))
    if old.experiment != spec.experiment:
        raise SpecError(
            f"experiment: differs from the one already run in {saved} ({old.experiment!r} vs {spec.experiment!r}); "
            "run it under another --name or --storage"
        )


def save_spec(sweep_dir: Path, spec) -> None:
    tmp = sweep_dir / ".spec.yaml.tmp"
    tmp.write_text(spec.to_yaml())
    os.replace(tmp, sweep_dir / "spec.yaml")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = load_spec(args.space)
        if args.name:
            spec = spec.renamed(args.name) if hasattr(spec, "renamed") else _renamed(spec, args.name)
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise SpecError(f"--max-concurrent: must be a positive integer, got {args.max_concurrent}")
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return run(spec, args)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RaysweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished trials are saved; relaunch the same command to continue", file=sys.stderr)
        return 1


def _renamed(spec, name: str):
    from raysweep.space import parse_spec

    d = spec.to_dict()
    d["name"] = name
    return parse_spec(d, source=spec.source)


def run(spec, args) -> int:
    from raysweep.plan import build_plan, describe
    from raysweep.results import ResultsWriter, read_trials
    from raysweep.search import describe_search, planned_spec

    sweep_dir = Path(args.storage) / spec.name
    done = set(read_trials(sweep_dir).column("config_key").to_pylist()) if sweep_dir.exists() else set()
    plan, n_done = build_plan(planned_spec(spec), done)  # guided searches and schedulers: one trial per config
    if args.dry_run:
        print(describe_search(spec, describe(planned_spec(spec), plan, n_done, cuda=_cuda_available())))
        return 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    check_saved_spec(sweep_dir, spec)
    with ResultsWriter(sweep_dir, spec.name) as writer:
        save_spec(sweep_dir, spec)
        plan, n_done = build_plan(planned_spec(spec), writer.keys)  # under the lock: the keys are final
        n_todo = sum(len(b.points) for b in plan.bundles.values())
        if not n_todo and spec.search.algorithm != "optuna":  # Optuna's studies, not the grid, say what is left
            print(f"sweep {spec.name}: all {n_done} configurations already have a row; nothing to run")
            return 0
        summary = run_tuner(spec, plan, writer, address=args.address, max_concurrent=args.max_concurrent,
                            num_cpus=args.num_cpus, num_gpus=args.num_gpus, quiet=args.quiet)
    print(f"sweep {spec.name}: {summary}; results in {sweep_dir}")
    return 0


def start_ray(address: str | None, *, num_cpus: int | None, num_gpus: float | None) -> str:
    """Attach to ``address`` or start an embedded local Ray; say where the driver runs."""
    import ray

    if ray.is_initialized():
        return "in-process Ray"
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    if address:
        ray.init(address=address, **{k: v for k, v in common.items() if k != "include_dashboard"})
        return f"attached to {address}"
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **common)  # never a stray `ray start`
    return "embedded local Ray"


def run_tuner(spec, plan, writer, *, address=None, max_concurrent=None, num_cpus=None, num_gpus=None,
              quiet=False) -> str:
    """Map the plan to one Tuner and run it; return the summary line.

    Grid and random searches: one Tune trial per bundle (``grid_search`` over bundle ids). Guided searches
    (Optuna, eta scans) pick one-configuration trials at run time through a searcher; ``search.scheduler`` may
    stop trials early. :func:`raysweep.search.build_search` says which.
    """
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")
    # A diverged or failed trial's last report carries no metric (a scheduler must never compare NaN): Tune's
    # strict check would reject that report as "missing the scheduler's metric".
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    import ray
    from ray import tune

    from raysweep.autobatch.launching import size_plan, wants_probe
    from raysweep.callbacks import ProgressCallback, ResultsCallback
    from raysweep.plan import resources_per_trial
    from raysweep.search import build_search
    from raysweep.trial import tune_trainable

    results = ResultsCallback(writer, plan)
    search = build_search(spec, plan, results)  # before Ray starts: a missing sampler package fails fast
    results.plan = search.plan
    where = start_ray(address, num_cpus=num_cpus, num_gpus=num_gpus)
    resources = resources_per_trial(spec, cuda=_cluster_has_gpus())
    if search.searcher is None and wants_probe(spec, ray.cluster_resources()):
        # GPU shares (or CPU memory) per bundle from the fitted memory model; `batch_size: auto` resolved
        plan, resources, failed = size_plan(spec, search.plan, writer.sweep_dir, log=_log(quiet))
        results._land([{"trial": row, "curves": []} for row in failed])
        search.plan = results.plan = plan
        search.param_space = {"bundle": tune.grid_search(list(plan.bundles))}
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, plan=search.plan), resources)
    callbacks = [results]
    if not quiet:
        callbacks.append(ProgressCallback(results, search.n_total, where))
    scratch = tempfile.mkdtemp(prefix="raysweep-tune-")
    try:
        tuner = tune.Tuner(
            trainable,
            param_space=search.param_space,
            tune_config=tune.TuneConfig(
                search_alg=search.searcher,
                scheduler=search.scheduler,
                num_samples=search.num_samples,
                max_concurrent_trials=max_concurrent or spec.search.max_concurrent,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=scratch,
                callbacks=callbacks,
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=2),
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
            ),
        )
        tuner.fit()
    finally:
        if search.searcher is not None:
            search.searcher.close()
        shutil.rmtree(scratch, ignore_errors=True)
    c = results.counts
    extra = search.summary()
    return (f"{sum(c.values())} configurations landed ({c['completed']} completed, {c['diverged']} diverged, "
            f"{c['failed']} failed, {c['pruned']} pruned){'; ' + extra if extra else ''}; ran on {where}")


def _log(quiet: bool):
    return (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr))


def _cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0 and _cuda_available()


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
