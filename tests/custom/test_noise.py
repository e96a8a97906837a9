"""The gradient noise scale of a model factory's bundle (raysweep.custom.noise): turning it on leaves every training
number bit-identical (fused, unfused with batch norm and dropout, centred), it resumes exactly, a member measures the
same alone and in a bundle, and its two estimates are unbiased for |G|^2 and tr(Sigma) of the training set, checked
against the closed form of a linear model's per-example gradients."""

from __future__ import annotations

import math

import pytest
import torch

from raysweep.custom import functional
from raysweep.custom import train as custom_train
from raysweep.custom.noise import NoiseFeed
from raysweep.data import build_task
from raysweep.space import parse_spec

CNN = {"family": "custom", "factory": "raysweep.examples.cnn:digits_images", "kwargs": {"test_fraction": 0.9},
       "eval_samples": 64, "model": {"factory": "raysweep.examples.cnn:build"}}
NUMBERS = ("step", "members", "train_loss", "eval_loss", "eval_accuracy", "initial_loss", "diverged", "dead")
NOISE = ("grad_sq", "grad_trace_cov", "grad_noise_scale")


def run(noise, *, kwargs=None, centred=False, etas=(0.05, 0.2), seeds=(0, 1), dtype="float64", resume_at=None):
    model = {**CNN["model"], "centred": centred, "kwargs": kwargs or {}}
    spec = parse_spec({"name": "n", "experiment": {**CNN, "model": model, "dtype": dtype, "steps": 12,
                                                   "report_every": 4, "grad_noise_scale": noise},
                       "space": {"batch_size": 16, "eta": list(etas), "seed": list(seeds), "width": 4, "depth": 2,
                                 "parametrization": "SP", "optimizer": "SGD", "momentum": 0.9, "loss": "xent"}})
    exp = spec.experiment.as_dict()
    task = build_task(exp, dtype=getattr(torch, dtype))
    reports, state = [], None
    for r in custom_train.train_bundle(task, exp, spec.points()):
        reports.append(r)
        if r.step == resume_at:  # a report's state is exported while it is the current one
            state = r.export()
    if resume_at is None:
        return reports
    return reports, list(custom_train.train_bundle(task, exp, spec.points(), resume=state))


@pytest.mark.parametrize("kwargs, centred", [(None, False), (None, True), ({"batch_norm": True, "dropout": 0.25},
                                                                           True)])
def test_noise_on_or_off_leaves_every_training_number_bit_identical(kwargs, centred):
    off = run(None, kwargs=kwargs, centred=centred)
    on = run({"batches": 4, "batch_size": 8}, kwargs=kwargs, centred=centred)
    assert [tuple(getattr(r, k) for k in NUMBERS) for r in off] == [tuple(getattr(r, k) for k in NUMBERS) for r in on]
    for r in on:
        assert all(getattr(r, k) is not None and len(getattr(r, k)) == len(r.members) for k in NOISE)
        assert all(math.isfinite(v) for v in r.grad_sq + r.grad_trace_cov)  # either may be negative on few chunks
    assert all(r.grad_sq is None for r in off)
    assert sum(v > 0 for r in on for v in r.grad_trace_cov) > len(on)  # mostly positive: a covariance's trace


def test_noise_resumes_exactly_and_a_member_measures_the_same_alone():
    whole, resumed = run({"batches": 4, "batch_size": 8}, resume_at=4)
    assert [tuple(getattr(r, k) for k in NOISE) for r in resumed] == \
           [tuple(getattr(r, k) for k in NOISE) for r in whole if r.step > 4]
    alone = run({"batches": 4, "batch_size": 8}, etas=(0.2,), seeds=(1,))
    for r_b, r_a in zip(whole, alone):
        slot = r_b.members.index(3)  # eta 0.2, seed 1 (points: eta outer, seed inner)
        assert [getattr(r_b, k)[slot] for k in NOISE] == [getattr(r_a, k)[0] for k in NOISE]


def test_the_estimates_are_unbiased_for_the_training_sets_gradient_and_covariance():
    """A bias-free linear model f(x) = x.w (the factory tests.support.factories:linear) at fixed w on a fixed training
    set: per-example gradients g_i = (x_i.w - y_i) x_i under 0.5 (f - y)^2, so |G|^2 = |mean g_i|^2 and tr(Sigma) =
    mean |g_i - G|^2 exactly (draws with replacement from the set). The mean of 300 estimates lies within 4
    standard errors of each."""
    exp = {"family": "poly_fixed", "dim": 6, "n_train": 64, "degree": 1, "noise": 0.5,
           "dtype": "float64", "steps": 1, "model": {"factory": "tests.support.factories:linear"}}
    spec = parse_spec({"name": "u", "experiment": exp, "space": {"batch_size": 4, "eta": 0.1, "width": 1,
                                                                  "parametrization": "SP"}})
    exp = spec.experiment.as_dict()
    task = custom_train.as_task(build_task(exp, dtype=torch.float64))
    members = custom_train.build_members(task, exp, spec.points())
    fn = functional.loss_fn(members.body, members.forward_mult, "mse", "half_sum", task.n_out)
    w = members.params["weight"][0, 0]
    g = ((task.x_train @ w) - task.y_train[:, 0])[:, None] * task.x_train  # per-example gradients
    grad_sq, trace_cov = float(g.mean(0).square().sum()), float((g - g.mean(0)).square().sum(1).mean())
    feed = NoiseFeed(task, [0], batches=4, size=4, device="cpu")
    draws = [feed.estimate(members, fn, [0], step) for step in range(300)]
    for key, truth in (("grad_sq", grad_sq), ("grad_trace_cov", trace_cov)):
        values = torch.tensor([d[key][0] for d in draws], dtype=torch.float64)
        se = float(values.std() / math.sqrt(len(values)))
        assert abs(float(values.mean()) - truth) < 4 * se, (key, float(values.mean()), truth, se)
    assert trace_cov > 0.1 * grad_sq  # neither piece is negligible here: both are tested
