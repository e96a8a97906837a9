"""Loss curvature per member (raysweep.curvature), checked against dense linear algebra, never against itself:

- Hessian-vector products against the dense Hessian (torch.autograd.functional.hessian) of the loss of an MLP
  written plainly here, on a member's flattened weights: SP and muP readouts, MSE (both conventions, scalar and
  vector readouts) and cross-entropy, depth 2 and 3, centred outputs; the Gauss-Newton products against a dense
  ``J^T H_out J``;
- Lanczos top eigenvalues against numpy.linalg.eigvalsh of that Hessian; Hutchinson's trace within three standard
  errors of the exact trace; SLQ's quadrature exact on each probe (moments 0..3 equal ``v^T H^j v / |v|^2``), its
  moments within three standard errors of ``tr(H^j) / n``, its broadened density integrating to 1; preconditioned
  sharpness against the eigenvalues of the dense ``P^-1 H``; batch sharpness against the dense
  ``g_b^T H_b g_b / |g_b|^2``;
- a quadratic with a known spectrum (repeated eigenvalues included) passes all of them, SLQ's moments within 5%;
- a member whose Krylov space is exhausted stops cleanly; a member's curvature is bit-identical alone and in a
  bundle (its own generators, shared or per-member inputs); no global random state or weight moves.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raysweep import curvature, model
from raysweep.step import ADAM_BETAS, optimizer_state, update, update_general

DT = torch.float64
D, N, B = 3, 4, 6
GAMMAS = (0.5, 1.0, 2.0)
LOSSES = {  # name: (loss, mse_convention, outputs)
    "mse_half_sum": ("mse", "half_sum", 1),  # the scalar readout (mul and sum)
    "mse_study": ("mse", "study", 2),
    "xent": ("xent", "half_sum", 3),
}
CASES = [(p, name, depth) for p in ("SP", "muP") for name in LOSSES for depth in (2, 3)]


# ------------------------------------------------------------------------------- the plain reference


def unflatten(theta: torch.Tensor, shapes) -> list[torch.Tensor]:
    out, at = [], 0
    for a, b in shapes:
        out.append(theta[at:at + a * b].reshape(a, b))
        at += a * b
    return out


def plain_output(ws, x, a: float) -> torch.Tensor:
    """One member's raw output: ``h = relu(h W / sqrt(fan_in))``, ``f = a h W_L``."""
    h = x
    for w in ws[:-1]:
        h = torch.relu(h @ w / math.sqrt(w.shape[0]))
    return a * (h @ ws[-1])


def plain_loss_of_output(f, y, loss: str, convention: str) -> torch.Tensor:
    if loss == "xent":
        return F.cross_entropy(f, y)
    if convention == "study":
        return ((f - y) ** 2).mean()
    return 0.5 * ((f - y) ** 2).sum(1).mean()


class Case:
    """K = 3 members (gammas 0.5, 1, 2) of one MLP, away from their initial weights, and the dense references."""

    def __init__(self, param: str, name: str, depth: int, seed: int = 0):
        self.loss, self.convention, n_out = LOSSES[name]
        widths = model.layer_widths(D, N, depth, n_out)
        self.shapes = list(zip(widths[:-1], widths[1:]))
        self.w0 = model.init_weights(widths, [seed + k for k in range(3)], dtype=DT)
        gen = torch.Generator().manual_seed(100 + seed)
        self.w = [t + 0.5 * torch.randn(t.shape, generator=gen, dtype=DT) for t in self.w0]
        self.x = torch.randn(B, D, generator=gen, dtype=DT)
        self.y = (torch.randint(0, n_out, (B,), generator=gen) if self.loss == "xent"
                  else torch.randn(B, n_out, generator=gen, dtype=DT))
        self.a = model.readout_multiplier(N, torch.tensor(GAMMAS, dtype=DT), param)
        self.f0 = model.forward(self.w0, self.x, self.a)
        self.fn = curvature.MemberLoss(self.x, self.y, self.a, self.f0, loss=self.loss,
                                       mse_convention=self.convention)
        self.n = sum(a * b for a, b in self.shapes)

    def theta(self, k: int, weights=None) -> torch.Tensor:
        return torch.cat([t[k].reshape(-1) for t in (self.w if weights is None else weights)])

    def plain_f(self, k: int, theta, x=None):
        x = self.x if x is None else x
        a = float(self.a[k])
        f0 = plain_output([t[k] for t in self.w0], x, a)
        return plain_output(unflatten(theta, self.shapes), x, a) - f0

    def plain_loss(self, k: int, theta, x=None, y=None):
        return plain_loss_of_output(self.plain_f(k, theta, x), self.y if y is None else y, self.loss,
                                    self.convention)

    @functools.cached_property
    def hessians(self) -> torch.Tensor:
        """Each member's dense Hessian ``[K, n, n]``."""
        return torch.stack([torch.autograd.functional.hessian(functools.partial(self.plain_loss, k), self.theta(k))
                            for k in range(3)])

    @functools.cached_property
    def ggns(self) -> torch.Tensor:
        """Each member's dense ``J^T H_out J``."""
        out = []
        for k in range(3):
            f = self.plain_f(k, self.theta(k))
            jac = torch.autograd.functional.jacobian(lambda th: self.plain_f(k, th).reshape(-1), self.theta(k))
            h_out = torch.autograd.functional.hessian(
                lambda v: plain_loss_of_output(v.reshape(f.shape), self.y, self.loss, self.convention),
                f.reshape(-1))
            out.append(jac.T @ h_out @ jac)
        return torch.stack(out)


@functools.lru_cache(maxsize=None)
def case(param: str, name: str, depth: int) -> Case:
    return Case(param, name, depth)


def dense_of(matvec, shapes_like, n: int) -> torch.Tensor:
    """The operator's matrix per member, ``[K, n, n]``, column by column (unit vectors)."""
    k = shapes_like[0].shape[0]
    cols = []
    for i in range(n):
        e = torch.zeros(k, n, dtype=DT)
        e[:, i] = 1.0
        parts, at = [], 0
        for t in shapes_like:
            size = t[0].numel()
            parts.append(e[:, at:at + size].reshape(t.shape))
            at += size
        cols.append(torch.cat([v.reshape(k, -1) for v in matvec(parts)], 1))
    return torch.stack(cols, 2)


def rel_err(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=DT), torch.as_tensor(b, dtype=DT)
    return float((a - b).abs().max() / b.abs().max())


def gens(seed: int, k: int = 3) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(k)]


def eigvalsh(h: torch.Tensor) -> np.ndarray:
    return np.stack([np.linalg.eigvalsh(m.numpy()) for m in h])  # ascending, per member


# ------------------------------------------------------------------------------- products


@pytest.mark.parametrize("param,name,depth", CASES)
def test_hvp_equals_dense_hessian(param, name, depth):
    c = case(param, name, depth)
    assert torch.allclose(curvature.member_loss(c.w, c.x, c.y, c.a, c.f0, loss=c.loss, mse_convention=c.convention),
                          torch.stack([c.plain_loss(k, c.theta(k)) for k in range(3)]), rtol=1e-12, atol=0)
    dense = dense_of(curvature.hessian_matvec(c.fn, c.w), c.w, c.n)
    assert rel_err(dense, c.hessians) < 1e-8
    v = [torch.randn(t.shape, generator=torch.Generator().manual_seed(7), dtype=DT) for t in c.w]
    hv = torch.cat([t.flatten(1) for t in curvature.hvp(c.fn, c.w, v)], 1)
    ref = torch.einsum("kij,kj->ki", c.hessians, torch.cat([t.flatten(1) for t in v], 1))
    assert rel_err(hv, ref) < 1e-8


@pytest.mark.parametrize("param,name,depth", [("muP", name, 3) for name in LOSSES] + [("SP", "xent", 2)])
def test_ggn_equals_dense_jt_hout_j(param, name, depth):
    c = case(param, name, depth)
    dense = dense_of(curvature.hessian_matvec(c.fn, c.w, kind="ggn"), c.w, c.n)
    assert rel_err(dense, c.ggns) < 1e-8
    v = [torch.ones_like(t) for t in c.w]
    assert rel_err(torch.cat([t.flatten(1) for t in curvature.hvp(c.fn, c.w, v, kind="ggn")], 1),
                   c.ggns.sum(2)) < 1e-8
    with pytest.raises(TypeError, match="output"):
        curvature.hessian_matvec(lambda w: c.fn(w), c.w, kind="ggn")


# ------------------------------------------------------------------------------- spectra and traces


@pytest.mark.parametrize("param,name,depth", CASES)
def test_lanczos_top_equals_eigvalsh(param, name, depth):
    c = case(param, name, depth)
    op = curvature.hessian_matvec(c.fn, c.w)
    ref = eigvalsh(c.hessians)[:, ::-1][:, :4].copy()
    top = curvature.lanczos_top(op, c.w, 3, top_k=4, steps=c.n, generator=gens(1))
    assert top.shape == (3, 4)
    assert rel_err(top, ref) < 1e-6
    assert rel_err(curvature.sharpness(c.fn, c.w, steps=c.n, generator=gens(2)), ref[:, 0]) < 1e-6
    # Gauss-Newton sharpness: the GGN's top eigenvalue
    ggn_top = curvature.sharpness(c.fn, c.w, steps=c.n, generator=gens(3), kind="ggn")
    assert rel_err(ggn_top, eigvalsh(c.ggns)[:, -1]) < 1e-6


@pytest.mark.parametrize("param,name,depth", [("SP", "mse_half_sum", 3), ("muP", "xent", 2), ("muP", "mse_study", 3)])
def test_hutchinson_and_slq_against_exact_traces(param, name, depth):
    c = case(param, name, depth)
    op = curvature.hessian_matvec(c.fn, c.w)
    h = c.hessians
    tr1 = h.diagonal(dim1=1, dim2=2).sum(1)
    tr2 = (h @ h).diagonal(dim1=1, dim2=2).sum(1)
    mean, stderr = curvature.hutchinson_trace(op, c.w, 3, samples=30, generator=gens(4))
    assert bool(((mean - tr1).abs() < 3 * stderr).all()), (mean, tr1, stderr)

    probes, steps = 32, 4
    ev = torch.from_numpy(eigvalsh(h))
    span = ev[:, -1] - ev[:, 0]
    grid = torch.stack([torch.linspace(float(lo), float(hi), 4001, dtype=DT)  # one grid per member, [K, G]
                        for lo, hi in zip(ev[:, 0] - 0.2 * span, ev[:, -1] + 0.2 * span)])
    nodes, weights, density = curvature.slq_density(op, c.w, 3, probes=probes, steps=steps, generator=gens(5),
                                                    grid=grid)
    assert nodes.shape == weights.shape == (3, probes * steps)
    assert torch.allclose(weights.sum(1), torch.ones(3, dtype=DT), atol=1e-12)
    assert torch.allclose(torch.trapezoid(density, grid), torch.ones(3, dtype=DT), atol=1e-6)
    # the quadrature of each probe is exact for degree < 2 steps: moments of member k's probe p (the p-th
    # torch.randn(n, dtype=float64) of its generator) equal v^T H^j v / |v|^2
    for k, gen in enumerate(gens(5)):
        for p in range(probes):
            v = torch.randn(c.n, generator=gen, dtype=DT)
            v = v / v.norm()
            nk = nodes[k, p * steps:(p + 1) * steps]
            wk = weights[k, p * steps:(p + 1) * steps] * probes
            for j in range(4):
                exact = v @ torch.linalg.matrix_power(h[k], j) @ v
                assert abs(float((wk * nk**j).sum() - exact)) < 1e-9 * float(h[k].abs().max() ** j), (k, p, j)
    # moments over probes: unbiased for tr(H^j) / n, within three standard errors
    per_probe = lambda j: (weights * nodes**j).reshape(3, probes, steps).sum(2) * probes  # noqa: E731
    for j, tr in ((1, tr1), (2, tr2)):
        m = per_probe(j)
        assert bool(((m.mean(1) - tr / c.n).abs() < 3 * m.std(1) / math.sqrt(probes)).all()), (j, m, tr / c.n)


@pytest.mark.parametrize("param,name,depth", [("SP", "mse_study", 2), ("muP", "xent", 3), ("muP", "mse_half_sum", 3)])
def test_preconditioned_sharpness_equals_dense(param, name, depth):
    c = case(param, name, depth)
    gen = torch.Generator().manual_seed(11)
    precond = [torch.exp(0.7 * torch.randn(t.shape, generator=gen, dtype=DT)) for t in c.w]
    got = curvature.preconditioned_sharpness(c.fn, c.w, precond, steps=c.n, generator=gens(6))
    p = torch.cat([t.flatten(1) for t in precond], 1)
    ref = [np.linalg.eigvals((c.hessians[k] / p[k][:, None]).numpy()).real.max() for k in range(3)]
    assert rel_err(got, ref) < 1e-6


def test_adam_preconditioner_is_the_update_denominator():
    c = case("muP", "xent", 3)
    gen = torch.Generator().manual_seed(12)
    grads = [torch.randn(t.shape, generator=gen, dtype=DT) for t in c.w]
    adam = [(torch.randn(t.shape, generator=gen, dtype=DT), torch.rand(t.shape, generator=gen, dtype=DT))
            for t in c.w]
    step, lrs = 5, [torch.full((3, 1, 1), 0.1, dtype=DT)] * len(c.w)
    w = [t.clone() for t in c.w]
    update(w, grads, lrs, adam, step)  # the moments are updated in place to those of this step
    precond = curvature.adam_preconditioner(adam, step)
    for before, after, (m, _), p in zip(c.w, w, adam, precond):
        expected = before - (0.1 / (1 - ADAM_BETAS[0] ** step)) * m / p
        assert torch.allclose(after, expected, rtol=1e-12, atol=1e-15)


def test_adam_preconditioner_is_the_general_update_denominator_with_each_members_betas_and_eps():
    c = case("muP", "xent", 3)
    gen = torch.Generator().manual_seed(13)
    grads = [torch.randn(t.shape, generator=gen, dtype=DT) for t in c.w]
    members = [{"momentum": 0.0, "nesterov": False, "beta1": b1, "beta2": b2, "eps": [e] * len(c.w),
                "weight_decay": [0.0] * len(c.w), "independent": False}
               for b1, b2, e in ((0.9, 0.999, 1e-8), (0.5, 0.9, 1e-3), (0.95, 0.95, 1e-6))]
    opt = optimizer_state("general", "Adam", c.w, members)
    for m, v in opt.state:
        m.copy_(torch.randn(m.shape, generator=gen, dtype=DT))
        v.copy_(torch.rand(v.shape, generator=gen, dtype=DT))
    step, lrs = 5, [torch.full((3, 1, 1), 0.1, dtype=DT)] * len(c.w)
    w = [t.clone() for t in c.w]
    update_general(w, grads, lrs, opt, step)  # the moments are updated in place to those of this step
    precond = curvature.adam_preconditioner(opt.state, step, eps=opt.eps, beta2=opt.beta2)
    c1 = torch.tensor([1 - b1**step for b1 in (0.9, 0.5, 0.95)], dtype=DT).reshape(-1, 1, 1)
    for before, after, (m, _), p in zip(c.w, w, opt.state, precond):
        assert torch.allclose(after, before - (0.1 / c1) * m / p, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("param,name,depth", [("SP", "mse_half_sum", 2), ("muP", "xent", 3), ("muP", "mse_study", 3)])
def test_batch_sharpness_equals_dense(param, name, depth):
    c = case(param, name, depth)
    gen = torch.Generator().manual_seed(13)
    batches = []
    for _ in range(3):
        x = torch.randn(4, D, generator=gen, dtype=DT)
        y = (c.y[:4] if c.loss == "xent" else torch.randn(4, c.y.shape[1], generator=gen, dtype=DT))
        batches.append((x, y, model.forward(c.w0, x, c.a)))

    def loss_of_batch(w, batch):
        x, y, f0 = batch
        return curvature.member_loss(w, x, y, c.a, f0, loss=c.loss, mse_convention=c.convention)

    got = curvature.batch_sharpness(loss_of_batch, c.w, batches)
    ref = []
    for k in range(3):
        ratios = []
        for x, y, _ in batches:
            fn = functools.partial(c.plain_loss, k, x=x, y=y)
            g = torch.autograd.functional.jacobian(fn, c.theta(k))
            h = torch.autograd.functional.hessian(fn, c.theta(k))
            ratios.append(float(g @ h @ g / (g @ g)) if float(g @ g) > 0 else math.nan)
        ref.append(np.nanmean(ratios))  # a batch on which a member is dead (zero gradient) is left out
    assert rel_err(got, ref) < 1e-8


# ------------------------------------------------------------------------------- a known spectrum


def quadratic(spectra: list[torch.Tensor], shape=(4, 50), precond=None):
    """``loss_k = 0.5 theta^T A_k theta`` with ``A_k = P^1/2 Q_k diag(spectra[k]) Q_k^T P^1/2``: ``P^-1 A_k`` has
    the spectrum ``spectra[k]`` (``A_k``'s own when ``P = 1``)."""
    k_members, n = len(spectra), math.prod(shape)
    gen = torch.Generator().manual_seed(21)
    mats = []
    for k, lam in enumerate(spectra):
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
        a = q @ torch.diag(lam) @ q.T
        if precond is not None:
            s = precond[k].reshape(-1).sqrt()
            a = s[:, None] * a * s[None, :]
        mats.append(a)
    mats = torch.stack(mats)
    weights = [torch.randn(k_members, *shape, generator=gen, dtype=DT)]

    def loss_fn(w):
        v = w[0].reshape(k_members, -1)
        return 0.5 * torch.einsum("ki,kij,kj->k", v, mats, v)

    return mats, weights, loss_fn


def test_quadratic_with_a_known_spectrum():
    n = 200
    lam0 = torch.linspace(1.0, 10.0, n, dtype=DT)
    lam1 = torch.cat([torch.full((3,), 20.0, dtype=DT), torch.linspace(2.0, 12.0, n - 3, dtype=DT)])  # repeated top
    mats, w, loss_fn = quadratic([lam0, lam1])
    op = curvature.hessian_matvec(loss_fn, w)
    v = [torch.randn(w[0].shape, generator=torch.Generator().manual_seed(3), dtype=DT)]
    assert rel_err(curvature.hvp(loss_fn, w, v)[0].reshape(2, -1),
                   torch.einsum("kij,kj->ki", mats, v[0].reshape(2, -1))) < 1e-12

    known = torch.stack([lam0.flip(0)[:5], lam1.sort(descending=True).values[:5]])
    assert rel_err(curvature.lanczos_top(op, w, 2, top_k=5, steps=n, generator=gens(1, 2)), known) < 1e-10
    assert rel_err(curvature.sharpness(loss_fn, w, steps=70, generator=gens(2, 2)), known[:, 0]) < 1e-8

    trace = torch.stack([lam0.sum(), lam1.sum()])
    mean, stderr = curvature.hutchinson_trace(op, w, 2, samples=20, generator=gens(3, 2))
    assert bool(((mean - trace).abs() < 3 * stderr).all())

    grid = torch.linspace(-5.0, 35.0, 8001, dtype=DT)
    nodes, weights, density = curvature.slq_density(op, w, 2, probes=10, steps=30, generator=gens(4, 2), grid=grid,
                                                    sigma=0.2)
    assert torch.allclose(torch.trapezoid(density, grid), torch.ones(2, dtype=DT), atol=1e-9)
    assert torch.allclose(curvature.density_on_grid(nodes, weights, grid, 0.2), density)
    for j in (1, 2):
        exact = torch.stack([(lam0**j).mean(), (lam1**j).mean()])
        assert rel_err((weights * nodes**j).sum(1), exact) < 0.05
    assert bool((nodes.amin(1) > torch.stack([lam0.min(), lam1.min()]) - 1e-8).all())  # Ritz values lie inside
    assert bool((nodes.amax(1) < torch.stack([lam0.max(), lam1.max()]) + 1e-8).all())

    # P^-1 A has the spectrum lam for any positive diagonal P
    gen = torch.Generator().manual_seed(5)
    precond = [torch.exp(torch.randn(w[0].shape, generator=gen, dtype=DT))]
    _, w, loss_fn = quadratic([lam0, lam1], precond=precond[0])
    got = curvature.preconditioned_sharpness(loss_fn, w, precond, steps=n, generator=gens(6, 2))
    assert rel_err(got, known[:, 0]) < 1e-10


def test_exhausted_krylov_space_stops_cleanly():
    """Member 0 has rank 3 (Krylov space of dimension 4 from a generic probe), member 1 full rank: Lanczos
    restarts member 0 in the null space and finds every eigenvalue with its multiplicity; SLQ stops it after 4
    steps with exact nodes; member 1's numbers are those it gets alone."""
    n = 20
    lam0 = torch.cat([torch.tensor([5.0, 3.0, -1.0], dtype=DT), torch.zeros(n - 3, dtype=DT)])
    lam1 = torch.linspace(-1.0, 4.0, n, dtype=DT)
    mats, w, loss_fn = quadratic([lam0, lam1], shape=(4, 5))
    op = curvature.hessian_matvec(loss_fn, w)
    top = curvature.lanczos_top(op, w, 2, top_k=n, steps=n, generator=gens(1, 2))
    assert rel_err(top[0], lam0.sort(descending=True).values) < 1e-10
    assert rel_err(top[1], lam1.flip(0)) < 1e-10
    # more eigenvalues asked than the space holds: NaN beyond
    few = curvature.lanczos_top(op, w, 2, top_k=n + 2, steps=n + 5, generator=gens(1, 2))
    assert bool(few[:, n:].isnan().all()) and not bool(few[:, :n].isnan().any())

    nodes, weights = curvature.slq_density(op, w, 2, probes=2, steps=10, generator=gens(2, 2))
    assert torch.allclose(weights.sum(1), torch.ones(2, dtype=DT), atol=1e-12)
    assert not bool(nodes.isnan().any() or weights.isnan().any())
    live = weights[0] > 1e-12
    assert int(live.sum()) == 2 * 4  # per probe: 5, 3, -1 and the null space
    support = torch.tensor([5.0, 3.0, -1.0, 0.0], dtype=DT)
    assert float((nodes[0][live][:, None] - support).abs().amin(1).max()) < 1e-8

    solo_mats, solo_w = mats[1:], [w[0][1:]]
    solo_fn = lambda ws: 0.5 * torch.einsum("ki,kij,kj->k", ws[0].reshape(1, -1), solo_mats,  # noqa: E731
                                            ws[0].reshape(1, -1))
    solo = curvature.slq_density(curvature.hessian_matvec(solo_fn, solo_w), solo_w, 1, probes=2, steps=10,
                                 generator=[torch.Generator().manual_seed(3)])
    assert rel_err(solo[0][0], nodes[1]) < 1e-12 and rel_err(solo[1][0], weights[1]) < 1e-12


# ------------------------------------------------------------------------------- members are independent


@pytest.mark.parametrize("shared_x", [True, False])
def test_fused_equals_solo(shared_x):
    c = case("muP", "xent", 3)
    x = c.x if shared_x else torch.randn(3, B, D, generator=torch.Generator().manual_seed(31), dtype=DT)
    f0 = model.forward(c.w0, x, c.a)
    v = [torch.randn(t.shape, generator=torch.Generator().manual_seed(32), dtype=DT) for t in c.w]
    precond = [torch.exp(torch.randn(t.shape, generator=torch.Generator().manual_seed(33), dtype=DT)) for t in c.w]
    gen = torch.Generator().manual_seed(34)
    batches = [(torch.randn(4, D, generator=gen, dtype=DT), c.y[:4]) for _ in range(2)]

    def everything(members: slice, k: int):
        w = [t[members] for t in c.w]
        xs = x if shared_x else x[members]
        fn = curvature.MemberLoss(xs, c.y, c.a[members], f0[members], loss="xent", mse_convention="half_sum")
        op = curvature.hessian_matvec(fn, w)

        def loss_of_batch(ws, batch):
            xb, yb = batch
            return curvature.member_loss(ws, xb, yb, c.a[members], model.forward([t[members] for t in c.w0], xb,
                                         c.a[members]), loss="xent", mse_convention="half_sum")

        def g(seed):
            return [torch.Generator().manual_seed(seed + i) for i in range(members.start, members.stop)]

        return {
            "loss": fn(w),
            "hvp": torch.cat([t.flatten(1) for t in curvature.hvp(fn, w, [t[members] for t in v])], 1),
            "ggn": torch.cat([t.flatten(1) for t in curvature.hvp(fn, w, [t[members] for t in v], kind="ggn")], 1),
            "top": curvature.lanczos_top(op, w, k, top_k=3, steps=10, generator=g(40)),
            "sharpness": curvature.sharpness(fn, w, steps=8, generator=g(41)),
            "trace": torch.stack(curvature.hutchinson_trace(op, w, k, samples=4, generator=g(42)), 1),
            "slq": torch.cat(curvature.slq_density(op, w, k, probes=2, steps=6, generator=g(43)), 1),
            "precond": curvature.preconditioned_sharpness(fn, w, [p[members] for p in precond], steps=8,
                                                          generator=g(44)),
            "batch": curvature.batch_sharpness(loss_of_batch, w, batches),
        }

    fused = everything(slice(0, 3), 3)
    for k in range(3):
        solo = everything(slice(k, k + 1), 1)
        for key, value in solo.items():
            assert torch.equal(value[0], fused[key][k]), (key, k, rel_err(value[0], fused[key][k]))


def test_no_global_random_state_or_weight_moves():
    c = case("SP", "mse_study", 2)
    w = [t.clone() for t in c.w]
    state = torch.random.get_rng_state()
    curvature.sharpness(c.fn, w, steps=5, generator=torch.Generator().manual_seed(0))
    curvature.hutchinson_trace(curvature.hessian_matvec(c.fn, w), w, 3, samples=2,
                               generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # callers in a training loop: curvature still gets its gradients
        curvature.slq_density(curvature.hessian_matvec(c.fn, w), w, 3, probes=1, steps=4, generator=gens(2))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(w, c.w))
    with pytest.raises(ValueError, match="generator"):
        curvature.sharpness(c.fn, w, steps=5, generator=gens(0, 2))
