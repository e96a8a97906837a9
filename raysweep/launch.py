"""``python -m raysweep.launch SPACE.yaml``: run a sweep as Ray Tune trials and land every result in Parquet.

Exit codes: 0 the sweep ran (diverged and failed trials included), 2 the spec or an option is invalid (the message
names the field; Ray is never imported), 1 any other failure (storage, cluster, a corrupt results file), 130 / 143
interrupted by SIGINT (Ctrl-C) / SIGTERM: the finished trials are landed and a relaunch continues.

Ray: an embedded local Ray when no address is given; ``--address`` (or ``RAY_ADDRESS``) attaches to a cluster.
Tune's per-trial JSON/CSV/TensorBoard files are off and its experiment folder (``<sweep>/_tune/``) is removed at
the end: the Parquet tables under ``<storage>/<name>/`` are the record.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import socket
import sys
import threading
import time

from raysweep.errors import OptionError, RaysweepError, SpecError
from raysweep.space import check_name, load_spec

ADDRESS_TIMEOUT_S = 5.0  # how long a TCP connection to --address may take before the launch stops
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})$")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m raysweep.launch", description=__doc__.splitlines()[0])
    ap.add_argument("space", help="the search space YAML (see search_spaces/)")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                    help="Ray cluster to attach to, HOST:PORT or auto (default: RAY_ADDRESS, else an embedded local "
                         "Ray)")
    ap.add_argument("--storage", default="results",
                    help="results root, a local path or a URI (file://, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX); "
                         "the sweep lands in STORAGE/NAME (default ./results)")
    ap.add_argument("--shared-storage", action="store_true",
                    help="assert that a local --storage path is a mount every node of the cluster sees (NFS, Lustre); "
                         "without it a cluster of more than one node refuses a local path")
    ap.add_argument("--name", help="sweep name (default: the spec's name)")
    ap.add_argument("--dry-run", action="store_true", help="print the trials, bundles and resources; start nothing")
    ap.add_argument("--max-concurrent", type=int, help="cap on trials running at once (overrides search.max_concurrent)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    ap.add_argument("--num-gpus", type=float, help="GPUs of the embedded local Ray (default: detected)")
    ap.add_argument("--retry-failed", action="store_true",
                    help="run again the failed configurations whose cause was not the configuration itself (a lost "
                         "worker, out of memory, a data error); each keeps exactly one row")
    ap.add_argument("--quarantine", action="store_true",
                    help="move unreadable or foreign files of trials/ and curves/ to <sweep>/quarantine/ and go on "
                         "(their configurations run again)")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    return ap.parse_args(argv)


def check_options(args: argparse.Namespace) -> None:
    """Every option's value, before anything else runs; OptionError names the option."""
    if args.num_cpus is not None and args.num_cpus < 1:
        raise OptionError(f"--num-cpus: must be a positive integer (CPUs of the embedded Ray), got {args.num_cpus}")
    if args.num_gpus is not None and not (math.isfinite(args.num_gpus) and args.num_gpus >= 0):
        raise OptionError(f"--num-gpus: must be a finite number >= 0, got {args.num_gpus}")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise OptionError(f"--max-concurrent: must be a positive integer, got {args.max_concurrent}")
    if not args.storage or not args.storage.strip() or "\0" in args.storage:
        raise OptionError(f"--storage: must be a local path or a URI, got {args.storage!r}")
    if args.name is not None:
        try:
            check_name(args.name, "--name")
        except SpecError as exc:
            raise OptionError(str(exc)) from None
    if args.address:
        check_address(args.address)


def check_address(address: str) -> None:
    """``--address`` is HOST:PORT (the head's GCS address), ``auto``, or a URI (``ray://`` is refused later)."""
    if address == "auto" or "://" in address:
        return
    match = _HOST_PORT.match(address)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        shown = address if len(address) <= 80 else address[:77] + "..."
        raise OptionError(f"--address: must be HOST:PORT (the head's address, e.g. 10.0.0.5:6379) or auto, got "
                          f"{shown!r}; leave it out for an embedded local Ray")


def check_reachable(address: str, timeout_s: float = ADDRESS_TIMEOUT_S) -> None:
    """A TCP connection to ``address`` (HOST:PORT) opens within ``timeout_s``: otherwise Ray would retry for
    minutes with nothing but its own warnings. ``auto`` and URIs are left to Ray."""
    match = _HOST_PORT.match(address)
    if not match:
        return
    host, port = match.group(1).strip("[]"), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise RaysweepError(f"--address {address}: cannot reach a Ray cluster there within {timeout_s:g} s ({why}); "
                            "start it (ray start --head) or fix the address") from None


def check_saved_spec(sweep_dir, spec) -> None:
    """A relaunch may grow the space but not change the experiment: that would mix two studies in one table.

    ``sweep_dir``: a local path, a URI or a :class:`raysweep.storage.Location`. A saved spec that does not read
    back is a SpecError naming it."""
    from raysweep import storage
    from raysweep.fields import parse_yaml
    from raysweep.space import parse_spec

    saved = storage.resolve(sweep_dir).join("spec.yaml")
    if not saved.exists():
        return
    try:
        old = parse_spec(parse_yaml(saved.read_text(), str(saved)), source=str(saved))
    except (SpecError, UnicodeDecodeError) as exc:
        raise SpecError(f"{saved}: the spec saved by an earlier launch of this sweep does not read back ({exc}); "
                        "move it aside only if the rows beside it belong to this spec, else use another --name") from None
    if old.experiment != spec.experiment:
        changed = [k for k, v in spec.experiment.as_dict().items() if old.experiment.as_dict().get(k) != v]
        changed += [k for k in old.experiment.as_dict() if k not in spec.experiment.as_dict()]
        raise SpecError(
            f"experiment: differs from the one already run in {saved} (changed: {', '.join(sorted(set(changed)))}); "
            "run it under another --name or --storage"
        )


def save_spec(sweep_dir, spec) -> None:
    """``<sweep>/spec.yaml``, atomically (a local path, a URI or a :class:`raysweep.storage.Location`)."""
    from raysweep import storage

    storage.write_bytes_atomic(storage.resolve(sweep_dir).join("spec.yaml"), spec.to_yaml().encode())


class Interrupted(BaseException):
    """SIGINT or SIGTERM outside the Tuner's loop (or a second one inside it): the launch stops where it is."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM stop a sweep gracefully.

    While the Tuner runs (``tuning``), the first signal only records itself: Tune's loop sees it (through a
    ``ray.tune.Stopper``), stops every trial, and the trials that finished are landed; a second signal stops at
    once. Outside the loop a signal raises :class:`Interrupted`. If the Tuner has not returned ``grace_s`` after the
    first signal (a SIGTERM sent to the whole process group also stops the embedded Ray's own processes, and Tune
    then waits for them), ``force()`` lands what the driver holds and exits. Installed by :func:`main` (and again
    after Ray starts: ``ray.init`` sets its own SIGTERM handler), restored when it returns.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, grace_s: float = 10.0):
        self.signum: int | None = None
        self.tuning = False
        self.grace_s = grace_s
        self.on_stop = lambda: None  # what the results callback does when the first signal arrives
        self.force = None  # what to do when the Tuner does not return within grace_s
        self._saved: dict[int, object] = {}

    def install(self) -> None:
        try:
            for sig in self.SIGNALS:
                previous = signal.signal(sig, self._handle)
                self._saved.setdefault(sig, previous)
        except ValueError:  # not the main thread: signals stay as they are
            pass

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = signum if first else self.signum
        if first and self.tuning:
            self.on_stop()
            threading.Thread(target=self._watchdog, name="raysweep-stop", daemon=True).start()
            return
        raise Interrupted(signum)

    def _watchdog(self) -> None:
        time.sleep(self.grace_s)
        if self.tuning and self.force is not None:
            self.force()

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)


STOP = StopSignals()


def main(argv: list[str] | None = None) -> int:
    global STOP
    STOP = StopSignals()
    STOP.install()
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # ours: Tune's would end the sweep as if complete
    try:
        return _main(argv)
    finally:
        STOP.restore()


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    try:
        check_options(args)
        spec = load_spec(args.space)
        if args.name:
            spec = _renamed(spec, args.name)
    except SpecError as exc:  # OptionError is one too (exit 2: nothing started)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return run(spec, args)
    except (SpecError, OptionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RaysweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the storage: a missing bucket, missing credentials, a full disk (RAYSWEEP_DEBUG=1: trace)
        if os.environ.get("RAYSWEEP_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"interrupted ({signal.Signals(signum).name}): finished trials are saved; relaunch the same command "
              "to continue", file=sys.stderr)
        return 128 + int(signum)
    finally:
        stop_ray()


def _renamed(spec, name: str):
    from raysweep.space import parse_spec

    d = spec.to_dict()
    d["name"] = name
    return parse_spec(d, source=spec.source)


def check_data(spec) -> None:
    """The experiment's local data files, checked on the driver before Ray starts (a SpecError naming
    ``experiment.path``); families without files import nothing."""
    if "path" not in spec.experiment.params:
        return
    from raysweep.data import check_source
    from raysweep.errors import DataError

    try:
        check_source(spec.experiment.as_dict())
    except DataError as exc:
        key = "max_train_samples" if "max_train_samples" in str(exc) else "path"
        raise SpecError(f"experiment.{key}: {exc} ({spec.source})") from None


def run(spec, args) -> int:
    from raysweep import storage

    root = storage.resolve(args.storage)
    sweep = root.join(spec.name)
    shared = getattr(args, "shared_storage", False)
    retry = getattr(args, "retry_failed", False)
    if retry and spec.search.guided:
        raise OptionError(f"--retry-failed: not for {spec.search.algorithm} searches, whose studies decide what runs "
                          "next from every outcome; start a new --name to run them again")
    if args.address and args.address.startswith("ray://") and not args.dry_run:
        # Under Ray Client, Tune runs its loop (and raysweep's callbacks: the Parquet writer) as an actor on the
        # cluster, where this process's writer and lock are not: refuse rather than lose rows.
        raise RaysweepError(
            f"--address {args.address}: Ray Client (ray://) is not supported, because Tune would run the sweep's "
            "results writer on the cluster instead of in this process. From a laptop, submit the launcher as a "
            "Ray job: ray job submit --address http://HEAD:8265 --working-dir . -- python -m raysweep.launch "
            "SPACE.yaml --storage s3://BUCKET/PREFIX; on a cluster node, attach with --address HEAD:6379"
        )
    storage.check_reachable(root)  # an object store with no network answers nothing for minutes
    storage.check_no_links(sweep)
    check_data(spec)
    if not (args.dry_run or retry or args.quarantine):  # a finished sweep relaunched: say so from its rows and
        from raysweep.search.remaining import nothing_to_run  # journal, before Ray starts

        check_saved_spec(sweep, spec)
        finished = nothing_to_run(spec, sweep)
        if finished:
            print(finished)
            return 0
    if not args.dry_run and sweep.is_posix and not shared and (args.address or "ray" in sys.modules):
        # A local path serves one node: refuse a larger cluster before anything is written (and before torch loads).
        import ray

        ours = not ray.is_initialized()
        start_ray(args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
        try:
            storage.check_cluster(root, sum(1 for n in ray.nodes() if n["Alive"]), shared_storage=False,
                                  address=args.address)
        except storage.StorageError:
            if ours:
                ray.shutdown()
            raise

    from raysweep.plan import build_plan, describe
    from raysweep.results import ResultsWriter, corrupt_files, read_trials, retryable
    from raysweep.search import describe_search, planned_spec

    if args.dry_run:
        skip = [part.name for part, _ in corrupt_files(sweep)] if args.quarantine else []
        rows = read_trials(sweep, exclude=skip).select(["config_key", "status", "error"]).to_pylist()
        done = {r["config_key"] for r in rows if not (retry and retryable(r))}
        plan, n_done = build_plan(planned_spec(spec), done)  # guided searches and schedulers: one trial per config
        print(describe_search(spec, describe(planned_spec(spec), plan, n_done, cuda=_cuda_available(),
                                             storage=sweep.local_dir)))
        print(_describe_storage(sweep, shared))
        for name in skip:
            print(f"--quarantine: would move {name} (trials and curves) to {sweep}/quarantine/")
        if retry:
            n_retry = sum(1 for r in rows if retryable(r))
            print(f"--retry-failed: {n_retry} failed configurations would run again")
        return 0
    sweep.mkdir()
    check_saved_spec(sweep, spec)
    with ResultsWriter(sweep, spec.name, quarantine_files=args.quarantine, retry=retry) as writer:
        for name in writer.quarantined:
            print(f"quarantined {name} -> {sweep}/quarantine/{name}", file=sys.stderr)
        if writer.retried:
            print(f"--retry-failed: {len(writer.retried)} failed configurations run again", file=sys.stderr)
        save_spec(sweep, spec)
        plan, n_done = build_plan(planned_spec(spec), writer.keys)  # under the lock: the keys are final
        n_todo = sum(len(b.points) for b in plan.bundles.values())
        if not n_todo and spec.search.algorithm != "optuna":  # Optuna's studies, not the grid, say what is left
            print(f"sweep {spec.name}: all {n_done} configurations already have a row; nothing to run")
            return 0
        total = f" of {n_done + n_todo}" if spec.search.algorithm != "optuna" else ""

        def interrupted() -> str:
            n_rows = read_trials(sweep).num_rows
            return (f"interrupted ({signal.Signals(STOP.signum).name}): {n_rows}{total} configurations have a row, "
                    f"{n_rows - n_done} of them landed by this launch; relaunch the same command to continue")

        def force() -> None:  # the Tuner did not stop within the grace period: land what we hold and go
            writer.flush(timeout_s=5.0)
            print(interrupted(), file=sys.stderr, flush=True)
            os._exit(STOP.exit_code)

        STOP.force = force
        summary = run_tuner(spec, plan, writer, address=args.address, max_concurrent=args.max_concurrent,
                            num_cpus=args.num_cpus, num_gpus=args.num_gpus, quiet=args.quiet)
    if STOP.signum is not None:
        print(interrupted(), file=sys.stderr)
        return STOP.exit_code
    print(f"sweep {spec.name}: {summary}; results in {sweep}")
    return 0


def _describe_storage(sweep, shared: bool) -> str:
    """The ``--dry-run`` line: where the results go and what that storage guarantees."""
    if sweep.is_posix:
        scope = ("a mount every node sees (--shared-storage)" if shared else
                 "a local path: a cluster of more than one node needs --shared-storage or an object-store URI")
        return f"storage: {sweep} ({scope}; atomic renames; one driver per sweep, held by {sweep}/.lock)"
    return (f"storage: {sweep} (object store: each file is one atomic PUT; no lock, so run one driver per sweep at "
            f"a time; Optuna journal and autobatch cache in the local folder {sweep.local_dir})")


_WHERE: str | None = None  # where start_ray connected this process, for the progress and summary lines
_EMBEDDED = False  # start_ray started an embedded local Ray, which stop_ray stops


def start_ray(address: str | None, *, num_cpus: int | None, num_gpus: float | None) -> str:
    """Attach to ``address`` or start an embedded local Ray; say where the driver runs.

    "embedded local Ray on host H"; "attached to ADDR from host H (the head node | a worker node)": the driver
    attaches through the Ray node of its own machine; "on the head node as a Ray job (SUBMISSION_ID)" when
    ``ray job submit`` started this process (the job supervisor sets RAY_ADDRESS, so that path attaches too).
    A later call in the same process returns the first one's answer ("in-process Ray" when something else
    initialised Ray).
    """
    global _WHERE, _EMBEDDED
    import ray

    if ray.is_initialized():
        return _WHERE or "in-process Ray"
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, **{k: v for k, v in common.items() if k != "include_dashboard"})
        except (ConnectionError, TimeoutError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RaysweepError(f"--address {address}: cannot attach to a Ray cluster there ({first[:300]})") from None
        STOP.install()  # ray.init replaced the SIGTERM handler
        _WHERE = _driver_placement(address)
    else:
        # never a stray `ray start`; no prestarted idle workers: Tune starts its trainable actors in workers of
        # their own, so on a small machine the prestarted ones only take CPU from the start of the sweep
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                 _system_config={"prestart_worker_first_driver": False}, **common)
        STOP.install()  # ray.init replaced the SIGTERM handler
        _WHERE, _EMBEDDED = f"embedded local Ray on host {socket.gethostname()}", True
    return _WHERE


def stop_ray() -> None:
    """Stop the embedded local Ray that :func:`start_ray` started (a cluster attached to, or a Ray initialised by
    someone else, is left alone).

    Explicitly rather than at interpreter exit, which pauses 0.5 s first; and the embedded node's autoscaler
    monitor goes first: it answers SIGTERM by reporting to the GCS, which ``ray.shutdown`` has already stopped,
    so it would sit out Ray's 1 s grace period. A one-node local cluster has nothing to autoscale.
    """
    global _WHERE, _EMBEDDED
    if not _EMBEDDED:
        return
    import ray

    # Ray's own Node method, looked up rather than assumed: a private API that other Ray versions may lack
    kill_monitor = getattr(getattr(ray._private.worker, "_global_node", None), "kill_monitor", None)
    if kill_monitor is not None:
        kill_monitor(check_alive=False)
    ray.shutdown()
    _WHERE, _EMBEDDED = None, False


def _driver_placement(address: str) -> str:
    """Where an attached driver runs: on which node, and whether as a Ray job (see :func:`start_ray`)."""
    import ray

    me = ray.get_runtime_context().get_node_id()
    on_head = any(n["NodeID"] == me and "node:__internal_head__" in n.get("Resources", {}) for n in ray.nodes())
    # RAY_JOB_CONFIG_JSON_ENV_VAR: set by the Ray job supervisor for a `ray job submit` entrypoint
    return _placement_text(address, socket.gethostname(), on_head, os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def _placement_text(address: str, host: str, on_head: bool, job_config: str | None) -> str:
    import json

    node = "the head node" if on_head else "a worker node"
    if job_config:
        try:
            submission = json.loads(job_config).get("metadata", {}).get("job_submission_id")
        except ValueError:
            submission = None
        return f"on {node} as a Ray job" + (f" ({submission})" if submission else "")
    return f"attached to {address} from host {host} ({node})"


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
    from raysweep.callbacks import ProgressCallback, ResultsCallback, StopOnSignal
    from raysweep.plan import resources_per_trial, run_order
    from raysweep.search import build_search
    from raysweep.trial import tune_trainable

    results = ResultsCallback(writer, plan)
    search = build_search(spec, plan, results)  # before Ray starts: a missing sampler package fails fast
    results.plan = search.plan
    where = start_ray(address, num_cpus=num_cpus, num_gpus=num_gpus)
    resources = resources_per_trial(spec, cuda=_cluster_has_gpus())
    if search.searcher is None and wants_probe(spec, ray.cluster_resources()):
        # GPU shares (or CPU memory) per bundle from the fitted memory model; `batch_size: auto` resolved
        plan, resources, failed = size_plan(spec, search.plan, writer.local_dir, log=_log(quiet))
        results._land([{"trial": row, "curves": []} for row in failed])
        search.plan = results.plan = plan
        search.param_space = {"bundle": tune.grid_search(run_order(plan))}
    check_fit(resources, search.plan, quiet=quiet)
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, plan=search.plan), resources)
    callbacks = [results]
    if not quiet:
        callbacks.append(ProgressCallback(results, search.n_total, where))
    from raysweep.storage import tune_storage

    tune_dir = tune_storage(writer.location)  # <sweep>/_tune/<launch>/: as reachable as the sweep itself
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
                storage_path=tune_dir.path,
                storage_filesystem=tune_dir.filesystem,
                callbacks=callbacks,
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=2),
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
                stop=StopOnSignal(lambda: STOP.signum is not None),
            ),
        )
        STOP.on_stop = results.stop  # trials torn down by the stop land no row: they run again on relaunch
        STOP.tuning = True
        try:
            tuner.fit()
        finally:
            STOP.tuning = False
    finally:
        if search.searcher is not None:
            search.searcher.close()
        tune_dir.remove()
    c = results.counts
    extra = search.summary()
    return (f"{sum(c.values())} configurations landed ({c['completed']} completed, {c['diverged']} diverged, "
            f"{c['failed']} failed, {c['pruned']} pruned){'; ' + extra if extra else ''}; driver {where}")


def check_fit(resources, plan, *, quiet: bool = False) -> None:
    """Every trial's resources fit some node of the cluster, or no trial could ever start: an embedded Ray (whose
    nodes are fixed) refuses, with both numbers; an attached cluster only warns, since its autoscaler may add a
    node that fits."""
    import ray

    from raysweep.errors import InfeasibleError
    from raysweep.plan import unfit_resources

    requests = [resources({"bundle": bid}) for bid in plan.bundles] if callable(resources) else [resources]
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problem = unfit_resources(requests, nodes)
    if problem is None:
        return
    if _EMBEDDED:
        raise InfeasibleError(f"{problem}; no trial could start on this embedded Ray: lower it, or give the embedded "
                              "Ray more (--num-cpus / --num-gpus)")
    if not quiet:
        print(f"warning: {problem}; trials wait until the cluster's autoscaler adds a node that fits (Ctrl-C stops)",
              file=sys.stderr)


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
