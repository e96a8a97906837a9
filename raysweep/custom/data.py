"""The ``custom`` data family: any data set a user's factory makes, as a :class:`CustomTask`.

The factory (``experiment.factory``, ``"package.module:function"``) is called as ``factory(seed=data_seed,
**kwargs)`` and returns the four tensors ``(x_train, y_train, x_test, y_test)``, as a tuple or a mapping with those
keys (a mapping may add ``n_out``, the number of outputs, and ``dataset``, the label the rows record). ``x`` is
``[n, *input_shape]`` of any dtype (float features, int64 tokens...); ``y`` is int64 class labels ``[n]`` or
``[n, ...]`` (one per position, e.g. next-token prediction) for ``kind: classification``, float ``[n, ..., n_out]``
for ``kind: regression``; CPU tensors, floats finite, labels in ``[0, n_out)``, both splits' samples of one shape.
``n_out`` defaults to ``max label + 1`` (classification) or ``y``'s last dimension.
Float features are cast to the experiment's dtype; other dtypes are kept. The test set is the eval set, capped at
``eval_samples`` (its first samples). Training reads epochs over the training set (fixed data, no online stream).

Pure: torch and the user's factory; no Ray, no writes.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from raysweep import limits
from raysweep.custom.factory import load, one_line
from raysweep.custom.spec import plain
from raysweep.errors import DataError, FactoryError
from raysweep.fields import FrozenDict

KEYS = ("x_train", "y_train", "x_test", "y_test")
FINITE_CHUNK = 2**24  # elements per isfinite pass of the data check


@dataclass(frozen=True, eq=False, repr=False)
class CustomTask:
    """A user's data set: the attributes of :class:`raysweep.data.Task` that the general trainer reads, for inputs
    of any shape. ``input_shape`` is one sample's shape; ``dim`` its number of elements."""

    dataset: str
    kind: str
    input_shape: tuple[int, ...]
    n_out: int
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    params: Mapping[str, Any] = field(default_factory=dict)
    online = False
    block_size = None
    population = None

    @property
    def dim(self) -> int:
        return math.prod(self.input_shape)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_eval(self) -> int:
        return int(self.x_eval.shape[0])

    def __repr__(self) -> str:
        return (f"CustomTask(dataset={self.dataset!r}, kind={self.kind!r}, input_shape={self.input_shape}, "
                f"n_out={self.n_out}, n_train={self.n_train}, n_eval={self.n_eval})")


class OnlineTeacher:
    """A built-in online family's Task (poly_online, mlp_teacher, linear, ...) as the general trainer reads it:
    inputs of shape ``(dim,)``, no fixed training set (``n_train`` None), fresh blocks from ``draw_block``; every
    other attribute is the Task's."""

    def __init__(self, task):
        self.task = task
        self.input_shape = (int(task.dim),)

    def __getattr__(self, name: str):
        if name == "task":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.task, name)

    def __repr__(self) -> str:
        return f"OnlineTeacher({self.task!r})"


def _field(key: str) -> str:
    return f"experiment.{key}"


def tensors(experiment: Mapping[str, Any]) -> dict:
    """Call the data factory of the flat ``experiment`` and check what it returns: ``{x_train, y_train, x_test,
    y_test, n_out, dataset}`` on the CPU, as given. FactoryError naming ``experiment.factory`` otherwise."""
    target = experiment["factory"]
    fn = load(target, _field("factory"))
    kwargs = plain(experiment.get("kwargs") or {})
    try:
        out = fn(seed=int(experiment.get("data_seed") or 0), **kwargs)
    except (Exception, SystemExit) as exc:  # the user's code: any failure (or exit) is the factory's
        raise FactoryError(f"{_field('factory')}: {target}(seed=..., **kwargs) raised {one_line(exc)}") from exc
    if isinstance(out, Mapping):
        missing = [k for k in KEYS if k not in out]
        if missing:
            raise FactoryError(f"{_field('factory')}: {target} returned a mapping without {', '.join(missing)} "
                               f"(it must hold {', '.join(KEYS)})")
        data = dict(out)
    elif isinstance(out, (tuple, list)) and len(out) == 4:
        data = dict(zip(KEYS, out))
    else:
        raise FactoryError(f"{_field('factory')}: {target} must return (x_train, y_train, x_test, y_test) or a "
                           f"mapping with those keys, got {type(out).__name__}")
    kind = experiment.get("kind") or "classification"
    for split in ("train", "test"):
        _check_split(target, kind, split, data[f"x_{split}"], data[f"y_{split}"])
    for name in ("x", "y"):
        train, test = data[f"{name}_train"], data[f"{name}_test"]
        if train.shape[1:] != test.shape[1:]:
            raise FactoryError(f"{_field('factory')}: {target}: {name}_train and {name}_test samples differ in "
                               f"shape: {tuple(train.shape[1:])} and {tuple(test.shape[1:])}")
    x_train, x_test = data["x_train"], data["x_test"]
    if (x_train.dtype != x_test.dtype) and not (x_train.is_floating_point() and x_test.is_floating_point()):
        raise FactoryError(f"{_field('factory')}: {target}: x_train and x_test differ in dtype: {x_train.dtype} and "
                           f"{x_test.dtype} (float features are cast to the experiment's dtype, others kept)")
    n_out = data.get("n_out")
    labels = (int(min(data["y_train"].min(), data["y_test"].min())),
              int(max(data["y_train"].max(), data["y_test"].max()))) if kind == "classification" else None
    if labels is not None and labels[0] < 0:
        raise FactoryError(f"{_field('factory')}: {target}: class labels must be >= 0, got {labels[0]}")
    if n_out is None:
        n_out = labels[1] + 1 if labels is not None else int(data["y_train"].shape[-1])
        what = "max label + 1" if labels is not None else "y's last dimension"
    else:
        what = "n_out"
        if isinstance(n_out, bool) or not isinstance(n_out, numbers.Integral):
            raise FactoryError(f"{_field('factory')}: {target}: n_out must be an integer, got {n_out!r}")
    if not 1 <= int(n_out) <= limits.MAX_DIM:
        raise FactoryError(f"{_field('factory')}: {target}: the number of outputs ({what}) must be in [1, "
                           f"{limits.text(limits.MAX_DIM)}], got {int(n_out)}{limits.why(limits.MAX_DIM)}")
    if labels is not None and labels[1] >= int(n_out):
        raise FactoryError(f"{_field('factory')}: {target}: class labels must be in [0, n_out = {int(n_out)}), got "
                           f"{labels[1]}")
    if kind == "regression" and int(data["y_train"].shape[-1]) != int(n_out):
        raise FactoryError(f"{_field('factory')}: {target}: n_out ({int(n_out)}) must be y's last dimension for kind "
                           f"regression, got {tuple(data['y_train'].shape)}")
    data["n_out"] = int(n_out)
    data["dataset"] = str(data.get("dataset") or target.rpartition(":")[2])
    return data


def _check_split(target: str, kind: str, split: str, x: Any, y: Any) -> None:
    """One split's tensors: CPU tensors of the same number (> 0) of samples, finite floats, labels or targets of
    ``kind``; FactoryError naming ``experiment.factory`` otherwise."""
    where = f"{_field('factory')}: {target}"
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise FactoryError(f"{where}: x_{split} and y_{split} must be torch tensors, got {type(x).__name__} and "
                           f"{type(y).__name__}")
    for name, t in ((f"x_{split}", x), (f"y_{split}", y)):
        if t.device.type != "cpu":
            raise FactoryError(f"{where}: {name} must be a CPU tensor, got one on {t.device} (each trial moves the "
                               "data to its own device)")
        if t.is_complex():
            raise FactoryError(f"{where}: {name} must be real, got {t.dtype}")
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise FactoryError(f"{where}: x_{split} {tuple(x.shape)} and y_{split} {tuple(y.shape)} must hold the same "
                           "number (> 0) of samples")
    if kind == "classification" and y.dtype != torch.int64:
        raise FactoryError(f"{where}: y_{split} must be int64 class labels for kind classification, got {y.dtype} "
                           "(experiment.kind: regression for float targets)")
    if kind == "regression" and (not y.is_floating_point() or y.ndim < 2):
        raise FactoryError(f"{where}: y_{split} must be float targets [n, ..., n_out] for kind regression, got "
                           f"{y.dtype} {tuple(y.shape)} (one output: y[:, None])")
    for name, t in ((f"x_{split}", x), (f"y_{split}", y)):
        rows = max(1, FINITE_CHUNK // max(1, math.prod(t.shape[1:])))  # bounded memory for the isfinite mask
        if t.is_floating_point() and not all(bool(torch.isfinite(part).all()) for part in t.split(rows)):
            raise FactoryError(f"{where}: {name} holds NaN or inf values (every input and target must be finite)")


@functools.lru_cache(maxsize=4)
def _cached(factory: str, kwargs: Any, data_seed: int, kind: str) -> dict:
    return tensors({"factory": factory, "kwargs": kwargs, "data_seed": data_seed, "kind": kind})


def factory_tensors(experiment: Mapping[str, Any]) -> dict:
    """The factory's tensors of a flat experiment (or its family keys), built once per process."""
    kwargs = experiment.get("kwargs") or {}
    key = FrozenDict({k: _hashable(v) for k, v in dict(kwargs).items()})
    return _cached(experiment["factory"], key, int(experiment.get("data_seed") or 0),
                   experiment.get("kind") or "classification")


def _hashable(value):
    if isinstance(value, Mapping):
        return FrozenDict({k: _hashable(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def build_custom(experiment: Mapping[str, Any], *, device="cpu", dtype=torch.float32) -> CustomTask:
    """The family's builder (:mod:`raysweep.families`): the factory's tensors on ``device``, float features and
    regression targets in ``dtype``, the eval set the test set's first ``eval_samples``."""
    try:
        data = factory_tensors(experiment)
    except FactoryError as exc:
        raise DataError(str(exc)) from exc
    cap = experiment.get("eval_samples")
    n_eval = data["x_test"].shape[0] if not cap else min(int(cap), data["x_test"].shape[0])

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device=device)

    return CustomTask(
        dataset=data["dataset"], kind=experiment.get("kind") or "classification",
        input_shape=tuple(data["x_train"].shape[1:]), n_out=data["n_out"],
        x_eval=move(data["x_test"][:n_eval]), y_eval=move(data["y_test"][:n_eval]),
        x_train=move(data["x_train"]), y_train=move(data["y_train"]),
        params={"family": "custom", "factory": experiment["factory"], "data_seed": experiment.get("data_seed", 0)},
    )


def shape(params: Mapping[str, Any]) -> tuple[int, int]:
    """``(elements of one input, n_out)`` (raysweep.families' shape), from the built data."""
    data = factory_tensors(params)
    return math.prod(data["x_train"].shape[1:]), data["n_out"]


def n_train(params: Mapping[str, Any]) -> int:
    return int(factory_tensors(params)["x_train"].shape[0])


def n_test(params: Mapping[str, Any]) -> int:
    return int(factory_tensors(params)["x_test"].shape[0])
