"""A model factory's fused bundle vs the same trainings unfused vs plain PyTorch: member-steps per second, CPU, one
thread, one run.

    python benchmarks/custom_fusion.py [--steps 60] [--repeats 2] [--width 16] [--batch-size 32] [--dtype float32]

The shipped CNN (``raysweep.examples.cnn``: two 3 x 3 convolutions of ``width`` channels, a mean over the pixels, a
linear readout) on the digits as 8 x 8 images, 16 learning rates of one configuration (SGD, SP, eta 2^-6 .. 2^1.5
in half octaves: none diverges), one batch size, ``--steps`` steps, one report at the end:

- fused: one ``raysweep.custom.train.train_bundle`` of the 16 configurations: one ``vmap(grad(functional_call))``
  step over the stacked parameters;
- unfused: the same bundle with ``fused=False``: one member after another inside each step (what a model that
  cannot be vmapped, e.g. with batch norm in training mode, runs);
- plain: the 16 trainings the way a PyTorch user writes them, one after another: the factory's module,
  ``loss.backward()``, ``torch.optim.SGD``, ``loss.item()`` every step.

Member-steps/s = 16 x steps / seconds (wall clock and process CPU time; the best of ``--repeats``, the sides
interleaved). The fused and unfused sides compute the same trainings with different kernels (vmap turns the
convolutions into grouped ones): their final train losses agree to float32 rounding, amplified by the largest
etas' unstable training (the largest relative gap is printed).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from raysweep.custom.factory import build_model
from raysweep.custom.train import train_bundle
from raysweep.data import build_task
from raysweep.seeds import data_seed
from raysweep.space import parse_spec


def plain(exp, task, point, steps: int) -> float:
    model = build_model(exp["model"], width=point["width"], depth=point["depth"], gamma=point["gamma"],
                        parametrization="SP", input_shape=task.input_shape, n_out=task.n_out, seed=point["seed"],
                        dtype=task.x_train.dtype)
    opt = torch.optim.SGD(model.parameters(), lr=point["eta"])
    gen = torch.Generator().manual_seed(data_seed(point["seed"]))
    b, n, pos, loss_value = point["batch_size"], task.n_train, task.n_train, 0.0
    for _ in range(steps):
        if pos + b > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + b]
        pos += b
        opt.zero_grad()
        loss = F.cross_entropy(model(task.x_train[idx]), task.y_train[idx])
        loss.backward()
        opt.step()
        loss_value = loss.item()
    return loss_value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = parse_spec({"name": "bench", "experiment": {
        "family": "custom", "factory": "raysweep.examples.cnn:digits_images", "steps": args.steps,
        "report_every": args.steps, "dtype": args.dtype, "model": {"factory": "raysweep.examples.cnn:build"}},
        "space": {"batch_size": args.batch_size, "eta": [2.0 ** (k / 2) for k in range(-12, 4)], "width": args.width,
                  "depth": 3, "parametrization": "SP", "loss": "xent"}})
    exp, points = spec.experiment.as_dict(), spec.points()
    assert len(points) == 16
    task = build_task(exp, dtype=getattr(torch, args.dtype))
    best: dict[str, tuple[float, float]] = {}
    finals: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for side in ("fused", "unfused", "plain"):
            wall, cpu = time.perf_counter(), time.process_time()
            if side == "plain":
                finals[side] = [plain(exp, task, p, args.steps) for p in points]
            else:
                last = list(train_bundle(task, exp, points, fused=side == "fused"))[-1]
                assert not any(r.diverged for r in [last]) and len(last.members) == 16
                finals[side] = last.train_loss
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rate = 16 * args.steps
            best[side] = (max(best.get(side, (0, 0))[0], rate / wall), max(best.get(side, (0, 0))[1], rate / cpu))
    print(f"CNN width {args.width}, B = {args.batch_size}, {args.dtype}, 16 etas, {args.steps} steps, one thread")
    print("side      member-steps/s (wall)  (cpu)    vs plain (wall, cpu)")
    for side, (w, c) in best.items():
        print(f"{side:<9} {w:>12.0f} {c:>14.0f}    {w / best['plain'][0]:5.2f}x {c / best['plain'][1]:5.2f}x")
    fused_vs_unfused = best["fused"][1] / best["unfused"][1]
    print(f"fused / unfused (cpu): {fused_vs_unfused:.2f}x")
    gaps = [abs(a - b) / max(1.0, abs(b)) for a, b in zip(finals["fused"], finals["unfused"])]
    print("fused vs unfused final train loss, largest relative gap:", max(gaps), finals["fused"])


if __name__ == "__main__":
    main()
