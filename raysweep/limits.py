"""The limits every value of a sweep is checked against before anything runs, with the reason for each.

A value is refused (exit 2, naming the field) when a Parquet column, the arithmetic of training or the precision
of the dtype could not hold it, or when checking it would take unbounded work:

- integers fit int64 (the Parquet columns); seeds stay below ``2**63 - 1`` because a trial's data stream is
  seeded with ``2 seed + 2``, a 64-bit value; widths, batch sizes, input dimensions, training-set and eval sizes
  stay below ``2**31`` (BLAS takes 32-bit matrix dimensions); depth is at most :data:`MAX_DEPTH`;
- ``steps x batch_size`` (``samples_seen``) fits int64;
- every layer's learning rate is a normal number of the dtype (finite, not flushed to zero);
- richness ``gamma`` lies in the range where the centred target stays meaningful (:func:`gamma_range`);
- a spec file is at most :data:`MAX_SPEC_BYTES`, its YAML expands (aliases included) to at most
  :data:`MAX_YAML_NODES` values, and a sweep has at most :data:`MAX_POINTS` configurations (a random search: at
  most that many samples; Optuna: at most that many trials over all cells).

Stdlib only: the launcher checks a spec without importing torch or Ray.
"""

from __future__ import annotations

import math

INT64_MAX = 2**63 - 1
MAX_SEED = 2**63 - 2  # 2 seed + 2 (raysweep.seeds.data_seed) must fit a 64-bit generator seed
MAX_DIM = 2**31 - 1  # BLAS matrix dimensions are 32-bit integers
MAX_DEPTH = 1_000
MAX_DEGREE = 16  # y = (x.w)^K with x.w ~ N(0, 1): a 6-sigma tail at K = 16 is ~3e12, its square ~1e25 (float32: 3e38)
MAX_POINTS = 1_000_000
MAX_SPEC_BYTES = 2**20
MAX_YAML_NODES = 100_000
# f(x; theta_0) of a fixed training set is kept whole when it takes at most this many bytes, else computed per
# batch: the trainer's choice, which autobatch's sizing mirrors
F0_CACHE_BYTES = 256 * 2**20
# the dtypes' machine epsilon, largest and smallest normal numbers (numpy.finfo, without importing numpy)
FINFO = {
    "float32": (2.0**-23, (2 - 2.0**-23) * 2.0**127, 2.0**-126),
    "float64": (2.0**-52, (2 - 2.0**-52) * 2.0**1023, 2.0**-1022),
}
# gamma's range: the target keeps TARGET_RESOLUTION absolute resolution (a unit-scale y keeps two digits)
TARGET_RESOLUTION = 1e-2

_REASONS = {
    INT64_MAX: " (the largest int64: what a Parquet column holds)",
    MAX_SEED: " (a trial's data stream is seeded with 2 seed + 2, a 64-bit value)",
    MAX_DIM: " (BLAS takes 32-bit matrix dimensions)",
    MAX_DEPTH: " (the number of weight matrices raysweep builds)",
    MAX_DEGREE: " (y = (x.w)^K: larger K puts the teacher's tails beyond float32's range)",
}
_NAMES = {INT64_MAX: "2**63 - 1", MAX_SEED: "2**63 - 2", MAX_DIM: "2**31 - 1"}


def text(limit: int) -> str:
    """A limit as a message shows it: ``2**31 - 1`` rather than 2147483647."""
    return _NAMES.get(limit, f"{limit:,}")


def why(limit: int) -> str:
    """The reason behind a limit of :data:`_REASONS`, as a parenthesis, or ''."""
    return _REASONS.get(limit, "")


def gamma_range(dtype: str, parametrization: str, width: int) -> tuple[float, float]:
    """``(lowest, highest)`` gamma at which training in ``dtype`` stays meaningful.

    The trainer folds the initial output into the target, ``t = a f0 + y`` with the readout multiplier
    ``a = 1 / (gamma m)`` (``m = sqrt(N)`` for SP and torch_sp, ``N`` for muP) and ``|f0_raw| ~ sqrt(N)``, so
    ``|a f0| ~ sqrt(N) / (gamma m)``. That number carries an absolute rounding error of ``eps |a f0|``: below the
    lowest gamma it exceeds :data:`TARGET_RESOLUTION` and ``y`` drowns in it (at gamma = 1e-20 in float64 the train
    loss goes to zero while the eval loss stays at its start). Above the highest gamma the raw readout that fits a
    unit target, ``gamma m / sqrt(N)`` times larger than at gamma = 1, squared in the loss and its gradient,
    leaves the dtype's range: ``(gamma m)^2 <= max``.
    """
    eps, largest, _ = FINFO[dtype]
    m_over_root = 1.0 if parametrization in ("SP", "torch_sp") else math.sqrt(width)  # m / sqrt(N)
    lowest = eps / (TARGET_RESOLUTION * m_over_root)
    m = math.sqrt(width) * m_over_root
    highest = math.sqrt(largest) / m
    return lowest, highest


def normal(value: float, dtype: str) -> bool:
    """True when ``value`` is a finite number of ``dtype`` that is zero or not below its smallest normal number."""
    _, largest, tiny = FINFO[dtype]
    return math.isfinite(value) and abs(value) <= largest and (value == 0 or abs(value) >= tiny)
