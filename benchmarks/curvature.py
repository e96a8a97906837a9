"""The cost of curvature tracking (``experiment.curvature``): a fused bundle trained with it off and on, in one run.

    python benchmarks/curvature.py [--widths 64,256] [--members 16] [--steps 500] [--report-every 50]
                                   [--batch 1024] [--lanczos 20] [--device cpu|cuda] [--repeats 2]

Model: muP SGD, L = 3, MSE, float32, on the online polynomial teacher (D = 32); B = 32. "on" measures the top
Hessian eigenvalue (``kinds: [sharpness]``, ``top_k: 1``) at every report on a curvature batch of ``--batch``
samples by ``--lanczos`` Lanczos steps; "off" is the same training without it (every training number is the same:
the script checks it). Prints, per width, the wall time of each (best of ``--repeats``), their ratio, and on CUDA
the peak allocated memory of each beside what autobatch's sizing adds for it
(:func:`raysweep.autobatch.sizing.curvature_bytes`).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from raysweep.autobatch.sizing import curvature_bytes
from raysweep.data import build_task
from raysweep.space import parse_spec
from raysweep.train import train_bundle

DIM, DEPTH, BATCH = 32, 3, 32


def experiment(args, on: bool) -> dict:
    exp = {"family": "poly_online", "dim": DIM, "n_train": 4096, "steps": args.steps, "report_every": args.report_every,
           "dtype": "float32", "divergence_factor": 1e6, "eval_samples": 256}
    if on:
        exp["curvature"] = {"every": 1, "top_k": 1, "kinds": ["sharpness"], "batch": args.batch,
                            "steps": args.lanczos}
    return exp


def points(width: int, members: int) -> list[dict]:
    return [{"batch_size": BATCH, "width": width, "depth": DEPTH, "parametrization": "muP", "optimizer": "SGD",
             "loss": "mse", "lr_rule": "study", "eta": 0.05 * (1 + 0.01 * k), "gamma": 1.0, "seed": k % 2}
            for k in range(members)]


def run(args, width: int, on: bool, device: str) -> tuple[float, list, int | None]:
    exp = parse_spec({"name": "bench", "experiment": experiment(args, on),
                      "space": {"batch_size": BATCH, "width": width, "eta": 0.05}}).experiment
    task = build_task(exp.as_dict(), device=device)
    best, reports, peak = float("inf"), None, None
    for _ in range(args.repeats):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        reports = list(train_bundle(task, exp, points(width, args.members), device=device))
        if device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        best = min(best, time.perf_counter() - start)
    return best, reports, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="64,256")
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--report-every", type=int, default=50)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lanczos", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    out = []
    print(f"curvature tracking cost: {args.members} fused members, B = {BATCH}, L = {DEPTH}, {args.steps} steps, "
          f"report every {args.report_every}, sharpness (top-1, {args.lanczos} Lanczos steps, batch {args.batch}) "
          f"at every report, device {args.device}" + (", one thread" if args.device == "cpu" else ""))
    for width in [int(w) for w in args.widths.split(",")]:
        t_off, off, peak_off = run(args, width, False, args.device)
        t_on, on, peak_on = run(args, width, True, args.device)
        same = all(a.train_loss == b.train_loss and a.eval_loss == b.eval_loss for a, b in zip(off, on))
        row = {"width": width, "off_s": round(t_off, 3), "on_s": round(t_on, 3), "ratio": round(t_on / t_off, 2),
               "losses_identical": same, "sharpness_last": on[-1].sharpness[0]}
        if peak_on is not None:
            exp = experiment(args, True)
            row.update(peak_off_mib=round(peak_off / 2**20, 1), peak_on_mib=round(peak_on / 2**20, 1),
                       sized_extra_mib=round(curvature_bytes(exp, width, DEPTH, n_members=args.members,
                                                             n_streams=2) / 2**20, 1))
        out.append(row)
        print("  " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
