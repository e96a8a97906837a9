"""Optuna studies of a sweep: the journal, one study per cell, samplers, and how a row becomes a trial state.

Journal: ``<storage>/<name>/optuna.journal``, an ``optuna.storages.JournalStorage`` on a ``JournalFileBackend``:
``optuna.load_study(study_name=..., storage=JournalStorage(JournalFileBackend(path)))`` and ``optuna-dashboard
PATH`` open it while the sweep runs.

Cells: the axes Optuna does not search form a grid; each point of it is a cell with its own study, named
``<sweep>`` when no grid axis has more than one value, else ``<sweep>:<axis>=<value>,...`` over the grid axes that
vary (e.g. ``poly:batch_size=8,width=64``). Distributions: a float axis (eta, gamma) is log-uniform between its
smallest and largest listed value; an integer or text axis is a categorical choice among its listed values.

States (:func:`tell_row`), from the trials row the configuration landed with:

========== ==================================================== =========================================
row status Optuna state                                          user attrs
========== ==================================================== =========================================
completed  COMPLETE, value = the row's final ``search.metric``   config_key, status
pruned     PRUNED (its intermediate values are already there)    config_key, status
diverged   ``diverged_as: worst`` (default): COMPLETE, value =   config_key, status, diverged_step,
           :func:`diverged_value`; ``fail``: FAIL                diverged_as (worst only)
failed     FAIL                                                  config_key, status, error
(no row)   FAIL, not counted towards n_trials                    abandoned: why
========== ==================================================== =========================================

Why ``worst``: Optuna's samplers learn nothing from a FAIL trial (TPE fits its "bad" density to COMPLETE and PRUNED
trials only), so with ``fail`` a study whose range reaches past the stability edge keeps proposing divergent etas.
Told as the worst value so far, a diverged trial joins the bad trials and the sampler moves away from it.

Intermediate values are the metric at every report step (the curve), minus the report where the trial diverged.
A study counts as finished trials those COMPLETE, PRUNED or FAIL without ``abandoned``. The study keeps the best
*completed* point so far in its user attrs (a diverged trial told as worst never is one): ``best`` = {axis:
value, ..., "value", "config_key"} and ``eta_star`` when eta is searched.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import TrialState

from raysweep.errors import RaysweepError

JOURNAL = "optuna.journal"
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
FLOAT_AXES = ("eta", "gamma")
# sampler -> (package it needs beyond optuna, the extra that installs it)
SAMPLER_NEEDS = {"gp": ("scipy", "gp"), "qmc": ("scipy", "qmc"), "cmaes": ("cmaes", "cmaes")}


def check_sampler(name: str) -> None:
    """RaysweepError naming the extra to install when the sampler's package is missing."""
    package, extra = SAMPLER_NEEDS.get(name, (None, None))
    if package and importlib.util.find_spec(package) is None:
        raise RaysweepError(f"search.sampler: {name} needs the package {package!r}, which is not installed; "
                            f"pip install 'raysweep[{extra}]' (or choose tpe or random)")


def make_sampler(name: str, seed: int):
    check_sampler(name)
    samplers = {"tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler,
                "cmaes": optuna.samplers.CmaEsSampler, "qmc": optuna.samplers.QMCSampler,
                "random": optuna.samplers.RandomSampler}  # fmt: skip
    return samplers[name](seed=seed)


def sampler_seed(seed: int, cell: str, n_existing: int) -> int:
    """The sampler's seed: ``search.seed``, the cell (:func:`cell_text`) and the study's trial count. Not the sweep
    or study name: a cell draws the same configurations alone or in a larger sweep, under any ``--name``; the count,
    because a relaunch must not replay the first run's draws."""
    text = f"{seed}|{cell}|{n_existing}".encode()
    return int(hashlib.sha256(text).hexdigest()[:8], 16)


def open_storage(sweep_dir: Path) -> JournalStorage:
    """The sweep's journal. Call under the sweep's writer lock: a lock file or a torn last line left by a killed
    driver is cleared (the writer lock proves that no other raysweep process writes this journal)."""
    path = Path(sweep_dir) / JOURNAL
    lock = Path(str(path) + ".lock")
    if lock.is_symlink() or lock.exists():
        lock.unlink()
    if path.exists() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with open(path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileSymlinkLock(str(path))))


@dataclass
class Cell:
    """One study: its grid values, what Optuna searches, and how many trials it has and wants."""

    name: str
    values: dict
    distributions: dict
    study: optuna.Study
    n_trials: int
    diverged_as: str = "worst"
    n_finished: int = 0
    n_live: int = 0
    waiting: list = field(default_factory=list)

    def wants(self) -> int:
        return self.n_trials - self.n_finished - self.n_live - len(self.waiting)


def distributions(space, axes) -> dict:
    out = {}
    for axis in axes:
        values = getattr(space, axis)
        if axis in FLOAT_AXES and len(values) > 1:
            out[axis] = FloatDistribution(min(values), max(values), log=True)
        else:
            out[axis] = CategoricalDistribution(list(values))
    return out


def cell_grid(spec, all_axes) -> list[dict]:
    """The cells: the product of the axes Optuna does not search (the mup_adam/SGD pairs left out)."""
    grid_axes = [a for a in all_axes if a not in spec.search.optuna_axes]
    cells = [dict(zip(grid_axes, vals)) for vals in itertools.product(*(getattr(spec.space, a) for a in grid_axes))]
    return [c for c in cells if not (c.get("lr_rule") == "mup_adam" and c.get("optimizer", "Adam") not in ("Adam", "AdamW"))]


def study_name(spec, cell: dict) -> str:
    varying = [(a, v) for a, v in cell.items() if len(getattr(spec.space, a)) > 1]
    return spec.name if not varying else spec.name + ":" + ",".join(f"{a}={v}" for a, v in varying)


def cell_text(cell: dict) -> str:
    """The cell's values as canonical text (every grid axis, the constant ones included)."""
    return json.dumps(cell, sort_keys=True, default=str)


def open_cell(spec, storage, cell: dict) -> Cell:
    name = study_name(spec, cell)
    direction = "maximize" if spec.search.direction == "max" else "minimize"
    probe = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True)
    n_existing = len(probe.get_trials(deepcopy=False))
    sampler = make_sampler(spec.search.sampler, sampler_seed(spec.search.seed, cell_text(cell), n_existing))
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    if not n_existing:
        study.set_user_attr("sweep", spec.name)
        study.set_user_attr("cell", cell)
        study.set_user_attr("optuna_axes", list(spec.search.optuna_axes))
        study.set_user_attr("metric", spec.search.metric)
    return Cell(name, cell, distributions(spec.space, spec.search.optuna_axes), study, spec.search.n_trials,
                spec.search.diverged_as or "worst")


def counted(trial) -> bool:
    return trial.state in FINISHED_STATES and "abandoned" not in trial.user_attrs


def curve_values(curve_rows: list[dict], metric: str, status: str) -> dict[int, float]:
    """step -> metric of a configuration's curve rows, finite values only, without the diverged report."""
    rows = sorted(curve_rows, key=lambda r: r["step"])
    if status == "diverged" and rows:
        rows = rows[:-1]
    return {int(r["step"]): float(r[metric]) for r in rows if r.get(metric) is not None and math.isfinite(r[metric])}


def diverged_value(values, initial: float | None, maximize: bool) -> float | None:
    """What a diverged trial tells its study under ``diverged_as: worst``: the worst of the study's finite COMPLETE
    values so far and of ``initial`` (the trial's initial loss for a loss metric, 0 for accuracy): a diverged
    trial is never better than any finished one, nor than not training at all. None when none is finite."""
    finite = [float(v) for v in [*values, initial] if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return min(finite) if maximize else max(finite)


def tell_row(cell: Cell, trial: optuna.trial.Trial, row: dict | None, metric: str, *, why_abandoned: str = "") -> None:
    """Finish a RUNNING Optuna trial from the row its configuration landed with (see the module table)."""
    if row is None:
        trial.set_user_attr("abandoned", why_abandoned or "the trial ended without a row")
        cell.study.tell(trial, state=TrialState.FAIL)
        return
    status = row["status"]
    trial.set_user_attr("status", status)
    if status == "diverged":
        trial.set_user_attr("diverged_step", row.get("diverged_step"))
    if status == "failed":
        trial.set_user_attr("error", row.get("error"))
    value = row.get(f"final_{metric}")
    cell.n_finished += 1
    if status == "completed" and value is not None and math.isfinite(value):
        cell.study.tell(trial, value, state=TrialState.COMPLETE)
        _record_best(cell)
        return
    if status == "diverged" and cell.diverged_as == "worst":
        maximize = cell.study.direction == optuna.study.StudyDirection.MAXIMIZE
        done = [t.value for t in cell.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        worst = diverged_value(done, 0.0 if metric == "eval_accuracy" else row.get("initial_loss"), maximize)
        if worst is not None:
            trial.set_user_attr("diverged_as", "worst")
            cell.study.tell(trial, worst, state=TrialState.COMPLETE)
            return
    # a completed trial without a finite metric cannot be COMPLETE: Optuna would refuse the value
    cell.study.tell(trial, state=TrialState.PRUNED if status == "pruned" else TrialState.FAIL)


def _record_best(cell: Cell) -> None:
    """The best trial whose row completed (``study.best_trial`` may be a diverged one told as worst when no other
    trial finished)."""
    done = [t for t in cell.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("status", "completed") == "completed"]
    if not done:
        return
    sign = -1.0 if cell.study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    best = min(done, key=lambda t: (sign * t.value, t.number))
    cell.study.set_user_attr("best", {**best.params, "value": best.value,
                                      "config_key": best.user_attrs.get("config_key")})
    if "eta" in best.params:
        cell.study.set_user_attr("eta_star", best.params["eta"])


def recover(cell: Cell, rows: dict[str, dict], curves: dict[str, list[dict]], metric: str) -> dict[str, int]:
    """Finish the trials a killed driver left RUNNING: from their row when it landed (intermediate values filled in
    from the curve), else FAIL as abandoned. Sets ``cell.n_finished``. Returns counts by outcome."""
    counts = {"from_row": 0, "abandoned": 0}
    for t in cell.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        key = t.user_attrs.get("config_key")
        row = rows.get(key) if key else None
        trial = optuna.trial.Trial(cell.study, t._trial_id)
        if row is not None:
            for step, value in curve_values(curves.get(key, []), metric, row["status"]).items():
                if step not in t.intermediate_values:
                    trial.report(value, step)
        tell_row(cell, trial, row, metric, why_abandoned="the driver stopped before the trial ended")
        counts["from_row" if row is not None else "abandoned"] += 1
    cell.n_finished = sum(counted(t) for t in cell.study.get_trials(deepcopy=False))
    return counts
