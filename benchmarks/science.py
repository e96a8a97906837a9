"""Reproduce the science end to end: launch the shipped studies and run their checks, with timings.

    python benchmarks/science.py [--storage DIR] [--studies transfer,gamma_eta,temperature,critical_batch,eos]
                                 [--address ADDR] [--num-cpus N]

For each study: ``python -m raysweep.launch search_spaces/science_<study>.yaml --storage DIR`` (an embedded local
Ray, or ``--address``), then ``python -m raysweep.analyze DIR --check <study>`` (the table of measured vs expected
values). Without ``--storage`` every study runs fresh in a temporary folder; with it, a study that already has its
rows is only checked (relaunching runs nothing new). Prints the wall time of each launch and check and the load
average of the machine (timings on a shared machine depend on it). Exit 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ("transfer", "gamma_eta", "temperature", "critical_batch", "linear_edge", "eos")


def spec_for(study: str) -> Path:
    return ROOT / "search_spaces" / f"science_{study}.yaml"


def run(cmd: list[str]) -> tuple[int, str, float]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - started


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", help="results root (default: a fresh temporary folder)")
    ap.add_argument("--studies", default=",".join(STUDIES), help="comma-separated subset of " + ", ".join(STUDIES))
    ap.add_argument("--address", help="attach to this Ray cluster instead of starting one per study")
    ap.add_argument("--num-cpus", type=int, help="CPUs of each embedded local Ray (default: all)")
    args = ap.parse_args(argv)
    studies = [s.strip() for s in args.studies.split(",") if s.strip()]
    unknown = sorted(set(studies) - set(STUDIES))
    if unknown:
        ap.error(f"unknown studies {unknown}; choose from {', '.join(STUDIES)}")
    storage = Path(args.storage) if args.storage else Path(tempfile.mkdtemp(prefix="raysweep-science-"))
    print(f"storage {storage}; {os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.1f}", flush=True)
    summary = []
    for study in studies:
        spec = spec_for(study)
        print(f"\n=== {study}: {spec.relative_to(ROOT)}", flush=True)
        launch = [sys.executable, "-m", "raysweep.launch", str(spec), "--storage", str(storage), "--quiet"]
        launch += ["--address", args.address] if args.address else []
        launch += ["--num-cpus", str(args.num_cpus)] if args.num_cpus else []
        rc, out, launch_s = run(launch)
        print(out.strip().splitlines()[-1] if out.strip() else "(no output)")
        print(f"launch: {launch_s:.1f} s (exit {rc}); load average {os.getloadavg()[0]:.1f}", flush=True)
        if rc != 0:
            print(out[-3000:])
            summary.append((study, spec.name, launch_s, float("nan"), f"launch failed ({rc})"))
            continue
        rc, out, check_s = run([sys.executable, "-m", "raysweep.analyze", str(storage), "--check", study])
        print(out.rstrip())
        print(f"check: {check_s:.1f} s (exit {rc})", flush=True)
        summary.append((study, spec.name, launch_s, check_s, {0: "PASS", 1: "FAIL"}.get(rc, f"error ({rc})")))
    print("\nstudy          | spec                          | launch s | check s | result")
    for study, name, launch_s, check_s, result in summary:
        print(f"{study:<14} | {name:<29} | {launch_s:8.1f} | {check_s:7.1f} | {result}")
    print(f"load average at end {os.getloadavg()[0]:.1f}; results in {storage}")
    return 0 if all(r[-1] == "PASS" for r in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
