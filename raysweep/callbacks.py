"""Driver-side Ray Tune callbacks: land terminal rows in Parquet, and show a progress line.

Trials send each member's trials row and curve rows in the report where the member becomes terminal
(see :mod:`raysweep.trial`); :class:`ResultsCallback` hands them to the :class:`~raysweep.results.ResultsWriter`,
which refuses a second row for a key. A Ray trial that dies without reporting (its worker or node was lost, after
Tune's retries) lands its unfinished members as ``failed`` with the reason.
"""

from __future__ import annotations

import sys
import time

from ray.tune import Callback

from raysweep.results import ResultsWriter
from raysweep.trial import Plan, trial_row


class _DriverOnly(Callback):
    """Tune pickles its callbacks into its (temporary) experiment state; ours live on the driver only."""

    def __getstate__(self):
        return {}


class ResultsCallback(_DriverOnly):
    def __init__(self, writer: ResultsWriter, plan: Plan):
        self.writer, self.plan = writer, plan
        self.counts = {"completed": 0, "diverged": 0, "failed": 0, "pruned": 0}
        self.n_duplicates = 0

    def _land(self, items) -> None:
        for item in items or ():
            if self.writer.add(item["trial"], item["curves"]):
                self.counts[item["trial"]["status"]] += 1
            else:
                self.n_duplicates += 1

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._land(result.get("terminal"))
        self.writer.maybe_flush()

    def on_trial_error(self, iteration, trials, trial, **info):
        bundle = self.plan.bundles[trial.config["bundle"]]
        error = f"trial lost: {trial.error_file or 'the worker died'}"
        for i, key in enumerate(bundle.keys):
            if key not in self.writer.keys:
                row = trial_row(self.plan, bundle, i, status="failed", dataset=self.plan.experiment["family"],
                                error=error)
                self._land([{"trial": row, "curves": []}])

    def on_step_end(self, iteration, trials, **info):
        self.writer.maybe_flush()

    def on_experiment_end(self, trials, **info):
        self.writer.flush()


class ProgressCallback(_DriverOnly):
    """``done/total (running R, diverged D, failed F) rate/s ETA``: rewritten in place on a terminal, every 10 s
    as a new line otherwise."""

    def __init__(self, results: ResultsCallback, n_total: int, where: str, *, stream=sys.stderr):
        self.results, self.n_total, self.where, self.stream = results, n_total, where, stream
        self.started = time.monotonic()
        self.last = 0.0
        self.tty = stream.isatty()

    def line(self, n_running: int) -> str:
        c = self.results.counts
        done = sum(c.values())
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.n_total - done) / rate:.0f}s" if rate > 0 else "?"
        return (f"[raysweep {self.where}] {done}/{self.n_total} done (running {n_running} members, "
                f"diverged {c['diverged']}, failed {c['failed']}, pruned {c['pruned']}) {rate:.2f}/s ETA {eta}")

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        running = sum(
            (t.last_result or {}).get("n_running", len(self.results.plan.bundles[t.config["bundle"]].points))
            for t in trials if t.status == "RUNNING"
        )
        self.stream.write(("\r" if self.tty else "") + self.line(running) + ("" if self.tty else "\n"))
        self.stream.flush()

    def on_experiment_end(self, trials, **info):
        self.stream.write(("\r" if self.tty else "") + self.line(0) + "\n")
        self.stream.flush()
