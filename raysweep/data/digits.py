"""sklearn's bundled 8x8 digits (1,797 images, no download): the offline classification family."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from raysweep import families
from raysweep.data._base import Options, Task, eval_indices, stratified_choice, to_tensor_labels, to_tensor_x
from raysweep.seeds import derive_seed


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported here: sklearn's import costs ~1 s

    bunch = load_digits()
    x, y = bunch.data / 16.0, bunch.target.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def build_digits(experiment, *, device="cpu", dtype=torch.float32) -> Task:
    """Digits: ``x = pixels / 16`` (64 features in [0, 1]), labels 0..9, classification with 10 outputs.

    Split: ``n_test = ceil(test_fraction * 1797)`` (default 0.2: 360) test images chosen by
    ``stratified_choice(labels, n_test, derive_seed(data_seed, "split"))``; the rest is ``x_train`` (file order).
    Eval: the test split, capped by ``eval_samples`` (default None: all of it) as in `eval_indices`.
    Label: ``digits``, or ``digits(test_fraction=0.3)`` when not the default.
    """
    opts = Options(experiment, "digits")
    seed = opts.seed()
    family = families.get("digits")
    default_fraction = family.defaults["test_fraction"]
    fraction = opts.float("test_fraction", default_fraction, open_min=True, max_value=1.0, open_max=True)
    n_eval = opts.optional_int("eval_samples", family.eval_default)
    x, y = _load()
    n_test = min(max(math.ceil(fraction * len(y)), 1), len(y) - 1)
    test = stratified_choice(y, n_test, derive_seed(seed, "split"))
    train = np.setdiff1d(np.arange(len(y)), test)
    ev = test[eval_indices(y[test], n_eval, seed)]
    label = "digits" if fraction == default_fraction else f"digits(test_fraction={fraction:g})"
    return Task(
        dataset=label, kind="classification", dim=x.shape[1], n_out=10,
        x_eval=to_tensor_x(x[ev], device, dtype), y_eval=to_tensor_labels(y[ev], device),
        x_train=to_tensor_x(x[train], device, dtype), y_train=to_tensor_labels(y[train], device),
        params={"family": "digits", "data_seed": seed, **opts.resolved, "n_test": n_test},
    )
