"""The spec's instrument options (``experiment.grad_noise_scale``, ``experiment.snapshots``,
``experiment.curvature``): each normalized from YAML with a one-line error naming the field, and the snapshot steps
of a run. Pure (stdlib); the instruments themselves are :mod:`raysweep.noise`, :mod:`raysweep.snapshots` and
:mod:`raysweep.sharpness`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raysweep import fields as f
from raysweep import limits

__all__ = ["CURVATURE_DEFAULTS", "CURVATURE_KINDS", "DEFAULT_NOISE_BATCHES", "GRAD_NOISE_KEYS", "SNAPSHOT_LOG",
           "curvature_option", "grad_noise_option", "snapshot_option", "snapshot_steps"]

GRAD_NOISE_KEYS = ("batches", "batch_size")
DEFAULT_NOISE_BATCHES = 8  # raysweep.noise.DEFAULT_BATCHES (this module imports no torch)
SNAPSHOT_LOG = "log"  # experiment.snapshots: log -> steps {0} + {1, 2, 5} x 10^k + the last
CURVATURE_KINDS = ("sharpness", "batch_sharpness", "preconditioned_sharpness", "hessian_trace")
CURVATURE_DEFAULTS = {"every": 1, "top_k": 1, "kinds": ("sharpness",), "batch": 1024, "steps": 20}
_size = lambda p, v: f.as_int(p, v, ge=1, le=limits.MAX_DIM)  # noqa: E731  a sample count


def grad_noise_option(value: Any, path: str = "experiment.grad_noise_scale") -> f.FrozenDict | None:
    """The gradient-noise-scale option, normalized: None (off: null or false), or
    ``{"batches": m, "batch_size": b}`` (``true`` is ``{batches: 8, batch_size: null}``). ``batches`` is the number
    of chunks of the noise batch, an int >= 2 (null: 8); ``batch_size`` the chunk size, an int > 0, or null for the
    trial's batch size. Raises a SpecError naming the field."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise f.fail(path, "must be true, false, null or a mapping {batches: m, batch_size: b}", value)
    f.check_keys(value, GRAD_NOISE_KEYS, path)
    batches = value.get("batches")
    if batches is None:
        batches = DEFAULT_NOISE_BATCHES
    else:
        try:
            batches = f.as_int(f"{path}.batches", batches, ge=2, le=limits.MAX_DIM)
        except f.FieldError:
            must = (f"must be an integer >= 2 and <= {limits.text(limits.MAX_DIM)} (the number of chunks of the "
                    "noise batch; the estimator needs two)")
            raise f.fail(f"{path}.batches", must, batches) from None
    batch_size = f.optional(_size, f"{path}.batch_size", value.get("batch_size"))
    if batch_size is not None and batches * batch_size > limits.MAX_DIM:
        raise f.fail(path, f"must hold at most {limits.text(limits.MAX_DIM)} samples (batches x batch_size)",
                     dict(batches=batches, batch_size=batch_size), limits.why(limits.MAX_DIM))
    return f.FrozenDict(batches=batches, batch_size=batch_size)


def snapshot_option(value: Any, path: str = "experiment.snapshots") -> str | tuple[int, ...] | None:
    """The weight-snapshot option, normalized: None (off: null or false), ``"log"`` (steps 0, 1, 2, 5, 10, 20,
    50, ... and the last: :func:`snapshot_steps`), or a sorted tuple of distinct steps >= 0. SpecError naming the
    field otherwise."""
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() == SNAPSHOT_LOG:
        return SNAPSHOT_LOG
    if isinstance(value, (list, tuple)) and value:
        return tuple(sorted({f.as_int(f"{path}[{i}]", v, ge=0) for i, v in enumerate(value)}))
    raise f.fail(path, "must be null, false, log or a non-empty list of steps >= 0", value)


def snapshot_steps(option: Any, total_steps: int) -> tuple[int, ...]:
    """The steps at which a trial of ``total_steps`` steps snapshots its weights (step 0: the initial weights).

    ``"log"``: 0, the steps {1, 2, 5} x 10^k up to ``total_steps``, and ``total_steps``; a list: its steps up to
    ``total_steps``; None: none. Pure."""
    option = snapshot_option(option)
    if option is None:
        return ()
    if option != SNAPSHOT_LOG:
        return tuple(s for s in option if s <= total_steps)
    steps, scale = {0, int(total_steps)}, 1
    while scale <= total_steps:
        steps.update(m * scale for m in (1, 2, 5) if m * scale <= total_steps)
        scale *= 10
    return tuple(sorted(steps))


def curvature_option(value: Any, path: str = "experiment.curvature") -> f.FrozenDict | None:
    """The curvature-tracking option, normalized: None (off: null or false), or ``{"every": r, "top_k": k,
    "kinds": (...), "batch": n, "steps": s}`` (``true`` takes every default, :data:`CURVATURE_DEFAULTS`):
    measure every ``r`` reports (int > 0), the top ``k`` Hessian eigenvalues by ``s`` Lanczos steps (ints > 0,
    k <= s) on a curvature batch of ``n`` samples (int > 0), the ``kinds`` of :data:`CURVATURE_KINDS`. SpecError
    naming the field otherwise."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise f.fail(path, "must be true, false, null or a mapping {every, top_k, kinds, batch, steps}", value)
    f.check_keys(value, tuple(CURVATURE_DEFAULTS), path)
    out = {k: value.get(k) if value.get(k) is not None else d for k, d in CURVATURE_DEFAULTS.items()}
    for key in ("every", "top_k", "steps"):
        out[key] = f.as_int(f"{path}.{key}", out[key], ge=1, le=limits.MAX_DIM)
    out["batch"] = _size(f"{path}.batch", out["batch"])
    if out["top_k"] > out["steps"]:
        raise f.fail(f"{path}.top_k", f"must be at most steps ({out['steps']}): Lanczos finds at most one "
                     "eigenvalue per step", out["top_k"])
    kinds = out["kinds"]
    if isinstance(kinds, str):
        kinds = [kinds]
    if not isinstance(kinds, (list, tuple)) or not kinds:
        raise f.fail(f"{path}.kinds", f"must be a non-empty list of {', '.join(CURVATURE_KINDS)}", kinds)
    chosen = {f.as_choice(f"{path}.kinds", k, CURVATURE_KINDS) for k in kinds}
    out["kinds"] = tuple(k for k in CURVATURE_KINDS if k in chosen)
    return f.FrozenDict(out)
