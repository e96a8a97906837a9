"""The experiment families: one record per family, read by the spec parser, the data builders, autobatch's sizing
and the planner.

A :class:`Family` holds the family's own experiment keys (default or :data:`REQUIRED`, and the check of a spec
value), its kind, the shape of its data (input dimension, number of outputs), whether it trains online (fresh
samples) or on a fixed training set, the size of that training set (an upper bound for file data sets), the
default of ``experiment.eval_samples`` and what a null ``eval_samples`` means to the builder, and the builder
itself as a ``"module:function"`` string, imported when first called (this module imports no torch).

Adding a family: one data module with a builder ``build(experiment, *, device, dtype, **build_args) -> Task``
(``raysweep.data._base.Task``), and one entry in :data:`REGISTRY`.

The accessors (:func:`shape`, :func:`is_online`, :func:`n_train`, :func:`n_eval`, :func:`params`) take the typed
``raysweep.space.Experiment`` or a flat experiment mapping (``Experiment.as_dict()``: family keys beside the
common ones; a missing family key takes its default). Stdlib only.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from raysweep import fields as f
from raysweep import limits
from raysweep.custom.spec import check_factory, check_kwargs

__all__ = [
    "CLASSIFICATION", "EVAL_CAP", "FAMILIES", "KINDS", "MAX_SPECTRUM_DECAY", "REGISTRY", "REGRESSION", "REQUIRED",
    "TEACHER_PARAMETRIZATIONS", "Family", "Key", "check_params", "get", "is_online", "kind", "n_eval", "n_train",
    "params", "shape",
]  # fmt: skip

REQUIRED = f.Marker("<required>")  # a key without a default: the spec must give it
KINDS = ("regression", "classification")
TEACHER_PARAMETRIZATIONS = ("SP", "muP")
MAX_LABEL_NOISE = 1e6  # label noise std, against targets of order one
# linear families: the spectrum's decay alpha, lambda_i = i^-alpha. At alpha <= 32 the smallest variance D^-alpha is a
# normal float64 for every D <= limits.MAX_DIM (32 ln(2^31) = 688 < 1022 ln 2 = 708), so the spectrum, the teacher
# (w*_i <= i^(alpha/2)) and y are finite
MAX_SPECTRUM_DECAY = 32.0
EVAL_CAP = 10_000  # MNIST families: a null eval_samples evaluates the test set, capped at this many samples
DIGITS_SAMPLES = 1797  # sklearn's bundled digits
MNIST_TRAIN, MNIST1M_TRAIN = 60_000, 1_000_000  # training-set sizes (MNIST-1M: an upper bound of the converter's)


class Key(NamedTuple):
    """A family key: its default (or :data:`REQUIRED`) and ``check(path, value) -> value`` (raises a FieldError)."""

    default: Any
    check: Callable[[str, Any], Any]


@dataclass(frozen=True)
class Family:
    """One experiment family (see the module docstring).

    ``shape``, ``online`` and ``n_train`` are functions of the family keys (defaults applied). ``n_train`` is the
    training set (online: the block of fresh samples drawn at once; a file data set: an upper bound of its
    training set). ``eval_samples`` is the spec default of ``experiment.eval_samples``; ``eval_default`` the eval
    samples the builder takes when it is null (None: the whole test set); ``n_test`` bounds the test set a file
    family evaluates on (None: the eval set is drawn, ``eval_samples`` of them). ``check_source``
    (``"module:function"``, called with the flat experiment) checks the local files the family reads, None when it
    reads none.
    """

    name: str
    kind: str
    builder: str
    keys: Mapping[str, Key]
    shape: Callable[[Mapping[str, Any]], tuple[int, int]]
    online: Callable[[Mapping[str, Any]], bool]
    n_train: Callable[[Mapping[str, Any]], int]
    eval_samples: int | None
    eval_default: int | None
    n_test: Callable[[Mapping[str, Any]], int] | None = None
    build_args: Mapping[str, Any] = field(default_factory=dict)
    check_source: str | None = None
    kind_key: str | None = None  # the family key that gives the kind (custom), else the static ``kind``

    @property
    def defaults(self) -> dict[str, Any]:
        """The keys that have a default, with it."""
        return {k: key.default for k, key in self.keys.items() if key.default is not REQUIRED}

    @property
    def required(self) -> frozenset[str]:
        return frozenset(k for k, key in self.keys.items() if key.default is REQUIRED)

    def build(self, experiment: Mapping[str, Any], *, device, dtype):
        """The family's ``Task`` of the flat ``experiment`` (imports the builder's module)."""
        return _resolve(self.builder)(experiment, device=device, dtype=dtype, **self.build_args)

    def check_files(self, experiment: Mapping[str, Any]) -> None:
        """Check the local files the flat ``experiment`` reads, without decoding them (no-op for a family that
        reads none); the checker raises DataError naming the file."""
        if self.check_source is not None:
            _resolve(self.check_source)(experiment)


def _lazy(target: str) -> Callable:
    """``target`` (``"module:function"``) called with the same arguments, imported at the first call."""
    return lambda *args, **kwargs: _resolve(target)(*args, **kwargs)


def _resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


_size = lambda p, v: f.as_int(p, v, ge=1, le=limits.MAX_DIM)  # noqa: E731  a matrix dimension
_SYNTHETIC = {
    "dim": Key(32, _size),
    "n_train": Key(4096, _size),
    "noise": Key(0.0, lambda p, v: f.as_float(p, v, ge=0, le=MAX_LABEL_NOISE)),
}
_DEGREE = Key(2, lambda p, v: f.as_int(p, v, ge=1, le=limits.MAX_DEGREE))
# the power-law linear teacher (raysweep.linear_theory); the published settings D = 500, alpha = 2, beta = 0.25
_LINEAR = {
    "dim": Key(500, _size),
    "n_train": Key(4096, _size),
    "online": Key(True, f.as_bool),
    "alpha": Key(2.0, lambda p, v: f.as_float(p, v, ge=0, le=MAX_SPECTRUM_DECAY)),
    "beta": Key(0.25, f.as_float),
}
_PATH = Key(REQUIRED, f.as_str)


def _synthetic(name: str, builder: str, keys: dict, online_rule: Callable, **build_args) -> Family:
    return Family(
        name, "regression", builder, keys, shape=lambda p: (int(p["dim"]), 1), online=online_rule,
        n_train=lambda p: int(p["n_train"]), eval_samples=2048, eval_default=2048, build_args=build_args,
    )


def _mnist(name: str, builder: str, keys: dict, n_train: Callable, **build_args) -> Family:
    return Family(
        name, "classification", builder, keys, shape=lambda p: (784, 10), online=lambda p: False, n_train=n_train,
        eval_samples=None, eval_default=EVAL_CAP, n_test=lambda p: EVAL_CAP, build_args=build_args,
        check_source="raysweep.data.mnist:check_experiment_source",
    )


REGISTRY: dict[str, Family] = {fam.name: fam for fam in (
    _synthetic("poly_online", "raysweep.data.synthetic:build_poly", {**_SYNTHETIC, "degree": _DEGREE}, lambda p: True,
               online=True),
    _synthetic("poly_fixed", "raysweep.data.synthetic:build_poly",
               {**_SYNTHETIC, "n_train": Key(1024, _size), "degree": _DEGREE}, lambda p: False, online=False),
    _synthetic("mlp_teacher", "raysweep.data.synthetic:build_mlp_teacher", {
        **_SYNTHETIC,
        "teacher_width": Key(64, _size),
        "teacher_depth": Key(2, lambda p, v: f.as_int(p, v, ge=1, le=limits.MAX_DEPTH)),
        "teacher_gamma": Key(1.0, lambda p, v: f.as_float(p, v, gt=0)),
        "teacher_parametrization": Key("muP", lambda p, v: f.as_choice(p, v, TEACHER_PARAMETRIZATIONS)),
        "teacher_normalize": Key(True, f.as_bool),
        "online": Key(True, f.as_bool),
    }, lambda p: bool(p["online"])),
    _synthetic("linear", "raysweep.data.synthetic:build_linear", _LINEAR, lambda p: bool(p["online"]), noisy=False),
    _synthetic("noisy_linear", "raysweep.data.synthetic:build_linear",
               {**_LINEAR, "rho": Key(0.25, lambda p, v: f.as_float(p, v, ge=0, lt=1))}, lambda p: bool(p["online"]),
               noisy=True),
    Family(
        "digits", "classification", "raysweep.data.digits:build_digits",
        {"test_fraction": Key(0.2, lambda p, v: f.as_float(p, v, gt=0, lt=1))},
        shape=lambda p: (64, 10), online=lambda p: False, n_train=lambda p: DIGITS_SAMPLES,
        eval_samples=None, eval_default=None, n_test=lambda p: math.ceil(DIGITS_SAMPLES * p["test_fraction"]),
    ),
    _mnist("mnist", "raysweep.data.mnist:build_mnist", {"path": _PATH}, lambda p: MNIST_TRAIN),
    _mnist("mnist1m", "raysweep.data.mnist:build_mnist1m", {"path": _PATH}, lambda p: MNIST1M_TRAIN, sampled=False),
    _mnist("mnist1m_sampled", "raysweep.data.mnist:build_mnist1m",
           {"path": _PATH, "max_train_samples": Key(REQUIRED, _size)}, lambda p: int(p["max_train_samples"]),
           sampled=True),
    # any data set a user's factory makes (raysweep.custom.data): its shapes and sizes come from the factory's
    # tensors, built (and cached) on the first question; the kind is a key, so that the spec is checked unbuilt
    Family(
        "custom", "classification", "raysweep.custom.data:build_custom",
        {"factory": Key(REQUIRED, check_factory), "kwargs": Key(f.FrozenDict(), check_kwargs),
         "kind": Key("classification", lambda p, v: f.as_choice(p, v, KINDS))},
        shape=_lazy("raysweep.custom.data:shape"), online=lambda p: False, n_train=_lazy("raysweep.custom.data:n_train"),
        eval_samples=None, eval_default=None, n_test=_lazy("raysweep.custom.data:n_test"), kind_key="kind",
    ),
)}
FAMILIES = tuple(REGISTRY)
REGRESSION = tuple(name for name, fam in REGISTRY.items() if fam.kind == "regression")
CLASSIFICATION = tuple(name for name, fam in REGISTRY.items() if fam.kind == "classification")


def get(family: str) -> Family:
    """The record of ``family``; KeyError naming the known families otherwise."""
    try:
        return REGISTRY[family]
    except (KeyError, TypeError):
        raise KeyError(f"unknown experiment family {family!r}; one of {', '.join(FAMILIES)}") from None


def check_params(family: str, given: Mapping, common: tuple[str, ...]) -> dict:
    """The family keys of a spec, checked, with their defaults filled in. ``common`` are the experiment's own
    fields (a FieldError says such a key is not a family key, or suggests the closest known one)."""
    if not isinstance(given, Mapping):
        raise f.fail("experiment", "family keys must be a mapping", given)
    keys = get(family).keys
    for key in given:
        if key in common:
            raise f.FieldError(f"experiment.params.{key}", "is an Experiment field, not a family key")
        if key not in keys:
            owners = [name for name, fam in REGISTRY.items() if key in fam.keys]
            if owners:
                raise f.FieldError(
                    f"experiment.{key}",
                    f"not a key of family {family} (it belongs to {', '.join(owners)}); "
                    f"{family} takes {', '.join(keys)}",
                )
            f.check_keys({key: None}, common + tuple(keys), "experiment")
    out = {}
    for key, (default, check) in keys.items():
        value = given.get(key, default)
        if value is REQUIRED:
            raise f.fail(f"experiment.{key}", f"is required for family {family}", f.NOTHING)
        out[key] = check(f"experiment.{key}", value)
    return out


def _family(experiment) -> Family:
    return get(experiment["family"] if isinstance(experiment, Mapping) else experiment.family)


def params(experiment) -> Mapping[str, Any]:
    """The family keys of a typed Experiment or a flat mapping (a missing key: its default; a required one: absent)."""
    if not isinstance(experiment, Mapping):
        return experiment.params
    fam = _family(experiment)
    return {k: experiment.get(k, key.default) for k, key in fam.keys.items()
            if k in experiment or key.default is not REQUIRED}


def kind(experiment) -> str:
    """``regression`` or ``classification``: the family's, or for ``custom`` its ``kind`` key."""
    fam = _family(experiment)
    return fam.kind if fam.kind_key is None else params(experiment)[fam.kind_key]


def shape(experiment) -> tuple[int, int]:
    """``(dim, n_out)`` of the experiment's task, from the spec alone (no data is read; ``custom``: from its data
    factory's tensors, built once per process, ``dim`` the elements of one input)."""
    return _family(experiment).shape(params(experiment))


def is_online(experiment) -> bool:
    """True when training draws fresh samples (poly_online; mlp_teacher, linear, noisy_linear with online: true)."""
    return _family(experiment).online(params(experiment))


def n_train(experiment) -> int:
    """Training samples: the online block, the fixed training set, or a file data set's upper bound."""
    return _family(experiment).n_train(params(experiment))


def n_eval(experiment) -> int:
    """Eval set size: ``eval_samples`` (drawn eval sets), else the test set capped at ``eval_samples`` (file data
    sets; null: the test set, itself bounded by :data:`EVAL_CAP` for the MNIST families)."""
    fam = _family(experiment)
    cap = experiment.get("eval_samples") if isinstance(experiment, Mapping) else experiment.eval_samples
    if fam.n_test is None:
        return int(fam.eval_default if cap is None else cap)
    full = fam.n_test(params(experiment))
    return min(full, int(cap)) if cap else full
