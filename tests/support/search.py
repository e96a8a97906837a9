"""Helpers of the guided-search end-to-end tests: tiny poly_online specs, and reading a journal the way a user
would, in a fresh Python process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support import ROOT

TINY = {"family": "poly_online", "dim": 8, "n_train": 256, "steps": 200, "report_every": 20}


def write_spec(path: Path, name: str, search: dict, experiment: dict | None = None, **space) -> Path:
    spec = {
        "name": name,
        "experiment": {**TINY, **(experiment or {})},
        "space": {"batch_size": [16], "eta": [0.1], "width": 16, "depth": 3, **space},
        "search": search,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


_DUMP = """
import json, sys, optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
storage = JournalStorage(JournalFileBackend(sys.argv[1]))
out = {}
for summary in optuna.get_all_study_summaries(storage):
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    best = study.best_params if any(t.state.name == "COMPLETE" for t in study.trials) else None
    out[study.study_name] = {
        "user_attrs": study.user_attrs, "best_params": best,
        "trials": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                    "intermediate": {str(k): v for k, v in t.intermediate_values.items()},
                    "user_attrs": t.user_attrs} for t in study.trials],
    }
print(json.dumps(out))
"""


def load_studies(journal: Path) -> dict:
    """Every study of a journal, opened with ``optuna.load_study`` in a fresh process: name -> trials, attrs."""
    proc = subprocess.run([sys.executable, "-c", _DUMP, str(journal)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def counted(trial: dict) -> bool:
    """A finished trial that counts towards n_trials (not abandoned by a stopped driver)."""
    return trial["state"] in ("COMPLETE", "PRUNED", "FAIL") and "abandoned" not in trial["user_attrs"]
