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
  2024, "Edge of Stochastic Stability"); :func:`batch_sharpness_of` and :func:`preconditioned_operator` take products
  of any differentiation (:mod:`raysweep.custom.curvature`'s ``torch.func``);
- :func:`hutchinson_trace`: ``tr(H)`` from Rademacher probes (Hutchinson 1990);
- :func:`slq_density`, :func:`density_on_grid`: the spectral density by stochastic Lanczos quadrature (Ghorbani,
  Krishnan & Xiao 2019, "An Investigation into Neural Net Optimization via Hessian Eigenvalue Density"; Lin, Saad
  & Yang 2016).

Operators are callables ``matvec(vectors) -> vectors`` on lists of ``[K, ...]`` tensors shaped like the weights.
Random probes come from the ``generator`` argument (required: the global generator is never drawn from): one
``torch.Generator`` for the bundle, or a sequence of K generators, one per member. With K generators member k draws
only from its own, each probe one ``torch.randn(n, dtype=torch.float64)`` (Gaussian) or ``torch.randint(0, 2, (n,))``
(Rademacher) in order, ``n`` the member's parameter count: its numbers are then the same alone and in any bundle.
With one generator a probe is one ``[K, n]`` draw. Probes are drawn on the CPU in float64 and cast, so a generator
gives the same probes on any device. Eigenvalues, traces and quadratures are returned in float64; the Krylov basis
of Lanczos is kept in the weights' dtype (``K * steps * n`` numbers).

Pure: torch, :mod:`raysweep.model` and :mod:`raysweep.step`; no Ray, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from raysweep import model
from raysweep.step import ADAM_BETAS, ADAM_EPS, loss_per_member

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
        return model.forward(weights, self.x, self.out_mult) - self.f0

    def loss_of_output(self, f: torch.Tensor) -> torch.Tensor:
        """Each member's loss ``[K]`` of centred outputs ``f`` (:func:`raysweep.step.loss_per_member`)."""
        return loss_per_member(f, self.y, self.loss, self.mse_convention)

    def __call__(self, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.loss_of_output(self.output(weights))


def member_loss(weights, x, y, out_mult, f0, *, loss: str, mse_convention: str) -> torch.Tensor:
    """The trained loss of each member, ``[K]``, differentiable in ``weights`` (L tensors ``[K, fan_in, fan_out]``):
    :func:`raysweep.step.loss_per_member` of the centred output ``f(x; theta) - f0`` (:func:`raysweep.model.forward`).
    Arguments as :class:`MemberLoss`."""
    return MemberLoss(x, y, out_mult, f0, loss=loss, mse_convention=mse_convention)(weights)


# --- products ------------------------------------------------------------------------------------------------------


def hessian_matvec(loss_fn: Callable, weights: Sequence[torch.Tensor], *, kind: str = "exact") -> Callable:
    """The operator ``v -> H v`` of each member's loss at ``weights``, its graph built once for many products.

    ``loss_fn(weights) -> [K]``. ``kind="exact"``: the Hessian, by double backward of ``sum_k loss_k`` (Pearlmutter
    1994); the Hessian is block-diagonal across members, so one product serves all K. ``kind="ggn"``: the
    generalised Gauss-Newton matrix ``J^T H_out J`` (Schraudolph 2002; ``J`` the Jacobian of the output, ``H_out``
    the Hessian of the loss in the output), ``J v`` as the derivative in ``u`` of ``(J^T u) . v`` (a Jacobian-vector
    product from two vector-Jacobian products); ``loss_fn`` must then have ``output`` and ``loss_of_output`` (a
    :class:`MemberLoss`). ``weights`` are only read; the operator holds their autograd graph until it is dropped
    (an in-place update of the weights in between makes the next product fail loudly, never silently).
    """
    if kind not in ("exact", "ggn"):
        raise ValueError(f"kind must be 'exact' or 'ggn', got {kind!r}")
    w = [t.detach().requires_grad_(True) for t in weights]
    if kind == "exact":
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_fn(w).sum(), w, create_graph=True)

        def exact(vectors):
            with torch.enable_grad():
                return _grad(grads, w, vectors)

        return exact
    if not (hasattr(loss_fn, "output") and hasattr(loss_fn, "loss_of_output")):
        raise TypeError("kind='ggn' needs a loss_fn with output() and loss_of_output(), such as a MemberLoss")
    with torch.enable_grad():
        f = loss_fn.output(w)
        f_leaf = f.detach().requires_grad_(True)
        grad_f = torch.autograd.grad(loss_fn.loss_of_output(f_leaf).sum(), f_leaf, create_graph=True)
        dual = torch.zeros_like(f, requires_grad=True)
        jt_dual = torch.autograd.grad(f, w, grad_outputs=dual, create_graph=True)  # J^T u, linear in u

    def ggn(vectors):
        with torch.enable_grad():
            jv = _grad(jt_dual, [dual], vectors)  # J v = d(J^T u . v)/du
            h_jv = _grad(grad_f, [f_leaf], jv)
            return _grad([f], w, h_jv)

    return ggn


def hvp(loss_fn: Callable, weights: Sequence[torch.Tensor], vectors: Sequence[torch.Tensor], *,
        kind: str = "exact") -> list[torch.Tensor]:
    """Hessian-vector products ``H_k v_k`` of each member's loss, a list like ``weights``; ``kind`` as
    :func:`hessian_matvec` (``"exact"`` or ``"ggn"``)."""
    return hessian_matvec(loss_fn, weights, kind=kind)(list(vectors))


# --- Lanczos -------------------------------------------------------------------------------------------------------


def lanczos_top(matvec: Callable, shapes_like: Sequence[torch.Tensor], k_members: int, *, top_k: int = 1,
                steps: int = 20, generator,
                tol: float | None = None) -> torch.Tensor:
    """The ``top_k`` largest eigenvalues (largest first) of each member's symmetric operator, ``[K, top_k]``.

    Lanczos with full reorthogonalisation, all members at once: per-member vectors, alphas and betas. A member
    whose Krylov space is exhausted (``beta < tol * |T|``) restarts from a fresh probe orthogonal to its basis, so
    ``steps >= n`` gives every eigenvalue with its multiplicity; a member stops cleanly once its basis spans all
    ``n`` dimensions. Eigenvalues beyond the member's basis size are NaN. ``shapes_like``: tensors ``[K, ...]``
    giving the operator's shapes, dtype and device (the weights); ``generator`` as in the module's docstring;
    ``tol`` defaults to ``sqrt(eps)`` of the dtype.
    """
    flat_op, n = _flat_operator(matvec, shapes_like, k_members)
    dtype, device = shapes_like[0].dtype, shapes_like[0].device
    gens = _generators(generator, k_members)
    q0 = _draw(gens, k_members, n, "gaussian", dtype, device)
    tol = _default_tol(dtype) if tol is None else tol
    alpha, beta, size = _lanczos(flat_op, q0, min(steps, n), tol, gens)
    out = torch.full((k_members, top_k), float("nan"), dtype=torch.float64)
    for k in range(k_members):
        ritz = torch.linalg.eigvalsh(_tridiagonal(alpha[k], beta[k], int(size[k]))).flip(0)[:top_k]
        out[k, :len(ritz)] = ritz
    return out.to(device)


def sharpness(loss_fn: Callable, weights: Sequence[torch.Tensor], *, steps: int = 20, generator,
              kind: str = "exact") -> torch.Tensor:
    """``lambda_max(H)`` of each member's loss, ``[K]``: :func:`lanczos_top` with ``top_k=1`` on
    :func:`hessian_matvec` (Cohen et al. 2021: full-batch GD at rate ``eta`` settles at ``lambda_max = 2 / eta``);
    ``kind="ggn"`` gives the Gauss-Newton sharpness."""
    op = hessian_matvec(loss_fn, weights, kind=kind)
    return lanczos_top(op, weights, weights[0].shape[0], top_k=1, steps=steps, generator=generator)[:, 0]


def adam_preconditioner(adam: Sequence[tuple[torch.Tensor, torch.Tensor]], step: int,
                        eps: float | Sequence[torch.Tensor] | None = None,
                        beta2: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Adam's diagonal preconditioner ``P = sqrt(v_hat) + eps`` per layer from the optimizer state ``adam`` (per
    layer ``(m, v)``) after ``step`` steps; ``v_hat = v / (1 - beta2^step)``. At torch's defaults (``eps`` and
    ``beta2`` None: :data:`raysweep.step.ADAM_EPS`, :data:`raysweep.step.ADAM_BETAS`) it is
    :func:`raysweep.step.update`'s denominator; with each member's ``beta2`` (``[K, 1, 1]``, float64) and ``eps``
    per layer (``[K, 1, 1]`` each), as an :class:`raysweep.step.OptState` holds them, it is
    :func:`raysweep.step.update_general`'s. Adam's step is ``lr / (1 - beta1^step) * P^-1 m``."""
    if beta2 is None:
        eps = ADAM_EPS if eps is None else eps
        c2 = 1 - ADAM_BETAS[1] ** step
        return [torch.sqrt(v).div_(math.sqrt(c2)).add_(eps) for _, v in adam]  # raysweep.step.update's denominator
    root_c2 = (1 - beta2**step).sqrt().to(adam[0][1].dtype)
    return [torch.sqrt(v).div_(root_c2).add_(e) for (_, v), e in zip(adam, eps)]  # update_general's denominator


def preconditioned_sharpness(loss_fn: Callable, weights: Sequence[torch.Tensor], precond: Sequence[torch.Tensor],
                             *, steps: int = 20, generator, kind: str = "exact") -> torch.Tensor:
    """``lambda_max(P^-1 H)`` of each member, ``[K]``: the top eigenvalue of the symmetric ``P^-1/2 H P^-1/2``
    (similar to ``P^-1 H``), by :func:`lanczos_top`. ``precond``: per layer positive tensors like ``weights`` (Adam:
    :func:`adam_preconditioner`). Cohen et al. 2022: Adam at rate ``eta`` (``beta1 = 0.9``) settles at
    ``lambda_max(P^-1 H) = 38 / eta``."""
    sym = preconditioned_operator(hessian_matvec(loss_fn, weights, kind=kind), precond)
    return lanczos_top(sym, weights, weights[0].shape[0], top_k=1, steps=steps, generator=generator)[:, 0]


def preconditioned_operator(matvec: Callable, precond: Sequence[torch.Tensor]) -> Callable:
    """The symmetric operator ``v -> P^-1/2 H P^-1/2 v`` of an operator ``matvec`` (``v -> H v``) and positive
    ``precond`` tensors shaped like its vectors: what :func:`preconditioned_sharpness` hands to :func:`lanczos_top`."""
    scale = [p.rsqrt() for p in precond]  # P^-1/2

    def sym(vectors):
        return [s * hv for s, hv in zip(scale, matvec([s * v for s, v in zip(scale, vectors)]))]

    return sym


def batch_sharpness(loss_fn_of_batch: Callable, weights: Sequence[torch.Tensor], batches) -> torch.Tensor:
    """SGD's batch sharpness per member, ``[K]`` (Andreyev & Beneventano 2024): the mean over ``batches`` of
    ``g_b^T H_b g_b / |g_b|^2``, with ``g_b`` and ``H_b`` the gradient and Hessian of minibatch ``b``'s loss
    ``loss_fn_of_batch(weights, b) -> [K]``. A batch whose gradient is zero is left out of a member's mean (NaN when
    every batch's is)."""
    def products(batch):
        w = [t.detach().requires_grad_(True) for t in weights]
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_fn_of_batch(w, batch).sum(), w, create_graph=True)
            h_g = _grad(grads, w, [g.detach() for g in grads])
        return [g.detach() for g in grads], h_g

    return batch_sharpness_of(products, batches)


def batch_sharpness_of(gradient_products: Callable, batches) -> torch.Tensor:
    """:func:`batch_sharpness` from any differentiation: ``gradient_products(b) -> (g_b, H_b g_b)``, two lists of
    ``[K, ...]`` tensors (each member's minibatch gradient and its Hessian-vector product with it)."""
    ratios = []
    for batch in batches:
        grads, h_g = gradient_products(batch)
        g_h_g = _dot(grads, h_g)
        g_g = _dot(grads, grads).detach()
        ratios.append(torch.where(g_g > 0, g_h_g / g_g, float("nan")))
    if not ratios:
        raise ValueError("batch_sharpness needs at least one batch")
    return torch.stack([r.nanmean() for r in torch.stack(ratios, 1)])  # member by member


# --- trace and density ---------------------------------------------------------------------------------------------


def hutchinson_trace(matvec: Callable, shapes_like: Sequence[torch.Tensor], k_members: int, *, samples: int = 10,
                     generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, stderr)``, each ``[K]``: Hutchinson's (1990) estimate ``tr(A) ~ mean_i z_i^T A z_i`` over
    ``samples`` Rademacher probes ``z_i``, and its standard error (sample standard deviation / sqrt(samples); NaN
    for one sample)."""
    if samples < 1:
        raise ValueError(f"hutchinson_trace needs samples >= 1, got {samples}")
    flat_op, n = _flat_operator(matvec, shapes_like, k_members)
    dtype, device = shapes_like[0].dtype, shapes_like[0].device
    gens = _generators(generator, k_members)
    values = []
    for _ in range(samples):
        z = _draw(gens, k_members, n, "rademacher", dtype, device)
        az = flat_op(z)
        values.append(torch.stack([torch.dot(z[k], az[k]) for k in range(k_members)]).to(torch.float64))
    values = torch.stack(values, 1)  # [K, samples]
    mean = torch.stack([v.mean() for v in values])  # member by member: the same reductions alone and in a bundle
    if samples == 1:
        return mean, torch.full_like(mean, float("nan"))
    return mean, torch.stack([v.std() for v in values]) / math.sqrt(samples)


def slq_density(matvec: Callable, shapes_like: Sequence[torch.Tensor], k_members: int, *, probes: int = 4,
                steps: int = 30, generator, grid: torch.Tensor | None = None, sigma=None):
    """The spectral density of each member's operator by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    For each of ``probes`` normalised Gaussian probes ``v``, ``steps`` Lanczos steps give ``T = U diag(theta) U^T``;
    the Ritz values ``theta_i`` with weights ``U[0, i]^2`` are the Gaussian quadrature of the measure
    ``sum_j (v . u_j)^2 delta(t - lambda_j)``, exact for polynomials of degree ``< 2 steps``. Returns ``(nodes,
    weights)``, float64, each ``[K, probes * min(steps, n)]``: the nodes of every probe in order, weights divided by
    ``probes`` (each member's sum to 1). A probe whose Krylov space is exhausted early pads its nodes with weight 0.
    With ``grid`` (``[G]`` or ``[K, G]``) also the broadened density, ``(nodes, weights, density_on_grid(nodes,
    weights, grid, sigma))``.
    """
    flat_op, n = _flat_operator(matvec, shapes_like, k_members)
    dtype, device = shapes_like[0].dtype, shapes_like[0].device
    gens = _generators(generator, k_members)
    tol, m = _default_tol(dtype), min(steps, n)
    nodes = torch.zeros(k_members, probes, m, dtype=torch.float64)
    weights = torch.zeros(k_members, probes, m, dtype=torch.float64)
    for p in range(probes):
        q0 = _draw(gens, k_members, n, "gaussian", dtype, device)
        alpha, beta, size = _lanczos(flat_op, q0, m, tol, None)
        for k in range(k_members):
            theta, u = torch.linalg.eigh(_tridiagonal(alpha[k], beta[k], int(size[k])))
            nodes[k, p] = theta[0]  # padding: a Ritz value of this probe, weight 0
            nodes[k, p, :len(theta)] = theta
            weights[k, p, :len(theta)] = u[0].square()
    nodes, weights = nodes.reshape(k_members, -1).to(device), (weights / probes).reshape(k_members, -1).to(device)
    if grid is None:
        return nodes, weights
    return nodes, weights, density_on_grid(nodes, weights, grid, sigma)


def density_on_grid(nodes: torch.Tensor, weights: torch.Tensor, grid: torch.Tensor, sigma=None) -> torch.Tensor:
    """``phi(t) = sum_i w_i N(t; node_i, sigma^2)`` on ``grid`` (``[G]`` or ``[K, G]``), ``[K, G]``: the Gaussian
    broadening of :func:`slq_density`'s quadrature, integrating to 1 (when the grid covers the nodes). ``sigma``: a
    float or ``[K]``; by default 1% of each member's node range."""
    nodes, weights = nodes.to(torch.float64), weights.to(torch.float64)
    grid = torch.as_tensor(grid, dtype=torch.float64, device=nodes.device)
    grid = grid.expand(nodes.shape[0], grid.shape[-1]) if grid.dim() == 1 else grid
    if sigma is None:
        spread = nodes.amax(1) - nodes.amin(1)
        spread = torch.where(spread > 0, spread, nodes.abs().amax(1))
        sigma = 0.01 * torch.where(spread > 0, spread, torch.ones_like(spread))
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=nodes.device).expand(nodes.shape[0])
    out = []
    for t, node, weight, sd in zip(grid, nodes, weights, sigma):  # member by member: [G, M] at a time
        z = (t[:, None] - node[None, :]) / sd
        out.append((torch.exp(-0.5 * z.square()) * weight).sum(1) / (math.sqrt(2 * math.pi) * sd))
    return torch.stack(out)


# --- internals -----------------------------------------------------------------------------------------------------


def _grad(outputs, inputs, grad_outputs) -> list[torch.Tensor]:
    """``sum_i d(outputs_i . grad_outputs_i)/d inputs``, the graph kept; zeros for inputs (or outputs) the products
    do not reach (a gradient constant in the weights)."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    if not pairs:
        return [torch.zeros_like(t) for t in inputs]
    return list(torch.autograd.grad([o for o, _ in pairs], inputs, grad_outputs=[g for _, g in pairs],
                                    retain_graph=True, allow_unused=True, materialize_grads=True))


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_l <a_l, b_l>`` per member, float64 ``[K]``, member by member (the same calls alone and in a bundle)."""
    return torch.stack([sum(torch.dot(x[k].reshape(-1), y[k].reshape(-1)).to(torch.float64) for x, y in zip(a, b))
                        for k in range(a[0].shape[0])])


def _flat_operator(matvec: Callable, shapes_like: Sequence[torch.Tensor], k_members: int):
    """``(op, n)``: ``matvec`` on flat ``[K, n]`` vectors, ``n`` the parameters of a member."""
    shapes = [tuple(t.shape[1:]) for t in shapes_like]
    sizes = [math.prod(sh) for sh in shapes]
    if any(t.shape[0] != k_members for t in shapes_like):
        got = [tuple(t.shape) for t in shapes_like]
        raise ValueError(f"shapes_like must hold [K={k_members}, ...] tensors, got {got}")

    def op(flat: torch.Tensor) -> torch.Tensor:
        parts = [p.reshape(k_members, *sh) for p, sh in zip(flat.split(sizes, 1), shapes)]
        return torch.cat([v.reshape(k_members, -1) for v in matvec(parts)], 1)

    return op, sum(sizes)


def _generators(generator, k_members: int) -> list:
    """One generator for the bundle (a one-element list) or K, one per member."""
    if isinstance(generator, torch.Generator):
        return [generator]
    gens = list(generator)
    if len(gens) == 1 == k_members:
        return gens
    if len(gens) != k_members or not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError(f"generator must be a torch.Generator or {k_members} of them, one per member")
    return gens


def _draw_one(gen: torch.Generator, shape, kind: str) -> torch.Tensor:
    """Gaussian or Rademacher probes of ``shape``, float64 on the CPU."""
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=gen, dtype=torch.int64).mul_(2).sub_(1).to(torch.float64)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def _draw(gens: list, k_members: int, n: int, kind: str, dtype, device, members=None) -> torch.Tensor:
    """Probes ``[len(members), n]`` (all K by default): row k from member k's generator, or every row from the one
    bundle generator."""
    members = range(k_members) if members is None else members
    if len(gens) == 1:
        out = _draw_one(gens[0], (len(members), n), kind)
    else:
        out = torch.stack([_draw_one(gens[k], (n,), kind) for k in members])
    return out.to(device=device, dtype=dtype)


def _default_tol(dtype) -> float:
    """Lanczos breakdown tolerance, relative to the size of the tridiagonal: sqrt of the dtype's epsilon."""
    return math.sqrt(torch.finfo(dtype).eps)


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """One member's ``w`` ``[n]`` minus its projection on the rows of ``basis`` ``[j, n]``, twice ("twice is
    enough", classical Gram-Schmidt)."""
    for _ in range(2):
        w = w - torch.mv(basis.T, torch.mv(basis, w))
    return w


def _lanczos(op: Callable, q0: torch.Tensor, steps: int, tol: float, restart_gens):
    """Lanczos with full reorthogonalisation from start vectors ``q0`` ``[K, n]``, the products of all members in
    one call of ``op``, the vector algebra member by member (the same calls alone and in a bundle): ``(alpha,
    beta, size)``, float64 on the CPU; member k's tridiagonal has diagonal ``alpha[k, :size[k]]`` and
    off-diagonal ``beta[k, :size[k] - 1]``.

    When a member's Krylov space is exhausted (``beta <= tol * |T|``) it restarts from a fresh probe of
    ``restart_gens`` orthogonal to its basis (``beta = 0``: the tridiagonal splits into blocks), or stops when
    ``restart_gens`` is None; a stopped member's later products are taken of zero vectors and not recorded.
    """
    k_members, n = q0.shape
    basis = torch.zeros(k_members, steps, n, dtype=q0.dtype, device=q0.device)
    alpha = torch.zeros(k_members, steps, dtype=torch.float64)
    beta = torch.zeros(k_members, steps, dtype=torch.float64)
    size = [0] * k_members
    norm_t = [0.0] * k_members  # running estimate of |T|, for the breakdown test
    active = [True] * k_members
    q = torch.stack([v / torch.linalg.vector_norm(v) for v in q0])
    for j in range(steps):
        basis[:, j] = q
        w = op(q)
        q = torch.zeros_like(q)
        for k in range(k_members):
            if not active[k]:
                continue
            a = float(torch.dot(basis[k, j], w[k]))
            # the three-term recurrence is the projection on the last two vectors: full reorthogonalisation does it
            wk = _orthogonalize(w[k], basis[k, :j + 1])
            b = float(torch.linalg.vector_norm(wk))
            alpha[k, j] = a
            size[k] += 1
            norm_t[k] = max(norm_t[k], abs(a) + b + float(beta[k, j - 1] if j else 0.0))
            if j + 1 == steps:
                continue
            if b > tol * norm_t[k]:
                beta[k, j] = b
                q[k] = wk / b
            elif restart_gens is None:
                active[k] = False
            else:  # exhausted: a fresh direction orthogonal to the basis (beta stays 0)
                fresh = _draw(restart_gens, k_members, n, "gaussian", q.dtype, q.device, members=[k])[0]
                before = float(torch.linalg.vector_norm(fresh))
                fresh = _orthogonalize(fresh, basis[k, :j + 1])
                norm = float(torch.linalg.vector_norm(fresh))
                if norm > tol * before:
                    q[k] = fresh / norm
                else:  # the basis spans the whole space
                    active[k] = False
    return alpha, beta, torch.tensor(size)


def _tridiagonal(alpha: torch.Tensor, beta: torch.Tensor, size: int) -> torch.Tensor:
    """The Lanczos tridiagonal ``[size, size]`` from its diagonal and off-diagonal."""
    off = beta[:size - 1]
    return torch.diag(alpha[:size]) + torch.diag(off, 1) + torch.diag(off, -1)
