"""Exact SGD theory for a linear student of a linear teacher on Gaussian features with a power-law spectrum.

Setting. Features ``x ~ N(0, Sigma)``, ``Sigma = diag(lambda)``, ``lambda_i = i^-alpha`` (``i = 1..D``). The
teacher ``w*_i ~ i^-(1/2 + alpha (beta - 1) / 2)`` is normalised to ``Var(w*.x) = sum_i lambda_i w*_i^2 = 1``, so
``lambda_i w*_i^2 ~ i^-(1 + alpha beta)``: ``alpha`` is the capacity and ``beta`` the source exponent
(``sum_i lambda_i^(1-s) w*_i^2`` stays bounded as ``D -> inf`` iff ``s < beta``; Caponnetto & De Vito 2007's
conditions in this notation). Labels ``y = sqrt(1 - rho) w*.x + sqrt(rho) eps``, ``eps ~ N(0, 1)``, so
``Var(y) = 1`` and the effective teacher is ``w_t = sqrt(1 - rho) w*``. The student ``f(x) = w.x`` starts at
``w_0 = 0``; ``e = w - w_t`` is its error and ``A = E[e e^T]`` the error's second moment.

Conventions (:func:`raysweep.step.loss_coefficients`, one output). ``half_sum``: minibatch loss
``sum_b r_b^2 / (2B)``, gradient ``(1/B) sum_b x_b r_b`` (``r = w.x - y``). ``study``: loss ``sum_b r_b^2 / B``,
gradient ``(2/B) sum_b x_b r_b``. The study loss is twice the half_sum loss and its SGD step at rate ``eta`` is the
half_sum step at ``2 eta``: every function here computes in half_sum and converts (losses x2, rates /2).

Minibatch SGD (half_sum), ``H_B = (1/B) sum_b x_b x_b^T``, ``xi_b = sqrt(rho) eps_b``::

    e' = (I - eta H_B) e + (eta / B) sum_b x_b xi_b

With ``e`` independent of the fresh batch, Isserlis' theorem (Wick) for Gaussian ``x`` and symmetric ``A``,
``E[x x^T A x x^T] = 2 Sigma A Sigma + tr(A Sigma) Sigma``, and ``E[x_b x_b^T A x_c x_c^T] = Sigma A Sigma`` for
``b != c`` give ``E[H_B A H_B] = (1 + 1/B) Sigma A Sigma + tr(A Sigma) Sigma / B``, whence
(:func:`second_moment_map`; cf. Bordelon & Pehlevan 2022, "Learning Curves for SGD on Structured Features", ICLR)::

    A' = A - eta (Sigma A + A Sigma) + eta^2 [(1 + 1/B) Sigma A Sigma + tr(A Sigma) Sigma / B] + eta^2 rho Sigma / B

Mean-square stability (:func:`eta_edge`). With ``c = 1 + 1/B`` the map splits. The diagonal ``a = diag(A)`` evolves
by ``a' = M a + eta^2 rho lambda / B``, ``M = diag(d) + u u^T``, ``d_i = (1 - eta lambda_i)^2 + eta^2 lambda_i^2 / B
= 1 - 2 eta lambda_i + c eta^2 lambda_i^2``, ``u = eta lambda / sqrt(B)``; an off-diagonal ``A_ij`` is multiplied by
``c_ij = (1 - eta lambda_i)(1 - eta lambda_j) + eta^2 lambda_i lambda_j / B``. So the map's eigenvalues are those of
``M`` and the ``c_ij``. ``M`` is symmetric positive semidefinite (``d >= 0``), so ``rho(M) = lambda_max(M) >=
M_ii >= d_i``, and Cauchy-Schwarz on the 2-vectors ``(1 - eta lambda_i, eta lambda_i / sqrt(B))`` gives
``|c_ij| <= sqrt(d_i d_j) <= rho(M)``: the map's spectral radius is ``rho(M)``. If some ``d_i >= 1`` then
``rho(M) >= d_i + u_i^2 > 1``. If every ``d_i < 1``, ``I - diag(d)`` is positive definite and ``I - M`` is positive
definite iff ``u^T (I - diag(d))^-1 u < 1`` (Schur complement). As ``1 - d_i = eta lambda_i (2 - c eta lambda_i)``::

    stable  <=>  c eta lambda_max < 2  and  g(eta) = (eta / B) sum_i lambda_i / (2 - c eta lambda_i) < 1

``g`` increases from 0 to infinity on ``[0, 2 / (c lambda_max))``: the edge is its unique root ``g(eta*) = 1``.
Bounding each ``2 - c eta lambda_i`` by ``2 - c eta lambda_max`` from below, by 2 from above, and keeping only the
``lambda_max`` term::

    2 / (lambda_max (1 + 1/B) + tr(Sigma) / B)  <=  eta*  <=  min(2 B / tr(Sigma), 2 / (lambda_max (1 + 2/B)))

The left side is :func:`eta_edge_approx` (equal to ``eta*`` iff the spectrum is flat); the right side shows the
linear growth ``2 B / tr(Sigma)`` for ``B << B_crit = tr(Sigma) / lambda_max`` (:func:`critical_batch`) and the
saturation at ``2 / lambda_max`` for ``B >> B_crit`` (cf. Ma, Bassily & Belkin 2018, "The Power of Interpolation",
ICML; Jain, Kakade, Kidambi, Netrapalli & Sidford 2018, "Parallelizing SGD for Least Squares Regression", JMLR 18).

Loss. Half_sum population loss ``(e^T Sigma e + rho) / 2 = (lambda.a + rho) / 2`` (:func:`population_loss`,
:func:`loss_curve` from ``a_0 = w_t^2``). Below the edge the fixed point of the diagonal recursion, by
Sherman-Morrison with ``(I - diag(d))^-1 lambda = 1 / (eta (2 - c eta lambda))``, is ``lambda.a_inf = rho g / (1 - g)``:
the stationary loss is ``rho / (2 (1 - g(eta)))`` (:func:`stationary_loss`), which diverges at the edge.

Pure: numpy only; no torch, no Ray, no I/O.
"""

from __future__ import annotations

import numpy as np

# |1 + alpha beta| is clipped before it multiplies log i (<= 21.5 for D <= 2**31 - 1), so that the product stays
# finite; beyond it the normalised power is already a single feature (i = 1 or i = D) in float64: no number changes
POWER_EXPONENT_CLIP = 1e15
CONVENTIONS = ("half_sum", "study")  # raysweep.space.MSE_CONVENTIONS, for a single output


def _scale(convention: str) -> float:
    """The study's loss and gradient over half_sum's: 1 or 2."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    return 1.0 if convention == "half_sum" else 2.0


def _lambdas(lambdas) -> np.ndarray:
    lam = np.asarray(lambdas, dtype=np.float64)
    if lam.ndim != 1 or lam.size == 0 or not np.all(np.isfinite(lam)) or not np.all(lam > 0):
        raise ValueError("lambdas must be a non-empty 1-D array of positive finite numbers")
    return lam


def _check_batch(batch_size) -> float:
    if not batch_size >= 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return float(batch_size)


def spectrum(dim: int, alpha: float) -> np.ndarray:
    """``lambda_i = i^-alpha``, ``i = 1..dim`` (float64, decreasing): the feature variances, ``Sigma``'s diagonal."""
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim}")
    return np.arange(1, int(dim) + 1, dtype=np.float64) ** -float(alpha)


def teacher_power(dim: int, alpha: float, beta: float) -> np.ndarray:
    """``lambda_i w*_i^2``, proportional to ``i^-(1 + alpha beta)`` and summing to 1: the teacher's share of
    ``Var y`` on each feature (the source condition: a larger beta, a teacher easier to learn from the top of the
    spectrum), float64 ``[dim]``, computed from logarithms so that no term overflows."""
    exponent = min(max(1.0 + float(alpha) * float(beta), -POWER_EXPONENT_CLIP), POWER_EXPONENT_CLIP)
    log_power = -exponent * np.log(np.arange(1, int(dim) + 1, dtype=np.float64))
    power = np.exp(log_power - log_power.max())
    return power / power.sum()


def teacher(dim: int, alpha: float, beta: float) -> np.ndarray:
    """The teacher ``w*_i ~ i^-(1/2 + alpha (beta - 1) / 2)``, every entry >= 0, normalised to
    ``sum_i lambda_i w*_i^2 = Var(w*.x) = 1`` (``lambda`` = :func:`spectrum`). Depends on ``(dim, alpha, beta)``
    only, never on a seed; the data builder (:func:`raysweep.data.synthetic.build_linear`) samples from it."""
    return np.sqrt(teacher_power(dim, alpha, beta) / spectrum(dim, alpha))


def critical_batch(lambdas) -> float:
    """``B_crit = tr(Sigma) / lambda_max``: below it the edge grows like ``2 B / tr(Sigma)``, above it saturates at
    ``2 / lambda_max`` (the module's bounds)."""
    lam = _lambdas(lambdas)
    return float(lam.sum() / lam.max())


def population_loss(w, w_t, lambdas, rho: float = 0.0, convention: str = "half_sum") -> float:
    """The expected loss of ``f(x) = w.x`` on ``y = w_t.x + sqrt(rho) eps``: half_sum
    ``E[(w.x - y)^2] / 2 = ((w - w_t)^T Sigma (w - w_t) + rho) / 2``; study ``E[(w.x - y)^2]``, twice that."""
    lam = _lambdas(lambdas)
    e = np.asarray(w, dtype=np.float64) - np.asarray(w_t, dtype=np.float64)
    return _scale(convention) * 0.5 * (float(np.sum(lam * e * e)) + rho)


def second_moment_map(A, lambdas, eta: float, batch_size, rho: float = 0.0, convention: str = "half_sum"):
    """``E[e' e'^T]`` after one SGD step at rate ``eta`` on a fresh batch of ``batch_size`` samples, from
    ``A = E[e e^T]`` (symmetric, ``[D, D]``; the error ``e`` independent of the batch)::

        A - eta (Sigma A + A Sigma) + eta^2 [(1 + 1/B) Sigma A Sigma + tr(A Sigma) Sigma / B + rho Sigma / B]

    in half_sum's rate; a study rate ``eta`` is half_sum's ``2 eta``. Derivation in the module docstring."""
    lam = _lambdas(lambdas)
    B = _check_batch(batch_size)
    h = _scale(convention) * eta
    A = np.asarray(A, dtype=np.float64)
    SA = lam[:, None] * A
    AS = A * lam[None, :]
    SAS = lam[:, None] * A * lam[None, :]
    trace = float(np.sum(np.diagonal(A) * lam))
    return A - h * (SA + AS) + h * h * ((1.0 + 1.0 / B) * SAS + np.diag((trace + rho) / B * lam))


def _secular(h: float, lam: np.ndarray, B: float) -> float:
    """``g(eta) = (eta / B) sum_i lambda_i / (2 - (1 + 1/B) eta lambda_i)`` (half_sum rate): SGD is stable in mean
    square iff ``(1 + 1/B) eta lambda_max < 2`` and ``g < 1``."""
    return h / B * float(np.sum(lam / (2.0 - (1.0 + 1.0 / B) * h * lam)))


def eta_edge(lambdas, batch_size, convention: str = "half_sum") -> float:
    """The mean-square stability edge: the largest rate at which the second-moment map's spectral radius is below 1,
    the root of ``g(eta) = 1`` (module docstring), by bisection between the module's bounds to ~1e-15 relative.
    Study: half the half_sum edge."""
    lam = _lambdas(lambdas)
    B = _check_batch(batch_size)
    lam_max, trace = float(lam.max()), float(lam.sum())
    lo = 2.0 / (lam_max * (1.0 + 1.0 / B) + trace / B)
    hi = min(2.0 * B / trace, 2.0 / (lam_max * (1.0 + 2.0 / B)))
    lo, hi = min(lo, hi), max(lo, hi)  # equal but for rounding when the spectrum is flat
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if _secular(mid, lam, B) < 1.0:
            lo = mid
        else:
            hi = mid
    return lo / _scale(convention)


def eta_edge_approx(lambdas, batch_size, convention: str = "half_sum") -> float:
    """The study's approximation ``2 / (lambda_max (1 + 1/B) + tr(Sigma) / B)`` of the edge (half_sum rate; study:
    half). A lower bound of :func:`eta_edge`, exact iff the spectrum is flat (module docstring)."""
    lam = _lambdas(lambdas)
    B = _check_batch(batch_size)
    return 2.0 / (float(lam.max()) * (1.0 + 1.0 / B) + float(lam.sum()) / B) / _scale(convention)


def loss_curve(w_t, lambdas, eta: float, batch_size, steps: int, rho: float = 0.0,
               convention: str = "half_sum") -> np.ndarray:
    """The expected population loss after ``0..steps`` SGD steps from ``w_0 = 0`` (``[steps + 1]``), by the exact
    diagonal recursion ``a' = M a + eta^2 rho lambda / B``, ``a_0 = w_t^2``, loss ``(lambda.a + rho) / 2`` (times 2
    for study). Above the edge it grows geometrically (to inf in float64)."""
    lam = _lambdas(lambdas)
    B = _check_batch(batch_size)
    s = _scale(convention)
    h = s * eta
    d = (1.0 - h * lam) ** 2 + h * h * lam * lam / B
    a = np.asarray(w_t, dtype=np.float64) ** 2
    out = np.empty(int(steps) + 1)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(int(steps) + 1):
            ell = float(np.dot(lam, a))
            out[t] = s * 0.5 * (ell + rho)
            a = d * a + (h * h / B) * (ell + rho) * lam
    return out


def stationary_loss(lambdas, eta: float, batch_size, rho: float, convention: str = "half_sum") -> float:
    """The loss SGD settles at below the edge, ``rho / (2 (1 - g(eta)))`` (half_sum; study twice), independent of
    the teacher; inf at or above the edge."""
    lam = _lambdas(lambdas)
    B = _check_batch(batch_size)
    s = _scale(convention)
    h = s * eta
    if (1.0 + 1.0 / B) * h * float(lam.max()) >= 2.0:
        return float("inf")
    g = _secular(h, lam, B)
    return s * 0.5 * rho / (1.0 - g) if g < 1.0 else float("inf")
