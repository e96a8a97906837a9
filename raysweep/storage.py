"""Where a sweep's files live: a local folder or a URI that ``pyarrow.fs`` understands.

``--storage`` accepts a plain path (``results``, ``/shared/results``), a ``file://`` URI (the same thing, spelled as
a URI), or an object store: ``s3://bucket/prefix``, ``gs://bucket/prefix`` (and whatever else
``pyarrow.fs.FileSystem.from_uri`` opens, e.g. ``abfs://``, ``hdfs://``). Credentials and endpoints come from the
usual environment of each store (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``,
...) or from the URI's query (``s3://bucket/prefix?endpoint_override=host:9000&scheme=http``); neither is ever
printed.

Two kinds of storage behave differently:

- *POSIX* (a local path or ``file://``): files appear atomically by writing a dot-prefixed temporary file, fsyncing
  it and renaming it; one driver per sweep is enforced with an ``fcntl`` lock on ``<sweep>/.lock``.
- *Object stores*: a PUT is atomic (an object is visible whole or not at all), so files are written under their
  final name directly; there is no rename and no lock: two drivers running the same sweep on an object store at
  the same time are **not** guarded against each other (run one driver per sweep). Files that need a POSIX file
  system (the Optuna journal, the autobatch cache) live in a local folder instead, :attr:`Location.local_dir`.

Multi-node clusters: a trial's node must reach the storage (Ray Tune's experiment folder is under it). A plain local
path is only that when it is a mount every node sees (NFS, Lustre, ...), which raysweep cannot check: on a cluster
of more than one node a local path is refused (:func:`check_cluster`) unless the user says so with
``--shared-storage``. Object-store URIs are accepted as they are.
"""

from __future__ import annotations

import io
import os
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from raysweep.errors import StorageError

TUNE_DIR = "_tune"  # Ray Tune's experiment folders, one per launch, under the sweep folder
SPEC_FILE = "spec.yaml"  # the validated spec as run, under the sweep folder
# What raysweep writes directly under <storage>/<name>/ (files and folders); none may be a link (check_no_links)
SWEEP_ENTRIES = ("trials", "curves", SPEC_FILE, ".lock", "optuna.journal", "autobatch_cache.json",
                 "autobatch_modules.json", TUNE_DIR,
                 "analysis", "quarantine", "manifest.json", "checkpoints", "snapshots", "spectra")
REACH_TIMEOUT_S = 10.0  # how long the first call to an object store may take (RAYSWEEP_STORAGE_TIMEOUT_S)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Location:
    """A folder (or file) on some storage: ``fs`` and the ``path`` inside it, and ``uri`` to show the user.

    For POSIX storage ``path`` is an absolute local path; for an object store it is ``bucket/key`` and ``uri`` is
    ``scheme://bucket/key`` without the query (which may carry credentials).
    """

    fs: pafs.FileSystem
    path: str
    uri: str
    scheme: str = ""  # "" for POSIX storage, else the URI scheme ("s3", "gs", ...)

    @property
    def is_posix(self) -> bool:
        """True for a local path or ``file://``: renames, fsync and fcntl locks work."""
        return not self.scheme

    @property
    def local_path(self) -> Path:
        """The local path of POSIX storage (an error for an object store)."""
        if not self.is_posix:
            raise StorageError(f"{self.uri}: not a local path")
        return Path(self.path)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def join(self, *parts: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *(p.strip("/") for p in parts)])
        uri = "/".join([self.uri.rstrip("/"), *(p.strip("/") for p in parts)])
        return Location(self.fs, path, uri, self.scheme)

    @property
    def local_dir(self) -> Path:
        """A POSIX folder for files that need one (the Optuna journal, the autobatch cache).

        POSIX storage: the folder itself. Object store: ``$RAYSWEEP_LOCAL_DIR/<scheme>/<bucket>/<key>`` (default
        ``~/.cache/raysweep``) on the machine where the driver runs, so a relaunch on the same machine finds it.
        """
        if self.is_posix:
            return Path(self.path)
        root = Path(os.environ.get("RAYSWEEP_LOCAL_DIR") or Path.home() / ".cache" / "raysweep")
        return root / self.scheme / self.path.strip("/")

    # ------------------------------------------------------------------------------------------- file system
    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def mkdir(self) -> None:
        """Create the folder (and its parents). Object stores have no folders: nothing to do there."""
        if self.is_posix:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def files(self, suffix: str = "") -> list[Location]:
        """The files directly in this folder whose names end with ``suffix``, sorted by name; [] when missing."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return [self.join(i.base_name) for i in sorted(infos, key=lambda i: i.base_name)
                if i.type == pafs.FileType.File and i.base_name.endswith(suffix)]

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as fh:
            return fh.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def delete(self) -> None:
        """Delete this file; missing is fine."""
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass

    def delete_tree(self) -> None:
        """Delete this folder and everything under it; missing is fine."""
        try:
            self.fs.delete_dir(self.path)
        except FileNotFoundError:
            pass

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:  # os.fspath(): POSIX storage only, so that a Location passes for a Path there
        return os.fspath(self.local_path)


def resolve(storage: str | os.PathLike | Location) -> Location:
    """The :class:`Location` of ``--storage``: a local path, ``file://...``, or any URI pyarrow.fs opens.

    A local path is made absolute (trials and relaunches must not depend on the working directory); ``file://``
    is a local path. Other URIs go through ``pyarrow.fs.FileSystem.from_uri``; an unknown scheme or a store whose
    support is not installed is a :class:`StorageError` naming the URI.
    """
    if isinstance(storage, Location):
        return storage
    text = os.fspath(storage)
    if not _URI.match(text):
        path = os.path.abspath(os.path.expanduser(text))
        return Location(pafs.LocalFileSystem(), path, path)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"--storage {text}: a file:// URI must name a local path (file:///abs/path)")
        path = os.path.abspath(parts.path or "/")
        return Location(pafs.LocalFileSystem(), path, path)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except Exception as exc:  # pyarrow raises ArrowInvalid / ArrowNotImplementedError / OSError
        raise StorageError(
            f"--storage {_shown(text)}: cannot open it with pyarrow.fs ({type(exc).__name__}: {exc}); give a local "
            "path, file:///abs/path, s3://bucket/prefix or gs://bucket/prefix"
        ) from None
    if isinstance(fs, pafs.LocalFileSystem):  # e.g. a scheme pyarrow maps onto the local file system
        path = os.path.abspath(path)
        return Location(fs, path, path)
    path = path.rstrip("/")
    return Location(fs, path, f"{scheme}://{path}", scheme)


def _shown(uri: str) -> str:
    """A URI without its query (which may hold credentials) for messages."""
    return uri.split("?", 1)[0]


# ------------------------------------------------------------------------------------------------ checks
def check_no_links(sweep: Location) -> None:
    """Refuse a sweep folder that is, or holds, a symbolic link where raysweep writes (:data:`SWEEP_ENTRIES`):
    writing through it would change a file outside the sweep (a ``.lock`` linked to another file would be
    truncated). The storage root above the sweep may be a link; object stores have none."""
    if not sweep.is_posix:
        return
    for path in [Path(sweep.path)] + [Path(sweep.path) / name for name in SWEEP_ENTRIES]:
        if path.is_symlink():
            raise StorageError(f"{path}: a symbolic link (to {os.readlink(path)}); raysweep writes there and never "
                               "follows a link out of the sweep folder: remove the link, or use another --name")


def check_reachable(location: Location, timeout_s: float | None = None) -> None:
    """The storage answers its first call within ``timeout_s`` (default :data:`REACH_TIMEOUT_S`, or the
    ``RAYSWEEP_STORAGE_TIMEOUT_S`` environment variable): an object store with no network (or a wrong endpoint)
    otherwise blocks for minutes in its client's retries. POSIX storage is not checked. A failure is a
    :class:`StorageError` naming the URI."""
    if location.is_posix:
        return
    if timeout_s is None:
        timeout_s = float(os.environ.get("RAYSWEEP_STORAGE_TIMEOUT_S") or REACH_TIMEOUT_S)
    outcome: list = []

    def call():
        try:
            outcome.append(location.fs.get_file_info(location.path))
        except Exception as exc:  # noqa: BLE001 - any failure of the store's client is reported below
            outcome.append(exc)

    worker = threading.Thread(target=call, name="raysweep-storage-check", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:  # the client is still waiting: the thread is left behind (a daemon) and the launch stops
        raise StorageError(f"--storage {location.uri}: no answer within {timeout_s:g} s (no network, a wrong "
                           "endpoint or region?); set RAYSWEEP_STORAGE_TIMEOUT_S to wait longer")
    if isinstance(outcome[0], Exception):
        exc = outcome[0]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise StorageError(f"--storage {location.uri}: {type(exc).__name__}: {first[:300]}")


# ------------------------------------------------------------------------------------------------ writing
def write_atomic(target: Location, write) -> None:
    """Make ``target`` appear whole or not at all; ``write(stream)`` writes its bytes.

    POSIX: a dot-prefixed temporary file in the same folder (created anew, never through a link), flushed and
    fsynced, then renamed over ``target`` (readers and globs skip dot files; a rename replaces a link at
    ``target`` instead of writing through it). Object store: one PUT of the final name (atomic there).
    """
    if target.is_posix:
        final = Path(target.path)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with open(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    buffer = io.BytesIO()  # serialise first: a failure while writing must not leave a partial object behind
    write(buffer)
    with target.fs.open_output_stream(target.path) as out:
        out.write(buffer.getvalue())


def write_bytes_atomic(target: Location, data: bytes) -> None:
    write_atomic(target, lambda fh: fh.write(data))


# ------------------------------------------------------------------------------------------------ clusters
def check_cluster(location: Location, n_nodes: int, *, shared_storage: bool, address: str | None = None) -> None:
    """Refuse node-local storage for a cluster of more than one node (see the module docstring).

    ``n_nodes``: alive nodes of the cluster; ``shared_storage``: the user asserted (``--shared-storage``) that a
    local path is a mount every node sees.
    """
    if n_nodes <= 1 or not location.is_posix or shared_storage:
        return
    where = f"the cluster at {address}" if address else "the cluster"
    raise StorageError(
        f"--storage {location.uri}: a local path, but {where} has {n_nodes} nodes. Trials run on every node and "
        "Ray Tune keeps its experiment folder in the storage, so it must be one file system that every node (and "
        "the driver) reaches; raysweep cannot tell a node-local disk from a shared mount. Fix: use an object store "
        "(--storage s3://BUCKET/PREFIX or gs://BUCKET/PREFIX), or, if this path is a mount that every node sees "
        "(NFS, Lustre, ...), add --shared-storage."
    )


@dataclass(frozen=True)
class TuneStorage:
    """Ray Tune's experiment folder for one launch: ``RunConfig(storage_path=path, storage_filesystem=filesystem)``.

    Under ``<sweep>/_tune/<launch id>/`` so that it is as reachable as the sweep itself (every node writes its
    trials' folders there); raysweep keeps nothing in it (the Parquet tables are the record), so :meth:`remove`
    deletes it when the launch ends. ``filesystem`` is None for POSIX storage (Tune then uses the local path).
    """

    location: Location

    @property
    def path(self) -> str:
        return self.location.path

    @property
    def filesystem(self) -> pafs.FileSystem | None:
        return None if self.location.is_posix else self.location.fs

    def remove(self) -> None:
        try:
            self.location.delete_tree()
        except OSError:
            pass  # best effort: a leftover folder is harmless and ResultsWriter clears old ones


def tune_storage(sweep: Location) -> TuneStorage:
    """A fresh Tune experiment folder under ``sweep`` (see :class:`TuneStorage`)."""
    location = sweep.join(TUNE_DIR, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    location.mkdir()
    return TuneStorage(location)
