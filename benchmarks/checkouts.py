"""Is checkout B slower than checkout A? benchmarks/fusion.py and benchmarks/sweep.py of each, interleaved, one run.

    python benchmarks/checkouts.py BEFORE AFTER [--rounds 2] [--skip-sweep]

Each round runs, for A then B (B then A in odd rounds, so neither side always meets the machine first):
``benchmarks/fusion.py`` of that checkout (its own trainer: fused and unfused member-steps/s by CPU time, per width
and optimizer) and ``benchmarks/sweep.py --skip-tune`` (the 200-configuration sweep through that checkout's
launcher: wall and CPU seconds, Ray start-up included). Each process runs with the checkout as its working folder
and first on ``PYTHONPATH``, so it imports that checkout's raysweep. Printed: per figure the best of the rounds for
each side and B / A (throughput: above 1 is faster; seconds: below 1 is faster).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

FUSION_ROW = re.compile(r"^\s*(\d+)\s+(SGD|Adam)\s+(\d+) \|\s+(\d+)\s+(\d+) \|\s+(\d+)")
SWEEP_ROW = re.compile(r"^(raysweep|\(a\) plain loop)\s+([\d.]+) s wall\s+([\d.]+) s CPU")


def _run(checkout: Path, args: list[str], timeout: float) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, *args], cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{checkout}: {' '.join(args)} exited {proc.returncode}\n{proc.stderr[-2000:]}")
    return proc.stdout


def fusion(checkout: Path) -> dict[str, float]:
    """Member-steps/s by CPU time: ``fused <width> <opt>`` and ``unfused <width> <opt>``."""
    out = {}
    for line in _run(checkout, ["benchmarks/fusion.py", "--repeats", "1"], 1800).splitlines():
        if m := FUSION_ROW.match(line):
            width, opt = m.group(1), m.group(2)
            out[f"fusion: fused width {width} {opt} (member-steps/s)"] = float(m.group(4))
            out[f"fusion: unfused width {width} {opt} (member-steps/s)"] = float(m.group(6))
    return out


def sweep(checkout: Path) -> dict[str, float]:
    """Seconds of the 200-configuration sweep: raysweep and the plain loop, wall and CPU."""
    out = {}
    for line in _run(checkout, ["benchmarks/sweep.py", "--skip-tune"], 3600).splitlines():
        if m := SWEEP_ROW.match(line):
            who = "raysweep" if m.group(1) == "raysweep" else "plain loop"
            out[f"sweep: {who} (s wall)"] = float(m.group(2))
            out[f"sweep: {who} (s CPU)"] = float(m.group(3))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-sweep", action="store_true")
    args = ap.parse_args(argv)
    sides = {"A": args.before.resolve(), "B": args.after.resolve()}
    best: dict[str, dict[str, float]] = {"A": {}, "B": {}}
    for r in range(args.rounds):
        for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
            figures = fusion(sides[side])
            if not args.skip_sweep:
                figures |= sweep(sides[side])
            for key, value in figures.items():
                keep = max if "member-steps" in key else min
                best[side][key] = keep(value, best[side].get(key, value))
            print(f"round {r + 1}, {side} ({sides[side]}): done", flush=True)
    print(f"A = {sides['A']}\nB = {sides['B']}; best of {args.rounds} rounds")
    print(f"{'figure':<52} {'A':>10} {'B':>10} {'B / A':>8}")
    for key in best["A"]:
        a, b = best["A"][key], best["B"].get(key)
        print(f"{key:<52} {a:>10.1f} {b:>10.1f} {b / a:>7.3f}x" if b is not None else f"{key:<52} {a:>10.1f} -")
    return 0


if __name__ == "__main__":
    sys.exit(main())
