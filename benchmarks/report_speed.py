"""Time the HTML report on a synthetic sweep with 100,000 curve rows (1,000 trials x 100 reports).

    python benchmarks/report_speed.py [--reports 100] [--repeat 3] [--keep DIR]

Writes the sweep through the real results writer (not timed), then times ``raysweep.analyze.build_report``: reading
the Parquet, every table, every figure (all nine kinds: the sweep has batch sizes, etas, two widths and two gammas)
and the HTML. Prints the curve-row count and, per repeat, the wall and CPU seconds, then the best and the median.
The target is under 10 s on a laptop. On a shared machine the wall time also measures the neighbours; the CPU time
does not (much).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import raysweep.analyze as ra
from raysweep.analyze.synthetic import benchmark_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=100, help="curve rows per trial (1,000 trials)")
    parser.add_argument("--repeat", type=int, default=3, help="timed builds (default 3)")
    parser.add_argument("--keep", type=Path, help="write the sweep and the report here instead of a temp folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        benchmark_sweep(root, "bench", n_reports=args.reports)
        print(f"curve rows: {len(ra.load(root)[1]):,}")
        walls = []
        for i in range(args.repeat):
            start, cpu = time.perf_counter(), time.process_time()
            path = ra.build_report(root, root / "report.html")
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            walls.append(wall)
            print(f"build_report #{i + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU ({path.stat().st_size / 1e6:.2f} MB)")
    print(f"best {min(walls):.2f} s, median {statistics.median(walls):.2f} s")


if __name__ == "__main__":
    main()
