"""``python -m raysweep.status RESULTS [--sweep NAME] [--missing]``: where each sweep stands, from its folder alone.

RESULTS is a sweep folder or a storage root (a local path or a URI) whose folders are sweeps. Per sweep: the
configurations its saved spec plans (``<sweep>/spec.yaml``, the spec of its latest launch: the original YAML is not
needed), the rows landed by status, the planned configurations without a row (missing), those of them in progress
(named in the metadata of a mid-trial checkpoint, :func:`checkpointed_keys`), the best completed trial by the
search's metric, and the last launch (``<sweep>/manifest.json``, :mod:`raysweep.manifest`). ``--missing`` lists the
configurations without a row. It only reads: no Ray, no torch, no Optuna, nothing written.

What *planned* counts, per search:

- ``grid``: every point of the space; ``random``: the ``n_samples`` points drawn (the launch's own draw).
- eta scans: every point of the space, an upper bound: the configurations the scan's rule has skipped (decided from
  the rows, as a relaunch decides) never get a row, and are counted as ``skipped``, not missing.
- ``optuna``: the trial budget, ``n_trials`` x the cells (one study per combination of the axes Optuna does not
  search). Configurations are chosen at run time, so *missing* is, per cell, the trials short of ``n_trials`` among
  its rows, and ``--missing`` lists cells. (A trial whose sampler repeated a categorical point shares the earlier
  trial's row, so on such a study missing overstates what is left; a relaunch reads the journal and knows.)

Exit codes: 0 a status printed; 2 no sweep where it looked (the message says where); 1 a results file that is not
readable (named), or storage that does not answer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from raysweep.errors import NoResultsError, RaysweepError, SpecError
from raysweep.fields import parse_yaml
from raysweep.manifest import MANIFEST, read_manifest
from raysweep.search.scan import columns, rule_of, scan_column
from raysweep.points import AXES, config_keys
from raysweep.space import parse_spec

# pyarrow (raysweep.storage, raysweep.results) is imported inside the functions that read a sweep: the Python API
# imports this module, and `import raysweep.api` stays light

__all__ = ["SweepStatus", "checkpointed_keys", "find_sweeps", "main", "read_status", "sweep_status"]

STATUSES = ("completed", "diverged", "failed", "pruned")
CHECKPOINTS = "checkpoints"  # <sweep>/checkpoints/<bundle id>/...: mid-trial checkpoints and their JSON metadata
CHECKPOINT_METADATA_MAX_BYTES = 1 << 20  # a larger .json file there is not metadata: not read
_CONFIG_KEY = re.compile(r"^[0-9a-f]{16}$")  # raysweep.points.config_key's form


@dataclass(frozen=True)
class SweepStatus:
    """Where one sweep stands (see the module docstring for what each count means per search).

    - ``name``, ``sweep``: the sweep's name and folder (a path, or a URI on an object store); ``search``: its
      algorithm (None without a saved spec).
    - ``planned``: configurations (Optuna: trials) the saved spec plans, None without one; ``landed``: rows by
      status (``n_landed``: their sum); ``missing``: planned without a row (None without a spec); ``skipped``:
      configurations an eta scan's rule skipped; ``in_progress``: missing configurations named in a checkpoint's
      metadata.
    - ``best``: the best completed row by the search's metric: ``metric`` (the trials column), ``mode``,
      ``value``, ``config_key`` and the axes' values; None when no row completed.
    - ``last_launch``: the manifest's last entry (start, end, host, address, devices, counts...); ``launches``:
      how many the manifest records.
    - ``missing_configs``: one mapping per missing configuration (``config_key``, the axes, ``checkpointed``), or
      for Optuna per cell with trials left (the cell's axes, ``trials_left``).
    - ``notes``: anything the counts do not say (no saved spec, rows outside the spec, no manifest).
    """

    name: str
    sweep: str
    search: str | None
    planned: int | None
    landed: Mapping[str, int]
    missing: int | None
    skipped: int = 0
    in_progress: int = 0
    best: Mapping | None = None
    last_launch: Mapping | None = None
    launches: int = 0
    missing_configs: tuple[Mapping, ...] = ()
    varying: tuple[str, ...] = ()  # the axes with more than one value: what the text shows of a configuration
    notes: tuple[str, ...] = field(default=())

    @property
    def n_landed(self) -> int:
        return sum(self.landed.values())

    def text(self, missing: bool = False) -> str:
        """The block ``python -m raysweep.status`` prints (``missing``: with the ``--missing`` list)."""
        landed = ", ".join(f"{self.landed.get(s, 0)} {s}" for s in STATUSES)
        others = {s: n for s, n in self.landed.items() if s not in STATUSES}
        landed += "".join(f", {n} {s}" for s, n in others.items())
        unit = "trials" if self.search == "optuna" else "configurations"
        planned = "unknown (no spec.yaml)" if self.planned is None else f"{self.planned} {unit}"
        if self.search is not None:
            planned += f" ({_planned_meaning(self.search)})"
        lines = [f"sweep {self.name} ({self.sweep})",
                 f"  planned:     {planned}",
                 f"  landed:      {self.n_landed} ({landed})",
                 "  missing:     " + ("unknown" if self.missing is None else str(self.missing))
                 + (f" ({self.skipped} more skipped by the scan's rule)" if self.skipped else ""),
                 f"  in progress: {self.in_progress} (checkpointed)",
                 f"  best:        {self._best_text()}",
                 f"  last launch: {self._launch_text()}"]
        lines += [f"  note: {note}" for note in self.notes]
        if missing:
            lines.append(f"  missing {'cells' if self.search == 'optuna' else 'configurations'} "
                         f"({len(self.missing_configs)}):")
            lines += [f"    {self._config_text(c)}" for c in self.missing_configs]
        return "\n".join(lines)

    def _shown_axes(self, values: Mapping) -> str:
        axes = [a for a in (self.varying or ("batch_size", "eta")) if a in values]
        return " ".join(f"{a}={_num(values[a])}" for a in axes)

    def _config_text(self, config: Mapping) -> str:
        if "trials_left" in config:
            cell = " ".join(f"{a}={_num(v)}" for a, v in config.items() if a != "trials_left") or "(the one study)"
            return f"{cell}: {config['trials_left']} trials without a row"
        mark = " (checkpointed)" if config.get("checkpointed") else ""
        return f"{self._shown_axes(config)} [{config['config_key']}]{mark}"

    def _best_text(self) -> str:
        if self.best is None:
            return "none (no completed trial)"
        b = self.best
        return f"{b['metric']} {b['value']:.6g} ({b['mode']}) at {self._shown_axes(b)} [{b['config_key']}]"

    def _launch_text(self) -> str:
        e = self.last_launch
        if e is None:
            return "none recorded (no manifest.json)" if self.launches == 0 else "unreadable"
        start, end = e.get("start"), e.get("end")
        when = f"{start} -> {end}" if end else f"{start} -> no end recorded (still running, or the driver was killed)"
        if end and start:
            try:
                seconds = (datetime.fromisoformat(end.replace("Z", "+00:00"))
                           - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
                when += f" ({seconds:.0f} s)"
            except ValueError:
                pass
        where = e.get("where") or (f"address {e['address']}" if e.get("address") else None)
        parts = [when, f"host {e.get('host')}" + (f", {where}" if where else "")]
        if isinstance(e.get("counts"), Mapping):
            c = e["counts"]
            parts.append(f"landed {sum(c.values())} (" + ", ".join(f"{n} {s}" for s, n in c.items() if n) + ")"
                         if sum(c.values()) else "landed 0")
        if e.get("interrupted"):
            parts.append(f"interrupted ({e['interrupted']})")
        if e.get("error"):
            parts.append(f"error: {e['error']}")
        git = e.get("git")
        if isinstance(git, Mapping) and git.get("commit"):
            parts.append(f"git {str(git['commit'])[:12]}" + {True: " (dirty)", False: " (clean)"}.get(git.get("dirty"), ""))
        return "; ".join(parts) + (f" [{self.launches} launches]" if self.launches > 1 else "")


def _planned_meaning(algorithm: str) -> str:
    return {"grid": "grid", "random": "random search: the points drawn",
            "optuna": "Optuna: n_trials x studies, the trial budget"}.get(
        algorithm, f"{algorithm}: every point, an upper bound")


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------------ reading
def checkpointed_keys(sweep) -> set[str]:
    """The config keys named in the JSON metadata of the sweep's mid-trial checkpoints: every string of the form of
    a config key (16 hex digits), as a key or a value at any depth, of every ``*.json`` file under
    ``<sweep>/checkpoints/`` (dot-prefixed files, being written, and files over
    :data:`CHECKPOINT_METADATA_MAX_BYTES` skipped; one that does not parse is skipped too). Empty when there is no
    such folder. ``sweep``: a local path, a URI or a :class:`raysweep.storage.Location`."""
    import pyarrow.fs as pafs  # pyarrow: see the module's imports

    from raysweep import storage

    folder = storage.resolve(sweep).join(CHECKPOINTS)
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True, allow_not_found=True))
    found: set[str] = set()
    for info in infos:
        if (info.type != pafs.FileType.File or not info.base_name.endswith(".json")
                or info.base_name.startswith(".") or (info.size or 0) > CHECKPOINT_METADATA_MAX_BYTES):
            continue
        try:
            with folder.fs.open_input_stream(info.path) as fh:
                data = json.loads(fh.read().decode())
        except (OSError, ValueError):  # removed meanwhile, or torn: not counted
            continue
        found |= {s for s in _strings(data) if _CONFIG_KEY.match(s)}
    return found


def _strings(data) -> list[str]:
    out, stack = [], [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            out.extend(k for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


def _is_sweep(location) -> bool:
    return (location.join("spec.yaml").exists() or location.join(MANIFEST).exists()
            or location.join("trials").is_dir())


def find_sweeps(results, name: str | None = None) -> list:
    """The sweep folders (:class:`raysweep.storage.Location`) at ``results``: itself when it is a sweep folder (it
    holds ``spec.yaml``, ``manifest.json`` or ``trials/``), else each folder directly under it that is one, sorted
    by name; ``name`` keeps the one of that name. :class:`~raysweep.errors.NoResultsError`, saying where it looked,
    when there is none."""
    import pyarrow.fs as pafs  # pyarrow: see the module's imports

    from raysweep import storage

    root = storage.resolve(results)
    storage.check_reachable(root)
    if _is_sweep(root):
        found = [root]
    else:
        infos = root.fs.get_file_info(pafs.FileSelector(root.path, allow_not_found=True))
        found = [root.join(i.base_name) for i in sorted(infos, key=lambda i: i.base_name)
                 if i.type == pafs.FileType.Directory and not i.base_name.startswith((".", "_"))]
        found = [loc for loc in found if _is_sweep(loc)]
    if name is not None:
        found = [loc for loc in found if loc.name == name]
    if found:
        return found
    what = f"no sweep named {name}" if name is not None else "no sweep"
    if not root.exists():
        raise NoResultsError(f"{what} in {root}: it does not exist")
    raise NoResultsError(f"{what} in {root}: looked for spec.yaml, {MANIFEST} or trials/ in {root} and in each "
                         "folder directly under it")


def _saved_spec(sweep):
    """The spec of the sweep's latest launch, or (None, note)."""
    saved = sweep.join("spec.yaml")
    if not saved.exists():
        return None, "no spec.yaml (planned and missing need the spec a launch saves)"
    try:
        return parse_spec(parse_yaml(saved.read_text(), str(saved)), source=str(saved)), None
    except (SpecError, UnicodeDecodeError) as exc:
        return None, f"spec.yaml does not read back ({str(exc)[:200]})"


def sweep_status(sweep) -> SweepStatus:
    """The :class:`SweepStatus` of one sweep folder (a local path, a URI or a Location)."""
    from raysweep import storage
    from raysweep.results import read_trials  # pyarrow

    location = storage.resolve(sweep)
    spec, note = _saved_spec(location)
    notes = [note] if note else []
    metric = f"final_{spec.search.metric if spec else 'train_loss'}"
    mode = spec.search.direction if spec else "min"
    wanted = ["config_key", "status", *AXES, metric]
    rows = read_trials(location).select(wanted).to_pylist()
    by_key = {r["config_key"]: r for r in rows}
    landed = Counter(r["status"] for r in rows)
    checkpointed = checkpointed_keys(location) - by_key.keys()

    planned = missing = None
    skipped: set[str] = set()
    missing_configs: list[dict] = []
    varying: tuple[str, ...] = ()
    if spec is not None:
        varying = tuple(a for a in AXES if len(getattr(spec.space, a)) > 1)
    if spec is not None and spec.search.algorithm == "optuna":
        cells = optuna_cells(spec)
        planned = spec.search.n_trials * len(cells)
        grid_axes = [a for a in AXES if a not in spec.search.optuna_axes]
        per_cell = Counter(tuple(r[a] for a in grid_axes) for r in rows)
        for cell in cells:
            left = spec.search.n_trials - per_cell[tuple(cell[a] for a in grid_axes)]
            if left > 0:
                missing_configs.append({**{a: v for a, v in cell.items() if a in varying}, "trials_left": left})
        missing = sum(c["trials_left"] for c in missing_configs)
        in_progress = len(checkpointed)
    elif spec is not None:
        points = spec.points()
        keyed = list(zip(config_keys(spec.experiment.as_dict(), points), points))
        planned = len(keyed)
        if spec.search.guided:  # the eta scans: what their rule skipped, decided from the rows as a relaunch does
            rule = rule_of(spec.search)
            for column in columns(keyed):
                status = [by_key[k]["status"] if k in by_key else None for _, k in column]
                skipped |= {column[i][1] for i in scan_column([e for e, _ in column], status, rule).skipped}
        for key, point in keyed:
            if key not in by_key and key not in skipped:
                missing_configs.append({"config_key": key, **point, "checkpointed": key in checkpointed})
        missing = len(missing_configs)
        in_progress = sum(c["checkpointed"] for c in missing_configs)
        outside = len(by_key.keys() - {k for k, _ in keyed})
        if outside:
            notes.append(f"{outside} rows are of configurations outside the saved spec (an earlier launch's space)")
    else:
        in_progress = len(checkpointed)

    done = [r for r in rows if r["status"] == "completed" and r[metric] is not None and math.isfinite(r[metric])]
    best = None
    if done:
        row = (min if mode == "min" else max)(done, key=lambda r: r[metric])
        best = {"metric": metric, "mode": mode, "value": row[metric], "config_key": row["config_key"],
                **{a: row[a] for a in AXES}}

    try:
        manifest = read_manifest(location)
    except (ValueError, UnicodeDecodeError) as exc:
        manifest = {"launches": [None]}
        notes.append(f"{MANIFEST} is unreadable ({str(exc)[:200]})")
    launches = (manifest or {}).get("launches", [])
    last = launches[-1] if launches and isinstance(launches[-1], Mapping) else None
    name = spec.name if spec is not None else location.name
    return SweepStatus(
        name=name, sweep=location.uri, search=spec.search.algorithm if spec else None, planned=planned,
        landed=dict(sorted(landed.items(), key=lambda kv: (STATUSES.index(kv[0]) if kv[0] in STATUSES
                                                           else len(STATUSES), kv[0]))),
        missing=missing, skipped=len(skipped), in_progress=in_progress, best=best, last_launch=last,
        launches=len(launches), missing_configs=tuple(missing_configs), varying=varying, notes=tuple(notes),
    )


def optuna_cells(spec) -> list[dict]:
    """The cells of an Optuna search: the product of the axes Optuna does not search, the mup_adam / SGD pairs left
    out (the cells :func:`raysweep.search.studies.cell_grid` opens a study for, without importing Optuna)."""
    grid_axes = [a for a in AXES if a not in spec.search.optuna_axes]
    cells = [dict(zip(grid_axes, vals)) for vals in itertools.product(*(getattr(spec.space, a) for a in grid_axes))]
    return [c for c in cells if not (c.get("lr_rule") == "mup_adam" and c.get("optimizer", "Adam") != "Adam")]


def read_status(results, name: str | None = None) -> list[SweepStatus]:
    """The :class:`SweepStatus` of every sweep at ``results`` (:func:`find_sweeps`)."""
    return [sweep_status(location) for location in find_sweeps(results, name)]


# ------------------------------------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m raysweep.status", description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a sweep folder, or a storage root holding sweeps (a local path or a URI)")
    ap.add_argument("--sweep", help="only the sweep of this name")
    ap.add_argument("--missing", action="store_true", help="list the configurations that have no row")
    args = ap.parse_args(argv)
    try:
        statuses = read_status(args.results, args.sweep)
    except NoResultsError as exc:
        print(f"raysweep.status: {exc}", file=sys.stderr)
        return 2
    except (RaysweepError, OSError) as exc:  # a corrupt results file, storage that does not answer
        print(f"raysweep.status: {exc}", file=sys.stderr)
        return 1
    try:
        print("\n\n".join(s.text(missing=args.missing) for s in statuses), flush=True)
    except BrokenPipeError:  # `... --missing | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
