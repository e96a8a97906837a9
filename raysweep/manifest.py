"""``<sweep>/manifest.json``: what ran a sweep, from where, and when.

One JSON object, rewritten atomically (:func:`raysweep.storage.write_bytes_atomic`: a renamed temporary file on a
file system, one PUT on an object store; never through a link) by the driver that holds the sweep's writer:

- ``schema_version`` (:data:`SCHEMA_VERSION`), ``sweep``: the sweep's name;
- ``versions``, ``git``, ``spec_sha256``: those of the latest launch (each launch keeps its own too);
- ``launches``: one entry per launch, in order (:meth:`Launch.entry`), written when the launch starts (``end``
  null) and updated when it ends, normally, interrupted (SIGINT / SIGTERM, the grace-period exit included) or on
  an error. An entry whose ``end`` stays null belongs to a driver that was killed (or is still running).

Versions are read from the installed packages' metadata (:mod:`importlib.metadata`): nothing here imports torch,
Ray or Optuna. ``git`` is the working directory's ``git rev-parse HEAD`` and whether ``git status --porcelain``
lists anything, or null when it is not a git checkout (or git is missing or slow).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import uuid
from collections.abc import Collection
from datetime import datetime, timezone
from importlib import metadata

from typing import TYPE_CHECKING

from raysweep._version import __version__

if TYPE_CHECKING:
    from raysweep.storage import Location

# pyarrow (through raysweep.storage) is imported inside the functions that read or write: the launcher imports
# this module, and its option checks stay light

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
GIT_TIMEOUT_S = 5.0  # per git command; a slower answer (a huge or network checkout) records git as null
STATUSES = ("completed", "diverged", "failed", "pruned")


def utc_now() -> str:
    """Now, as ISO 8601 UTC to the second (``2026-12-03T09:30:01Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def package_versions() -> dict[str, str | None]:
    """raysweep's version (the one stamped on every row), the installed torch, ray and optuna (null when not
    installed) and Python's, without importing any of them."""
    out: dict[str, str | None] = {"raysweep": __version__}
    for name in ("torch", "ray", "optuna"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def git_state(cwd: str | os.PathLike | None = None, timeout_s: float = GIT_TIMEOUT_S) -> dict | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout at ``cwd`` (default: the working directory), or None
    when it is not one, git is missing, or git does not answer within ``timeout_s``. ``dirty``: ``git status
    --porcelain`` lists something (untracked files included); null when that command alone failed."""
    where = os.fspath(cwd) if cwd is not None else os.getcwd()
    # no optional locks: this read must not take the index lock from a git command the user runs meanwhile
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}
    run = dict(cwd=where, capture_output=True, text=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL)
    try:
        head = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], **run)
        if head.returncode != 0 or not head.stdout.strip():
            return None
        status = subprocess.run(["git", "status", "--porcelain"], **run)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def spec_sha256(spec) -> str:
    """The sha256 of the spec as saved in ``<sweep>/spec.yaml`` (``sha256sum spec.yaml`` gives the same)."""
    return hashlib.sha256(spec.to_yaml().encode()).hexdigest()


def read_manifest(sweep: str | os.PathLike | Location) -> dict | None:
    """The sweep's manifest, or None when it has none. A file that is not a JSON object raises ValueError."""
    from raysweep import storage  # pyarrow

    target = storage.resolve(sweep).join(MANIFEST)
    if not target.exists():
        return None
    data = json.loads(target.read_bytes().decode())
    if not isinstance(data, dict) or not isinstance(data.get("launches", []), list):
        raise ValueError(f"{target}: not a raysweep manifest (a JSON object with a launches list)")
    return data


def _write(sweep: Location, manifest: dict) -> None:
    from raysweep import storage  # pyarrow

    text = json.dumps(manifest, indent=1, allow_nan=False) + "\n"
    storage.write_bytes_atomic(sweep.join(MANIFEST), text.encode())


def _counts(sweep: Location, keys_before: Collection[str]) -> dict[str, int]:
    """Rows landed by this launch (keys that had no row when it started), by status."""
    from raysweep.results import read_trials  # pyarrow: the launcher imports this module

    counts = dict.fromkeys(STATUSES, 0)
    for row in read_trials(sweep).select(["config_key", "status"]).to_pylist():
        if row["config_key"] not in keys_before:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


class Launch:
    """One launch's entry in the manifest: :meth:`begin` appends it, :meth:`end` completes it.

    Call both while holding the sweep's writer (its lock, on a file system): the manifest is read, changed and
    rewritten whole each time. ``keys_before``: the config keys that had a row when the launch started (the rows
    it lands are the others).
    """

    def __init__(self, sweep: str | os.PathLike | Location, spec, *, address: str | None,
                 keys_before: Collection[str], cwd: str | os.PathLike | None = None):
        from raysweep import storage  # pyarrow

        self.sweep = storage.resolve(sweep)
        self.spec = spec
        self.keys_before = frozenset(keys_before)
        self.versions = package_versions()
        self.git = git_state(cwd)
        self.sha = spec_sha256(spec)
        self.entry = {
            "id": uuid.uuid4().hex[:12],
            "start": utc_now(),
            "end": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "address": address,  # null: an embedded local Ray (or one this process had already started)
            "where": None,
            "devices": None,
            "rows_before": len(self.keys_before),
            "counts": None,
            "interrupted": None,
            "error": None,
            "versions": self.versions,
            "git": self.git,
            "spec_sha256": self.sha,
        }

    def _load(self) -> dict:
        from raysweep import storage  # pyarrow

        try:
            manifest = read_manifest(self.sweep)
        except (ValueError, UnicodeDecodeError) as exc:  # set aside, never lost: the launch goes on
            aside = self.sweep.join("quarantine", f"{MANIFEST}.{utc_now().replace(':', '')}")
            if self.sweep.is_posix:
                os.makedirs(os.path.dirname(aside.path), exist_ok=True)
            storage.write_bytes_atomic(aside, self.sweep.join(MANIFEST).read_bytes())
            print(f"warning: {self.sweep.join(MANIFEST)}: unreadable ({str(exc)[:200]}); moved to {aside}, a new "
                  "manifest starts", file=sys.stderr)
            manifest = None
        return manifest or {"launches": []}

    def _save(self) -> None:
        manifest = self._load()
        launches = list(manifest.get("launches", []))
        mine = [i for i, e in enumerate(launches) if isinstance(e, dict) and e.get("id") == self.entry["id"]]
        if mine:
            launches[mine[0]] = dict(self.entry)
        else:
            launches.append(dict(self.entry))
        _write(self.sweep, {
            "schema_version": SCHEMA_VERSION,
            "sweep": self.spec.name,
            "versions": self.versions,
            "git": self.git,
            "spec_sha256": self.sha,
            "launches": launches,
        })

    def begin(self) -> Launch:
        """Append this launch's entry (``end`` null)."""
        self._save()
        return self

    def end(self, *, where: str | None = None, devices: dict | None = None, interrupted: str | None = None,
            error: BaseException | None = None) -> None:
        """Complete the entry: end time, where the driver ran, the cluster's devices, the rows this launch landed
        by status, the signal that stopped it or the error that ended it. Call it once the rows are flushed."""
        self.entry.update(end=utc_now(), where=where, devices=devices, interrupted=interrupted)
        if error is not None:
            first = (str(error).strip().splitlines() or [""])[0]
            self.entry["error"] = f"{type(error).__name__}: {first}"[:500]
        self.entry["counts"] = _counts(self.sweep, self.keys_before)
        self._save()
