"""Autobatch for a model factory's sweep (``experiment.model: {factory: ...}``): every trial sized by MEASURING the
real training step of its K members (:func:`raysweep.custom.probe.run_steps`), never by a fitted memory model.

    plan, sized = size_factory_plan(spec, plan, trials, storage=SWEEP_DIR)   # the launcher: launching.size_plan

- **What is measured.** A :class:`SweepJob` (the experiment as a plain dict, the bundle's first point, K, the mode,
  the steps) builds the task in the trial process (:func:`raysweep.data.build_task`, then
  :func:`raysweep.custom.train.as_task`) and runs ``steps_per_trial`` real steps of the trainer's step of K members
  at batch B (``train``), and, since the trainer evaluates the whole eval set in one no-grad forward
  (:func:`raysweep.custom.train.train_bundle`), that forward at the eval set size (``val``, when ``autobatch.modes``
  holds it). One measurement per distinct shape: bundles that share :func:`raysweep.points.bundle_key` and K measure
  once. ``need = max over modes of (context + peak * (1 + margin))`` (module.py's rule, margin
  :data:`raysweep.autobatch.memory.MIN_MARGIN`); it fits when ``need <= usable = target_memory_fraction *
  available``.
- **batch_size: auto** takes the largest pow2 (``batch_grid``) size in ``[min_batch_size, min(max_batch_size,
  training-set size)]`` that fits, by :func:`raysweep.autobatch.search.largest_fitting` (the largest, the smallest,
  then a bisection). A swept batch size is never changed.
- **Splitting.** A bundle of K members that does not fit (at its batch size; for ``auto``, at ``min_batch_size``) is
  split into consecutive chunks of the largest ``ceil(K / 2^j)`` measured to fit, with new ids
  (:func:`raysweep.plan.bundle_id`); a shorter last chunk is sized on its own. A single member that does not fit is
  infeasible: the whole bundle is listed (``infeasible: refuse``: NothingFitsError before anything starts; ``fail``:
  failed rows), with the measurements as evidence.
- **Resources**, as the MLP path: ``{"cpu": cpus_per_trial, "memory": need}`` on a CPU, ``{"gpu": gpu_share(need,
  usable), "cpu": cpus_per_trial}`` on a GPU.
- **Where.** On a CPU (:class:`CpuSweepTrials`, label ``cpu-rss``): :class:`raysweep.autobatch.trials.CpuRssTrials`'
  fresh forked processes on the driver's host (peak RSS growth; the context is the trial process's resident size
  with the trainer's modules imported). On a cluster with real GPUs (:class:`RaySweepTrials`, label ``cuda``): a Ray
  actor with one GPU measures in-process with :class:`raysweep.autobatch.trials.CudaTrials`; the context is a fresh
  process's CUDA context (measured once from the global free memory) and ``available`` adds back the actor's own.
- **Cache**: the measurements in ``<sweep>/autobatch_modules.json`` (:class:`raysweep.autobatch.module
  .MeasurementCache`), keyed by the model factory (import path and kwargs), the data settings, the bundle shape, K,
  the mode, dtype, steps, threads and the device: a relaunch re-decides every size against its own budget and
  measures nothing it has.

The measurements run in the trial processes (or the GPU actor); the driver only reads the data's sizes
(:func:`raysweep.families.n_train`, :func:`raysweep.families.n_eval`) and decides.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from raysweep import families
from raysweep.autobatch.config import AutobatchConfig
from raysweep.autobatch.device import DeviceInfo, context_from_free_delta, cpu_device_info, read_meminfo
from raysweep.autobatch.guard import is_oom
from raysweep.autobatch.memory import MIN_MARGIN
from raysweep.autobatch.module import MeasurementCache, SizeTrial, decide_trial, format_trial
from raysweep.autobatch.search import largest_fitting
from raysweep.autobatch.sizing import gpu_share
from raysweep.autobatch.trials import CpuRssTrials
from raysweep.errors import NoCachedModelError, NothingFitsError, RaysweepError, UserModelError
from raysweep.plan import Bundle, bundle_id
from raysweep.points import BUNDLE_KEYS, bundle_key, update_path
from raysweep.space import AUTO, setting

MIB = 2**20
CACHE_VERSION = 1  # of the measurement keys below: bump when what a SweepJob runs changes
# experiment keys that change no trial's memory (how long it trains, how often it reports, where it runs: the device
# is in the key on its own)
NOT_MEMORY = ("steps", "epochs", "report_every", "divergence_factor", "device")


# --- the job a trial process runs ------------------------------------------------------------------------------------


@dataclass
class SweepJob:
    """Real steps of the trainer's step of ``n_members`` members of ``point`` (the bundle's shape) on the spec's data:
    a :class:`raysweep.autobatch.trials.TrialJob` of kind ``sweep``."""

    experiment: dict  # the flat experiment mapping (Experiment.as_dict()), JSON-able
    point: dict
    n_members: int
    mode: str  # train | val
    steps: int

    kind = "sweep"  # a class attribute: not a field

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> SweepJob:
        """The job, with the trainer's modules and the factories' imported (in a CPU trial: its context)."""
        job = cls(dict(d["experiment"]), dict(d["point"]), int(d["n_members"]), d["mode"], int(d["steps"]))
        job.prepare()
        return job

    def prepare(self) -> None:
        """Import what a sweep's trial process holds before it trains: the trial and trainer modules, the model
        factory's module (and the data factory's)."""
        for name in ("raysweep.data", "raysweep.custom.train", "raysweep.custom.probe", "raysweep.trial"):
            importlib.import_module(name)
        refs = [self.experiment["model"]["factory"], self.experiment.get("factory")]
        for ref in refs:
            if isinstance(ref, str) and ":" in ref:
                importlib.import_module(ref.partition(":")[0])

    def _task(self, device: str):
        import torch  # the data's dtype

        from raysweep.custom.train import as_task  # torch
        from raysweep.data import build_task  # torch

        dtype = getattr(torch, setting(self.experiment, "dtype"))
        return as_task(build_task(self.experiment, device=device, dtype=dtype))

    def run(self, batch_size: int, device: str = "cpu") -> None:
        """Build the task on ``device`` (its tensors count: a trial holds them) and run the steps."""
        from raysweep.custom.probe import run_steps  # torch and the user's code

        run_steps(self.experiment, self._task(device), self.point, n_members=self.n_members, batch_size=batch_size,
                  mode=self.mode, steps=self.steps, device=device)

    def check(self, batch_size: int, device: str = "cpu") -> None:
        """One eval forward of one member at ``min(batch_size, 2)``: UserModelError when the factory or the data
        cannot run (running out of memory is not an error here)."""
        from raysweep.custom.probe import run_steps  # torch and the user's code

        try:
            run_steps(self.experiment, self._task(device), self.point, n_members=1, batch_size=min(batch_size, 2),
                      mode="val", steps=1, device=device)
        except Exception as exc:  # noqa: BLE001 - only OOM is not the user's error
            if not is_oom(exc):
                raise UserModelError("experiment.model", f"{type(exc).__name__}: {exc}") from exc


# --- where the jobs run ---------------------------------------------------------------------------------------------


class SweepTrials(Protocol):
    """Where a sweep's jobs are measured: :class:`CpuSweepTrials`, :class:`RaySweepTrials`, a fake
    (:class:`SimulatedSweepTrials`). ``run`` returns module.py's record (``status``, ``peak_bytes``,
    ``context_bytes``, ``limit_bytes``, ``wall_time_s``, ``error``)."""

    label: str

    def describe(self) -> DeviceInfo: ...
    def available_bytes(self) -> int: ...
    def run(self, job: SweepJob, batch_size: int, budget_bytes: int) -> dict: ...
    def close(self) -> None: ...


class CpuSweepTrials:
    """One fresh forked process per measurement, from one trial server (:class:`CpuRssTrials`)."""

    label = "cpu-rss"

    def __init__(self, *, threads: int = 1):
        self.threads, self.trials = int(threads), None

    def describe(self) -> DeviceInfo:
        return cpu_device_info()

    def available_bytes(self) -> int:
        return int(read_meminfo()["MemAvailable"])

    def run(self, job: SweepJob, batch_size: int, budget_bytes: int) -> dict:
        if self.trials is None:
            self.trials = CpuRssTrials(job, threads=self.threads)
        else:
            self.trials.use(job)
        return self.trials.run(batch_size, budget_bytes)

    def close(self) -> None:
        if self.trials is not None:
            self.trials.close()


class CachedSweepTrials(CpuSweepTrials):
    """This host's CPU as a launch would measure it, reading the measurement cache only: a measurement not there
    raises NoCachedModelError (``--dry-run`` measures nothing)."""

    def run(self, job: SweepJob, batch_size: int, budget_bytes: int) -> dict:
        raise NoCachedModelError(f"{job.mode} of {job.n_members} member(s) at batch size {batch_size} is not measured")


def cached_plan_lines(spec, plan, storage, *, limit: int = 20) -> list[str]:
    """``--dry-run`` of a model factory's sweep: every trial's resources and batch size from the measurements of
    this machine's CPU in ``storage`` (the sweep folder's cache), nothing measured; or one line saying they are not
    all there yet."""
    from raysweep.plan import sized_lines

    config = spec.autobatch or AutobatchConfig()
    trials = CachedSweepTrials(threads=max(1, int(spec.resources.cpus_per_trial)))
    try:
        sized_plan, sized = size_factory_plan(spec, plan, trials, storage=os.fspath(storage), log=lambda _m: None)
    except NoCachedModelError:
        return [f"autobatch: not every bundle shape is measured on this machine's CPU yet ({storage}): the launch "
                "measures them (python -m raysweep.autobatch SPACE.yaml does it now)"]
    return [f"autobatch plan from the cached measurements of {sized['device']['name']}: {len(sized['resources'])} "
            f"trials sized, {len(sized['infeasible'])} infeasible; usable {sized['usable_bytes'] / MIB:.0f} MiB",
            *sized_lines(sized_plan.bundles, sized, config, limit=limit)]


class CudaSweepHost:
    """Runs in a Ray actor with one GPU: measures jobs in-process (:class:`CudaTrials`). A trial process's CUDA
    context is measured once, from the global free memory while a fresh process holds only its context."""

    def __init__(self):
        from raysweep.autobatch.device import CudaCounters  # initialises CUDA: in the actor only

        self.counters = CudaCounters()
        self.context = _fresh_cuda_context(self.counters)

    def describe(self) -> dict:
        return self.counters.describe().to_dict()

    def available_bytes(self) -> int:
        import torch  # the allocator's cache

        torch.cuda.empty_cache()
        return self.counters.free_bytes() + self.context  # this actor's own context goes when it ends

    def run(self, job: dict, batch_size: int, budget_bytes: int) -> dict:
        from raysweep.autobatch.trials import CudaTrials  # torch: CUDA

        rec = CudaTrials(SweepJob.from_dict(job), self.counters.index, counters=self.counters).run(
            batch_size, budget_bytes)
        return {**rec, "context_bytes": self.context}


def _fresh_cuda_context(counters) -> int:
    """Bytes a fresh process holds on the GPU with CUDA initialised and one tiny tensor (its context): the global
    free memory before it starts and while it holds them (a plain subprocess: no multiprocessing main module)."""
    import subprocess
    import sys

    free_before = counters.free_bytes()
    code = "from raysweep.autobatch.factory import _context_child; _context_child()"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(counters.index)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        if not line.strip():
            raise RaysweepError(f"the CUDA context probe exited with code {proc.wait(60)}")
        return context_from_free_delta(free_before, counters.free_bytes(), int(line))
    finally:
        proc.stdin.close()  # the child lets its context go
        proc.wait(60)
        proc.stdout.close()


def _context_child() -> None:
    """The subprocess of :func:`_fresh_cuda_context`: a CUDA context held until stdin closes."""
    import sys

    import torch  # a CUDA context

    index = int(sys.argv[1])
    torch.zeros(1, device=f"cuda:{index}")
    torch.cuda.synchronize(index)
    print(int(torch.cuda.memory_reserved(index)), flush=True)
    sys.stdin.read()


class RaySweepTrials:
    """A :class:`CudaSweepHost` actor (``num_gpus=1``) on the connected Ray cluster, started on the first call."""

    label = "cuda"

    def __init__(self):
        self.actor, self._info = None, None

    def _call(self, method: str, *args):
        import ray  # the actor

        if self.actor is None:
            self.actor = ray.remote(num_cpus=1, num_gpus=1)(CudaSweepHost).remote()
        return ray.get(getattr(self.actor, method).remote(*args))

    def describe(self) -> DeviceInfo:
        if self._info is None:
            self._info = DeviceInfo.from_dict(self._call("describe"))
        return self._info

    def available_bytes(self) -> int:
        return int(self._call("available_bytes"))

    def run(self, job: SweepJob, batch_size: int, budget_bytes: int) -> dict:
        return self._call("run", job.to_dict(), batch_size, budget_bytes)

    def close(self) -> None:
        if self.actor is not None:
            import ray  # the actor

            ray.kill(self.actor)
            self.actor = None


class SimulatedSweepTrials:
    """A fake: ``peak_of(job, batch_size)`` is the peak in bytes, or None for "ran out of memory"; ``calls`` lists
    every ``(mode, n_members, batch_size)`` measured, in order."""

    label = "simulated"

    def __init__(self, peak_of: Callable[[SweepJob, int], int | None], available_bytes: int, *,
                 context_bytes: int = 0, name: str = "simulated"):
        self.peak_of, self.available, self.context, self.name = peak_of, int(available_bytes), int(context_bytes), name
        self.calls: list[tuple[str, int, int]] = []

    def describe(self) -> DeviceInfo:
        return DeviceInfo(kind="cpu", name=self.name, total_bytes=self.available, torch_version="none")

    def available_bytes(self) -> int:
        return self.available

    def run(self, job: SweepJob, batch_size: int, budget_bytes: int) -> dict:
        self.calls.append((job.mode, job.n_members, batch_size))
        peak = self.peak_of(job, batch_size)
        return {"status": "oom" if peak is None else "ok", "peak_bytes": None if peak is None else int(peak),
                "context_bytes": self.context, "limit_bytes": self.available, "wall_time_s": 0.0,
                "error": "simulated out of memory" if peak is None else None}

    def close(self) -> None:
        pass


def trials_for(spec, *, cuda: bool) -> SweepTrials:
    """The real measuring device: a GPU actor when the cluster has real GPUs (``cuda``) and the spec does not ask
    for the CPU, else fresh processes on this host."""
    if cuda and spec.experiment.device != "cpu":
        return RaySweepTrials()
    return CpuSweepTrials(threads=max(1, int(spec.resources.cpus_per_trial)))


# --- the sizing -----------------------------------------------------------------------------------------------------


def measurement_key(experiment: Mapping[str, Any], point: Mapping[str, Any], *, n_members: int, mode: str,
                    steps: int, threads: int, device: DeviceInfo, label: str) -> dict:
    """The cache key of one shape's measurements (the batch size keys its records)."""
    return {
        "factory": dict(experiment["model"]),
        "data": {k: v for k, v in sorted(experiment.items()) if k not in NOT_MEMORY and k != "model"},
        "shape": {**{k: point[k] for k in BUNDLE_KEYS if k != "batch_size"}, "update_path": update_path(point)},
        "n_members": int(n_members), "mode": mode, "dtype": setting(experiment, "dtype"), "steps": int(steps),
        "threads": int(threads), "label": label, "device_kind": device.kind, "device_name": device.name,
        "device_total_bytes": int(device.total_bytes), "torch_version": device.torch_version,
        "cuda_version": device.cuda_version, "version": CACHE_VERSION,
    }


class _Sizer:
    """Measurements (memoised, cached) and the decisions on them, for one launch."""

    def __init__(self, spec, trials: SweepTrials, config: AutobatchConfig, storage, log):
        self.spec, self.trials, self.config, self.log = spec, trials, config, log
        self.experiment = spec.experiment.as_dict()
        self.info = trials.describe()
        self.available = int(trials.available_bytes())
        self.usable = int(config.target_memory_fraction * self.available)
        self.margin = MIN_MARGIN
        self.threads = max(1, int(spec.resources.cpus_per_trial))
        self.n_eval = families.n_eval(self.experiment)
        train = config.for_mode("train")
        cap = train.max_batch_size if families.is_online(self.experiment) else families.n_train(self.experiment)
        self.lo, self.hi = train.min_batch_size, min(train.max_batch_size, cap)  # fixed data: a batch fits the set
        self.cache = MeasurementCache(storage) if storage is not None else None
        self.known: dict[str, tuple[dict, dict[int, dict]]] = {}  # key hash -> (key, {batch: record})
        self.fresh: set[tuple[str, int]] = set()  # (key hash, batch) measured by this launch
        self.measured = self.reused = 0

    def trial(self, point, k: int, mode: str, batch: int) -> SizeTrial:
        """The decision on the measurement of ``k`` members of ``point``'s shape at ``batch`` in ``mode``."""
        from raysweep.autobatch.cache import key_hash  # the cache's hash of a key

        steps = self.config.steps_per_trial if mode == "train" else self.config.steps_per_trial_val
        key = measurement_key(self.experiment, point, n_members=k, mode=mode, steps=steps, threads=self.threads,
                              device=self.info, label=self.trials.label)
        h = key_hash(key)
        if h not in self.known:
            self.known[h] = (key, self.cache.lookup(key) if self.cache is not None else {})
        records = self.known[h][1]
        rec = records.get(batch)
        if (h, batch) in self.fresh:  # measured by this launch already
            return decide_trial(batch, rec, self.usable, self.margin, False)
        cached = rec is not None and (rec["status"] == "ok" or self.usable <= rec.get("limit_bytes", 0))
        if cached:
            self.reused += 1
        else:
            job = SweepJob(self.experiment, dict(point), k, mode, steps)
            rec = {k_: v for k_, v in self.trials.run(job, batch, self.usable).items() if k_ != "user_error"}
            records[batch] = rec
            self.fresh.add((h, batch))
            self.measured += 1
        t = decide_trial(batch, rec, self.usable, self.margin, cached)
        if not cached:
            self.log(f"autobatch: {mode} n_members={k} {format_trial(t, self.usable).strip()}")
        return t

    def need(self, point, k: int, batch: int) -> tuple[bool, dict]:
        """Whether ``k`` members at ``batch`` fit, and the parts: the eval forward (when measured) first, since a
        bundle whose eval set does not fit fits at no batch size."""
        parts: dict[str, Any] = {"trials": []}
        modes = ("val", "train") if "val" in self.config.modes else ("train",)
        for mode in modes:
            t = self.trial(point, k, mode, self.n_eval if mode == "val" else batch)
            parts["trials"].append({"mode": mode, "n_members": k, **asdict(t)})
            if not t.fits:
                return False, parts
            parts[f"{mode}_bytes"] = t.need_bytes
            parts["context_bytes"] = max(parts.get("context_bytes", 0), t.context_bytes or 0)
        parts["need_bytes"] = max(parts[f"{m}_bytes"] for m in modes)
        return True, parts

    def size(self, points: list) -> list[tuple[list, int, dict]] | dict:
        """Chunks of ``points`` that fit, each ``(points, batch_size, need parts)``; or, when a single member does
        not fit, the infeasible entry."""
        p, k = points[0], len(points)
        auto = p["batch_size"] == AUTO
        evidence: list[dict] = []
        for n in _halvings(k):
            if auto and n == k:
                try:
                    batch = self.search(p, n, evidence)
                except NothingFitsError:
                    continue
            elif auto:
                ok, parts = self.need(p, n, self.lo)
                evidence += parts["trials"]
                if not ok:
                    continue
                batch = self.search(p, n, evidence)
            else:
                batch = int(p["batch_size"])
                ok, parts = self.need(p, n, batch)
                evidence += parts["trials"]
                if not ok:
                    continue
            _, parts = self.need(p, n, batch)  # memoised: measured already
            out = [(points[i:i + n], batch, parts) for i in range(0, k - k % n, n)]
            if k % n:
                rest = self.size(points[k - k % n:])
                if isinstance(rest, dict):  # cannot happen with a memory monotone in K; said, never hidden
                    return rest
                out += rest
            return out
        return self.infeasible(p, k, auto, evidence)

    def search(self, p, n: int, evidence: list) -> int:
        def fits(b: int) -> bool:
            ok, parts = self.need(p, n, b)
            evidence.extend(parts["trials"])
            return ok

        what = f"train batch size for {n} member(s) of {_shape(p)} on {self.info.name}"
        return largest_fitting(fits, self.lo, self.hi, self.config.batch_grid, what=what).batch_size

    def infeasible(self, p, k: int, auto: bool, evidence: list) -> dict:
        fraction = self.config.target_memory_fraction
        alone = [t for t in evidence if t["n_members"] == 1]
        needs = [t["need_bytes"] for t in alone if t["need_bytes"] is not None]
        what = ("no batch size in [{}, {}] fits".format(self.lo, self.hi) if auto
                else f"batch_size {p['batch_size']} does not fit")
        need_text = f"needs {max(needs) / MIB:.0f} MiB (measured, with margin)" if needs else "ran out of memory"
        reason = (f"{what}: one member {need_text} but {fraction:g} of {self.info.name}'s free memory is "
                  f"{self.usable / MIB:.0f} MiB, even alone")
        return {"width": p["width"], "depth": p["depth"], "optimizer": p["optimizer"], "n_members": k,
                "batch_size": AUTO if auto else int(p["batch_size"]), "need_bytes": max(needs) if needs else None,
                "usable_bytes": self.usable, "reason": reason, "trials": evidence}

    def store(self) -> None:
        if self.cache is None:
            return
        for h in sorted({h for h, _ in self.fresh}):
            key, records = self.known[h]
            self.cache.store(key, records)


def _halvings(k: int) -> list[int]:
    """``k, ceil(k / 2), ceil(k / 4), ..., 1`` without repeats."""
    out = [k]
    while out[-1] > 1:
        out.append(math.ceil(out[-1] / 2))
    return out


def _shape(p: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={p[k]}" for k in BUNDLE_KEYS if k != "batch_size")


def size_factory_plan(spec, plan, trials: SweepTrials, *, storage=None,
                      log: Callable[[str], None] = print) -> tuple[Any, dict]:
    """Measure and size every bundle of ``plan`` (see the module docstring). Returns the plan with the split bundles
    (infeasible ones kept whole, under their ids) and a sizing dict shaped like
    :func:`raysweep.autobatch.sizing.plan_resources`'s (``label``, ``device``, ``usable_bytes``, ``resources``,
    ``need``, ``batch_size``, ``infeasible``) plus ``measured`` and ``reused`` (measurements taken / read)."""
    config = spec.autobatch or AutobatchConfig()
    sizer = _Sizer(spec, trials, config, storage, log)
    cpus = spec.resources.cpus_per_trial
    sized = {"label": trials.label, "device": sizer.info.to_dict(), "usable_bytes": sizer.usable,
             "target_memory_fraction": config.target_memory_fraction, "resources": {}, "need": {},
             "batch_size": {}, "infeasible": []}
    bundles: dict[str, Bundle] = {}
    n_split = 0
    try:
        for bid, bundle in plan.bundles.items():
            if len({bundle_key(q) for q in bundle.points}) != 1:
                raise RaysweepError(f"bundle {bid}: its points do not share raysweep.points.bundle_key")
            chunks = sizer.size(list(bundle.points))
            if isinstance(chunks, dict):
                sized["infeasible"].append({"id": bid, **chunks})
                bundles[bid] = bundle
                continue
            if len(chunks) > 1:
                n_split += 1
            start = 0
            for points, batch, parts in chunks:
                keys = bundle.keys[start:start + len(points)]
                start += len(points)
                ident = bid if len(chunks) == 1 else bundle_id(keys)
                bundles[ident] = Bundle(ident, keys, tuple(points))
                need = parts["need_bytes"]
                sized["need"][ident] = {k: v for k, v in parts.items() if k != "trials"}
                sized["batch_size"][ident] = batch
                sized["resources"][ident] = ({"gpu": gpu_share(need, sizer.usable), "cpu": cpus}
                                             if sizer.info.kind == "cuda" else {"cpu": cpus, "memory": need})
    finally:
        sizer.store()
    sized["measured"], sized["reused"] = sizer.measured, sizer.reused
    where = f" ({sizer.cache.path})" if sizer.cache is not None else ""
    if sizer.measured:
        log(f"autobatch: measured {sizer.measured} size(s) of the factory's real steps on {sizer.info.name}, "
            f"{sizer.reused} read from the cache{where}")
    else:
        log(f"autobatch: every measurement read from the cache{where}; nothing measured")
    if n_split:
        log(f"autobatch: {n_split} bundle(s) split to fit {sizer.usable / MIB:.0f} MiB "
            f"({len(plan.bundles)} -> {len(bundles)} trials)")
    return replace(plan, bundles=bundles), sized


def measure_and_size(spec, plan, storage, *, cuda: bool, log: Callable[[str], None] = print) -> tuple[Any, dict]:
    """:func:`size_factory_plan` on the real device (:func:`trials_for`), closed afterwards."""
    trials = trials_for(spec, cuda=cuda)
    try:
        return size_factory_plan(spec, plan, trials, storage=os.fspath(storage) if storage is not None else None,
                                 log=log)
    finally:
        trials.close()
