"""Coordinate check (microsoft/mup's diagnostic) for a spec's model: run it before trusting a new parametrization.

A few optimizer steps on one fixed batch, at several widths N and seeds. For each hidden layer l the size of the
feature update ``mean |h_l(t) - h_l(0)|`` (over batch, units and seeds) and for the output the size of the trained
function ``mean |f(t) - f(0)|`` are fitted as ``N^slope`` on a log-log scale. What to expect (depth 3, SGD):

- muP (``lr_rule: study`` for SGD, ``mup_adam`` for Adam): every slope near 0 (|slope| < 0.1): features and output
  move by the same amount at every width. That is what makes eta* transfer.
- SP (the NTK parametrization here) with SGD: hidden slopes near -1/2, features freeze as the net widens (lazy).
- muP Adam with the study's global sqrt(N) rule: hidden slopes near +1/2, feature updates blow up with width.
- torch_sp (PyTorch's default, when raysweep has it) with SGD: slopes > 0, the updates grow with N at a fixed eta
  (its eta* falls about an octave per width doubling).

The model, rates and loss are raysweep's own (``raysweep.model``, ``raysweep.scaling.learning_rates``,
``raysweep.step``): the centred function ``f - f0``, the spec's loss and MSE convention, the batch of the spec's
data family (the first ``batch_size`` samples of its training set, or of one online block). One check per distinct
(parametrization, optimizer, lr_rule, loss, depth, gamma, eta) of the spec; ``etas`` / ``gammas`` replace the
spec's values (a spec with 25 etas gives 25 blocks otherwise).

Command line::

    python -m raysweep.coordcheck SPACE.yaml [--widths 64,128,256,512,1024] [--steps 5] [--seeds 3]
                                  [--batch-size 32] [--eta 0.5 ...] [--gamma 1 ...] [--plot F.png]

prints one block per combination (slope per layer, update size per width) and exits 0; 2 on a bad spec.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from raysweep.custom.spec import is_custom
from raysweep.errors import SpecError
from raysweep.scaling import learning_rates
from raysweep.seeds import init_seed
from raysweep.schedules import is_constant
from raysweep.points import AXIS_DEFAULTS, axis_value, update_path
from raysweep.space import load_spec

# torch and matplotlib load when a check runs, so that --help and spec errors answer at once

DEFAULT_WIDTHS = (64, 128, 256, 512, 1024)
COMBO_KEYS = ("parametrization", "optimizer", "lr_rule", "loss", "depth", "gamma", "eta")
FLAT, SLOPE_WARN = 0.1, 0.35  # |slope| below FLAT: width-independent; beyond SLOPE_WARN: clearly width-dependent


@dataclass(frozen=True)
class CoordCheck:
    """One combination's coord check: ``updates[i, l]`` is the mean update size of layer ``layers[l]`` at
    ``widths[i]`` (averaged over seeds), ``slopes[l]`` its log-log slope in N. ``error`` is set (and the arrays are
    empty) when the combination cannot run, e.g. a parametrization raysweep.model does not know."""

    config: Mapping
    widths: tuple[int, ...]
    layers: tuple[str, ...] = ()
    updates: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    slopes: tuple[float, ...] = ()
    error: str | None = None

    @property
    def title(self) -> str:
        """The combination: :data:`COMBO_KEYS`, then the optimizer and schedule axes it sets off their defaults."""
        keys = COMBO_KEYS + tuple(k for k in AXIS_DEFAULTS if k in self.config)
        return " ".join(f"{k}={self.config[k]:g}" if isinstance(self.config[k], float) else f"{k}={self.config[k]}"
                        for k in keys)

    def table(self) -> str:
        """The block the command line prints: one line per layer, its slope, a reading and the sizes per width."""
        if self.error:
            return f"{self.title}\n  error: {self.error}"
        lines = [self.title, "  layer  slope    reading            " + " ".join(f"N={n:<8d}" for n in self.widths)]
        for l, (name, slope) in enumerate(zip(self.layers, self.slopes)):
            sizes = " ".join(f"{v:<10.3e}" for v in self.updates[:, l])
            lines.append(f"  {name:<6} {slope:+.3f}   {reading(slope):<18} {sizes}")
        return "\n".join(lines)


def reading(slope: float) -> str:
    """``width-independent`` (|slope| < 0.1), ``vanishes with N`` (< -0.35), ``grows with N`` (> 0.35), or
    ``drifts`` in between; ``nan`` for a non-finite slope."""
    if not np.isfinite(slope):
        return "nan"
    if abs(slope) < FLAT:
        return "width-independent"
    if slope < -SLOPE_WARN:
        return "vanishes with N"
    if slope > SLOPE_WARN:
        return "grows with N"
    return "drifts"


def fixed_batch(task, batch_size: int):
    """The batch every width and seed trains on: the first ``batch_size`` training samples (or of one online block
    drawn from ``data_seed`` 0's stream). Returns ``(x, y)``."""
    import torch

    if task.online:
        x, y = task.draw_block(torch.Generator().manual_seed(0))
    else:
        x, y = task.x_train, task.y_train
    return x[:batch_size], y[:batch_size]


def coord_check(config: Mapping, x, y, *, n_out: int, widths: Sequence[int] = DEFAULT_WIDTHS, steps: int = 5,
                seeds: Sequence[int] = (0, 1, 2), mse_convention: str = "half_sum",
                total_steps: int | None = None) -> CoordCheck:
    """Train ``config`` (keys :data:`COMBO_KEYS`, and any optimizer or schedule axis of
    :data:`raysweep.points.AXIS_DEFAULTS` off its default) for ``steps`` steps on the batch ``(x, y)`` at every width
    and seed; see the module docstring for what is measured. The update is the trainer's (:mod:`raysweep.step`:
    plain SGD, Adam at its defaults, or the general path with momentum, betas, eps and weight decay per layer), each
    step's rates times the schedule's multiplier of that step in a run of ``total_steps`` (default ``steps``)."""
    import torch

    from raysweep import model  # torch: like raysweep.step; the command line's errors stay light
    from raysweep.step import ScheduleFeed, loss_per_member, optimizer_state, scaled_rates, update, update_general
    from raysweep.train import optimizer_settings  # torch

    widths = tuple(int(n) for n in widths)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    x = x.to(dtype)
    target = y if config["loss"] == "xent" or y.is_floating_point() else torch.nn.functional.one_hot(y, n_out)
    target = target if config["loss"] == "xent" else target.to(dtype)
    depth = int(config["depth"])
    layers = tuple(f"h{l}" for l in range(1, depth)) + ("out",)
    updates = np.zeros((len(widths), len(layers)))
    try:
        for i, width in enumerate(widths):
            rates = _rates(config, width, x.shape[1])
            lrs = [torch.tensor(lr, dtype=dtype).reshape(1, 1, 1) for lr in rates]
            mult = model.readout_multiplier(width, torch.tensor([float(config["gamma"])], dtype=dtype),
                                            config["parametrization"])
            for seed in seeds:
                weights = model.init_weights(model.layer_widths(x.shape[1], width, depth, n_out), [init_seed(seed)],
                                             dtype=dtype)
                h0: list = []
                with torch.no_grad():
                    f0 = model.forward(weights, x, mult, hidden=h0)
                weights = [w.requires_grad_(True) for w in weights]
                path = update_path(config)
                opt = optimizer_state(path, config["optimizer"], weights, [optimizer_settings(config, width, depth)])
                sched = None if is_constant(config) else ScheduleFeed([config], total_steps or steps, dtype, x.device)
                for step in range(1, steps + 1):
                    loss = loss_per_member(model.forward(weights, x, mult) - f0, target, config["loss"],
                                           mse_convention)
                    grads = list(torch.autograd.grad(loss.sum(), weights))
                    scale = None if sched is None else sched.at(step)
                    with torch.no_grad():
                        if path == "general":
                            update_general(weights, grads, scaled_rates(lrs, scale), opt, step, scale)
                        else:
                            update(weights, grads, scaled_rates(lrs, scale), opt, step)
                ht: list = []
                with torch.no_grad():
                    ft = model.forward(weights, x, mult, hidden=ht)
                sizes = [float((a - b).abs().mean()) for a, b in zip(ht, h0)] + [float((ft - f0).abs().mean())]
                updates[i] += np.array(sizes) / len(seeds)
    except (ValueError, TypeError, NotImplementedError) as exc:
        return CoordCheck(dict(config), widths, error=f"{type(exc).__name__}: {exc}")
    return CoordCheck(dict(config), widths, layers, updates, fit_slopes(widths, updates))


def fit_slopes(widths: Sequence[int], updates: np.ndarray) -> tuple[float, ...]:
    """The log-log slope in N of each column of ``updates`` ``[widths, layers]`` (NaN where a size is not positive)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(updates)
    return tuple(float(np.polyfit(np.log(widths), logs[:, l], 1)[0]) if np.isfinite(logs[:, l]).all()
                 else math.nan for l in range(updates.shape[1]))


def _rates(config: Mapping, width: int, dim: int) -> tuple[float, ...]:
    """Per-layer learning rates from raysweep.scaling (``dim`` is passed where the rule takes it: torch_sp)."""
    kwargs = {k: config[k] for k in ("eta", "gamma", "depth", "parametrization", "optimizer", "lr_rule")}
    if "dim" in inspect.signature(learning_rates).parameters:
        kwargs["dim"] = dim
    return learning_rates(width=width, **kwargs).per_layer


def run_factory_spec(spec, *, widths: Sequence[int] = DEFAULT_WIDTHS, steps: int = 5,
                     seeds: Sequence[int] = (0, 1, 2), batch_size: int = 32, etas=None, gammas=None) -> list[CoordCheck]:
    """The coord check of a model factory's spec (:mod:`raysweep.custom.coordcheck`): every module with parameters,
    and every layer type, trained by the general path's real update, on the spec's data."""
    import torch  # the data's dtype

    from raysweep.custom.coordcheck import coord_check as factory_check  # torch and the user's code
    from raysweep.custom.train import as_task  # torch
    from raysweep.data import build_task  # torch
    from raysweep.errors import FactoryError
    from raysweep.train import steps_for  # torch

    experiment = spec.experiment.as_dict()
    task = as_task(build_task(experiment, dtype=getattr(torch, spec.experiment.dtype)))
    x, y = fixed_batch(task, batch_size)
    total = steps_for(experiment, task, batch_size)  # a schedule's length: the sweep's run at the check's batch
    widths = tuple(int(n) for n in widths)
    first = spec.points()[0]
    checks = []
    for combo in spec_combinations(spec, etas=etas, gammas=gammas):
        point = {**first, **AXIS_DEFAULTS, **combo}
        try:
            layers, updates = factory_check(experiment, task, point, x, y, widths=widths, steps=steps, seeds=seeds,
                                            total_steps=total)
        except (FactoryError, ValueError, TypeError, RuntimeError) as exc:
            checks.append(CoordCheck(dict(combo), widths, error=f"{type(exc).__name__}: {exc}"))
            continue
        checks.append(CoordCheck(dict(combo), widths, layers, updates, fit_slopes(widths, updates)))
    return checks


def spec_combinations(spec, *, etas: Sequence[float] | None = None,
                      gammas: Sequence[float] | None = None) -> list[dict]:
    """The distinct (parametrization, optimizer, lr_rule, loss, depth, gamma, eta, and the optimizer and schedule
    axes off their defaults: momentum, betas, eps, weight decay, schedule, ...) of a spec's points, in the spec's
    order; ``etas`` / ``gammas`` replace the spec's values of those axes."""
    seen: dict[tuple, dict] = {}
    for point in spec.points():
        extra = {a: axis_value(point, a) for a in AXIS_DEFAULTS if axis_value(point, a) != AXIS_DEFAULTS[a]}
        for eta, gamma in itertools.product(etas or [point["eta"]], gammas or [point["gamma"]]):
            combo = {k: point[k] for k in COMBO_KEYS} | {"eta": float(eta), "gamma": float(gamma)} | extra
            seen.setdefault(tuple(combo[k] for k in COMBO_KEYS) + tuple(extra.items()), combo)
    return list(seen.values())


def run_spec(spec, *, widths: Sequence[int] = DEFAULT_WIDTHS, steps: int = 5, seeds: Sequence[int] = (0, 1, 2),
             batch_size: int = 32, etas=None, gammas=None) -> list[CoordCheck]:
    """:func:`coord_check` for every combination of ``spec`` (:func:`spec_combinations`), on the spec's data."""
    import torch

    from raysweep.data import build_task  # torch: the data modules build tensors
    from raysweep.train import steps_for  # torch

    experiment = spec.experiment.as_dict()
    dtype = torch.float64 if spec.experiment.dtype == "float64" else torch.float32
    task = build_task(experiment, dtype=dtype)
    x, y = fixed_batch(task, batch_size)
    total = steps_for(experiment, task, batch_size)  # a schedule's length: the sweep's run at the check's batch
    return [coord_check(combo, x, y, n_out=task.n_out, widths=widths, steps=steps, seeds=seeds,
                        mse_convention=spec.experiment.mse_convention, total_steps=total)
            for combo in spec_combinations(spec, etas=etas, gammas=gammas)]


def plot(checks: Sequence[CoordCheck], path, *, max_panels: int = 12) -> None:
    """One log-log panel per combination (the first ``max_panels``): update size against N, one line per layer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [c for c in checks if not c.error][:max_panels]
    cols = min(3, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, check in enumerate(shown):
        ax = fig.add_subplot(rows, cols, i + 1)
        for l, name in enumerate(check.layers):
            ax.loglog(check.widths, check.updates[:, l], "o-", base=2, label=f"{name} ({check.slopes[l]:+.2f})")
        ax.set_xlabel("width N")
        ax.set_ylabel("mean |change| after the steps")
        c = check.config
        ax.set_title(f"{c['parametrization']} {c['optimizer']} {c['lr_rule']} L={c['depth']} "
                     f"gamma={c['gamma']:g} eta={c['eta']:g}", fontsize=8)
        ax.legend(fontsize=7, title="layer (slope)", title_fontsize=7)
    if not shown:
        fig.text(0.5, 0.5, "no combination could run", ha="center")
    fig.savefig(path, dpi=110)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m raysweep.coordcheck", description=__doc__.splitlines()[0])
    ap.add_argument("space", help="the search space YAML whose model is checked")
    ap.add_argument("--widths", default=",".join(map(str, DEFAULT_WIDTHS)), help="comma-separated widths N")
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps (default 5)")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..n-1 (default 3)")
    ap.add_argument("--batch-size", type=int, default=32, help="size of the fixed batch (default 32)")
    ap.add_argument("--eta", help="comma-separated etas replacing the spec's (one block per eta)")
    ap.add_argument("--gamma", help="comma-separated gammas replacing the spec's")
    ap.add_argument("--plot", help="write the log-log plot here (PNG)")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.space)
        widths = [int(v) for v in args.widths.split(",") if v.strip()]
        if len(widths) < 2 or min(widths) < 1 or args.steps < 1 or args.seeds < 1 or args.batch_size < 1:
            raise SpecError("--widths needs 2 or more positive widths; --steps, --seeds, --batch-size must be >= 1")
        custom = is_custom(spec.experiment.model)
        if spec.experiment.model != "mlp" and not custom:
            raise SpecError(f"experiment.model: a coord check scales an MLP's width; {args.space} trains the "
                            f"{spec.experiment.model} student, which has none")
        if custom:  # the launch's check of the factories first: a bad one is one line, exit 2
            from raysweep.custom.check import check_spec  # torch and the user's code

            check_spec(spec)
    except (SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    etas = _floats(args.eta) if args.eta else None
    gammas = _floats(args.gamma) if args.gamma else None
    n = len(spec_combinations(spec, etas=etas, gammas=gammas))
    print(f"coord check of {spec.name}: {n} combination(s), widths {widths}, {args.steps} steps, {args.seeds} "
          f"seed(s), one batch of {args.batch_size}; slope of log mean|change| vs log N per layer")
    if custom:  # a model factory: its modules' outputs, trained by the general path's step
        checks = run_factory_spec(spec, widths=widths, steps=args.steps, seeds=range(args.seeds),
                                  batch_size=args.batch_size, etas=etas, gammas=gammas)
    else:
        checks = run_spec(spec, widths=widths, steps=args.steps, seeds=range(args.seeds), batch_size=args.batch_size,
                          etas=etas, gammas=gammas)
    for check in checks:
        print(check.table())
    if args.plot:
        plot(checks, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
