"""The probe: real steps of a model built from shapes alone, measured at a few (width, depth, batch) points.

It never receives user objects: a :class:`ProbeRequest` holds numbers and names only, and every point builds its
own stacked MLP (``raysweep.model``) with its own data. A train step is the trial's step, run by the trainer's own
code (:func:`raysweep.step.bundle_step`, see :mod:`raysweep.autobatch.steps`): the centred target from the initial
weights, the hand-written forward and backward, the SGD update fused into it or Adam's with its two moments, at
least ``steps_per_trial`` times so that optimizer state exists. An eval step is the trainer's report pass (the
chunked no-grad forward of the current and the initial weights) with the training state alive.

Every point runs in a fresh process (a forkserver child that never touched CUDA): peaks of one point cannot mask
another's, and the child's CUDA context is measured from *global* free memory (the parent reads
``mem_get_info`` before the child starts and while it waits with its memory held). CPU mode measures the child's
peak RSS growth (``VmHWM`` minus ``VmRSS`` at start) under a fixed malloc mmap threshold
(:func:`raysweep.autobatch.guard.apply_malloc_policy`, which CPU trials should apply too) and calls it ``cpu-rss``.

Design (per optimizer and mode): three widths and three batch sizes spread over the space's ranges (the batch range
reaching up to :func:`floor_batch`, where activations dominate, and in eval mode to the eval set and the trainer's
one-shot f0 pass) at the smallest depth (the four corners and the centre fit the model, the four edge midpoints are
held out); the four corners (fit) and the centre (held out) at the largest depth; one held-out point at the largest
bundle size K (the largest batch split over K members). A point whose lower bound (exact static bytes plus one
activation per layer) exceeds the budget is skipped; a point at least as large as one that ran out of memory is
skipped. Both are recorded.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from raysweep.autobatch.device import Counters, DeviceInfo, context_from_free_delta, counters_for
from raysweep.autobatch.guard import apply_malloc_policy, is_oom
from raysweep.autobatch.memory import ITEMSIZE, MemoryModel, fit_mode, static_bytes, widths_of
from raysweep.errors import NothingFitsError, RaysweepError

# torch loads in the probe's child processes only (the driver fits and sizes without it)

PROBE_VERSION = 2  # bump when the step or the design changes: cached models then miss
POINT_TIMEOUT_S = 600.0
# The largest probe batch holds at least this many activation bytes at the largest shape, so that the per-sample
# slope is measured well above allocator noise (tens of MiB) and batch_size: auto extrapolates from real data.
ACTIVATION_FLOOR_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ProbeRequest:
    """Everything a probe needs, as plain numbers and names (it crosses process boundaries as a dict)."""

    dim: int
    n_out: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    batch_sizes: dict[str, tuple[int, ...]]  # per mode: the batch sizes whose range the design spans
    optimizers: tuple[str, ...] = ("SGD",)
    modes: tuple[str, ...] = ("train", "val")
    dtype: str = "float32"
    loss: str = "mse"
    n_members: int = 1  # the largest bundle size of the space
    steps: dict[str, int] = field(default_factory=lambda: {"train": 3, "val": 2})
    target_memory_fraction: float = 0.8  # points whose lower bound exceeds this share of free memory are skipped
    cpus_per_trial: int = 1
    device: str = "auto"  # auto | cpu | cuda

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ProbeRequest:
        d = dict(d)
        for k in ("widths", "depths", "optimizers", "modes"):
            d[k] = tuple(d[k])
        d["batch_sizes"] = {m: tuple(v) for m, v in d["batch_sizes"].items()}
        return cls(**d)


def floor_batch(dim: int, n_out: int, width: int, depth: int, dtype: str, mode: str,
                floor_bytes: int = ACTIVATION_FLOOR_BYTES) -> int:
    """The smallest power of two B whose activations (one per layer in train mode, the widest layer in eval mode)
    hold at least ``floor_bytes``."""
    widths = widths_of(dim, width, depth, n_out)
    per_sample = (sum(widths) if mode == "train" else max(widths)) * ITEMSIZE[dtype]
    return 1 << max(0, math.ceil(math.log2(max(1.0, floor_bytes / per_sample))))


def spread(values) -> list[int]:
    """Up to three probe values: the ends of ``values`` and the one nearest their geometric middle; with two
    values their rounded geometric mean in between; with one value ``v // 4, v // 2, v``."""
    vals = sorted({int(v) for v in values})
    if len(vals) == 1:
        v = vals[0]
        vals = [max(1, v // 4), max(1, v // 2), v]
    elif len(vals) == 2:
        vals = [vals[0], round(math.sqrt(vals[0] * vals[1])), vals[1]]
    else:
        mid = math.sqrt(vals[0] * vals[-1])
        vals = [vals[0], min(vals[1:-1], key=lambda v: abs(math.log(v / mid))), vals[-1]]
    return sorted(set(vals))


def design(request: ProbeRequest, optimizer: str, mode: str) -> list[dict]:
    """The probe points of one (optimizer, mode), each with its ``role``: ``fit`` or ``heldout``."""
    ws, bs = spread(request.widths), spread(request.batch_sizes[mode])
    depths = sorted(set(request.depths))
    end = lambda i, n: i in (0, n - 1)  # noqa: E731
    pts = []

    def add(width, depth, batch, role, k=1):
        pts.append({"width": width, "depth": depth, "batch_size": batch, "n_members": k, "optimizer": optimizer,
                    "mode": mode, "role": role})

    for i, w in enumerate(ws):
        for j, b in enumerate(bs):
            centre = len(ws) == len(bs) == 3 and i == j == 1
            add(w, depths[0], b, "fit" if (end(i, len(ws)) and end(j, len(bs))) or centre else "heldout")
    if len(depths) > 1:  # the corners fit (they separate hidden from readout bytes), the centre is held out
        for w in sorted({ws[0], ws[-1]}):
            for b in sorted({bs[0], bs[-1]}):
                add(w, depths[-1], b, "fit")
        add(ws[len(ws) // 2], depths[-1], bs[len(bs) // 2], "heldout")
    if request.n_members > 1:  # the largest point's samples spread over K members: checks the scaling in K
        add(ws[0], depths[0], max(1, bs[-1] // request.n_members), "heldout", request.n_members)
    return pts


def lower_bound_bytes(request: ProbeRequest, p: dict) -> int:
    """Bytes the point needs at the very least: exact static state plus one activation per layer."""
    widths = widths_of(request.dim, p["width"], p["depth"], request.n_out)
    per_sample = sum(widths) if p["mode"] == "train" else max(widths)
    return (static_bytes(request.dim, p["width"], p["depth"], request.n_out, optimizer=p["optimizer"],
                         dtype=request.dtype, n_members=p["n_members"])
            + p["n_members"] * p["batch_size"] * per_sample * ITEMSIZE[request.dtype])


def _dominates(a: dict, b: dict) -> bool:
    return all(a[k] <= b[k] for k in ("width", "depth", "batch_size", "n_members"))


def run_probe(request: ProbeRequest, executor, counters: Counters, *,
              log: Callable[[dict], None] | None = None) -> dict:
    """Measure every design point through ``executor`` (``run(request, point) -> measurement``); return the
    records, the device, the global free memory and the context (median over the measured points)."""
    started = time.perf_counter()
    info = counters.describe()
    free = counters.free_bytes()
    budget = request.target_memory_fraction * free
    records: list[dict] = []
    for optimizer in request.optimizers:
        for mode in request.modes:
            pts = sorted(design(request, optimizer, mode), key=lambda p: lower_bound_bytes(request, p))
            done: list[dict] = []
            for p in pts:
                bound = lower_bound_bytes(request, p)
                if bound > budget:
                    rec = {**p, "status": "skipped", "error": f"lower bound {bound} B > budget {int(budget)} B"}
                elif any(r["status"] == "oom" and _dominates(r, p) for r in done):
                    rec = {**p, "status": "skipped", "error": "at least as large as a point that ran out of memory"}
                else:
                    rec = {**p, **executor.run(request, p)}
                if rec["status"] == "error":
                    raise RaysweepError(f"probe point {p} failed: {rec.get('error')}")
                done.append(rec)
                records.append(rec)
                if log:
                    log(rec)
    contexts = [r["context_bytes"] for r in records if r["status"] == "ok"]
    context = int(statistics.median(contexts)) if contexts else 0
    return {
        "device": info.to_dict(),
        "free_bytes": int(free),
        # the probe process's own context is released when it ends
        "available_bytes": int(free + (context if info.kind == "cuda" else 0)),
        "context_bytes": context,
        "records": records,
        "wall_time_s": time.perf_counter() - started,
    }


def fit_model(request: ProbeRequest, result: dict, *, key: dict | None = None) -> MemoryModel:
    """The :class:`MemoryModel` of a probe result. Raises NothingFitsError (with every record and the budget)
    when an (optimizer, mode) has no measured fit point."""
    fits = {}
    for optimizer in request.optimizers:
        for mode in request.modes:
            recs = [r for r in result["records"] if r["optimizer"] == optimizer and r["mode"] == mode]
            try:
                fits[f"{optimizer}/{mode}"] = fit_mode(recs, dim=request.dim, n_out=request.n_out,
                                                       dtype=request.dtype, optimizer=optimizer, mode=mode)
            except RaysweepError as exc:
                raise NothingFitsError(
                    f"{exc}: even the smallest probe points do not fit on {result['device']['name']}",
                    {"records": recs, "budget_bytes": int(request.target_memory_fraction * result["free_bytes"]),
                     "free_bytes": result["free_bytes"], "sizes_tried": [r["batch_size"] for r in recs],
                     "bytes_measured": [r.get("peak_bytes") for r in recs]},
                ) from None
    measured = [r for r in result["records"] if r["status"] == "ok"]
    covered = {k: [min(r[k] for r in measured), max(r[k] for r in measured)]
               for k in ("width", "depth", "batch_size", "n_members")}
    return MemoryModel(
        dim=request.dim, n_out=request.n_out, dtype=request.dtype, loss=request.loss,
        device=DeviceInfo.from_dict(result["device"]), context_bytes=result["context_bytes"],
        available_bytes=result["available_bytes"], fits=fits, covered=covered, probe_log=result["records"],
        probe_wall_time_s=result["wall_time_s"], key=dict(key or {}),
    )


# --- the measurement, shared by the real child process and in-process (fake) executors ----------------------------


def measure(counters: Counters, steps: Callable[[], None]) -> dict:
    """Run ``steps`` between a peak reset and a peak read; an out-of-memory error is a result, not a failure."""
    counters.reset_peak()
    started = time.perf_counter()
    status, error = "ok", None
    try:
        steps()
    except Exception as exc:  # noqa: BLE001 - only OOM is swallowed
        if not is_oom(exc):
            raise
        status, error = "oom", f"{type(exc).__name__}: {str(exc)[:300]}"
    peak, allocated = counters.peak_bytes()
    return {"status": status, "error": error, "peak_bytes": int(peak), "peak_allocated_bytes": int(allocated),
            "reserved_now": int(counters.current_bytes()), "wall_time_s": time.perf_counter() - started}


class InProcessExecutor:
    """Runs ``runner(request, point)`` in this process against ``counters``; the context comes from the global
    free-memory delta, as for a child. Used with fake counters in tests; ``counters.release()`` (when present)
    stands for the process ending."""

    def __init__(self, counters: Counters, runner: Callable[[ProbeRequest, dict], None]):
        self.counters, self.runner = counters, runner

    def run(self, request: ProbeRequest, point: dict) -> dict:
        free_before = self.counters.free_bytes()
        m = measure(self.counters, lambda: self.runner(request, point))
        m["context_bytes"] = context_from_free_delta(free_before, self.counters.free_bytes(), m["reserved_now"])
        if hasattr(self.counters, "release"):
            self.counters.release()
        return m


class ProcessExecutor:
    """One fresh forkserver child per point (see the module docstring); ``counters`` are the parent's."""

    def __init__(self, counters: Counters, *, timeout_s: float = POINT_TIMEOUT_S):
        self.counters, self.timeout_s = counters, timeout_s
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(["torch", "raysweep.model", "raysweep.autobatch.steps"])

    def run(self, request: ProbeRequest, point: dict) -> dict:
        free_before = self.counters.free_bytes()
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_child_main, args=(child, request.to_dict(), point, self.counters.kind))
        proc.start()
        child.close()
        try:
            if not parent.poll(self.timeout_s):
                proc.kill()
                raise RaysweepError(f"probe point {point} took more than {self.timeout_s:.0f} s")
            m = parent.recv()
        except EOFError:  # the child died without a word: the kernel's OOM killer, or a crash
            proc.join()
            killed = proc.exitcode in (-9, 137)
            return {"status": "oom" if killed else "error", "peak_bytes": None, "context_bytes": 0,
                    "error": f"probe process exited with code {proc.exitcode}"
                             + (" (killed: out of memory)" if killed else "")}
        free_during = self.counters.free_bytes()
        if self.counters.kind == "cuda":
            m["context_bytes"] = context_from_free_delta(free_before, free_during, m["reserved_now"])
        else:
            m["context_bytes"] = m.pop("base_bytes")
        parent.send("done")
        proc.join(60)
        self._wait_released(free_before)
        return m

    def _wait_released(self, free_before: int, timeout_s: float = 5.0) -> None:
        """A dead child's device memory comes back asynchronously; the next point's delta needs it back."""
        if self.counters.kind != "cuda":
            return
        deadline = time.monotonic() + timeout_s
        while self.counters.free_bytes() < 0.99 * free_before and time.monotonic() < deadline:
            time.sleep(0.05)


def _child_main(conn, request: dict, point: dict, kind: str) -> None:
    from raysweep.autobatch.steps import run_steps  # torch: the child process runs real training steps

    try:
        import torch

        req = ProbeRequest.from_dict(request)
        torch.set_num_threads(max(1, int(req.cpus_per_trial)))  # as raysweep.trial does
        if kind == "cpu":
            apply_malloc_policy()
        counters = counters_for(kind)
        base = counters.current_bytes()
        m = measure(counters, lambda: run_steps(req, point, device=kind))
        m["base_bytes"] = base
    except Exception:  # noqa: BLE001 - reported to the parent, which raises
        m = {"status": "error", "error": traceback.format_exc(limit=5), "peak_bytes": None, "base_bytes": 0,
             "reserved_now": 0}
    conn.send(m)
    try:
        conn.recv()  # hold this process's memory until the parent has read the global free memory
    except EOFError:
        pass
