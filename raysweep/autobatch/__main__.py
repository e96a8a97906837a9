"""``python -m raysweep.autobatch SPACE.yaml``: the standalone batch-size / GPU-share analysis of a space.
``python -m raysweep.autobatch --model package.module:function``: the largest batch size of one PyTorch module.

For every target fraction x mode x model shape of the space (optimizer, width, depth, the largest bundle K):
the largest batch size that fits (searched on the grid up to ``max_batch_size``, NOT capped by the space's
batch sizes), its predicted peak bytes, and in train mode the share each swept batch size would get (a number,
or ``infeasible``). Then the device, the fit (margins, held-out errors) and the probe log.

A space whose model is a factory (``experiment.model: {factory: ...}``) has no memory model: every bundle of its
plan is measured (:mod:`raysweep.autobatch.factory`, the launcher's own sizing: real steps of the trainer, fresh
processes on this host's CPU, or its GPU through a Ray actor) and the table gives, per trial, the members, the batch
size (``auto`` resolved), the measured need and the resources it would ask for, or why it cannot run; the
measurements are cached in ``STORAGE/NAME/autobatch_modules.json``, which a launch then reads.

With ``--model`` (:func:`raysweep.autobatch.module.find_batch_size`): every batch size tried, its measured peak and
whether it fitted, then the answer. ``--batch`` defaults to ``make_batch`` of the model's module, ``--loss`` to
``mse``.

Exit codes: 0 done, 2 the spec or a flag is invalid (Ray is never started; with ``--model``: an import path that
does not import, is not callable or returns the wrong type, checked before measuring), 1 any other failure (e.g.
nothing can be measured or nothing fits: NothingFitsError with its evidence).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path

from raysweep.autobatch.config import MODES, AutobatchConfig
from raysweep.autobatch.host import format_record, probe_and_fit
from raysweep.autobatch.memory import memory_optimizer
from raysweep.autobatch.module import find_batch_size
from raysweep.autobatch.sizing import auto_batch_size, gpu_share, request_from_spec, trial_need
from raysweep.custom.spec import is_custom
from raysweep.errors import NothingFitsError, RaysweepError, SpecError, UserModelError
from raysweep.space import AUTO, load_spec


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m raysweep.autobatch", description=__doc__.splitlines()[0])
    ap.add_argument("space", nargs="?", help="the search space YAML (or --model)")
    ap.add_argument("--fractions", default=None, help="target memory fractions, comma-separated (default: 0.8)")
    ap.add_argument("--modes", default=None, help="train, val or both (default train,val)")
    ap.add_argument("--output", help="write the rows to FILE.json or FILE.csv")
    ap.add_argument("--storage", default="results",
                    help="results root: the model cache is STORAGE/NAME/autobatch_cache.json (default ./results)")
    ap.add_argument("--no-ray", action="store_true", help="probe in a subprocess instead of a Ray actor")
    ap.add_argument("--refresh", action="store_true", help="probe again even when the cache has a model")
    one = ap.add_argument_group("any PyTorch module (instead of SPACE.yaml)")
    one.add_argument("--model", help="package.module:function returning a torch.nn.Module")
    one.add_argument("--batch", help="package.module:function(batch_size) -> (inputs, targets) "
                                     "(default: make_batch of the model's module)")
    one.add_argument("--loss", help="mse, cross_entropy or package.module:function(outputs, targets) (default mse)")
    one.add_argument("--optimizer", help="SGD, Adam, AdamW or package.module:function(params) (default SGD)")
    one.add_argument("--mode", choices=("train", "val"), help="train (default) or val")
    one.add_argument("--target-memory-fraction", type=float, help="share of free memory to use (default 0.8)")
    one.add_argument("--min-batch-size", type=int, help="default 1")
    one.add_argument("--max-batch-size", type=int, help="default 65536")
    one.add_argument("--steps-per-trial", type=int, help="real steps per batch size (default 3 train, 2 val)")
    one.add_argument("--batch-grid", help="pow2 (default) or multiple_of_8")
    one.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    one.add_argument("--dtype", help="cast the model and floating inputs (e.g. bfloat16)")
    one.add_argument("--cache-dir", help="keep the measurements in DIR/autobatch_modules.json (default: no cache)")
    return ap.parse_args(argv)


MODULE_OPTIONS = {  # find_batch_size's argument -> the option that sets it
    "make_model": "--model", "make_batch": "--batch", "loss_fn": "--loss", "optimizer": "--optimizer",
    "mode": "--mode", "target_memory_fraction": "--target-memory-fraction", "min_batch_size": "--min-batch-size",
    "max_batch_size": "--max-batch-size", "steps_per_trial": "--steps-per-trial", "batch_grid": "--batch-grid",
    "device": "--device", "dtype": "--dtype", "cache_dir": "--cache-dir", "cache_key": "--cache-dir",
}  # fmt: skip
SPACE_ONLY = {"fractions": "--fractions", "modes": "--modes", "no_ray": "--no-ray", "refresh": "--refresh"}


def module_main(args) -> int:
    """``--model``: find_batch_size of one module, its trials and the answer."""
    given = {arg: getattr(args, opt.lstrip("-").replace("-", "_")) for arg, opt in MODULE_OPTIONS.items()
             if arg not in ("make_model", "make_batch", "loss_fn", "cache_key")}
    kwargs = {k: v for k, v in given.items() if v is not None}
    batch = args.batch or f"{args.model.partition(':')[0]}:make_batch"
    try:
        if args.output and Path(args.output).suffix.lower() != ".json":
            raise SpecError(f"--output: with --model must end in .json, got {args.output!r}")
        found = find_batch_size(args.model, batch, args.loss or "mse", **kwargs,
                                log=lambda line: print(line, flush=True))
    except UserModelError as exc:
        option = MODULE_OPTIONS.get(exc.argument, exc.argument)
        if exc.argument == "make_batch" and args.batch is None:
            option = "--batch (not given: make_batch of the model's module)"
        print(f"error: {option}: {exc.text}", file=sys.stderr)
        return 2
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RaysweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, NothingFitsError):
            print(json.dumps(exc.evidence, indent=1, default=str)[:4000], file=sys.stderr)
        return 1
    print(f"autobatch {args.model} ({found.mode}): batch size {found.batch_size} on {found.device.name} "
          f"({found.label}), budget {found.budget_bytes / 2**20:.1f} MiB, margin {found.margin:.0%}, "
          f"sizes tried {found.sizes_tried}" + (" (all cached)" if found.cache_hit else ""))
    if args.output:
        write_output(args.output, found.to_dict())
        print(f"wrote {args.output}")
    return 0


def factory_main(spec, args) -> int:
    """A model factory's space: the launcher's measured sizing of every bundle, as a table (module docstring)."""
    import torch  # is there a GPU here to measure on

    from raysweep.autobatch.factory import measure_and_size
    from raysweep.plan import build_plan

    cuda = not args.no_ray and spec.experiment.device != "cpu" and torch.cuda.is_available()
    try:
        plan, _ = build_plan(spec)
        sized_plan, sized = measure_and_size(spec, plan, Path(args.storage) / spec.name, cuda=cuda, log=print)
    except RaysweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = []
    for bid, bundle in sized_plan.bundles.items():
        p = bundle.points[0]
        bad = next((b for b in sized["infeasible"] if b["id"] == bid), None)
        rows.append({"trial": bid, "width": p["width"], "depth": p["depth"], "parametrization": p["parametrization"],
                     "optimizer": p["optimizer"], "n_members": len(bundle.points),
                     "batch_size": sized["batch_size"].get(bid),
                     "need_bytes": (sized["need"].get(bid) or {}).get("need_bytes"),
                     "resources": sized["resources"].get(bid), "infeasible": bad["reason"] if bad else None})
    device = sized["device"]
    print(f"autobatch {spec.name}: {device['name']} ({sized['label']}), usable {sized['usable_bytes'] / 2**20:.0f} MiB "
          f"(target fraction {sized['target_memory_fraction']:g}); {sized['measured']} size(s) measured, "
          f"{sized['reused']} from the cache")
    print(f"{'trial':13} {'width':>6} {'depth':>5} {'param.':8} {'optimizer':9} {'K':>3} {'batch':>7} {'need MiB':>9}  "
          "resources")
    for r in rows:
        need = f"{r['need_bytes'] / 2**20:9.1f}" if r["need_bytes"] is not None else f"{'-':>9}"
        what = r["infeasible"] and f"infeasible: {r['infeasible']}" or ", ".join(
            f"{k}={v / 2**20:.0f} MiB" if k == "memory" else f"{k}={v:g}" for k, v in r["resources"].items())
        print(f"{r['trial']:13} {r['width']:6d} {r['depth']:5d} {r['parametrization']:8} {r['optimizer']:9} "
              f"{r['n_members']:3d} {str(r['batch_size'] or '-'):>7} {need}  {what}")
    if args.output:
        write_output(args.output, {"sweep": spec.name, "device": device, "label": sized["label"],
                                   "usable_bytes": sized["usable_bytes"], "rows": rows})
        print(f"wrote {args.output}")
    return 0


def _fractions(text: str | None, default: float) -> list[float]:
    if text is None:
        return [default]
    try:
        out = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SpecError(f"--fractions: must be comma-separated numbers in (0, 1], got {text!r}") from None
    if not out or any(not 0 < f <= 1 for f in out):
        raise SpecError(f"--fractions: must be comma-separated numbers in (0, 1], got {text!r}")
    return out


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes):
        raise SpecError(f"--modes: must be a comma-separated subset of {','.join(MODES)}, got {text!r}")
    return tuple(dict.fromkeys(modes))


def analyse(spec, model, config: AutobatchConfig, fractions, modes) -> list[dict]:
    """The rows: one per fraction x mode x (optimizer, width, depth)."""
    experiment = spec.experiment.as_dict()
    k = request_from_spec(spec, config).n_members
    shapes = sorted({(memory_optimizer(p), p["width"], p["depth"]) for p in spec.points()})
    rows = []
    for fraction in fractions:
        cfg = config.with_fraction(fraction)
        usable = model.usable_bytes(fraction)
        for mode in modes:
            for optimizer, width, depth in shapes:
                point = {"optimizer": optimizer, "width": width, "depth": depth}
                row = {"fraction": fraction, "mode": mode, "optimizer": optimizer, "width": width, "depth": depth,
                       "n_members": k, "batch_size": None, "predicted_peak_bytes": None, "need_bytes": None,
                       "usable_bytes": usable, "margin": model.fit_for(optimizer, mode).margin,
                       "label": model.label, "device": model.device.name, "shares": None, "error": None}
                try:
                    found = auto_batch_size(model, point, cfg, n_members=k, experiment=experiment, mode=mode)
                    b = found.batch_size
                    row["batch_size"], row["sizes_tried"] = b, found.tried
                    row["predicted_peak_bytes"] = model.context_bytes + model.predict(
                        width, depth, b, optimizer=optimizer, n_members=k, mode=mode)
                    row["need_bytes"] = (trial_need(model, {**point, "batch_size": b}, n_members=k,
                                                    experiment=experiment)["need_bytes"] if mode == "train"
                                         else model.need_bytes(width, depth, b, optimizer=optimizer, n_members=k,
                                                               mode=mode))
                except NothingFitsError as exc:
                    row["error"] = str(exc)
                if mode == "train":
                    shares = {}
                    for b in (b for b in spec.space.batch_size if b != AUTO):  # auto: the row's batch_size
                        need = trial_need(model, {**point, "batch_size": b}, n_members=k, experiment=experiment)
                        share = gpu_share(need["need_bytes"], usable)
                        shares[b] = ("infeasible" if share > 1 else share) if model.label == "cuda" else (
                            need["need_bytes"] if need["need_bytes"] <= usable else "infeasible")
                    row["shares"] = shares
                rows.append(row)
    return rows


def _table(rows: list[dict]) -> str:
    unit = "share" if rows and rows[0]["label"] == "cuda" else "memory B"
    lines = [f"{'fraction':>8} {'mode':5} {'optimizer':9} {'width':>6} {'depth':>5} {'K':>3} {'largest batch':>13} "
             f"{'peak MiB':>9}  {unit} per swept batch_size"]
    for r in rows:
        peak = f"{r['predicted_peak_bytes'] / 2**20:9.1f}" if r["predicted_peak_bytes"] is not None else f"{'-':>9}"
        best = str(r["batch_size"]) if r["batch_size"] is not None else "none fits"
        shares = " ".join(f"{b}:{s}" for b, s in (r["shares"] or {}).items())
        lines.append(f"{r['fraction']:8g} {r['mode']:5} {r['optimizer']:9} {r['width']:6d} {r['depth']:5d} "
                     f"{r['n_members']:3d} {best:>13} {peak}  {shares}")
    return "\n".join(lines)


def write_output(path: str, report: dict) -> None:
    """JSON (everything) or CSV (the rows; shares as ``b:share;...``), written atomically."""
    out = Path(path)
    if out.suffix.lower() == ".json":
        text = json.dumps(report, indent=1, default=str)
    elif out.suffix.lower() == ".csv":
        buf = io.StringIO()
        cols = [k for k in report["rows"][0] if k != "sizes_tried"] if report["rows"] else []
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in report["rows"]:
            if "shares" in r:  # a memory model's rows; a factory's give resources
                r = {**r, "shares": ";".join(f"{b}:{s}" for b, s in (r["shares"] or {}).items())}
            w.writerow(r)
        text = buf.getvalue()
    else:
        raise SpecError(f"--output: must end in .json or .csv, got {path!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    module_only = [opt for arg, opt in MODULE_OPTIONS.items()
                   if arg not in ("make_model", "cache_key") and getattr(args, opt[2:].replace("-", "_")) is not None]
    space_only = [opt for arg, opt in SPACE_ONLY.items() if getattr(args, arg) not in (None, False)]
    problem = ("give SPACE.yaml or --model, not both" if args.space and args.model
               else "give SPACE.yaml or --model" if not args.space and not args.model
               else f"{module_only[0]}: needs --model" if module_only and not args.model
               else f"{space_only[0]}: only with SPACE.yaml, not --model" if space_only and args.model else None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.model:
        return module_main(args)
    try:
        spec = load_spec(args.space)
        config = getattr(spec, "autobatch", None) or AutobatchConfig()
        modes = _modes(args.modes or "train,val")
        fractions = _fractions(args.fractions, config.target_memory_fraction)
        if args.output and Path(args.output).suffix.lower() not in (".json", ".csv"):
            raise SpecError(f"--output: must end in .json or .csv, got {args.output!r}")
        config = AutobatchConfig(**{**config.to_dict(), "modes": modes})
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if is_custom(spec.experiment.model):
        if args.fractions or args.modes:
            print(f"error: {'--fractions' if args.fractions else '--modes'}: not with a model factory's space (its "
                  "trials are measured at the spec's target memory fraction, train and eval)", file=sys.stderr)
            return 2
        return factory_main(spec, args)
    try:
        storage = Path(args.storage) / spec.name
        model = probe_and_fit(spec, config=config, storage=storage, use_ray=not args.no_ray, refresh=args.refresh,
                              log=print)
        rows = analyse(spec, model, config, fractions, modes)
    except RaysweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, NothingFitsError):
            print(json.dumps(exc.evidence, indent=1, default=str)[:4000], file=sys.stderr)
        return 1
    print(f"autobatch {spec.name}: {model.device.name} ({model.label}), context {model.context_bytes / 2**20:.0f} MiB, "
          f"free {model.available_bytes / 2**20:.0f} MiB at probe time")
    print(_table(rows))
    for name, fit in model.fits.items():
        held = "n/a" if fit.max_rel_error is None else f"{fit.max_rel_error:.1%}"
        print(f"fit {name}: margin {fit.margin:.1%} ({fit.margin_source}); max held-out error {held}")
    print(f"probe log ({model.probe_wall_time_s:.1f} s):")
    for rec in model.probe_log:
        print(format_record(rec))
    if args.output:
        write_output(args.output, {"sweep": spec.name, "device": model.device.to_dict(), "label": model.label,
                                   "context_bytes": model.context_bytes, "available_bytes": model.available_bytes,
                                   "fits": {k: f.to_dict() for k, f in model.fits.items()}, "rows": rows,
                                   "probe_log": model.probe_log})
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
