"""The gradient noise scale, McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", App. A.1.

The simple noise scale is ``B_simple = tr(Sigma) / |G|^2``: ``G`` is the true gradient of the mean loss and
``Sigma`` the covariance of the per-example gradients. A minibatch gradient ``G_B`` of ``B`` i.i.d. samples has
``E |G_B|^2 = |G|^2 + tr(Sigma) / B``, so squared norms measured at two batch sizes ``b < B`` (same parameters)
give unbiased estimates of both pieces (:func:`two_batch`)::

    |G|^2     ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
    tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

:func:`chunk_sq_norms` measures them for a stacked bundle (weights ``[K, fan_in, fan_out]``) on a noise batch of
``m`` chunks of ``b`` samples: ``|G_b|^2`` is the mean over chunks of each chunk gradient's squared norm, ``|G_B|^2``
the squared norm of their mean, the gradient of the whole ``B = m b`` batch. Gradients are taken with respect to
every weight matrix as stored (all layers, concatenated), of the loss the trainer optimizes (centred output
``f - f0``, the MSE convention or cross-entropy), by :func:`raysweep.model.backward`. The ratio of the two noisy
estimates is biased: average ``tr(Sigma)`` and ``|G|^2`` over reports (or steps) before dividing, as McCandlish
et al. do.

Pure: torch and raysweep's model and step code (:mod:`raysweep.step`); no Ray, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from raysweep import model
from raysweep.seeds import noise_seed
from raysweep.step import draw_samples, forward_chunked, loss_and_dfa, targets

DEFAULT_BATCHES = 8  # chunks per noise batch, m


def two_batch(small_sq, big_sq, b_small, b_big):
    """``(grad_trace_cov, grad_sq)``: the unbiased estimates of ``tr(Sigma)`` and ``|G|^2`` from the squared
    gradient norms ``small_sq = |G_{b_small}|^2`` and ``big_sq = |G_{b_big}|^2`` (floats, arrays or tensors)::

        grad_sq        = (b_big big_sq - b_small small_sq) / (b_big - b_small)
        grad_trace_cov = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"two_batch needs 0 < b_small < b_big, got b_small={b_small}, b_big={b_big}")
    grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    grad_trace_cov = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return grad_trace_cov, grad_sq


def noise_scale(grad_trace_cov: float, grad_sq: float) -> float:
    """``grad_noise_scale``, ``B_simple = tr(Sigma) / |G|^2`` of one pair of estimates; NaN when ``grad_sq`` is 0.
    Either estimate may come out negative on a small noise batch, and so may the ratio: average the pieces first."""
    return grad_trace_cov / grad_sq if grad_sq != 0 and math.isfinite(grad_sq) else math.nan


def chunk_sq_norms(
    weights: Sequence[torch.Tensor],
    chunks: Iterable[tuple],
    out_mult: torch.Tensor,
    loss_coef: float,
    dfa_coef: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(small_sq, big_sq)``, float64 ``[K]``: each member's mean over chunks of ``|G_chunk|^2`` and ``|mean of
    the chunk gradients|^2``, the gradient norms at batch sizes ``b`` and ``m b``.

    ``chunks`` are ``m`` minibatches ``(x, t, labels)`` of ``b`` samples each, in the form the trainer's feed gives
    them (``t = a f0 + y`` for MSE, ``t = a f0`` and the labels for cross-entropy). ``loss_coef`` and ``dfa_coef``
    (``a * c_df``, ``[K, 1, 1]``) come from :func:`raysweep.step.loss_coefficients` at the chunk size ``b``: the
    loss is a mean over the chunk, so the mean of the chunk gradients is the gradient of the whole batch.
    ``weights`` are only read.
    """
    small = None
    total: list[torch.Tensor] = []
    m = 0
    for x, t, labels in chunks:
        raw, acts = model.forward_cached(weights, x)
        _, dfa = loss_and_dfa(raw, out_mult, t, labels, loss_coef, dfa_coef)
        grads = model.backward(weights, acts, dfa)
        sq = _sq_norm(grads)
        small = sq if small is None else small.add_(sq)
        total = grads if not total else [acc.add_(g) for acc, g in zip(total, grads)]
        m += 1
    if m < 2:
        raise ValueError(f"chunk_sq_norms needs at least 2 chunks, got {m}")
    return small / m, _sq_norm(total) / (m * m)


def _sq_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_l |g_l|^2`` per member, in float64, ``[K]``."""
    out = None
    for g in grads:
        flat = g.flatten(1).to(torch.float64)
        sq = torch.linalg.vecdot(flat, flat)
        out = sq if out is None else out.add_(sq)
    return out


class NoiseFeed:
    """The noise batches of the gradient-noise-scale metric, and the metric itself (:meth:`estimate`).

    One generator per stream (distinct seed), seeded with :func:`noise_seed`: the training data stream never moves
    for it. Each report draws ``batches * size`` samples per stream still alive: fresh samples of an online
    teacher, or training indices drawn uniformly with replacement from a fixed data set (i.i.d. draws from the
    training distribution, as the estimator assumes; any number of them). Members that share a seed share the
    batch; ``f(x; theta_0)`` comes from the stream's initial weights ``init``, times each member's readout
    multiplier, as in the trainer's feed.
    """

    def __init__(self, task, seeds: list[int], init, batches: int, size: int, loss: str, dtype, device):
        self.task, self.init, self.batches, self.size = task, init, batches, size
        self.loss, self.dtype, self.device = loss, dtype, device
        self.gens = [torch.Generator().manual_seed(noise_seed(s)) for s in seeds]
        if not task.online:
            self.x_all = task.x_train.to(device=device, dtype=dtype)
            self.y_all = targets(task.y_train.to(device), loss, task.n_out, dtype)

    def _draw(self, streams: list[int]):
        """``(x, y, f0)`` of ``batches * size`` fresh samples of each stream of ``streams``: ``x`` ``[n, D]`` for one
        stream, else ``[S, n, D]``; ``f0`` ``[S, n, out]`` the raw output of the streams' initial weights."""
        n, task, xs, ys = self.batches * self.size, self.task, [], []
        for s in streams:
            if task.online:
                x, y = draw_samples(task, self.gens[s], n)
                xs.append(x.to(self.dtype))
                ys.append(targets(y, self.loss, task.n_out, self.dtype))
            else:
                idx = torch.randint(task.n_train, (n,), generator=self.gens[s]).to(self.device)
                xs.append(self.x_all[idx])
                ys.append(self.y_all[idx])
        x, y = (xs[0], ys[0]) if len(streams) == 1 else (torch.stack(xs), torch.stack(ys))
        return x, y, forward_chunked([w[streams] for w in self.init], x)

    def estimate(self, weights, stream: torch.Tensor, out_mult, loss_coef: float, dfa_coef, groups) -> dict:
        """Each member's ``grad_sq``, ``grad_trace_cov`` and ``grad_noise_scale`` (lists of floats, the fields of
        :class:`raysweep.train.Report`) at ``weights``; ``stream`` maps the members to their streams. Gradients are
        computed per group of members, like a step, and only read the weights."""
        member_stream = stream.tolist()
        streams = sorted(set(member_stream))
        x, y, f0 = self._draw(streams)
        pos = torch.tensor([streams.index(s) for s in member_stream], device=stream.device)
        xent = self.loss == "xent"

        def chunks(g: slice):
            for lo in range(0, self.batches * self.size, self.size):
                hi = lo + self.size
                t = f0[:, lo:hi][pos[g]] * out_mult[g]
                if x.dim() == 2:
                    xc, yc = x[lo:hi], y[lo:hi]
                else:
                    xc, yc = x[:, lo:hi][pos[g]], y[:, lo:hi][pos[g]]
                yield (xc, t, yc) if xent else (xc, t.add_(yc), None)

        small, big = [], []
        with torch.no_grad():
            for g in groups:
                s, b = chunk_sq_norms([w[g] for w in weights], chunks(g), out_mult[g], loss_coef, dfa_coef[g])
                small.append(s)
                big.append(b)
        trace_cov, grad_sq = two_batch(torch.cat(small), torch.cat(big), self.size, self.batches * self.size)
        trace_cov, grad_sq = trace_cov.cpu().tolist(), grad_sq.cpu().tolist()
        return {"grad_sq": grad_sq, "grad_trace_cov": trace_cov,
                "grad_noise_scale": [noise_scale(tr, gs) for tr, gs in zip(trace_cov, grad_sq)]}
