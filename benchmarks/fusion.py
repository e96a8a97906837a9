"""Fused bundle vs unfused trials: member-steps per second of raysweep's trainer, CPU, one thread, one run.

    python benchmarks/fusion.py [--steps 500] [--repeats 3] [--widths 64,512] [--report-every 500]

16 learning rates of one configuration (the members of a fused bundle: an eta column), muP, L = 3 (two hidden
layers), B = 32, online polynomial teacher (``poly_online``, D = 32, blocks of P = 4096), float32, 500 steps, one
report at the end (``--report-every 50`` adds a sweep's evaluations of the 2,048-sample eval set: the same cost per
member on both sides, so the ratio drops):

- fused: one ``train_bundle`` of the 16 configurations (stacked weights ``[16, fan_in, fan_out]``);
- unfused: the same 16 configurations one after the other, ``train()`` each (a bundle of one).

The 16 etas are a stable band (2^-8 .. 2^-0.5 in half octaves for SGD, 2^-14 .. 2^-6.5 for Adam): no member
diverges, so both sides train every member for all the steps and the ratio measures compute, not early stopping
(the script checks it). Member-steps/s = 16 x 500 / seconds, by wall clock and by process CPU time (on a shared
machine the CPU-time figure is the steadier one); the best of ``--repeats`` is kept for each, the two sides
interleaved so that they share the machine's moods. Goal: a fused throughput >= 8x the unfused one at width 64.
"""

from __future__ import annotations

import argparse
import time

import torch

from raysweep.data import build_task
from raysweep.train import train, train_bundle

N_MEMBERS, BATCH, DEPTH, DIM = 16, 32, 3, 32
EXPERIMENT = {"family": "poly_online", "dim": DIM, "n_train": 4096, "degree": 2, "dtype": "float32",
              "data_seed": 0, "mse_convention": "half_sum", "divergence_factor": 100.0}
# log2 eta of the first member; members are half an octave apart
ETA_BAND = {"SGD": -8.0, "Adam": -14.0}


def points(width: int, optimizer: str) -> list[dict]:
    lo = ETA_BAND[optimizer]
    return [{"batch_size": BATCH, "eta": 2.0 ** (lo + 0.5 * k), "width": width, "gamma": 1.0, "depth": DEPTH,
             "seed": 0, "parametrization": "muP", "optimizer": optimizer, "loss": "mse", "lr_rule": "study"}
            for k in range(N_MEMBERS)]


def timed(run) -> tuple[float, float, list]:
    wall, cpu = time.perf_counter(), time.process_time()
    reports = run()
    return time.perf_counter() - wall, time.process_time() - cpu, reports


def fused(task, exp, pts) -> list:
    return list(train_bundle(task, exp, pts))


def unfused(task, exp, pts) -> list:
    return [r for p in pts for r in train(task, exp, p)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side, best kept (default 3)")
    parser.add_argument("--widths", default="64,512")
    parser.add_argument("--optimizers", default="SGD,Adam")
    parser.add_argument("--report-every", type=int, help="steps between reports (default: one report at the end)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    exp = dict(EXPERIMENT, steps=args.steps, report_every=args.report_every or args.steps)
    task = build_task(exp, dtype=torch.float32)
    member_steps = N_MEMBERS * args.steps
    print(f"CPU, 1 thread, torch {torch.__version__}: {N_MEMBERS} eta members, muP L={DEPTH}, B={BATCH}, "
          f"{args.steps} steps, report every {exp['report_every']}, poly_online D={DIM}, float32; "
          f"member-steps/s by wall clock | by CPU time (best of {args.repeats})")
    print(f"{'width':>5} {'opt':>4}  {'fused':>17}  {'unfused':>15}  {'ratio':>15}")
    for optimizer in args.optimizers.split(","):
        for width in (int(w) for w in args.widths.split(",")):
            pts = points(width, optimizer)
            fused(task, dict(exp, steps=20), pts)  # warm-up: allocator, kernels
            times: dict[str, list] = {"fused": [], "unfused": []}
            for _ in range(args.repeats):
                for name, run in (("fused", fused), ("unfused", unfused)):
                    wall, cpu, reports = timed(lambda: run(task, exp, pts))
                    diverged = [(r.step, r.diverged) for r in reports if r.diverged]
                    if diverged:
                        raise SystemExit(f"{name} width {width} {optimizer}: members diverged ({diverged}); "
                                         "pick a stabler eta band")
                    times[name].append((wall, cpu))
            f = [member_steps / min(t[i] for t in times["fused"]) for i in (0, 1)]
            u = [member_steps / min(t[i] for t in times["unfused"]) for i in (0, 1)]
            print(f"{width:>5} {optimizer:>4}  {f[0]:>7.0f} | {f[1]:>7.0f}  {u[0]:>6.0f} | {u[1]:>6.0f}  "
                  f"{f[0] / u[0]:>5.2f}x | {f[1] / u[1]:>5.2f}x", flush=True)
    print("goal: fused >= 8x unfused at width 64")


if __name__ == "__main__":
    main()
