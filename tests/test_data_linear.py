"""The power-law linear families (``linear``, ``noisy_linear``): the spectrum and the teacher against their closed
forms, unit variance of y and its covariance with the teacher within sampling error, online blocks vs a fixed
training set (read through the trainer at eta = 0), reproducibility, spec validation, and a small MLP that learns
the task, fused == solo.

Every expected number is a closed form written here (lambda_i = i^-alpha, w*_i = c i^-(1/2 + alpha (beta - 1) / 2),
Var y = 1, Cov(y, w*.x) = sqrt(1 - rho), 0.5 mean y^2), or a sampling-error bound of one; never a number the code
produced earlier.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raysweep import families
from raysweep import linear_theory as linear
from raysweep.data import Task, build_task
from raysweep.errors import DataError, SpecError
from raysweep.space import parse_spec
from raysweep.train import data_seed, train, train_bundle
from tests.support.training import point, task_for

N_SAMPLES = 100_000  # samples of the sampling checks
SIGMAS = 5.0  # a sampling check fails beyond this many standard errors
ETA = 2.0  # muP SGD base learning rate of the training checks (width 16, depth 2, D = 16)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def closed_spectrum(dim: int, alpha: float) -> np.ndarray:
    return np.array([i ** -alpha for i in range(1, dim + 1)], dtype=np.float64)


def closed_teacher(dim: int, alpha: float, beta: float) -> np.ndarray:
    """w*_i = c i^-(1/2 + alpha (beta - 1) / 2), c such that sum_i i^-alpha w*_i^2 = 1 (plain Python floats)."""
    e = 0.5 + alpha * (beta - 1) / 2
    raw = [i ** -e for i in range(1, dim + 1)]
    c = 1.0 / math.sqrt(math.fsum(i ** -alpha * r * r for i, r in enumerate(raw, start=1)))
    return np.array([c * r for r in raw], dtype=np.float64)


def block(family: str, n: int = N_SAMPLES, seed: int = 0, **keys) -> tuple[Task, np.ndarray, np.ndarray]:
    """A float64 online task of ``family`` and one block of ``n`` samples drawn with generator ``seed``."""
    task = build_task({"family": family, "n_train": n, **keys}, dtype=torch.float64)
    x, y = task.draw_block(gen(seed))
    return task, x.numpy(), y.numpy()[:, 0]


# ------------------------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("dim, alpha, beta", [
    (500, 2.0, 0.25), (16, 2.0, 0.25), (1000, 1.5, -0.5), (100, 0.0, 0.25), (64, 3.0, 2.0), (1, 2.0, 0.25),
    (300, 0.5, 4.0),
])
def test_spectrum_and_teacher_are_the_closed_forms(dim, alpha, beta):
    lam, w = linear.spectrum(dim, alpha), linear.teacher(dim, alpha, beta)
    np.testing.assert_allclose(lam, closed_spectrum(dim, alpha), rtol=1e-15)
    np.testing.assert_allclose(w, closed_teacher(dim, alpha, beta), rtol=1e-12)
    assert abs(math.fsum(lam * w**2) - 1.0) < 1e-12
    np.testing.assert_allclose(linear.teacher_power(dim, alpha, beta), lam * w**2, rtol=1e-12)
    task = build_task({"family": "linear", "dim": dim, "alpha": alpha, "beta": beta, "n_train": 8, "eval_samples": 8},
                      dtype=torch.float64)
    assert task.teacher.shape == (dim,) and task.teacher.dtype == torch.float64
    np.testing.assert_allclose(task.teacher.numpy(), closed_teacher(dim, alpha, beta), rtol=1e-12)


def test_teacher_limits_stay_finite_and_normalised():
    """A huge source exponent puts all of y on the top feature, a hugely negative one on the last; the steepest
    allowed spectrum keeps every number finite."""
    np.testing.assert_array_equal(linear.teacher(50, 2.0, 1e300), np.eye(50)[0])  # lambda_1 = 1: w* = e_1
    w = linear.teacher(50, 2.0, -1e300)
    np.testing.assert_array_equal(w[:-1], np.zeros(49))
    assert w[-1] == pytest.approx(50.0, rel=1e-12)  # sqrt(1 / lambda_50) = 50^(alpha / 2)
    lam, w = linear.spectrum(1000, families.MAX_SPECTRUM_DECAY), linear.teacher(1000, families.MAX_SPECTRUM_DECAY, -0.5)
    assert np.all(np.isfinite(w)) and lam[-1] > 0 and abs(math.fsum(lam * w**2) - 1.0) < 1e-12


@pytest.mark.parametrize("dim, alpha", [(16, 2.0), (8, 0.75)])
def test_empirical_covariance_is_the_power_law_spectrum(dim, alpha):
    """C = x^T x / n against Sigma = diag(i^-alpha), entry by entry: Var C_ij = (S_ii S_jj + S_ij^2) / n."""
    _, x, _ = block("linear", dim=dim, alpha=alpha)
    cov = x.T @ x / N_SAMPLES
    lam = closed_spectrum(dim, alpha)
    sigma = np.diag(lam)
    se = np.sqrt((np.outer(lam, lam) + sigma**2) / N_SAMPLES)
    assert np.all(np.abs(cov - sigma) < SIGMAS * se), np.max(np.abs(cov - sigma) / se)
    assert np.all(np.abs(x.mean(0)) < SIGMAS * np.sqrt(lam / N_SAMPLES))


@pytest.mark.parametrize("family, rho", [("linear", 0.0), ("noisy_linear", 0.25), ("noisy_linear", 0.9)])
def test_y_has_unit_variance_and_the_teacher_share(family, rho):
    """Var y = (1 - rho) + rho = 1 and Cov(y, w*.x) = sqrt(1 - rho) within sampling error; y = w*.x exactly for
    linear, and the residual y - sqrt(1 - rho) w*.x is N(0, rho) noise uncorrelated with x."""
    dim, alpha, beta = 64, 2.0, 0.25
    keys = {"dim": dim} if family == "linear" else {"dim": dim, "rho": rho}
    task, x, y = block(family, **keys)
    u = x @ closed_teacher(dim, alpha, beta)  # w*.x, unit variance
    n = N_SAMPLES
    assert abs(float(np.mean(y**2)) - 1.0) < SIGMAS * math.sqrt(2.0 / n)  # Var of a chi^2_n / n: 2 / n
    c = math.sqrt(1.0 - rho)
    assert abs(float(np.mean(y * u)) - c) < SIGMAS * math.sqrt((1.0 + c * c) / n)  # Var(yu) = 1 + Cov^2
    residual = y - c * u
    if family == "linear":
        np.testing.assert_allclose(y, u, rtol=1e-12, atol=1e-12)
    else:
        assert abs(float(np.mean(residual**2)) - rho) < SIGMAS * rho * math.sqrt(2.0 / n)
        lam = closed_spectrum(dim, alpha)
        assert np.all(np.abs(residual @ x / n) < SIGMAS * np.sqrt(rho * lam / n))
    for eval_task in (task, build_task({"family": family, **keys, "eval_samples": 20_000}, dtype=torch.float64)):
        ye = eval_task.y_eval.numpy()[:, 0]  # the eval set follows the same law
        assert abs(float(np.mean(ye**2)) - 1.0) < SIGMAS * math.sqrt(2.0 / ye.shape[0])


def test_linear_is_noisy_linear_at_rho_zero_and_x_does_not_depend_on_rho():
    keys = {"family": "linear", "dim": 32, "n_train": 256}
    x0, y0 = build_task(keys, dtype=torch.float64).draw_block(gen(5))
    xz, yz = build_task({**keys, "family": "noisy_linear", "rho": 0.0}, dtype=torch.float64).draw_block(gen(5))
    xn, yn = build_task({**keys, "family": "noisy_linear", "rho": 0.5}, dtype=torch.float64).draw_block(gen(5))
    assert torch.equal(x0, xz) and torch.equal(y0, yz)
    assert torch.equal(x0, xn) and not torch.equal(y0, yn)


# --------------------------------------------------------------------------------------- online and fixed


def test_online_training_reads_fresh_blocks_from_the_trial_seed():
    """At eta = 0 the minibatch loss is the zero predictor's, 0.5 * mean y_batch^2: online, batches are consecutive
    slices of blocks of P = 64 samples that the seed's generator draws, a fresh block when one is used up."""
    exp = {"family": "linear", "dim": 16, "n_train": 64, "steps": 10, "report_every": 1, "dtype": "float64"}
    task = task_for(exp)
    assert task.online and task.block_size == 64 and task.x_train is None
    for seed in (0, 1):
        reports = train(task, exp, point(batch_size=16, width=16, depth=2, eta=0.0, seed=seed))
        g = torch.Generator().manual_seed(data_seed(seed))
        blocks = [task.draw_block(g)[1].numpy() for _ in range(3)]  # 3 blocks of 64 = 12 batches of 16
        assert not np.array_equal(blocks[0], blocks[1])  # fresh, not the first one again
        y = np.concatenate(blocks)
        want = [0.5 * float(np.mean(y[16 * t: 16 * (t + 1)] ** 2)) for t in range(10)]
        np.testing.assert_allclose([r.train_loss[0] for r in reports], want, rtol=1e-12)
        assert all(r.epoch is None for r in reports)


def test_fixed_training_set_is_n_train_samples_reused_every_epoch():
    """online: false: exactly n_train distinct samples, read again every epoch in a fresh permutation of the seed's
    generator (100 samples, B = 32: 3 batches an epoch, the last 4 samples of each permutation left out)."""
    exp = {"family": "noisy_linear", "online": False, "n_train": 100, "dim": 16, "epochs": 3, "report_every": 1,
           "dtype": "float64"}
    task = task_for(exp)
    assert not task.online and task.n_train == 100 and task.x_train.shape == (100, 16)
    assert len({tuple(row) for row in task.x_train.tolist()}) == 100
    with pytest.raises(DataError, match="fixed data set"):
        task.draw_block(gen(0))
    y = task.y_train.numpy()
    reports = train(task, exp, point(batch_size=32, width=16, depth=2, eta=0.0, seed=3))
    g = torch.Generator().manual_seed(data_seed(3))
    want = []
    for _ in range(3):
        perm = torch.randperm(100, generator=g).numpy()
        want += [0.5 * float(np.mean(y[perm[32 * b: 32 * (b + 1)]] ** 2)) for b in range(3)]
    np.testing.assert_allclose([r.train_loss[0] for r in reports], want, rtol=1e-12)
    assert [r.epoch for r in reports] == [0, 0, 1, 1, 1, 2, 2, 2, 3]


@pytest.mark.parametrize("family", ["linear", "noisy_linear"])
def test_same_seed_same_data(family):
    """Same experiment: same eval set, training set and blocks. data_seed changes the eval and training sets, never
    the teacher (fixed by dim, alpha, beta); the trial's generator alone fixes the blocks; float32 data is the
    float64 data rounded."""
    exp = {"family": family, "dim": 8, "n_train": 32, "eval_samples": 16}
    a, b, c = build_task(exp), build_task(exp), build_task({**exp, "data_seed": 1})
    assert torch.equal(a.x_eval, b.x_eval) and torch.equal(a.y_eval, b.y_eval)
    assert not torch.equal(a.x_eval, c.x_eval) and torch.equal(a.teacher, c.teacher)
    xa, ya = a.draw_block(gen(7))
    xb, yb = b.draw_block(gen(7))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, a.draw_block(gen(8))[0]) and torch.equal(c.draw_block(gen(7))[0], xa)
    x64, y64 = build_task(exp, dtype=torch.float64).draw_block(gen(7))
    assert xa.dtype == torch.float32 and torch.equal(x64.float(), xa) and torch.equal(y64.float(), ya)
    fixed = {**exp, "online": False}
    fa, fb, fc = build_task(fixed), build_task(fixed), build_task({**fixed, "data_seed": 1})
    assert torch.equal(fa.x_train, fb.x_train) and torch.equal(fa.y_train, fb.y_train)
    assert not torch.equal(fa.x_train, fc.x_train)


# ------------------------------------------------------------------------------------------ the registry


def test_defaults_labels_and_registry():
    task = build_task({"family": "linear"})
    assert task.dataset == "linear(D=500,alpha=2,beta=0.25)"
    assert (task.kind, task.dim, task.n_out, task.block_size, task.n_eval) == ("regression", 500, 1, 4096, 2048)
    assert task.params["alpha"] == 2.0 and task.params["beta"] == 0.25 and task.params["online"] is True
    noisy = build_task({"family": "noisy_linear", "online": False, "n_train": 1024, "dim": 20})
    assert noisy.dataset == "noisy_linear(D=20,alpha=2,beta=0.25,rho=0.25,P=1024)" and noisy.n_train == 1024
    assert families.get("linear").defaults == {"dim": 500, "n_train": 4096, "online": True, "alpha": 2.0, "beta": 0.25}
    assert families.get("noisy_linear").defaults == {**families.get("linear").defaults, "rho": 0.25}
    for name in ("linear", "noisy_linear"):
        assert name in families.REGRESSION
        exp = {"family": name, "dim": 40}
        assert families.shape(exp) == (40, 1) and families.is_online(exp) and families.n_train(exp) == 4096
        assert not families.is_online({**exp, "online": False}) and families.n_eval(exp) == 2048


def spec(**experiment) -> dict:
    return {"name": "lin", "experiment": {"family": "linear", "steps": 10, **experiment},
            "space": {"batch_size": 8, "eta": 0.1, "width": 16}}


@pytest.mark.parametrize("experiment, match", [
    ({"alpah": 2.0}, r"^experiment\.alpah: unknown key; did you mean 'alpha'\?"),
    ({"rho": 0.1}, r"^experiment\.rho: not a key of family linear \(it belongs to noisy_linear\)"),
    ({"alpha": -1.0}, r"^experiment\.alpha: must be >= 0 and <= 32, got -1\.0"),
    ({"alpha": 33}, r"^experiment\.alpha: must be >= 0 and <= 32"),
    ({"alpha": float("inf")}, r"^experiment\.alpha: must be a finite number"),
    ({"alpha": "2"}, r"^experiment\.alpha: must be a finite number"),
    ({"beta": float("nan")}, r"^experiment\.beta: must be a finite number"),
    ({"beta": True}, r"^experiment\.beta: must be a finite number"),
    ({"family": "noisy_linear", "rho": 1.0}, r"^experiment\.rho: must be >= 0 and < 1, got 1\.0"),
    ({"family": "noisy_linear", "rho": -0.1}, r"^experiment\.rho: must be >= 0 and < 1"),
    ({"dim": 0}, r"^experiment\.dim: must be"),
    ({"dim": 2**31}, r"^experiment\.dim: must be"),
    ({"online": "no"}, r"^experiment\.online: must be true or false"),
    ({"epochs": 2}, r"^experiment\.epochs: must be null: linear trains online"),
    ({"online": False, "steps": None}, r"^experiment\.steps: linear takes exactly one of steps or epochs"),
])
def test_bad_specs_are_one_line_errors_naming_the_field(experiment, match):
    with pytest.raises(SpecError, match=match) as err:
        parse_spec(spec(**experiment))
    assert "\n" not in str(err.value)


def test_good_specs_parse():
    assert parse_spec(spec()).experiment.params == families.get("linear").defaults
    fixed = parse_spec(spec(family="noisy_linear", online=False, n_train=256, steps=None, epochs=3, rho=0.0))
    assert not fixed.experiment.online and fixed.experiment.params["rho"] == 0.0
    edge = parse_spec(spec(alpha=0, beta=-3)).experiment.params
    assert edge["alpha"] == 0.0 and edge["beta"] == -3.0 and isinstance(edge["alpha"], float)


@pytest.mark.parametrize("experiment, match", [
    ({"family": "linear", "alpha": -0.5}, r"experiment\.alpha: must be a finite number >= 0 and <= 32"),
    ({"family": "linear", "beta": float("inf")}, r"experiment\.beta: must be a finite number"),
    ({"family": "noisy_linear", "rho": 1.0}, r"experiment\.rho: must be a finite number >= 0 and < 1"),
    ({"family": "linear", "dim": 0}, r"experiment\.dim: must be an int >= 1"),
])
def test_the_builder_refuses_bad_values_too(experiment, match):
    with pytest.raises(DataError, match=match):
        build_task(experiment)


# ---------------------------------------------------------------------------------------------- training


def test_a_small_mlp_learns_the_linear_teacher():
    """Width 16, depth 2, muP SGD, 50 steps on D = 16: the eval loss falls well below the zero predictor's,
    0.5 mean y_eval^2 (the loss at step 0)."""
    exp = {"family": "linear", "dim": 16, "steps": 50, "report_every": 10, "dtype": "float64"}
    task = task_for(exp)
    start = 0.5 * float(task.y_eval.pow(2).mean())
    reports = train(task, exp, point(batch_size=32, width=16, depth=2, eta=ETA))
    assert [r.step for r in reports] == [10, 20, 30, 40, 50] and not reports[-1].diverged
    losses = [r.eval_loss[0] for r in reports]
    assert losses[-1] < 0.5 * start and losses[-1] < losses[0], (start, losses)


def curve(reports, member: int) -> list[tuple]:
    """One member's rows: (step, train_loss, eval_loss, diverged step or None)."""
    return [(r.step, r.train_loss[r.members.index(member)], r.eval_loss[r.members.index(member)],
             r.diverged.get(member)) for r in reports if member in r.members]


@pytest.mark.parametrize("family", ["linear", "noisy_linear"])
def test_fused_bundle_of_two_etas_equals_the_solo_runs(family):
    """Two members differing in eta, fused, each have their solo curve bit for bit in float64 (one shared data
    stream: same seed)."""
    exp = {"family": family, "dim": 16, "steps": 30, "report_every": 10, "dtype": "float64"}
    task = task_for(exp)
    points = [point(batch_size=16, width=16, depth=2, eta=eta) for eta in (ETA, ETA / 4)]
    fused = list(train_bundle(task, exp, points))
    assert fused[-1].finished and fused[-1].step == 30
    for k, p in enumerate(points):
        got, want = curve(fused, k), curve(train(task, exp, p), 0)
        assert [r[0] for r in got] == [10, 20, 30] and got == want, (k, got, want)
    assert curve(fused, 0) != curve(fused, 1)
