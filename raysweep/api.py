"""raysweep's Python API: run a sweep and read what it landed, the same as ``python -m raysweep.launch`` does.

    import raysweep

    spec = raysweep.load_spec("search_spaces/quickstart.yaml")          # or a mapping
    summary = raysweep.run(spec, raysweep.RunOptions(storage="results", max_concurrent=2))
    trials = raysweep.read_trials(summary)                               # pandas, one row per configuration

:class:`RunOptions` holds every launch option (each checked when it is made: :class:`~raysweep.errors.OptionError`,
one line naming the option, before anything runs); :func:`run` returns a :class:`Summary`. Errors are raysweep's
exceptions: :class:`~raysweep.errors.SpecError` (the spec, a data file; nothing was written and Ray never started),
:class:`~raysweep.errors.RaysweepError` (storage, cluster, a corrupt results file), ``OSError`` (the storage).
The launcher maps them to its exit codes.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from raysweep import driver, manifest, space
from raysweep.driver import check_address
from raysweep.errors import Interrupted, OptionError, RaysweepError, SpecError
from raysweep.plan import build_plan, describe
from raysweep.search import describe_search, planned_spec
from raysweep.search.remaining import nothing_to_run
from raysweep.space import AUTO, check_name, parse_spec
from raysweep.status import SweepStatus

__all__ = ["RunOptions", "Summary", "SweepStatus", "load_spec", "read_curves", "read_trials", "run", "sweep_status"]


@dataclass(frozen=True)
class RunOptions:
    """How to run a sweep: every option of ``python -m raysweep.launch`` (flag ``--max-concurrent`` is field
    ``max_concurrent``). Checked when made: :class:`~raysweep.errors.OptionError` names the option.

    - ``storage``: results root, a local path or a URI (``file://``, ``s3://BUCKET/PREFIX``, ``gs://...``); the sweep
      lands in ``<storage>/<name>/``.
    - ``name``: the sweep's name (default: the spec's).
    - ``address``: the Ray cluster to attach to, ``HOST:PORT`` or ``auto``; None: ``RAY_ADDRESS`` if set, else an
      embedded local Ray (started for the run and stopped after it; a Ray this process already initialised is
      used and left running).
    - ``shared_storage``: a local ``storage`` path is a mount every node of the cluster sees (NFS, Lustre).
    - ``dry_run``: count the trials, bundles and resources; start nothing, write nothing.
    - ``max_concurrent``: cap on trials running at once (overrides ``search.max_concurrent``).
    - ``num_cpus`` / ``num_gpus``: CPUs / GPUs of the embedded local Ray (default: all / detected).
    - ``retry_failed``: run again the failed configurations whose cause lay outside them (a lost worker, out of
      memory, a data error); each keeps exactly one row.
    - ``quarantine``: move unreadable or foreign files of ``trials/`` and ``curves/`` to ``<sweep>/quarantine/``
      and go on (their configurations run again).
    - ``quiet``: no progress line (and no autobatch messages) on stderr.
    """

    storage: str | os.PathLike = "results"
    name: str | None = None
    address: str | None = None
    shared_storage: bool = False
    dry_run: bool = False
    max_concurrent: int | None = None
    num_cpus: int | None = None
    num_gpus: float | None = None
    retry_failed: bool = False
    quarantine: bool = False
    quiet: bool = False

    def __post_init__(self):
        if isinstance(self.storage, os.PathLike):
            object.__setattr__(self, "storage", os.fspath(self.storage))
        for flag in ("shared_storage", "dry_run", "retry_failed", "quarantine", "quiet"):
            if not isinstance(getattr(self, flag), bool):
                raise OptionError(f"--{flag.replace('_', '-')}: must be True or False, got {getattr(self, flag)!r}")
        if self.num_cpus is not None and (not _is_int(self.num_cpus) or self.num_cpus < 1):
            raise OptionError(f"--num-cpus: must be a positive integer (CPUs of the embedded Ray), got {self.num_cpus}")
        if self.num_gpus is not None and not (_is_number(self.num_gpus) and math.isfinite(self.num_gpus)
                                              and self.num_gpus >= 0):
            raise OptionError(f"--num-gpus: must be a finite number >= 0, got {self.num_gpus}")
        if self.max_concurrent is not None and (not _is_int(self.max_concurrent) or self.max_concurrent < 1):
            raise OptionError(f"--max-concurrent: must be a positive integer, got {self.max_concurrent}")
        if not isinstance(self.storage, str) or not self.storage.strip() or "\0" in self.storage:
            raise OptionError(f"--storage: must be a local path or a URI, got {self.storage!r}")
        if self.name is not None:
            try:
                check_name(self.name, "--name")
            except SpecError as exc:
                raise OptionError(str(exc)) from None
        if self.address is not None and not isinstance(self.address, str):
            raise OptionError(f"--address: must be HOST:PORT or auto, got {self.address!r}")
        if self.address:
            check_address(self.address)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Summary:
    """What one :func:`run` did.

    - ``name``, ``sweep``: the sweep's name and folder (a path, or a URI on an object store).
    - ``text``: what the launcher prints when it ends (the ``--dry-run`` plan, ``sweep NAME: ...``, or the
      ``interrupted (SIGINT): ...`` line).
    - ``configurations``: in the space (None for an Optuna search, whose studies decide at run time);
      ``rows_before``: configurations that had a row before this run.
    - ``completed``, ``diverged``, ``failed``, ``pruned``: rows this run landed, by status (``landed``: their sum).
    - ``interrupted``: ``"SIGINT"`` or ``"SIGTERM"`` when a signal stopped the sweep (finished trials are landed;
      running ones get no row and run again on relaunch), else None. ``exit_code``: the launcher's (0, 130, 143).
    - ``dry_run``: the run only planned; ``where``: where the driver ran (None when Ray was not started).
    """

    name: str
    sweep: str
    text: str
    dry_run: bool = False
    configurations: int | None = None
    rows_before: int | None = None
    completed: int = 0
    diverged: int = 0
    failed: int = 0
    pruned: int = 0
    interrupted: str | None = None
    where: str | None = None

    @property
    def landed(self) -> int:
        return self.completed + self.diverged + self.failed + self.pruned

    @property
    def exit_code(self) -> int:
        return 128 + int(signal.Signals[self.interrupted]) if self.interrupted else 0

    def __str__(self) -> str:
        return self.text


def load_spec(spec, *, source: str | None = None):
    """A validated :class:`~raysweep.space.SweepSpec` from a search-space file (path), a mapping with the YAML's
    keys, or a SweepSpec (returned as is). :class:`~raysweep.errors.SpecError` names the field and ``source``."""
    if isinstance(spec, space.SweepSpec):
        return spec
    if isinstance(spec, Mapping):
        return space.parse_spec(spec, source=source or "<mapping>")
    if isinstance(spec, (str, os.PathLike)):
        return space.load_spec(spec)
    raise SpecError(f"spec: must be a search-space file, a mapping or a SweepSpec, got {type(spec).__name__}")


def run(spec, options: RunOptions | None = None) -> Summary:
    """Run the sweep ``spec`` (a SweepSpec, a search-space file or a mapping: :func:`load_spec`) as
    ``python -m raysweep.launch`` does, exactly once per configuration, and say what landed.

    SIGINT / SIGTERM (in the main thread) stop the sweep gracefully: the finished trials are landed and the summary
    says ``interrupted``; a signal outside the Tuner's loop, or a second one, raises
    :class:`raysweep.errors.Interrupted`. If the Tuner has not stopped 10 s after the signal, what the driver holds
    is landed and the process exits (status 130 / 143). Progress goes to stderr unless ``options.quiet``.
    """
    options = options or RunOptions()
    if not isinstance(options, RunOptions):
        raise OptionError(f"options: must be a RunOptions, got {type(options).__name__}")
    spec = load_spec(spec)
    if options.name and options.name != spec.name:
        spec = _renamed(spec, options.name)
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # ours: Tune's would end the sweep as if complete
    stop = driver.install_stop_signals()
    try:
        return _run(spec, options, stop)
    finally:
        driver.stop_ray()
        stop.restore()


def _renamed(spec, name: str):
    d = spec.to_dict()
    d["name"] = name
    return parse_spec(d, source=spec.source)


def _run(spec, options: RunOptions, stop) -> Summary:
    from raysweep import storage  # pyarrow: only once a sweep is read (RunOptions stays light)
    from raysweep.results import read_trials as read_table  # pyarrow

    address = options.address if options.address is not None else os.environ.get("RAY_ADDRESS") or None
    if options.address is None and address:
        try:
            driver.check_address(address)
        except OptionError as exc:
            raise OptionError(f"{exc} (from RAY_ADDRESS)") from None
    root = storage.resolve(options.storage)
    sweep = root.join(spec.name)
    shared, retry = options.shared_storage, options.retry_failed
    base = {"name": spec.name, "sweep": str(sweep)}
    if retry and spec.search.guided:
        raise OptionError(f"--retry-failed: not for {spec.search.algorithm} searches, whose studies decide what runs "
                          "next from every outcome; start a new --name to run them again")
    if address and address.startswith("ray://") and not options.dry_run:
        # Under Ray Client, Tune runs its loop (and raysweep's callbacks: the Parquet writer) as an actor on the
        # cluster, where this process's writer and lock are not: refuse rather than lose rows.
        raise RaysweepError(
            f"--address {address}: Ray Client (ray://) is not supported, because Tune would run the sweep's "
            "results writer on the cluster instead of in this process. From a laptop, submit the launcher as a "
            "Ray job: ray job submit --address http://HEAD:8265 --working-dir . -- python -m raysweep.launch "
            "SPACE.yaml --storage s3://BUCKET/PREFIX; on a cluster node, attach with --address HEAD:6379"
        )
    storage.check_reachable(root)  # an object store with no network answers nothing for minutes
    storage.check_no_links(sweep)
    model_lines = driver.check_data(spec)  # a model factory's: its readout, and fusion or why it is off
    # A finished sweep relaunched: say so from its rows and journal, before Ray starts.
    if not (options.dry_run or retry or options.quarantine):
        driver.check_saved_spec(sweep, spec)
        finished = nothing_to_run(spec, sweep)
        if finished:
            n_rows = read_table(sweep).num_rows
            return Summary(**base, text=finished, rows_before=n_rows,
                           configurations=None if spec.search.algorithm == "optuna" else n_rows)
    if not options.dry_run and sweep.is_posix and not shared and (address or "ray" in sys.modules):
        # A local path serves one node: refuse a larger cluster before anything is written (and before torch loads).
        import ray

        ours = not ray.is_initialized()
        driver.start_ray(address, num_cpus=options.num_cpus, num_gpus=options.num_gpus)
        try:
            storage.check_cluster(root, sum(1 for n in ray.nodes() if n["Alive"]), shared_storage=False,
                                  address=address)
        except storage.StorageError:
            if ours:
                ray.shutdown()
            raise

    from raysweep.results import ResultsWriter, corrupt_files, retryable  # pyarrow

    if options.dry_run:
        skip = [part.name for part, _ in corrupt_files(sweep)] if options.quarantine else []
        rows = read_table(sweep, exclude=skip).select(["config_key", "status", "error"]).to_pylist()
        done = {r["config_key"] for r in rows if not (retry and retryable(r))}
        plan, n_done = build_plan(planned_spec(spec), done)  # guided searches and schedulers: one trial per config
        cuda = _may_use_gpus(spec) and driver.cuda_available()  # else torch stays unimported
        lines = [describe_search(spec, describe(planned_spec(spec), plan, n_done, cuda=cuda, storage=sweep.local_dir)),
                 *factory_sizes(spec, plan, cuda, sweep.local_dir), *model_lines, driver.describe_storage(sweep, shared)]
        lines += [f"--quarantine: would move {name} (trials and curves) to {sweep}/quarantine/" for name in skip]
        if retry:
            lines.append(f"--retry-failed: {sum(1 for r in rows if retryable(r))} failed configurations would run "
                         "again")
        n_todo = sum(len(b.points) for b in plan.bundles.values())
        return Summary(**base, text="\n".join(lines), dry_run=True, rows_before=n_done,
                       configurations=None if spec.search.algorithm == "optuna" else n_done + n_todo)
    sweep.mkdir()
    driver.check_saved_spec(sweep, spec)
    with ResultsWriter(sweep, spec.name, quarantine_files=options.quarantine, retry=retry) as writer:
        for name in writer.quarantined:
            print(f"quarantined {name} -> {sweep}/quarantine/{name}", file=sys.stderr)
        if writer.retried:
            print(f"--retry-failed: {len(writer.retried)} failed configurations run again", file=sys.stderr)
        driver.save_spec(sweep, spec)
        launch = manifest.Launch(sweep, spec, address=address, keys_before=writer.keys).begin()
        try:
            plan, n_done = build_plan(planned_spec(spec), writer.keys)  # under the lock: the keys are final
            n_todo = sum(len(b.points) for b in plan.bundles.values())
            optuna = spec.search.algorithm == "optuna"
            n_total = None if optuna else n_done + n_todo
            if not n_todo and not optuna:  # Optuna's studies, not the grid, say what is left
                _end_launch(launch)
                return Summary(**base, text=f"sweep {spec.name}: all {n_done} configurations already have a row; "
                                            "nothing to run", configurations=n_total, rows_before=n_done)
            total = "" if optuna else f" of {n_total}"

            def interrupted() -> str:
                n_rows = read_table(sweep).num_rows
                return (f"interrupted ({signal.Signals(stop.signum).name}): {n_rows}{total} configurations have a "
                        f"row, {n_rows - n_done} of them landed by this launch; relaunch the same command to continue")

            def force() -> None:  # the Tuner did not stop within the grace period: land what we hold and go
                writer.flush(timeout_s=5.0)
                _end_launch(launch, interrupted=signal.Signals(stop.signum).name)
                print(interrupted(), file=sys.stderr, flush=True)
                os._exit(stop.exit_code)

            stop.force = force
            outcome = driver.run_tuner(spec, plan, writer, address=address, max_concurrent=options.max_concurrent,
                                       num_cpus=options.num_cpus, num_gpus=options.num_gpus, quiet=options.quiet)
            writer.flush()  # the rows this launch landed, before the manifest counts them
            _end_launch(launch, where=outcome.where,
                        interrupted=signal.Signals(stop.signum).name if stop.signum is not None else None)
        except BaseException as exc:
            if launch.entry["end"] is None:
                _end_after(launch, writer, exc, stop)
            raise
    c = outcome.counts
    counts = {k: c[k] for k in ("completed", "diverged", "failed", "pruned")}
    common = dict(base, configurations=n_total, rows_before=n_done, where=outcome.where, **counts)
    if stop.signum is not None:
        return Summary(**common, text=interrupted(), interrupted=signal.Signals(stop.signum).name)
    line = (f"{sum(c.values())} configurations landed ({c['completed']} completed, {c['diverged']} diverged, "
            f"{c['failed']} failed, {c['pruned']} pruned){'; ' + outcome.note if outcome.note else ''}; "
            f"driver {outcome.where}")
    return Summary(**common, text=f"sweep {spec.name}: {line}; results in {sweep}")


def _end_launch(launch, where: str | None = None, **how) -> None:
    """Complete the launch's manifest entry; a failure to write it is a warning, never the launch's outcome."""
    try:
        launch.end(where=where or driver.placement(), devices=driver.cluster_devices(), **how)
    except Exception as exc:  # noqa: BLE001 - the manifest is a record: the rows and the exit code come first
        print(f"warning: {launch.sweep}/manifest.json: not updated ({type(exc).__name__}: {exc})", file=sys.stderr)


def _end_after(launch, writer, exc: BaseException, stop) -> None:
    """The manifest entry of a launch that ends with ``exc``: an interrupt outside the Tuner's loop (a second
    signal) is recorded as interrupted, anything else as the error it is."""
    try:
        writer.flush(timeout_s=5.0)
    except Exception:  # noqa: BLE001 - the writer's own error propagates when it closes
        pass
    if isinstance(exc, (Interrupted, KeyboardInterrupt)):
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        _end_launch(launch, interrupted=signal.Signals(signum).name)
    else:
        name = signal.Signals(stop.signum).name if stop.signum is not None else None
        _end_launch(launch, interrupted=name, error=exc)


def factory_sizes(spec, plan, cuda: bool, sweep_dir) -> list[str]:
    """``--dry-run`` of a model factory's sweep that autobatch sizes: its trials' sizes from the measurements this
    machine's CPU left in the sweep folder (:func:`raysweep.autobatch.factory.cached_plan_lines`); nothing for other
    sweeps, for a GPU (measured at launch) or an object store."""
    from raysweep.custom.spec import is_custom

    sized = spec.autobatch is not None or AUTO in spec.space.batch_size
    if not (sized and is_custom(spec.experiment.model)) or sweep_dir is None or cuda \
            or spec.experiment.device == "cuda":
        return []
    from raysweep.autobatch.factory import cached_plan_lines  # the sizing's machinery: only here

    return cached_plan_lines(planned_spec(spec), plan, sweep_dir)


def _may_use_gpus(spec) -> bool:
    """Whether the plan's resources depend on CUDA: a ``gpus_per_trial``, or autobatch sizing (a section or
    ``batch_size: auto``) for a device that may be CUDA (:func:`raysweep.plan.describe`)."""
    sized = spec.autobatch is not None or AUTO in spec.space.batch_size
    return bool(spec.resources.gpus_per_trial) or (sized and spec.experiment.device != "cpu")


def _sweep_of(sweep, name: str | None) -> str:
    if isinstance(sweep, Summary):
        return sweep.sweep
    if name is None:
        return sweep
    from raysweep import storage  # pyarrow

    return storage.resolve(sweep).join(name)


def read_trials(sweep, name: str | None = None):
    """The sweep's trials table as a pandas DataFrame, one row per configuration (columns: the README's schema).

    ``sweep``: a :class:`Summary`, a sweep folder (``results/quickstart``, or a URI), or a storage root with
    ``name``. :class:`~raysweep.errors.NotASweepError` for a storage root without ``name``;
    :class:`~raysweep.errors.CorruptFileError` for a file that is not a raysweep table. The derived columns of the
    analysis (``usable``, ``diverged``, ``final_loss``...) come from :func:`raysweep.analyze.load.prepare_trials`."""
    from raysweep import results  # pyarrow

    return results.read_trials(_sweep_of(sweep, name)).to_pandas()


def read_curves(sweep, name: str | None = None):
    """The sweep's curves table as a pandas DataFrame, one row per (configuration, report); arguments and errors
    as :func:`read_trials`."""
    from raysweep import results  # pyarrow

    return results.read_curves(_sweep_of(sweep, name)).to_pandas()


def sweep_status(results="results", name: str | None = None) -> list[SweepStatus]:
    """Where each sweep at ``results`` stands, as ``python -m raysweep.status`` prints it: one
    :class:`~raysweep.status.SweepStatus` per sweep (planned, landed by status, missing, in progress, the best
    trial, the last launch; ``.text()`` is the printed block). ``results``: a :class:`Summary`, a sweep folder or a
    storage root (a path or a URI); ``name`` keeps the sweep of that name. Reads only, from the sweep folder alone
    (its saved ``spec.yaml`` and ``manifest.json``). :class:`~raysweep.errors.NoResultsError`, saying where it
    looked, when there is no sweep there."""
    from raysweep import status  # pyarrow, when a sweep is read

    return status.read_status(results.sweep if isinstance(results, Summary) else results, name)
