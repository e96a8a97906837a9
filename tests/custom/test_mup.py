"""Base-shape multipliers (raysweep.custom.mup): SP is the NTK parametrization, checked against a hand-written NTK
MLP (weights N(0, 1) with 1 / sqrt(fan_in) in the forward, one global eta), float64 to 1e-10."""

import math

import pytest
import torch
import torch.nn.functional as F

from raysweep.custom import mup
from raysweep.custom.factory import build_model
from raysweep.custom.train import as_task, train_bundle
from raysweep.data import build_task
from raysweep.seeds import data_seed
from raysweep.space import parse_spec

TRANSFORMER = {"factory": "raysweep.examples.transformer:build", "kwargs": {}, "readout": None, "base_width": 8}
SHAPE_ARGS = {"depth": 3, "gamma": 1.0, "input_shape": (8,), "n_out": 8}
N0 = 64  # the NTK MLP's base width: the digits' 64 features, so that every layer's base fan_in is N0


@pytest.mark.parametrize("optimizer, hidden", [("SGD", 1 / 4), ("Adam", 1 / 2), ("AdamW", 1 / 2)])
def test_sp_multipliers_at_four_times_the_base_width(optimizer, hidden):
    """The transformer (base width 8) at width 32: hidden matrices and the readout weight at 1 / fanin_mult (SGD)
    or 1 / sqrt(fanin_mult) (Adam); embeddings, position, biases and norms at 1; no forward multiplier."""
    model = TRANSFORMER
    shapes = mup.base_shapes(model, parametrization="SP", **SHAPE_ARGS)
    for width, scale in ((8, 1.0), (32, hidden)):
        module = build_model(model, width=width, parametrization="SP", **SHAPE_ARGS)
        named = {n: tuple(p.shape) for n, p in module.named_parameters()}
        lr, forward = mup.multipliers(shapes, named, optimizer, "SP")
        assert forward == {}
        scaled = {n for n in named if n == "head.weight" or (n.startswith("blocks") and n.endswith(
            ("qkv.weight", "proj.weight", "fc.weight", "out.weight")))}
        assert len(scaled) == 9 and {"embed.weight", "position", "head.bias", "ln.weight", "blocks.0.qkv.bias"} \
            <= set(named) - scaled
        assert lr == {n: scale if n in scaled else 1.0 for n in named}


def setup(experiment, space):
    """(experiment, task, points) of a float64 spec, 12 steps, a report every 5."""
    spec = parse_spec({"name": "t", "experiment": {**experiment, "dtype": "float64", "report_every": 5, "steps": 12},
                       "space": {"loss": "xent", "depth": 3, **space}})
    exp = spec.experiment.as_dict()
    return exp, as_task(build_task(exp, dtype=torch.float64)), spec.points()


def curves(reports):
    """The first member's (train_loss, eval_loss) per report."""
    return [(r.train_loss[0], r.eval_loss[0]) for r in reports if 0 in r.members]


def ntk_run(exp, task, point, optimizer: str, eta_ntk: float, decay_ntk: float = 0.0):
    """The NTK parametrization by hand: w = (the factory's draws) * sqrt(fan_in), h -> h w^T / sqrt(fan_in), one
    rate eta_ntk and weight decay decay_ntk for every layer (SGD's coupled, AdamW's decoupled; Adam's eps over
    sqrt(fan_in): eps on w / sqrt(fan_in) is eps / sqrt(fan_in) on w), the trainer's data order; (train_loss,
    eval_loss) per report."""
    module = build_model(exp["model"], width=point["width"], depth=point["depth"], gamma=point["gamma"],
                         parametrization="SP", input_shape=task.input_shape, n_out=task.n_out, seed=point["seed"],
                         dtype=torch.float64)
    ws = [(m.weight.detach() * math.sqrt(m.in_features)).requires_grad_() for m in module if hasattr(m, "weight")]

    def f(x):
        for i, w in enumerate(ws):
            x = x @ w.T / math.sqrt(w.shape[1])
            x = torch.relu(x) if i < len(ws) - 1 else x
        return x

    if optimizer == "SGD":
        opt = torch.optim.SGD(ws, lr=eta_ntk, weight_decay=decay_ntk)
    else:
        opt = getattr(torch.optim, optimizer)([{"params": [w], "eps": 1e-8 / math.sqrt(w.shape[1])} for w in ws],
                                              lr=eta_ntk, weight_decay=decay_ntk)
    gen = torch.Generator().manual_seed(data_seed(point["seed"]))
    b, n = point["batch_size"], task.n_train
    pos, window, out = n, [], []
    for step in range(1, exp["steps"] + 1):
        if pos + b > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + b]
        pos += b
        opt.zero_grad()
        loss = F.cross_entropy(f(task.x_train[idx]), task.y_train[idx])
        loss.backward()
        opt.step()
        window.append(loss.item())
        if step % exp["report_every"] == 0 or step == exp["steps"]:
            with torch.no_grad():
                out.append((sum(window) / len(window), F.cross_entropy(f(task.x_eval), task.y_eval).item()))
            window = []
    return out


@pytest.mark.parametrize("optimizer, eta, decay", [("SGD", 0.5, 0.0), ("Adam", 0.003, 0.0), ("SGD", 0.5, 0.01),
                                                   ("AdamW", 0.003, 0.1)])
def test_factory_sp_is_the_ntk_parametrization(optimizer, eta, decay):
    """At 4 N0 the factory's SP rates are eta N0 / N (SGD), eta sqrt(N0 / N) (Adam) on the PyTorch-initialised
    weights, each decay lambda / lr_mult: the NTK MLP at eta_ntk = eta N0 (SGD), eta sqrt(N0) (Adam) and
    eta_ntk lambda_ntk = eta lambda, to 1e-10 in float64."""
    experiment = {"family": "digits", "model": {"factory": "tests.support.factories:ntk_mlp", "base_width": N0}}
    exp, task, points = setup(experiment, {"batch_size": 16, "eta": eta, "width": 4 * N0, "weight_decay": decay,
                                           "parametrization": "SP", "optimizer": optimizer})
    assert task.input_shape == (N0,)
    ours = curves(list(train_bundle(task, exp, points)))
    eta_ntk = eta * N0 if optimizer == "SGD" else eta * math.sqrt(N0)
    ntk = ntk_run(exp, task, points[0], optimizer, eta_ntk, eta * decay / eta_ntk)
    assert len(ours) == len(ntk) == 3 and ours[-1][1] < ours[0][1]  # it learns
    assert max(abs(x - y) for a, c in zip(ours, ntk) for x, y in zip(a, c)) < 1e-10
    # the comparison resolves the rates: the NTK MLP at the width ratio times that rate is far off
    wrong = ntk_run(exp, task, points[0], optimizer, eta * 4 * N0 if optimizer == "SGD" else eta * math.sqrt(4 * N0))
    assert max(abs(x - y) for a, c in zip(ours, wrong) for x, y in zip(a, c)) > 1e-4


def test_a_model_without_width_has_no_readout_and_every_multiplier_one():
    """A linear model (nn.Linear itself, inputs -> outputs): nothing scales with width, so no readout is needed or
    detected, and SP and muP both train it as built."""
    model = {"factory": "tests.support.factories:linear", "kwargs": {}, "readout": None, "base_width": 4,
             "centred": False}
    shapes = mup.base_shapes(model, depth=1, gamma=1.0, input_shape=(6,), n_out=1)
    assert shapes.readout is None and shapes.readout_weight is None and shapes.kind("weight") == "finite"
    for parametrization in ("SP", "muP"):
        for optimizer in ("SGD", "Adam"):
            assert mup.multipliers(shapes, {"weight": (1, 6)}, optimizer, parametrization) == ({"weight": 1.0}, {})
