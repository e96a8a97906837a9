"""The memory probe of a model factory: build the user's model and run real steps of the real training step.

:func:`run_steps` builds ``n_members`` members of a configuration (:func:`raysweep.custom.train.build_members`,
fused or not as the trainer decides) and runs ``steps`` (>= 2, so that the optimizer's state exists) of
:meth:`raysweep.custom.train.Members.step` on minibatches of the task's training set (fresh samples of an online
teacher; with ``f(x; theta_0)`` when the model is centred), then, when the experiment turns them on, one measurement
of each instrument a report takes (the curvature of :mod:`raysweep.custom.curvature` on its curvature batch, the
gradient noise scale of :mod:`raysweep.custom.noise`), one data stream per member; or, in ``val`` mode, the
trainer's no-grad eval forward. :func:`peak_bytes` measures it with
autobatch's counters (:mod:`raysweep.autobatch.device`: the CUDA allocator's peak, or the process's resident-set
growth on a CPU) and :func:`raysweep.autobatch.probe.measure` (an out-of-memory error is a result). Learning rates
are tiny: the probe measures memory, not training. Autobatch sizes a factory's sweep with :func:`run_steps`
(:mod:`raysweep.autobatch.factory`: its search, margin, splits and cache). Pure: torch and the user's code; no Ray,
no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROBE_ETA = 1e-9

__all__ = ["PROBE_ETA", "peak_bytes", "run_steps"]


def run_steps(experiment: Mapping[str, Any], task, point: Mapping[str, Any], *, n_members: int, batch_size: int,
              mode: str = "train", steps: int = 2, device="cpu") -> None:
    """``steps`` real training steps (``mode: train``) or eval forwards (``val``) of ``n_members`` members of
    ``point`` at ``batch_size`` on ``device`` (module docstring); raises on out-of-memory like the trainer would."""
    import torch  # the steps

    from raysweep.custom import functional
    from raysweep.custom.train import as_task, build_members
    from raysweep.step import draw_samples  # torch

    task = as_task(task)
    points = [{**point, "batch_size": batch_size, "eta": PROBE_ETA, "seed": k} for k in range(n_members)]
    members = build_members(task, experiment, points, device=device)
    centred = bool(experiment["model"]["centred"])
    init = ({n: p.clone() for n, p in members.params.items()}, {n: b.clone() for n, b in members.buffers.items()}) \
        if centred else None
    fn = functional.loss_fn(members.body, members.forward_mult, point["loss"],
                            experiment.get("mse_convention", "half_sum"), task.n_out)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        if task.online:  # fresh samples of the teacher
            x, y = (t.to(device) for t in draw_samples(task, gen, batch_size))
        else:
            idx = torch.randint(task.n_train, (batch_size,), generator=gen).to(task.x_train.device)
            x, y = task.x_train[idx].to(device), task.y_train[idx].to(device)
        if mode == "val":
            members.outputs(x)
            continue
        f0 = None if init is None else functional.outputs(members.body, members.forward_mult, *init, x,
                                                           members.fused)
        members.step(fn, x, y, f0, True, step, None).sum().item()
    if mode == "train":
        _instruments(experiment, task, members, fn, init, batch_size, steps, device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _instruments(experiment, task, members, fn, init, batch_size: int, step: int, device) -> None:
    """One report's instruments at the members' parameters, as the trainer runs them (their peak is the trial's)."""
    from raysweep.custom.curvature import CurvatureFeed
    from raysweep.custom.noise import NoiseFeed
    from raysweep.instrument_spec import curvature_option, grad_noise_option

    streams = list(range(members.size))  # the probe's members have seeds 0 .. K-1: one stream each
    curvature = curvature_option(experiment.get("curvature"))
    if curvature is not None:
        feed = CurvatureFeed(task, streams, curvature, batch_size, device)
        feed.measure(members, fn, streams, [], step=step, init=init, lr_effective=[PROBE_ETA] * members.size)
    noise = grad_noise_option(experiment.get("grad_noise_scale"))
    if noise is not None:
        feed = NoiseFeed(task, streams, noise["batches"], noise["batch_size"] or batch_size, device)
        feed.estimate(members, fn, streams, step, init)


def peak_bytes(experiment: Mapping[str, Any], task, point: Mapping[str, Any], *, n_members: int, batch_size: int,
               mode: str = "train", steps: int = 2, device="cpu") -> dict:
    """:func:`run_steps` measured: ``{"status": "ok" | "oom", "peak_bytes", ...}`` (autobatch's ``measure``)."""
    import torch  # the device's kind

    from raysweep.autobatch.device import counters_for
    from raysweep.autobatch.probe import measure

    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    return measure(counters_for(kind), lambda: run_steps(experiment, task, point, n_members=n_members,
                                                         batch_size=batch_size, mode=mode, steps=steps,
                                                         device=device))
