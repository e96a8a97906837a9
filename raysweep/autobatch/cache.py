"""Fitted memory models cached in one JSON file of a folder (the sweep's storage folder).

The key (:func:`cache_key`) is the model-shape family (``dim``, ``n_out``, ``depths``, ``dtype``, ``optimizers``,
``loss``), the device (``kind``, ``name``, ``total_bytes``), the library versions (``torch_version``,
``cuda_version``) and what the probe did (``steps``, ``modes``, ``probe_version``); a change of any field misses.
The device part comes from a :class:`DeviceInfo` the caller passes (the probe actor returns one; a CPU's comes
from :func:`raysweep.autobatch.device.cpu_device_info`): a lookup reads a file and never touches CUDA.

The file is ``<folder>/autobatch_cache.json``: ``{"version": 1, "entries": {<sha256 of the key>: {"key": ...,
"model": ...}}}``, rewritten atomically (a dot-prefixed temporary file in the same folder, then ``os.replace``).
A file that cannot be read is treated as empty and replaced on the next store.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from raysweep.autobatch.device import DeviceInfo
from raysweep.autobatch.memory import MemoryModel
from raysweep.autobatch.probe import PROBE_VERSION

CACHE_FILE = "autobatch_cache.json"
CACHE_VERSION = 1


def cache_key(request, device: DeviceInfo) -> dict:
    """The cache key of a probe request (:class:`raysweep.autobatch.probe.ProbeRequest`) on ``device``."""
    return {
        "dim": request.dim,
        "n_out": request.n_out,
        "depths": sorted(set(request.depths)),
        "dtype": request.dtype,
        "optimizers": sorted(set(request.optimizers)),
        "loss": request.loss,
        "modes": sorted(request.modes),
        "steps": {m: request.steps[m] for m in sorted(request.modes)},
        "device_kind": device.kind,
        "device_name": device.name,
        "device_total_bytes": int(device.total_bytes),
        "torch_version": device.torch_version,
        "cuda_version": device.cuda_version,
        "probe_version": PROBE_VERSION,
    }


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()



def read_entries(path: Path, version: int) -> dict:
    """A cache file ``{"version", "entries"}`` of this ``version``, or an empty one when the file is missing,
    unreadable or of another version (a cache is never trusted across formats)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"version": version, "entries": {}}
    if not isinstance(data, dict) or data.get("version") != version:
        return {"version": version, "entries": {}}
    return data

class ModelCache:
    """The cache file of one folder."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / CACHE_FILE

    def _read(self) -> dict:
        return read_entries(self.path, CACHE_VERSION)

    def lookup(self, key: dict) -> MemoryModel | None:
        """The model stored under ``key``, or None. Reads one file; touches no device."""
        entry = self._read()["entries"].get(key_hash(key))
        if entry is None or entry.get("key") != json.loads(json.dumps(key)):
            return None
        try:
            return MemoryModel.from_dict(entry["model"])
        except (KeyError, TypeError, ValueError):
            return None

    def store(self, key: dict, model: MemoryModel) -> Path:
        """Add or replace the entry of ``key``; the file appears atomically."""
        data = self._read()
        data["entries"][key_hash(key)] = {"key": key, "model": model.to_dict()}
        return write_json_atomic(self.path, data)

    def keys(self) -> list[dict]:
        return [e["key"] for e in self._read()["entries"].values()]


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    """Write ``data`` as JSON to ``path``: a dot-prefixed temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True, default=_jsonable)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
