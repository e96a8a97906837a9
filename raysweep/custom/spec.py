"""The spec side of user models and data: ``experiment.model`` as a factory mapping, and the ``custom`` family's
keys. Checked when the spec is read, without importing the user's code (stdlib only); the driver imports and builds
both before Ray starts (:func:`raysweep.custom.factory.check_experiment`).

``experiment.model``::

    model:
      factory: my_package.models:build   # required: "module:function", imported on the driver and the workers
      kwargs: {heads: 2}                 # optional: passed to the factory as keywords (JSON-able values)
      readout: head                      # optional: the readout module's name (muP); null: detected
      base_width: null                   # optional: muP's base width (an int > 0); null: the space's smallest width
      centred: false                     # optional: train f(x; theta) - f(x; theta_0) (the MLP path's centring)

The factory is called as ``factory(width=N, depth=L, gamma=g, parametrization="SP"|"muP"|"torch_sp",
input_shape=(...), n_out=k, **kwargs)`` and returns a ``torch.nn.Module`` whose forward maps a batch
``[B, *input_shape]`` to outputs ``[B, ..., n_out]``. SP (the NTK parametrization) and muP train it by base
shapes (:mod:`raysweep.custom.mup`); torch_sp trains it as built, every parameter at eta (PyTorch's default).

The ``custom`` data family (``experiment.family: custom``) takes ``factory`` (``"module:function"``), ``kwargs``
(a mapping) and ``kind`` (``classification`` or ``regression``); see :mod:`raysweep.custom.data`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from raysweep import fields as f
from raysweep import limits

__all__ = ["BUILTIN_MODELS", "MODEL_KEYS", "check_factory", "check_kwargs", "is_custom", "model_name",
           "model_option", "plain"]

BUILTIN_MODELS = ("mlp", "linear")  # raysweep.model: the MLP, or the linear student f(x) = w.x
MODEL_KEYS = ("factory", "kwargs", "readout", "base_width", "centred")
MODEL_ARGS = ("width", "depth", "gamma", "parametrization", "input_shape", "n_out")  # the model factory's call


def check_factory(path: str, value: Any) -> str:
    """An import path ``"package.module:function"``; a FieldError naming ``path`` otherwise."""
    module, colon, name = value.strip().partition(":") if isinstance(value, str) else ("", "", "")
    if not colon or not name.isidentifier() or not all(part.isidentifier() for part in module.split(".")):
        raise f.fail(path, 'must be an import path "package.module:function"', value)
    return value.strip()


def check_kwargs(path: str, value: Any, passed: tuple[str, ...] = ("seed",)) -> f.FrozenDict:
    """Factory keywords: a mapping with string keys and JSON-able values (they enter the config key), frozen;
    none of them a keyword raysweep passes itself (``passed``: the data factory's ``seed``, or :data:`MODEL_ARGS`)."""
    if value is None:
        return f.FrozenDict()
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise f.fail(path, "must be a mapping of keyword names to values", value)
    for key in value:
        if key in passed:
            raise f.fail(f"{path}.{key}", f"is passed to the factory by raysweep itself (as {', '.join(passed)}: "
                         "from the space, the data and experiment.data_seed); use another keyword", value[key])
    try:
        f.canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise f.fail(path, f"must hold JSON-able values ({exc})", value) from None
    if _has_nan(value):  # NaN != NaN: the spec saved with the sweep would never equal it again (resume)
        raise f.fail(path, "must hold no NaN (a spec with NaN never equals itself, so its sweep cannot resume)", value)
    return f.FrozenDict({k: _freeze(v) for k, v in value.items()})


def _has_nan(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_nan(v) for v in value)
    return isinstance(value, float) and math.isnan(value)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return f.FrozenDict({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def plain(value: Any) -> Any:
    """A frozen mapping or tuple back as plain dicts and lists (for YAML, JSON and the factories)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


def model_option(value: Any, path: str = "experiment.model") -> str | f.FrozenDict:
    """``mlp``, ``linear``, or the checked factory mapping (module docstring) with every key filled in."""
    if isinstance(value, str) or not isinstance(value, Mapping):
        return f.as_choice(path, value, BUILTIN_MODELS)
    f.check_keys(value, MODEL_KEYS, path)
    if value.get("factory") is None:
        raise f.fail(f"{path}.factory", 'is required: an import path "package.module:function"', f.NOTHING)
    readout = value.get("readout")
    if readout is not None and (not isinstance(readout, str) or not readout):
        raise f.fail(f"{path}.readout", "must be a module name (e.g. head or blocks.3.out), or null to detect it",
                     readout)
    return f.FrozenDict(
        factory=check_factory(f"{path}.factory", value["factory"]),
        kwargs=check_kwargs(f"{path}.kwargs", value.get("kwargs"), MODEL_ARGS),
        readout=readout,
        # base shapes build the model at base_width and twice it: both matrix dimensions (32-bit for BLAS)
        base_width=f.optional(lambda p, v: f.as_int(p, v, ge=1, le=limits.MAX_DIM // 2), f"{path}.base_width",
                              value.get("base_width")),
        centred=f.as_bool(f"{path}.centred", value.get("centred", False)),
    )


def is_custom(model: Any) -> bool:
    """Whether ``experiment.model`` (typed or as a flat mapping's value) names a user factory."""
    return isinstance(model, Mapping)


def model_name(model: Any) -> str:
    """What the trials' ``model`` column records: ``mlp``, ``linear``, or the factory's import path."""
    return model["factory"] if is_custom(model) else model
