"""Import-path loading of the user's factories, the model factory's call, and the driver's check before Ray starts.

:func:`load` imports ``"package.module:function"``; :func:`build_model` calls the model factory with a trial's
width, depth, gamma, parametrization, input shape and number of outputs (``raysweep.custom.spec``), seeded from the
trial's ``seed`` (:func:`raysweep.seeds.init_seed`, on a forked global RNG, since factories draw from torch's global
generator); :class:`~raysweep.errors.FactoryError` (a SpecError: exit 2) names the spec field (:mod:`raysweep.custom.check`
runs both factories on the driver before Ray starts).

On a cluster the factories' code travels with the job: ``ray job submit --working-dir . -- python -m
raysweep.launch SPACE.yaml`` ships the working directory to every worker and puts it on ``sys.path``; a package
installed on every node works as well.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from raysweep.custom.spec import plain
from raysweep.errors import FactoryError
from raysweep.seeds import init_seed

MODEL_FIELD = "experiment.model.factory"


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of the user's exception (torch's messages run over many lines)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def load(target: str, field: str) -> Callable:
    """The callable ``"package.module:function"`` names; FactoryError naming ``field`` when the module cannot be
    imported, lacks the name, or the name is not callable."""
    module_name, _, name = str(target).partition(":")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # ImportError, or the module's own code failing (or exiting)
        raise FactoryError(f"{field}: cannot import module {module_name!r} of {target!r} ({one_line(exc)}); "
                           "it must be importable on the driver and on every Ray worker (on a cluster: "
                           "ray job submit --working-dir .)") from None
    if not hasattr(module, name):
        raise FactoryError(f"{field}: module {module_name!r} has no attribute {name!r} (from {target!r})")
    fn = getattr(module, name)
    if not callable(fn):
        raise FactoryError(f"{field}: {target!r} is a {type(fn).__name__}, not callable; name a function that "
                           "returns the model (or the data)")
    return fn


def build_model(model: Mapping[str, Any], *, width: int, depth: int, gamma: float, parametrization: str,
                input_shape: tuple[int, ...], n_out: int, seed: int | None = None, dtype=None, device=None):
    """The user's ``torch.nn.Module`` for one configuration (``model``: the spec's factory mapping).

    With ``seed`` the factory runs on a forked global RNG seeded with ``init_seed(seed)``: the same seed gives the
    same initial parameters in every process. The module's floating parameters and buffers are then cast to
    ``dtype`` and moved to ``device``. FactoryError naming ``experiment.model.factory`` when the call fails or does
    not return a ``torch.nn.Module``.
    """
    import torch  # the factory's modules

    fn = load(model["factory"], MODEL_FIELD)
    kwargs = plain(model.get("kwargs") or {})
    args = dict(width=int(width), depth=int(depth), gamma=float(gamma), parametrization=parametrization,
                input_shape=tuple(int(v) for v in input_shape), n_out=int(n_out))
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(init_seed(seed))
            module = fn(**args, **kwargs)
    except FactoryError:
        raise
    except (Exception, SystemExit) as exc:  # the user's code (a SystemExit too: the launch reports it)
        raise FactoryError(f"{MODEL_FIELD}: {model['factory']}(width={width}, depth={depth}, ...) raised "
                           f"{one_line(exc)}") from exc
    if not isinstance(module, torch.nn.Module):
        raise FactoryError(f"{MODEL_FIELD}: {model['factory']} must return a torch.nn.Module, got "
                           f"{type(module).__name__}")
    if dtype is not None:
        module = module.to(dtype=dtype)
    if device is not None:
        module = module.to(device=device)
    return module
