"""``python -m raysweep.spectra RESULTS --sweep NAME [--filter QUERY] [--top-k 20] [--trace] [--density]``: Hessian
spectra of every member at its weight snapshots (``experiment.snapshots``), computed by Ray tasks over the cluster
(an embedded local Ray, or ``--address``), one Parquet file per member under ``<sweep>/spectra/``.

Rows (:data:`raysweep.schema.SPECTRA_SCHEMA`): ``config_key``, ``step`` (the snapshot step), ``kind``, ``index``,
``value``. Kinds: ``eigenvalue`` (the ``top_k`` largest Hessian eigenvalues by Lanczos, index 0 the largest),
``trace`` and ``trace_stderr`` (Hutchinson, ``--trace``; index 0), ``density_grid`` and ``density`` (``--density``:
the stochastic-Lanczos-quadrature density broadened on a grid, index i of both naming one grid point: its
eigenvalue and its density). The loss is the one the trainer optimizes, on the seed's curvature batch
(:class:`raysweep.sharpness.CurvatureFeed`: the same samples as the sweep's ``experiment.curvature`` measured, of
``--batch`` samples, default the experiment's curvature batch or 1024).

Exactly once, resumable: a member's file is written atomically when all its steps are computed, and a relaunch
computes only the members without one (``--filter`` picks among them). The settings of the first launch are kept in
``<sweep>/spectra/settings.json``; a relaunch with other settings is refused (exit 2) rather than mixing spectra.
A model factory's sweep (``experiment.model: {factory: ...}``): each member rebuilt by its factory, each snapshot's
parameters loaded by name, the loss the trainer optimizes in training mode by the Hessian-vector products of
:mod:`raysweep.custom.curvature` (:func:`factory_rows`); the snapshots keep no buffers, so a model with a buffer its
training-mode forward changes, other than a norm layer's running statistics (not read in training mode), is
refused (:func:`factory_refusal`).
Exit codes: 0 done, 1 a member failed or another error, 2 bad options, nothing to read or a refused model
factory, 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from raysweep import snapshots, storage
from raysweep.custom.spec import is_custom
from raysweep.errors import OptionError, RaysweepError
from raysweep.schema import SPECTRA_SCHEMA
from raysweep.seeds import derive_seed

FOLDER = "spectra"
SETTINGS = "settings.json"
SUFFIX = ".parquet"
DEFAULT_BATCH = 1024  # raysweep.instrument_spec.CURVATURE_DEFAULTS["batch"]


@dataclass(frozen=True)
class SpectraOptions:
    """What is computed per snapshot: ``top_k`` eigenvalues by ``lanczos_steps`` Lanczos steps (default
    ``max(3 top_k, 30)``); with ``trace``, Hutchinson's trace from ``trace_samples`` probes; with ``density``, the SLQ
    density from ``density_probes`` probes of ``density_steps`` steps on ``grid_points`` points; on a curvature batch
    of ``batch`` samples (None: the experiment's curvature batch, else 1024)."""

    top_k: int = 20
    lanczos_steps: int | None = None
    trace: bool = False
    trace_samples: int = 20
    density: bool = False
    density_probes: int = 4
    density_steps: int = 40
    grid_points: int = 101
    batch: int | None = None

    def __post_init__(self):
        for name in ("top_k", "trace_samples", "density_probes", "density_steps", "grid_points"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise OptionError(f"--{name.replace('_', '-')}: must be a positive integer, got {getattr(self, name)!r}")
        for name in ("lanczos_steps", "batch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise OptionError(f"--{name.replace('_', '-')}: must be a positive integer, got {value!r}")
        if self.lanczos_steps is not None and self.lanczos_steps < self.top_k:
            raise OptionError(f"--lanczos-steps {self.lanczos_steps}: must be at least --top-k ({self.top_k})")

    @property
    def steps(self) -> int:
        return self.lanczos_steps or max(3 * self.top_k, 30)


def folder(sweep) -> storage.Location:
    return storage.resolve(sweep).join(FOLDER)


def done_keys(sweep) -> set[str]:
    """The members that have their spectra file."""
    return {loc.name[: -len(SUFFIX)] for loc in folder(sweep).files(SUFFIX) if not loc.name.startswith(".")}


def read_spectra(sweep):
    """Every spectra row of the sweep, a pyarrow table of :data:`raysweep.schema.SPECTRA_SCHEMA`."""
    import pyarrow as pa  # the tables
    import pyarrow.parquet as pq

    parts = [pq.read_table(loc.path, filesystem=loc.fs, schema=SPECTRA_SCHEMA)
             for loc in folder(sweep).files(SUFFIX) if not loc.name.startswith(".")]
    return pa.concat_tables(parts) if parts else SPECTRA_SCHEMA.empty_table()


@functools.lru_cache(maxsize=2)
def _task(experiment_json: str, dtype: str):
    """The task of an experiment, built once per worker process."""
    import torch  # the data builders

    from raysweep.data import build_task

    return build_task(json.loads(experiment_json), dtype=getattr(torch, dtype))


def member_rows(sweep, experiment: Mapping, config_key: str, options: SpectraOptions) -> list[dict]:
    """The spectra rows of one member at each of its snapshot steps (what a Ray task computes)."""
    import torch  # the curvature math

    from raysweep import curvature, model
    from raysweep.sharpness import CurvatureFeed

    snap = snapshots.read_member(sweep, config_key)
    if snap.named:
        return factory_rows(snap, experiment, options)
    point, dtype = snap.point, getattr(torch, snap.dtype)
    task = _task(json.dumps(dict(experiment), sort_keys=True), snap.dtype)
    option = experiment.get("curvature") or {}
    batch = options.batch or option.get("batch") or DEFAULT_BATCH
    convention = experiment.get("mse_convention") or "half_sum"
    seed = int(point["seed"])
    theta0 = [torch.tensor(w.copy())[None] for w in snap.theta0]
    feed = CurvatureFeed(task, [seed], theta0, {"batch": batch}, int(point["batch_size"]), point["loss"], convention,
                         dtype, torch.device("cpu"))
    a = model.readout_multiplier(int(point["width"]), torch.tensor([float(point["gamma"])], dtype=dtype),
                                 point["parametrization"])
    loss_fn = curvature.MemberLoss(feed.x[0], feed.y[0], a, feed.f0_raw[0][None] * a, loss=point["loss"],
                                   mse_convention=convention)
    rows: list[dict] = []

    def add(step: int, kind: str, values) -> None:
        rows.extend({"config_key": config_key, "step": int(step), "kind": kind, "index": i, "value": float(v)}
                    for i, v in enumerate(values))

    for step in snap.steps:
        w = [torch.tensor(arr.copy())[None] for arr in snap.weights(step)]
        if not all(bool(torch.isfinite(t).all()) for t in w):
            continue  # a diverged member's last snapshots may hold NaN: no spectrum
        _measure(curvature.hessian_matvec(loss_fn, w), w, seed, step, options, add)
    return rows


def factory_rows(snap, experiment: Mapping, options: SpectraOptions) -> list[dict]:
    """The spectra rows of a model factory's member (``snap``: its :class:`raysweep.snapshots.MemberSnapshots`) at
    each of its snapshot steps: the member rebuilt by the factory (:func:`raysweep.custom.train.build_members`), each
    snapshot's parameters loaded by name, and the loss the trainer optimizes
    (:func:`raysweep.custom.functional.loss_fn`: muP's forward multipliers, ``f - f0`` with ``f0`` at the snapshot's
    ``theta_0`` when centred) on the seed's curvature batch, in training mode; Hessian-vector products of
    :mod:`raysweep.custom.curvature` (vmapped forward-over-reverse, or double backward for a model that cannot be
    vmapped, whose forwards draw their random numbers from the member's seed and the step as the trainer's
    curvature measurement at that step draws them). Buffers are the factory's initial ones, on copies (see
    :func:`factory_refusal`)."""
    import torch  # the curvature math

    from raysweep import curvature
    from raysweep.custom import functional
    from raysweep.custom.curvature import fused_matvec, unfused_loss
    from raysweep.custom.train import as_task, build_members
    from raysweep.sharpness import curvature_batch
    from raysweep.space import setting

    point, config_key = snap.point, snap.config_key
    task = as_task(_task(json.dumps(dict(experiment), sort_keys=True), snap.dtype))
    members = build_members(task, experiment, [point])
    if set(members.names) != set(snap.names):
        raise RaysweepError(f"{config_key}: the snapshots' parameters ({len(snap.names)}) are not the factory's "
                            f"({len(members.names)}): another model than the sweep's?")
    option = setting(experiment, "curvature") or {}
    batch = options.batch or option.get("batch") or DEFAULT_BATCH
    seed = int(point["seed"])
    x, y = curvature_batch(task, seed, batch)
    reason = factory_refusal(members, x)
    if reason is not None:
        raise RaysweepError(f"{config_key}: {reason}")
    members.body.train()  # measured as it trains: batch norm by the batch's statistics
    fn = functional.loss_fn(members.body, members.forward_mult, point["loss"], setting(experiment, "mse_convention"),
                            task.n_out)
    names, buffers = members.names, members.buffers
    centred = bool(setting(experiment, "model")["centred"])
    theta0 = {n: torch.tensor(snap.theta0[n].copy())[None] for n in names}
    rows: list[dict] = []

    def add(step: int, kind: str, values) -> None:
        rows.extend({"config_key": config_key, "step": int(step), "kind": kind, "index": i, "value": float(v)}
                    for i, v in enumerate(values))

    for step in snap.steps:
        weights = snap.weights(step)
        w = [torch.tensor(weights[n].copy())[None] for n in names]
        if not all(bool(torch.isfinite(t).all()) for t in w):
            continue  # a diverged member's last snapshots may hold NaN: no spectrum
        rng = None if members.fused else [derive_seed(seed, f"curvature-forward:{step}:all")]  # the trainer's masks
        f0 = None if not centred else functional.outputs(
            members.body, members.forward_mult, theta0, {n: b.clone() for n, b in buffers.items()}, x,
            members.fused, True, rng)  # f(x; theta_0), the same random numbers as theta's forwards
        if members.fused:
            op = fused_matvec(fn, names, dict(zip(names, w)), buffers, x, y, f0, True)
        else:
            op = curvature.hessian_matvec(unfused_loss(fn, names, buffers, x, y, f0, True, rng), w)
        _measure(op, w, seed, step, options, add)
        del op  # an unfused operator holds its graph
    return rows


def factory_refusal(members, x) -> str | None:
    """Why a factory's snapshots cannot be measured, or None. The snapshots keep no buffers, so each member is
    measured in training mode with the factory's initial buffers (on copies): exact when no buffer that a
    training-mode forward changes is read by it. Norm layers' running statistics (batch norm) change but are not
    read in training mode (the batch's statistics are), so such models are measured; any other buffer a forward
    changes (state the snapshots lack) refuses the sweep."""
    import torch  # the module's classes

    from raysweep.custom import functional

    if not members.buffers:
        return None
    body = members.body
    body.train()
    norms = {name for name, m in body.named_modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)}
    before = {n: b[:1].clone() for n, b in members.buffers.items()}
    after = {n: b.clone() for n, b in before.items()}
    functional.outputs(body, members.forward_mult, {n: p[:1] for n, p in members.params.items()}, after, x[:2],
                       False, True, [0])
    for n in members.buffers:
        if n.rpartition(".")[0] not in norms and not torch.equal(before[n], after[n]):
            return (f"the buffer {n} changes in a training-mode forward and the snapshots do not keep buffers: "
                    "its spectra cannot be computed")
    return None


def _measure(op, w, seed: int, step: int, options: SpectraOptions, add) -> None:
    """The kinds of ``options`` of one member (``w``: its weights ``[1, *shape]``, ``op``: its Hessian's matvec) at
    ``step``, each given to ``add(step, kind, values)``; probes seeded from the member's seed and the step."""
    import torch  # the grid

    from raysweep import curvature

    def gen(tag: str):
        return torch.Generator().manual_seed(derive_seed(seed, f"spectra:{tag}:{step}"))

    top = curvature.lanczos_top(op, w, 1, top_k=options.top_k, steps=options.steps, generator=gen("lanczos"))
    add(step, "eigenvalue", [v for v in top[0].tolist() if not math.isnan(v)])
    if options.trace:
        mean, stderr = curvature.hutchinson_trace(op, w, 1, samples=options.trace_samples, generator=gen("trace"))
        add(step, "trace", mean.tolist())
        add(step, "trace_stderr", stderr.tolist())
    if options.density:
        nodes, weights = curvature.slq_density(op, w, 1, probes=options.density_probes,
                                               steps=options.density_steps, generator=gen("density"))
        lo, hi = float(nodes.min()), float(nodes.max())
        pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
        grid = torch.linspace(lo - pad, hi + pad, options.grid_points, dtype=torch.float64)
        add(step, "density_grid", grid.tolist())
        add(step, "density", curvature.density_on_grid(nodes, weights, grid)[0].tolist())


def write_member(sweep, config_key: str, rows: Sequence[Mapping]) -> None:
    """``<sweep>/spectra/<config_key>.parquet``, atomically."""
    from raysweep.results import to_table, write_atomic  # pyarrow

    target = folder(sweep)
    target.mkdir()
    write_atomic(to_table(rows, SPECTRA_SCHEMA), target.join(config_key + SUFFIX))


def check_settings(sweep, options: SpectraOptions) -> None:
    """Record the settings of the first launch; refuse a relaunch with other settings (OptionError)."""
    target = folder(sweep).join(SETTINGS)
    wanted = asdict(options)
    if target.exists():
        saved = json.loads(target.read_text())
        if saved != wanted:
            changed = ", ".join(f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in wanted.items() if saved.get(k) != v)
            raise OptionError(f"{target.uri}: the spectra there were computed with other settings ({changed}); "
                              "relaunch with the same flags, or delete the spectra folder to start over")
        return
    folder(sweep).mkdir()
    storage.write_bytes_atomic(target, json.dumps(wanted, indent=1, sort_keys=True).encode())


def plan(sweep, query: str | None = None) -> tuple[dict, list[str], int]:
    """``(experiment, keys to compute, n_done)``: the sweep's experiment (from ``spec.yaml``), the members with
    snapshots that match ``query`` (a pandas query on the trials table) and have no spectra file yet, and how many
    of the matching ones have one."""
    from raysweep.results import read_trials  # pyarrow
    from raysweep.space import load_spec

    location = storage.resolve(sweep)
    spec_file = location.join("spec.yaml")
    if not spec_file.exists():
        raise OptionError(f"{location.uri}: no spec.yaml (not a sweep folder?)")
    spec = load_spec(spec_file.path) if location.is_posix else _spec_of_text(spec_file.read_text(), spec_file.uri)
    keys = snapshots.member_keys(location)
    if not keys:
        raise OptionError(f"{location.uri}/snapshots: no snapshots (launch the sweep with experiment.snapshots on)")
    if is_custom(spec.experiment.model):
        reason = _factory_check(location, spec.experiment.as_dict(), keys[0])
        if reason is not None:
            raise OptionError(f"{location.uri}: spectra of this model factory's snapshots cannot be computed: {reason}")
    if query:
        trials = read_trials(location).to_pandas()
        try:
            chosen = set(trials.query(query)["config_key"])
        except Exception as exc:  # pandas raises many kinds for a bad expression
            raise OptionError(f"--filter {query!r}: {type(exc).__name__}: {exc}") from None
        keys = [k for k in keys if k in chosen]
    done = done_keys(location)
    return spec.experiment.as_dict(), [k for k in keys if k not in done], sum(1 for k in keys if k in done)


def _factory_check(location, experiment: Mapping, key: str) -> str | None:
    """:func:`factory_refusal` of the model factory's member ``key``, rebuilt on two samples of its data."""
    from raysweep.custom.train import as_task, build_members  # torch
    from raysweep.sharpness import curvature_batch

    snap = snapshots.read_member(location, key)
    task = as_task(_task(json.dumps(dict(experiment), sort_keys=True), snap.dtype))
    members = build_members(task, experiment, [snap.point])
    return factory_refusal(members, curvature_batch(task, int(snap.point["seed"]), 2)[0])


def _spec_of_text(text: str, source: str):
    import yaml  # spec files

    from raysweep.space import parse_spec

    return parse_spec(yaml.safe_load(text), source=source)


def run(sweep, options: SpectraOptions, *, query: str | None = None, address: str | None = None,
        num_cpus: int | None = None, cpus_per_task: float = 1.0, quiet: bool = False) -> dict:
    """Compute the missing spectra of ``sweep`` (a folder or URI) with Ray tasks; returns ``{"computed",
    "already", "failed": {key: error}}``. A relaunch computes only the members without a file."""
    from raysweep import driver

    sweep = storage.resolve(sweep)
    experiment, todo, n_done = plan(sweep, query)
    check_settings(sweep, options)
    out = {"computed": 0, "already": n_done, "failed": {}}
    if not todo:
        return out
    driver.start_ray(address, num_cpus=num_cpus, num_gpus=None)
    try:
        import ray

        # by its module's name: under python -m this module is __main__, which Ray's workers cannot import
        worker = importlib.import_module("raysweep.spectra").member_rows
        task = ray.remote(num_cpus=cpus_per_task, max_retries=1)(worker)
        pending = {task.remote(sweep, experiment, key, options): key for key in todo}
        started = time.perf_counter()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            key = pending.pop(ready[0])
            try:
                write_member(sweep, key, ray.get(ready[0]))
                out["computed"] += 1
            except Exception as exc:  # a failed member: reported, the others go on
                out["failed"][key] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
            if not quiet:
                print(f"spectra: {out['computed'] + n_done}/{len(todo) + n_done} members "
                      f"({len(out['failed'])} failed), {time.perf_counter() - started:.0f} s", file=sys.stderr)
    finally:
        driver.stop_ray()
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m raysweep.spectra", description=__doc__.splitlines()[0])
    ap.add_argument("results", help="the results root (--storage of the launch), a local path or a URI")
    ap.add_argument("--sweep", required=True, help="the sweep's name (its folder under RESULTS)")
    ap.add_argument("--filter", help="a pandas query on the trials table, e.g. \"eta >= 0.5 and batch_size == 32\"")
    ap.add_argument("--top-k", type=int, default=20, help="Hessian eigenvalues per snapshot (default 20)")
    ap.add_argument("--lanczos-steps", type=int, help="Lanczos steps (default max(3 top_k, 30))")
    ap.add_argument("--trace", action="store_true", help="also Hutchinson's trace (kinds trace, trace_stderr)")
    ap.add_argument("--trace-samples", type=int, default=20, help="Rademacher probes of the trace (default 20)")
    ap.add_argument("--density", action="store_true", help="also the SLQ density on a grid (density_grid, density)")
    ap.add_argument("--density-probes", type=int, default=4)
    ap.add_argument("--density-steps", type=int, default=40)
    ap.add_argument("--grid-points", type=int, default=101)
    ap.add_argument("--batch", type=int, help="curvature batch size (default: the experiment's, else 1024)")
    ap.add_argument("--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else an embedded local Ray)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from raysweep import driver

    stop = driver.install_stop_signals()  # Ctrl-C / SIGTERM: the members written so far stay; a relaunch goes on
    try:
        return _main(argv)
    finally:
        stop.restore()


def _main(argv: list[str] | None) -> int:
    import os
    import signal

    from raysweep.errors import Interrupted

    args = parse_args(argv)
    try:
        options = SpectraOptions(top_k=args.top_k, lanczos_steps=args.lanczos_steps, trace=args.trace,
                                 trace_samples=args.trace_samples, density=args.density,
                                 density_probes=args.density_probes, density_steps=args.density_steps,
                                 grid_points=args.grid_points, batch=args.batch)
        sweep = storage.resolve(args.results).join(args.sweep)
        out = run(sweep, options, query=args.filter, address=args.address or os.environ.get("RAY_ADDRESS") or None,
                  num_cpus=args.num_cpus, quiet=args.quiet)
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RaysweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"interrupted ({signal.Signals(signum).name}): the members written are kept; relaunch the same "
              "command to compute the rest", file=sys.stderr)
        return 128 + int(signum)
    print(f"spectra of sweep {args.sweep}: {out['computed']} members computed, {out['already']} already there, "
          f"{len(out['failed'])} failed; in {sweep}/{FOLDER}/")
    for key, error in sorted(out["failed"].items()):
        print(f"  {key}: {error}", file=sys.stderr)
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SpectraOptions", "done_keys", "factory_refusal", "factory_rows", "main", "member_rows", "plan",
           "read_spectra", "run", "write_member"]
