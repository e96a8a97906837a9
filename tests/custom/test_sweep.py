"""The shipped model-factory spaces end to end on Ray, CI-sized: rows land exactly once, with the factory named."""

import pytest
import yaml

from raysweep.results import read_curves, read_trials
from raysweep.space import load_spec
from tests.support import ROOT

pytestmark = pytest.mark.ray


def small(name: str, tmp_path, **changes):
    raw = yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())
    for section, values in changes.items():
        raw[section].update(values)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_transformer_space_runs_end_to_end(ray_cluster, tmp_path, run_cli):
    """One small launch of the shipped transformer space (SP and muP, two widths: 4 fused bundles of 2 etas)."""
    path = small("custom_transformer", tmp_path,
                 experiment={"steps": 6, "report_every": 3,
                             "kwargs": {"vocab": 8, "context": 8, "n_train": 64, "n_test": 32}},
                 space={"batch_size": [8], "eta": [0.001, 0.01], "width": [16, 32]})
    proc = run_cli("raysweep.launch", str(path), "--storage", str(tmp_path / "r"), "--address", ray_cluster)
    assert proc.returncode == 0, proc.stderr
    spec = load_spec(path)
    trials = read_trials(tmp_path / "r" / spec.name).to_pandas()
    assert len(trials) == spec.n_points() == 8 and trials.config_key.is_unique
    assert (trials.model == "raysweep.examples.transformer:build").all()
    assert set(trials.status) == {"completed"}, trials[["status", "error"]]
    assert (trials.n_bundle_members == 2).all()
    assert trials.final_eval_accuracy.notna().all() and (trials.lr_effective == trials.eta).all()
    curves = read_curves(tmp_path / "r" / spec.name).to_pandas()
    assert len(curves) == 2 * len(trials) and curves.active_fraction.isna().all()
