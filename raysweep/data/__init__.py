"""The data of every experiment family, as one `Task` per trial. Pure: torch/numpy/sklearn, no Ray, no writes.

Each family's keys, defaults, shapes and builder live in :mod:`raysweep.families` (the registry); the builders
here read their defaults from it. Families (``experiment.family``), their own keys with defaults, and the
``dataset`` label they record:

==================  ==========================================================================  =========================
family              keys (default)                                                               dataset label
==================  ==========================================================================  =========================
poly_online         dim (32), n_train = block size P (4096), degree K (2), noise (0.0)          poly_online(D=32,K=2)
poly_fixed          dim (32), n_train (1024), degree (2), noise (0.0)                           poly_fixed(D=32,K=2,P=1024)
mlp_teacher         dim (32), n_train (4096), noise (0.0), teacher_width (64), teacher_depth    mlp_teacher(D=32,N=64,L=2,
                    (2), teacher_gamma (1.0), teacher_parametrization ("muP"),                  muP,gamma=1)
                    teacher_normalize (true), online (true)
linear              dim (500), alpha (2.0), beta (0.25), online (true), n_train (4096):         linear(D=500,alpha=2,
                    x ~ N(0, diag(i^-alpha)), y = w*.x, w*_i ~ i^-(1/2 + alpha (beta - 1) / 2)  beta=0.25)
noisy_linear        the same and rho (0.25): y = sqrt(1 - rho) w*.x + sqrt(rho) N(0, 1)         noisy_linear(D=500,...,
                                                                                                rho=0.25)
digits              test_fraction (0.2)                                                         digits
mnist               path (required)                                                             mnist
mnist1m             path (required)                                                             mnist1m
mnist1m_sampled     path, max_train_samples (both required)                                     mnist1m[<max_train_samples>]
==================  ==========================================================================  =========================

Common keys read here: ``data_seed`` (int, default 0: fixes teachers, eval sets, splits and subsets; never the
online sample stream, which comes from the generator the trainer passes to `Task.draw_block`) and
``eval_samples`` (synthetic: samples drawn, default 2048; digits: cap on the test split, default none; MNIST
families: cap on the test set, default 10,000; a cap picks a stratified subset, see `eval_indices`). Other keys
are ignored here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from raysweep import families
from raysweep.data._base import Population, Task, eval_indices, stratified_choice
from raysweep.data.mnist import Arrays, clear_cache, load_mnist, load_mnist1m
from raysweep.errors import DataError
from raysweep.seeds import derive_seed

# the family names, from the registry (raysweep.families)
FAMILIES: tuple[str, ...] = families.FAMILIES


def build_task(experiment: Mapping[str, Any], *, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> Task:
    """The `Task` of ``experiment`` (a mapping with ``family`` and that family's keys) on ``device`` in ``dtype``.

    Same experiment (same ``data_seed``) -> same teacher, eval set and training set, on any device. Raises
    DataError naming the key for a bad value, and naming the file and the expected layout for missing or
    malformed data files.
    """
    if not isinstance(experiment, Mapping):
        raise DataError(f"experiment: must be a mapping with a 'family' key, got {type(experiment).__name__}")
    family = experiment.get("family")
    if not isinstance(family, str) or family not in families.REGISTRY:
        raise DataError(f"experiment.family: must be one of {FAMILIES}, got {family!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DataError(f"dtype: must be a floating torch.dtype, got {dtype!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DataError(f"device: not a torch device: {device!r}") from exc
    return families.get(family).build(experiment, device=device, dtype=dtype)


def check_source(experiment: Mapping[str, Any]) -> None:
    """Check the local files an experiment reads (MNIST families: exists, readable, the right arrays and shapes,
    ``max_train_samples`` within the training set) without decoding them; DataError naming the file. Families with
    no file (and unknown families, which `build_task` refuses) pass. The launcher calls it before Ray starts, so a
    bad path never lands a row."""
    family = experiment.get("family")
    if isinstance(family, str) and family in families.REGISTRY:
        families.get(family).check_files(experiment)


def __getattr__(name: str):
    # The converter imports PIL and is run as `python -m raysweep.data.mnist1m`; importing it here eagerly would
    # make runpy warn that the module was imported before it ran.
    if name == "convert_mnist1m":
        from raysweep.data.mnist1m import convert_mnist1m  # runpy: see above

        return convert_mnist1m
    raise AttributeError(f"module 'raysweep.data' has no attribute {name!r}")


__all__ = [
    "FAMILIES",
    "Arrays", "DataError", "Population", "Task", "build_task", "check_source", "clear_cache", "convert_mnist1m", "derive_seed",
    "eval_indices",
    "load_mnist", "load_mnist1m", "stratified_choice",
]
