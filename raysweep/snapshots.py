"""Weight snapshots (``experiment.snapshots``): each member's weights at chosen steps, in safetensors files.

Layout under the sweep folder (any storage :mod:`raysweep.storage` opens, object stores included; every file is
written atomically, and never read with pickle)::

    <sweep>/snapshots/<config_key>.safetensors          one file per member (configuration)
    <sweep>/snapshots/theta0/<seed>_<widths>_<dtype>.safetensors   theta_0, once per seed (and model shape, dtype)

A member's file holds, for every snapshot step ``s`` it reached, the tensors ``delta.<s>.<l>`` = ``W_l(s) -
W_l(0)`` (layer ``l = 0 .. L-1``, shape ``[fan_in, fan_out]``, the training dtype, computed in that dtype); its
metadata (strings) says ``kind`` (``layers``), ``config_key``, ``seed``, ``widths`` (JSON list), ``dtype``, ``steps`` (JSON list),
``point`` (the configuration, JSON) and ``theta0`` (the name of its theta_0 file). A theta_0 file holds
``theta0.<l>``. :func:`read_member` reads both back: ``weights(s)`` is ``theta_0 + delta`` (exact to one rounding
of the dtype; the stored tensors themselves round-trip bit for bit).

A model factory's member (``experiment.model: {factory: ...}``, :mod:`raysweep.custom`) is named by parameter: its
file holds ``delta.<s>.<name>`` = ``p(s) - p(0)`` for every parameter ``name`` (``named_parameters``' names, the
shape of the parameter, the training dtype; the tensors the module holds, :mod:`raysweep.custom.mup`'s forward
multipliers not applied; buffers are not kept), its metadata says ``kind`` ``parameters`` (an MLP's: ``layers``),
``names`` (JSON list, the parameters' order) and, as ``widths``, the parameters' shapes (JSON list of lists). Its
theta_0 file (``theta0.<name>``) is ``<seed>_<tag>_<dtype>.safetensors``, ``tag`` the first 16 hex digits of the
SHA-256 of the canonical JSON of the model mapping (factory, kwargs, readout, base_width, centred), ``width``,
``depth``, ``gamma``, ``parametrization`` and the shapes (:func:`factory_init_name`): two factories, kwargs,
widths, depths, gammas or parametrizations never share a theta_0 file. :func:`read_member` gives such a member's
``theta0``, ``deltas[s]`` and ``weights(s)`` as name -> array mappings (``names`` non-empty).

A member writes its file when it reaches a terminal status (completed or diverged; a diverged member keeps the
snapshots of the steps before its ``diverged_step``); a failed or pruned member writes none. A configuration run
again writes the same file again (the weights are deterministic), so a relaunch leaves one file per member.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raysweep import storage
from raysweep.fields import canonical_json
from raysweep.instrument_spec import snapshot_steps

FOLDER = "snapshots"
INIT_FOLDER = "theta0"
SUFFIX = ".safetensors"
FORMAT = "1"

__all__ = ["FOLDER", "MemberSnapshots", "SnapshotRecorder", "factory_init_name", "init_name", "member_keys",
           "read_member", "write_init", "write_member"]

LAYERS, PARAMETERS = "layers", "parameters"  # the metadata ``kind``: an MLP's layers, a factory's named parameters


def init_name(seed: int, widths: Sequence[int], dtype: str) -> str:
    """The file name of the theta_0 of ``seed`` for a model of ``widths`` in ``dtype``."""
    return f"{int(seed)}_{'x'.join(str(int(w)) for w in widths)}_{dtype}{SUFFIX}"


def factory_init_name(seed: int, model: Mapping[str, Any], point: Mapping[str, Any],
                      shapes: Sequence[Sequence[int]], dtype: str) -> str:
    """The file name of the theta_0 of ``seed`` for the model factory ``model`` (the ``experiment.model`` mapping)
    built at ``point``'s width, depth, gamma and parametrization, with parameters of ``shapes``, in ``dtype``."""
    key = {"model": model, "width": int(point["width"]), "depth": int(point["depth"]), "gamma": float(point["gamma"]),
           "parametrization": str(point["parametrization"]), "shapes": _shapes(shapes)}
    tag = hashlib.sha256(canonical_json(key).encode()).hexdigest()[:16]
    return f"{int(seed)}_{tag}_{dtype}{SUFFIX}"


def _shapes(widths) -> list:
    """Widths (ints, an MLP) or parameter shapes (sequences, a factory) as plain JSON-able ints."""
    return [[int(n) for n in w] if isinstance(w, Sequence) else int(w) for w in widths]


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


def write_init(sweep, seed: int, widths: Sequence, dtype: str, weights: Sequence[np.ndarray], *,
               names: Sequence[str] | None = None, name: str | None = None) -> str:
    """Write theta_0 of ``seed`` (one array per layer, or per parameter of ``names`` with ``widths`` their shapes)
    atomically, as ``name`` (default :func:`init_name`); returns its file name."""
    name = name or init_name(seed, widths, dtype)
    meta = {"format": FORMAT, "kind": PARAMETERS if names else LAYERS, "seed": str(int(seed)),
            "widths": json.dumps(_shapes(widths)), "dtype": dtype,
            **({"names": json.dumps(list(names))} if names else {})}
    labels = list(names) if names else range(len(weights))
    data = _save({f"theta0.{l}": w for l, w in zip(labels, weights)}, meta)
    folder = _folder(sweep).join(INIT_FOLDER)
    folder.mkdir()
    storage.write_bytes_atomic(folder.join(name), data)
    return name


def write_member(sweep, config_key: str, *, seed: int, widths: Sequence, dtype: str, point: Mapping[str, Any],
                 deltas: Mapping[int, Sequence[np.ndarray]], names: Sequence[str] | None = None,
                 theta0: str | None = None) -> None:
    """Write a member's snapshots, ``deltas`` (step -> per-layer ``W(step) - theta_0``, or per parameter of
    ``names``), atomically; ``theta0``: its theta_0 file's name (default :func:`init_name`)."""
    steps = sorted(int(s) for s in deltas)
    meta = {
        "format": FORMAT, "kind": PARAMETERS if names else LAYERS, "config_key": config_key, "seed": str(int(seed)),
        "widths": json.dumps(_shapes(widths)), "dtype": dtype, "steps": json.dumps(steps),
        "point": json.dumps(dict(point), sort_keys=True), "theta0": theta0 or init_name(seed, widths, dtype),
        **({"names": json.dumps(list(names))} if names else {}),
    }  # fmt: skip
    tensors = {f"delta.{s}.{l}": w for s in steps for l, w in zip(names or range(len(deltas[s])), deltas[s])}
    folder = _folder(sweep)
    folder.mkdir()
    storage.write_bytes_atomic(folder.join(config_key + SUFFIX), _save(tensors, meta))


def member_keys(sweep) -> list[str]:
    """The config keys that have a snapshot file, sorted."""
    return [loc.name[: -len(SUFFIX)] for loc in _folder(sweep).files(SUFFIX) if not loc.name.startswith(".")]


@dataclass(frozen=True)
class MemberSnapshots:
    """One member's snapshots as read back: ``deltas[step]`` and ``theta0`` are per-layer arrays (an MLP), or
    name -> array mappings in ``names`` order (a model factory's member; ``widths``: the parameters' shapes)."""

    config_key: str
    seed: int
    widths: tuple
    dtype: str
    point: dict
    steps: tuple[int, ...]
    theta0: tuple[np.ndarray, ...] | dict[str, np.ndarray]
    deltas: dict[int, tuple[np.ndarray, ...]] | dict[int, dict[str, np.ndarray]]
    names: tuple[str, ...] = ()

    @property
    def named(self) -> bool:
        """A model factory's member: tensors named by parameter."""
        return bool(self.names)

    def weights(self, step: int) -> list[np.ndarray] | dict[str, np.ndarray]:
        """The weights at snapshot ``step``: ``theta_0 + delta`` per layer (or per parameter name), in the dtype."""
        if self.named:
            return {n: self.theta0[n] + self.deltas[step][n] for n in self.names}
        return [w0 + d for w0, d in zip(self.theta0, self.deltas[step])]


def read_member(sweep, config_key: str) -> MemberSnapshots:
    """Read the snapshots of ``config_key`` (and its theta_0) back from ``<sweep>/snapshots/``."""
    folder = _folder(sweep)
    tensors, meta = _load(folder.join(config_key + SUFFIX).read_bytes())
    init, _ = _load(folder.join(INIT_FOLDER, meta["theta0"]).read_bytes())
    steps = tuple(json.loads(meta["steps"]))
    if meta.get("kind", LAYERS) == PARAMETERS:
        names = tuple(json.loads(meta["names"]))
        return MemberSnapshots(
            config_key=meta["config_key"], seed=int(meta["seed"]), dtype=meta["dtype"], point=json.loads(meta["point"]),
            widths=tuple(tuple(w) for w in json.loads(meta["widths"])), steps=steps,
            theta0={n: init[f"theta0.{n}"] for n in names},
            deltas={s: {n: tensors[f"delta.{s}.{n}"] for n in names} for s in steps}, names=names,
        )  # fmt: skip
    widths = tuple(json.loads(meta["widths"]))
    depth = len(widths) - 1
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
    It only reads the weights: no training number moves. A model factory's bundle (``model``: its
    ``experiment.model`` mapping) names its tensors: ``names`` the parameters in order, ``widths`` their shapes; its
    members' theta_0 files are :func:`factory_init_name`'s.
    """

    def __init__(self, sweep, keys: Sequence[str], points: Sequence[Mapping[str, Any]], option, total_steps: int,
                 widths: Sequence, dtype: str, *, names: Sequence[str] | None = None,
                 model: Mapping[str, Any] | None = None):
        if sweep is None:
            raise ValueError("experiment.snapshots is on, but the plan names no sweep folder to write them to")
        if (names is None) != (model is None):
            raise ValueError("a model factory's snapshots need both the parameter names and the model mapping")
        self.sweep, self.keys, self.points = sweep, list(keys), list(points)
        self.steps = set(snapshot_steps(option, total_steps))
        self.names = list(names) if names is not None else None
        self.widths, self.dtype = _shapes(widths), dtype
        self.count = len(self.names) if self.names is not None else len(self.widths) - 1  # tensors per member
        self.init_names = [init_name(p["seed"], self.widths, dtype) if model is None else
                           factory_init_name(p["seed"], model, p, self.widths, dtype) for p in self.points]
        self.theta0: dict[int, list[np.ndarray]] = {}
        self.deltas: dict[int, dict[int, list[np.ndarray]]] = {i: {} for i in range(len(self.keys))}
        self.written_inits: set[str] = set()

    def record(self, step: int, members: Sequence[int], weights) -> None:
        """``weights``: the stacked per-layer tensors (per parameter, in ``names`` order) of the members alive,
        ``members`` their bundle indices."""
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
        for name, value in held.items():
            kind, i, s, l = (name.split(".") + [""] * 4)[:4]
            if kind == "snapshot" and int(i) in self.deltas:
                layers = self.deltas[int(i)].setdefault(int(s), [None] * self.count)
                layers[int(l)] = np.asarray(value)

    def write(self, i: int, diverged_step: int | None = None) -> None:
        """Write member ``i``'s file: the snapshots before its ``diverged_step`` (all of them when None)."""
        seed, init = int(self.points[i]["seed"]), self.init_names[i]
        if init not in self.written_inits:
            write_init(self.sweep, seed, self.widths, self.dtype, self.theta0[i], names=self.names, name=init)
            self.written_inits.add(init)
        deltas = self.deltas.pop(i)
        if diverged_step is not None:
            deltas = {s: d for s, d in deltas.items() if s < diverged_step}
        write_member(self.sweep, self.keys[i], seed=seed, widths=self.widths, dtype=self.dtype,
                     point=self.points[i], deltas=deltas, names=self.names, theta0=init)
