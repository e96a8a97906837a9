"""The coordinate check of a model factory (``python -m raysweep.coordcheck SPACE.yaml`` on a spec whose
``experiment.model`` is a factory): microsoft/mup's diagnostic with raysweep's own trainer step.

For each combination of the spec (:func:`raysweep.coordcheck.run_factory_spec`), at every width and seed: the
factory's model (seeded), its SP or muP multipliers (:mod:`raysweep.custom.mup`), ``steps`` steps of the general
path's update (:class:`raysweep.custom.train.Members`, one member) on one fixed batch; then for every module with
parameters (and the model's output, ``out``) the size of its output's change ``mean |y_t - y_0|`` on that batch,
fitted as ``N^slope``; and per layer type (``[Linear]``, ``[LayerNorm]``, ``[Conv2d]``, ...: the module's class, the
output as ``[output]``) the geometric mean of its modules' sizes, whose slope is the mean of theirs. Under muP every
slope should be near 0 (|slope| < 0.1); under SP (NTK) with SGD the hidden ones near -1/2, with Adam positive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from raysweep.schedules import is_constant


def module_outputs(members, x) -> dict[str, object]:
    """The output of every module with parameters of ``members``' first member on ``x``, and the model's (``out``),
    from one forward (forward hooks on the functional body)."""
    import torch  # the forward

    from raysweep.custom import functional  # torch.func

    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in members.body.named_modules():
        if name and any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: seen.__setitem__(name, out.detach().clone())))
    try:
        with torch.no_grad():
            f = functional.forward_fn(members.body, members.forward_mult)
            out = f({n: p[0] for n, p in members.params.items()}, {n: b[0] for n, b in members.buffers.items()}, x)
    finally:
        for handle in handles:
            handle.remove()
    seen["out"] = out
    return seen


def coord_check(experiment: Mapping, task, config: Mapping, x, y, *, widths: Sequence[int], steps: int = 5,
                seeds: Sequence[int] = (0, 1, 2), total_steps: int | None = None
                ) -> tuple[tuple[str, ...], np.ndarray]:
    """Train ``config`` (a point of the spec) ``steps`` steps on the batch ``(x, y)`` at every width and seed, its
    rates times its schedule's multipliers in a run of ``total_steps`` (default ``steps``); returns the module names
    (and layer types) and their mean change at every width, ``[widths, layers]`` (the module docstring);
    :func:`raysweep.coordcheck.run_factory_spec` fits the slopes."""
    from raysweep.custom import functional  # torch.func
    from raysweep.custom.train import build_members  # torch
    from raysweep.step import ScheduleFeed  # torch

    sizes: dict[str, np.ndarray] = {}
    kinds_of: dict[str, str] = {}
    for i, width in enumerate(widths):
        for seed in seeds:
            point = {**config, "width": int(width), "seed": seed}
            members = build_members(task, experiment, [point], fused=False)
            kinds_of = {n: type(m).__name__ for n, m in members.body.named_modules() if n}
            before = module_outputs(members, x)
            fn = functional.loss_fn(members.body, members.forward_mult, point["loss"],
                                    experiment.get("mse_convention", "half_sum"), task.n_out)
            dtype = next(iter(members.params.values())).dtype
            sched = None if is_constant(point) else ScheduleFeed([point], total_steps or steps, dtype, x.device)
            for step in range(1, steps + 1):
                members.step(fn, x, y, None, True, step, None if sched is None else sched.at(step))
            after = module_outputs(members, x)
            for name in before:
                change = float((after[name] - before[name]).abs().mean())
                sizes.setdefault(name, np.zeros(len(widths)))[i] += change / len(seeds)
    # per layer type (the module's class; the output on its own): the geometric mean of its modules' sizes, whose
    # slope is the mean of their slopes
    kinds: dict[str, list[str]] = {}
    for name in sizes:
        kinds.setdefault(kinds_of.get(name, "output"), []).append(name)
    for kind, names in kinds.items():
        sizes[f"[{kind}]"] = np.exp(np.mean([np.log(sizes[n]) for n in names], 0))
    layers = tuple(sizes)
    return layers, np.stack([sizes[name] for name in layers], 1)
