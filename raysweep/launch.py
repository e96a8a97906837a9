"""``python -m raysweep.launch SPACE.yaml``: run a sweep as Ray Tune trials and land every result in Parquet.

Exit codes: 0 the sweep ran (diverged and failed trials included), 2 the spec or an option is invalid (the message
names the field; Ray is never imported), 1 any other failure (storage, cluster, a corrupt results file), 130 / 143
interrupted by SIGINT (Ctrl-C) / SIGTERM: the finished trials are landed and a relaunch continues.

Ray: an embedded local Ray when no address is given; ``--address`` (or ``RAY_ADDRESS``) attaches to a cluster.
A thin shell over :func:`raysweep.api.run`: the command line becomes a :class:`raysweep.api.RunOptions`, the
:class:`raysweep.api.Summary` an exit code.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from raysweep import api, driver
from raysweep.errors import Interrupted, OptionError, RaysweepError, SpecError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m raysweep.launch", description=__doc__.splitlines()[0])
    ap.add_argument("space", help="the search space YAML (see search_spaces/)")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                    help="Ray cluster to attach to, HOST:PORT or auto (default: RAY_ADDRESS, else an embedded local "
                         "Ray)")
    ap.add_argument("--storage", default="results",
                    help="results root, a local path or a URI (file://, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX); "
                         "the sweep lands in STORAGE/NAME (default ./results)")
    ap.add_argument("--shared-storage", action="store_true",
                    help="assert that a local --storage path is a mount every node of the cluster sees (NFS, Lustre); "
                         "without it a cluster of more than one node refuses a local path")
    ap.add_argument("--name", help="sweep name (default: the spec's name)")
    ap.add_argument("--dry-run", action="store_true", help="print the trials, bundles and resources; start nothing")
    ap.add_argument("--max-concurrent", type=int, help="cap on trials running at once (overrides search.max_concurrent)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    ap.add_argument("--num-gpus", type=float, help="GPUs of the embedded local Ray (default: detected)")
    ap.add_argument("--retry-failed", action="store_true",
                    help="run again the failed configurations whose cause was not the configuration itself (a lost "
                         "worker, out of memory, a data error); each keeps exactly one row")
    ap.add_argument("--quarantine", action="store_true",
                    help="move unreadable or foreign files of trials/ and curves/ to <sweep>/quarantine/ and go on "
                         "(their configurations run again)")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    return ap.parse_args(argv)


def options_of(args: argparse.Namespace) -> api.RunOptions:
    """The :class:`~raysweep.api.RunOptions` of a parsed command line (OptionError names the flag)."""
    return api.RunOptions(
        storage=args.storage, name=args.name, address=args.address, shared_storage=args.shared_storage,
        dry_run=args.dry_run, max_concurrent=args.max_concurrent, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
        retry_failed=args.retry_failed, quarantine=args.quarantine, quiet=args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    stop = driver.install_stop_signals()  # a signal while the spec loads exits 130 / 143 too
    try:
        return _main(argv)
    finally:
        stop.restore()


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    try:
        options = options_of(args)
        spec = api.load_spec(args.space)
        summary = api.run(spec, options)
    except SpecError as exc:  # OptionError is one too (exit 2: nothing started)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RaysweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the storage: a missing bucket, missing credentials, a full disk (RAYSWEEP_DEBUG=1: trace)
        if os.environ.get("RAYSWEEP_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"interrupted ({signal.Signals(signum).name}): finished trials are saved; relaunch the same command "
              "to continue", file=sys.stderr)
        return 128 + int(signum)
    print(summary.text, file=sys.stderr if summary.interrupted else sys.stdout)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
