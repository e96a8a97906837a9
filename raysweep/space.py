"""Search spaces: a YAML file -> a typed, frozen, self-checking :class:`SweepSpec`. Nothing runs on bad input.

The format (every key is checked; an unknown key is an error that suggests the closest known one)::

    name: quickstart            # required; [A-Za-z0-9_.-]+, not starting with '.'; names <storage>/<name>/
    description: "..."          # optional free text
    experiment:                 # required
      family: poly_online       # required: poly_online | poly_fixed | mlp_teacher | linear | noisy_linear
                                #           | digits | mnist | mnist1m | mnist1m_sampled
      steps: 300                # training length, int > 0 ...
      epochs: null              # ... or epochs, int > 0. Online families (poly_online; mlp_teacher, linear,
                                # noisy_linear with online: true) take steps only; fixed-data families take exactly
                                # one of the two.
      report_every: 50          # steps between reports, int > 0 (default 50)
      eval_samples: 2048        # int > 0; default 2048 for synthetic families. Classification families also take
                                # null (the default): the full test set, capped at 10000 samples.
      mse_convention: half_sum  # half_sum: 0.5 * mean over batch of the sum over outputs of (f - y)^2 (default)
                                # study: mean over batch and outputs, no 0.5 (the study's own; = 2/n_outputs * half_sum)
      dtype: float32            # float32 | float64
      divergence_factor: 100.0  # > 1. A trial is diverged when its loss is NaN/Inf or exceeds this multiple of
                                # its initial loss (the zero-predictor loss: the trained function is centred)
      data_seed: 0              # int >= 0: fixes the teacher, the data split and the eval set
      device: auto              # auto | cpu | cuda
      model: mlp                # mlp (default): the bias-free MLP of raysweep.model | linear: the student
                                # f(x) = w.x, w = 0 at step 0 (raysweep.model); a linear student takes no width,
                                # depth, gamma, parametrization or lr_rule axis (its rate is eta), and on the linear
                                # families its eval loss is the exact population loss
                                # | {factory: "package.module:function", kwargs: {}, readout: null,
                                # base_width: null, centred: false}: any torch.nn.Module (raysweep.custom.spec);
                                # parametrization SP or muP (by base shapes), lr_rule raw (filled in)
      grad_noise_scale: null    # off (null/false, default) | true | {batches: 8, batch_size: null}: measure the
                                # gradient noise scale at every report (raysweep.noise; batches: chunks m >= 2,
                                # batch_size: chunk size b > 0, null for the trial's batch size)
      snapshots: null           # off (null/false, default) | log | [0, 100, 1000]: each member's weights at these
                                # steps in <sweep>/snapshots/ (raysweep.snapshots; log: 0, 1, 2, 5, 10, 20, 50, ...
                                # and the last step; a list: those of its steps the trial reaches)
      curvature: null           # off (null/false, default) | true | {every: 1, top_k: 1, kinds: [...], batch: 1024,
                                # steps: 20}: Hessian sharpness and trace every `every` reports on a fixed
                                # curvature batch per seed (README "Curvature"; kinds: sharpness, batch_sharpness,
                                # preconditioned_sharpness, hessian_trace)
      # family keys; a key of another family is an error that names the family:
      #   poly_online, poly_fixed: dim (D, 32), n_train (P; 4096 online, 1024 fixed), degree (K >= 1, 2),
      #                            noise (>= 0, 0.0). Teacher y = (x.w)^K, w ~ N(0, I/D).
      #   mlp_teacher: dim (32), n_train (4096), noise (0.0), teacher_width (64), teacher_depth (2),
      #                teacher_gamma (> 0, 1.0), teacher_parametrization (SP | muP, muP),
      #                teacher_normalize (true: see raysweep.data), online (true)
      #   linear: dim (500), alpha (0 <= alpha <= 32, 2.0), beta (0.25), online (true), n_train (4096).
      #           x ~ N(0, diag(i^-alpha)), y = w*.x, w*_i ~ i^-(1/2 + alpha (beta - 1) / 2), Var y = 1.
      #   noisy_linear: the same and rho (0 <= rho < 1, 0.25): y = sqrt(1 - rho) w*.x + sqrt(rho) N(0, 1).
      #   digits: test_fraction (0 < f < 1, 0.2)          sklearn's bundled digits: runs offline
      #   mnist, mnist1m: path (required; a local file, nothing is downloaded)
      #   mnist1m_sampled: path (required), max_train_samples (required, int > 0)
      #   custom: factory (required, "package.module:function"), kwargs ({}), kind (classification |
      #           regression): the data factory's tensors (raysweep.custom.data); needs a model factory
    space:                      # required; batch_size, eta and width are required, the other axes have defaults
      batch_size: {pow2: [0, 7]}   # ints > 0
      eta: {pow2: [-12, 12]}       # floats > 0 (base learning rate; see raysweep.scaling for the effective one)
      width: [64, 128]             # ints > 0 (N)
      gamma: [1.0]                 # floats > 0 (richness), default [1.0]
      depth: [3]                   # ints >= 2 (L, the number of weight matrices), default [3]
      seed: {range: [0, 3]}        # ints >= 0 (init and data order), default [0]
      parametrization: [muP]       # SP | muP, default [muP]
      optimizer: [SGD]             # SGD | Adam, default [SGD]
      loss: [mse]                  # mse | xent, default [mse]; xent needs a classification family
      lr_rule: [study]             # study | mup_adam | raw, default [study]; mup_adam needs Adam or AdamW
      # optimizer and schedule axes (raysweep.step, raysweep.schedules); at their defaults they leave a point's
      # config key as it was before they existed (see config_key)
      momentum: [0.0]              # SGD heavy-ball momentum, 0 <= mu < 1, default [0.0]
      nesterov: [false]            # SGD Nesterov momentum (needs momentum > 0), default [false]
      beta1: [0.9]                 # Adam/AdamW, 0 <= beta1 < 1, default [0.9]
      beta2: [0.999]               # Adam/AdamW, 0 <= beta2 < 1, default [0.999]
      eps: [1.0e-8]                # Adam/AdamW, > 0, default [1e-8]
      eps_scaling: [global]        # global | mup (per layer under muP + mup_adam, see raysweep.scaling)
      weight_decay: [0.0]          # >= 0: SGD and Adam coupled (L2 in the gradient), AdamW decoupled
      weight_decay_scaling: [lr]   # lr (the decay step is lr * lambda, torch.optim) | independent (lambda)
      schedule: [constant]         # constant | cosine | linear | wsd, after a linear warmup (raysweep.schedules)
      warmup_steps: [0]            # ints >= 0 ...
      warmup_fraction: [0.0]       # ... or a fraction of the training steps, 0 <= f < 1 (not both)
      decay_fraction: [0.2]        # wsd: the fraction of training in the final decay, 0 < f <= 1
      final_fraction: [0.0]        # cosine, linear, wsd: the last multiplier of the decay, 0 <= f <= 1
      zip:                         # optional, grid search only: rows of axes that vary together (scaling rules)
        - {batch_size: 8, eta: 0.01, beta2: 0.999}
        - {batch_size: 16, eta: 0.014, beta2: 0.998}
    search:                     # optional; the algorithms are described in raysweep.search_spec
      algorithm: grid           # grid | random | optuna | eta_stability_depth | eta_decades_below_stable
      n_samples: null           # random only, required there: int > 0
      seed: 0                   # random: the sampling seed; optuna: the samplers' seed
      max_concurrent: null      # int > 0 or null: cap on trials running at once
      n_trials: null            # optuna only, required there: finished trials per study (one study per cell)
      sampler: tpe              # optuna only: tpe | gp | cmaes | qmc | random
      optuna_axes: [eta]        # optuna only: the axes Optuna searches; the other axes form a grid of cells
      metric: train_loss        # train_loss | eval_loss | eval_accuracy: what Optuna and schedulers compare
      mode: null                # min | max; default max for eval_accuracy, min for a loss
      stability_depth: null     # eta_stability_depth only, required there: int > 0
      decades_below_stable: null  # eta_decades_below_stable only, required there: float >= 0
      scheduler: null           # null | asha | hyperband | hyperband_sync | median | {type: asha, ...}
    fusion:                     # optional: train compatible trials as one fused bundle
      enabled: true
      max_members: 32           # int > 0
    resources:                  # optional
      cpus_per_trial: 1         # > 0
      gpus_per_trial: null      # in (0, 1], or null (no GPU unless sized later)
    checkpoint:                 # optional (false: none): a running bundle saves its state (raysweep.checkpoint)
      every_s: 300              # seconds of wall time between checkpoints (> 0, or null)
      every_steps: null         # steps between checkpoints (int > 0, or null); at report steps only

Each axis is a scalar (one value), a list, or a range form, a mapping with exactly one of:

- ``{pow2: [a, b]}``: 2**a, 2**(a+1), ..., 2**b (integers a <= b). ``step: 0.5`` gives fractional octaves
  (2**a, 2**(a+0.5), ... up to 2**b); on an integer axis every value must be whole.
- ``{logspace: [lo, hi, n]}``: n values log-spaced from lo to hi, both included (lo, hi > 0; n = 1 gives lo).
  Integer axes round half up and drop the duplicates this makes, so they may get fewer than n values.
- ``{range: [a, b]}`` / ``{range: [a, b, step]}``: Python's range (b excluded), integer axes only.
- ``{linspace: [lo, hi, n]}``: n evenly spaced values, both ends included, float axes only.

Generated floats are rounded to 12 significant digits (logspace 1..1000 gives 10.0, not 10.000000000000002).
Values are de-duplicated keeping their order. Float axes hold Python floats (1 and 1.0 are one value), integer
axes Python ints (a whole float such as ``1.0e3`` is accepted; ``true`` is not an integer). Enum values are
case-insensitive and stored canonically ("SP", "muP", "SGD", "Adam", "mse", "xent", "study", "mup_adam", "raw").
YAML detail: ``1e-5`` reads as a float here (YAML 1.2), and a duplicate key is an error.

``zip``: a list of mappings, each one value per axis, all naming the same axes (which may not also be given as
axes): the grid is the product of the other axes and these rows (a row is one combination, e.g. a batch size with the
eta and betas a scaling rule gives it). Grid search only. The zipped axes then hold the distinct values of the rows.

Points: a grid runs the Cartesian product, axes in :data:`raysweep.points.AXES` order (the last varies fastest),
values in the given order, minus the points no optimizer reads (:func:`raysweep.points.compatible`): ``lr_rule:
mup_adam`` with SGD (mup_adam is an Adam rule), ``nesterov: true`` with ``momentum: 0``, SGD with a beta1, beta2,
eps or eps_scaling off its default, Adam/AdamW with momentum or nesterov off its default. A random search draws
``n_samples`` distinct points with ``random.Random(search.seed)``: each axis value uniformly, repeats redrawn, in
draw order; it gets every point when n_samples >= the grid size. The guided algorithms (optuna and the eta scans)
choose among the grid's points (eta scans) or its ranges (optuna) at run time: ``points()`` gives the grid for
them. What a point is (its key, bundle and update path) lives in :mod:`raysweep.points`; the instrument options in
:mod:`raysweep.instrument_spec`.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from raysweep import families, limits, search_spec
from raysweep import fields as f
from raysweep.autobatch.config import AutobatchConfig
from raysweep.custom.spec import is_custom, model_option, plain
from raysweep.instrument_spec import curvature_option, grad_noise_option, snapshot_option
from raysweep.points import AXES, AXIS_DEFAULTS, COUPLED_AXES, compatible
from raysweep.scaling import ADAM_OPTIMIZERS, learning_rates
from raysweep.search_spec import ALGORITHMS, Scheduler, Search

__all__ = [  # closed sets first, then the types and functions
    "ALGORITHMS", "AUTO", "EPS_SCALINGS", "SCHEDULES", "WEIGHT_DECAY_SCALINGS", "CLASSIFICATION_FAMILIES",
    "DEVICES", "DTYPES", "EXPERIMENT_DEFAULTS", "FAMILIES", "LINEAR_STUDENT_AXES",
    "LOSSES", "LR_RULES", "MODELS", "MSE_CONVENTIONS", "OPTIMIZERS", "PARAMETRIZATIONS", "REGRESSION_FAMILIES",
    "Checkpoint", "Experiment", "Fusion", "Resources", "Scheduler", "Search", "Space", "SweepSpec", "setting",
    "check_name", "load_spec", "parse_spec",
]  # fmt: skip

REGRESSION_FAMILIES = families.REGRESSION  # the registry (raysweep.families) holds every family fact
CLASSIFICATION_FAMILIES = families.CLASSIFICATION
FAMILIES = REGRESSION_FAMILIES + CLASSIFICATION_FAMILIES
PARAMETRIZATIONS = ("SP", "muP", "torch_sp")  # torch_sp: PyTorch's default init, no multipliers (see scaling)
OPTIMIZERS = ("SGD", "Adam", "AdamW")
SCHEDULES = ("constant", "cosine", "linear", "wsd")  # raysweep.schedules.SCHEDULES (this module imports no torch)
WEIGHT_DECAY_SCALINGS = ("lr", "independent")
EPS_SCALINGS = ("global", "mup")
LOSSES = ("mse", "xent")
LR_RULES = ("study", "mup_adam", "raw")
MSE_CONVENTIONS = ("half_sum", "study")
DTYPES = ("float32", "float64")
DEVICES = ("auto", "cpu", "cuda")
MODELS = ("mlp", "linear")  # raysweep.model: the MLP, or the linear student f(x) = w.x
# A linear student has one weight matrix [D, out], zero at step 0 and no multiplier: it has no hidden width, depth,
# richness or parametrization, and trains every rule at eta. Its configurations carry these fixed values (the
# columns keep their types; README "Linear teachers").
LINEAR_STUDENT_AXES = {"width": 1, "depth": 1, "gamma": 1.0, "parametrization": "SP", "lr_rule": "raw"}

_FAMILY_DEFAULT = f.Marker("<family default>")  # Experiment.eval_samples: the family's (raysweep.families)
_pos_int = lambda p, v: f.as_int(p, v, ge=1)  # noqa: E731
_size = lambda p, v: f.as_int(p, v, ge=1, le=limits.MAX_DIM)  # noqa: E731  a matrix dimension
_seed = lambda p, v: f.as_int(p, v, ge=0, le=limits.MAX_SEED)  # noqa: E731
AUTO = "auto"  # batch_size: auto -> the largest batch that fits the memory target (raysweep.autobatch)
_batch = lambda p, v: AUTO if isinstance(v, str) and v.strip().lower() == AUTO else _size(p, v)  # noqa: E731
# The defaults of the experiment's own fields (eval_samples: the family's, raysweep.families). Read them through
# setting(), which takes the typed Experiment or a flat experiment mapping.
EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "steps": None, "epochs": None, "report_every": 50, "mse_convention": "half_sum", "dtype": "float32",
    "divergence_factor": 100.0, "data_seed": 0, "device": "auto", "grad_noise_scale": None, "model": "mlp",
    "snapshots": None, "curvature": None,
}
# Axis -> (kind, check of one value).
_AXIS_RULES = {
    "batch_size": ("int", _batch),
    "eta": ("float", lambda p, v: f.as_float(p, v, gt=0)),
    "width": ("int", _size),
    "gamma": ("float", lambda p, v: f.as_float(p, v, gt=0)),
    "depth": ("int", lambda p, v: f.as_int(p, v, ge=1, le=limits.MAX_DEPTH)),  # >= 2 for an MLP: SweepSpec
    "seed": ("int", _seed),
    "parametrization": ("enum", lambda p, v: f.as_choice(p, v, PARAMETRIZATIONS)),
    "optimizer": ("enum", lambda p, v: f.as_choice(p, v, OPTIMIZERS)),
    "loss": ("enum", lambda p, v: f.as_choice(p, v, LOSSES)),
    "lr_rule": ("enum", lambda p, v: f.as_choice(p, v, LR_RULES)),
    "momentum": ("float", lambda p, v: f.as_float(p, v, ge=0, lt=1)),
    "nesterov": ("enum", f.as_bool),
    "beta1": ("float", lambda p, v: f.as_float(p, v, ge=0, lt=1)),
    "beta2": ("float", lambda p, v: f.as_float(p, v, ge=0, lt=1)),
    "eps": ("float", lambda p, v: f.as_float(p, v, gt=0)),
    "eps_scaling": ("enum", lambda p, v: f.as_choice(p, v, EPS_SCALINGS)),
    "weight_decay": ("float", lambda p, v: f.as_float(p, v, ge=0)),
    "weight_decay_scaling": ("enum", lambda p, v: f.as_choice(p, v, WEIGHT_DECAY_SCALINGS)),
    "schedule": ("enum", lambda p, v: f.as_choice(p, v, SCHEDULES)),
    "warmup_steps": ("int", lambda p, v: f.as_int(p, v, ge=0)),
    "warmup_fraction": ("float", lambda p, v: f.as_float(p, v, ge=0, lt=1)),
    "decay_fraction": ("float", lambda p, v: f.as_float(p, v, gt=0, le=1)),
    "final_fraction": ("float", lambda p, v: f.as_float(p, v, ge=0, le=1)),
}


@dataclass(frozen=True, repr=False)
class Experiment(f.ShortRepr):
    """What every trial of a sweep trains on, for how long, and how it is measured.

    ``params`` holds the family-specific keys with their defaults applied (see the module docstring).
    ``steps`` or ``epochs`` is the training length: online families count steps; fixed-data families take one.
    ``mse_convention``: ``half_sum`` is 0.5 * mean over the batch of the sum over outputs of (f - y)^2;
    ``study`` is the mean over batch and outputs, no 0.5, i.e. (2 / n_outputs) * half_sum. With one output the
    study's loss and gradients are twice as large, so an SGD eta* sits one octave lower; Adam is (up to its eps)
    blind to the loss scale.
    ``divergence_factor``: a loss that is NaN/Inf or above this multiple of the initial loss marks the trial
    diverged (at step 0 the centred network is the zero predictor, so the initial loss does not depend on gamma).
    ``eval_samples`` is 2048 for synthetic families when not given and None (the full test set, capped at 10000)
    for classification families.
    ``grad_noise_scale``: None (off) or ``{"batches": m, "batch_size": b or None}``; ``snapshots``: None (off),
    ``"log"`` or a tuple of steps; ``curvature``: None (off) or ``{"every", "top_k", "kinds", "batch", "steps"}``
    (each normalized by :mod:`raysweep.instrument_spec`).
    ``model``: ``mlp`` or ``linear`` (the student ``f(x) = w.x`` from ``w = 0``; :data:`LINEAR_STUDENT_AXES`).
    """

    family: str
    steps: int | None = EXPERIMENT_DEFAULTS["steps"]
    epochs: int | None = EXPERIMENT_DEFAULTS["epochs"]
    report_every: int = EXPERIMENT_DEFAULTS["report_every"]
    eval_samples: int | None = _FAMILY_DEFAULT  # type: ignore[assignment]
    mse_convention: str = EXPERIMENT_DEFAULTS["mse_convention"]
    dtype: str = EXPERIMENT_DEFAULTS["dtype"]
    divergence_factor: float = EXPERIMENT_DEFAULTS["divergence_factor"]
    data_seed: int = EXPERIMENT_DEFAULTS["data_seed"]
    device: str = EXPERIMENT_DEFAULTS["device"]
    grad_noise_scale: Any = EXPERIMENT_DEFAULTS["grad_noise_scale"]
    model: str = EXPERIMENT_DEFAULTS["model"]
    snapshots: Any = EXPERIMENT_DEFAULTS["snapshots"]
    curvature: Any = EXPERIMENT_DEFAULTS["curvature"]
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        family = f.as_choice("experiment.family", self.family, FAMILIES)
        f.set_field(self, "family", family)
        f.set_field(self, "params", f.FrozenDict(families.check_params(family, self.params, _COMMON_KEYS)))
        f.set_field(self, "report_every", _pos_int("experiment.report_every", self.report_every))
        convention = f.as_choice("experiment.mse_convention", self.mse_convention, MSE_CONVENTIONS)
        f.set_field(self, "mse_convention", convention)
        f.set_field(self, "dtype", f.as_choice("experiment.dtype", self.dtype, DTYPES))
        f.set_field(self, "divergence_factor", f.as_float("experiment.divergence_factor", self.divergence_factor, gt=1))
        f.set_field(self, "data_seed", _seed("experiment.data_seed", self.data_seed))
        f.set_field(self, "device", f.as_choice("experiment.device", self.device, DEVICES))
        f.set_field(self, "grad_noise_scale", grad_noise_option(self.grad_noise_scale))
        f.set_field(self, "model", model_option(self.model))
        f.set_field(self, "snapshots", snapshot_option(self.snapshots))
        f.set_field(self, "curvature", curvature_option(self.curvature))
        self._check_length()
        if self.eval_samples is _FAMILY_DEFAULT:
            f.set_field(self, "eval_samples", families.get(family).eval_samples)
        elif self.kind == "regression":
            f.set_field(self, "eval_samples", _size("experiment.eval_samples", self.eval_samples))
        else:
            f.set_field(self, "eval_samples", f.optional(_size, "experiment.eval_samples", self.eval_samples))

    def _check_length(self) -> None:
        steps = None if self.steps is None else _pos_int("experiment.steps", self.steps)
        epochs = None if self.epochs is None else _pos_int("experiment.epochs", self.epochs)
        f.set_field(self, "steps", steps)
        f.set_field(self, "epochs", epochs)
        online = f"{self.family} trains online (fresh samples, no epochs), so its length is in steps"
        if self.online and epochs is not None:
            raise f.fail("experiment.epochs", f"must be null: {online}; set steps", epochs)
        if self.online and steps is None:
            raise f.fail("experiment.steps", f"is required: {online}", f.NOTHING)
        if not self.online and (steps is None) == (epochs is None):
            given = f"both (steps={steps}, epochs={epochs})" if steps else "neither"
            raise f.FieldError("experiment.steps", f"{self.family} takes exactly one of steps or epochs, got {given}")

    @property
    def kind(self) -> str:
        """'regression' (synthetic teachers) or 'classification' (digits, MNIST family)."""
        return families.kind(self)

    @property
    def online(self) -> bool:
        """True when training draws fresh samples (poly_online; mlp_teacher, linear, noisy_linear with online: true)."""
        return families.is_online(self)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> Experiment:
        """The typed Experiment of a flat experiment mapping (:meth:`as_dict`'s inverse); SpecError naming the
        field when it is not valid."""
        if not isinstance(mapping, Mapping):
            raise f.fail("experiment", "must be a mapping", mapping)
        if "family" not in mapping:
            raise f.fail("experiment.family", f"is required, one of {', '.join(FAMILIES)}", f.NOTHING)
        common = {k: v for k, v in mapping.items() if k in _COMMON_KEYS}
        return cls(**common, params={k: v for k, v in mapping.items() if k not in _COMMON_KEYS})

    def as_dict(self) -> dict:
        """The flat experiment mapping, defaults applied: what ``raysweep.data.build_task`` receives."""
        common = {fld.name: getattr(self, fld.name) for fld in fields(self) if fld.name != "params"}
        # off: absent, so that the config keys (and saved specs) of sweeps without the metric do not change
        noise = common.pop("grad_noise_scale")
        if noise is not None:
            common["grad_noise_scale"] = dict(noise)
        if common["model"] == EXPERIMENT_DEFAULTS["model"]:
            del common["model"]  # the MLP: absent, so that the config keys of every MLP sweep stay as they were
        elif is_custom(common["model"]):
            common["model"] = plain(common["model"])
        for name in ("snapshots", "curvature"):  # the other opt-in instruments: the same
            value = common.pop(name)
            if isinstance(value, Mapping):
                common[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            elif value is not None:
                common[name] = value if isinstance(value, str) else list(value)
        return {**common, **{k: plain(v) for k, v in self.params.items()}}

    def _shown(self) -> dict:
        family = families.get(self.family)
        defaults = family.defaults
        shown = {k: v for k, v in super()._shown().items() if k not in ("params", "eval_samples")}
        if self.eval_samples != family.eval_samples:
            shown["eval_samples"] = self.eval_samples
        changed = {k: v for k, v in self.params.items() if k not in defaults or v != defaults[k]}
        return {**shown, "params": changed} if changed else shown


_COMMON_KEYS = tuple(fld.name for fld in fields(Experiment) if fld.name != "params")


def setting(experiment: Experiment | Mapping[str, Any], name: str) -> Any:
    """The value of experiment field or family key ``name`` in a typed :class:`Experiment` or a flat experiment
    mapping (:meth:`Experiment.as_dict`, or one written by hand), its default when absent or null."""
    if isinstance(experiment, Experiment):
        return getattr(experiment, name) if name in _COMMON_KEYS else experiment.params.get(name)
    value = experiment.get(name)
    if value is not None:
        return value
    if name in EXPERIMENT_DEFAULTS:
        return EXPERIMENT_DEFAULTS[name]
    family = families.get(experiment["family"])
    if name == "eval_samples":
        return family.eval_samples
    return family.defaults.get(name)


@dataclass(frozen=True, repr=False)
class Space(f.ShortRepr):
    """The axes, one tuple of values each; a field may be given as a scalar, a list or a range form.

    ``eta`` is the base learning rate; ``lr_rule`` says how it becomes the effective one (raysweep.scaling):
    ``study``: eta * gamma_mult * width_mult, with SGD gamma_mult = gamma^2 (gamma <= 1) or gamma^(2/L), muP
    width_mult = N; Adam gamma_mult = gamma (gamma <= 1) or gamma^(1/L), muP width_mult = sqrt(N) (the study's
    rule; a global sqrt(N) is not muP-correct). ``mup_adam``: per-layer muP Adam, input and readout layers
    eta * gamma_mult, hidden layers eta * gamma_mult / sqrt(N). ``raw``: no gamma multiplier (muP lr = eta * N).
    """

    batch_size: tuple[int, ...]
    eta: tuple[float, ...]
    width: tuple[int, ...]
    gamma: tuple[float, ...] = (1.0,)
    depth: tuple[int, ...] = (3,)
    seed: tuple[int, ...] = (0,)
    parametrization: tuple[str, ...] = ("muP",)
    optimizer: tuple[str, ...] = ("SGD",)
    loss: tuple[str, ...] = ("mse",)
    lr_rule: tuple[str, ...] = ("study",)
    momentum: tuple[float, ...] = (AXIS_DEFAULTS["momentum"],)
    nesterov: tuple[bool, ...] = (AXIS_DEFAULTS["nesterov"],)
    beta1: tuple[float, ...] = (AXIS_DEFAULTS["beta1"],)
    beta2: tuple[float, ...] = (AXIS_DEFAULTS["beta2"],)
    eps: tuple[float, ...] = (AXIS_DEFAULTS["eps"],)
    eps_scaling: tuple[str, ...] = (AXIS_DEFAULTS["eps_scaling"],)
    weight_decay: tuple[float, ...] = (AXIS_DEFAULTS["weight_decay"],)
    weight_decay_scaling: tuple[str, ...] = (AXIS_DEFAULTS["weight_decay_scaling"],)
    schedule: tuple[str, ...] = (AXIS_DEFAULTS["schedule"],)
    warmup_steps: tuple[int, ...] = (AXIS_DEFAULTS["warmup_steps"],)
    warmup_fraction: tuple[float, ...] = (AXIS_DEFAULTS["warmup_fraction"],)
    decay_fraction: tuple[float, ...] = (AXIS_DEFAULTS["decay_fraction"],)
    final_fraction: tuple[float, ...] = (AXIS_DEFAULTS["final_fraction"],)
    zip: tuple = ()  # rows of axes that vary together (module doc); each a FrozenDict axis -> value

    def __post_init__(self):
        rows = _zip_rows(self.zip)
        f.set_field(self, "zip", rows)
        for axis in (rows[0] if rows else ()):  # the zipped axes hold the rows' distinct values
            f.set_field(self, axis, tuple(dict.fromkeys(row[axis] for row in rows)))
        for axis in AXES:
            kind, check = _AXIS_RULES[axis]
            f.set_field(self, axis, f.expand_axis(f"space.{axis}", getattr(self, axis), kind, check))

    @property
    def zipped(self) -> tuple[str, ...]:
        """The axes of the ``zip`` rows (empty without them)."""
        return tuple(self.zip[0]) if self.zip else ()


def _zip_rows(raw: Any) -> tuple:
    """The ``space.zip`` rows, checked: a list of mappings naming the same axes, one valid value each."""
    if not raw:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise f.fail("space.zip", "must be a list of mappings, each one value per axis", raw)
    rows = []
    for i, row in enumerate(raw):
        path = f"space.zip[{i}]"
        if not isinstance(row, Mapping) or not row:
            raise f.fail(path, "must be a mapping of axis -> one value", row)
        f.check_keys(row, AXES, path)
        if rows and set(row) != set(rows[0]):
            raise f.fail(path, f"must name the same axes as space.zip[0] ({', '.join(rows[0])})", dict(row))
        checked = {}
        for axis in AXES:
            if axis in row:
                if isinstance(row[axis], (list, tuple, Mapping)):
                    raise f.fail(f"{path}.{axis}", "must be one value", row[axis])
                checked[axis] = _AXIS_RULES[axis][1](f"{path}.{axis}", row[axis])
        rows.append(f.FrozenDict(checked))
    return tuple(rows)


@dataclass(frozen=True, repr=False)
class Fusion(f.ShortRepr):
    """Train compatible trials (same data order and shapes) as one bundle of at most ``max_members``."""

    enabled: bool = True
    max_members: int = 32

    def __post_init__(self):
        f.set_field(self, "enabled", f.as_bool("fusion.enabled", self.enabled))
        f.set_field(self, "max_members", _pos_int("fusion.max_members", self.max_members))


@dataclass(frozen=True, repr=False)
class Checkpoint(f.ShortRepr):
    """How often a running bundle saves a checkpoint (raysweep.checkpoint): at the first report at least
    ``every_s`` seconds of wall time or ``every_steps`` steps after the previous one (either null: that rule off).
    ``enabled: false`` saves none. The default, every 300 s, never checkpoints a trial shorter than that."""

    enabled: bool = True
    every_s: float | None = 300.0
    every_steps: int | None = None

    def __post_init__(self):
        f.set_field(self, "enabled", f.as_bool("checkpoint.enabled", self.enabled))
        f.set_field(self, "every_s", f.optional(f.as_float, "checkpoint.every_s", self.every_s, gt=0))
        f.set_field(self, "every_steps", f.optional(_pos_int, "checkpoint.every_steps", self.every_steps))
        if self.enabled and self.every_s is None and self.every_steps is None:
            raise f.fail("checkpoint", "needs every_s or every_steps (or enabled: false)",
                         dict(every_s=None, every_steps=None))


@dataclass(frozen=True, repr=False)
class Resources(f.ShortRepr):
    """What each trial asks Ray for. ``gpus_per_trial: None`` asks for no GPU (autobatch may size it later)."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None

    def __post_init__(self):
        f.set_field(self, "cpus_per_trial", f.as_float("resources.cpus_per_trial", self.cpus_per_trial, gt=0))
        gpus = f.optional(f.as_float, "resources.gpus_per_trial", self.gpus_per_trial, gt=0, le=1)
        f.set_field(self, "gpus_per_trial", gpus)


_NAME = re.compile(r"[A-Za-z0-9_.-]+")
MAX_NAME_LENGTH = 100  # a folder name, and the prefix of Optuna study names and temporary file names


def check_name(name: Any, path: str = "name") -> str:
    """A sweep name: ``[A-Za-z0-9_.-]+``, at most :data:`MAX_NAME_LENGTH` characters, not starting with '.', not a
    sweep's table folder (``trials``, ``curves``). SpecError naming ``path`` otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith(".") or len(name) > MAX_NAME_LENGTH:
        must = (f"must match [A-Za-z0-9_.-]+, hold at most {MAX_NAME_LENGTH} characters and not start with '.' (it "
                "names the folder <storage>/<name>/)")
        raise f.fail(path, must, name)
    if name in ("trials", "curves"):  # <storage>/trials/ would make the storage root read as a sweep folder
        raise f.fail(path, "must not be trials or curves (the names of a sweep's own table folders)", name)
    return name


@dataclass(frozen=True, repr=False)
class SweepSpec(f.ShortRepr):
    """A validated sweep. ``source`` (the file it came from) is not part of equality."""

    name: str
    experiment: Experiment
    space: Space
    search: Search = field(default_factory=Search)
    fusion: Fusion = field(default_factory=Fusion)
    resources: Resources = field(default_factory=Resources)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    autobatch: Any = None  # raysweep.autobatch.AutobatchConfig when the spec has an `autobatch:` section
    description: str = ""
    source: str = field(default="<string>", compare=False)

    def __post_init__(self):
        check_name(self.name)
        if not isinstance(self.description, str):
            raise f.fail("description", "must be a string", self.description)
        for name, cls in (("experiment", Experiment), ("space", Space), ("search", Search), ("fusion", Fusion),
                          ("resources", Resources), ("checkpoint", Checkpoint)):  # fmt: skip
            if not isinstance(getattr(self, name), cls):
                raise f.fail(name, f"must be a {cls.__name__} (use parse_spec for mappings)", getattr(self, name))
        family, space = self.experiment.family, self.space
        if "xent" in space.loss and self.experiment.kind == "regression":
            hint = f" with experiment.family {family} (xent needs one of {', '.join(CLASSIFICATION_FAMILIES)})"
            raise f.fail("space.loss", "must be mse for a regression family", space.loss, hint)
        if "mup_adam" in space.lr_rule and not set(ADAM_OPTIMIZERS) & set(space.optimizer):
            raise f.fail("space.lr_rule", "mup_adam is the per-layer muP Adam rule: space.optimizer must include "
                         "Adam or AdamW", space.lr_rule, f" with optimizer {f.show(space.optimizer)}")
        _check_model(self.experiment, space)
        if max(space.warmup_steps) > 0 and max(space.warmup_fraction) > 0:
            raise f.fail("space.warmup_fraction", "must be 0 when space.warmup_steps is set (give the warmup in "
                         "steps or as a fraction, not both)", space.warmup_fraction)
        if space.zip and self.search.algorithm != "grid":
            raise f.fail("space.zip", "needs search.algorithm: grid (its rows tie axes together)",
                         self.search.algorithm)
        if self.n_points() == 0:
            raise f.FieldError("space", "has no point an optimizer reads (e.g. nesterov: true needs a momentum > 0; "
                               "betas and eps are Adam's, momentum SGD's)")
        if is_custom(self.experiment.model):
            if self.experiment.model["base_width"] is None:  # muP's base: the smallest width of the space
                model = f.FrozenDict({**self.experiment.model, "base_width": min(space.width)})
                f.set_field(self.experiment, "model", model)
        search_spec.check(self.search, space, self.experiment, AXES)
        if self.search.scheduler is not None and self.search.scheduler.type == "hyperband_sync" \
                and not self.checkpoint.enabled:
            raise f.fail("checkpoint", "must be on for search.scheduler hyperband_sync (a paused trial resumes from "
                         "its checkpoint)", False)
        _check_size(self)
        _check_arithmetic(self)

    def points(self) -> list[dict]:
        """The trial configurations, each a dict with every key of :data:`AXES` (see the module docstring)."""
        if self.search.algorithm != "random":
            return list(self._grid())
        axes = {axis: getattr(self.space, axis) for axis in AXES}
        return f.sample_points(axes, self.n_points(), self.search.seed, keep=compatible, grid=self._grid)

    def n_points(self) -> int:
        """``len(self.points())``, without building them for a grid."""
        if self.search.algorithm != "random":
            return self._n_grid()
        return min(self.search.n_samples, self._n_grid())

    def _grid(self):
        rows, zipped = self.space.zip or (f.FrozenDict(),), self.space.zipped
        free = [axis for axis in AXES if axis not in zipped]
        for values in itertools.product(*(getattr(self.space, axis) for axis in free)):
            for row in rows:  # the zip rows vary fastest
                given = {**dict(zip(free, values)), **row}
                point = {axis: given[axis] for axis in AXES}
                if compatible(point):
                    yield point

    def _n_grid(self) -> int:
        rows, zipped = self.space.zip or (f.FrozenDict(),), self.space.zipped
        others = math.prod(len(getattr(self.space, axis)) for axis in AXES
                           if axis not in COUPLED_AXES and axis not in zipped)
        free = [axis for axis in COUPLED_AXES if axis not in zipped]
        coupled = sum(compatible({**dict(zip(free, values)), **row}) for row in rows
                      for values in itertools.product(*(getattr(self.space, axis) for axis in free)))
        return others * coupled

    def to_dict(self) -> dict:
        """Canonical plain mapping (defaults applied, range forms expanded); ``parse_spec(to_dict()) == self``."""
        return {
            "name": self.name,
            "description": self.description,
            "experiment": self.experiment.as_dict(),
            # the optimizer and schedule axes at their default alone are left out (a spec saved before them reads the
            # same)
            "space": {**{axis: list(getattr(self.space, axis)) for axis in AXES if axis not in self.space.zipped
                         and not (axis in AXIS_DEFAULTS and getattr(self.space, axis) == (AXIS_DEFAULTS[axis],))},
                      **({"zip": [dict(row) for row in self.space.zip]} if self.space.zip else {})},
            "search": self.search.as_dict(),
            "fusion": _fields_dict(self.fusion),
            "resources": _fields_dict(self.resources),
            # at its default: absent, so that saved specs of earlier sweeps read back equal
            **({"checkpoint": _fields_dict(self.checkpoint)} if self.checkpoint != Checkpoint() else {}),
            **({"autobatch": {k: list(v) if isinstance(v, tuple) else v for k, v in _fields_dict(self.autobatch).items()}}
               if self.autobatch is not None else {}),
        }

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML (block mappings, flow lists); ``load_spec`` reads it back to an equal spec."""
        return yaml.dump(self.to_dict(), Dumper=f.Dumper, sort_keys=False, allow_unicode=True, width=120)


def _check_model(experiment: Experiment, space: Space) -> None:
    """An MLP has a hidden layer (depth >= 2); a linear student has exactly :data:`LINEAR_STUDENT_AXES`; a user's
    model (raysweep.custom) trains at ``lr_rule: raw``, SP and muP by base shapes and torch_sp as built (autobatch
    sizes it by measuring its real steps)."""
    if is_custom(experiment.model):
        if space.lr_rule != ("raw",):
            raise f.fail("space.lr_rule", "must be [raw] with a model factory (its rates are eta times the muP "
                         "multipliers of raysweep.custom.mup)", list(space.lr_rule))
        return
    if experiment.family == "custom":
        raise f.fail("experiment.model", "must be a model factory {factory: package.module:function} with the "
                     "custom family (the MLP reads flat features of a built-in family)", experiment.model)
    if experiment.model == "linear":
        for axis, value in LINEAR_STUDENT_AXES.items():
            if getattr(space, axis) != (value,):
                raise f.fail(f"space.{axis}", f"must be [{value}] with experiment.model linear", getattr(space, axis))
        return
    for i, depth in enumerate(space.depth):
        if depth < 2:
            raise f.fail(f"space.depth[{i}]", "must be an integer >= 2", depth,
                         " (an MLP has a hidden layer; experiment.model linear is the depth-1 student)")


def _check_size(spec: SweepSpec) -> None:
    """At most :data:`raysweep.limits.MAX_POINTS` configurations, counted before any is built."""
    lengths = {axis: len(getattr(spec.space, axis)) for axis in AXES}
    product = " x ".join(f"{axis} {n}" for axis, n in lengths.items() if n > 1) or "1"
    search = spec.search
    if search.algorithm == "random":
        if search.n_samples > limits.MAX_POINTS:
            raise f.fail("search.n_samples", f"must be at most {limits.MAX_POINTS:,} (the limit of configurations "
                         "per sweep)", search.n_samples)
        return
    n = spec._n_grid()
    if n > limits.MAX_POINTS:
        raise f.FieldError("space", f"{n:,} configurations ({product}), more than the limit of "
                           f"{limits.MAX_POINTS:,} per sweep; split the sweep or use search: {{algorithm: random, "
                           "n_samples: ...}")
    if search.algorithm == "optuna":
        cells = math.prod(n for axis, n in lengths.items() if axis not in search.optuna_axes)
        if cells * search.n_trials > limits.MAX_POINTS:
            raise f.fail("search.n_trials", f"times the {cells:,} cells must be at most {limits.MAX_POINTS:,} trials",
                         search.n_trials)


def _check_arithmetic(spec: SweepSpec) -> None:
    """Values that each fit their field but not together: samples seen, learning rates, and the gamma range of the
    dtype (:func:`raysweep.limits.gamma_range`)."""
    exp, space = spec.experiment, spec.space
    batches = [b for b in space.batch_size if b != AUTO] or [1]
    if is_custom(exp.model):  # a user's model: its rates and ranges are its own (raysweep.custom)
        if exp.steps is not None and exp.steps * max(batches) > limits.INT64_MAX:
            raise f.fail("experiment.steps", f"times the largest batch_size ({max(batches)}) must fit int64 (the "
                         "samples_seen column)", exp.steps)
        return
    if exp.steps is not None and exp.steps * max(batches) > limits.INT64_MAX:
        raise f.fail("experiment.steps", f"times the largest batch_size ({max(batches)}) must fit int64 (the "
                     "samples_seen column)", exp.steps)
    if exp.epochs is not None:
        n_train = exp.params.get("n_train", limits.MAX_DIM)
        if exp.epochs * n_train > limits.INT64_MAX:
            raise f.fail("experiment.epochs", f"times the training set ({n_train:,} samples at most) must fit int64 "
                         "(the samples_seen column)", exp.epochs)
    for parametrization in space.parametrization:
        narrow, wide = min(space.width), max(space.width)
        lowest, highest = limits.gamma_range(exp.dtype, parametrization, narrow)[0], \
            limits.gamma_range(exp.dtype, parametrization, wide)[1]
        if min(space.gamma) < lowest:
            fix = "use experiment.dtype: float64 or larger gammas" if exp.dtype == "float32" else "use larger gammas"
            raise f.FieldError("space.gamma", f"{min(space.gamma):g} is below {lowest:.2g}, the smallest gamma at which "
                               f"{parametrization} at width {narrow} in {exp.dtype} keeps its target (below it the "
                               f"centred target a f0 + y rounds y away; README 'Limits'); {fix}")
        if max(space.gamma) > highest:
            raise f.FieldError("space.gamma", f"{max(space.gamma):g} is above {highest:.2g}, the largest gamma at which "
                               f"{parametrization} at width {wide} in {exp.dtype} can fit its target (the readout "
                               "would need values whose square overflows; README 'Limits')")
    _check_learning_rates(spec)


def _check_learning_rates(spec: SweepSpec) -> None:
    """Every layer's learning rate at the corners of the space (it is monotone in eta, gamma and width) is a normal
    number of the dtype: finite, and not flushed to zero."""
    exp, space = spec.experiment, spec.space
    dim = exp.params.get("dim")
    corners = itertools.product(
        sorted({min(space.eta), max(space.eta)}), sorted({min(space.gamma), max(space.gamma)}),
        sorted({min(space.width), max(space.width)}), space.depth, space.parametrization, space.optimizer,
        space.lr_rule,
    )
    for eta, gamma, width, depth, parametrization, optimizer, lr_rule in corners:
        if lr_rule == "mup_adam" and optimizer not in ADAM_OPTIMIZERS:
            continue
        rates = learning_rates(eta=eta, gamma=gamma, width=width, depth=depth, parametrization=parametrization,
                               optimizer=optimizer, lr_rule=lr_rule, dim=dim).per_layer
        for layer, lr in enumerate(rates):
            if lr == lr and (lr <= 0 or not limits.normal(lr, exp.dtype)):  # NaN: torch_sp's input layer w/o dim
                raise f.fail("space.eta", f"gives layer {layer + 1} a learning rate of {lr:.3g} (eta {eta:g}, gamma "
                             f"{gamma:g}, width {width}, depth {depth}, {parametrization} {optimizer} {lr_rule}), "
                             f"not a normal {exp.dtype} number; narrow the eta or gamma range", list(space.eta))


def _fields_dict(obj: Any) -> dict:
    return {fld.name: getattr(obj, fld.name) for fld in fields(obj)}


def parse_spec(mapping: Any, *, source: str = "<string>") -> SweepSpec:
    """Validate a mapping (e.g. parsed YAML) into a :class:`SweepSpec`; SpecError names the field and ``source``."""
    try:
        return _parse(mapping, source)
    except f.FieldError as err:
        raise err.at(source) from None


def _parse(mapping: Any, source: str) -> SweepSpec:
    if not isinstance(mapping, Mapping):
        raise f.fail("top level", "must be a mapping with name, experiment and space", mapping)
    f.check_keys(mapping, [fld.name for fld in fields(SweepSpec) if fld.name != "source"], "")
    if mapping.get("name") is None:
        raise f.fail("name", "is required (it names the folder <storage>/<name>/)", f.NOTHING)
    all_family_keys = tuple(dict.fromkeys(k for fam in families.REGISTRY.values() for k in fam.keys))
    exp = f.section(mapping, "experiment", _COMMON_KEYS + all_family_keys, required=True)
    experiment = Experiment.from_dict(exp)
    axes = f.section(mapping, "space", AXES + ("zip",), required=True)
    rows = axes.get("zip") or []
    zipped = set(rows[0]) if rows and isinstance(rows, (list, tuple)) and isinstance(rows[0], Mapping) else set()
    for axis in sorted(zipped & set(axes)):
        raise f.fail(f"space.{axis}", "is zipped (space.zip names it): give it in the zip rows only", axes[axis])
    axes.update({axis: [row.get(axis) for row in rows] for axis in zipped})  # Space takes them from the rows
    if is_custom(experiment.model):
        # a saved spec holds lr_rule: [raw]; any other value is an error (SweepSpec)
        axes = {"lr_rule": ["raw"], **axes}
    if experiment.model == "linear":
        for axis, value in LINEAR_STUDENT_AXES.items():
            # a saved spec (spec.yaml) holds the fixed values: those are accepted, any other is an error
            if axis in axes and (axes[axis] if isinstance(axes[axis], list) else [axes[axis]]) != [value]:
                raise f.fail(f"space.{axis}", "must not be given with experiment.model linear (f(x) = w.x has no "
                             "width, depth, gamma, parametrization or lr_rule; its rate is eta)", axes[axis])
        axes = {**axes, **{axis: [value] for axis, value in LINEAR_STUDENT_AXES.items()}}
    for axis in ("batch_size", "eta", "width"):
        if axis not in axes:
            raise f.fail(f"space.{axis}", "is required (a value, a list or a range form)", f.NOTHING)
    description = mapping.get("description")
    return SweepSpec(
        name=mapping["name"],
        experiment=experiment,
        space=Space(**axes),
        search=Search(**f.section(mapping, "search", tuple(fld.name for fld in fields(Search)), required=False)),
        fusion=Fusion(**f.section(mapping, "fusion", tuple(fld.name for fld in fields(Fusion)), required=False)),
        resources=Resources(
            **f.section(mapping, "resources", tuple(fld.name for fld in fields(Resources)), required=False)
        ),
        checkpoint=_checkpoint(mapping.get("checkpoint")),
        autobatch=_autobatch(mapping.get("autobatch"), source),
        description="" if description is None else description,
        source=source,
    )


def _checkpoint(raw: Any) -> Checkpoint:
    """The ``checkpoint:`` section: a mapping, ``false`` (none saved), or absent / null / ``true`` (the default)."""
    if raw is None or raw is True:
        return Checkpoint()
    if raw is False:
        return Checkpoint(enabled=False)
    return Checkpoint(**f.section({"checkpoint": raw}, "checkpoint", tuple(fld.name for fld in fields(Checkpoint)),
                                  required=False))


def _autobatch(raw: Any, source: str):
    """The ``autobatch:`` section (see raysweep.autobatch.config), or None when the spec has none."""
    if raw is None:
        return None
    return AutobatchConfig.from_mapping(raw, source=source)


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a search-space file. Any problem (missing, empty, bad YAML, bad field) is a SpecError."""
    source = os.fspath(path)
    return parse_spec(f.read_yaml(source), source=source)
