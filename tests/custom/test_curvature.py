"""Curvature tracking of a model factory's bundle (raysweep.custom.curvature): the Hessian-vector products against a
dense Hessian (fused CNN and transformer, and an unfused CNN with batch norm in training mode and dropout), Lanczos
against the dense spectrum, the preconditioned sharpness of AdamW against a dense computation from the optimizer's
state; every training number bit-for-bit the same with it on or off; a member's numbers alone and in a bundle;
exact resume; the MLP path's numbers for the MLP path's own network written as an nn.Module; full-batch GD at the
edge of stability."""

from __future__ import annotations

import math

import pytest
import torch

from raysweep import curvature
from raysweep.custom import functional
from raysweep.custom import train as custom_train
from raysweep.custom.curvature import CurvatureFeed, fused_matvec, unfused_loss
from raysweep.data import build_task
from raysweep.instrument_spec import curvature_option
from raysweep.space import parse_spec
from raysweep.train import train_bundle

ALL = ["sharpness", "batch_sharpness", "preconditioned_sharpness", "hessian_trace"]
CNN = "raysweep.examples.cnn:build"
NUMBERS = ("step", "epoch", "samples_seen", "members", "train_loss", "eval_loss", "eval_accuracy", "initial_loss",
           "diverged", "dead", "finished", "grad_sq")
CURVES = ("sharpness", "batch_sharpness", "preconditioned_sharpness", "hessian_trace", "initial_sharpness")


def tiny_images(*, seed: int, n_train: int = 40, n_test: int = 16):
    """Random 1 x 4 x 4 images with two classes (a data factory): a CNN of width 2 has a few dozen parameters."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_test, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = (x.mean((1, 2, 3)) + 0.1 * torch.randn(n_train + n_test, generator=gen, dtype=torch.float64) > 0.5).long()
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def teacher_data(*, seed: int, n: int = 32, dim: int = 8):
    """A small regression set (a data factory): ``tanh(x W) + 0.3 sin(3 x_:2)``, ``n`` training and ``n`` test
    samples."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, dim, generator=gen, dtype=torch.float64)
    w = torch.randn(dim, 2, generator=gen, dtype=torch.float64)
    y = torch.tanh(x @ w) + 0.3 * torch.sin(3 * x[:, :2])
    return x[:n], y[:n], x[n:], y[n:]


def tanh_mlp(*, width: int, depth: int, input_shape, n_out: int, **kwargs):
    """A tanh MLP with biases, PyTorch's initialisation (a model factory)."""
    layers, fan_in = [], input_shape[0]
    for _ in range(depth - 1):
        layers += [torch.nn.Linear(fan_in, width), torch.nn.Tanh()]
        fan_in = width
    return torch.nn.Sequential(*layers, torch.nn.Linear(fan_in, n_out))


def setup(space, *, kwargs=None, centred=False, curv=None, steps=4, report_every=2, depth=2, base_width=None):
    model = {"factory": CNN, "kwargs": kwargs or {}, "centred": centred, "base_width": base_width}
    spec = parse_spec({"name": "c", "experiment": {
        "family": "custom", "factory": "tests.custom.test_curvature:tiny_images", "model": model, "dtype": "float64",
        "steps": steps, "report_every": report_every, "curvature": curv},
        "space": {"loss": "xent", "depth": depth, "width": 2, "batch_size": 8, "parametrization": "SP", **space}})
    exp = spec.experiment.as_dict()
    return exp, build_task(exp, dtype=torch.float64), spec.points()


def dense_hessian(fn, names, params, buffers, k, x, y, f0, rng_seed=None):
    """Member k's Hessian of ``fn`` at its parameters, ``[n, n]``, by torch.autograd.functional.hessian (the forward
    seeded with ``rng_seed``: dropout's masks fixed)."""
    shapes = [tuple(params[n].shape[1:]) for n in names]
    sizes = [math.prod(s) for s in shapes]
    theta = torch.cat([params[n][k].reshape(-1) for n in names])

    def loss(t):
        parts = {n: p.reshape(s) for n, p, s in zip(names, t.split(sizes), shapes)}
        return fn(parts, {n: b[k].clone() for n, b in buffers.items()}, x, y, None if f0 is None else f0[k])

    with torch.random.fork_rng(devices=[]):
        if rng_seed is not None:
            torch.manual_seed(rng_seed)
        return torch.autograd.functional.hessian(loss, theta)


def stacked(factory, kwargs, input_shape, n_out, seeds=(0, 1)):
    from raysweep.custom.factory import build_model

    modules = [build_model({"factory": factory, "kwargs": kwargs}, width=4 if "transformer" in factory else 2,
                           depth=2, gamma=1.0, parametrization="SP", input_shape=input_shape, n_out=n_out, seed=s,
                           dtype=torch.float64) for s in seeds]
    return functional.stack(modules)


@pytest.mark.parametrize("factory, kwargs", [(CNN, {}), (CNN, {"batch_norm": True, "dropout": 0.3}),
                                             ("raysweep.examples.transformer:build", {"vocab": 4})])
def test_hessian_vector_products_equal_the_dense_hessian(factory, kwargs):
    """Two members with different parameters, their own data, centred outputs and a forward multiplier: fused by
    vmap(jvp(grad)) (a CNN, a transformer on tokens), or (batch norm in training mode, dropout) one member at a time
    by double backward with each member's masks fixed by its seed."""
    tokens = "vocab" in kwargs
    input_shape, n_out = ((4,), 4) if tokens else ((1, 4, 4), 2)
    params, buffers, body = stacked(factory, kwargs, input_shape, n_out)
    names = list(params)
    fn = functional.loss_fn(body, {"head.weight": 0.5}, "xent", "half_sum", n_out)
    gen = torch.Generator().manual_seed(5)
    if tokens:  # next-token labels: one per position
        x = torch.randint(0, 4, (2, 12, 4), generator=gen)
        y = torch.randint(0, 4, (2, 12, 4), generator=gen)
        f0 = 0.3 * torch.randn(2, 12, 4, n_out, generator=gen, dtype=torch.float64)
    else:
        x = torch.rand(2, 12, 1, 4, 4, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 2, (2, 12), generator=gen)
        f0 = 0.3 * torch.randn(2, 12, n_out, generator=gen, dtype=torch.float64)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params.values()]
    rng = [11, 12]
    unfused = "dropout" in kwargs
    if unfused:
        op = curvature.hessian_matvec(unfused_loss(fn, names, buffers, x, y, f0, False, rng), list(params.values()))
    else:
        op = fused_matvec(fn, names, params, buffers, x, y, f0, False)
    got = op(v)
    assert all(torch.equal(a, b) for a, b in zip(got, op(v)))  # one fixed function: the same product again
    for k in range(2):
        h = dense_hessian(fn, names, params, buffers, k, x[k], y[k], f0, rng[k] if unfused else None)
        want = h @ torch.cat([t[k].reshape(-1) for t in v])
        ours = torch.cat([t[k].reshape(-1) for t in got])
        assert torch.linalg.vector_norm(ours - want) <= 1e-10 * torch.linalg.vector_norm(want), k
    if unfused:  # the buffers (running statistics) were only read
        fresh = stacked(factory, kwargs, input_shape, n_out)[1]
        assert all(torch.equal(buffers[n], fresh[n]) for n in buffers)


def test_lanczos_sharpness_and_preconditioned_sharpness_of_adamw_equal_dense():
    """Through the trainer's feed: muP (per-parameter rates and a readout multiplier), centred, after three AdamW
    steps: the sharpness is eigvalsh's top eigenvalue of the dense Hessian and the preconditioned sharpness that of
    P^-1/2 H P^-1/2, P built by hand from the optimizer state: (1 - beta1^t) (sqrt(v / (1 - beta2^t)) + eps) /
    lr_mult."""
    exp, task, points = setup({"optimizer": "AdamW", "eta": [0.01, 0.03], "weight_decay": 0.1, "seed": [0, 1],
                               "beta2": 0.99, "parametrization": "muP"}, depth=3, base_width=1, centred=True)
    points = [points[0], points[3]]  # different eta, different seed
    assert [p["seed"] for p in points] == [0, 1] and points[0]["eta"] != points[1]["eta"]
    members = custom_train.build_members(task, exp, points)
    names = members.names
    assert len(set(members.lr_mult.values())) > 1 and members.forward_mult  # muP: the scaling matters
    fn = functional.loss_fn(members.body, members.forward_mult, "xent", exp["mse_convention"], task.n_out)
    init = ({n: p.clone() for n, p in members.params.items()}, {n: b.clone() for n, b in members.buffers.items()})
    gen = torch.Generator().manual_seed(0)
    for t in range(1, 4):
        idx = torch.randint(task.n_train, (8,), generator=gen)
        x = task.x_train[idx]
        f0 = functional.outputs(members.body, members.forward_mult, *init, x, True)
        members.step(fn, x, task.y_train[idx], f0, True, t, None)
    n = sum(p[0].numel() for p in members.params.values())
    option = curvature_option({"kinds": ["sharpness", "preconditioned_sharpness"], "batch": 24, "steps": n})
    feed = CurvatureFeed(task, [0, 1], option, 8, "cpu")
    got = feed.measure(members, fn, [0, 1], [], step=3, init=init, lr_effective=[p["eta"] for p in points])
    opt = members.opt
    for k, stream in enumerate([0, 1]):
        x, y = feed.x[stream], feed.y[stream]
        f0 = functional.outputs(members.body, members.forward_mult, *init, x, True)
        h = dense_hessian(fn, names, members.params, members.buffers, k, x, y, f0)
        top = torch.linalg.eigvalsh(h)[-1].item()
        assert got["sharpness"][k] == pytest.approx(top, rel=1e-8, abs=0)
        b1, b2 = opt.beta1[k].item(), opt.beta2[k].item()
        p = torch.cat([(1 - b1**3) * ((v[k] / (1 - b2**3)).sqrt() + e[k]).reshape(-1) / members.lr_mult[name]
                       for (_, v), e, name in zip(opt.state, opt.eps, names)])
        s = p.rsqrt()
        top_p = torch.linalg.eigvalsh(s[:, None] * h * s[None, :])[-1].item()
        assert got["preconditioned_sharpness"][k] == pytest.approx(top_p, rel=1e-8, abs=0)
        assert top_p > 10 * top  # the preconditioner matters


def run(exp, task, points, **kwargs):
    """The reports and the final stacked parameters and buffers."""
    built = []
    build = custom_train.build_members

    def keep(*a, **k):
        built.append(build(*a, **k))
        return built[-1]

    custom_train.build_members = keep
    try:
        reports = list(custom_train.train_bundle(task, exp, points, **kwargs))
    finally:
        custom_train.build_members = build
    members = built[-1]
    return reports, {**members.params, **{f"buffer:{n}": b for n, b in members.buffers.items()}}


@pytest.mark.parametrize("space, kwargs", [
    ({"optimizer": "SGD", "eta": [0.1, 0.5], "seed": [0, 1]}, {}),
    ({"optimizer": "AdamW", "eta": [0.01, 0.05], "weight_decay": 0.1, "seed": [0, 1]},
     {"batch_norm": True, "dropout": 0.3}),
])
def test_curvature_on_or_off_leaves_every_training_number_bit_identical(space, kwargs):
    """A fused CNN with SGD and an unfused one (batch norm in training mode, dropout) with AdamW, centred, two data
    streams: every report number and the final parameters and buffers are the same with curvature on; a member
    measures the same alone as in its bundle."""
    exp, task, points = setup(space, kwargs=kwargs, centred=True)
    assert points[0]["eta"] != points[3]["eta"] and points[0]["seed"] != points[3]["seed"]
    off, final_off = run(exp, task, points)
    exp_on = {**exp, "curvature": curvature_option({"kinds": ALL, "batch": 24, "steps": 6, "top_k": 2})}
    on, final_on = run(exp_on, task, points)
    assert [[getattr(r, k) for k in NUMBERS] for r in off] == [[getattr(r, k) for k in NUMBERS] for r in on]
    assert final_off.keys() == final_on.keys() and all(torch.equal(final_off[n], final_on[n]) for n in final_off)
    assert all(getattr(r, k) is None for r in off for k in CURVES)
    for r in on:
        assert all(math.isfinite(v) and v > 0 for v in r.sharpness + r.initial_sharpness)
        assert all(math.isfinite(v) for v in r.batch_sharpness + r.hessian_trace)
        if space["optimizer"] == "SGD":
            assert r.preconditioned_sharpness == [None] * len(r.members)
        else:
            assert all(math.isfinite(v) and v > 0 for v in r.preconditioned_sharpness)
    for i in (0, 3):  # different etas and seeds (streams)
        alone = run(exp_on, task, [points[i]])[0]
        for r_b, r_a in zip(on, alone):
            for k in CURVES:
                a, b = getattr(r_b, k)[i], getattr(r_a, k)[0]
                assert (a is None and b is None) or a == pytest.approx(b, rel=1e-10, abs=1e-12), (i, k)


def test_resume_gives_the_same_curvature_numbers():
    """Exported at a report curvature skips (every: 2) and at one it measures: the resumed reports carry the
    uninterrupted run's numbers bit for bit (probes from the seed and the step, the count of reports from the
    step, AdamW's state restored)."""
    exp, task, points = setup({"optimizer": "AdamW", "eta": [0.01, 0.05], "weight_decay": 0.1, "seed": [0, 1]},
                              centred=True, steps=8,
                              curv={"kinds": ALL, "batch": 16, "steps": 4, "every": 2})
    whole, states = [], {}
    for r in custom_train.train_bundle(task, exp, points):
        whole.append(r)
        if r.step in (2, 4):
            states[r.step] = r.export()
    assert [r.sharpness is not None for r in whole] == [False, True, False, True]
    for at, state in states.items():
        resumed = list(custom_train.train_bundle(task, exp, points, resume=state))
        assert [[getattr(r, k) for k in NUMBERS + tuple(CURVES)] for r in resumed] == \
               [[getattr(r, k) for k in NUMBERS + tuple(CURVES)] for r in whole if r.step > at], at


def test_the_mlp_paths_network_as_a_factory_measures_the_mlp_paths_numbers():
    """The MLP path's SP network as an nn.Module (tests.support.factories:study_mlp), centred, on an online teacher
    with Adam: the curvature batch, the loss and the preconditioner are the MLP path's, so sharpness, batch
    sharpness and preconditioned sharpness (Lanczos run to the parameter count: exact) equal the MLP path's."""
    online = {"family": "poly_online", "dim": 4, "n_train": 32, "degree": 2, "dtype": "float64", "steps": 8,
              "report_every": 4, "eval_samples": 64,
              "curvature": {"kinds": ["sharpness", "batch_sharpness", "preconditioned_sharpness"], "batch": 32,
                            "steps": 40}}  # 4 x 8 + 8 x 1 weights
    space = {"batch_size": 8, "eta": [0.01, 0.03], "seed": [0, 1], "width": 8, "depth": 2, "parametrization": "SP",
             "lr_rule": "raw", "optimizer": "Adam"}
    factory = {"factory": "tests.support.factories:study_mlp", "centred": True, "base_width": 8}
    mlp = parse_spec({"name": "m", "experiment": {**online, "model": "mlp"}, "space": space})
    ours = parse_spec({"name": "f", "experiment": {**online, "model": factory}, "space": space})
    task = build_task(mlp.experiment.as_dict(), dtype=torch.float64)
    theirs = list(train_bundle(task, mlp.experiment, mlp.points()))
    got = list(custom_train.train_bundle(task, ours.experiment.as_dict(), ours.points()))
    assert len(theirs) == len(got) == 2
    for a, b in zip(theirs, got):
        for k in ("sharpness", "batch_sharpness", "preconditioned_sharpness", "initial_sharpness"):
            assert getattr(b, k) == pytest.approx(getattr(a, k), rel=1e-8), (a.step, k)


def test_full_batch_gd_sharpens_to_the_edge_of_stability_and_hovers_there():
    """Cohen et al. 2021 on a model factory: full-batch GD (32 samples, the curvature batch the whole training set)
    of a tanh MLP (width 32, depth 3, MSE) at eta = 1.5 / lambda_0, i.e. 2 / eta = 1.33 lambda_0: the sharpness
    rises to 2 / eta and hovers there (seen: within 2% of it from step 100 to 600; across four seeds within
    [0.95, 1.18] x 2 / eta after step 150) while the loss keeps falling, non-monotonically. A sharpness off by a
    constant factor (a missed forward multiplier or loss convention) would hover elsewhere."""
    def spec(eta, steps, every):
        return parse_spec({"name": "eos", "experiment": {
            "family": "custom", "factory": "tests.custom.test_curvature:teacher_data", "kind": "regression",
            "model": {"factory": "tests.custom.test_curvature:tanh_mlp"}, "dtype": "float64", "steps": steps,
            "report_every": 10, "curvature": {"batch": 32, "steps": 12, "every": every}},
            "space": {"loss": "mse", "depth": 3, "width": 32, "batch_size": 32, "parametrization": "torch_sp",
                      "optimizer": "SGD", "eta": eta}})

    first = spec(0.01, 10, 1)
    exp = first.experiment.as_dict()
    task = build_task(exp, dtype=torch.float64)
    lam0 = next(iter(custom_train.train_bundle(task, exp, first.points()))).initial_sharpness[0]
    eta = 1.5 / lam0
    gd = spec(eta, 300, 2)
    reports = list(custom_train.train_bundle(task, gd.experiment.as_dict(), gd.points()))
    ratio = {r.step: r.sharpness[0] * eta / 2 for r in reports if r.sharpness is not None}
    loss = {r.step: r.train_loss[0] for r in reports}
    assert reports[0].initial_sharpness[0] * eta / 2 == pytest.approx(0.75)  # below the edge at theta_0
    late = [v for s, v in ratio.items() if s >= 100]
    assert max(ratio.values()) > 0.95 and all(0.85 < v < 1.25 for v in late), ratio
    assert 0.95 < sorted(late)[len(late) // 2] < 1.12, ratio  # the median: at the edge
    assert loss[300] < loss[10] / 10 and any(loss[b] > loss[a] for a, b in zip(loss, list(loss)[1:])), loss


def test_a_factory_spec_takes_curvature_and_snapshots():
    from raysweep.errors import SpecError

    exp, _, _ = setup({"optimizer": "SGD", "eta": 0.1}, curv=True)
    assert curvature_option(exp["curvature"])["kinds"] == ("sharpness",)
    base = {"family": "custom", "factory": "tests.custom.test_curvature:tiny_images", "model": {"factory": CNN},
            "steps": 4}
    space = {"batch_size": 8, "eta": 0.1, "width": 4, "loss": "xent", "depth": 2}
    assert parse_spec({"name": "c", "experiment": {**base, "snapshots": "log"}, "space": space}).experiment.snapshots
    with pytest.raises(SpecError, match="experiment.snapshots"):  # a value the option does not take
        parse_spec({"name": "c", "experiment": {**base, "snapshots": {"every": 2}}, "space": space})
