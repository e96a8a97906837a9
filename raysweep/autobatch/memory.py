"""The memory model: peak bytes of a training (or eval) step of a stacked MLP, from its shapes.

For a bundle of K members, L = depth weight matrices, widths ``[D] + [N] * (L - 1) + [out]``, P = the number of
weights of one member (``sum fan_in * fan_out``) and S data streams (distinct seeds; 1 when the members share the
minibatch)::

    M(N, L, B, K) = static + c_overhead + c_param K P s + c_sample S B D s + c_hidden K B (L-1) N s
                    + c_readout K B R s,        R = N for a scalar readout (out = 1), else out

- ``static``, from the shapes: ``K P s * (1 weights + 1 grads + 1 initial copy for centring + 2 Adam moments)``
  (no moments for SGD), ``s`` the dtype's item size. The trainer's step (:mod:`raysweep.step`) holds a gradient only
  for the members of its current step group, so the gradient term is an upper bound; the fitted terms absorb the
  rest. Eval mode keeps the same state (a trial evaluates with its moments alive).
- the five ``c`` are fitted to measured peaks (relative least squares, all >= 0): ``c_overhead`` for allocator
  rounding and library workspaces, ``c_param`` for per-weight transients (optimizer-update temporaries on a GPU,
  the float64 init on a CPU), and the bytes per sample ``a + b * widths`` split by where they live: the input
  minibatch ``[B, D]`` (shared by the members of a one-stream bundle), the hidden activations (per member, per
  hidden layer), and the readout (``raysweep.model.forward`` computes a scalar readout as an elementwise product
  ``[K, B, N]`` kept for backward, which is depth-independent). One ``c * sum(widths)`` term cannot tell these
  apart: on a CPU it left held-out errors of up to 16% across depths 2 and 3; the split fits them within 1%.

A process also holds ``context_bytes`` outside M (the CUDA context and kernels; on a CPU the resident size of a
Python process with torch). A config needs ``context + M * (1 + margin)``, the margin being the largest relative
error of M on held-out probe points, never below :data:`MIN_MARGIN`.

Pure: numpy only; no torch, no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from raysweep.autobatch.device import DeviceInfo
from raysweep.errors import RaysweepError
from raysweep.points import update_path

FEATURES = ("overhead", "param", "sample", "hidden", "readout")
MIN_MARGIN = 0.05
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
# weights, grads, init copy (+ SGD's momentum buffer, + Adam's two moments)
STATE_COPIES = {"SGD": 3, "SGD+momentum": 4, "Adam": 5}


def memory_optimizer(point) -> str:
    """What the memory model sizes a point's optimizer as (a key of :data:`STATE_COPIES`): the state it holds, not
    its formulas. Plain SGD (its update fused into the backward) ``SGD``; SGD with momentum or weight decay (the
    general update path: a gradient and a momentum buffer per weight) ``SGD+momentum``; Adam and AdamW, whatever
    their betas, eps and decay (two moments) ``Adam``. A point that already names one of these keeps it."""
    opt = point["optimizer"]
    if opt == "SGD":
        return "SGD" if update_path(point) == "sgd" else "SGD+momentum"
    return opt if opt in STATE_COPIES else "Adam"


def widths_of(dim: int, width: int, depth: int, n_out: int) -> list[int]:
    """``[D] + [N] * (L - 1) + [out]`` (as :func:`raysweep.model.layer_widths`)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return [dim] + [width] * (depth - 1) + [n_out]


def n_params(dim: int, width: int, depth: int, n_out: int) -> int:
    """Weights of one member: ``sum fan_in * fan_out`` (no biases)."""
    w = widths_of(dim, width, depth, n_out)
    return sum(a * b for a, b in zip(w[:-1], w[1:]))


def static_bytes(dim: int, width: int, depth: int, n_out: int, *, optimizer: str, dtype: str = "float32",
                 n_members: int = 1) -> int:
    """Exact bytes of weights, gradients, the initial copy and optimizer state of K members."""
    if optimizer not in STATE_COPIES:
        raise ValueError(f"optimizer must be one of {tuple(STATE_COPIES)}, got {optimizer!r}")
    return n_members * n_params(dim, width, depth, n_out) * STATE_COPIES[optimizer] * ITEMSIZE[dtype]


def features(dim: int, n_out: int, width: int, depth: int, batch_size: int, n_members: int, dtype: str,
             n_streams: int = 1) -> np.ndarray:
    """The fitted terms' regressors, in bytes: ``[1, K P s, S B D s, K B (L-1) N s, K B R s]`` (see above)."""
    s = ITEMSIZE[dtype]
    k, b = n_members, batch_size
    readout = width if n_out == 1 else n_out
    return np.array([1.0, k * n_params(dim, width, depth, n_out) * s, n_streams * b * dim * s,
                     k * b * (depth - 1) * width * s, k * b * readout * s], dtype=np.float64)


def _nonneg_relative_lstsq(x: np.ndarray, y: np.ndarray, target: np.ndarray) -> np.ndarray:
    """min sum(((x c - y) / target)^2) with c >= 0: least squares, dropping the most negative term until none is."""
    active = list(range(x.shape[1]))
    w = 1.0 / np.maximum(target, 1.0)
    while True:
        coef = np.zeros(x.shape[1])
        if active:
            sol, *_ = np.linalg.lstsq(x[:, active] * w[:, None], y * w, rcond=None)
            coef[active] = sol
        if (coef >= 0).all():
            return coef
        active.remove(int(np.argmin(coef)))


@dataclass
class ModeFit:
    """The fitted coefficients of one (optimizer, mode), the margin and the held-out errors it came from."""

    optimizer: str
    mode: str
    coef: dict[str, float]
    margin: float
    max_rel_error: float | None  # on held-out points; None when none was measured
    median_rel_error: float | None
    margin_source: str
    errors: list[dict] = field(default_factory=list)  # one per measured point: shape, role, predicted, measured

    def to_dict(self) -> dict:
        return asdict(self)


def fit_mode(records: list[dict], *, dim: int, n_out: int, dtype: str, optimizer: str, mode: str) -> ModeFit:
    """Fit one (optimizer, mode) from probe records (dicts with width, depth, batch_size, n_members, role
    ``fit``/``heldout``, ``peak_bytes`` and ``status`` ``ok``); the margin comes from the held-out errors.

    Raises :class:`RaysweepError` when no fit point was measured (the caller turns that into NothingFitsError).
    """
    ok = [r for r in records if r["status"] == "ok"]
    fit = [r for r in ok if r["role"] == "fit"]
    if not fit:
        raise RaysweepError(f"no probe point of {optimizer}/{mode} was measured (all out of memory or skipped)")

    def design(rs):
        x = np.array([features(dim, n_out, r["width"], r["depth"], r["batch_size"], r["n_members"], dtype) for r in rs])
        st = np.array([static_bytes(dim, r["width"], r["depth"], n_out, optimizer=optimizer, dtype=dtype,
                                    n_members=r["n_members"]) for r in rs], dtype=np.float64)
        return x, st, np.array([float(r["peak_bytes"]) for r in rs])

    x, st, y = design(fit)
    coef = _nonneg_relative_lstsq(x, y - st, y)
    errors = []
    for r in ok:
        xr, sr, yr = design([r])
        pred = float(sr[0] + xr[0] @ coef)
        errors.append({k: r[k] for k in ("width", "depth", "batch_size", "n_members", "role")}
                      | {"predicted_bytes": int(pred), "measured_bytes": int(yr[0]),
                         "rel_error": float((pred - yr[0]) / max(yr[0], 1.0))})
    held = [abs(e["rel_error"]) for e in errors if e["role"] == "heldout"]
    if held:
        margin, source = max(MIN_MARGIN, max(held)), f"max relative error on {len(held)} held-out points"
    else:
        resid = max(abs(e["rel_error"]) for e in errors)
        margin, source = max(MIN_MARGIN, 2 * resid), "2 x max fit residual (no held-out point measured)"
    return ModeFit(optimizer, mode, dict(zip(FEATURES, map(float, coef))), float(margin),
                   max(held) if held else None, float(np.median(held)) if held else None, source, errors)


@dataclass
class MemoryModel:
    """Fitted memory model of one model-shape family on one device; see the module docstring for the formula.

    ``available_bytes`` is the device's global free memory at probe time plus the probe process's own context
    (which is gone once the probe ends); ``usable_bytes(f) = f * available_bytes`` is the budget at target fraction
    ``f``. ``label`` is ``cuda`` (peaks of reserved memory) or ``cpu-rss`` (peaks of resident set growth).
    """

    dim: int
    n_out: int
    dtype: str
    loss: str
    device: DeviceInfo
    context_bytes: int
    available_bytes: int
    fits: dict[str, ModeFit]  # "<optimizer>/<mode>" -> fit
    covered: dict[str, Any] = field(default_factory=dict)  # widths, depths, batch sizes, n_members probed
    probe_log: list[dict] = field(default_factory=list)
    probe_wall_time_s: float = 0.0
    key: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.device.label

    def fit_for(self, optimizer: str, mode: str = "train") -> ModeFit:
        try:
            return self.fits[f"{optimizer}/{mode}"]
        except KeyError:
            raise RaysweepError(f"the memory model has no {optimizer}/{mode} fit (it has {sorted(self.fits)}); "
                                "probe a space that includes it") from None

    def predict(self, width: int, depth: int, batch_size: int, *, optimizer: str, n_members: int = 1,
                mode: str = "train", n_streams: int = 1) -> int:
        """M: peak bytes of the step, without the context and without the margin."""
        fit = self.fit_for(optimizer, mode)
        coef = np.array([fit.coef[name] for name in FEATURES])
        static = static_bytes(self.dim, width, depth, self.n_out, optimizer=optimizer, dtype=self.dtype,
                              n_members=n_members)
        x = features(self.dim, self.n_out, width, depth, batch_size, n_members, self.dtype, n_streams)
        return int(static + x @ coef)

    def need_bytes(self, width: int, depth: int, batch_size: int, *, optimizer: str, n_members: int = 1,
                   mode: str = "train", n_streams: int = 1) -> int:
        """What one process needs: ``context + M * (1 + margin)``."""
        margin = self.fit_for(optimizer, mode).margin
        m = self.predict(width, depth, batch_size, optimizer=optimizer, n_members=n_members, mode=mode,
                         n_streams=n_streams)
        return int(self.context_bytes + m * (1 + margin))

    def usable_bytes(self, fraction: float) -> int:
        return int(fraction * self.available_bytes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["device"] = self.device.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MemoryModel:
        d = dict(d)
        d["device"] = DeviceInfo.from_dict(d["device"])
        d["fits"] = {k: ModeFit(**v) for k, v in d["fits"].items()}
        return cls(**d)
