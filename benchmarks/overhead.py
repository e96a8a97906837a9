"""Per-trial overhead of raysweep vs plain Ray Tune defaults, measured in one run on one Ray instance.

200 tiny trials (poly teacher, width 16, 20 SGD steps): seconds per trial, files created in storage, driver RSS
growth. raysweep runs unfused (one Ray trial per configuration, the fair comparison) and fused (its default).

    python benchmarks/overhead.py [--n 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


EXPERIMENT = {"family": "poly_online", "dim": 8, "n_train": 256, "steps": 20, "report_every": 10}


def rss_mb() -> float:
    """Current resident set size of this (driver) process, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def n_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def space_yaml(path: Path, n: int, fused: bool) -> Path:
    import yaml

    spec = {"name": "overhead", "experiment": EXPERIMENT,
            "space": {"batch_size": [8], "eta": {"logspace": [1e-3, 1.0, n]}, "width": 16, "depth": 3},
            "fusion": {"enabled": fused}}
    path.write_text(yaml.safe_dump(spec))
    return path


def run_raysweep(n: int, fused: bool) -> dict:
    from raysweep import launch

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rss0, t0 = rss_mb(), time.perf_counter()
        rc = launch.main([str(space_yaml(tmp / "s.yaml", n, fused)), "--storage", str(tmp / "store"), "--quiet"])
        assert rc == 0
        return {"s": time.perf_counter() - t0, "files": n_files(tmp / "store"), "rss": rss_mb() - rss0}


def plain_trainable(config):
    import torch
    from ray import tune

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(net.parameters(), lr=config["eta"])
    w = torch.randn(8) / 8**0.5
    for step in range(1, 21):
        x = torch.randn(8, 8)
        loss = 0.5 * ((net(x).squeeze(-1) - (x @ w) ** 2) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            tune.report({"train_loss": loss.item(), "step": step})


def run_plain_tune(n: int) -> dict:
    import numpy as np
    from ray import tune

    with tempfile.TemporaryDirectory() as tmp:
        rss0, t0 = rss_mb(), time.perf_counter()
        tuner = tune.Tuner(plain_trainable, param_space={"eta": tune.grid_search(list(np.logspace(-3, 0, n)))},
                           run_config=tune.RunConfig(storage_path=tmp, name="plain", verbose=0))
        tuner.fit()
        return {"s": time.perf_counter() - t0, "files": n_files(Path(tmp)), "rss": rss_mb() - rss0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    n = ap.parse_args().n
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    rows = {
        "plain Ray Tune (defaults)": run_plain_tune(n),
        "raysweep, fusion off": run_raysweep(n, fused=False),
        "raysweep, fused (default)": run_raysweep(n, fused=True),
    }
    base = rows["plain Ray Tune (defaults)"]["s"]
    print(f"{n} tiny trials on {os.cpu_count()} CPUs (Ray already started; driver RSS in MiB)")
    print(f"{'':28s} {'s/trial':>8s} {'x plain':>8s} {'files':>7s} {'RSS +MiB':>9s}")
    for name, r in rows.items():
        print(f"{name:28s} {r['s'] / n:8.3f} {r['s'] / base:8.2f} {r['files']:7d} {r['rss']:9.1f}")
    ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
