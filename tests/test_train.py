"""raysweep.train: the training loop against hand-computed updates and losses, the SP/muP equivalence, centring,
divergence, every data family, determinism, and fused bundles == solo trials.

Every science check compares with a closed form computed here (numpy backprop, torch.optim.Adam on hand-written
tensors, 0.5 * mean sum y^2, log 10), never with numbers the code produced earlier.
"""

from __future__ import annotations

import gzip
import math
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from raysweep import model
from raysweep.errors import InfeasibleError
from raysweep.step import update
from raysweep.train import (
    BUNDLE_KEYS,
    data_seed,
    init_seed,
    loss_per_member,
    steps_for,
    train,
    train_bundle,
)
from tests.support.training import point, task_for


# ----------------------------------------------------------------------------------------------------- helpers

SYNTH = {"dim": 16, "n_train": 256, "degree": 2}


def experiment(family: str = "poly_online", **overrides) -> dict:
    exp = {"family": family, "steps": 50, "report_every": 10, "dtype": "float64", "data_seed": 0,
           "divergence_factor": 100.0, "mse_convention": "half_sum"}
    if family in ("poly_online", "poly_fixed", "mlp_teacher"):
        exp.update(SYNTH)
    exp.update(overrides)
    return exp


def run(exp: dict, p: dict):
    return train(task_for(exp), exp, p)


def curve(reports, member: int = 0) -> list[tuple]:
    """One member's rows: (step, train_loss, eval_loss, eval_accuracy, diverged step or None)."""
    rows = []
    for r in reports:
        if member in r.members:
            j = r.members.index(member)
            rows.append((r.step, r.train_loss[j], r.eval_loss[j], r.eval_accuracy[j], r.diverged.get(member)))
    return rows


def same_curve(a: list[tuple], b: list[tuple]) -> bool:
    """Bit-for-bit equality, NaN equal to NaN (a diverged member's last losses may be NaN)."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        for va, vb in zip(ra, rb):
            if isinstance(va, float) and isinstance(vb, float) and math.isnan(va) and math.isnan(vb):
                continue
            if va != vb:
                return False
    return True


def hand_lr(p: dict, layer: int) -> float:
    """DESIGN.md's rule, written out: eta * gamma_mult * width_mult, mup_adam hidden layers / sqrt(N)."""
    g, n, depth, eta = p["gamma"], p["width"], p["depth"], p["eta"]
    if p["optimizer"] == "SGD":
        gm = g**2 if g <= 1 else g ** (2 / depth)
        wm = n if p["parametrization"] == "muP" else 1
    else:
        gm = g if g <= 1 else g ** (1 / depth)
        wm = math.sqrt(n) if p["parametrization"] == "muP" else 1
    if p["lr_rule"] == "raw":
        return eta * wm
    if p["lr_rule"] == "mup_adam" and p["optimizer"] == "Adam" and p["parametrization"] == "muP":
        hidden = 0 < layer < depth - 1
        return eta * gm / math.sqrt(n) if hidden else eta * gm
    return eta * gm * wm


def hand_readout(p: dict) -> float:
    n, g = p["width"], p["gamma"]
    return 1 / (g * math.sqrt(n)) if p["parametrization"] == "SP" else 1 / (g * n)


def np_forward(ws, x, a):
    """numpy forward: returns (f, pre-activations, layer inputs)."""
    h, pres, ins = x, [], []
    for w in ws[:-1]:
        ins.append(h)
        z = h @ w / math.sqrt(w.shape[0])
        pres.append(z)
        h = np.maximum(z, 0.0)
    ins.append(h)
    return h @ ws[-1] * a, pres, ins


def np_loss_and_dloss(f: np.ndarray, y: np.ndarray, loss: str, convention: str):
    """Loss and dLoss/df by hand. mse half_sum: 0.5 * mean_b sum_o r^2; study: mean_{b,o} r^2; xent: mean CE."""
    b = f.shape[0]
    if loss == "xent":
        z = f - f.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        onehot = np.eye(f.shape[1])[y]
        return -(logp * onehot).sum(1).mean(), (np.exp(logp) - onehot) / b
    r = f - y
    if convention == "study":
        return (r**2).mean(), 2 * r / r.size
    return 0.5 * (r**2).sum(1).mean(), r / b


def np_grads(ws, x, y, f0, a, loss, convention):
    """Backprop by hand through h = relu(h W / sqrt(fan_in)), f = h W_out * a, centred f - f0."""
    f, pres, ins = np_forward(ws, x, a)
    value, df = np_loss_and_dloss(f - f0, y, loss, convention)
    grads = [None] * len(ws)
    grads[-1] = a * ins[-1].T @ df
    dh = df @ ws[-1].T * a
    for l in range(len(ws) - 2, -1, -1):
        dz = dh * (pres[l] > 0)
        scale = 1 / math.sqrt(ws[l].shape[0])
        grads[l] = scale * ins[l].T @ dz
        dh = scale * dz @ ws[l].T
    return value, grads


def np_targets(task, y: torch.Tensor, loss: str) -> np.ndarray:
    y = y.numpy()
    if task.kind == "classification" and loss == "mse":
        return np.eye(task.n_out)[y]
    return y


def write_idx(path: Path, array: np.ndarray) -> None:
    payload = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def tiny_mnist(n_train: int = 80, n_test: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }


# ----------------------------------------------------------------------------------------------------- losses


def test_loss_per_member_closed_forms():
    """mse half_sum = 0.5 * mean over batch of the sum over outputs; study = mean over batch and outputs (no 0.5);
    xent = mean cross-entropy. Catches a missing 0.5, a mean over outputs in half_sum, or conventions swapped."""
    rng = np.random.default_rng(0)
    f = rng.standard_normal((2, 5, 3))
    y = rng.standard_normal((5, 3))
    ft, yt = torch.from_numpy(f), torch.from_numpy(y)
    half = loss_per_member(ft, yt, "mse", "half_sum").numpy()
    study = loss_per_member(ft, yt, "mse", "study").numpy()
    np.testing.assert_allclose(half, [0.5 * ((f[k] - y) ** 2).sum(1).mean() for k in range(2)], rtol=1e-13)
    np.testing.assert_allclose(study, [((f[k] - y) ** 2).mean() for k in range(2)], rtol=1e-13)

    labels = np.array([0, 2, 1, 1, 0])
    xent = loss_per_member(ft, torch.from_numpy(labels), "xent", "half_sum").numpy()
    want = [np_loss_and_dloss(f[k], labels, "xent", "")[0] for k in range(2)]
    np.testing.assert_allclose(xent, want, rtol=1e-13)
    per_member_labels = torch.from_numpy(np.stack([labels, labels[::-1].copy()]))
    xent2 = loss_per_member(ft, per_member_labels, "xent", "half_sum").numpy()
    np.testing.assert_allclose(xent2[1], np_loss_and_dloss(f[1], labels[::-1], "xent", "")[0], rtol=1e-13)


# ------------------------------------------------------------------------------------------ optimizer updates


def test_sgd_update_is_w_minus_lr_g_per_member():
    """SGD: W <- W - lr_k * g, each member at its own per-layer rate."""
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(3, 4, 5, generator=gen, dtype=torch.float64), torch.randn(3, 5, 1, generator=gen,
                                                                                 dtype=torch.float64)]
    gs = [torch.randn_like(w) for w in ws]
    lrs = [torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64).reshape(-1, 1, 1),
           torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).reshape(-1, 1, 1)]
    before = [w.numpy().copy() for w in ws]
    update(ws, gs, lrs, None, 1)
    for l, (w, g) in enumerate(zip(ws, gs)):
        for k in range(3):
            want = before[l][k] - lrs[l][k].item() * g[k].numpy()
            np.testing.assert_allclose(w[k].numpy(), want, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("k_members", [1, 3])
def test_adam_update_matches_torch_optim_adam(k_members):
    """Same gradients -> same weights as torch.optim.Adam (betas 0.9/0.999, eps 1e-8, bias correction), 6 steps, a
    different rate per layer and per member. Catches a missing bias correction, eps inside the sqrt, or beta mix-ups."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(4, 6), (6, 6), (6, 1)]
    rates = [[1e-2, 3e-3, 2e-2], [5e-3, 1e-3, 1e-2], [0.1, 0.05, 0.2]][:k_members]
    start = [torch.randn(k_members, *s, generator=gen, dtype=torch.float64) for s in shapes]
    grads_seq = [[torch.randn(k_members, *s, generator=gen, dtype=torch.float64) * 10.0 ** (-t) for s in shapes]
                 for t in range(6)]

    ours = [w.clone() for w in start]
    state = [(torch.zeros_like(w), torch.zeros_like(w)) for w in ours]
    lrs = [torch.tensor([rates[k][l] for k in range(k_members)], dtype=torch.float64).reshape(-1, 1, 1)
           for l in range(3)]
    for step, grads in enumerate(grads_seq, start=1):
        update(ours, grads, lrs, state, step)

    for k in range(k_members):
        params = [start[l][k].clone().requires_grad_(True) for l in range(3)]
        opt = torch.optim.Adam([{"params": [p], "lr": rates[k][l]} for l, p in enumerate(params)],
                               betas=(0.9, 0.999), eps=1e-8)
        for grads in grads_seq:
            for l, p in enumerate(params):
                p.grad = grads[l][k].clone()
            opt.step()
        for l in range(3):
            np.testing.assert_allclose(ours[l][k].numpy(), params[l].detach().numpy(), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------- the loop against hand-computed updates


@pytest.mark.parametrize("gamma", [0.5, 4.0])  # both branches of gamma_mult
@pytest.mark.parametrize("parametrization", ["SP", "muP"])
@pytest.mark.parametrize(
    "family,loss,convention",
    [("poly_fixed", "mse", "half_sum"), ("poly_fixed", "mse", "study"), ("digits", "xent", "half_sum"),
     ("digits", "mse", "half_sum")],
)
def test_one_sgd_step_matches_hand_backprop(family, loss, convention, parametrization, gamma):
    """Full-batch SGD (B = n_train, so the batch is the whole set in some order): the eval loss after step 1 and
    the train loss at step 2 equal the numpy hand update W - lr_l * dL/dW of the centred loss.

    Catches: training on the uncentred f, a wrong lr rule or readout inside the loop, the study convention's
    factor 2 (mean instead of 0.5 * sum), one-hot targets for MSE on classes, an update of the wrong sign."""
    exp = experiment(family, steps=2, report_every=1, mse_convention=convention)
    if family == "poly_fixed":
        exp["n_train"] = 64
    task = task_for(exp)
    p = point(batch_size=task.n_train, eta=0.3, width=16, depth=3, gamma=gamma, parametrization=parametrization,
              loss=loss, seed=3)
    reports = train(task, exp, p)
    assert [r.step for r in reports] == [1, 2]

    widths = model.layer_widths(task.dim, p["width"], p["depth"], task.n_out)
    w0 = [w[0].numpy() for w in model.init_weights(widths, [init_seed(p["seed"])], dtype=torch.float64)]
    a = hand_readout(p)
    x, y = task.x_train.numpy(), np_targets(task, task.y_train, loss)
    xe, ye = task.x_eval.numpy(), np_targets(task, task.y_eval, loss)
    f0, f0e = np_forward(w0, x, a)[0], np_forward(w0, xe, a)[0]

    loss0, grads = np_grads(w0, x, y, f0, a, loss, convention)
    w1 = [w - hand_lr(p, l) * g for l, (w, g) in enumerate(zip(w0, grads))]
    eval1 = np_loss_and_dloss(np_forward(w1, xe, a)[0] - f0e, ye, loss, convention)[0]
    train2 = np_loss_and_dloss(np_forward(w1, x, a)[0] - f0, y, loss, convention)[0]

    assert reports[0].train_loss[0] == pytest.approx(loss0, rel=1e-10)
    assert reports[0].eval_loss[0] == pytest.approx(eval1, rel=1e-9)
    assert reports[1].train_loss[0] == pytest.approx(train2, rel=1e-9)
    assert eval1 != pytest.approx(reports[0].initial_loss[0], rel=1e-6)  # the step did move the function


@pytest.mark.parametrize(
    "parametrization,lr_rule,gamma",
    [("muP", "mup_adam", 1.0), ("muP", "mup_adam", 0.3), ("muP", "study", 1.0), ("SP", "study", 5.0)],
)
def test_adam_loop_matches_torch_optim_adam(parametrization, lr_rule, gamma):
    """Four full-batch Adam steps through train() equal an independent reference: hand-written torch forward of the
    centred MLP, torch.optim.Adam with the per-layer rates of DESIGN.md. Catches the global sqrt(N) rate used under
    mup_adam (or per-layer rates under study), and any drift from torch's Adam."""
    steps = 4
    exp = experiment("poly_fixed", n_train=64, steps=steps, report_every=1)
    task = task_for(exp)
    p = point(batch_size=64, eta=2e-3, width=16, gamma=gamma, parametrization=parametrization, optimizer="Adam",
              lr_rule=lr_rule, seed=5)
    reports = train(task, exp, p)

    widths = model.layer_widths(task.dim, p["width"], p["depth"], 1)
    w0 = [w[0] for w in model.init_weights(widths, [init_seed(p["seed"])], dtype=torch.float64)]
    a = hand_readout(p)

    def f(ws, x):
        h = x
        for w in ws[:-1]:
            h = torch.relu(h @ w / math.sqrt(w.shape[0]))
        return h @ ws[-1] * a

    x, y, xe, ye = task.x_train, task.y_train, task.x_eval, task.y_eval
    with torch.no_grad():
        f0, f0e = f(w0, x), f(w0, xe)
    params = [w.clone().requires_grad_(True) for w in w0]
    opt = torch.optim.Adam([{"params": [q], "lr": hand_lr(p, l)} for l, q in enumerate(params)])
    for t in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((f(params, x) - f0 - y) ** 2).sum(1).mean()
        loss.backward()
        opt.step()
        with torch.no_grad():
            want = 0.5 * ((f(params, xe) - f0e - ye) ** 2).sum(1).mean().item()
        assert reports[t].train_loss[0] == pytest.approx(loss.item(), rel=1e-9)
        assert reports[t].eval_loss[0] == pytest.approx(want, rel=1e-9)


# --------------------------------------------------------------------------------------- SP / muP equivalence


@pytest.mark.parametrize("gamma", [1.0, 0.25])
@pytest.mark.parametrize("optimizer,eta", [("SGD", 0.2), ("Adam", 3e-3)])
def test_sp_equals_mup_at_gamma_over_sqrt_width(optimizer, eta, gamma):
    """SP(N, gamma, eta) and muP(N, gamma / sqrt(N), eta) give the same 50-step curves (float64, rel < 1e-9).
    Catches muP width_mult N <-> sqrt(N) swaps, a readout 1/N vs 1/sqrt(N) slip, or gamma_mult on the wrong side."""
    exp = experiment("poly_online", steps=50, report_every=1)
    task = task_for(exp)
    width = 64
    sp = train(task, exp, point(parametrization="SP", gamma=gamma, eta=eta, width=width, optimizer=optimizer))
    mup = train(task, exp, point(parametrization="muP", gamma=gamma / math.sqrt(width), eta=eta, width=width,
                                 optimizer=optimizer))
    assert [r.step for r in sp] == [r.step for r in mup] == list(range(1, 51))
    for a, b in zip(sp, mup):
        assert not a.diverged and not b.diverged
        for va, vb in ((a.train_loss[0], b.train_loss[0]), (a.eval_loss[0], b.eval_loss[0])):
            assert abs(va - vb) <= 1e-9 * abs(va)
    assert sp[-1].eval_loss[0] < 0.95 * sp[0].initial_loss[0]  # it learned: the equality is not vacuous


# --------------------------------------------------------------------------------------------------- centring


@pytest.mark.parametrize("gamma", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("parametrization", ["SP", "muP"])
@pytest.mark.parametrize("convention", ["half_sum", "study"])
def test_step_zero_loss_is_zero_predictor_mse(convention, parametrization, gamma):
    """Report.initial_loss is 0.5 * mean sum y_eval^2 (half_sum) or mean y_eval^2 (study); the first minibatch loss
    (B = n_train: the whole set) is the zero predictor's on the training set; with eta = 0 the eval loss stays at
    the zero predictor's. For every gamma: an uncentred f (whose size goes like 1/gamma) fails at gamma = 0.01."""
    exp = experiment("poly_fixed", n_train=64, steps=2, report_every=1, mse_convention=convention)
    task = task_for(exp)
    y_eval, y_train = task.y_eval.numpy(), task.y_train.numpy()
    zero = (lambda y: 0.5 * (y**2).sum(1).mean()) if convention == "half_sum" else (lambda y: (y**2).mean())
    reports = train(task, exp, point(batch_size=64, eta=0.0, gamma=gamma, parametrization=parametrization))
    for r in reports:
        assert r.initial_loss[0] == pytest.approx(zero(y_eval), rel=1e-12)
        assert r.eval_loss[0] == pytest.approx(zero(y_eval), rel=1e-12)
        assert r.train_loss[0] == pytest.approx(zero(y_train), rel=1e-12)
    moving = train(task, exp, point(batch_size=64, eta=0.1, gamma=gamma, parametrization=parametrization))
    assert moving[0].train_loss[0] == pytest.approx(zero(y_train), rel=1e-12)  # step 1 is before any update


@pytest.mark.parametrize("gamma", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("parametrization", ["SP", "muP"])
def test_step_zero_loss_is_log10_for_xent(parametrization, gamma):
    """Cross-entropy of the zero predictor over 10 classes is log(10), at step 0, for every gamma."""
    exp = experiment("digits", steps=1, report_every=1)
    reports = run(exp, point(batch_size=64, eta=0.1, gamma=gamma, parametrization=parametrization, loss="xent"))
    assert reports[0].initial_loss[0] == pytest.approx(math.log(10), rel=1e-12)
    assert reports[0].train_loss[0] == pytest.approx(math.log(10), rel=1e-12)


# ------------------------------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("parametrization", ["SP", "muP"])
def test_huge_eta_diverges_fast_and_stops(parametrization, optimizer):
    """eta = 1e6: the member is reported diverged (with its step) within 3 report intervals, that report is the
    last one and is finished, and no step beyond it ran. Catches a loop that keeps training a diverged member, or
    that only judges divergence at the end."""
    report_every = 5
    exp = experiment("poly_online", steps=500, report_every=report_every)
    reports = run(exp, point(eta=1e6, parametrization=parametrization, optimizer=optimizer))
    last = reports[-1]
    assert last.diverged, [(r.step, r.train_loss) for r in reports]
    assert all(not r.diverged for r in reports[:-1])
    assert last.step <= 3 * report_every
    assert last.finished
    assert 1 <= last.diverged[0] <= last.step


@pytest.mark.parametrize("parametrization", ["SP", "muP"])
@pytest.mark.parametrize("report_every", [5, 10, 50])
def test_nan_step_is_recorded_not_the_report_step(report_every, parametrization):
    """Adam's first step moves every weight by about eta (a sign step): at eta = 1e6 the float32 output at step 2 is
    of order 1e18 per layer product and its square overflows, so the first non-finite minibatch loss is at step 2.
    That step is recorded whatever the report grid. Catches judging NaN/Inf only at report steps (it would record
    5, 10, 50)."""
    exp = experiment("poly_online", steps=200, report_every=report_every, dtype="float32", divergence_factor=1e30)
    reports = run(exp, point(eta=1e6, optimizer="Adam", parametrization=parametrization))
    assert len(reports) == 1 and reports[0].step == report_every
    assert reports[0].diverged == {0: 2}
    assert not math.isfinite(reports[0].train_loss[0])


def test_divergence_factor_judges_finite_losses_at_report_steps():
    """A finite loss above divergence_factor * initial loss is diverged at that report's step: with a factor of
    1e-6 the very first report (train loss ~ initial) already counts, at step == report_every."""
    exp = experiment("poly_online", steps=50, report_every=7, divergence_factor=1e-6)
    reports = run(exp, point(eta=0.01))
    assert len(reports) == 1
    assert reports[0].diverged == {0: 7}
    assert math.isfinite(reports[0].train_loss[0])
    healthy = run(experiment("poly_online", steps=50, report_every=7), point(eta=0.01))
    assert [r.step for r in healthy] == [7, 14, 21, 28, 35, 42, 49, 50]
    assert not any(r.diverged for r in healthy) and healthy[-1].finished


def test_blow_up_then_die_is_diverged_by_the_train_window():
    """Past the stability edge a ReLU net may blow up for a few steps and then die (all units off: the eval loss is
    back near the zero predictor's). The mean train loss of the window still holds the blow-up, so the member is
    diverged at that report. Catches judging divergence on the eval loss alone."""
    exp = experiment("poly_online", steps=100, report_every=10)
    task = task_for(exp)
    recovered = 0
    for seed in range(4):
        (report,) = train(task, exp, point(eta=1e6, optimizer="Adam", parametrization="SP", seed=seed))
        assert report.diverged == {0: 10}
        assert report.train_loss[0] > 100.0 * report.initial_loss[0]
        recovered += report.eval_loss[0] <= 100.0 * report.initial_loss[0]
    assert recovered >= 1  # at least one seed died: its eval loss alone would not have flagged it


def test_float32_with_a_huge_divergence_factor_warns_nothing():
    """factor * initial loss is formed in float64: a float32 run with divergence_factor 1e300 neither overflows (a
    RuntimeWarning, an error under -W error) nor misjudges a healthy member."""
    exp = experiment("poly_online", steps=20, report_every=10, dtype="float32", divergence_factor=1e300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reports = run(exp, point())
    assert [r.step for r in reports] == [10, 20] and not any(r.diverged for r in reports)


# ---------------------------------------------------------------------------------------------- data families


def _family_experiments(tmp_path: Path) -> dict[str, dict]:
    arrays = tiny_mnist()
    idx_dir = tmp_path / "mnist_idx"
    idx_dir.mkdir()
    write_idx(idx_dir / "train-images-idx3-ubyte", arrays["x_train"])
    write_idx(idx_dir / "train-labels-idx1-ubyte", arrays["y_train"])
    write_idx(idx_dir / "t10k-images-idx3-ubyte.gz", arrays["x_test"])
    write_idx(idx_dir / "t10k-labels-idx1-ubyte.gz", arrays["y_test"])
    np.savez(tmp_path / "mnist.npz", **arrays)
    np.savez(tmp_path / "mnist1m.npz", **tiny_mnist(n_train=120, n_test=40, seed=1))
    return {
        "poly_online": experiment("poly_online"),
        "poly_fixed": experiment("poly_fixed"),
        "mlp_teacher": experiment("mlp_teacher", teacher_width=16),
        "mlp_teacher_fixed": experiment("mlp_teacher", teacher_width=16, online=False),
        "digits": experiment("digits"),
        "mnist_idx": experiment("mnist", path=str(idx_dir)),
        "mnist_npz": experiment("mnist", path=str(tmp_path / "mnist.npz")),
        "mnist1m": experiment("mnist1m", path=str(tmp_path / "mnist1m.npz")),
        "mnist1m_sampled": experiment("mnist1m_sampled", path=str(tmp_path / "mnist1m.npz"), max_train_samples=50),
    }


REGRESSION_CASES = ["poly_online", "poly_fixed", "mlp_teacher", "mlp_teacher_fixed"]
CLASSIFICATION_CASES = ["digits", "mnist_idx", "mnist_npz", "mnist1m", "mnist1m_sampled"]
FAMILY_CASES = [(c, "mse") for c in REGRESSION_CASES + CLASSIFICATION_CASES] + [
    (c, "xent") for c in CLASSIFICATION_CASES]


@pytest.mark.parametrize("case,loss", FAMILY_CASES)
def test_every_family_trains(tmp_path, case, loss):
    """Every family builds (MNIST / MNIST-1M from tiny IDX and .npz files written here) and trains through train();
    classification reports eval_accuracy, regression None; fixed data counts epochs, online data None."""
    exp = dict(_family_experiments(tmp_path)[case], steps=6, report_every=3)
    task = task_for(exp)
    assert task.kind == ("regression" if case in REGRESSION_CASES else "classification")
    p = point(batch_size=8, width=16, loss=loss, eta=0.05)
    reports = train(task, exp, p)
    assert [r.step for r in reports] == [3, 6]
    assert reports[-1].finished and not reports[0].finished
    assert all(r.samples_seen == r.step * 8 for r in reports)
    for r in reports:
        assert not r.diverged
        assert math.isfinite(r.train_loss[0]) and math.isfinite(r.eval_loss[0])
        if task.kind == "classification":
            assert 0.0 <= r.eval_accuracy[0] <= 1.0
            assert r.epoch == r.step // (task.n_train // 8)
        else:
            assert r.eval_accuracy == [None]
        if task.online:
            assert r.epoch is None
    if case == "mnist1m_sampled":
        assert task.n_train == 50


def test_xent_on_digits_learns_and_reports_accuracy():
    """Digits with cross-entropy: accuracy is reported and rises above chance within 100 SGD steps."""
    exp = experiment("digits", steps=100, report_every=50)
    reports = run(exp, point(batch_size=32, width=64, loss="xent", eta=0.5, depth=2))
    accuracy = reports[-1].eval_accuracy[0]
    assert accuracy is not None and accuracy > 0.5
    assert reports[-1].eval_loss[0] < math.log(10)


@pytest.mark.parametrize("family", ["poly_fixed", "digits"])
def test_batch_larger_than_data_set_is_infeasible(family):
    exp = experiment(family, steps=5)
    task = task_for(exp)
    with pytest.raises(InfeasibleError, match="batch_size"):
        train(task, exp, point(batch_size=task.n_train + 1, loss="xent" if family == "digits" else "mse"))
    assert len(train(task, exp, point(batch_size=task.n_train, loss="xent" if family == "digits" else "mse"))) == 1


def test_infeasible_mnist_from_file(tmp_path):
    exp = dict(_family_experiments(tmp_path)["mnist_npz"], steps=2)
    with pytest.raises(InfeasibleError):
        run(exp, point(batch_size=81, width=8))  # tiny_mnist has 80 training images


def test_online_batch_larger_than_block_is_fine():
    """An online teacher has no data-set size: a batch above the block size P concatenates fresh blocks."""
    exp = experiment("poly_online", n_train=64, steps=4, report_every=2)
    reports = run(exp, point(batch_size=100))
    assert [r.step for r in reports] == [2, 4]


def test_steps_from_epochs_drop_the_partial_batch():
    exp = {"family": "poly_fixed", "n_train": 100, "dim": 8, "epochs": 3, "dtype": "float64"}
    task = task_for(exp)
    assert steps_for(exp, task, 32) == 9  # 3 * floor(100 / 32)
    reports = train(task, dict(exp, report_every=3), point(batch_size=32))
    assert [(r.step, r.epoch) for r in reports] == [(3, 1), (6, 2), (9, 3)]
    online = task_for(experiment("poly_online"))
    with pytest.raises(InfeasibleError, match="steps"):
        steps_for({"epochs": 2}, online, 8)


# ------------------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("family", ["poly_online", "poly_fixed", "digits"])
@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
def test_same_seed_same_curve_bit_for_bit(family, optimizer):
    exp = experiment(family, steps=30, report_every=5)
    task = task_for(exp)
    loss = "xent" if family == "digits" else "mse"
    eta = 0.05 if optimizer == "SGD" else 3e-3
    a = curve(train(task, exp, point(seed=4, optimizer=optimizer, loss=loss, eta=eta)))
    b = curve(train(task_for(exp), exp, point(seed=4, optimizer=optimizer, loss=loss, eta=eta)))
    c = curve(train(task, exp, point(seed=5, optimizer=optimizer, loss=loss, eta=eta)))
    assert a == b
    assert len(a) == len(c) == 6
    assert all(ra[1] != rc[1] for ra, rc in zip(a, c))  # different init and data order: every window differs


def test_online_data_order_is_fresh_blocks_from_the_seed():
    """At eta = 0 the minibatch loss is the zero predictor's, 0.5 * mean y_batch^2, so the train curve exposes the
    data order. Online: the seed's generator (``data_seed(seed)``) draws a block of P = 64 samples, batches are
    consecutive slices, a fresh block comes when one is used up. Catches a data order that ignores the trial seed,
    a block reused instead of replaced, or samples skipped at block boundaries."""
    exp = experiment("poly_online", n_train=64, steps=10, report_every=1)
    task = task_for(exp)
    for seed in (0, 1):
        reports = train(task, exp, point(batch_size=16, eta=0.0, seed=seed))
        gen = torch.Generator().manual_seed(data_seed(seed))
        y = torch.cat([task.draw_block(gen)[1] for _ in range(3)]).numpy()  # 3 blocks of 64 = 12 batches of 16
        want = [0.5 * (y[16 * t: 16 * (t + 1)] ** 2).sum(1).mean() for t in range(10)]
        np.testing.assert_allclose([r.train_loss[0] for r in reports], want, rtol=1e-12)


def test_fixed_data_order_is_a_fresh_permutation_per_epoch():
    """Fixed data: each epoch reads a fresh permutation drawn from the seed's generator, in batch-size slices, the
    last partial batch dropped (100 samples, B = 32: 3 batches, 4 samples left out)."""
    exp = {"family": "poly_fixed", "n_train": 100, "dim": 8, "epochs": 3, "report_every": 1, "dtype": "float64"}
    task = task_for(exp)
    y = task.y_train.numpy()
    for seed in (0, 7):
        reports = train(task, exp, point(batch_size=32, eta=0.0, seed=seed))
        gen = torch.Generator().manual_seed(data_seed(seed))
        want = []
        for _ in range(3):
            perm = torch.randperm(100, generator=gen).numpy()
            want += [0.5 * (y[perm[32 * b: 32 * (b + 1)]] ** 2).sum(1).mean() for b in range(3)]
        np.testing.assert_allclose([r.train_loss[0] for r in reports], want, rtol=1e-12)
        assert [r.epoch for r in reports] == [0, 0, 1, 1, 1, 2, 2, 2, 3]


def test_seeds_derive_distinct_init_and_data_streams():
    assert init_seed(0) != data_seed(0)
    assert len({init_seed(s) for s in range(100)} | {data_seed(s) for s in range(100)}) == 200


# ---------------------------------------------------------------------------------------- fused == unfused

BUNDLES = {
    # eta, gamma and seed all differ; seed 2 at eta 1e6 diverges; two members share seed 0 (a shared stream)
    "mixed": [dict(eta=1.0, gamma=1.0, seed=0), dict(eta=2.0, gamma=0.5, seed=1), dict(eta=0.5, gamma=2.0, seed=0),
              dict(eta=1e6, gamma=1.0, seed=2)],
    # one seed: every member reads one shared data stream
    "shared": [dict(eta=1.0, gamma=1.0, seed=3), dict(eta=1e6, gamma=0.5, seed=3), dict(eta=0.25, gamma=4.0, seed=3)],
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("family", ["poly_online", "poly_fixed", "digits"])
@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_fused_bundle_equals_solo_runs(bundle, family, optimizer, dtype):
    """Each member of a bundle (differing in eta, gamma and seed) has the curve it has alone: bit for bit in
    float64, to 1e-5 relative in float32; the eta = 1e6 member diverges at the same step as alone and the others
    are untouched by it. Catches members sharing a data stream or Adam state, a lr broadcast over the wrong axis,
    or a diverged member's NaN leaking into the stacked tensors."""
    exp = experiment(family, steps=40, report_every=5, dtype=dtype)
    task = task_for(exp)
    base_eta = 0.05 if optimizer == "SGD" else 3e-3
    loss = "xent" if family == "digits" else "mse"
    points = [point(optimizer=optimizer, loss=loss, **dict(m, eta=m["eta"] * base_eta if m["eta"] < 1e6 else 1e6))
              for m in BUNDLES[bundle]]
    fused = list(train_bundle(task, exp, points))
    assert fused[-1].finished and fused[-1].step == 40
    for k, p in enumerate(points):
        got, want = curve(fused, k), curve(train(task, exp, p))
        if p["eta"] == 1e6:
            assert want[-1][4] is not None  # it diverges alone ...
            assert [(r[0], r[4]) for r in got] == [(r[0], r[4]) for r in want]  # ... at the same step in the bundle
            continue
        assert [r[0] for r in got] == [r[0] for r in want] == [5, 10, 15, 20, 25, 30, 35, 40]
        if dtype == "float64":
            assert same_curve(got, want), (k, got, want)
        else:
            for rg, rw in zip(got, want):
                np.testing.assert_allclose(rg[1:3], rw[1:3], rtol=1e-5)


def test_bundle_rejects_points_that_do_not_share_the_bundle_keys():
    exp = experiment("poly_online", steps=2)
    assert "width" in BUNDLE_KEYS and "eta" not in BUNDLE_KEYS
    with pytest.raises(ValueError, match="share"):
        list(train_bundle(task_for(exp), exp, [point(width=16), point(width=32)]))
