"""The gradient noise scale (raysweep.noise, experiment.grad_noise_scale): McCandlish et al. 2018, App. A.1.

Science checks against closed forms and an independent computation, never against numbers the code produced:

- the two-batch formulas recover tr(Sigma) and |G|^2 exactly from E|G_B|^2 = |G|^2 + tr(Sigma)/B, and without bias
  from Gaussian gradients of known mean and covariance;
- the chunk estimator of raysweep (hand-written backward) against per-example gradients from torch.func
  (functional_call + vmap(grad)) of a plain-torch MLP written here: exactly (chunk gradients are means of
  per-example gradients; with chunks of one sample the estimator *is* the per-example one), and statistically
  (B_simple within 10% of the per-example estimate on the same samples);
- inside training: the reported numbers equal the torch.func reference on the noise batch drawn from the
  documented generator; turning the metric on changes no loss bit; a member's numbers are the same alone and in
  any bundle.
"""

from __future__ import annotations

import math

import pyarrow.compute as pc
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.func import functional_call, grad, vmap

from raysweep import model, noise
from raysweep.data import build_task
from raysweep.errors import SpecError
from raysweep.points import config_key
from raysweep.space import parse_spec
from raysweep.seeds import init_seed, noise_seed
from raysweep.step import draw_samples, loss_coefficients
from raysweep.train import train, train_bundle
from tests.support.training import point as train_point
from tests.support.training import task_for

DT = torch.float64


# ------------------------------------------------------------------------------- an independent plain-torch MLP


class PlainMLP(torch.nn.Module):
    """The study's MLP written plainly: weights N(0, 1) as stored, ``h = relu(h W / sqrt(fan_in))``, readout
    ``f = a h W_L``. Works on one sample ``x [D]`` (for vmap) or a batch ``[n, D]``."""

    def __init__(self, weights: list[torch.Tensor], a: float):
        super().__init__()
        self.depth, self.a = len(weights), a
        for i, w in enumerate(weights):
            self.register_parameter(f"w{i}", torch.nn.Parameter(w.detach().clone()))

    def forward(self, x):
        h = x
        for i in range(self.depth - 1):
            w = getattr(self, f"w{i}")
            h = torch.relu(h @ w / math.sqrt(w.shape[0]))
        return self.a * (h @ getattr(self, f"w{self.depth - 1}"))


def example_loss(f, f0, y, loss: str, convention: str):
    """One sample's loss of the centred output ``f - f0``: 0.5 sum err^2 (half_sum), mean err^2 (study), or the
    cross-entropy of the label ``y``."""
    r = f - f0
    if loss == "xent":
        return F.cross_entropy(r.unsqueeze(0), y.unsqueeze(0))
    err = (r - y).square()
    return err.mean() if convention == "study" else 0.5 * err.sum()


def per_example_grads(net: PlainMLP, x, f0, y, loss: str, convention: str) -> torch.Tensor:
    """``[n, P]``: every sample's gradient with respect to all the weights, concatenated (torch.func)."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def fn(p, xi, f0i, yi):
        return example_loss(functional_call(net, p, (xi,)), f0i, yi, loss, convention)

    g = vmap(grad(fn), in_dims=(None, 0, 0, 0))(params, x, f0, y)
    return torch.cat([g[k].reshape(len(x), -1) for k in params], 1)


def reference_chunks(g: torch.Tensor, b: int) -> tuple[float, float]:
    """``(trace_sigma, grad_sq)`` of the two-batch estimator computed from per-example gradients: the chunk
    gradient is the mean of its samples' gradients, ``|G_b|^2`` the mean over chunks, ``|G_B|^2`` of the mean of
    all; then McCandlish's formulas written out here."""
    n = len(g)
    small = g.reshape(n // b, b, -1).mean(1).square().sum(1).mean().item()
    big = g.mean(0).square().sum().item()
    grad_sq = (n * big - b * small) / (n - b)
    trace = (small - big) / (1 / b - 1 / n)
    return trace, grad_sq


def readout(width: int, gamma: float, parametrization: str) -> float:
    return 1.0 / (gamma * (width if parametrization == "muP" else math.sqrt(width)))


def raysweep_estimate(net: PlainMLP, x, f0, y, loss, convention, b):
    """raysweep's chunk estimator on the same samples: ``(trace_sigma, grad_sq)``."""
    weights = [getattr(net, f"w{i}").detach()[None].clone() for i in range(net.depth)]
    out_mult = torch.full((1, 1, 1), net.a, dtype=DT)
    n_out = weights[-1].shape[2]
    if loss == "xent":
        chunks = [(x[lo:lo + b], f0[None, lo:lo + b], y[lo:lo + b]) for lo in range(0, len(x), b)]
    else:
        t = f0[None] + y
        chunks = [(x[lo:lo + b], t[:, lo:lo + b], None) for lo in range(0, len(x), b)]
    loss_coef, df_coef = loss_coefficients(loss, convention, b, n_out)
    small, big = noise.chunk_sq_norms(weights, chunks, out_mult, loss_coef, out_mult * df_coef)
    trace, grad_sq = noise.two_batch(small, big, b, len(x))
    return trace.item(), grad_sq.item()


# (loss, mse convention, parametrization)
CASES = [("mse", "half_sum", "muP"), ("mse", "study", "SP"), ("xent", "half_sum", "muP")]
WIDTH, DEPTH, DIM = 32, 3, 8


def trained_net(loss: str, convention: str, parametrization: str, seed: int = 0, steps: int = 30):
    """A width-32, depth-3 MLP after ``steps`` plain SGD steps (autograd) on a teacher, its initial copy, and a
    sampler of fresh ``(x, y)``: the poly teacher y = (x.w)^2 for MSE, a linear 4-class teacher for xent."""
    gen = torch.Generator().manual_seed(1000 + seed)
    if loss == "xent":
        v = torch.randn(DIM, 4, generator=gen, dtype=DT)

        def sample(n):
            x = torch.randn(n, DIM, generator=gen, dtype=DT)
            return x, (x @ v).argmax(1)

        n_out = 4
    else:
        task = build_task({"family": "poly_online", "dim": DIM, "n_train": 4096, "degree": 2, "data_seed": seed},
                          dtype=DT)

        def sample(n):
            return draw_samples(task, gen, n)

        n_out = 1
    init = [w[0] for w in model.init_weights([DIM, WIDTH, WIDTH, n_out], [seed], dtype=DT)]
    a = readout(WIDTH, 1.0, parametrization)
    net0, net = PlainMLP(init, a), PlainMLP(init, a)
    lr = 0.5 / a
    for _ in range(steps):
        x, y = sample(64)
        with torch.no_grad():
            f0 = net0(x)
        batch_loss = torch.stack([example_loss(f, f0i, yi, loss, convention)
                                  for f, f0i, yi in zip(net(x), f0, y)]).mean()
        net.zero_grad()
        batch_loss.backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= lr * p.grad
    assert any((getattr(net, f"w{i}") - init[i]).abs().max() > 1e-3 for i in range(DEPTH))
    return net, net0, sample


# ------------------------------------------------------------------------------------------ the formulas alone


def test_two_batch_recovers_the_pieces_from_exact_expectations():
    # a finite population of per-example gradients, sampled with replacement: E|G_B|^2 = |G|^2 + tr(Sigma)/B
    # exactly, with G the population mean and Sigma the population covariance (1/N)
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(50, 7, generator=gen, dtype=DT) * torch.linspace(0.1, 3, 7, dtype=DT) + 0.4
    mean = g.mean(0)
    grad_sq, trace = mean.square().sum().item(), (g - mean).square().sum(1).mean().item()
    for b_small, b_big in ((1, 2), (4, 32), (16, 17), (3, 3000)):
        small, big = grad_sq + trace / b_small, grad_sq + trace / b_big
        est_trace, est_grad_sq = noise.two_batch(small, big, b_small, b_big)
        assert est_trace == pytest.approx(trace, rel=1e-12) and est_grad_sq == pytest.approx(grad_sq, rel=1e-12)
    assert noise.noise_scale(trace, grad_sq) == pytest.approx(trace / grad_sq)
    assert math.isnan(noise.noise_scale(1.0, 0.0))
    with pytest.raises(ValueError, match="b_small < b_big"):
        noise.two_batch(1.0, 1.0, 8, 8)


def test_two_batch_is_unbiased_on_gaussian_gradients():
    # per-example gradients g ~ N(mu, C): known |G|^2 = |mu|^2 and tr(Sigma) = tr(C). Nested batches (the small one
    # is the first b of the big one); each draw's estimate is unbiased, so their mean is within a few standard
    # errors of the truth
    gen = torch.Generator().manual_seed(1)
    d, b, big_b, reps = 12, 4, 32, 40_000
    mu = torch.randn(d, generator=gen, dtype=DT) * 0.3
    root = torch.randn(d, d, generator=gen, dtype=DT) / math.sqrt(d)
    cov = root @ root.T
    g = mu + torch.randn(reps, big_b, d, generator=gen, dtype=DT) @ root.T
    small = g[:, :b].mean(1).square().sum(1)
    big = g.mean(1).square().sum(1)
    trace, grad_sq = noise.two_batch(small, big, b, big_b)
    for est, truth in ((trace, cov.trace().item()), (grad_sq, mu.square().sum().item())):
        se = est.std().item() / math.sqrt(reps)
        assert abs(est.mean().item() - truth) < 4 * se, (est.mean().item(), truth, se)
        assert est.mean().item() == pytest.approx(truth, rel=0.03)


# ------------------------------------------------------------------- the chunk estimator against torch.func


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_chunk_estimator_equals_per_example_reference_exactly(case):
    loss, convention, parametrization = case
    net, net0, sample = trained_net(loss, convention, parametrization)
    x, y = sample(1024)
    with torch.no_grad():
        f0 = net0(x)
    g = per_example_grads(net, x, f0, y, loss, convention)
    for b in (16, 1):
        trace, grad_sq = raysweep_estimate(net, x, f0, y, loss, convention, b)
        ref_trace, ref_grad_sq = reference_chunks(g, b)
        assert trace == pytest.approx(ref_trace, rel=1e-9) and grad_sq == pytest.approx(ref_grad_sq, rel=1e-9)
    # chunks of one sample: the estimator is the per-example one, tr(Sigma) = sum |g_i - gbar|^2 / (n - 1) (the
    # unbiased sample covariance) and |G|^2 = |gbar|^2 - tr(Sigma) / n
    n, gbar = len(g), g.mean(0)
    pe_trace = ((g - gbar).square().sum() / (n - 1)).item()
    assert trace == pytest.approx(pe_trace, rel=1e-9)
    assert grad_sq == pytest.approx(gbar.square().sum().item() - pe_trace / n, rel=1e-9)


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_acceptance_b_simple_matches_torch_func_per_example_within_10_percent(case):
    # 16384 samples in 1024 chunks of 16: the estimator sees only the spread between chunks, the reference every
    # sample's gradient. Reference: tr(Sigma) = sum_i |g_i - gbar|^2 / (n - 1), |G|^2 = |gbar|^2 - tr(Sigma) / n
    # (both unbiased), B_simple = their ratio. (64 chunks are not enough here: the gradient covariance of these
    # nets has a low effective rank, and 64 chunks leave errors of 10-17%.)
    loss, convention, parametrization = case
    net, net0, sample = trained_net(loss, convention, parametrization, seed=1)
    x, y = sample(16384)
    with torch.no_grad():
        f0 = net0(x)
    g = per_example_grads(net, x, f0, y, loss, convention)
    n, gbar = len(g), g.mean(0)
    ref_trace = ((g - gbar).square().sum() / (n - 1)).item()
    ref_grad_sq = gbar.square().sum().item() - ref_trace / n
    trace, grad_sq = raysweep_estimate(net, x, f0, y, loss, convention, 16)
    errors = {
        "trace": trace / ref_trace - 1,
        "grad_sq": grad_sq / ref_grad_sq - 1,
        "b_simple": (trace / grad_sq) / (ref_trace / ref_grad_sq) - 1,
    }
    print(f"{case}: B_simple {trace / grad_sq:.4g} vs torch.func {ref_trace / ref_grad_sq:.4g}; tr {trace:.4g} vs "
          f"{ref_trace:.4g}; |G|^2 {grad_sq:.4g} vs {ref_grad_sq:.4g}; relative errors {errors}")
    assert 1 < ref_trace / ref_grad_sq < n / 4  # a noise scale the batch can resolve
    assert all(abs(e) < 0.10 for e in errors.values()), errors


# ------------------------------------------------------------------------------------------ inside training

SYNTH = {"dim": 8, "n_train": 256, "degree": 2}


def experiment(family: str = "poly_online", **overrides) -> dict:
    exp = {"family": family, "steps": 30, "report_every": 10, "dtype": "float64", "data_seed": 0,
           "divergence_factor": 100.0, "mse_convention": "half_sum"}
    if family in ("poly_online", "poly_fixed"):
        exp.update(SYNTH)
    exp.update(overrides)
    return exp


def point(**overrides) -> dict:
    return train_point(**{"width": 16, **overrides})


def noise_batch(task, seed: int, n: int, draws: int):
    """The ``draws``-th noise batch of a trial ``seed``, as documented: a generator seeded with noise_seed(seed);
    online, fresh blocks concatenated and cut to n; fixed data, n training indices uniform with replacement."""
    gen = torch.Generator().manual_seed(noise_seed(seed))
    for _ in range(draws):
        if task.online:
            xs, ys = [], []
            while sum(len(x) for x in xs) < n:
                x, y = task.draw_block(gen)
                xs.append(x)
                ys.append(y)
            x, y = torch.cat(xs)[:n], torch.cat(ys)[:n]
        else:
            idx = torch.randint(task.n_train, (n,), generator=gen)
            x, y = task.x_train[idx], task.y_train[idx]
    return x, y


@pytest.mark.parametrize(
    ("family", "loss", "option", "seeds"),
    [
        ("poly_online", "mse", True, [0]),
        ("poly_fixed", "mse", {"batches": 3, "batch_size": 8}, [0]),
        ("poly_online", "mse", {"batches": 4}, [0, 1]),
        ("digits", "xent", {"batches": 2, "batch_size": 32}, [0, 1]),
    ],
)
def test_training_reports_the_estimate_on_the_documented_noise_batch(family, loss, option, seeds):
    # eta = 0: the weights stay at init, so the reference can rebuild them; every report must equal the torch.func
    # reference on the noise batch drawn from noise_seed (the second report is the generator's second draw)
    exp = experiment(family, grad_noise_scale=option)
    task = task_for(exp)
    points = [point(eta=0.0, seed=s, loss=loss, width=16) for s in seeds]
    reports = list(train_bundle(task, exp, points))
    assert len(reports) >= 2
    batches = 8 if option is True else option["batches"]
    b = (option if isinstance(option, dict) else {}).get("batch_size") or 16
    a = readout(16, 1.0, "muP")
    for draw, report in enumerate(reports[:2], start=1):
        for slot, seed in enumerate(seeds):
            widths = model.layer_widths(task.dim, 16, 3, task.n_out)
            init = [w[0] for w in model.init_weights(widths, [init_seed(seed)], dtype=DT)]
            net = PlainMLP(init, a)
            x, y = noise_batch(task, seed, batches * b, draw)
            x = x.to(DT)
            if loss == "mse":
                y = y.to(DT) if task.kind == "regression" else F.one_hot(y, task.n_out).to(DT)
            with torch.no_grad():
                f0 = net(x)
            ref_trace, ref_grad_sq = reference_chunks(per_example_grads(net, x, f0, y, loss, "half_sum"), b)
            assert report.grad_trace_cov[slot] == pytest.approx(ref_trace, rel=1e-9)
            assert report.grad_sq[slot] == pytest.approx(ref_grad_sq, rel=1e-9)
            assert report.grad_noise_scale[slot] == pytest.approx(ref_trace / ref_grad_sq, rel=1e-9)


def _curves(reports, members):
    """Each member's rows, floats as their hex (exact, and NaN equals NaN)."""
    def exact(v):
        return v.hex() if isinstance(v, float) else v

    out = {m: [] for m in members}
    for r in reports:
        for slot, m in enumerate(r.members):
            out[m].append(tuple(exact(v) for v in (r.step, r.train_loss[slot], r.eval_loss[slot],
                                                   r.eval_accuracy[slot], r.diverged.get(m))))
    return out


@pytest.mark.parametrize(("family", "optimizer", "dtype"), [
    ("poly_online", "SGD", "float64"), ("poly_online", "Adam", "float64"), ("poly_fixed", "SGD", "float64"),
    ("poly_fixed", "Adam", "float64"), ("poly_online", "Adam", "float32"),
])
def test_the_metric_changes_no_loss_bit(family, optimizer, dtype):
    exp_off = experiment(family, dtype=dtype)
    exp_on = experiment(family, dtype=dtype, grad_noise_scale={"batches": 3, "batch_size": None})
    task = task_for(exp_off)
    eta = 0.05 if optimizer == "SGD" else 0.01
    points = [point(optimizer=optimizer, eta=eta * f, seed=s) for s in (0, 1) for f in (1.0, 2.0)]
    points.append(point(optimizer=optimizer, eta=1e6, seed=0))  # diverges: the others must not notice
    off = list(train_bundle(task, exp_off, points))
    on = list(train_bundle(task, exp_on, points))
    assert all(r.grad_noise_scale is None and r.grad_sq is None and r.grad_trace_cov is None for r in off)
    assert all(r.grad_noise_scale is not None for r in on)
    members = range(len(points))
    assert _curves(on, members) == _curves(off, members)  # bit for bit
    assert any(4 in r.diverged for r in off)
    solo_off = list(train(task, exp_off, points[0]))
    solo_on = list(train(task, exp_on, points[0]))
    assert _curves(solo_on, [0]) == _curves(solo_off, [0]) == {0: _curves(off, members)[0]}


@pytest.mark.parametrize(("family", "optimizer", "loss", "grouped"), [
    ("poly_online", "SGD", "mse", False), ("poly_fixed", "Adam", "mse", False), ("digits", "SGD", "xent", False),
    ("poly_online", "Adam", "mse", True),
])
def test_fused_members_get_their_solo_noise_numbers(family, optimizer, loss, grouped, monkeypatch):
    if grouped:  # large weights: the step, and the estimate, run one member at a time
        monkeypatch.setattr("raysweep.step.STEP_GROUP_BYTES", 1)
    exp = experiment(family, grad_noise_scale={"batches": 4})
    if family == "digits":
        exp.update(steps=20)
    task = task_for(exp)
    eta = 0.05 if optimizer == "SGD" else 0.01
    points = [point(optimizer=optimizer, loss=loss, eta=eta * f, seed=s) for s in (0, 1) for f in (1.0, 2.0)]
    points.append(point(optimizer=optimizer, loss=loss, eta=1e6, seed=1))  # diverged and dropped mid-bundle
    fused = list(train_bundle(task, exp, points))
    for member, p in enumerate(points):
        solo = list(train(task, exp, p))
        rows = [(r, r.members.index(member)) for r in fused if member in r.members]
        assert len(rows) == len(solo)
        for (r, slot), s in zip(rows, solo):
            assert r.step == s.step
            for name in ("grad_sq", "grad_trace_cov", "grad_noise_scale"):
                got, want = getattr(r, name)[slot], getattr(s, name)[0]
                if math.isfinite(want):
                    assert got == pytest.approx(want, rel=1e-10, abs=0), (member, r.step, name)
                else:
                    assert not math.isfinite(got)
    # the tr(Sigma) estimate is the spread of the chunk gradients around their mean: never negative (Jensen);
    # |G|^2, and so B_simple, may come out negative on a small noise batch
    for r in fused:
        for slot, m in enumerate(r.members):
            if m != 4:
                assert r.grad_trace_cov[slot] >= 0 and (
                    r.grad_noise_scale[slot] == r.grad_trace_cov[slot] / r.grad_sq[slot])


# -------------------------------------------------------------------------------------------------- the spec

SPEC = {
    "name": "gns",
    "experiment": {"family": "poly_online", "steps": 100},
    "space": {"batch_size": [8, 32], "eta": [0.5], "width": [16]},
}


def spec(option=..., **experiment):
    mapping = {**SPEC, "experiment": {**SPEC["experiment"], **experiment}}
    if option is not ...:
        mapping["experiment"]["grad_noise_scale"] = option
    return parse_spec(mapping)


def test_option_forms_normalize_and_keep_old_config_keys(tmp_path):
    off = spec()
    assert off.experiment.grad_noise_scale is None and "grad_noise_scale" not in off.experiment.as_dict()
    for value in (None, False):
        same = spec(value)
        assert same == off
        # off: existing sweeps keep their config keys (the key is absent from the experiment mapping)
        assert config_key(same.experiment.as_dict(), same.points()[0]) == config_key(off.experiment.as_dict(),
                                                                                      off.points()[0])
    on = spec(True)
    assert on.experiment.grad_noise_scale == {"batches": 8, "batch_size": None}
    assert spec({}) == on and spec({"batches": None, "batch_size": None}) == on
    custom = spec({"batches": 4, "batch_size": 64.0})
    assert custom.experiment.grad_noise_scale == {"batches": 4, "batch_size": 64}
    assert custom.experiment.as_dict()["grad_noise_scale"] == {"batches": 4, "batch_size": 64}
    assert config_key(on.experiment.as_dict(), on.points()[0]) != config_key(off.experiment.as_dict(),
                                                                               off.points()[0])
    for s in (off, on, custom):
        path = tmp_path / f"{s.experiment.grad_noise_scale is None}.yaml"
        path.write_text(s.to_yaml())
        from raysweep.space import load_spec

        assert load_spec(path) == s
        assert parse_spec(yaml.safe_load(s.to_yaml())) == s


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (1, r"^experiment\.grad_noise_scale: must be true, false, null or a mapping .*got 1 \(<string>\)$"),
        ("yes", r"^experiment\.grad_noise_scale: must be true, false, null or a mapping .*got 'yes'"),
        ([8], r"^experiment\.grad_noise_scale: must be true, false, null or a mapping"),
        ({"batches": 1}, r"^experiment\.grad_noise_scale\.batches: must be an integer >= 2 .*got 1"),
        ({"batches": 0}, r"^experiment\.grad_noise_scale\.batches: must be an integer >= 2"),
        ({"batches": 2.5}, r"^experiment\.grad_noise_scale\.batches: must be an integer >= 2 .*got 2.5"),
        ({"batches": True}, r"^experiment\.grad_noise_scale\.batches: must be an integer >= 2 .*got True"),
        ({"batch_size": 0}, r"^experiment\.grad_noise_scale\.batch_size: must be a positive integer or null, got 0"),
        ({"batch_size": "auto"}, r"^experiment\.grad_noise_scale\.batch_size: must be a positive integer or null"),
        ({"batchs": 4}, r"^experiment\.grad_noise_scale\.batchs: unknown key; did you mean 'batches'\?"),
    ],
)
def test_bad_option_is_a_spec_error_naming_the_field(value, match):
    with pytest.raises(SpecError, match=match):
        spec(value)


def test_misspelt_option_suggests_the_key():
    mapping = {**SPEC, "experiment": {**SPEC["experiment"], "grad_noise_scal": True}}
    with pytest.raises(SpecError, match=r"^experiment\.grad_noise_scal: unknown key; did you mean 'grad_noise_scale'"):
        parse_spec(mapping)


def test_training_validates_a_hand_made_experiment_too():
    exp = experiment(grad_noise_scale={"batches": 1})
    with pytest.raises(SpecError, match=r"grad_noise_scale\.batches"):
        list(train(task_for(exp), exp, point()))


# -------------------------------------------------------------------------------------- through the launcher


@pytest.mark.ray
def test_launch_writes_the_columns_when_on_and_nulls_when_off(ray_cluster, tmp_path, run_cli):
    from raysweep.results import read_curves

    for name, option in (("gns_on", {"batches": 4}), ("gns_off", None)):
        mapping = {
            "name": name,
            "experiment": {"family": "poly_online", "dim": 8, "n_train": 256, "steps": 40, "report_every": 20,
                           **({"grad_noise_scale": option} if option else {})},
            "space": {"batch_size": [16], "eta": [0.25, 0.5], "width": 16, "depth": 3},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(mapping))
        proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path), "--address", ray_cluster)
        assert proc.returncode == 0, proc.stderr
        curves = read_curves(tmp_path / name)
        assert curves.num_rows == 4
        for column in ("grad_noise_scale", "grad_sq", "grad_trace_cov"):
            nulls = curves.column(column).null_count
            assert nulls == (0 if option else curves.num_rows), (name, column)
        if option:
            ratio = pc.divide(curves.column("grad_trace_cov"), curves.column("grad_sq"))
            assert pc.all(pc.equal(ratio, curves.column("grad_noise_scale"))).as_py()
