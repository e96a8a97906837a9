"""The general path (raysweep.custom.train) against plain PyTorch, and fused members against solo runs: the CNN
on digits and the transformer on the Markov language (acceptance: float64 to 1e-10, float32 to 1e-5)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from raysweep.custom.factory import build_model
from raysweep.custom.train import train_bundle
from raysweep.data import build_task
from raysweep.schedules import multiplier
from raysweep.seeds import data_seed
from raysweep.space import parse_spec

CNN = {"family": "custom", "factory": "raysweep.examples.cnn:digits_images",
       "model": {"factory": "raysweep.examples.cnn:build"}}
LANGUAGE = {"family": "custom", "factory": "raysweep.examples.transformer:markov_language",
            "kwargs": {"n_train": 128, "n_test": 64, "context": 8, "vocab": 8},
            "model": {"factory": "raysweep.examples.transformer:build", "base_width": 8}}


def setup(experiment, space, dtype="float64", **length):
    spec = parse_spec({"name": "t", "experiment": {**experiment, "dtype": dtype, "report_every": 5,
                                                   **(length or {"steps": 12})},
                       "space": {"loss": "xent", "depth": 3, **space}})
    exp = spec.experiment.as_dict()
    task = build_task(exp, dtype=getattr(torch, dtype))
    return exp, task, spec.points()


def curves(reports, member):
    """A member's (train_loss, eval_loss) per report."""
    out = []
    for r in reports:
        if member in r.members:
            j = r.members.index(member)
            out.append((r.train_loss[j], r.eval_loss[j]))
    return out


def plain_run(exp, task, point, optimizer_fn, *, hook_mult=None, schedule=None, centred=False):
    """The same training in plain PyTorch: the factory's module, torch.optim, autograd, the trainer's data order."""
    model = build_model(exp["model"], width=point["width"], depth=point["depth"], gamma=point["gamma"],
                        parametrization=point["parametrization"], input_shape=task.input_shape, n_out=task.n_out,
                        seed=point["seed"], dtype=task.x_eval.dtype if task.x_eval.is_floating_point() else
                        getattr(torch, exp["dtype"]))
    if hook_mult is not None:  # muP's readout: MuReadout's x / width_mult
        model.head.register_forward_pre_hook(lambda m, args: (args[0] * hook_mult,))
    frozen = copy.deepcopy(model).requires_grad_(False) if centred else None  # f(x; theta_0)

    def f(x):
        return model(x) - frozen(x) if centred else model(x)

    opt = optimizer_fn(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule else None
    gen = torch.Generator().manual_seed(data_seed(point["seed"]))
    b, n = point["batch_size"], task.n_train
    pos, window, out = n, [], []
    for step in range(1, exp["steps"] + 1):
        if pos + b > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + b]
        pos += b
        opt.zero_grad()
        loss = F.cross_entropy(f(task.x_train[idx]).flatten(0, -2), task.y_train[idx].flatten())
        loss.backward()
        opt.step()
        if sched:
            sched.step()
        window.append(loss.item())
        if step % exp["report_every"] == 0 or step == exp["steps"]:
            model.eval()
            with torch.no_grad():
                if frozen is not None:
                    frozen.eval()
                ev = F.cross_entropy(f(task.x_eval).flatten(0, -2), task.y_eval.flatten()).item()
            model.train()
            out.append((sum(window) / len(window), ev))
            window = []
    return out


def close(a, b, tol):
    return max(abs(x - y) for pa, pb in zip(a, b) for x, y in zip(pa, pb)) if len(a) == len(b) else math.inf


def test_cnn_sgd_momentum_equals_torch_optim():
    exp, task, points = setup(CNN, {"batch_size": 16, "eta": 0.2, "width": 8, "parametrization": "SP",
                                    "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3})
    p = points[0]
    ours = curves(list(train_bundle(task, exp, [p])), 0)
    plain = plain_run(exp, task, p, lambda m: torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9, nesterov=True,
                                                              weight_decay=1e-3))
    assert close(ours, plain, 1e-10) < 1e-10


def test_cnn_plain_sgd_equals_torch_optim():
    exp, task, points = setup(CNN, {"batch_size": 16, "eta": 0.5, "width": 8, "parametrization": "SP"})
    ours = curves(list(train_bundle(task, exp, points)), 0)
    plain = plain_run(exp, task, points[0], lambda m: torch.optim.SGD(m.parameters(), lr=0.5))
    assert close(ours, plain, 1e-10) < 1e-10


def test_torch_sp_is_the_module_as_built_at_one_eta_at_any_width():
    """torch_sp (PyTorch's default) at four times the base width: every parameter at eta, no forward multiplier,
    as torch.optim trains the module the factory returns; Adam too."""
    for optimizer, eta, make in (("SGD", 0.1, lambda m: torch.optim.SGD(m.parameters(), lr=0.1)),
                                 ("Adam", 0.01, lambda m: torch.optim.Adam(m.parameters(), lr=0.01))):
        exp, task, points = setup({**LANGUAGE, "model": {**LANGUAGE["model"], "base_width": 8}},
                                  {"batch_size": 8, "eta": eta, "width": 32, "parametrization": "torch_sp",
                                   "optimizer": optimizer})
        ours = curves(list(train_bundle(task, exp, points)), 0)
        assert close(ours, plain_run(exp, task, points[0], make), 1e-10) < 1e-10, optimizer


def test_transformer_mup_adamw_cosine_equals_torch_optim():
    """muP at twice the base width: hidden matrices at eta / 2 with decay 2 lambda, the readout's input halved."""
    exp, task, points = setup(LANGUAGE, {"batch_size": 8, "eta": 0.01, "width": 16, "parametrization": "muP",
                                         "optimizer": "AdamW", "weight_decay": 0.1, "schedule": "cosine",
                                         "warmup_steps": 3, "beta2": 0.99})
    p = points[0]
    ours = curves(list(train_bundle(task, exp, [p])), 0)

    def adamw(model):
        hidden = [q for n, q in model.named_parameters() if n.startswith("blocks") and q.ndim == 2]
        ids = {id(q) for q in hidden}
        rest = [q for q in model.parameters() if id(q) not in ids]
        return torch.optim.AdamW([{"params": hidden, "lr": 0.01 / 2, "weight_decay": 0.1 * 2},
                                  {"params": rest, "lr": 0.01, "weight_decay": 0.1}], betas=(0.9, 0.99))

    plain = plain_run(exp, task, p, adamw, hook_mult=0.5,
                      schedule=lambda t: multiplier(t, exp["steps"], "cosine", warmup_steps=3))
    assert close(ours, plain, 1e-10) < 1e-10


def test_transformer_mup_eps_scaling_equals_torch_optim_with_per_parameter_eps():
    """eps_scaling: mup under muP at twice the base width (Everett et al. 2024 by base shapes): hidden matrices at
    eps / 2^1.5, every parameter with one width-scaled dimension (embeddings, norms, biases, the readout's weight)
    at eps / 2, the readout's bias (nothing scales) at eps; a large eps so that it shows."""
    space = {"batch_size": 8, "eta": 0.01, "width": 16, "parametrization": "muP", "optimizer": "AdamW",
             "weight_decay": 0.1, "eps": 1e-3}
    exp, task, points = setup(LANGUAGE, {**space, "eps_scaling": "mup"})
    ours = curves(list(train_bundle(task, exp, points)), 0)

    def adamw(model, scaled=True):
        hidden = [q for n, q in model.named_parameters() if n.startswith("blocks") and q.ndim == 2]
        fixed = [model.head.bias]
        ids = {id(q) for q in hidden + fixed}
        rest = [q for q in model.parameters() if id(q) not in ids]
        e = (2**-1.5, 1.0, 0.5) if scaled else (1.0, 1.0, 1.0)
        return torch.optim.AdamW([{"params": hidden, "lr": 0.01 / 2, "weight_decay": 0.1 * 2, "eps": 1e-3 * e[0]},
                                  {"params": fixed, "lr": 0.01, "weight_decay": 0.1, "eps": 1e-3 * e[1]},
                                  {"params": rest, "lr": 0.01, "weight_decay": 0.1, "eps": 1e-3 * e[2]}])

    assert close(ours, plain_run(exp, task, points[0], adamw, hook_mult=0.5), 1e-10) < 1e-10
    unscaled = plain_run(exp, task, points[0], lambda m: adamw(m, scaled=False), hook_mult=0.5)
    assert close(ours, unscaled, 1e-10) > 1e-6  # the per-parameter eps is what makes them equal
    global_exp, _, global_points = setup(LANGUAGE, space)
    assert close(curves(list(train_bundle(task, global_exp, global_points)), 0), unscaled, 1e-10) < 1e-10


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_cnn_fused_equals_solo(dtype, tol):
    exp, task, points = setup(CNN, {"batch_size": 16, "eta": [0.1, 0.4, 2.0, 64.0], "width": 8, "seed": [0, 1],
                                    "parametrization": "muP", "optimizer": "Adam"}, dtype)
    points = [{**p, "eta": p["eta"] / 100} if p["eta"] < 64 else p for p in points]  # Adam rates; 0.64 diverges
    fused = list(train_bundle(task, exp, points))
    assert all(r.members for r in fused)
    for i, p in enumerate(points):
        solo = curves(list(train_bundle(task, exp, [p])), 0)
        assert len(curves(fused, i)) == len(solo)
        for (a, b), (c, d) in zip(curves(fused, i), solo):
            assert abs(a - c) <= tol * max(1, abs(c)) and (abs(b - d) <= tol * max(1, abs(d)) or math.isnan(d))


@pytest.mark.parametrize("dtype, parametrization, tol", [("float64", "muP", 1e-10), ("float32", "SP", 1e-5)])
def test_transformer_fused_equals_solo(dtype, parametrization, tol):
    exp, task, points = setup(LANGUAGE, {"batch_size": 8, "eta": [0.003, 0.01, 0.03], "width": 16, "seed": [0, 1],
                                         "parametrization": parametrization, "optimizer": "Adam"}, dtype, steps=10)
    fused = list(train_bundle(task, exp, points))
    for i, p in enumerate(points):
        solo = curves(list(train_bundle(task, exp, [p])), 0)
        assert max(abs(x - y) for a, b in zip(curves(fused, i), solo) for x, y in zip(a, b)) <= tol


def test_unfused_equals_fused_and_batch_norm_runs_unfused():
    exp, task, points = setup(CNN, {"batch_size": 16, "eta": [0.1, 0.3], "width": 8, "parametrization": "SP"})
    a = list(train_bundle(task, exp, points, fused=True))
    b = list(train_bundle(task, exp, points, fused=False))
    assert max(abs(x - y) for r, s in zip(a, b) for x, y in zip(r.eval_loss, s.eval_loss)) < 1e-10
    bn = {**CNN, "model": {**CNN["model"], "kwargs": {"batch_norm": True}}}
    exp, task, points = setup(bn, {"batch_size": 16, "eta": [0.1, 0.3], "width": 8, "parametrization": "SP"})
    reports = list(train_bundle(task, exp, points))  # not vmappable: one member after another
    solo = [curves(list(train_bundle(task, exp, [p])), 0) for p in points]
    assert [curves(reports, i) for i in range(2)] == solo


def test_centred_starts_at_the_zero_predictor_and_equals_torch_optim():
    centred = {**CNN, "model": {**CNN["model"], "centred": True}}
    exp, task, points = setup(centred, {"batch_size": 16, "eta": 0.5, "width": 8, "parametrization": "SP"})
    reports = list(train_bundle(task, exp, points))
    assert reports[0].initial_loss[0] == pytest.approx(math.log(10), abs=1e-12)
    plain = plain_run(exp, task, points[0], lambda m: torch.optim.SGD(m.parameters(), lr=0.5), centred=True)
    assert close(curves(reports, 0), plain, 1e-10) < 1e-10


def test_divergence_drops_a_member():
    exp, task, points = setup(CNN, {"batch_size": 16, "eta": [0.1, 1e4], "width": 8, "parametrization": "SP"})
    reports = list(train_bundle(task, exp, points))
    assert 1 in reports[0].diverged and reports[-1].members == [0] and reports[-1].finished


def test_a_factory_on_a_built_in_family():
    """A model factory on the digits family's flat features: fused members equal their solo runs."""
    exp, task, points = setup({"family": "digits", "model": {"factory": "tests.support.factories:mlp"}},
                              {"batch_size": 32, "eta": [0.05, 0.2], "width": 32, "parametrization": "muP"})
    fused = list(train_bundle(task, exp, points))
    assert fused[-1].eval_loss[1] < fused[0].initial_loss[1]  # it learns
    for i, p in enumerate(points):
        assert curves(fused, i) == curves(list(train_bundle(task, exp, [p])), 0)


def test_dropout_runs_unfused_with_each_member_its_own_masks():
    drop = {**CNN, "model": {**CNN["model"], "kwargs": {"dropout": 0.5}}}
    exp, task, points = setup(drop, {"batch_size": 16, "eta": [0.1, 0.3], "width": 8, "seed": [0, 1],
                                     "parametrization": "SP"})
    reports = list(train_bundle(task, exp, points))
    for i in (0, 3):
        assert curves(reports, i) == curves(list(train_bundle(task, exp, [points[i]])), 0)


def test_a_batch_larger_than_the_training_set_is_the_configurations_own_infeasibility():
    """As on the built-in fixed data sets: the trainer raises InfeasibleError (the trial lands a failed row, never
    retried), the spec itself is valid and the sweep's other configurations run."""
    from raysweep.errors import InfeasibleError

    exp, task, points = setup({**LANGUAGE}, {"batch_size": 256, "eta": 0.1, "width": 8})  # 128 sequences
    with pytest.raises(InfeasibleError, match="larger than the training set"):
        list(train_bundle(task, exp, points))
