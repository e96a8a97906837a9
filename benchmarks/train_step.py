"""Training steps per second of raysweep's loop against a naive reference loop, on CPU, one thread.

    python benchmarks/train_step.py [--seconds 2.0] [--repeats 3]

Model: width 128, L = 3 (two hidden layers), muP SGD, MSE, float32; data: the online polynomial teacher
(``poly_online``, D = 32, blocks of P = 4096). Batch sizes B = 1, 32, 1024.

- raysweep: ``raysweep.train.train`` with one report at the end (the only host sync): data on the device, batches
  as index slices of a block, ``f(x; theta_0)`` once per sample (once per block).
- naive: what a study loop usually looks like: an ``nn.Module``, a frozen copy of it for ``f(x; theta_0)`` run as a
  second forward every step, fresh teacher blocks of P samples drawn with numpy when one is used up (as the study
  did), the batch gathered on the host from the numpy arrays and copied in, ``torch.optim.SGD`` with per-layer
  rates, and ``loss.item()`` every step.

Both loops therefore pay for fresh online data and for f(x; theta_0) once per sample (raysweep once per block,
naive once per step); the difference is the per-step overhead and the host round trips.

Each measurement runs about ``--seconds`` of steps (the step count is calibrated first); the best of ``--repeats``
is kept. Steps/s are given by wall clock and by process CPU time: on a shared, busy machine the CPU-time figure
is the steadier one (one thread, so CPU time is the time the loop actually ran). The last line adds a fused bundle
of 8 members (bundle steps/s times 8 = member-steps/s).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

from raysweep.data import build_task
from raysweep.scaling import learning_rates
from raysweep.train import train, train_bundle

WIDTH, DEPTH, DIM, BLOCK = 128, 3, 32, 4096
BATCH_SIZES = (1, 32, 1024)
EXPERIMENT = {"family": "poly_online", "dim": DIM, "n_train": BLOCK, "degree": 2, "dtype": "float32",
              "data_seed": 0, "divergence_factor": 1e6, "mse_convention": "half_sum", "eval_samples": 256}
POINT = {"eta": 0.05, "width": WIDTH, "gamma": 1.0, "depth": DEPTH, "seed": 0, "parametrization": "muP",
         "optimizer": "SGD", "loss": "mse", "lr_rule": "study"}


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def raysweep_run(task, batch_size: int, steps: int, members: int = 1) -> tuple[float, float]:
    """(wall, cpu) seconds for ``steps`` steps of train() (members > 1: a fused bundle differing in eta)."""
    exp = dict(EXPERIMENT, steps=steps, report_every=steps)
    points = [dict(POINT, batch_size=batch_size, eta=POINT["eta"] * (1 + 0.1 * k)) for k in range(members)]
    start = clock()
    if members == 1:
        train(task, exp, points[0])
    else:
        list(train_bundle(task, exp, points))
    return since(start)


class NaiveMLP(nn.Module):
    """h = relu(h W / sqrt(fan_in)); f = h W_out / (gamma N) (muP), weights N(0, 1)."""

    def __init__(self, widths: list[int], gamma: float, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(a, b, generator=gen)) for a, b in zip(widths[:-1], widths[1:])])
        self.readout = 1.0 / (gamma * widths[-2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for w in self.weights[:-1]:
            h = torch.relu(h @ w / math.sqrt(w.shape[0]))
        return h @ self.weights[-1] * self.readout


def naive_run(teacher: np.ndarray, batch_size: int, steps: int) -> tuple[float, float]:
    """(wall, cpu) seconds for ``steps`` steps of the reference loop; ``teacher`` is the poly teacher's ``w``."""
    widths = [DIM] + [WIDTH] * (DEPTH - 1) + [1]
    net = NaiveMLP(widths, POINT["gamma"], seed=1)
    net0 = NaiveMLP(widths, POINT["gamma"], seed=1).requires_grad_(False)
    rates = learning_rates(eta=POINT["eta"], gamma=POINT["gamma"], width=WIDTH, depth=DEPTH,
                           parametrization=POINT["parametrization"], optimizer="SGD", lr_rule="study")
    opt = torch.optim.SGD([{"params": [w], "lr": lr} for w, lr in zip(net.weights, rates.per_layer)])
    rng = np.random.default_rng(0)
    block = max(BLOCK, batch_size)
    x_np = y_np = None
    pos, losses = block, []
    start = clock()
    for _ in range(steps):
        if pos + batch_size > block:  # a fresh block of P samples when one is used up: y = (x . w)^2
            x_np = rng.standard_normal((block, DIM)).astype(np.float32)
            y_np = ((x_np @ teacher) ** 2).astype(np.float32)[:, None]
            pos = 0
        idx = np.arange(pos, pos + batch_size)
        pos += batch_size
        x, y = torch.from_numpy(x_np[idx]), torch.from_numpy(y_np[idx])  # host-side gather, then copy in
        with torch.no_grad():
            f0 = net0(x)  # f(x; theta_0) recomputed every step
        loss = 0.5 * ((net(x) - f0 - y) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())  # a host sync every step
    return since(start)


def measure(run, target_s: float, repeats: int) -> tuple[float, float]:
    """(wall, cpu) steps/s of ``run(steps)``: the step count calibrated to about ``target_s`` seconds, the best
    repeat kept (for each clock)."""
    steps = 20
    while True:
        elapsed = run(steps)[0]
        if elapsed > 0.2 * target_s or steps >= 10**6:
            break
        steps *= 4
    steps = max(20, int(steps * target_s / max(elapsed, 1e-9)))
    times = [run(steps) for _ in range(repeats)]
    return steps / min(t[0] for t in times), steps / min(t[1] for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="target seconds per measurement (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement, best kept (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = build_task(EXPERIMENT, dtype=torch.float32)
    teacher = task.teacher.numpy().astype(np.float32)

    print(f"CPU, 1 thread, torch {torch.__version__}: width {WIDTH}, L={DEPTH}, poly_online D={DIM} P={BLOCK}, "
          "float32, muP SGD; steps/s by wall clock | by CPU time")
    print(f"{'B':>6}  {'raysweep':>15}  {'naive':>15}  {'ratio':>13}")
    started = time.perf_counter()
    for batch_size in BATCH_SIZES:
        ours = measure(lambda s: raysweep_run(task, batch_size, s), args.seconds, args.repeats)
        naive = measure(lambda s: naive_run(teacher, batch_size, s), args.seconds, args.repeats)
        print(f"{batch_size:>6}  {ours[0]:>6.0f} | {ours[1]:>6.0f}  {naive[0]:>6.0f} | {naive[1]:>6.0f}  "
              f"{ours[0] / naive[0]:>4.2f}x | {ours[1] / naive[1]:>4.2f}x", flush=True)
    bundle = measure(lambda s: raysweep_run(task, 32, s, members=8), args.seconds, args.repeats)
    print(f"bundle of 8 at B=32: {bundle[0]:.0f} | {bundle[1]:.0f} bundle steps/s = {8 * bundle[0]:.0f} | "
          f"{8 * bundle[1]:.0f} member-steps/s")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
