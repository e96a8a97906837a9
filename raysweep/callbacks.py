"""Driver-side Ray Tune callbacks: land terminal rows in Parquet, and show a progress line.

Trials send each member's trials row and curve rows in the report where the member becomes terminal
(see :mod:`raysweep.trial`); :class:`ResultsCallback` hands them to the :class:`~raysweep.results.ResultsWriter`,
which refuses a second row for a key. A Ray trial that dies without reporting (its worker or node was lost, after
Tune's retries) lands its unfinished members as ``failed`` with the reason.

A one-configuration trial that a scheduler stops never sends a terminal row: the callback keeps the provisional row
and curve rows of its reports (on the driver, only while it runs) and lands them with status ``pruned`` when Tune
completes the trial. :meth:`ResultsCallback.settle` does that on demand, so that a searcher can land (and flush) a
trial's row before it tells Optuna the outcome: a finished Optuna trial always has its Parquet row.

Checkpoints (:mod:`raysweep.checkpoint`): once every row of a bundle is flushed, the callback removes the bundle's
checkpoints; a trial's ``checkpoint_warning`` (a checkpoint that did not read back) is printed on stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence

from ray.tune import Callback
from ray.tune.stopper import Stopper

from raysweep.results import ResultsWriter
from raysweep.plan import Plan
from raysweep.trial import bundle_of, failed_row


class _DriverOnly(Callback):
    """Tune pickles its callbacks into its (temporary) experiment state; ours live on the driver only."""

    def __getstate__(self):
        return {}


class StopOnSignal(Stopper):
    """Stops the whole experiment once ``should_stop()`` is true (the launcher's SIGINT / SIGTERM handling)."""

    def __init__(self, should_stop):
        self._should_stop = should_stop

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        should_stop = getattr(self, "_should_stop", None)  # absent in a copy Tune unpickled: never stops
        return bool(should_stop and should_stop())

    def __getstate__(self):  # Tune pickles its stopper into the (temporary) experiment state; ours is driver-only
        return {}


class ResultsCallback(_DriverOnly):
    """Lands terminal rows (see the module docstring). After :meth:`stop` (the sweep is being interrupted) it lands
    only rows that trials reported as finished: a trial torn down by the stop is not an outcome (not ``pruned``,
    not ``failed``); it gets no row and runs again on relaunch."""

    def __init__(self, writer: ResultsWriter, plan: Plan):
        self.writer, self.plan = writer, plan
        self.stopping = False
        self.counts = {"completed": 0, "diverged": 0, "failed": 0, "pruned": 0}
        self.n_duplicates = 0
        self._open: dict[str, dict] = {}  # Tune trial id -> provisional row and curves of a running one-config trial
        self.landed: dict[str, dict] = {}  # Tune trial id -> the row its (one) configuration landed with
        self._retire: set[str] = set()  # bundles whose rows all landed: their checkpoints go once the rows are flushed

    def land(self, items, trial_id: str | None = None) -> None:
        """Write each terminal ``{"trial": row, "curves": [...]}`` once (a repeated row is a no-op) and count it."""
        for item in items or ():
            if self.writer.add(item["trial"], item["curves"]):
                self.counts[item["trial"]["status"]] += 1
            else:
                self.n_duplicates += 1
            if trial_id is not None:
                self.landed[trial_id] = item["trial"]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("checkpoint_warning"):
            print(f"warning: {result['checkpoint_warning']}", file=sys.stderr)
        provisional = result.get("provisional")
        if provisional:
            held = self._open.setdefault(trial.trial_id, {"curves": []})
            if held["curves"] and provisional["curve"]["step"] <= held["curves"][-1]["step"]:
                held["curves"] = []  # Tune restarted the trial after a lost worker: its curve starts again
            held["trial"] = provisional["trial"]
            held["curves"].append(provisional["curve"])
        if result.get("terminal"):
            self._open.pop(trial.trial_id, None)
            self.land(result["terminal"], trial.trial_id)
        self.writer.maybe_flush()

    def settle(self, trial_id: str, config: dict, *, error: bool = False, reason: str = "",
               flush: bool = True) -> dict | None:
        """Land what a finished Tune trial still owes and flush (``flush=False``: when due); return the row of its
        configuration (the last one for a bundle), or None when it never ran.

        A trial stopped while running (a scheduler's decision) lands its provisional row as ``pruned``; a trial
        that errored outside training (``error``: a lost worker, after Tune's retries) lands its unfinished
        members as ``failed`` with ``reason``. Idempotent: the writer refuses a second row for a key.
        """
        held = self._open.pop(trial_id, None)
        if self.stopping:  # torn down by the stop: no outcome to land
            self.writer.flush()
            return self.landed.get(trial_id)
        if error:
            bundle = bundle_of(self.plan, config)
            error_text = f"trial lost: {reason or 'the worker died'}"
            for i, key in enumerate(bundle.keys):
                if key in self.writer.keys:
                    continue
                provisional, curves = (held["trial"], held["curves"]) if held is not None else (None, [])
                self.land([{"trial": failed_row(self.plan, bundle, i, error_text, provisional), "curves": curves}],
                           trial_id)
        elif held is not None:
            self.land([{"trial": held["trial"], "curves": held["curves"]}], trial_id)
        bundle = bundle_of(self.plan, config)
        if all(k in self.writer.keys for k in bundle.keys):
            self._retire.add(bundle.bundle_id)
        if flush:
            self.writer.flush()
        else:
            self.writer.maybe_flush()
        self.retire_checkpoints()
        return self.landed.get(trial_id)

    def retire_checkpoints(self) -> None:
        """Remove the checkpoints of bundles whose rows are all flushed (raysweep.checkpoint): never before, so
        that a driver lost in between resumes them rather than training them again from step 0."""
        location = getattr(self.plan, "location", None)
        if not self._retire or self.writer.buffered or location is None:
            return
        from raysweep import checkpoint  # pyarrow

        for bundle_id in sorted(self._retire):
            checkpoint.remove(location, bundle_id)
        self._retire.clear()

    def stop(self) -> None:
        """The sweep is being interrupted: from now on, land only finished members' rows."""
        self.stopping = True

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.settle(trial.trial_id, trial.config, flush=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.settle(trial.trial_id, trial.config, error=True, reason=trial.error_file or "", flush=False)

    def on_step_end(self, iteration, trials, **info):
        self.writer.maybe_flush()
        self.retire_checkpoints()

    def on_experiment_end(self, trials, **info):
        self.writer.flush()
        self.retire_checkpoints()


def progress(n_landed: int, running: Iterable[tuple[int, int, int | None]]) -> float:
    """Configurations done, fractionally: every landed row counts 1, and each running trial, given as (its last
    report's ``step``, its ``n_running`` members, a member's planned steps), counts ``n_running * step / steps``
    (0 when the planned steps are unknown: an epoch budget, whose steps depend on the data set)."""
    done = float(n_landed)
    for step, n_running, steps in running:
        if steps and step > 0:
            done += n_running * min(step / steps, 1.0)
    return done


def eta_seconds(samples: Sequence[tuple[float, float]], n_total: float, *, min_span_s: float = 5.0) -> float | None:
    """Seconds left, from ``samples`` of (seconds since the start, :func:`progress`), oldest first: what is left over
    the rate since the first sample with progress (so Ray's start-up and the first trials' start do not count as
    slowness). None ("?") until two samples with progress lie ``min_span_s`` apart and the rate is positive."""
    if not samples:
        return None
    started = next(((t, p) for t, p in samples if p > 0), None)
    t_now, p_now = samples[-1]
    if started is None or t_now - started[0] < min_span_s or p_now <= started[1]:
        return None
    rate = (p_now - started[1]) / (t_now - started[0])
    return max(0.0, n_total - p_now) / rate


class ProgressCallback(_DriverOnly):
    """``done/total (running R, diverged D, failed F) rate/s ETA``: rewritten in place on a terminal, every 10 s
    as a new line otherwise. ``rate`` counts landed rows per second; the ETA counts the running trials' steps too
    (:func:`progress`, :func:`eta_seconds`), so that fused bundles, whose rows land together at their end, do not
    make it start at many times the truth."""

    def __init__(self, results: ResultsCallback, n_total: int, where: str, *, stream=None):
        stream = sys.stderr if stream is None else stream  # at launch, not at import: sys.stderr may be replaced
        self.results, self.n_total, self.where, self.stream = results, n_total, where, stream
        self.started = time.monotonic()
        self.last = 0.0
        self.tty = stream.isatty()
        self.samples: list[tuple[float, float]] = []  # (seconds since the start, progress) at each line

    def line(self, n_running: int, eta: float | None = None) -> str:
        c = self.results.counts
        done = sum(c.values())
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        shown = "?" if eta is None else f"{eta:.0f}s"
        return (f"[raysweep {self.where}] {done}/{self.n_total} done (running {n_running} members, "
                f"diverged {c['diverged']}, failed {c['failed']}, pruned {c['pruned']}) {rate:.2f}/s ETA {shown}")

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        steps = self.results.plan.experiment.steps
        members = []
        for t in trials:
            if t.status == "RUNNING":
                last = t.last_result or {}
                n = last.get("n_running", len(bundle_of(self.results.plan, t.config).points))
                members.append((int(last.get("step") or 0), n, steps))
        self.samples.append((now - self.started, progress(sum(self.results.counts.values()), members)))
        eta = eta_seconds(self.samples, self.n_total)
        running = sum(n for _, n, _ in members)
        self.stream.write(("\r" if self.tty else "") + self.line(running, eta) + ("" if self.tty else "\n"))
        self.stream.flush()

    def on_experiment_end(self, trials, **info):
        self.stream.write(("\r" if self.tty else "") + self.line(0, 0.0) + "\n")
        self.stream.flush()
