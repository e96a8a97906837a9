"""The sweep driver: Ray (embedded or attached), SIGINT / SIGTERM, and one Ray Tune Tuner per launch.

:func:`raysweep.api.run` calls it; nothing here parses a command line or prints a summary. Tune's per-trial
JSON/CSV/TensorBoard files are off and its experiment folder (``<sweep>/_tune/``) is removed at the end: the Parquet
tables under ``<storage>/<name>/`` are the record. Ray is imported inside the functions that start or use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from typing import NamedTuple

from raysweep.autobatch.device import torch_build
from raysweep.autobatch.launching import size_plan, wants_probe
from raysweep.custom.spec import is_custom
from raysweep.errors import DataError, InfeasibleError, Interrupted, OptionError, RaysweepError, SpecError
from raysweep.fields import parse_yaml
from raysweep.plan import resources_per_trial, run_order, unfit_resources
from raysweep.search import build_search
from raysweep.space import parse_spec
from raysweep.trial import tune_trainable

# Ray is imported inside the functions that start or use it: --dry-run and option checks run without Ray

ADDRESS_TIMEOUT_S = 5.0  # how long a TCP connection to --address may take before the launch stops
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})$")


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
    from raysweep import storage  # pyarrow: the launcher imports this module

    saved = storage.resolve(sweep_dir).join(storage.SPEC_FILE)
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
    from raysweep import storage  # pyarrow: the launcher imports this module

    storage.write_bytes_atomic(storage.resolve(sweep_dir).join(storage.SPEC_FILE), spec.to_yaml().encode())


class StopSignals:
    """SIGINT and SIGTERM stop a sweep gracefully.

    While the Tuner runs (``tuning``), the first signal only records itself: Tune's loop sees it (through a
    ``ray.tune.Stopper``), stops every trial, and the trials that finished are landed; a second signal stops at
    once. Outside the loop a signal raises :class:`Interrupted`. If the Tuner has not returned ``grace_s`` after the
    first signal (Ray's processes were killed, and Tune waits for them), ``force()`` lands what the driver holds and exits. Installed by
    :func:`install_stop_signals` (and again after Ray starts: ``ray.init`` sets its own SIGTERM handler), restored
    when the run returns.
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


def install_stop_signals(grace_s: float = 10.0) -> StopSignals:
    """A fresh :data:`STOP` for one run, installed (in the main thread); the caller restores it."""
    global STOP
    STOP = StopSignals(grace_s)
    STOP.install()
    return STOP


def check_data(spec) -> list[str]:
    """The experiment's local data files, checked on the driver before Ray starts (a SpecError naming
    ``experiment.path``); families without files import nothing. A model or data factory (raysweep.custom) is
    imported, built and run once (a FactoryError, a SpecError, naming the field); returns its ``--dry-run`` lines."""
    if "path" in spec.experiment.params:
        from raysweep.data import check_source  # torch: the data modules build tensors

        try:
            check_source(spec.experiment.as_dict())
        except DataError as exc:
            key = "max_train_samples" if "max_train_samples" in str(exc) else "path"
            raise SpecError(f"experiment.{key}: {exc} ({spec.source})") from None
    if is_custom(spec.experiment.model) or spec.experiment.family == "custom":
        from raysweep.custom.check import check_spec  # torch and the user's code

        return check_spec(spec)
    return []


def describe_storage(sweep, shared: bool) -> str:
    """The ``--dry-run`` line: where the results go and what that storage guarantees."""
    if sweep.is_posix:
        scope = ("a mount every node sees (--shared-storage)" if shared else
                 "a local path: a cluster of more than one node needs --shared-storage or an object-store URI")
        return f"storage: {sweep} ({scope}; atomic renames; one driver per sweep, held by {sweep}/.lock)"
    return (f"storage: {sweep} (object store: each file is one atomic PUT; no lock, so run one driver per sweep at "
            f"a time; Optuna journal and autobatch cache in the local folder {sweep.local_dir})")


_WHERE: str | None = None  # where start_ray connected this process, for the progress and summary lines
_EMBEDDED = False  # start_ray started an embedded local Ray, which stop_ray stops
_DEVICES: dict | None = None  # what the Ray that start_ray connected to holds, for the manifest


def start_ray(address: str | None, *, num_cpus: int | None, num_gpus: float | None) -> str:
    """Attach to ``address`` or start an embedded local Ray; say where the driver runs.

    "embedded local Ray on host H"; "attached to ADDR from host H (the head node | a worker node)": the driver
    attaches through the Ray node of its own machine; "on the head node as a Ray job (SUBMISSION_ID)" when
    ``ray job submit`` started this process (the job supervisor sets RAY_ADDRESS, so that path attaches too).
    A later call in the same process returns the first one's answer ("in-process Ray" when something else
    initialised Ray).
    """
    global _WHERE, _EMBEDDED, _DEVICES
    import ray

    if ray.is_initialized():
        if _WHERE is None:  # a Ray someone else started: it may differ from the last one seen
            _DEVICES = _cluster_devices()
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
        # A SIGTERM to the whole process group (a batch scheduler stopping the job) must reach the driver alone:
        # the raylet's death makes Ray's core worker end the driver at once (exit 1), before it lands what it
        # holds. Ray's processes inherit the driver's signal mask, so they start with SIGTERM blocked (Ray blocks
        # SIGINT in them for the same reason: Ctrl-C reaches the whole group); stop_ray stops them.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                     _system_config={"prestart_worker_first_driver": False}, **common)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        STOP.install()  # ray.init replaced the SIGTERM handler
        _WHERE, _EMBEDDED = f"embedded local Ray on host {socket.gethostname()}", True
    _DEVICES = _cluster_devices()
    return _WHERE


def placement() -> str | None:
    """Where :func:`start_ray` connected this process (the progress line's words), or None before."""
    return _WHERE


def cluster_devices() -> dict | None:
    """What the Ray cluster held when :func:`start_ray` connected (None before): alive ``nodes``, total ``CPU`` and
    ``GPU``, and the GPU models Ray names (``accelerators``, e.g. ``["H100"]``). Read then, never later: Ray's
    processes may be gone by the time a launch records how it ended."""
    return _DEVICES


def _cluster_devices() -> dict:
    import ray

    total = ray.cluster_resources()
    return {
        "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
        "CPU": total.get("CPU", 0.0),
        "GPU": total.get("GPU", 0.0),
        "accelerators": sorted(k.split(":", 1)[1] for k in total if k.startswith("accelerator_type:")),
    }


def stop_ray() -> None:
    """Stop the embedded local Ray that :func:`start_ray` started (a cluster attached to, or a Ray initialised by
    someone else, is left alone).

    Explicitly rather than at interpreter exit, which pauses 0.5 s first; and the embedded node's autoscaler
    monitor goes first: it answers SIGTERM by reporting to the GCS, which ``ray.shutdown`` has already stopped,
    so it would sit out Ray's 1 s grace period. A one-node local cluster has nothing to autoscale. The other
    processes start with SIGTERM blocked (:func:`start_ray`): once the driver has disconnected they are killed.
    """
    global _WHERE, _EMBEDDED, _DEVICES
    if not _EMBEDDED:
        return
    import ray

    # Ray's own Node methods, looked up rather than assumed: a private API that other Ray versions may lack
    node = getattr(ray._private.worker, "_global_node", None)
    kill_monitor = getattr(node, "kill_monitor", None)
    if kill_monitor is not None:
        kill_monitor(check_alive=False)
    kill_all = getattr(node, "kill_all_processes", None)
    if kill_all is not None:
        # the node's processes ignore SIGTERM (start_ray): after ray.shutdown has disconnected the driver, SIGKILL
        # them at once rather than after Ray's 1 s grace for each
        node.kill_all_processes = lambda **kw: kill_all(**{**kw, "allow_graceful": False})
    ray.shutdown()
    _WHERE, _EMBEDDED, _DEVICES = None, False, None


def _driver_placement(address: str) -> str:
    """Where an attached driver runs: on which node, and whether as a Ray job (see :func:`start_ray`)."""
    import ray

    me = ray.get_runtime_context().get_node_id()
    on_head = any(n["NodeID"] == me and "node:__internal_head__" in n.get("Resources", {}) for n in ray.nodes())
    # RAY_JOB_CONFIG_JSON_ENV_VAR: set by the Ray job supervisor for a `ray job submit` entrypoint
    return placement_text(address, socket.gethostname(), on_head, os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def placement_text(address: str, host: str, on_head: bool, job_config: str | None) -> str:
    node = "the head node" if on_head else "a worker node"
    if job_config:
        try:
            submission = json.loads(job_config).get("metadata", {}).get("job_submission_id")
        except ValueError:
            submission = None
        return f"on {node} as a Ray job" + (f" ({submission})" if submission else "")
    return f"attached to {address} from host {host} ({node})"


class TunerOutcome(NamedTuple):
    """What one Tuner run landed: rows by status, the search's note (e.g. skipped eta-scan configurations; may be
    empty), and where the driver ran (:func:`start_ray`)."""

    counts: dict[str, int]
    note: str
    where: str


def run_tuner(spec, plan, writer, *, address=None, max_concurrent=None, num_cpus=None, num_gpus=None,
              quiet=False) -> TunerOutcome:
    """Map the plan to one Tuner and run it; return what it landed.

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

    from raysweep import checkpoint  # pyarrow, like the writer
    from raysweep.callbacks import ProgressCallback, ResultsCallback, StopOnSignal  # Ray: tune.Callback

    # mid-trial checkpoints: those of landed bundles go; pending configurations a checkpoint covers resume from it
    checkpoint.retire_landed(writer.location, writer.keys)
    plan = dataclasses.replace(plan, location=writer.location)
    if plan.checkpoint is not None:
        plan = checkpoint.regroup(plan, checkpoint.index(writer.location))
    results = ResultsCallback(writer, plan)
    search = build_search(spec, plan, results)  # before Ray starts: a missing sampler package fails fast
    results.plan = search.plan
    where = start_ray(address, num_cpus=num_cpus, num_gpus=num_gpus)
    resources = resources_per_trial(spec, cuda=_cluster_has_gpus())
    if search.searcher is None and wants_probe(spec, ray.cluster_resources()):
        # GPU shares (or CPU memory) per bundle from the fitted memory model; `batch_size: auto` resolved
        plan, resources, failed = size_plan(spec, search.plan, writer.local_dir, log=_log(quiet))
        results.land([{"trial": row, "curves": []} for row in failed])
        search.plan = results.plan = plan
        search.param_space = {"bundle": tune.grid_search(run_order(plan))}
    check_fit(resources, search.plan, quiet=quiet)
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, plan=search.plan), resources)
    callbacks = [results]
    if not quiet:
        callbacks.append(ProgressCallback(results, search.n_total, where))
    from raysweep.storage import tune_storage  # pyarrow

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
    return TunerOutcome(dict(results.counts), search.summary(), where)


def check_fit(resources, plan, *, quiet: bool = False) -> None:
    """Every trial's resources fit some node of the cluster, or no trial could ever start: an embedded Ray (whose
    nodes are fixed) refuses, with both numbers; an attached cluster only warns, since its autoscaler may add a
    node that fits."""
    import ray

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

    return ray.cluster_resources().get("GPU", 0) > 0 and cuda_available()


def cuda_available() -> bool:
    """Whether torch can use CUDA on this machine. A torch build without CUDA (read from its version file) answers
    without importing torch, so that ``--dry-run`` stays light on a CPU machine."""
    build = torch_build()
    if build and not (build.get("cuda") or build.get("hip")):  # a CPU build (ROCm builds answer through torch.cuda)
        return False
    try:
        import torch  # heavy (about 1 s of CPU): only for a torch built with CUDA

        return torch.cuda.is_available()
    except Exception:
        return False
