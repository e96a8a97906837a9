"""Do a checkout's results equal another's? Three reference sweeps, run by each checkout, compared column by column.

    python benchmarks/results_identity.py run OUT [--num-cpus 2]      # in checkout A, then in checkout B
    python benchmarks/results_identity.py compare OUT_A OUT_B

The sweeps (embedded Ray, ``python -m raysweep.launch`` of the checkout this file is in):

- ``quickstart``: search_spaces/quickstart.yaml as shipped (muP SGD, 3 batch sizes x 8 etas, some diverge);
- ``adam_grid``: a fused Adam grid, digits (cross-entropy), SP and muP, 2 widths x 2 batch sizes x 6 etas x 2 seeds;
- ``optuna_asha``: Optuna (TPE, seed 0) over eta with ASHA, two batch-size cells, one trial at a time (a fixed order
  of reports, so the sampler and the scheduler see the same history in both runs).

``compare`` reads both ``trials/`` and ``curves/`` Parquet folders with pyarrow, drops the columns that differ between two runs
of the same configurations (``raysweep.schema.TIMING_COLUMNS`` and ``raysweep_version``), sorts rows by their keys
and asserts every other column equal: float64 bit for bit (NaN equal to NaN). It prints one line per table and exits
1 on any difference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

ADAM_GRID = {
    "name": "adam_grid",
    "experiment": {"family": "digits", "steps": 120, "report_every": 30},
    "space": {"batch_size": [16, 64], "eta": {"pow2": [-12, -2], "step": 2}, "width": [32, 64], "depth": [3],
              "parametrization": ["SP", "muP"], "optimizer": ["Adam"], "seed": [0, 1]},
    "resources": {"cpus_per_trial": 1},
}
OPTUNA_ASHA = {
    "name": "optuna_asha",
    "experiment": {"family": "poly_online", "dim": 8, "steps": 200, "report_every": 20},
    "space": {"batch_size": [8, 32], "eta": [2.0**-8, 2.0**4], "width": [16], "depth": [3]},
    "search": {"algorithm": "optuna", "n_trials": 10, "seed": 0, "sampler": "tpe", "max_concurrent": 1,
               "scheduler": {"type": "asha", "grace_period": 40, "reduction_factor": 3}},
    "resources": {"cpus_per_trial": 1},
}
KEYS = ("config_key", "step")
DROP = ("raysweep_version",)


def run(out: Path, num_cpus: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    specs = {"quickstart": ROOT / "search_spaces" / "quickstart.yaml"}
    for spec in (ADAM_GRID, OPTUNA_ASHA):
        path = out / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        specs[spec["name"]] = path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for name, path in specs.items():
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "raysweep.launch", str(path), "--storage", str(out), "--name",
                               name, "--num-cpus", str(num_cpus), "--quiet"], cwd=ROOT, env=env, text=True,
                              capture_output=True)
        print(f"{name}: exit {proc.returncode} in {time.perf_counter() - started:.0f} s")
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
            return 1
    return 0


def _frame(path: Path):
    import pyarrow.parquet as pq

    from raysweep.schema import TIMING_COLUMNS

    table = pq.read_table(sorted(path.glob("*.parquet"))).to_pandas()
    table = table.drop(columns=[c for c in (*TIMING_COLUMNS, *DROP) if c in table.columns])
    keys = [k for k in KEYS if k in table.columns]
    return table.sort_values(keys, kind="stable").reset_index(drop=True)


def _differences(a, b) -> list[str]:
    import numpy as np

    out = []
    if list(a.columns) != list(b.columns):
        out.append(f"columns differ: only in A {sorted(set(a.columns) - set(b.columns))}, "
                   f"only in B {sorted(set(b.columns) - set(a.columns))}")
    if len(a) != len(b):
        return out + [f"rows: {len(a)} vs {len(b)}"]
    for column in (c for c in a.columns if c in b.columns):
        x, y = a[column].to_numpy(), b[column].to_numpy()
        if x.dtype.kind == "f" and y.dtype.kind == "f":
            same = (x.view(np.int64) == y.view(np.int64)) if x.dtype == y.dtype == np.float64 else (x == y)
            same = same | (np.isnan(x) & np.isnan(y))
        else:
            same = np.array([u == v or (u != u and v != v) for u, v in zip(x, y)], dtype=bool)
        if not same.all():
            i = int(np.argmin(same))
            out.append(f"{column}: {int((~same).sum())} rows differ (first: {x[i]!r} vs {y[i]!r})")
    return out


def compare(a: Path, b: Path) -> int:
    bad = 0
    for sweep in sorted(p.name for p in a.iterdir() if p.is_dir()):
        for table in ("trials", "curves"):
            pa, pb = a / sweep / table, b / sweep / table
            if not pa.exists() and not pb.exists():
                continue
            if not (pa.exists() and pb.exists()):
                print(f"{sweep}/{table}: present in only one run")
                bad += 1
                continue
            fa, fb = _frame(pa), _frame(pb)
            diffs = _differences(fa, fb)
            bad += bool(diffs)
            print(f"{sweep}/{table}: {len(fa)} rows x {len(fa.columns)} columns: "
                  + ("identical" if not diffs else "DIFFERENT\n  " + "\n  ".join(diffs)))
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the three sweeps into OUT")
    r.add_argument("out", type=Path)
    r.add_argument("--num-cpus", type=int, default=2)
    c = sub.add_parser("compare", help="compare two OUT folders")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    return run(args.out, args.num_cpus) if args.command == "run" else compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
