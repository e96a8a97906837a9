"""What dead-network detection costs: the report's eval pass with and without it, and a whole training run.

    python benchmarks/dead_detection.py [--repeats 5]

Detection reads the hidden activations of the eval forward the trainer runs at every report (a max over samples per
unit, an OR over pieces) and judges a few numbers per member on the host. Measured here, one thread, by process CPU
time (the steadier clock on a shared machine), best of ``--repeats``:

- the eval forward of K members on the eval set with detection (``forward_chunked(..., active=units)`` and the
  active count) against without it, per shape: digits (n = 360, D = 64, 10 classes), width 64 / 128 / 512, L = 3;
- a whole digits run (muP SGD, B = 32, 5 epochs, 30 members, a report every 50 steps) with detection against the
  same run with detection removed (the eval forward called without ``active``, as ``tests/test_train_dead.py``
  does to show that no training number moves).
"""

from __future__ import annotations

import argparse
import time

import torch

from raysweep import model
from raysweep import train as T
from raysweep.data import build_task

EXPERIMENT = {"family": "digits", "epochs": 5, "report_every": 50, "dtype": "float32", "data_seed": 0}


def cpu_time(fn, repeats: int, inner: int = 20) -> float:
    """Best over ``repeats`` of the mean process CPU time of ``inner`` calls of ``fn``."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(inner):
            fn()
        best = min(best, (time.process_time() - start) / inner)
    return best


def eval_pass(task, members: int, width: int, repeats: int) -> tuple[float, float]:
    """(without, with) CPU seconds of one report's eval forward."""
    ws = model.init_weights(model.layer_widths(task.dim, width, 3, task.n_out), list(range(members)))
    x = task.x_eval

    def plain():
        T.forward_chunked(ws, x)

    def detected():
        units = torch.zeros(members, 2, width, dtype=torch.bool)
        T.forward_chunked(ws, x, active=units)
        units.sum(2).amin(1).numpy()

    return cpu_time(plain, repeats), cpu_time(detected, repeats)


def whole_run(task, repeats: int) -> tuple[float, float]:
    """(without, with) CPU seconds of a 30-member digits run."""
    points = [{"batch_size": 32, "eta": 2.0**k, "width": 128, "gamma": 1.0, "depth": 3, "seed": s,
               "parametrization": "muP", "optimizer": "SGD", "loss": "xent", "lr_rule": "study"}
              for k in range(-8, 7) for s in range(2)]

    def run():
        for _ in T.train_bundle(task, EXPERIMENT, points):
            pass

    with_it = cpu_time(run, repeats, inner=1)
    real = T.forward_chunked
    T.forward_chunked = lambda weights, x, active=None: real(weights, x)
    try:
        without = cpu_time(run, repeats, inner=1)
    finally:
        T.forward_chunked = real
    return without, with_it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = build_task(EXPERIMENT)
    print("eval pass per report (CPU ms): members x width: without | with detection | ratio")
    for members, width in ((8, 64), (30, 128), (8, 512)):
        a, b = eval_pass(task, members, width, args.repeats)
        print(f"  {members:3d} x {width:4d}: {1e3 * a:8.3f} | {1e3 * b:8.3f} | {b / a:.3f}")
    a, b = whole_run(task, max(1, args.repeats // 2))
    print(f"whole digits run, 30 members, 220 steps, 5 reports (CPU s): without {a:.3f} | with {b:.3f} | "
          f"ratio {b / a:.3f}")


if __name__ == "__main__":
    main()
