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
  while open (opened without following a link). Object stores have no such lock: two drivers on the same
  object-store sweep at once are not guarded.
- *Nothing foreign*: a file of ``trials/`` or ``curves/`` that is not readable Parquet, or whose columns are not
  raysweep's (a column of another type, or without ``config_key``), is a :class:`~raysweep.errors.CorruptFileError`
  naming it; :func:`quarantine` moves such files to ``<sweep>/quarantine/`` (their configurations then run again).
- *Retries*: :func:`retry_failed` removes the ``failed`` rows whose cause was not the configuration itself (every
  failure but ``infeasible``), so that a relaunch runs them again; each still gets exactly one row.

Paths: every function takes a local path, a URI (``file://``, ``s3://``, ``gs://``, ...) or a
:class:`raysweep.storage.Location`.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysweep import storage
from raysweep.errors import CorruptFileError, NotASweepError, RaysweepError
from raysweep.schema import CURVES_SCHEMA, TRIALS_SCHEMA
from raysweep.storage import Location

TRIALS, CURVES, QUARANTINE = "trials", "curves", "quarantine"
REQUIRED = {TRIALS: ("config_key", "status"), CURVES: ("config_key", "step")}  # beyond any older file's columns
# failed rows whose error starts with one of these are the configuration's own: --retry-failed leaves them
NOT_RETRIED = ("infeasible:", "InfeasibleError:")


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


def _problem(part: Location, schema: pa.Schema, table: str) -> str | None:
    """Why ``part`` is not a raysweep ``table`` file (unreadable, or foreign columns), or None when it is one."""
    try:
        found = pq.read_schema(part.path, filesystem=part.fs)
    except (pa.ArrowException, OSError) as exc:
        return f"not a readable Parquet file ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
    missing = [name for name in REQUIRED[table] if name not in found.names]
    if missing:
        return f"not a raysweep {table} file: no {', '.join(missing)} column"
    for f in found:
        if f.name not in schema.names:
            return f"not a raysweep {table} file: unknown column {f.name!r}"
        want = schema.field(f.name).type
        if not _same_kind(f.type, want):
            return f"not a raysweep {table} file: column {f.name!r} is {f.type}, not {want}"
    return None


_KINDS = (pa.types.is_null, lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), pa.types.is_integer,
          pa.types.is_floating, pa.types.is_timestamp, pa.types.is_boolean)


def _same_kind(found: pa.DataType, want: pa.DataType) -> bool:
    """A column type the reader converts to ``want`` without changing its meaning: the same type, null, or the same
    kind (a large_string written by another tool, an int32), never a number read as text."""
    if found == want or pa.types.is_null(found):
        return True
    return any(kind(found) and kind(want) for kind in _KINDS)


def _corrupt(part: Location, why: str) -> CorruptFileError:
    return CorruptFileError(
        f"{part.uri}: {why}. Move it out of the sweep folder (relaunch with --quarantine to move it to "
        f"{QUARANTINE}/); the configurations of its rows then run again", path=part.uri)


def _read(parts: list[Location], schema: pa.Schema, table: str) -> pa.Table:
    tables = []
    for part in parts:
        why = _problem(part, schema, table)
        if why is not None:
            raise _corrupt(part, why)
        try:
            tables.append(pq.read_table(part.path, filesystem=part.fs, schema=schema))
        except (pa.ArrowException, OSError) as exc:  # a footer that reads but data pages that do not
            raise _corrupt(part, f"not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    # (not schema.empty_table(), which imports pandas: a dry run reads the rows and stays light)
    return pa.concat_tables(tables) if tables else pa.Table.from_batches([], schema=schema)


def _sweep(sweep_dir: str | os.PathLike | Location) -> Location:
    """The sweep folder, or :class:`NotASweepError` when the folder is a storage root (it holds sweeps): reading
    it as a sweep would silently give no rows."""
    sweep = storage.resolve(sweep_dir)
    trials = sweep.join(TRIALS)
    if sweep.is_posix and sweep.is_dir() and (not trials.is_dir() or trials.join(TRIALS).is_dir()):
        # (a sweep named "trials" inside a storage root holds trials/trials/: the root is still not a sweep)
        inside = sorted(p.name for p in Path(sweep.path).iterdir() if (p / TRIALS).is_dir())
        if inside:
            shown = ", ".join(inside[:5]) + (f" and {len(inside) - 5} more" if len(inside) > 5 else "")
            raise NotASweepError(f"{sweep.uri}: a storage root holding the sweeps {shown}, not a sweep folder; read "
                                 f"one of them, e.g. {sweep.join(inside[0]).uri}")
    return sweep


def read_trials(sweep_dir: str | os.PathLike | Location, *, exclude: Collection[str] = ()) -> pa.Table:
    """Every committed trials row of a sweep (``TRIALS_SCHEMA``; empty when there is none), but those of the batch
    files named in ``exclude``.

    :class:`~raysweep.errors.NotASweepError` for a storage root, :class:`~raysweep.errors.CorruptFileError` for a
    file that is not a raysweep trials file (see the module docstring)."""
    parts = [p for p in _parts(_sweep(sweep_dir).join(TRIALS)) if p.name not in exclude]
    return _read(parts, TRIALS_SCHEMA, TRIALS)


def read_curves(sweep_dir: str | os.PathLike | Location) -> pa.Table:
    """Every curves row of committed batches (``CURVES_SCHEMA``); errors as :func:`read_trials`."""
    sweep = _sweep(sweep_dir)
    committed = {p.name for p in _parts(sweep.join(TRIALS))}
    return _read([p for p in _parts(sweep.join(CURVES)) if p.name in committed], CURVES_SCHEMA, CURVES)


def corrupt_files(sweep_dir: str | os.PathLike | Location) -> list[tuple[Location, str]]:
    """``(file, why)`` for every file of ``trials/`` and ``curves/`` that :func:`read_trials` would refuse."""
    sweep = storage.resolve(sweep_dir)
    out = []
    for table, schema in ((TRIALS, TRIALS_SCHEMA), (CURVES, CURVES_SCHEMA)):
        for part in _parts(sweep.join(table)):
            why = _problem(part, schema, table)
            if why is None:
                try:
                    pq.read_table(part.path, filesystem=part.fs, schema=schema)
                except (pa.ArrowException, OSError) as exc:
                    why = f"not a readable Parquet file ({type(exc).__name__})"
            if why is not None:
                out.append((part, why))
    return out


def quarantine(sweep_dir: str | os.PathLike | Location) -> list[str]:
    """Move every file :func:`corrupt_files` finds (and the other table's file of the same batch) to
    ``<sweep>/quarantine/<table>/``, out of the readers' way; return what moved. A moved trials file uncommits its
    batch: those configurations run again. Call it under the sweep's writer lock."""
    sweep = storage.resolve(sweep_dir)
    moved = []
    for part, _ in corrupt_files(sweep):
        for table in (TRIALS, CURVES):
            source = sweep.join(table, part.name)
            if not source.exists():
                continue
            target = sweep.join(QUARANTINE, table, part.name)
            if sweep.is_posix:
                Path(target.path).parent.mkdir(parents=True, exist_ok=True)
            sweep.fs.move(source.path, target.path)
            moved.append(f"{table}/{part.name}")
    return sorted(set(moved))


def retryable(row: Mapping) -> bool:
    """A ``failed`` row whose cause lay outside its configuration (a lost worker, out of memory, a data error, any
    exception) rather than in it (``infeasible``: a batch larger than the data set, or too large for the device)."""
    return row.get("status") == "failed" and not str(row.get("error") or "").startswith(NOT_RETRIED)


def retry_failed(sweep_dir: str | os.PathLike | Location) -> set[str]:
    """Remove the :func:`retryable` failed rows (and their curves) of a sweep; return their config keys.

    Each batch file holding such rows is rewritten without them, atomically: first its curves file, then its
    trials file (or the trials file is deleted first when no row is left, which uncommits the batch, and then its
    curves file). A crash in between leaves each row either still there (retried by the next ``--retry-failed``)
    or gone with its curves. Call it under the sweep's writer lock, before the writer loads the keys."""
    sweep = storage.resolve(sweep_dir)
    keys: set[str] = set()
    for part in _parts(sweep.join(TRIALS)):
        trials = _read([part], TRIALS_SCHEMA, TRIALS)
        drop = [r["config_key"] for r in trials.select(["config_key", "status", "error"]).to_pylist() if retryable(r)]
        if not drop:
            continue
        keys.update(drop)
        keep = pc.invert(pc.is_in(trials["config_key"], pa.array(drop)))
        curves_part = sweep.join(CURVES, part.name)
        if trials.filter(keep).num_rows == 0:
            part.delete()
            curves_part.delete()
            continue
        if curves_part.exists():
            curves = _read([curves_part], CURVES_SCHEMA, CURVES)
            write_atomic(curves.filter(pc.invert(pc.is_in(curves["config_key"], pa.array(drop)))), curves_part)
        write_atomic(trials.filter(keep), part)
    return keys


class ResultsWriter:
    """Buffers terminal trial rows with their curves and lands them as a few atomic Parquet files.

    ``add`` buffers; ``flush`` writes one curves file and one trials file per call (nothing when empty);
    ``maybe_flush`` flushes when ``flush_every_s`` passed since the last flush or the buffer is large.
    Under its lock, before it loads the keys already landed, it moves corrupt or foreign files aside when asked
    (``quarantine_files``: :func:`quarantine`; ``quarantined`` lists them) and removes the retryable failed rows
    (``retry``: :func:`retry_failed`; ``retried`` holds their keys).

    ``sweep_dir`` is the sweep folder as given: a ``Path`` on POSIX storage, a :class:`~raysweep.storage.Location`
    on an object store (the readers take either). ``location`` is always its Location; ``local_dir`` a POSIX folder
    for files that need one (Optuna journal, autobatch cache): the sweep folder itself, or for an object store a
    local folder (:attr:`raysweep.storage.Location.local_dir`).
    """

    def __init__(self, sweep_dir: str | os.PathLike | Location, sweep: str, *, flush_every_s: float = 2.0,
                 max_buffered: int = 5000, quarantine_files: bool = False, retry: bool = False):
        self.location = storage.resolve(sweep_dir)
        self.sweep_dir: Path | Location = self.location.local_path if self.location.is_posix else self.location
        self.local_dir: Path = self.location.local_dir
        self.sweep = sweep
        self.flush_every_s = flush_every_s
        self.max_buffered = max_buffered
        self._lock = None
        if self.location.is_posix:
            storage.check_no_links(self.location)
            for sub in (TRIALS, CURVES):
                (self.sweep_dir / sub).mkdir(parents=True, exist_ok=True)
            try:  # never through a link: a .lock linked to another file must not touch it
                fd = os.open(self.sweep_dir / ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise storage.StorageError(f"{self.sweep_dir / '.lock'}: cannot open the sweep's lock file "
                                           f"({exc.strerror}); it must be a plain file") from None
            self._lock = open(fd, "w")
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
        self._trials: list[dict] = []
        self._curves: list[dict] = []
        self._flushing = threading.Lock()  # a flush from a watchdog thread never interleaves with the driver's
        self._seq = 0
        self._last_flush = time.monotonic()
        self.n_written = 0
        try:
            self._recover()
            self.quarantined = quarantine(self.location) if quarantine_files else []
            self.retried = retry_failed(self.location) if retry else set()
            self.keys: set[str] = set(read_trials(self.location).column("config_key").to_pylist())
        except BaseException:
            self.close()  # releases the lock
            raise

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

    @property
    def buffered(self) -> int:
        """Trials rows added but not flushed yet."""
        return len(self._trials)

    def maybe_flush(self) -> None:
        due = time.monotonic() - self._last_flush >= self.flush_every_s
        if self._trials and (due or len(self._trials) + len(self._curves) >= self.max_buffered):
            self.flush()

    def flush(self, timeout_s: float = -1) -> bool:
        """Land the buffered rows (one curves file, then one trials file). ``timeout_s``: how long to wait for a
        flush in progress in another thread (-1: as long as it takes); False when it did not get its turn."""
        if not self._flushing.acquire(timeout=timeout_s):
            return False
        try:
            self._flush()
        finally:
            self._flushing.release()
        return True

    def _flush(self) -> None:
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
