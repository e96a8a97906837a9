"""Exact SGD theory for linear teachers (raysweep.linear_theory), checked against closed forms solved by hand,
Monte-Carlo simulation of the data and of SGD itself, and matrices built here -- never against numbers the module
produced:

- spectrum and teacher: the closed forms, Var(y) = 1 exactly and over sampled x, the decay exponents;
- population loss: Monte-Carlo estimates of both conventions' minibatch losses (the trainer's coefficients);
- the second-moment map: Monte-Carlo averages over sampled batches, and over simulated SGD steps with label noise;
- the stability edge: the spectral radius of the full D^2 x D^2 map and of the reduced D x D diagonal map on either
  side of it; closed forms (one feature, flat spectra); the limits and bounds proved in the module docstring;
  the D = 256, alpha = 0.5 batch-size table;
- the loss curve against simulated SGD runs, and the stationary loss against its one-feature closed form;
- the study convention: losses double, rates halve, as raysweep.step.loss_coefficients says.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from raysweep import linear_theory as lt
from raysweep.space import MSE_CONVENTIONS
from raysweep.step import loss_coefficients

Z = 5.0  # Monte-Carlo tolerance, in standard errors (the seeds are fixed; 5 sigma leaves room on every entry)


def sample_x(rng, lam, shape):
    """Gaussian features with variances ``lam``, shape ``shape + (D,)``."""
    return rng.standard_normal((*shape, lam.size)) * np.sqrt(lam)


def full_map(lam, eta, B):
    """The second-moment map on row-major vec(A), [D^2, D^2], from Kronecker products:
    vec(S A T) = (S kron T^T) vec(A); tr(A Sigma) Sigma = vec(Sigma) vec(Sigma)^T vec(A). Written for symmetric A
    and extended to all D^2 entries: the symmetric matrices are invariant and carry the same eigenvalues."""
    S, I = np.diag(lam), np.eye(lam.size)
    s = S.reshape(-1)
    return (np.eye(lam.size ** 2) - eta * (np.kron(S, I) + np.kron(I, S))
            + eta ** 2 * ((1 + 1 / B) * np.kron(S, S) + np.outer(s, s) / B))


def radius(L):
    return float(np.max(np.abs(np.linalg.eigvals(L))))


def reduced_max(lam, eta, B):
    """lambda_max of the diagonal map M = diag(d) + (eta^2 / B) lambda lambda^T (symmetric)."""
    d = (1 - eta * lam) ** 2 + eta ** 2 * lam ** 2 / B
    return float(np.linalg.eigvalsh(np.diag(d) + eta ** 2 / B * np.outer(lam, lam))[-1])


# ------------------------------------------------------------------------------------------ spectrum, teacher


def test_spectrum_is_the_power_law():
    lam = lt.spectrum(5, 0.5)
    assert lam.dtype == np.float64
    np.testing.assert_allclose(lam, [1, 2 ** -0.5, 3 ** -0.5, 0.5, 5 ** -0.5], rtol=1e-15)
    np.testing.assert_array_equal(lt.spectrum(3, 0.0), [1.0, 1.0, 1.0])
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError):
            lt.spectrum(bad, 1.0)


@pytest.mark.parametrize("dim, alpha, beta", [(1, 1.0, 1.0), (64, 1.5, 0.7), (256, 0.5, 2.0), (1000, 1.1, 0.3),
                                              (10, 0.0, 1.0)])
def test_teacher_unit_label_variance_and_exponents(dim, alpha, beta):
    w = lt.teacher(dim, alpha, beta)
    i = np.arange(1, dim + 1, dtype=np.float64)
    lam = i ** -alpha
    assert abs(np.sum(lam * w * w) - 1) < 1e-12
    assert np.all(w > 0)
    if dim > 1:  # pure power laws: every log-log slope is the exponent
        slope = np.diff(np.log(w)) / np.diff(np.log(i))
        np.testing.assert_allclose(slope, -(0.5 + alpha * (beta - 1) / 2), rtol=0, atol=1e-9)
        power = np.diff(np.log(lam * w * w)) / np.diff(np.log(i))  # lambda_i w*_i^2 ~ i^-(1 + alpha beta)
        np.testing.assert_allclose(power, -(1 + alpha * beta), rtol=0, atol=1e-9)


def test_label_variance_sampled():
    rng = np.random.default_rng(0)
    n, dim, rho = 100_000, 64, 0.25
    lam, w = lt.spectrum(dim, 1.5), lt.teacher(dim, 1.5, 0.7)
    x = sample_x(rng, lam, (n,))
    clean = x @ w
    noisy = math.sqrt(1 - rho) * clean + math.sqrt(rho) * rng.standard_normal(n)
    se = math.sqrt(2 / n)  # std of a Gaussian sample variance of variance 1
    for y in (clean, noisy):
        assert abs(np.var(y) - 1) < Z * se


# ------------------------------------------------------------------------------------------ population loss


def test_population_loss_monte_carlo_both_conventions():
    """The trainer's minibatch losses c_loss * sum_b r_b^2 (raysweep.step.loss_coefficients, one output), averaged
    over 10^6 sampled (x, eps), against the closed form."""
    rng = np.random.default_rng(1)
    dim, rho, B = 16, 0.3, 4
    lam = lt.spectrum(dim, 1.2)
    w_t = math.sqrt(1 - rho) * lt.teacher(dim, 1.2, 0.8)
    w = w_t + 0.7 * rng.standard_normal(dim)
    for convention in MSE_CONVENTIONS:
        c_loss, _ = loss_coefficients("mse", convention, B, 1)
        losses = []
        for _ in range(5):  # 5 chunks of 2 * 10^5 samples = 5 * 10^4 batches each
            x = sample_x(rng, lam, (50_000, B))
            y = x @ w_t + math.sqrt(rho) * rng.standard_normal((50_000, B))
            losses.append(c_loss * np.sum((x @ w - y) ** 2, axis=1))
        losses = np.concatenate(losses)
        mc, se = losses.mean(), losses.std() / math.sqrt(losses.size)
        exact = lt.population_loss(w, w_t, lam, rho, convention)
        assert abs(mc - exact) < Z * se
        assert abs(mc / exact - 1) < 1e-2
    assert lt.population_loss(w, w_t, lam, rho, "study") == 2 * lt.population_loss(w, w_t, lam, rho)
    assert lt.population_loss(w_t, w_t, lam, rho) == rho / 2
    with pytest.raises(ValueError, match="convention"):
        lt.population_loss(w, w_t, lam, rho, "mean")


# ------------------------------------------------------------------------------------------ second-moment map


def random_spd(rng, dim):
    g = rng.standard_normal((dim, dim))
    return g @ g.T / dim + 0.1 * np.eye(dim)


@pytest.mark.parametrize("B", [1, 3])
def test_second_moment_map_monte_carlo(B):
    """E[(I - eta H_B) A (I - eta H_B)] over 4 * 10^5 sampled batches."""
    rng = np.random.default_rng(10 + B)
    dim, eta = 5, 0.4
    lam = rng.uniform(0.2, 1.0, dim)
    A = random_spd(rng, dim)
    total, total_sq, n = np.zeros((dim, dim)), np.zeros((dim, dim)), 0
    for _ in range(4):
        x = sample_x(rng, lam, (100_000, B))
        P = np.eye(dim) - eta * np.einsum("nbi,nbj->nij", x, x) / B
        V = P @ A @ P.transpose(0, 2, 1)
        total += V.sum(0)
        total_sq += (V * V).sum(0)
        n += V.shape[0]
    mc = total / n
    se = np.sqrt((total_sq / n - mc * mc) / n)
    exact = lt.second_moment_map(A, lam, eta, B)
    assert np.all(np.abs(mc - exact) < Z * se)
    assert np.linalg.norm(mc - exact) < 1e-2 * np.linalg.norm(exact)
    np.testing.assert_allclose(exact, exact.T, rtol=0, atol=1e-15)


@pytest.mark.parametrize("convention", MSE_CONVENTIONS)
def test_second_moment_map_simulated_sgd_step_with_label_noise(convention):
    """One SGD step of the trainer's gradient (c_df / 1 of loss_coefficients: 1/B or 2/B) on noisy labels, from an
    error e ~ N(0, A): E[e' e'^T] over 4 * 10^5 simulated steps."""
    rng = np.random.default_rng(20 + len(convention))
    dim, B, eta, rho = 4, 3, 0.5, 0.5
    _, c_df = loss_coefficients("mse", convention, B, 1)
    lam = rng.uniform(0.3, 1.0, dim)
    A = 0.02 * random_spd(rng, dim)  # small: the label-noise term eta^2 rho Sigma / B weighs as much as A's
    chol = np.linalg.cholesky(A)
    w_t = rng.standard_normal(dim)
    total, total_sq, n = np.zeros((dim, dim)), np.zeros((dim, dim)), 0
    for _ in range(4):
        m = 100_000
        w = w_t + rng.standard_normal((m, dim)) @ chol.T
        x = sample_x(rng, lam, (m, B))
        y = x @ w_t + math.sqrt(rho) * rng.standard_normal((m, B))
        r = np.einsum("nbi,ni->nb", x, w) - y
        e = w - eta * c_df * np.einsum("nbi,nb->ni", x, r) - w_t
        V = e[:, :, None] * e[:, None, :]
        total += V.sum(0)
        total_sq += (V * V).sum(0)
        n += m
    mc = total / n
    se = np.sqrt((total_sq / n - mc * mc) / n)
    exact = lt.second_moment_map(A, lam, eta, B, rho, convention)
    assert np.all(np.abs(mc - exact) < Z * se)
    assert np.linalg.norm(mc - exact) < 1e-2 * np.linalg.norm(exact)


# ------------------------------------------------------------------------------------------ the stability edge


def test_full_map_is_the_kronecker_matrix():
    rng = np.random.default_rng(3)
    lam = rng.uniform(0.1, 2.0, 4)
    A = random_spd(rng, 4)
    for B in (1, 5):
        np.testing.assert_allclose(full_map(lam, 0.3, B) @ A.reshape(-1),
                                   lt.second_moment_map(A, lam, 0.3, B).reshape(-1), rtol=1e-13, atol=1e-15)


SPECTRA = {
    "power D=4 alpha=1": lt.spectrum(4, 1.0),
    "power D=8 alpha=0.5": lt.spectrum(8, 0.5),
    "random D=6": np.random.default_rng(4).uniform(0.05, 3.0, 6),
    "one feature": np.array([0.7]),
}


@pytest.mark.parametrize("name", SPECTRA)
@pytest.mark.parametrize("B", [1, 2, 3, 16])
def test_edge_splits_the_full_map_spectral_radius(name, B):
    lam = SPECTRA[name]
    edge = lt.eta_edge(lam, B)
    assert radius(full_map(lam, edge * (1 - 1e-6), B)) < 1 < radius(full_map(lam, edge * (1 + 1e-6), B))


def test_edge_splits_the_reduced_map_on_large_spectra():
    rng = np.random.default_rng(5)
    cases = [(lt.spectrum(256, 0.5), B) for B in (1, 7, 31, 256)]
    cases += [(rng.uniform(0.01, 1.0, 50) ** 3, B) for B in (1, 4, 100)]
    for lam, B in cases:
        edge = lt.eta_edge(lam, B)
        assert reduced_max(lam, edge * (1 - 1e-9), B) < 1 < reduced_max(lam, edge * (1 + 1e-9), B)


@pytest.mark.parametrize("l", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("B", [1, 2, 7])
def test_edge_one_feature_closed_form(l, B):
    """D = 1: M = (1 - eta l)^2 + eta^2 l^2 / B + eta^2 l^2 / B = 1 - 2 eta l + eta^2 l^2 (1 + 2/B) < 1 iff
    eta < 2 / (l (1 + 2/B)); B = 1: 2 / (3 l). The approximation is exact here."""
    exact = 2 / (l * (1 + 2 / B))
    assert lt.eta_edge([l], B) == pytest.approx(exact, rel=1e-13)
    assert lt.eta_edge_approx([l], B) == pytest.approx(exact, rel=1e-13)
    if B == 1:
        assert lt.eta_edge([l], 1) == pytest.approx(2 / (3 * l), rel=1e-13)


@pytest.mark.parametrize("dim, B", [(3, 1), (10, 4), (100, 1000)])
def test_edge_flat_spectrum_closed_form(dim, B):
    """Sigma = l I: g = (eta / B) D l / (2 - (1 + 1/B) eta l) = 1 iff eta = 2 / (l (1 + (D + 1) / B))."""
    l = 0.6
    exact = 2 / (l * (1 + (dim + 1) / B))
    assert lt.eta_edge(np.full(dim, l), B) == pytest.approx(exact, rel=1e-13)
    assert lt.eta_edge_approx(np.full(dim, l), B) == pytest.approx(exact, rel=1e-13)


def test_edge_large_batch_limit_is_gradient_descent():
    lam = lt.spectrum(256, 0.5)
    b_crit = lt.critical_batch(lam)
    assert lt.eta_edge(lam, 10 ** 12) == pytest.approx(2.0, rel=1e-9)
    for B in (10 ** 4, 10 ** 6):  # the module's bounds: 1 / (1 + (1 + B_crit) / B) <= eta* lambda_max / 2 <= 1
        assert 1 / (1 + (1 + b_crit) / B) <= lt.eta_edge(lam, B) / 2 <= 1


def test_edge_against_batch_size_power_law_256():
    """D = 256, alpha = 0.5: B_crit = sum_i i^-1/2 ~ 2 sqrt(256) - 1.46 ~ 30.5; the edge grows with B, about
    linearly (2 B / tr) below B_crit and saturates at 2 / lambda_max above; the approximation is a lower bound."""
    lam = lt.spectrum(256, 0.5)
    trace = sum(i ** -0.5 for i in range(1, 257))
    assert lt.critical_batch(lam) == pytest.approx(trace, rel=1e-13)
    assert 30 < trace < 31
    sizes = [2 ** k for k in range(9)]
    exact = np.array([lt.eta_edge(lam, B) for B in sizes])
    approx = np.array([lt.eta_edge_approx(lam, B) for B in sizes])
    assert np.all(np.diff(exact) > 0)  # g(eta) decreases in B at fixed eta
    gaps = np.log2(exact / approx)
    print("\n    B   exact edge   approximation   gap (octaves)")
    for B, e, a, gap in zip(sizes, exact, approx, gaps):
        print(f"{B:5d}   {e:.6f}     {a:.6f}        {gap:.4f}")
        assert a <= e <= min(2 * B / trace, 2 / (1 + 2 / B))
        # the diagonal map M decides (module docstring): stable at the approximation, split at the edge
        assert reduced_max(lam, a, B) < 1
        assert reduced_max(lam, e * (1 - 1e-9), B) < 1 < reduced_max(lam, e * (1 + 1e-9), B)
    k = int(np.argmax(gaps))
    print(f"largest gap {gaps[k]:.4f} octaves at B = {sizes[k]} (B_crit = {trace:.2f})")
    assert exact[0] * trace / 2 >= 1 / (1 + 2 / trace)  # linear regime: within 7% of 2 B / tr at B = 1
    assert exact[-1] / 2 >= 1 / (1 + (1 + trace) / 256)  # saturated: within 11% of 2 / lambda_max at B = 256
    assert np.all(gaps >= 0)


def test_edge_input_checks():
    with pytest.raises(ValueError):
        lt.eta_edge([1.0, -0.5], 2)
    with pytest.raises(ValueError):
        lt.eta_edge([1.0], 0)
    with pytest.raises(ValueError):
        lt.eta_edge_approx([1.0], 1, "mean")


# ------------------------------------------------------------------------------------------ loss curves


@pytest.mark.parametrize("convention", MSE_CONVENTIONS)
def test_loss_curve_matches_simulated_sgd(convention):
    """20000 independent SGD runs (the trainer's gradient coefficient) from w_0 = 0, 40 steps at half the edge,
    noisy labels: the mean exact population loss of the runs at every step."""
    rng = np.random.default_rng(30 + len(convention))
    dim, B, rho, runs, steps = 6, 2, 0.2, 20_000, 40
    lam = lt.spectrum(dim, 1.0)
    w_t = math.sqrt(1 - rho) * lt.teacher(dim, 1.0, 1.0)
    eta = 0.5 * lt.eta_edge(lam, B, convention)
    _, c_df = loss_coefficients("mse", convention, B, 1)
    scale = 1.0 if convention == "half_sum" else 2.0
    w = np.zeros((runs, dim))
    mean, se = [], []
    for t in range(steps + 1):
        e = w - w_t
        losses = scale * 0.5 * ((e * e) @ lam + rho)
        mean.append(losses.mean())
        se.append(losses.std() / math.sqrt(runs))
        x = sample_x(rng, lam, (runs, B))
        y = x @ w_t + math.sqrt(rho) * rng.standard_normal((runs, B))
        r = np.einsum("nbi,ni->nb", x, w) - y
        w = w - eta * c_df * np.einsum("nbi,nb->ni", x, r)
    theory = lt.loss_curve(w_t, lam, eta, B, steps, rho, convention)
    assert theory.shape == (steps + 1,)
    assert theory[0] == pytest.approx(scale * 0.5, rel=1e-12)  # w_0 = 0: the loss of predicting 0, Var(y) = 1
    np.testing.assert_array_less(np.abs(np.array(mean) - theory), Z * np.array(se) + 1e-12)


@pytest.mark.parametrize("l, B", [(1.0, 1), (0.5, 3)])
@pytest.mark.parametrize("fraction", [0.2, 0.9])
def test_stationary_loss_one_feature_closed_form(l, B, fraction):
    """D = 1: a' = (1 - 2 eta l + eta^2 l^2 (1 + 2/B)) a + eta^2 rho l / B, so a_inf = eta rho / (B (2 - eta l (1 +
    2/B))) and the loss (l a_inf + rho) / 2 = (rho / 2) (2 - eta l (1 + 1/B)) / (2 - eta l (1 + 2/B))."""
    rho = 0.3
    eta = fraction * 2 / (l * (1 + 2 / B))
    exact = rho / 2 * (2 - eta * l * (1 + 1 / B)) / (2 - eta * l * (1 + 2 / B))
    assert lt.stationary_loss([l], eta, B, rho) == pytest.approx(exact, rel=1e-13)
    assert lt.stationary_loss([l], eta / 2, B, rho, "study") == pytest.approx(2 * exact, rel=1e-13)
    assert lt.loss_curve([0.9], [l], eta, B, 4000, rho)[-1] == pytest.approx(exact, rel=1e-9)


def test_loss_curve_converges_below_and_diverges_above_the_edge():
    lam, B, rho = lt.spectrum(8, 1.0), 2, 0.1
    w_t = math.sqrt(1 - rho) * lt.teacher(8, 1.0, 1.0)
    edge = lt.eta_edge(lam, B)
    below = lt.loss_curve(w_t, lam, 0.95 * edge, B, 3000, rho)
    assert below[-1] == pytest.approx(lt.stationary_loss(lam, 0.95 * edge, B, rho), rel=1e-6)
    above = lt.loss_curve(w_t, lam, 1.05 * edge, B, 3000, rho)
    assert above[-1] > 1e6 and np.all(np.diff(above[-100:]) > 0)
    assert lt.stationary_loss(lam, 1.05 * edge, B, rho) == math.inf


# ------------------------------------------------------------------------------------------ the study convention


def test_study_convention_halves_rates_and_doubles_losses():
    assert lt.CONVENTIONS == MSE_CONVENTIONS
    # one output: the study's loss and gradient coefficients are twice half_sum's
    half, study = loss_coefficients("mse", "half_sum", 8, 1), loss_coefficients("mse", "study", 8, 1)
    assert study[0] == 2 * half[0] and study[1] == 2 * half[1]
    rng = np.random.default_rng(6)
    lam = rng.uniform(0.1, 1.0, 12)
    A = random_spd(rng, 12)
    for B in (1, 4, 64):
        assert lt.eta_edge(lam, B, "study") == lt.eta_edge(lam, B) / 2
        assert lt.eta_edge_approx(lam, B, "study") == lt.eta_edge_approx(lam, B) / 2
        np.testing.assert_allclose(lt.second_moment_map(A, lam, 0.1, B, 0.2, "study"),
                                   lt.second_moment_map(A, lam, 0.2, B, 0.2), rtol=1e-15, atol=1e-15)
    w, w_t = rng.standard_normal(12), rng.standard_normal(12)
    assert lt.population_loss(w, w_t, lam, 0.4, "study") == pytest.approx(2 * lt.population_loss(w, w_t, lam, 0.4),
                                                                          rel=1e-15)
