"""A model factory's sweep with ``batch_size: auto`` and an ``autobatch:`` section on Ray, CPU mode: the trials run at
the measured batch size, each row once; a relaunch of the same shapes reads every measurement from the cache."""

import pytest
import yaml

from raysweep.results import read_trials
from raysweep.space import load_spec
from tests.support import ROOT

pytestmark = pytest.mark.ray


@pytest.mark.slow  # two measured shapes (a fresh process each) and two launches: ~45 s on 2 loaded cores
def test_auto_batch_size_of_a_factory_is_measured_then_cached(ray_cluster, tmp_path, monkeypatch, capsys):
    from raysweep import launch

    for var, value in (("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1"), ("RAY_AIR_NEW_OUTPUT", "0"),
                       ("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1"),
                       ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")):
        monkeypatch.setenv(var, value)  # what launch.main sets by default, restored after the test

    def run(*args):
        capsys.readouterr()
        code = launch.main([*args, "--address", ray_cluster])
        return code, capsys.readouterr().err

    raw = yaml.safe_load((ROOT / "search_spaces" / "custom_cnn_digits.yaml").read_text())
    raw["experiment"].pop("epochs")
    raw["experiment"].update({"steps": 4, "report_every": 2, "device": "cpu"})
    raw["space"].update({"batch_size": ["auto"], "eta": [0.1, 0.2], "width": 8})
    raw["autobatch"] = {"min_batch_size": 8, "max_batch_size": 256}
    path = tmp_path / "fab.yaml"
    path.write_text(yaml.safe_dump(raw))
    storage = tmp_path / "r"
    code, err = run(str(path), "--storage", str(storage))
    assert code == 0, err
    # the eval forward at the eval set size, then the search's largest size (a tiny CNN: it fits)
    assert "autobatch: val n_members=2 batch      360" in err and "train n_members=2 batch      256" in err, err
    assert "autobatch: measured 2 size(s)" in err and "autobatch (cpu-rss on" in err, err
    assert "1 trials sized, 0 infeasible" in err, err
    sweep = storage / load_spec(path).name
    assert (sweep / "autobatch_modules.json").exists()
    df = read_trials(sweep).to_pandas()
    assert len(df) == 2 and df.config_key.is_unique and set(df.status) == {"completed"}, df[["status", "error"]]
    (size,) = set(df.batch_size)
    assert 8 <= size <= 256 and size & (size - 1) == 0  # a power of two within bounds
    assert df.memory_bytes.notna().all() and (df.memory_bytes > 0).all() and df.gpu_share.eq(0).all()

    # two more etas: bundles of the same shapes and sizes -> every measurement from the cache
    raw["space"]["eta"] = [0.1, 0.2, 0.4, 0.8]
    path.write_text(yaml.safe_dump(raw))
    code, err = run(str(path), "--storage", str(storage))
    assert code == 0, err
    assert "every measurement read from the cache" in err and "nothing measured" in err, err
    assert "n_members=2 batch" not in err, err
    df = read_trials(sweep).to_pandas()
    assert len(df) == 4 and df.config_key.is_unique and set(df.status) == {"completed"}
    assert set(df.batch_size) == {size}
