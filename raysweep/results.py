"""Parquet results: the driver-side writer and the readers.

Layout of a sweep folder ``<storage>/<name>/`` (a local folder or an object-store prefix, see :mod:`raysweep.storage`):

- ``trials/part-<batch>.parquet``: one row per configuration that reached a terminal status;
- ``curves/part-<batch>.parquet``: one row per (configuration, report), written in the same batch as its trial row;
- ``spec.yaml``: the validated spec as run.

Guarantees:

- *Atomic*: a reader (and globs such as ``trials/*.parquet``) never sees a partial file. On a local or shared file
  system a file is written under a dot-prefixed temporary name, fsynced, then renamed; on an object store it is one
  PUT of the final name, which is atomic there.
- *Exactly once*: a ``config_key`` gets at most one trials row. The writer loads the keys already present and
  refuses a second row for any of them (a trial that Ray ran twice, a relaunch). A batch's curves file is written
  before its trials file, which commits the batch; at start-up the writer deletes curves files whose trials file
  never landed (a crash between the two writes), so their configs re-run and their curves appear once.
  :func:`read_curves` returns committed batches only.
- *One writer per sweep*: on a POSIX file system the writer holds an exclusive ``fcntl`` lock on ``<sweep>/.lock``
  while open. Object stores have no such lock: two drivers on the same object-store sweep at once are not guarded.

Paths: every function takes a local path, a URI (``file://``, ``s3://``, ``gs://``, ...) or a
:class:`raysweep.storage.Location`.
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

from raysweep import storage
from raysweep.errors import RaysweepError
from raysweep.schema import CURVES_SCHEMA, TRIALS_SCHEMA
from raysweep.storage import Location

TRIALS, CURVES = "trials", "curves"


def _parts(folder: Location) -> list[Location]:
    """The visible Parquet files of a table folder, in write order (dot- and underscore-prefixed files skipped)."""
    return [f for f in folder.files(".parquet") if not f.name.startswith((".", "_"))]


def to_table(rows: Iterable[Mapping], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) as a table of ``schema``: missing columns are null, unknown keys are an error."""
    rows = list(rows)
    extra = {k for row in rows for k in row} - set(schema.names)
    if extra:
        raise ValueError(f"columns not in the schema: {sorted(extra)}")
    return pa.Table.from_pydict({f.name: [row.get(f.name) for row in rows] for f in schema}, schema=schema)


def write_atomic(table: pa.Table, path: str | os.PathLike | Location) -> None:
    """Write ``table`` as Parquet to ``path`` so that it appears whole or not at all (see the module docstring)."""
    storage.write_atomic(storage.resolve(path), lambda fh: pq.write_table(table, fh, compression="zstd"))


def _read(parts: list[Location], schema: pa.Schema) -> pa.Table:
    if not parts:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(p.path, filesystem=p.fs, schema=schema) for p in parts])


def read_trials(sweep_dir: str | os.PathLike | Location) -> pa.Table:
    """Every committed trials row of a sweep (``TRIALS_SCHEMA``; empty when there is none)."""
    return _read(_parts(storage.resolve(sweep_dir).join(TRIALS)), TRIALS_SCHEMA)


def read_curves(sweep_dir: str | os.PathLike | Location) -> pa.Table:
    """Every curves row of committed batches (``CURVES_SCHEMA``)."""
    sweep = storage.resolve(sweep_dir)
    committed = {p.name for p in _parts(sweep.join(TRIALS))}
    return _read([p for p in _parts(sweep.join(CURVES)) if p.name in committed], CURVES_SCHEMA)


class ResultsWriter:
    """Buffers terminal trial rows with their curves and lands them as a few atomic Parquet files.

    ``add`` buffers; ``flush`` writes one curves file and one trials file per call (nothing when empty);
    ``maybe_flush`` flushes when ``flush_every_s`` passed since the last flush or the buffer is large.

    ``sweep_dir`` is the sweep folder as given: a ``Path`` on POSIX storage, a :class:`~raysweep.storage.Location`
    on an object store (the readers take either). ``location`` is always its Location; ``local_dir`` a POSIX folder
    for files that need one (Optuna journal, autobatch cache): the sweep folder itself, or for an object store a
    local folder (:attr:`raysweep.storage.Location.local_dir`).
    """

    def __init__(self, sweep_dir: str | os.PathLike | Location, sweep: str, *, flush_every_s: float = 2.0,
                 max_buffered: int = 5000):
        self.location = storage.resolve(sweep_dir)
        self.sweep_dir: Path | Location = self.location.local_path if self.location.is_posix else self.location
        self.local_dir: Path = self.location.local_dir
        self.sweep = sweep
        self.flush_every_s = flush_every_s
        self.max_buffered = max_buffered
        self._lock = None
        if self.location.is_posix:
            for sub in (TRIALS, CURVES):
                (self.sweep_dir / sub).mkdir(parents=True, exist_ok=True)
            self._lock = open(self.sweep_dir / ".lock", "w")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.close()
                raise RaysweepError(
                    f"{self.sweep_dir}: another raysweep process is writing this sweep; wait for it or use another "
                    "--name"
                ) from None
        else:
            self.local_dir.mkdir(parents=True, exist_ok=True)
        self._recover()
        self.keys: set[str] = set(read_trials(self.location).column("config_key").to_pylist())
        self._trials: list[dict] = []
        self._curves: list[dict] = []
        self._seq = 0
        self._last_flush = time.monotonic()
        self.n_written = 0

    def _recover(self) -> None:
        """Remove what a killed driver left: temporary files, curves files whose batch never committed (a crash
        between the two writes), Tune experiment folders of earlier launches.

        On an object store there are no temporary files, and the other two are left alone: without a lock another
        driver may be between its two writes, or running Tune, right now.
        """
        if not self.location.is_posix:
            return
        committed = {p.name for p in _parts(self.location.join(TRIALS))}
        for sub in (TRIALS, CURVES):
            for tmp in (self.sweep_dir / sub).glob(".*.tmp"):
                tmp.unlink()
        for orphan in _parts(self.location.join(CURVES)):
            if orphan.name not in committed:
                orphan.delete()
        self.location.join(storage.TUNE_DIR).delete_tree()  # under the lock: no other launch of this sweep runs

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
        write_atomic(curves, self.location.join(CURVES, name))  # curves first: the trials file commits the batch
        write_atomic(trials, self.location.join(TRIALS, name))
        self.n_written += len(self._trials)
        self._trials, self._curves = [], []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._lock is not None and not self._lock.closed:
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                self._lock.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
