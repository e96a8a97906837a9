"""The gradient noise scale of a model factory's bundle: :mod:`raysweep.noise`'s two-batch estimator (McCandlish et
al. 2018, App. A.1) with the general path's own gradients.

At a report, each data stream (distinct seed) draws ``m`` chunks of ``b`` samples (fresh ones of an online teacher,
or training indices uniformly with replacement) from a generator of its own (:func:`raysweep.seeds.noise_seed`: the training stream never moves for it);
every member's gradient of each chunk is the trainer's (:func:`raysweep.custom.functional.grads_fused` or, for a
model that cannot be vmapped, ``grads_unfused``), of the loss the trainer optimizes (centred ``f - f0`` when the
model is), with respect to every parameter as stored. ``|G_b|^2`` is the mean over chunks of each chunk gradient's
squared norm, ``|G_B|^2`` the squared norm of their mean (the gradient of the whole ``B = m b`` batch), and
:func:`raysweep.noise.two_batch` turns them into ``grad_trace_cov`` and ``grad_sq``.

Nothing here writes a parameter, a buffer or an optimizer tensor: the chunk forwards run on copies of the buffers
(batch norm in training mode updates its running statistics), and an unfused model's random numbers (dropout) come
from seeds of the member, the report and the chunk on a forked generator. With it on, every training number is what
it is off. Pure: torch; no Ray, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from raysweep.custom import functional
from raysweep.noise import noise_scale, two_batch
from raysweep.seeds import derive_seed, noise_seed
from raysweep.step import draw_samples

__all__ = ["NoiseFeed"]


class NoiseFeed:
    """The noise batches of a factory bundle (one generator per stream) and the estimate (:meth:`estimate`)."""

    def __init__(self, task, seeds: Sequence[int], batches: int, size: int, device):
        self.task, self.batches, self.size, self.device = task, int(batches), int(size), device
        self.gens = [torch.Generator().manual_seed(noise_seed(s)) for s in seeds]

    def estimate(self, members, fn, stream: Sequence[int], step: int, init=None) -> dict:
        """Each member's ``grad_sq``, ``grad_trace_cov`` and ``grad_noise_scale`` (lists of floats, the fields of
        :class:`raysweep.train.Report`) at the members' current parameters. ``stream``: each member's stream;
        ``init``: ``(params, buffers)`` at theta_0 when the model is centred, else None."""
        n = self.batches * self.size
        streams = sorted(set(stream))
        shared = len(streams) == 1
        if self.task.online:  # fresh samples of the teacher
            drawn = {s: draw_samples(self.task, self.gens[s], n) for s in streams}
            x, y = drawn[streams[0]] if shared else (torch.stack([drawn[s][0] for s in stream]),
                                                     torch.stack([drawn[s][1] for s in stream]))
        else:  # training indices, uniformly with replacement
            drawn = {s: torch.randint(self.task.n_train, (n,), generator=self.gens[s]).to(self.device)
                     for s in streams}
            idx = drawn[streams[0]] if shared else torch.stack([drawn[s] for s in stream])
            x, y = self.task.x_train[idx], self.task.y_train[idx]
        total: dict[str, torch.Tensor] = {}
        small = None
        for c, lo in enumerate(range(0, n, self.size)):
            xc = x[lo:lo + self.size] if shared else x[:, lo:lo + self.size]
            yc = y[lo:lo + self.size] if shared else y[:, lo:lo + self.size]
            seeds = None if members.fused else [derive_seed(s, f"noise:{step}:{c}") for s in members.seeds]
            f0 = None
            if init is not None:  # the centred model's f(x; theta_0) on this chunk, the chunk's random numbers
                f0 = functional.outputs(members.body, members.forward_mult, init[0],
                                        {k: b.clone() for k, b in init[1].items()}, xc, members.fused, shared, seeds)
            buffers = {k: b.clone() for k, b in members.buffers.items()}
            if members.fused:
                grads, _ = functional.grads_fused(fn, members.params, buffers, xc, yc, f0, shared)
            else:
                grads, _ = functional.grads_unfused(fn, members.params, buffers, xc, yc, f0, shared, seeds)
            sq = _sq_norm(grads)
            small = sq if small is None else small.add_(sq)
            for k, g in grads.items():
                total[k] = g if k not in total else total[k].add_(g)
        m = self.batches
        trace_cov, grad_sq = two_batch(small / m, _sq_norm(total) / (m * m), self.size, n)
        trace_cov, grad_sq = trace_cov.cpu().tolist(), grad_sq.cpu().tolist()
        return {"grad_sq": grad_sq, "grad_trace_cov": trace_cov,
                "grad_noise_scale": [noise_scale(tr, gs) for tr, gs in zip(trace_cov, grad_sq)]}

    def states(self) -> list[torch.Tensor]:
        """The generators' states, one per stream (a checkpoint keeps them)."""
        return [g.get_state() for g in self.gens]

    def restore(self, states: Sequence[torch.Tensor]) -> None:
        for g, state in zip(self.gens, states):
            g.set_state(state)


def _sq_norm(grads) -> torch.Tensor:
    """``sum_p |g_p|^2`` per member over every parameter, in float64, ``[K]``."""
    out = None
    for g in grads.values():
        flat = g.detach().flatten(1).to(torch.float64)
        sq = torch.linalg.vecdot(flat, flat)
        out = sq if out is None else out.add_(sq)
    return out
