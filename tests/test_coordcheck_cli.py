"""``python -m raysweep.coordcheck``: the coord check of a spec's model, as a library and from the command line."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from raysweep.coordcheck import coord_check, fixed_batch, main, reading, spec_combinations
from raysweep.data import build_task
from raysweep.space import load_spec

WIDTHS = "64,128,256"


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "cc.yaml"
    path.write_text(yaml.safe_dump({
        "name": "cc",
        "experiment": {"family": "poly_online", "dim": 16, "steps": 10},
        "space": {"batch_size": [32], "eta": [0.5, 0.25], "width": [64], "depth": [3],
                  "parametrization": ["muP", "SP"], "optimizer": ["SGD"]},
    }))
    return path


def test_one_block_per_combination_with_slopes_and_a_plot(space, tmp_path, capsys):
    png = tmp_path / "cc.png"
    assert main([str(space), "--widths", WIDTHS, "--steps", "3", "--seeds", "1", "--eta", "0.5",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    blocks = [line for line in out.splitlines() if line.startswith("parametrization=")]
    assert blocks == ["parametrization=muP optimizer=SGD lr_rule=study loss=mse depth=3 gamma=1 eta=0.5",
                      "parametrization=SP optimizer=SGD lr_rule=study loss=mse depth=3 gamma=1 eta=0.5"]
    slopes = {}
    for block in out.split("parametrization=")[1:]:
        par = block.split()[0]
        for line in block.splitlines()[2:]:
            if not line.startswith("  "):
                continue  # the "plot: ..." line after the last block
            name, slope = line.split()[:2]
            slopes[par, name] = float(slope)
    assert {k[1] for k in slopes} == {"h1", "h2", "out"}
    assert abs(slopes["muP", "h1"]) < 0.1 and abs(slopes["muP", "h2"]) < 0.1      # muP: width-independent
    assert slopes["SP", "h1"] < -0.35 and slopes["SP", "h2"] < -0.35              # SP: features freeze
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_spec_combinations_take_the_spec_values_or_the_overrides(space):
    spec = load_spec(space)
    assert [(c["parametrization"], c["eta"]) for c in spec_combinations(spec)] == [
        ("muP", 0.5), ("SP", 0.5), ("muP", 0.25), ("SP", 0.25)]
    combos = spec_combinations(spec, etas=[1.0], gammas=[0.5, 2.0])
    assert [(c["parametrization"], c["gamma"]) for c in combos] == [("muP", 0.5), ("muP", 2.0), ("SP", 0.5),
                                                                     ("SP", 2.0)]


def test_library_adam_study_rule_grows_and_unknown_parametrization_is_an_error_block():
    task = build_task({"family": "poly_online", "dim": 16, "data_seed": 0})
    x, y = fixed_batch(task, 32)
    config = {"parametrization": "muP", "optimizer": "Adam", "lr_rule": "study", "loss": "mse", "depth": 3,
              "gamma": 1.0, "eta": 1e-3}
    check = coord_check(config, x, y, n_out=1, widths=(64, 256), seeds=(0,), steps=3)
    assert check.layers == ("h1", "h2", "out") and check.updates.shape == (2, 3)
    assert check.slopes[1] > 0.35 and reading(check.slopes[1]) == "grows with N"  # global sqrt(N) is not muP
    bad = coord_check(config | {"parametrization": "nope"}, x, y, n_out=1, widths=(64, 128), seeds=(0,), steps=1)
    assert bad.error and "nope" in bad.error and "error:" in bad.table()
    assert np.isnan(np.array(bad.slopes, dtype=float)).all()


def test_bad_input_exits_2(space, tmp_path, capsys):
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert main([str(space), "--widths", "64"]) == 2
    assert "--widths" in capsys.readouterr().err


def test_a_linear_student_spec_has_no_width_to_check(tmp_path, capsys):
    path = tmp_path / "lin.yaml"
    path.write_text(yaml.safe_dump({
        "name": "lin", "experiment": {"family": "linear", "model": "linear", "dim": 16, "steps": 10},
        "space": {"batch_size": [8], "eta": [0.5]},
    }))
    assert main([str(path)]) == 2
    assert "experiment.model: a coord check scales an MLP's width" in capsys.readouterr().err


def test_an_optimizer_off_its_defaults_is_checked_as_the_sweep_trains_it(tmp_path, capsys):
    path = tmp_path / "adamw.yaml"
    path.write_text(yaml.safe_dump({
        "name": "w", "experiment": {"family": "poly_online", "dim": 16, "steps": 10},
        "space": {"batch_size": [8], "eta": [0.01], "width": [64], "optimizer": ["AdamW"], "weight_decay": [0.1],
                  "lr_rule": ["mup_adam"]},
    }))
    assert main([str(path), "--widths", "64,128,256", "--steps", "3", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "parametrization=muP optimizer=AdamW lr_rule=mup_adam loss=mse depth=3 gamma=1 eta=0.01 " \
           "weight_decay=0.1" in out.splitlines()


def test_the_general_path_and_the_schedule_move_the_check_as_they_move_training():
    import torch

    task = build_task({"family": "poly_online", "dim": 16, "data_seed": 0}, dtype=torch.float64)
    x, y = fixed_batch(task, 32)
    base = {"parametrization": "muP", "optimizer": "Adam", "lr_rule": "mup_adam", "loss": "mse", "depth": 3,
            "gamma": 1.0, "eta": 1e-2}
    check = lambda config, **kw: coord_check(config, x, y, n_out=1, widths=(64, 128), seeds=(0,), steps=3, **kw)
    adam = check(base).updates
    # AdamW without decay (the general path) is Adam at its defaults (the plain path): the same numbers
    np.testing.assert_allclose(check(base | {"optimizer": "AdamW"}).updates, adam, rtol=1e-10)
    for changed in ({"optimizer": "AdamW", "weight_decay": 0.5}, {"beta1": 0.5}, {"eps": 1e-2}):
        assert not np.allclose(check(base | changed).updates, adam, rtol=1e-6), changed
    sgd = base | {"optimizer": "SGD", "lr_rule": "study", "eta": 0.05}
    assert not np.allclose(check(sgd | {"momentum": 0.9}).updates, check(sgd).updates, rtol=1e-6)
    # a linear warmup over 10 steps: the first three steps run at 1/10, 2/10, 3/10 of eta (far smaller updates)
    warm = check(sgd | {"schedule": "linear", "warmup_steps": 10}, total_steps=100).updates
    assert (warm < 0.5 * check(sgd).updates).all()
