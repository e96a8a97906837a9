"""Loss curvature of each member of a stacked bundle: Hessian-vector products, sharpness, spectra, trace.

Every quantity is per member and batched over the K members of a bundle (weights ``[K, fan_in, fan_out]``, as in
:mod:`raysweep.model`). Members are independent, so the Hessian of ``sum_k loss_k`` is block-diagonal across
members: one double backward of the sum gives every member's Hessian-vector product at once, and a member's
numbers do not depend on the other members of its bundle.

- :func:`member_loss` and :class:`MemberLoss`: the trained loss of each member (centred output ``f - f0``, the
  loss conventions of :func:`raysweep.step.loss_per_member`), differentiable in the weights;
- :func:`hessian_matvec` and :func:`hvp`: Hessian-vector products (Pearlmutter 1994, double backward), or
  generalised Gauss-Newton products ``J^T H_out J v`` (Schraudolph 2002);
- :func:`lanczos_top`, :func:`sharpness`: top eigenvalues by Lanczos with full reorthogonalisation;
  ``sharpness = lambda_max(H)``, the quantity of the edge of stability (Cohen et al. 2021, "Gradient Descent on
  Neural Networks Typically Occurs at the Edge of Stability");
- :func:`preconditioned_sharpness`: ``lambda_max(P^-1 H)``, the preconditioned sharpness of adaptive methods (Cohen
  et al. 2022, "Adaptive Gradient Methods at the Edge of Stability"), with :func:`adam_preconditioner`;
- :func:`batch_sharpness`: ``E_b[g_b^T H_b g_b / |g_b|^2]``, the stability quantity of SGD (Andreyev & Beneventano
  2024, "Edge of Stochastic Stability");
- :func:`hutchinson_trace`: ``tr(H)`` from Rademacher probes (Hutchinson 1990);
- :func:`slq_density`, :func:`density_on_grid`: the spectral density by stochastic Lanczos quadrature (Ghorbani,
  Krishnan & Xiao 2019, "An Investigation into Neural Net Optimization via Hessian Eigenvalue Density"; Lin, Saad
  & Yang 2016).

Operators are callables ``matvec(vectors) -> vectors`` on lists of ``[K, ...]`` tensors shaped like the weights.
Random probes come from the ``generator`` argument: one ``torch.Generator`` for the bundle, or a sequence of K
generators, one per member (member k draws only from its own: its numbers are then the same alone and in any
bundle). Probes are drawn on the CPU in float64 and cast, so a generator gives the same probes on any device. No
training stream is touched.

Pure: torch, :mod:`raysweep.model` and :mod:`raysweep.step`; no Ray, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from raysweep import model
from raysweep.step import loss_per_member

# --- the loss ------------------------------------------------------------------------------------------------------


class MemberLoss:
    """The trained loss of each member on one batch, as a callable ``weights -> [K]``, split at the output.

    ``x``: ``[B, D]`` (shared) or ``[K, B, D]``; ``y``: targets as :func:`raysweep.step.targets` gives them (one-hot
    for MSE on classes, int64 labels for xent); ``out_mult``: ``[K, 1, 1]``
    (:func:`raysweep.model.readout_multiplier`); ``f0``: ``f(x; theta_0)`` ``[K, B, out]``, the multiplied output
    of the initial weights (what :func:`raysweep.model.centred` takes).

    :meth:`output` is the centred output ``f(x; theta) - f0`` and :meth:`loss_of_output` the loss of an output;
    ``kind="ggn"`` products need both.
    """

    def __init__(self, x, y, out_mult, f0, *, loss: str, mse_convention: str):
        self.x, self.y, self.out_mult, self.f0 = x, y, out_mult, f0
        self.loss, self.mse_convention = loss, mse_convention

    def output(self, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """The centred output ``f(x; theta) - f0``, ``[K, B, out]``."""
        raise NotImplementedError

    def loss_of_output(self, f: torch.Tensor) -> torch.Tensor:
        """Each member's loss ``[K]`` of centred outputs ``f`` (:func:`raysweep.step.loss_per_member`)."""
        raise NotImplementedError

    def __call__(self, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.loss_of_output(self.output(weights))


def member_loss(weights, x, y, out_mult, f0, *, loss: str, mse_convention: str) -> torch.Tensor:
    """The trained loss of each member, ``[K]``, differentiable in ``weights`` (L tensors ``[K, fan_in, fan_out]``):
    :func:`raysweep.step.loss_per_member` of the centred output ``f(x; theta) - f0`` (:func:`raysweep.model.forward`).
    Arguments as :class:`MemberLoss`."""
    raise NotImplementedError


# --- products ------------------------------------------------------------------------------------------------------


def hessian_matvec(loss_fn: Callable, weights: Sequence[torch.Tensor], *, kind: str = "exact") -> Callable:
    """The operator ``v -> H v`` of each member's loss at ``weights``, its graph built once for many products.

    ``loss_fn(weights) -> [K]``. ``kind="exact"``: the Hessian, by double backward of ``sum_k loss_k`` (Pearlmutter
    1994); the Hessian is block-diagonal across members, so one product serves all K. ``kind="ggn"``: the
    generalised Gauss-Newton matrix ``J^T H_out J`` (Schraudolph 2002; ``J`` the Jacobian of the output, ``H_out``
    the Hessian of the loss in the output), ``J v`` by forward-mode differentiation of a vector-Jacobian product;
    ``loss_fn`` must then have ``output`` and ``loss_of_output`` (a :class:`MemberLoss`). ``weights`` are only read.
    """
    raise NotImplementedError


def hvp(loss_fn: Callable, weights: Sequence[torch.Tensor], vectors: Sequence[torch.Tensor], *,
        kind: str = "exact") -> list[torch.Tensor]:
    """Hessian-vector products ``H_k v_k`` of each member's loss, a list like ``weights``; ``kind`` as
    :func:`hessian_matvec` (``"exact"`` or ``"ggn"``)."""
    raise NotImplementedError


# --- Lanczos -------------------------------------------------------------------------------------------------------


def lanczos_top(matvec: Callable, shapes_like: Sequence[torch.Tensor], k_members: int, *, top_k: int = 1,
                steps: int = 20, generator=None, tol: float | None = None) -> torch.Tensor:
    """The ``top_k`` largest eigenvalues (largest first) of each member's symmetric operator, ``[K, top_k]``.

    Lanczos with full reorthogonalisation, all members at once: per-member vectors, alphas and betas. A member
    whose Krylov space is exhausted (``beta < tol * |T|``) restarts from a fresh probe orthogonal to its basis, so
    ``steps >= n`` gives every eigenvalue with its multiplicity; a member stops cleanly once its basis spans all
    ``n`` dimensions. Eigenvalues beyond the member's basis size are NaN. ``shapes_like``: tensors ``[K, ...]``
    giving the operator's shapes, dtype and device (the weights); ``generator`` as in the module's docstring;
    ``tol`` defaults to ``sqrt(eps)`` of the dtype.
    """
    raise NotImplementedError


def sharpness(loss_fn: Callable, weights: Sequence[torch.Tensor], *, steps: int = 20, generator=None,
              kind: str = "exact") -> torch.Tensor:
    """``lambda_max(H)`` of each member's loss, ``[K]``: :func:`lanczos_top` with ``top_k=1`` on
    :func:`hessian_matvec` (Cohen et al. 2021: full-batch GD at rate ``eta`` settles at ``lambda_max = 2 / eta``)."""
    raise NotImplementedError


def adam_preconditioner(adam: Sequence[tuple[torch.Tensor, torch.Tensor]], step: int,
                        eps: float | None = None) -> list[torch.Tensor]:
    """Adam's diagonal preconditioner ``P = sqrt(v_hat) + eps`` per layer from the optimizer state ``adam`` (per
    layer ``(m, v)``, as :func:`raysweep.step.update` keeps it) after ``step`` steps; ``v_hat = v / (1 - beta2^step)``,
    ``eps`` defaults to :data:`raysweep.step.ADAM_EPS`. Adam's step is ``lr / (1 - beta1^step) * P^-1 m``."""
    raise NotImplementedError


def preconditioned_sharpness(loss_fn: Callable, weights: Sequence[torch.Tensor], precond: Sequence[torch.Tensor],
                             *, steps: int = 20, generator=None, kind: str = "exact") -> torch.Tensor:
    """``lambda_max(P^-1 H)`` of each member, ``[K]``: the top eigenvalue of the symmetric ``P^-1/2 H P^-1/2``
    (similar to ``P^-1 H``), by :func:`lanczos_top`. ``precond``: per layer positive tensors like ``weights`` (Adam:
    :func:`adam_preconditioner`). Cohen et al. 2022: Adam at rate ``eta`` (``beta1 = 0.9``) settles at
    ``lambda_max(P^-1 H) = 38 / eta``."""
    raise NotImplementedError


def batch_sharpness(loss_fn_of_batch: Callable, weights: Sequence[torch.Tensor], batches) -> torch.Tensor:
    """SGD's batch sharpness per member, ``[K]`` (Andreyev & Beneventano 2024): the mean over ``batches`` of
    ``g_b^T H_b g_b / |g_b|^2``, with ``g_b`` and ``H_b`` the gradient and Hessian of minibatch ``b``'s loss
    ``loss_fn_of_batch(weights, b) -> [K]``. A batch whose gradient is zero is left out of a member's mean (NaN when
    every batch's is)."""
    raise NotImplementedError


# --- trace and density ---------------------------------------------------------------------------------------------


def hutchinson_trace(matvec: Callable, shapes_like: Sequence[torch.Tensor], k_members: int, *, samples: int = 10,
                     generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, stderr)``, each ``[K]``: Hutchinson's (1990) estimate ``tr(A) ~ mean_i z_i^T A z_i`` over
    ``samples`` Rademacher probes ``z_i``, and its standard error (sample standard deviation / sqrt(samples); NaN
    for one sample)."""
    raise NotImplementedError


def slq_density(matvec: Callable, shapes_like: Sequence[torch.Tensor], k_members: int, *, probes: int = 4,
                steps: int = 30, generator=None, grid: torch.Tensor | None = None, sigma=None):
    """The spectral density of each member's operator by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    For each of ``probes`` normalised Gaussian probes ``v``, ``steps`` Lanczos steps give ``T = U diag(theta) U^T``;
    the Ritz values ``theta_i`` with weights ``U[0, i]^2`` are the Gaussian quadrature of the measure
    ``sum_j (v . u_j)^2 delta(t - lambda_j)``, exact for polynomials of degree ``< 2 steps``. Returns ``(nodes,
    weights)``, each ``[K, probes * steps]``: the nodes of every probe, weights divided by ``probes`` (each member's
    sum to 1). A probe whose Krylov space is exhausted early pads its nodes with weight 0. With ``grid`` (``[G]`` or
    ``[K, G]``) also the broadened density, ``(nodes, weights, density_on_grid(nodes, weights, grid, sigma))``.
    """
    raise NotImplementedError


def density_on_grid(nodes: torch.Tensor, weights: torch.Tensor, grid: torch.Tensor, sigma=None) -> torch.Tensor:
    """``phi(t) = sum_i w_i N(t; node_i, sigma^2)`` on ``grid`` (``[G]`` or ``[K, G]``), ``[K, G]``: the Gaussian
    broadening of :func:`slq_density`'s quadrature, integrating to 1 (when the grid covers the nodes). ``sigma``: a
    float or ``[K]``; by default 1% of each member's node range."""
    raise NotImplementedError
