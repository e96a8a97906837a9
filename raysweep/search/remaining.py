"""Is anything left to run? Decided from the rows and the Optuna journal alone, before Ray starts.

A relaunch of a finished sweep is a no-op: :func:`nothing_to_run` returns the line to print when every
configuration the search would run already has its row, and None when something is left (or when it cannot tell:
the launcher then goes the usual way). It imports neither Ray nor torch and writes nothing.

- grid / random: every point of the space has a row.
- eta scans: every column's scan (:func:`raysweep.search.scan.scan_column`) is over: nothing to start, nothing
  waited for.
- optuna: every cell's study exists in the journal with at least ``n_trials`` finished trials (counted as the
  searcher counts them) and no trial left RUNNING or WAITING by a stopped driver (those need the searcher to finish
  them from their rows).
"""

from __future__ import annotations

from raysweep.search.scan import columns, rule_of, scan_column
from raysweep.points import AXES, config_key

# optuna loads only for an Optuna search that has a journal to read

__all__ = ["nothing_to_run"]


def nothing_to_run(spec, sweep) -> str | None:
    """The "nothing to run" line for relaunching ``spec`` into ``sweep`` (a :class:`raysweep.storage.Location`), or
    None when some configuration is left to run."""
    from raysweep.results import read_trials  # pyarrow: the launcher imports this module

    status = {r["config_key"]: r["status"] for r in read_trials(sweep).select(["config_key", "status"]).to_pylist()}
    if not status:
        return None
    head = f"sweep {spec.name}: nothing to run"
    if spec.search.algorithm == "optuna":
        n_done = _finished_studies(spec, sweep.local_dir)
        return None if n_done is None else (f"{head} (each of its {n_done} Optuna studies has its "
                                            f"{spec.search.n_trials} finished trials; {len(status)} rows)")
    experiment = spec.experiment.as_dict()
    keyed = [(config_key(experiment, p), p) for p in spec.points()]
    if spec.search.guided:  # the eta scans
        rule, n_skipped = rule_of(spec.search), 0
        for column in columns(keyed):
            decision = scan_column([e for e, _ in column], [status.get(k) for _, k in column], rule)
            if decision.run or decision.waiting:
                return None
            n_skipped += len(decision.skipped)
        n_rows = sum(k in status for k, _ in keyed)
        return (f"{head} (the eta scans are over: {n_rows} configurations have a row; {n_skipped} configurations "
                f"skipped by the {spec.search.algorithm} rule)")
    if any(k not in status for k, _ in keyed):
        return None
    return f"{head} (all {len(keyed)} configurations already have a row)"


def _finished_studies(spec, local_dir) -> int | None:
    """The number of studies when every cell's study is finished, else None. Reads the journal, never writes it."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    from raysweep.search import studies  # optuna

    path = local_dir / studies.JOURNAL
    if not path.is_file():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:  # replays the log; a torn last line is skipped, a torn line before it raises (the usual way repairs it)
        storage = JournalStorage(JournalFileBackend(str(path)))
    except ValueError:
        return None
    known = {s.study_name for s in storage.get_all_studies()}
    cells = studies.cell_grid(spec, AXES)
    for cell in cells:
        name = studies.study_name(spec, cell)
        if name not in known:
            return None
        trials = storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
        if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
            return None
        if sum(studies.counted(t) for t in trials) < spec.search.n_trials:
            return None
    return len(cells)
