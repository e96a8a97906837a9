"""Weight snapshots (``experiment.snapshots``): each member's weights at chosen steps, in safetensors files.

Layout under the sweep folder (any storage :mod:`raysweep.storage` opens, object stores included; every file is
written atomically, and never read with pickle)::

    <sweep>/snapshots/<config_key>.safetensors          one file per member (configuration)
    <sweep>/snapshots/theta0/<seed>_<widths>_<dtype>.safetensors   theta_0, once per seed (and model shape, dtype)

A member's file holds, for every snapshot step ``s`` it reached, the tensors ``delta.<s>.<l>`` = ``W_l(s) -
W_l(0)`` (layer ``l = 0 .. L-1``, shape ``[fan_in, fan_out]``, the training dtype, computed in that dtype); its
metadata (strings) says ``config_key``, ``seed``, ``widths`` (JSON list), ``dtype``, ``steps`` (JSON list),
``point`` (the configuration, JSON) and ``theta0`` (the name of its theta_0 file). A theta_0 file holds
``theta0.<l>``. :func:`read_member` reads both back: ``weights(s)`` is ``theta_0 + delta`` (exact to one rounding
of the dtype; the stored tensors themselves round-trip bit for bit).

A member writes its file when it reaches a terminal status (completed or diverged; a diverged member keeps the
snapshots of the steps before its ``diverged_step``); a failed or pruned member writes none. A configuration run
again writes the same file again (the weights are deterministic), so a relaunch leaves one file per member.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raysweep import storage
from raysweep.instrument_spec import snapshot_steps

FOLDER = "snapshots"
INIT_FOLDER = "theta0"
SUFFIX = ".safetensors"
FORMAT = "1"

__all__ = ["FOLDER", "MemberSnapshots", "SnapshotRecorder", "init_name", "member_keys", "read_member",
           "write_init", "write_member"]


def init_name(seed: int, widths: Sequence[int], dtype: str) -> str:
    """The file name of the theta_0 of ``seed`` for a model of ``widths`` in ``dtype``."""
    return f"{int(seed)}_{'x'.join(str(int(w)) for w in widths)}_{dtype}{SUFFIX}"


def _folder(sweep) -> storage.Location:
    return storage.resolve(sweep).join(FOLDER)


def _save(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    from safetensors.numpy import save  # the file format; a light import, here where it is used

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=dict(metadata))


def _load(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and metadata of a safetensors file's bytes."""
    from safetensors.numpy import load  # see _save

    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    return load(data), dict(header.get("__metadata__") or {})


def write_init(sweep, seed: int, widths: Sequence[int], dtype: str, weights: Sequence[np.ndarray]) -> str:
    """Write theta_0 of ``seed`` (one array per layer) atomically; returns its file name."""
    name = init_name(seed, widths, dtype)
    meta = {"format": FORMAT, "seed": str(int(seed)), "widths": json.dumps([int(w) for w in widths]), "dtype": dtype}
    data = _save({f"theta0.{l}": w for l, w in enumerate(weights)}, meta)
    folder = _folder(sweep).join(INIT_FOLDER)
    folder.mkdir()
    storage.write_bytes_atomic(folder.join(name), data)
    return name


def write_member(sweep, config_key: str, *, seed: int, widths: Sequence[int], dtype: str, point: Mapping[str, Any],
                 deltas: Mapping[int, Sequence[np.ndarray]]) -> None:
    """Write a member's snapshots, ``deltas`` (step -> per-layer ``W(step) - theta_0``), atomically."""
    steps = sorted(int(s) for s in deltas)
    meta = {
        "format": FORMAT, "config_key": config_key, "seed": str(int(seed)),
        "widths": json.dumps([int(w) for w in widths]), "dtype": dtype, "steps": json.dumps(steps),
        "point": json.dumps(dict(point), sort_keys=True), "theta0": init_name(seed, widths, dtype),
    }  # fmt: skip
    tensors = {f"delta.{s}.{l}": w for s in steps for l, w in enumerate(deltas[s])}
    folder = _folder(sweep)
    folder.mkdir()
    storage.write_bytes_atomic(folder.join(config_key + SUFFIX), _save(tensors, meta))


def member_keys(sweep) -> list[str]:
    """The config keys that have a snapshot file, sorted."""
    return [loc.name[: -len(SUFFIX)] for loc in _folder(sweep).files(SUFFIX) if not loc.name.startswith(".")]


@dataclass(frozen=True)
class MemberSnapshots:
    """One member's snapshots as read back: ``deltas[step]`` and ``theta0`` are per-layer arrays."""

    config_key: str
    seed: int
    widths: tuple[int, ...]
    dtype: str
    point: dict
    steps: tuple[int, ...]
    theta0: tuple[np.ndarray, ...]
    deltas: dict[int, tuple[np.ndarray, ...]]

    def weights(self, step: int) -> list[np.ndarray]:
        """The weights at snapshot ``step``: ``theta_0 + delta`` per layer, in the dtype."""
        return [w0 + d for w0, d in zip(self.theta0, self.deltas[step])]


def read_member(sweep, config_key: str) -> MemberSnapshots:
    """Read the snapshots of ``config_key`` (and its theta_0) back from ``<sweep>/snapshots/``."""
    folder = _folder(sweep)
    tensors, meta = _load(folder.join(config_key + SUFFIX).read_bytes())
    init, _ = _load(folder.join(INIT_FOLDER, meta["theta0"]).read_bytes())
    widths = tuple(json.loads(meta["widths"]))
    depth = len(widths) - 1
    steps = tuple(json.loads(meta["steps"]))
    return MemberSnapshots(
        config_key=meta["config_key"], seed=int(meta["seed"]), widths=widths, dtype=meta["dtype"],
        point=json.loads(meta["point"]), steps=steps,
        theta0=tuple(init[f"theta0.{l}"] for l in range(depth)),
        deltas={s: tuple(tensors[f"delta.{s}.{l}"] for l in range(depth)) for s in steps},
    )  # fmt: skip


class SnapshotRecorder:
    """The trainer's snapshot callback (``train_bundle(..., on_weights=recorder.record)``) for one bundle.

    :meth:`record` keeps each member's ``W(step) - theta_0`` on the host at the snapshot steps (and theta_0 at
    step 0); :meth:`write` writes a member's file (and its seed's theta_0 file, once per bundle) when it ends.
    It only reads the weights: no training number moves.
    """

    def __init__(self, sweep, keys: Sequence[str], points: Sequence[Mapping[str, Any]], option, total_steps: int,
                 widths: Sequence[int], dtype: str):
        if sweep is None:
            raise ValueError("experiment.snapshots is on, but the plan names no sweep folder to write them to")
        self.sweep, self.keys, self.points = sweep, list(keys), list(points)
        self.steps = set(snapshot_steps(option, total_steps))
        self.widths, self.dtype = [int(w) for w in widths], dtype
        self.theta0: dict[int, list[np.ndarray]] = {}
        self.deltas: dict[int, dict[int, list[np.ndarray]]] = {i: {} for i in range(len(self.keys))}
        self.written_seeds: set[int] = set()

    def record(self, step: int, members: Sequence[int], weights) -> None:
        """``weights``: the stacked per-layer tensors of the members alive, ``members`` their bundle indices."""
        for slot, i in enumerate(members):
            host = [w[slot].detach().cpu().numpy() for w in weights]
            if step == 0:
                self.theta0[i] = [w.copy() for w in host]
            if step in self.steps:
                self.deltas[i][step] = [w - w0 for w, w0 in zip(host, self.theta0[i])]

    def held(self) -> dict[str, np.ndarray]:
        """The snapshots recorded and not written yet, ``snapshot.<member>.<step>.<layer>``: what a checkpoint of
        the bundle keeps (:meth:`restore` puts them back), so a resumed bundle writes every snapshot."""
        return {f"snapshot.{i}.{s}.{l}": d for i, by_step in self.deltas.items() for s, ds in by_step.items()
                for l, d in enumerate(ds)}

    def restore(self, held: Mapping[str, Any]) -> None:
        """Take back what :meth:`held` gave (arrays or tensors; other names are ignored)."""
        depth = len(self.widths) - 1
        for name, value in held.items():
            kind, i, s, l = (name.split(".") + [""] * 4)[:4]
            if kind == "snapshot" and int(i) in self.deltas:
                layers = self.deltas[int(i)].setdefault(int(s), [None] * depth)
                layers[int(l)] = np.asarray(value)

    def write(self, i: int, diverged_step: int | None = None) -> None:
        """Write member ``i``'s file: the snapshots before its ``diverged_step`` (all of them when None)."""
        seed = int(self.points[i]["seed"])
        if seed not in self.written_seeds:
            write_init(self.sweep, seed, self.widths, self.dtype, self.theta0[i])
            self.written_seeds.add(seed)
        deltas = self.deltas.pop(i)
        if diverged_step is not None:
            deltas = {s: d for s, d in deltas.items() if s < diverged_step}
        write_member(self.sweep, self.keys[i], seed=seed, widths=self.widths, dtype=self.dtype,
                     point=self.points[i], deltas=deltas)
