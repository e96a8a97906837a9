"""``python -m raysweep.analyze RESULTS_DIR [--sweep NAME] [--report F.html] [--out DIR] [--metric M] [--check STUDY]``.

Writes every table (Parquet and CSV) and figure (PNG) to ``--out`` (default ``RESULTS_DIR/<sweep>/analysis``; with
several sweeps, ``--out DIR`` gets one folder per sweep) and an HTML report (``--report``, default ``report.html``
beside the tables). RESULTS_DIR may be a folder of sweeps or one sweep folder. Exit 0 on success, 2 when there are no
trial rows to analyse (the message says where it looked) or the metric does not apply (eval_accuracy on a
regression sweep).

``--metric`` (eval_loss, the default; train_loss; eval_accuracy, maximised) is what eta* is chosen on; every table
carries it in a ``metric`` column and the report states it.

``--check STUDY`` (transfer, gamma_eta, temperature, critical_batch, linear_edge, eos, scaling_rules) runs that science check instead
(:mod:`raysweep.analyze.checks`) on the sweep ``science_<STUDY>`` (or ``--sweep``, or the only sweep there): it prints
``quantity | measured | expected | tolerance | pass`` and exits 0 when every row passes, 1 on any miss.
"""

from __future__ import annotations

import argparse
import sys

from raysweep.analyze.checks import STUDIES, run_check
from raysweep.analyze.load import DEFAULT_METRIC, METRICS
from raysweep.analyze.report import analyze
from raysweep.errors import NoResultsError, RaysweepError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raysweep.analyze", description=__doc__.split("\n\n")[1])
    parser.add_argument("results_dir", help="a folder of sweeps (<dir>/<sweep>/trials/*.parquet) or one sweep folder")
    parser.add_argument("--sweep", help="analyse only the sweep of this name")
    parser.add_argument("--report", help="write one HTML report for all sweeps here")
    parser.add_argument("--out", help="folder for tables and figures (default: <sweep folder>/analysis)")
    parser.add_argument("--target", type=float, action="append", dest="targets",
                        help="target loss for steps-to-target (repeatable; default: chosen per group from the curves)")
    parser.add_argument("--window-samples", type=float, default=None,
                        help="curve smoothing window in samples (default: the largest batch_size * report interval)")
    parser.add_argument("--metric", choices=METRICS, default=DEFAULT_METRIC,
                        help=f"what eta* is chosen on: {', '.join(METRICS)} (maximised); default {DEFAULT_METRIC} "
                             "(the train loss on a row without an eval loss)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--lazy-max", type=float, default=1 / 8, help="gamma <= this is lazy (default 1/8)")
    parser.add_argument("--rich-min", type=float, default=4.0, help="gamma >= this is rich (default 4)")
    parser.add_argument("--max-panels", type=int, default=9, help="groups drawn per figure (default 9)")
    parser.add_argument("--check", choices=STUDIES, metavar="STUDY",
                        help=f"run a science check ({', '.join(STUDIES)}) instead of the report; exit 1 on a miss")
    args = parser.parse_args(argv)
    if args.check:
        return _check(args)
    try:
        analyses = analyze(args.results_dir, sweep=args.sweep, out=args.out, report=args.report,
                           targets=args.targets, window_samples=args.window_samples, seed=args.seed,
                           lazy_max=args.lazy_max, rich_min=args.rich_min, max_panels=args.max_panels,
                           metric=args.metric)
    except NoResultsError as exc:
        print(f"raysweep.analyze: {exc}", file=sys.stderr)
        return 2
    except RaysweepError as exc:  # a corrupt or foreign results file, a link: the message names it and what to do
        print(f"raysweep.analyze: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a bad option value (e.g. --metric for a regression sweep)
        print(f"raysweep.analyze: {exc}", file=sys.stderr)
        return 2
    for name, a in analyses.items():
        print(f"{name}: {len(a.trials)} trials, metric {args.metric}, {len(a.tables)} tables, "
              f"{len(a.figures)} figures -> {a.out_dir}")
        for note in a.notes:
            print(f"  note: {note}")
    if args.report:
        print(f"report: {args.report}")
    else:
        for a in analyses.values():
            print(f"report: {a.out_dir / 'report.html'}")
    return 0


def _check(args) -> int:
    target = min(args.targets) if args.targets else None  # critical_batch: the deepest --target given
    try:
        result = run_check(args.results_dir, args.check, sweep=args.sweep, target=target)
    except NoResultsError as exc:
        print(f"raysweep.analyze: {exc}", file=sys.stderr)
        return 2
    except RaysweepError as exc:
        print(f"raysweep.analyze: {exc}", file=sys.stderr)
        return 1
    print(result.table())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
