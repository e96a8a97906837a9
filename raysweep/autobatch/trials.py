"""Where autobatch's measured trials run and how their peaks are read (:func:`raysweep.autobatch.find_batch_size`
for any module, :mod:`raysweep.autobatch.factory` for a model factory's bundles).

Where the peak comes from (the device, :class:`TrialDevice`):

- **CUDA** (:class:`CudaTrials`), in this process: before each trial ``gc.collect`` and ``empty_cache``, then
  ``reset_peak_memory_stats``; the peak is ``max_memory_reserved`` above what was reserved before (the caching
  allocator's segments, which is what leaves the device's free memory) plus any growth outside the allocator (cuDNN /
  cuBLAS handles, read from ``mem_get_info``). In-process is exact here because the allocator's peak resets and an
  OOM is recoverable. ``available`` is the device's free memory after ``empty_cache``: this process's CUDA context is
  already outside it, so ``context`` is 0.
- **CPU** (:class:`CpuRssTrials`, label ``cpu-rss``): one fresh process per trial, forked from a trial server
  (a plain subprocess that imported torch and nothing of the caller), because a process's resident set rarely
  shrinks and its peak (``VmHWM``) cannot always be reset: measured in one process, a trial would inherit the
  previous one's pages and high-water mark, and the search tries sizes out of order (largest first). The trial
  imports the user's callables *by reference* (so they must be importable: module-level functions, or
  ``"package.module:function"``; a lambda or closure is refused before anything runs; the caller's ``__main__`` is
  never run again), applies the shape probe's fixed glibc mmap threshold
  (:func:`raysweep.autobatch.guard.apply_malloc_policy`) so that freed tensors leave the resident set, and reports
  its peak RSS growth; ``context`` is its resident size before the model is built (Python, torch, the user's
  modules). Its data segment is capped (``RLIMIT_DATA``) a little above the budget, so that a size far too large
  fails fast with an allocation error (= does not fit) instead of pressing the machine. ``available`` is
  ``MemAvailable``.
- What a trial runs is a job (:class:`TrialJob`: ``to_dict`` / ``from_dict`` / ``check`` / ``run(batch_size,
  device)``, with a ``kind``): :class:`raysweep.autobatch.module.ModuleJob` for any module; a model factory's
  sweep measures its bundles' real training steps through the same devices with
  :class:`raysweep.autobatch.factory.SweepJob`.
- A fake (tests, what-if): any object with ``label``, ``describe()``, ``available_bytes()`` and
  ``run(batch_size, budget_bytes) -> {"status": "ok" | "oom", "peak_bytes", ...}``, e.g. :class:`SimulatedDevice`.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Protocol

from raysweep.autobatch.device import (
    CpuRssCounters, CudaCounters, DeviceInfo, cpu_device_info, read_meminfo, read_status,
)
from raysweep.autobatch.guard import apply_malloc_policy
from raysweep.autobatch.probe import measure
from raysweep.autobatch.references import resolve
from raysweep.errors import RaysweepError, UserModelError

TRIAL_TIMEOUT_S = 600.0
RLIMIT_SLACK_BYTES = 64 * 2**20  # the CPU child's data cap: budget + max(this, a quarter of its share)

__all__ = ["JOB_KINDS", "TRIAL_TIMEOUT_S", "CpuRssTrials", "CudaTrials", "SimulatedDevice", "TrialDevice", "TrialJob",
           "cpu_trial", "device_for", "job_from_dict", "trial_server"]


class TrialJob(Protocol):
    """What a trial runs, whatever it is: a :class:`raysweep.autobatch.module.ModuleJob`, or a sweep's bundle
    (:class:`raysweep.autobatch.factory.SweepJob`). It crosses into a CPU trial's fresh process as the plain data of
    ``to_dict`` (with its ``kind``, on which :func:`job_from_dict` dispatches)."""

    kind: str

    def to_dict(self) -> dict: ...
    def check(self, batch_size: int, device: str) -> None: ...  # UserModelError naming the culprit; OOM is fine
    def run(self, batch_size: int, device: str) -> None: ...  # the measured steps; raises on out-of-memory


JOB_KINDS = {"module": "raysweep.autobatch.module:ModuleJob", "sweep": "raysweep.autobatch.factory:SweepJob"}


def job_from_dict(d: dict) -> TrialJob:
    """The job of ``to_dict``'s data, by its ``kind`` (a dict without one is a module job's)."""
    kind = d.get("kind", "module")
    if kind not in JOB_KINDS:
        raise RaysweepError(f"unknown trial job kind {kind!r}; known: {', '.join(JOB_KINDS)}")
    return resolve(JOB_KINDS[kind], "job").from_dict(d)


class TrialDevice(Protocol):
    """Where trials run and how their peaks are read: :class:`CudaTrials`, :class:`CpuRssTrials`, a fake."""

    label: str  # cuda | cpu-rss | anything a fake calls itself

    def describe(self) -> DeviceInfo: ...
    def available_bytes(self) -> int: ...  # the budget is target_memory_fraction x this
    def run(self, batch_size: int, budget_bytes: int) -> dict: ...
    # -> {"status": "ok" | "oom", "peak_bytes": int | None, "context_bytes": int, "limit_bytes": int (the memory the
    #     trial could use; an OOM record is reused only under a budget at most this), "wall_time_s", "error"}


class SimulatedDevice:
    """A fake device: ``peak_of(batch_size)`` is the step's peak in bytes, or None for "ran out of memory"; records
    every size run in ``calls``."""

    label = "simulated"

    def __init__(self, peak_of: Callable[[int], int | None], available_bytes: int, *, context_bytes: int = 0,
                 name: str = "simulated"):
        self.peak_of, self.available, self.context, self.name = peak_of, int(available_bytes), int(context_bytes), name
        self.calls: list[int] = []

    def describe(self) -> DeviceInfo:
        return DeviceInfo(kind="cpu", name=self.name, total_bytes=self.available, torch_version="none")

    def available_bytes(self) -> int:
        return self.available

    def run(self, batch_size: int, budget_bytes: int) -> dict:
        self.calls.append(batch_size)
        peak = self.peak_of(batch_size)
        return {"status": "oom" if peak is None else "ok", "peak_bytes": None if peak is None else int(peak),
                "context_bytes": self.context, "limit_bytes": self.available, "wall_time_s": 0.0,
                "error": "simulated out of memory" if peak is None else None}


class CudaTrials:
    """Trials in this process on one CUDA device (see the module docstring). ``counters`` and ``device`` replace
    the real CUDA counters and device in tests (a fake's ``release()`` stands for ``empty_cache``)."""

    label = "cuda"

    def __init__(self, job: TrialJob, index: int | None = None, *, counters=None, device: str | None = None):
        self.job = job
        self.counters = counters if counters is not None else CudaCounters(index)
        self.device = device or f"cuda:{self.counters.index}"

    def _release(self) -> None:
        gc.collect()
        if isinstance(self.counters, CudaCounters):
            self.counters.torch.cuda.synchronize(self.counters.index)
            self.counters.torch.cuda.empty_cache()
        else:
            self.counters.release()

    def describe(self) -> DeviceInfo:
        return self.counters.describe()

    def available_bytes(self) -> int:
        self._release()
        return self.counters.free_bytes()

    def check(self, batch_size: int) -> None:
        self.job.check(batch_size, self.device)
        self._release()

    def run(self, batch_size: int, budget_bytes: int) -> dict:
        self._release()
        free_before, reserved_before = self.counters.free_bytes(), self.counters.current_bytes()
        m = measure(self.counters, lambda: self.job.run(batch_size, self.device))
        outside = (free_before - self.counters.free_bytes()) - (self.counters.current_bytes() - reserved_before)
        self._release()
        return {"status": m["status"], "error": m["error"], "wall_time_s": m["wall_time_s"],
                "peak_bytes": max(0, m["peak_bytes"] - reserved_before) + max(0, outside),
                "context_bytes": 0, "limit_bytes": int(free_before)}


class CpuRssTrials:
    """One fresh process per trial, peak RSS growth (see the module docstring). The processes fork from one
    trial server (a plain ``python -c`` subprocess with torch imported, started on the first trial), never from
    this process: the user's ``__main__`` is not run again, and no thread or memory of this process is inherited."""

    label = "cpu-rss"

    def __init__(self, job: TrialJob, *, threads: int = 1, timeout_s: float = TRIAL_TIMEOUT_S):
        self.use(job)
        self.threads, self.timeout_s = int(threads), float(timeout_s)
        self.proc = self.stderr = None

    def use(self, job: TrialJob) -> None:
        """Run ``job`` from now on (the trial server stays: one server for every job of a search)."""
        self.job, self.job_dict = job, job.to_dict()  # refused here when not importable by reference

    def describe(self) -> DeviceInfo:
        return cpu_device_info()

    def available_bytes(self) -> int:
        return int(read_meminfo()["MemAvailable"])

    def check(self, batch_size: int) -> None:
        self.job.check(batch_size, "cpu")  # in this process: its RSS does not matter, the children measure

    def _start(self) -> None:
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty trial cannot block on it
        self.proc = subprocess.Popen([sys.executable, "-c", "from raysweep.autobatch.trials import trial_server; "
                                      "trial_server()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, start_new_session=True)
        self.proc.stdin.write(json.dumps({"sys_path": sys.path}) + "\n")

    def run(self, batch_size: int, budget_bytes: int) -> dict:
        if self.proc is None:
            self._start()
        self.proc.stdin.write(json.dumps({"job": self.job_dict, "batch_size": batch_size,
                                          "budget_bytes": int(budget_bytes), "threads": self.threads}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
        if not ready:
            self.close()
            raise RaysweepError(f"the trial at batch size {batch_size} took more than {self.timeout_s:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            self.stderr.seek(0)
            text = self.stderr.read()[-3000:]
            self.close()
            raise RaysweepError(f"the CPU trial server exited:\n{text}")
        m = json.loads(line)
        if m["status"] == "killed":  # died without a word: the kernel's OOM killer (SIGKILL), or a crash
            if m["exitcode"] not in (-9, 137):
                raise RaysweepError(f"the trial process at batch size {batch_size} exited with code {m['exitcode']}")
            return {"status": "oom", "peak_bytes": None, "context_bytes": None, "limit_bytes": int(budget_bytes),
                    "wall_time_s": None, "error": "trial process killed (out of memory)"}
        if m["status"] == "error":
            if m.get("user_error"):
                raise UserModelError(*m["user_error"])
            raise RaysweepError(f"the trial at batch size {batch_size} failed:\n{m['error']}")
        return m

    def close(self) -> None:
        """Stop the trial server (and a trial still running: they share a session of their own)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for fh in (self.proc.stdin, self.proc.stdout, self.stderr):
            try:
                fh.close()
            except OSError:
                pass
        self.proc = None


def trial_server() -> None:
    """The CPU trial server (stdin: one JSON line of ``sys.path``, then one per trial; stdout: one JSON line per
    trial). Every trial runs in a child forked from here, measured by :func:`cpu_trial`."""
    importlib.import_module("torch")  # heavy: imported once here, so that every forked trial starts with it

    answers, sys.stdout = sys.stdout, sys.stderr  # only answers go to stdout
    sys.path[:] = json.loads(sys.stdin.readline())["sys_path"]
    for line in sys.stdin:
        msg = json.loads(line)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the trial
            os.close(r)
            try:
                m = cpu_trial(msg["job"], msg["batch_size"], msg["budget_bytes"], msg["threads"])
                with os.fdopen(w, "w") as fh:
                    fh.write(json.dumps(m))
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as fh:
            text = fh.read()
        _, status = os.waitpid(pid, 0)
        m = json.loads(text) if text else {"status": "killed", "exitcode": os.waitstatus_to_exitcode(status)}
        answers.write(json.dumps(m) + "\n")
        answers.flush()


def cpu_trial(job: dict, batch_size: int, budget_bytes: int, threads: int) -> dict:
    """One CPU trial in a fresh process: import the job (the context), cap the data segment, run and measure.
    ``job`` is a job's ``to_dict`` (:func:`job_from_dict`)."""
    import resource

    import torch  # the trial runs real steps

    try:
        torch.set_num_threads(max(1, threads))
        apply_malloc_policy()
        spec = job_from_dict(job)
        counters = CpuRssCounters()
        base = counters.current_bytes()
        share = max(0, budget_bytes - base)
        slack = max(RLIMIT_SLACK_BYTES, share // 4)
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = read_status()["VmData"] + share + slack
        resource.setrlimit(resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
        m = measure(counters, lambda: spec.run(batch_size, "cpu"))
        resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
        return {"status": m["status"], "error": m["error"], "peak_bytes": m["peak_bytes"], "context_bytes": int(base),
                "limit_bytes": int(base + share + slack), "wall_time_s": m["wall_time_s"]}
    except UserModelError as exc:
        return {"status": "error", "error": str(exc), "user_error": [exc.argument, exc.text]}
    except Exception:  # noqa: BLE001 - reported to the parent, which raises
        return {"status": "error", "error": traceback.format_exc(limit=6)}


def device_for(job: TrialJob, device: str, *, threads: int = 1, timeout_s: float = TRIAL_TIMEOUT_S):
    """The real trial device of ``device``: ``auto`` (CUDA when this process sees one, else CPU), ``cpu``,
    ``cuda`` or ``cuda:N``."""
    import torch  # heavy: only a real search needs it

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return CpuRssTrials(job, threads=threads, timeout_s=timeout_s)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserModelError("device", f"{device!r} asked for, but this process sees no CUDA device")
        index = torch.device(device).index
        return CudaTrials(job, index)
    raise UserModelError("device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")
