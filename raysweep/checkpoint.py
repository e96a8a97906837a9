"""Mid-trial checkpoints of fused bundles: exact resume after a lost driver or node.

A running bundle (:func:`raysweep.trial.run_bundle`) saves, at a report (the trainer's window is then empty), its
:class:`raysweep.train.TrainState` and the rows it has not landed yet, under the sweep's storage::

    <sweep>/checkpoints/<bundle id>/<step, 12 digits>/state.safetensors   weights, optimizer state, generators
                                                     /state.json          the rest of the state, the bundle's
                                                                          keys and points, the pending rows
                                                     /manifest.json       written last: step, keys, sha256 of the
                                                                          two files (it commits the checkpoint)

No pickle: safetensors and JSON. Each file appears atomically (:func:`raysweep.storage.write_atomic`), on a local
or shared file system and on object stores alike. A bundle keeps its latest :data:`KEEP` checkpoints.

Resume: :func:`load_latest` reads the newest checkpoint whose files match their checksums; a missing, truncated
or corrupt one is skipped with a warning, for the one before it or, when none is left, step 0. Never wrong
weights: every byte of the state is under a sha256 that the manifest holds.

The driver (:func:`retire_landed`, :func:`regroup`): at launch, checkpoints whose configurations all have rows are
removed, and pending configurations that a checkpoint covers train again as that checkpoint's bundle (same bundle
id), so a relaunch resumes them; during the sweep, a bundle's checkpoints are removed once its rows are flushed
(:class:`raysweep.callbacks.ResultsCallback`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow.fs as pafs

from raysweep.storage import Location, write_bytes_atomic

CHECKPOINTS = "checkpoints"  # under the sweep folder
KEEP = 2  # checkpoints kept per bundle: the latest, and the one before it should the latest not read back
FORMAT = 1
STATE, META, MANIFEST = "state.safetensors", "state.json", "manifest.json"


class CheckpointError(Exception):
    """A checkpoint that does not read back (missing file, checksum mismatch, unparsable)."""


@dataclass
class Saved:
    """A checkpoint read back: the trainer's ``state`` (a ``raysweep.train.TrainState``) of the bundle
    ``bundle_id`` with ``keys`` and ``points`` (all its members, in order), and ``pending``: the rows not landed
    yet (``{"curves": {config key: [curve rows]}, "terminal": [{"trial": row, "curves": [...]}, ...]}``)."""

    step: int
    bundle_id: str
    keys: list[str]
    points: list[dict]
    state: Any
    pending: dict
    location: Location


def root(sweep: Location) -> Location:
    return sweep.join(CHECKPOINTS)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _subdirs(folder: Location) -> list[str]:
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith("."))


def _steps(folder: Location) -> list[str]:
    """The checkpoint folders of a bundle, newest first."""
    return sorted((d for d in _subdirs(folder) if d.isdigit()), reverse=True)


def save(sweep: Location, bundle_id: str, keys: Sequence[str], points: Sequence[Mapping], state,
         pending: Mapping) -> Location:
    """Write ``state`` (a ``raysweep.train.TrainState``) and ``pending`` rows as a checkpoint of ``bundle_id``;
    keep the latest :data:`KEEP`. Returns the checkpoint's folder."""
    from safetensors.torch import save as st_save  # torch: safetensors serialises torch tensors

    folder = root(sweep).join(bundle_id)
    here = folder.join(f"{state.step:012d}")
    here.mkdir()
    blob = st_save(state.tensors())
    meta = json.dumps({"format": FORMAT, "bundle_id": bundle_id, "keys": list(keys),
                       "points": [dict(p) for p in points], "state": state.meta(), "pending": pending},
                      allow_nan=True).encode()
    write_bytes_atomic(here.join(STATE), blob)
    write_bytes_atomic(here.join(META), meta)
    manifest = {"format": FORMAT, "bundle_id": bundle_id, "step": state.step, "keys": list(keys),
                "sha256": {STATE: _sha(blob), META: _sha(meta)}}
    write_bytes_atomic(here.join(MANIFEST), json.dumps(manifest).encode())  # last: it commits the checkpoint
    for old in _steps(folder)[KEEP:]:
        folder.join(old).delete_tree()
    return here


def read(here: Location) -> Saved:
    """One checkpoint folder, verified against its manifest; :class:`CheckpointError` says why not."""
    from safetensors.torch import load as st_load  # torch: safetensors builds torch tensors

    from raysweep.train import TrainState  # torch

    try:
        manifest = json.loads(here.join(MANIFEST).read_bytes())
        sums = manifest["sha256"]
        blob, meta = here.join(STATE).read_bytes(), here.join(META).read_bytes()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{here.uri}: unreadable ({type(exc).__name__}: {exc})") from None
    for name, data in ((STATE, blob), (META, meta)):
        if _sha(data) != sums.get(name):
            raise CheckpointError(f"{here.uri}/{name}: sha256 mismatch (truncated or corrupt)")
    try:
        body = json.loads(meta)
        state = TrainState.from_parts(st_load(blob), body["state"])
        if body["format"] != FORMAT or state.step != manifest["step"]:
            raise ValueError(f"format {body['format']}, step {state.step} vs {manifest['step']}")
    except Exception as exc:  # noqa: BLE001 - checksums matched, but the content is not a state of this format
        raise CheckpointError(f"{here.uri}: not a raysweep checkpoint ({type(exc).__name__}: {exc})") from None
    return Saved(state.step, body["bundle_id"], list(body["keys"]), list(body["points"]), state,
                 dict(body["pending"]), here)


def load_latest(sweep: Location, bundle_id: str,
                warn: Callable[[str], None] = lambda m: warnings.warn(m, stacklevel=2)) -> Saved | None:
    """The newest checkpoint of ``bundle_id`` that reads back, or None. Each one skipped is ``warn``-ed: the
    bundle then resumes from the one before it, or from step 0."""
    folder = root(sweep).join(bundle_id)
    steps = _steps(folder)
    for i, name in enumerate(steps):
        try:
            return read(folder.join(name))
        except CheckpointError as exc:
            fallback = f"the previous one (step {int(steps[i + 1])})" if i + 1 < len(steps) else "step 0"
            warn(f"checkpoint skipped: {exc}; bundle {bundle_id} restarts from {fallback}")
    return None


def remove(sweep: Location, bundle_id: str) -> None:
    """Delete every checkpoint of ``bundle_id`` (missing is fine)."""
    root(sweep).join(bundle_id).delete_tree()


def index(sweep: Location) -> dict[str, tuple[int, list[str]]]:
    """``{bundle id: (step, keys)}`` of every bundle with a checkpoint whose manifest reads (its newest such)."""
    out = {}
    base = root(sweep)
    for bundle_id in _subdirs(base):
        for name in _steps(base.join(bundle_id)):
            try:
                manifest = json.loads(base.join(bundle_id, name, MANIFEST).read_bytes())
                out[bundle_id] = (int(manifest["step"]), list(manifest["keys"]))
                break
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return out


def retire_landed(sweep: Location, landed: Collection[str]) -> list[str]:
    """Remove the checkpoints of bundles whose configurations all have rows, and bundle folders without any
    checkpoint that reads; return the bundle ids removed."""
    found = index(sweep)
    removed = []
    for bundle_id in _subdirs(root(sweep)):
        if bundle_id not in found or set(found[bundle_id][1]) <= set(landed):
            remove(sweep, bundle_id)
            removed.append(bundle_id)
    return removed


def regroup(plan, found: Mapping[str, tuple[int, list[str]]]):
    """The plan with every pending configuration that a checkpoint covers moved into a bundle of that checkpoint's
    id (its pending keys, in the checkpoint's order), so that the trial resumes it; the other bundles keep their
    remaining configurations (a bundle that lost some gets the id of what is left). Newest checkpoints first: a
    configuration in two checkpoints goes to the one with more steps."""
    from raysweep.plan import Bundle, bundle_id as make_id

    points = {k: p for b in plan.bundles.values() for k, p in zip(b.keys, b.points)}
    taken: dict[str, str] = {}
    resumed: list = []
    for bid, (_, keys) in sorted(found.items(), key=lambda item: -item[1][0]):
        mine = [k for k in keys if k in points and k not in taken]
        if not mine:
            continue
        taken.update({k: bid for k in mine})
        resumed.append(Bundle(bid, tuple(mine), tuple(points[k] for k in mine)))
    if not resumed:
        return plan
    bundles = {b.bundle_id: b for b in resumed}
    for b in plan.bundles.values():
        rest = [(k, p) for k, p in zip(b.keys, b.points) if k not in taken]
        if not rest:
            continue
        keys = tuple(k for k, _ in rest)
        bid = b.bundle_id if len(rest) == len(b.keys) else make_id(keys)
        bundles.setdefault(bid, Bundle(bid, keys, tuple(p for _, p in rest)))
    return replace(plan, bundles=bundles)


def due(every: Mapping | None, step: int, last_step: int, elapsed_s: float) -> bool:
    """Whether a report at ``step`` saves a checkpoint: ``every_steps`` steps or ``every_s`` seconds since the last
    one (``last_step``, ``elapsed_s``)."""
    if not every:
        return False
    n, s = every.get("every_steps"), every.get("every_s")
    return bool((n and step - last_step >= n) or (s is not None and elapsed_s >= s))
