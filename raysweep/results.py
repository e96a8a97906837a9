"""Parquet results: the driver-side writer and the readers.

Layout of a sweep folder ``<storage>/<name>/``:

- ``trials/part-<batch>.parquet``: one row per configuration that reached a terminal status;
- ``curves/part-<batch>.parquet``: one row per (configuration, report), written in the same batch as its trial row;
- ``spec.yaml``: the validated spec as run.

Guarantees:

- *Atomic*: a file is written under a dot-prefixed temporary name, fsynced, then renamed; readers (and globs such
  as ``trials/*.parquet``) never see a partial file.
- *Exactly once*: a ``config_key`` gets at most one trials row. The writer loads the keys already present and
  refuses a second row for any of them (a trial that Ray ran twice, a relaunch). A batch's curves file is written
  before its trials file, which commits the batch; at start-up the writer deletes curves files whose trials file
  never landed (a crash between the two renames), so their configs re-run and their curves appear once.
  :func:`read_curves` returns committed batches only.
- *One writer per sweep*: the writer holds an exclusive lock on ``<sweep>/.lock`` while open.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raysweep.errors import RaysweepError
from raysweep.schema import CURVES_SCHEMA, TRIALS_SCHEMA

TRIALS, CURVES = "trials", "curves"


def _parts(folder: Path) -> list[Path]:
    """The visible Parquet files of a table folder, in write order (dot- and underscore-prefixed files skipped)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))


def to_table(rows: Iterable[Mapping], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) as a table of ``schema``: missing columns are null, unknown keys are an error."""
    rows = list(rows)
    extra = {k for row in rows for k in row} - set(schema.names)
    if extra:
        raise ValueError(f"columns not in the schema: {sorted(extra)}")
    return pa.Table.from_pydict({f.name: [row.get(f.name) for row in rows] for f in schema}, schema=schema)


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` via a dot-prefixed temporary file in the same folder and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_trials(sweep_dir: str | os.PathLike) -> pa.Table:
    """Every committed trials row of a sweep (``TRIALS_SCHEMA``; empty when there is none)."""
    parts = _parts(Path(sweep_dir) / TRIALS)
    if not parts:
        return TRIALS_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=TRIALS_SCHEMA) for p in parts])


def read_curves(sweep_dir: str | os.PathLike) -> pa.Table:
    """Every curves row of committed batches (``CURVES_SCHEMA``)."""
    sweep_dir = Path(sweep_dir)
    committed = {p.name for p in _parts(sweep_dir / TRIALS)}
    parts = [p for p in _parts(sweep_dir / CURVES) if p.name in committed]
    if not parts:
        return CURVES_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=CURVES_SCHEMA) for p in parts])


class ResultsWriter:
    """Buffers terminal trial rows with their curves and lands them as a few atomic Parquet files.

    ``add`` buffers; ``flush`` writes one curves file and one trials file per call (nothing when empty);
    ``maybe_flush`` flushes when ``flush_every_s`` passed since the last flush or the buffer is large.
    """

    def __init__(self, sweep_dir: str | os.PathLike, sweep: str, *, flush_every_s: float = 2.0,
                 max_buffered: int = 5000):
        self.sweep_dir = Path(sweep_dir)
        self.sweep = sweep
        self.flush_every_s = flush_every_s
        self.max_buffered = max_buffered
        for sub in (TRIALS, CURVES):
            (self.sweep_dir / sub).mkdir(parents=True, exist_ok=True)
        self._lock = open(self.sweep_dir / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RaysweepError(
                f"{self.sweep_dir}: another raysweep process is writing this sweep; wait for it or use another --name"
            ) from None
        self._recover()
        self.keys: set[str] = set(read_trials(self.sweep_dir).column("config_key").to_pylist())
        self._trials: list[dict] = []
        self._curves: list[dict] = []
        self._seq = 0
        self._last_flush = time.monotonic()
        self.n_written = 0

    def _recover(self) -> None:
        """Remove temporary files and curves files whose batch never committed (a crash between two renames)."""
        committed = {p.name for p in _parts(self.sweep_dir / TRIALS)}
        for sub in (TRIALS, CURVES):
            for tmp in (self.sweep_dir / sub).glob(".*.tmp"):
                tmp.unlink()
        for orphan in _parts(self.sweep_dir / CURVES):
            if orphan.name not in committed:
                orphan.unlink()

    def add(self, trial_row: Mapping, curve_rows: Iterable[Mapping] = ()) -> bool:
        """Buffer one terminal trial row and its curves. False (and nothing buffered) if its key already has a row."""
        key = trial_row["config_key"]
        if key in self.keys:
            return False
        self.keys.add(key)
        row = {"sweep": self.sweep, **trial_row}
        row.setdefault("finished_at", datetime.now(timezone.utc))
        self._trials.append(row)
        self._curves.extend({"sweep": self.sweep, "config_key": key, **c} for c in curve_rows)
        return True

    def maybe_flush(self) -> None:
        due = time.monotonic() - self._last_flush >= self.flush_every_s
        if self._trials and (due or len(self._trials) + len(self._curves) >= self.max_buffered):
            self.flush()

    def flush(self) -> None:
        if not self._trials:
            return
        trials, curves = to_table(self._trials, TRIALS_SCHEMA), to_table(self._curves, CURVES_SCHEMA)
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{self._seq:05d}.parquet"
        self._seq += 1
        write_atomic(curves, self.sweep_dir / CURVES / name)  # curves first: the trials file commits the batch
        write_atomic(trials, self.sweep_dir / TRIALS / name)
        self.n_written += len(self._trials)
        self._trials, self._curves = [], []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if not self._lock.closed:
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                self._lock.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
