"""A fused bundle vs the same trainings unfused: member-steps per second, CPU, one thread, one run.

    python benchmarks/fusion.py [--steps 500] [--repeats 3] [--widths 64,512] [--report-every 500]
                                [--optimizers SGD,Adam,AdamW+cosine]

16 learning rates of one configuration (the members of a fused bundle: an eta column), muP, L = 3 (two hidden
layers), B = 32, online polynomial teacher (``poly_online``, D = 32, blocks of P = 4096), float32, 500 steps, one
report at the end (``--report-every 50`` adds a sweep's evaluations of the 2,048-sample eval set: the same cost per
member on every side, so the ratios drop):

- fused: one ``train_bundle`` of the 16 configurations (stacked weights ``[16, fan_in, fan_out]``);
- unfused: the same 16 configurations one after the other through raysweep's trainer, ``train()`` each (a bundle
  of one: the hand-written backward, what ``fusion: off`` runs);
- plain: the same 16 trainings the way a PyTorch user writes them (``_plain.plain_training``: autograd,
  ``torch.optim``, ``loss.item()`` every step), the loop the fused trainer replaces.

``AdamW+cosine``: AdamW (weight decay 0.1, betas 0.9 / 0.95, eps 1e-8: the general update path, a gradient then a
per-member update) under a cosine schedule with a 10% warmup to 10% of the peak (raysweep's per-member schedule;
``torch.optim.AdamW`` with a ``LambdaLR`` on the plain side).

The 16 etas are a stable band (2^-8 .. 2^-0.5 in half octaves for SGD, 2^-14 .. 2^-6.5 for Adam): no member
diverges, so every side trains every member for all the steps and the ratio measures compute, not early stopping
(the script checks it, and that the three sides end at the same train losses). Member-steps/s = 16 x 500 /
seconds, by wall clock and by process CPU time (on a shared machine the CPU-time figure is the steadier one); the
best of ``--repeats`` is kept for each, the sides interleaved so that they share the machine's moods. Goal: a
fused throughput >= 8x that of 16 unfused trainings at width 64.

Why the ratio to raysweep's own unfused trainer has a ceiling on a CPU: that trainer's step is lean (a few dozen
small ops, 130-160 us at width 64, nearly all of it per-op overhead), and a fused step pays the same ops once plus
the batched matmuls of all 16 members (~17 MFLOP at width 64). With ``u`` the unfused step and ``m`` the fused
matmul time (at least its FLOPs at this core's measured GEMM peak; the unfused step holds at least m / 16 of it),
ratio <= 16 u / (u + 15 m / 16): the script prints that ceiling.
"""

from __future__ import annotations

import argparse
import time

import torch
from _plain import plain_training

from raysweep.data import build_task
from raysweep.train import train, train_bundle

N_MEMBERS, BATCH, DEPTH, DIM = 16, 32, 3, 32
EXPERIMENT = {"family": "poly_online", "dim": DIM, "n_train": 4096, "degree": 2, "dtype": "float32",
              "data_seed": 0, "mse_convention": "half_sum", "divergence_factor": 100.0}
# log2 eta of the first member; members are half an octave apart
ETA_BAND = {"SGD": -8.0, "Adam": -14.0, "AdamW+cosine": -14.0}
# the rows beyond plain SGD and Adam: the optimizer and its settings
VARIANTS = {"AdamW+cosine": {"optimizer": "AdamW", "weight_decay": 0.1, "beta2": 0.95, "schedule": "cosine",
                             "warmup_fraction": 0.1, "final_fraction": 0.1}}


def points(width: int, optimizer: str) -> list[dict]:
    lo = ETA_BAND[optimizer]
    settings = VARIANTS.get(optimizer, {"optimizer": optimizer})
    return [{"batch_size": BATCH, "eta": 2.0 ** (lo + 0.5 * k), "width": width, "gamma": 1.0, "depth": DEPTH,
             "seed": 0, "parametrization": "muP", "loss": "mse", "lr_rule": "study", **settings}
            for k in range(N_MEMBERS)]


def timed(run) -> tuple[float, float, list]:
    wall, cpu = time.perf_counter(), time.process_time()
    reports = run()
    return time.perf_counter() - wall, time.process_time() - cpu, reports


def fused(task, exp, pts) -> list:
    return list(train_bundle(task, exp, pts))


def unfused(task, exp, pts) -> list:
    return [r for p in pts for r in train(task, exp, p)]


def plain(task, exp, pts) -> list:
    return [plain_training(task, p, exp["steps"], exp["report_every"]) for p in pts]


def final_losses(name: str, reports: list) -> list[float]:
    """Each member's train loss over the last report window (raises when a member diverged)."""
    if name == "plain":
        if any(o["status"] != "completed" for o in reports):
            raise SystemExit("plain: a member diverged; pick a stabler eta band")
        return [o["curve"][-1][1] for o in reports]
    diverged = [(r.step, r.diverged) for r in reports if r.diverged]
    if diverged:
        raise SystemExit(f"{name}: members diverged ({diverged}); pick a stabler eta band")
    finals = [r for r in reports if r.finished]
    return [loss for r in finals for loss in r.train_loss]


def flops_per_step(width: int, dim: int) -> float:
    """Matmul FLOPs of one fused step of all members: forward, the hidden layers' input gradients and every
    weight gradient (the scalar readout is a product and a sum, not a matmul)."""
    fans = [(dim, width)] + [(width, width)] * (DEPTH - 2)
    forward = sum(a * b for a, b in fans)
    backward = sum(a * b for a, b in fans[1:]) + forward  # input gradients of layers 2.., weight gradients of all
    return 2.0 * N_MEMBERS * BATCH * (forward + backward)


def gemm_peak() -> float:
    """FLOP/s of a 1024^3 float32 matmul on one thread, the best of 10: this core's practical peak."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 1024**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side, best kept (default 3)")
    parser.add_argument("--widths", default="64,512")
    parser.add_argument("--optimizers", default="SGD,Adam,AdamW+cosine")
    parser.add_argument("--report-every", type=int, help="steps between reports (default: one report at the end)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    exp = dict(EXPERIMENT, steps=args.steps, report_every=args.report_every or args.steps)
    task = build_task(exp, dtype=torch.float32)
    member_steps = N_MEMBERS * args.steps
    peak = gemm_peak()
    print(f"CPU, 1 thread, torch {torch.__version__}: {N_MEMBERS} eta members, muP L={DEPTH}, B={BATCH}, "
          f"{args.steps} steps, report every {exp['report_every']}, poly_online D={DIM}, float32; "
          f"member-steps/s by wall clock | by CPU time (best of {args.repeats}); GEMM peak {peak / 1e9:.0f} GFLOP/s")
    print(f"{'width':>5} {'opt':>12}  {'fused':>15}  {'unfused':>13}  {'plain':>13}  {'fused/unfused':>15}  "
          f"{'fused/plain':>15}  {'max ratio':>9}  {'loss diff':>9}")
    sides = {"fused": fused, "unfused": unfused, "plain": plain}
    for optimizer in args.optimizers.split(","):
        for width in (int(w) for w in args.widths.split(",")):
            pts = points(width, optimizer)
            fused(task, dict(exp, steps=20), pts)  # warm-up: allocator, kernels
            times: dict[str, list] = {name: [] for name in sides}
            finals: dict[str, list[float]] = {}
            for _ in range(args.repeats):
                for name, run in sides.items():
                    wall, cpu, reports = timed(lambda run=run: run(task, exp, pts))
                    finals[name] = final_losses(name, reports)
                    times[name].append((wall, cpu))
            rate = {name: [member_steps / min(t[i] for t in times[name]) for i in (0, 1)] for name in sides}
            f, u, p = rate["fused"], rate["unfused"], rate["plain"]
            # ceiling of fused/unfused: the fused step pays the unfused step's ops (u, less its own matmuls, at
            # least m / 16) once, plus the matmuls of all members (m, at the GEMM peak): 16 u / (u + 15 m / 16)
            u_step, m_step = 1.0 / u[1], flops_per_step(width, DIM) / peak
            ceiling = N_MEMBERS * u_step / (u_step + (N_MEMBERS - 1) / N_MEMBERS * m_step)
            diff = max(abs(a - b) / abs(b) for other in ("unfused", "plain")
                       for a, b in zip(finals[other], finals["fused"]))
            print(f"{width:>5} {optimizer:>12}  {f[0]:>6.0f} | {f[1]:>6.0f}  {u[0]:>5.0f} | {u[1]:>5.0f}  "
                  f"{p[0]:>5.0f} | {p[1]:>5.0f}  {f[0] / u[0]:>5.2f}x | {f[1] / u[1]:>5.2f}x  "
                  f"{f[0] / p[0]:>5.2f}x | {f[1] / p[1]:>5.2f}x  {ceiling:>8.2f}x  {diff:>9.1e}", flush=True)
    print("goal: fused >= 8x the 16 unfused trainings at width 64. max ratio: the fused/unfused ceiling "
          "16 u / (u + 15 m / 16) (u: the unfused step by CPU time, m: the fused matmuls at the GEMM peak). "
          "loss diff: the largest relative difference of a member's final train loss, unfused or plain vs fused")


if __name__ == "__main__":
    main()
