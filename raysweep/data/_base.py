"""The `Task` every family builds, and the small pure rules the families share (seeds, stratification, options)."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysweep.errors import DataError
from raysweep.seeds import derive_seed

KINDS = ("regression", "classification")

# A sampler draws n samples (x [n, D], y [n, n_out]) as float64 CPU tensors from a CPU generator.
Sampler = Callable[[torch.Generator, int], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True, eq=False)
class Population:
    """The population law of a linear-Gaussian task, ``x ~ N(0, diag(lambdas))``, ``y = w_t.x + sqrt(noise_var)
    eps``: what makes the loss of a linear student exact (:mod:`raysweep.linear_theory`). Tensors on the task's
    device and dtype."""

    lambdas: torch.Tensor  # [D], the feature variances
    w_t: torch.Tensor  # [D], the effective teacher
    noise_var: float  # Var of the label noise (rho)

    def loss(self, w: torch.Tensor, mse_convention: str) -> torch.Tensor:
        """The expected loss of each student ``f(x) = w_k.x``, ``w`` ``[K, D]``: half_sum
        ``((w - w_t)^T Sigma (w - w_t) + rho) / 2``, study twice that (:func:`raysweep.linear_theory.population_loss`,
        batched over members)."""
        e = w - self.w_t
        half = 0.5 * ((e * e * self.lambdas).sum(-1) + self.noise_var)
        return half if mse_convention == "half_sum" else 2.0 * half


@dataclass(frozen=True, eq=False, repr=False)
class Task:
    """The data of one trial: a fixed eval set, and either a fixed training set or an online sample stream.

    Regression: ``y`` is float ``[n, n_out]``. Classification: ``y`` is int64 labels ``[n]`` in ``0..n_out-1``.
    Fixed data sets set ``x_train``/``y_train``; online families set ``block_size`` and draw fresh blocks with
    `draw_block`. ``teacher`` is the synthetic teacher (poly: ``w`` of shape ``[D]``; MLP teacher: its weight
    tuple, each ``[1, fan_in, fan_out]``) on the task's device/dtype, else None. ``params`` holds the resolved
    family options (defaults applied, ``data_seed`` included) and derived numbers such as the MLP teacher's
    ``y_scale``. ``sampler`` is internal: how `draw_block` draws (float64, CPU), None for fixed data sets.
    ``population`` is the exact law of a linear-Gaussian task (the linear families), else None.
    """

    dataset: str
    kind: str
    dim: int
    n_out: int
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    x_train: torch.Tensor | None = None
    y_train: torch.Tensor | None = None
    block_size: int | None = None
    teacher: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    sampler: Sampler | None = None
    population: Population | None = None

    def __post_init__(self) -> None:
        # Internal invariants: a builder that breaks them is a bug, reported with the data set's name.
        def bad(what: str) -> DataError:
            return DataError(f"{self.dataset}: {what}")

        if self.kind not in KINDS:
            raise bad(f"kind must be one of {KINDS}, got {self.kind!r}")
        if (self.block_size is None) == (self.x_train is None):
            raise bad("exactly one of block_size (online) and x_train (fixed) must be set")
        if (self.block_size is None) != (self.sampler is None):
            raise bad("an online task needs a sampler, a fixed one none")
        for name in ("eval", "train"):
            x, y = getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
            if x is None:
                continue
            if x.ndim != 2 or x.shape[1] != self.dim or y is None or y.shape[0] != x.shape[0]:
                raise bad(f"x_{name}/y_{name} must be [n, {self.dim}] and [n, ...], got "
                          f"{tuple(x.shape)} and {None if y is None else tuple(y.shape)}")
        object.__setattr__(self, "params", dict(self.params))  # a copy; a dict (not a proxy) so Task pickles

    @property
    def online(self) -> bool:
        """True when training data comes as fresh blocks from `draw_block` (no fixed training set)."""
        return self.block_size is not None

    @property
    def n_train(self) -> int | None:
        """Number of training samples of a fixed data set; None when online."""
        return None if self.x_train is None else int(self.x_train.shape[0])

    @property
    def n_eval(self) -> int:
        return int(self.x_eval.shape[0])

    @property
    def device(self) -> torch.device:
        return self.x_eval.device

    @property
    def dtype(self) -> torch.dtype:
        return self.x_eval.dtype

    def draw_block(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Online families only: ``block_size`` fresh samples ``(x, y)`` on the task's device/dtype.

        Drawn in float64 on the CPU from ``generator`` (a CPU ``torch.Generator``, advanced by the draw), then
        cast: the same generator state gives the same block on any device, and float32 blocks are the float64
        ones rounded. Raises DataError for fixed data sets.
        """
        if self.sampler is None:
            raise DataError(
                f"draw_block: {self.dataset} is a fixed data set (n_train={self.n_train}); "
                "iterate over x_train/y_train instead"
            )
        if generator.device.type != "cpu":
            raise DataError(f"draw_block: the generator must be a CPU torch.Generator, got one on {generator.device}")
        x, y = self.sampler(generator, int(self.block_size))
        return x.to(device=self.device, dtype=self.dtype), y.to(device=self.device, dtype=self.dtype)

    def __repr__(self) -> str:
        size = f"block_size={self.block_size}" if self.online else f"n_train={self.n_train}"
        return (f"Task(dataset={self.dataset!r}, kind={self.kind!r}, dim={self.dim}, n_out={self.n_out}, "
                f"n_eval={self.n_eval}, {size}, dtype={self.dtype}, device={self.device})")


def generator(seed: int, tag: str) -> torch.Generator:
    """A CPU torch generator seeded with ``derive_seed(seed, tag)``."""
    return torch.Generator().manual_seed(derive_seed(seed, tag))


def stratified_choice(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` distinct indices into ``labels``, sorted ascending, stratified by label.

    Class c (with n_c members out of ``total``) gets ``floor(n * n_c / total)`` indices, plus one for each of the
    ``n - sum(floors)`` classes with the largest remainders ``n * n_c mod total`` (ties: smaller label first), so
    the total is exactly ``n``. Within a class the members are a uniform random subset drawn with
    ``np.random.default_rng(seed)``, classes visited in ascending label order. ``0 <= n <= len(labels)``.
    """
    labels = np.asarray(labels)
    total = labels.shape[0]
    if not 0 <= n <= total:
        raise ValueError(f"stratified_choice: n must be in [0, {total}], got {n}")
    classes, counts = np.unique(labels, return_counts=True)
    quota = [n * int(c) // total for c in counts]
    remainder = [n * int(c) % total for c in counts]
    for i in sorted(range(len(classes)), key=lambda i: (-remainder[i], i))[: n - sum(quota)]:
        quota[i] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, quota)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


class Options:
    """Reads the experiment mapping for one family: typed values with defaults, errors naming the key."""

    def __init__(self, experiment: Mapping[str, Any], family: str):
        self.experiment = experiment
        self.family = family
        self.resolved: dict[str, Any] = {}

    def _error(self, key: str, must: str, value: Any) -> DataError:
        return DataError(f"experiment.{key}: must be {must}, got {value!r} (family {self.family})")

    def _raw(self, key: str, default: Any, required: bool) -> Any:
        if key in self.experiment and self.experiment[key] is not None:
            return self.experiment[key]
        if required:
            raise DataError(f"experiment.{key}: required by family {self.family}, missing")
        return default

    def int(self, key: str, default: int | None = None, *, min_value: int = 1, required: bool = False) -> int:
        value = self._raw(key, default, required)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < min_value:
            raise self._error(key, f"an int >= {min_value}", value)
        self.resolved[key] = int(value)
        return int(value)

    def float(self, key: str, default: float, *, min_value: float = 0.0, open_min: bool = False,
              max_value: float = math.inf, open_max: bool = False) -> float:
        value = self._raw(key, default, False)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > min_value if open_min else value >= min_value) and (
                value < max_value if open_max else value <= max_value)
        if not ok:
            lo = f"{'>' if open_min else '>='} {min_value:g}"
            hi = "" if math.isinf(max_value) else f" and {'<' if open_max else '<='} {max_value:g}"
            raise self._error(key, f"a finite number {lo}{hi}", value)
        self.resolved[key] = float(value)
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self._raw(key, default, False)
        if not isinstance(value, bool):
            raise self._error(key, "true or false", value)
        self.resolved[key] = value
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._raw(key, default, False)
        if value not in choices:
            raise self._error(key, f"one of {choices}", value)
        self.resolved[key] = value
        return value

    def optional_int(self, key: str, default: int | None) -> int | None:
        """``None`` (absent or null) gives ``default``; otherwise an int >= 1."""
        if self.experiment.get(key) is None:
            self.resolved[key] = default
            return default
        return self.int(key)

    def path(self, key: str = "path") -> Path:
        """A required file or folder path (str or os.PathLike), ``~`` expanded; relative paths stay relative to
        the process's working directory."""
        value = self._raw(key, None, True)
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise self._error(key, "a file or folder path", value)
        self.resolved[key] = str(value)
        return Path(value).expanduser()

    def seed(self) -> int:
        """``data_seed``: any int, default 0."""
        return self.int("data_seed", 0, min_value=-(2**63))


def to_tensor_x(x: np.ndarray | torch.Tensor, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Features on ``device`` in ``dtype``; uint8 pixel arrays become ``pixels / 255`` (moved as uint8 first)."""
    t = torch.as_tensor(x)
    if t.dtype == torch.uint8:
        return t.to(device=device).to(dtype).div_(255.0)
    return t.to(device=device, dtype=dtype)


def to_tensor_labels(y: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """int64 labels on ``device``, always a fresh copy (never aliasing a cached array)."""
    return torch.tensor(np.asarray(y, dtype=np.int64), device=device)


def eval_indices(labels: np.ndarray, n_eval: int | None, seed: int) -> np.ndarray:
    """The eval subset of a test set: all of it, in file order, when ``n_eval`` is None or >= its size; otherwise
    ``stratified_choice(labels, n_eval, derive_seed(data_seed, "eval"))`` (sorted, so file order within it)."""
    if n_eval is None or n_eval >= len(labels):
        return np.arange(len(labels))
    return stratified_choice(labels, n_eval, derive_seed(seed, "eval"))
