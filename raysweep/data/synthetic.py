"""Synthetic teachers: the polynomial teacher (online and fixed-data), the MLP teacher, and the power-law linear
teacher (``linear``, ``noisy_linear``; its closed forms live in :mod:`raysweep.linear_theory`).

Every random quantity comes from its own CPU stream, all in float64 and then cast to the requested dtype:

- the teacher from ``data_seed`` (stream "teacher"): the same for every trial of a sweep (the linear teacher has no
  random part: it is fixed by ``(dim, alpha, beta)``);
- the eval set from ``data_seed`` (stream "eval"), the fixed training set from ``data_seed`` (stream "train");
- online blocks from the generator the trainer passes to `Task.draw_block` (seeded from the trial's seed).

A block draws ``x`` first, then the label noise (always drawn, so the ``x`` stream does not depend on ``noise``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from raysweep import families, linear_theory, model
from raysweep.data._base import Options, Population, Task, generator
from raysweep.errors import DataError
from raysweep.seeds import derive_seed

N_PROBE = 8192  # samples of the probe set that fixes the MLP teacher's output scale



@dataclass(frozen=True)
class PolySampler:
    """``x ~ N(0, I_D)``, ``y = (x . w)^K + noise * N(0, 1)``, shape ``[n, 1]``; float64, CPU."""

    w: torch.Tensor
    degree: int
    noise: float

    def __call__(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, self.w.shape[0], generator=gen, dtype=torch.float64)
        eps = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        return x, (x @ self.w).unsqueeze(1) ** self.degree + self.noise * eps


@dataclass(frozen=True)
class MLPSampler:
    """``x ~ N(0, I_D)``, ``y = f(x) / y_scale + noise * N(0, 1)``, f the raw teacher MLP; float64, CPU."""

    weights: tuple[torch.Tensor, ...]
    out_multiplier: torch.Tensor
    y_scale: float
    noise: float

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return model.forward(self.weights, x, self.out_multiplier)[0]

    def __call__(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, self.weights[0].shape[1], generator=gen, dtype=torch.float64)
        eps = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        return x, self.f(x) / self.y_scale + self.noise * eps


@dataclass(frozen=True)
class LinearSampler:
    """``x = z * scale``, ``z ~ N(0, I_D)``, ``scale = sqrt(lambda)``; ``y = sqrt(1 - rho) (x . w) + sqrt(rho) eps``,
    ``eps ~ N(0, 1)``, shape ``[n, 1]``; float64, CPU."""

    scale: torch.Tensor
    w: torch.Tensor
    rho: float

    def __call__(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, self.w.shape[0], generator=gen, dtype=torch.float64) * self.scale
        eps = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        return x, math.sqrt(1.0 - self.rho) * (x @ self.w).unsqueeze(1) + math.sqrt(self.rho) * eps


def _build(family: str, label: str, sampler: PolySampler | MLPSampler | LinearSampler, teacher: Any, opts: Options,
           seed: int, n_train: int, online: bool, device, dtype, population: Population | None = None) -> Task:
    n_eval = opts.optional_int("eval_samples", families.get(family).eval_default)
    x_eval, y_eval = sampler(generator(seed, "eval"), n_eval)
    train = {}
    if online:
        train["block_size"] = n_train
    else:
        x_train, y_train = sampler(generator(seed, "train"), n_train)
        train["x_train"] = x_train.to(device=device, dtype=dtype)
        train["y_train"] = y_train.to(device=device, dtype=dtype)
    return Task(
        dataset=label, kind="regression", dim=x_eval.shape[1], n_out=1,
        x_eval=x_eval.to(device=device, dtype=dtype), y_eval=y_eval.to(device=device, dtype=dtype),
        teacher=teacher, params={"family": family, "data_seed": seed, **opts.resolved},
        sampler=sampler if online else None, population=population, **train,
    )


def build_poly(experiment, *, online: bool, device="cpu", dtype=torch.float32) -> Task:
    """Polynomial teacher: ``y = (x . w)^K + noise * N(0, 1)``, ``x ~ N(0, I_D)``, ``w ~ N(0, I / D)``.

    Online (``poly_online``): fresh blocks of ``n_train`` (P, default 4096) samples. Fixed (``poly_fixed``): one set
    of ``n_train`` (default 1024) samples. ``task.teacher`` is ``w``, shape ``[D]``.
    Labels: ``poly_online(D=32,K=2)``, ``poly_fixed(D=32,K=2,P=1024)``, plus ``,noise=0.1`` when noise > 0.
    """
    family = "poly_online" if online else "poly_fixed"
    opts = Options(experiment, family)
    seed = opts.seed()
    d = families.get(family).defaults
    dim = opts.int("dim", d["dim"])
    n_train = opts.int("n_train", d["n_train"])
    degree = opts.int("degree", d["degree"])
    noise = opts.float("noise", d["noise"])
    w = torch.randn(dim, generator=generator(seed, "teacher"), dtype=torch.float64) / dim**0.5
    label = f"{family}(D={dim},K={degree}" + ("" if online else f",P={n_train}") + (
        f",noise={noise:g}" if noise else "") + ")"
    teacher = w.to(device=device, dtype=dtype, copy=True)
    return _build(family, label, PolySampler(w, degree, noise), teacher, opts, seed, n_train, online, device, dtype)


def build_mlp_teacher(experiment, *, device="cpu", dtype=torch.float32) -> Task:
    """MLP teacher: ``y = f(x) / y_scale + noise * N(0, 1)``, ``x ~ N(0, I_D)``.

    ``f`` is a raw (uncentred) scalar MLP of `raysweep.model`'s rule with widths
    ``layer_widths(D, teacher_width, teacher_depth, 1)``, weights ``init_weights(widths, [derive_seed(data_seed,
    "teacher")])``, readout ``readout_multiplier(teacher_width, teacher_gamma, teacher_parametrization)``.
    ``y_scale`` (in ``task.params``) is the std of ``f`` over a probe set of 8192 samples drawn from ``data_seed``
    (stream "probe"), so y has std ~1 whatever the parametrization; ``teacher_normalize: false`` sets it to 1
    (the raw teacher; under muP its outputs are O(1/N)). The readout multiplier is a global factor, so with
    normalisation on, ``teacher_gamma`` and ``teacher_parametrization`` do not change the task.
    ``online`` (default true): fresh blocks of ``n_train`` samples; false: one fixed set of ``n_train``.
    ``task.teacher`` is the weight tuple, each ``[1, fan_in, fan_out]``.
    Label: ``mlp_teacher(D=32,N=64,L=2,muP,gamma=1)``, plus ``,P=4096`` when fixed, ``,noise=..`` when noise > 0,
    ``,raw`` when not normalised.
    """
    opts = Options(experiment, "mlp_teacher")
    seed = opts.seed()
    d = families.get("mlp_teacher").defaults
    dim = opts.int("dim", d["dim"])
    n_train = opts.int("n_train", d["n_train"])
    noise = opts.float("noise", d["noise"])
    width = opts.int("teacher_width", d["teacher_width"])
    depth = opts.int("teacher_depth", d["teacher_depth"])
    gamma = opts.float("teacher_gamma", d["teacher_gamma"], open_min=True)
    param = opts.choice("teacher_parametrization", d["teacher_parametrization"], model.PARAMETRIZATIONS)
    normalize = opts.bool("teacher_normalize", d["teacher_normalize"])
    online = opts.bool("online", d["online"])

    widths = model.layer_widths(dim, width, depth, 1)
    weights = tuple(model.init_weights(widths, [derive_seed(seed, "teacher")], dtype=torch.float64))
    mult = model.readout_multiplier(width, torch.tensor([gamma], dtype=torch.float64), param)
    sampler = MLPSampler(weights, mult, 1.0, noise)
    y_scale = 1.0
    if normalize:
        probe = torch.randn(N_PROBE, dim, generator=generator(seed, "probe"), dtype=torch.float64)
        y_scale = float(sampler.f(probe).std())
        if not y_scale > 0.0 or y_scale != y_scale:
            raise DataError(f"mlp_teacher: the teacher's output is constant over the probe set (std {y_scale}); "
                            "change data_seed, teacher_width or teacher_depth")
        sampler = MLPSampler(weights, mult, y_scale, noise)
    opts.resolved["y_scale"] = y_scale

    label = f"mlp_teacher(D={dim},N={width},L={depth},{param},gamma={gamma:g}" + (
        "" if online else f",P={n_train}") + (f",noise={noise:g}" if noise else "") + (
        "" if normalize else ",raw") + ")"
    teacher = tuple(w.to(device=device, dtype=dtype, copy=True) for w in weights)
    return _build("mlp_teacher", label, sampler, teacher, opts, seed, n_train, online, device, dtype)


def build_linear(experiment, *, noisy: bool, device="cpu", dtype=torch.float32) -> Task:
    """Power-law linear teacher: ``x ~ N(0, diag(i^-alpha))``, ``y = w*.x`` (``linear``) or
    ``y = sqrt(1 - rho) w*.x + sqrt(rho) N(0, 1)`` (``noisy_linear``; ``Var y = 1`` either way).

    ``w*`` and the spectrum are the closed forms of :mod:`raysweep.linear_theory` (fixed by ``dim``, ``alpha``,
    ``beta``; no seed). ``linear`` is ``noisy_linear`` at ``rho = 0``, bit for bit: the noise is always drawn, after
    ``x``, so the ``x`` stream does not depend on ``rho``. ``online`` (default true): fresh blocks of ``n_train``
    samples; false: one fixed set of ``n_train``. ``task.teacher`` is ``w*``, shape ``[D]``.
    Labels: ``linear(D=500,alpha=2,beta=0.25)``, ``noisy_linear(D=500,alpha=2,beta=0.25,rho=0.25)``, plus ``,P=1024``
    when fixed. ``task.population`` holds the exact law (spectrum, effective teacher ``sqrt(1 - rho) w*``, ``rho``):
    a linear student's eval loss is its population loss, not a sample.
    """
    family = "noisy_linear" if noisy else "linear"
    opts = Options(experiment, family)
    seed = opts.seed()
    d = families.get(family).defaults
    dim = opts.int("dim", d["dim"])
    n_train = opts.int("n_train", d["n_train"])
    online = opts.bool("online", d["online"])
    alpha = opts.float("alpha", d["alpha"], max_value=families.MAX_SPECTRUM_DECAY)
    beta = opts.float("beta", d["beta"], min_value=-math.inf)
    rho = opts.float("rho", d["rho"], max_value=1.0, open_max=True) if noisy else 0.0

    w = torch.from_numpy(linear_theory.teacher(dim, alpha, beta))
    lambdas = torch.from_numpy(linear_theory.spectrum(dim, alpha))
    scale = lambdas.sqrt()
    label = f"{family}(D={dim},alpha={alpha:g},beta={beta:g}" + (f",rho={rho:g}" if noisy else "") + (
        "" if online else f",P={n_train}") + ")"
    teacher = w.to(device=device, dtype=dtype, copy=True)
    population = Population(
        lambdas=lambdas.to(device=device, dtype=dtype),
        w_t=(math.sqrt(1.0 - rho) * w).to(device=device, dtype=dtype),
        noise_var=rho,
    )
    return _build(family, label, LinearSampler(scale, w, rho), teacher, opts, seed, n_train, online, device, dtype,
                  population)
