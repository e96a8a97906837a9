"""raysweep.space: YAML -> SweepSpec. Happy paths, every range form, round trips, points, config keys, and the
error message (field path included) for each kind of malformed spec."""

from __future__ import annotations

import copy
import dataclasses
import glob
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raysweep.errors import SpecError
from raysweep.points import AXES, config_key
from raysweep.space import Experiment, Search, Space, SweepSpec, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
SPACE_FILES = sorted(glob.glob(str(REPO / "search_spaces" / "*.yaml")))

BASE = {
    "name": "t1",
    "experiment": {"family": "poly_online", "steps": 100},
    "space": {"batch_size": [8, 32], "eta": [0.5, 1.0], "width": [64]},
}


def spec_with(**changes) -> dict:
    """BASE with dotted-path changes, e.g. spec_with(**{"space.eta": [0]}); a value of DELETE removes the key."""
    out = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


DELETE = object()


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------- happy paths


def test_happy_path_values_and_types(tmp_path):
    path = write(
        tmp_path,
        """
name: quick.v1
description: a test
experiment:
  family: poly_online
  steps: 300
  dim: 16
space:
  batch_size: [8, 32, 128]
  eta: {pow2: [-2, 4]}
  width: 64
  gamma: [1e-5, 1, 1.0, 1.0e+5]
  optimizer: [sgd, ADAM]
""",
    )
    spec = load_spec(path)
    assert spec.source == str(path)
    assert spec.name == "quick.v1" and spec.description == "a test"
    assert spec.space.batch_size == (8, 32, 128) and all(type(b) is int for b in spec.space.batch_size)
    assert spec.space.eta == (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0) and all(type(e) is float for e in spec.space.eta)
    assert spec.space.width == (64,)
    assert spec.space.gamma == (1e-5, 1.0, 1e5)  # YAML-1.2 floats; 1 and 1.0 are one value
    assert spec.space.optimizer == ("SGD", "Adam")
    assert spec.experiment.params == {"dim": 16, "n_train": 4096, "degree": 2, "noise": 0.0}
    assert spec.experiment.kind == "regression" and spec.experiment.online
    flat = spec.experiment.as_dict()
    assert flat["family"] == "poly_online" and flat["steps"] == 300 and flat["dim"] == 16
    assert flat["eval_samples"] == 2048 and flat["divergence_factor"] == 100.0


def test_defaults():
    spec = parse_spec(BASE)
    s, e = spec.space, spec.experiment
    assert (s.gamma, s.depth, s.seed) == ((1.0,), (3,), (0,))
    assert (s.parametrization, s.optimizer, s.loss, s.lr_rule) == (("muP",), ("SGD",), ("mse",), ("study",))
    assert (e.epochs, e.report_every, e.mse_convention, e.dtype, e.data_seed, e.device) == (
        None, 50, "half_sum", "float32", 0, "auto"
    )  # fmt: skip
    assert spec.search == Search() and spec.search.algorithm == "grid"
    assert (spec.fusion.enabled, spec.fusion.max_members) == (True, 32)
    assert (spec.resources.cpus_per_trial, spec.resources.gpus_per_trial) == (1.0, None)
    assert spec.source == "<string>" and spec.description == ""


def test_family_defaults():
    fixed = parse_spec(spec_with(**{"experiment": {"family": "poly_fixed", "epochs": 3}})).experiment
    assert fixed.params["n_train"] == 1024 and not fixed.online
    digits = parse_spec(spec_with(**{"experiment": {"family": "Digits", "epochs": 2}})).experiment
    assert digits.family == "digits" and digits.kind == "classification"
    assert digits.params == {"test_fraction": 0.2} and digits.eval_samples is None
    teacher = parse_spec(spec_with(**{"experiment.family": "mlp_teacher", "experiment.teacher_parametrization": "sp"}))
    assert teacher.experiment.params["teacher_parametrization"] == "SP" and teacher.experiment.online
    offline = spec_with(**{"experiment": {"family": "mlp_teacher", "online": False, "epochs": 4}})
    assert not parse_spec(offline).experiment.online
    sampled = {"family": "mnist1m_sampled", "path": "x.npz", "max_train_samples": 1000, "steps": 10}
    assert parse_spec(spec_with(experiment=sampled)).experiment.params == {"path": "x.npz", "max_train_samples": 1000}


@pytest.mark.parametrize(
    ("axis", "form", "expected"),
    [
        ("batch_size", {"pow2": [0, 3]}, (1, 2, 4, 8)),
        ("eta", {"pow2": [-2, 0]}, (0.25, 0.5, 1.0)),
        ("eta", {"pow2": [0, 1], "step": 0.5}, (1.0, 1.41421356237, 2.0)),
        ("width", {"pow2": [2, 4], "step": 1.0}, (4, 8, 16)),
        ("eta", {"logspace": [1, 1000, 4]}, (1.0, 10.0, 100.0, 1000.0)),
        ("width", {"logspace": [10, 20, 5]}, (10, 12, 14, 17, 20)),  # rounded half up
        ("batch_size", {"logspace": [1, 2, 5]}, (1, 2)),  # int duplicates dropped
        ("eta", {"logspace": [0.5, 0.5, 1]}, (0.5,)),
        ("seed", {"range": [0, 3]}, (0, 1, 2)),
        ("seed", {"range": [10, 0, -5]}, (10, 5)),
        ("gamma", {"linspace": [0.5, 1.5, 3]}, (0.5, 1.0, 1.5)),
        ("gamma", {"linspace": [0.1, 0.3, 3]}, (0.1, 0.2, 0.3)),
        ("eta", 0.1, (0.1,)),
        ("depth", [3, 2, 3], (3, 2)),
        ("width", [128.0, 64], (128, 64)),
    ],
)
def test_axis_forms(axis, form, expected):
    values = parse_spec(spec_with(**{f"space.{axis}": form})).space.__getattribute__(axis)
    assert values == pytest.approx(expected, rel=1e-12)
    assert all(type(v) is type(expected[0]) for v in values)


def test_enum_canonicalisation():
    space = {"parametrization": ["sp", "MUP", "muP"], "optimizer": "adam", "loss": ["MSE"], "lr_rule": ["MUP_ADAM"]}
    s = parse_spec(spec_with(**{f"space.{k}": v for k, v in space.items()})).space
    assert (s.parametrization, s.optimizer, s.loss, s.lr_rule) == (("SP", "muP"), ("Adam",), ("mse",), ("mup_adam",))
    e = parse_spec(spec_with(**{"experiment.dtype": "FLOAT64", "experiment.device": "CPU"})).experiment
    assert (e.dtype, e.device) == ("float64", "cpu")


def test_round_trip_dict_and_yaml(tmp_path):
    for path in SPACE_FILES + [None]:
        spec = load_spec(path) if path else parse_spec(spec_with(**{"search": {"algorithm": "random", "n_samples": 3}}))
        assert parse_spec(spec.to_dict()) == spec
        assert parse_spec(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec
        again = load_spec(write(tmp_path, spec.to_yaml()))
        assert again == spec and again.to_dict() == spec.to_dict()
        assert hash(again) == hash(spec)


def test_spec_pickles_copies_and_is_read_only():
    spec = load_spec(REPO / "search_spaces" / "study_small_mup.yaml")
    assert pickle.loads(pickle.dumps(spec)) == spec and copy.deepcopy(spec) == spec
    assert json.loads(json.dumps(dataclasses.asdict(spec)))["experiment"]["params"]["max_train_samples"] == 50000
    assert dataclasses.replace(spec, name="other").space == spec.space
    with pytest.raises(TypeError):
        spec.experiment.params["path"] = "elsewhere"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]


def test_repr_shows_only_non_default_fields():
    text = repr(parse_spec(spec_with(**{"experiment.dim": 8})))
    assert "Experiment(family='poly_online', steps=100, params={'dim': 8})" in text
    assert "gamma" not in text and "search" not in text and "fusion" not in text
    assert repr(Search()) == "Search()"


def test_direct_construction_checks_itself():
    space = Space(batch_size={"pow2": [0, 2]}, eta=[1], width=64)
    assert space.batch_size == (1, 2, 4) and space.eta == (1.0,) and space.width == (64,)
    with pytest.raises(SpecError, match=r"space\.eta\[0\]: must be > 0, got 0.0"):
        Space(batch_size=[1], eta=[0.0], width=[1])
    with pytest.raises(SpecError, match=r"experiment\.degree"):
        Experiment(family="digits", epochs=1, params={"degree": 3})
    xent = Space(batch_size=1, eta=1, width=8, loss="XENT")
    spec = SweepSpec(name="x", experiment=Experiment(family="digits", epochs=1), space=xent)
    assert spec.n_points() == 1 and spec.points()[0]["loss"] == "xent"
    with pytest.raises(SpecError, match=r"^space\.loss: must be mse for a regression family"):
        SweepSpec(name="x", experiment=Experiment(family="poly_online", steps=5), space=xent)


# ------------------------------------------------------------------------------------------------------ points


def test_grid_points_count_and_order():
    spec = parse_spec(spec_with(**{"space.seed": [0, 1], "space.optimizer": ["SGD", "Adam"]}))
    points = spec.points()
    assert spec.n_points() == len(points) == 2 * 2 * 1 * 2 * 2
    assert all(list(p) == list(AXES) for p in points)
    assert [(p["batch_size"], p["eta"], p["seed"], p["optimizer"]) for p in points[:5]] == [
        (8, 0.5, 0, "SGD"), (8, 0.5, 0, "Adam"), (8, 0.5, 1, "SGD"), (8, 0.5, 1, "Adam"), (8, 1.0, 0, "SGD"),
    ]  # fmt: skip
    assert points == spec.points()


def test_grid_skips_sgd_with_mup_adam():
    spec = parse_spec(spec_with(**{"space.optimizer": ["SGD", "Adam"], "space.lr_rule": ["study", "mup_adam"]}))
    points = spec.points()
    assert spec.n_points() == len(points) == 2 * 2 * 3
    assert not any(p["optimizer"] == "SGD" and p["lr_rule"] == "mup_adam" for p in points)


@pytest.mark.parametrize("n_samples", [1, 7, 40, 200, 10_000])
def test_random_points_deterministic_distinct(n_samples):
    big = {"space.batch_size": {"pow2": [0, 9]}, "space.eta": {"pow2": [-8, 8]}, "space.seed": {"range": [0, 4]}}
    mapping = spec_with(**big, search={"algorithm": "random", "n_samples": n_samples, "seed": 3})
    spec = parse_spec(mapping)
    points = spec.points()
    grid_size = 10 * 17 * 4
    assert len(points) == spec.n_points() == min(n_samples, grid_size)
    keys = [tuple(p.values()) for p in points]
    assert len(set(keys)) == len(keys)
    assert parse_spec(mapping).points() == points
    other = parse_spec(spec_with(**big, search={"algorithm": "random", "n_samples": n_samples, "seed": 4})).points()
    assert other != points or n_samples >= grid_size


# -------------------------------------------------------------------------------------------------- config_key


_KEY_SCRIPT = (
    "from raysweep.space import parse_spec; from raysweep.points import config_key;"
    "s = parse_spec({'name': 'k', 'experiment': {'family': 'poly_online', 'steps': 10},"
    " 'space': {'batch_size': [4], 'eta': [0.1], 'width': [8], 'gamma': [1e-5]}});"
    "print(config_key(s.experiment.as_dict(), s.points()[0]))"
)


def test_config_key_stable_across_processes():
    keys = set()
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", _KEY_SCRIPT], env=env, capture_output=True, text=True, check=True)
        keys.add(out.stdout.strip())
    assert len(keys) == 1
    (key,) = keys
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    spec = parse_spec(
        {"name": "k", "experiment": {"family": "poly_online", "steps": 10},
         "space": {"batch_size": [4], "eta": [0.1], "width": [8], "gamma": [1e-5]}}
    )  # fmt: skip
    assert config_key(spec.experiment.as_dict(), spec.points()[0]) == key


def test_config_key_changes_with_every_field():
    spec = parse_spec(BASE)
    exp, point = spec.experiment.as_dict(), spec.points()[0]
    key = config_key(exp, point)
    assert config_key(dict(reversed(list(exp.items()))), point) == key  # key order does not matter
    for name, value in exp.items():
        changed = {**exp, name: (value + 1) if isinstance(value, (int, float)) and value is not None else "x"}
        assert config_key(changed, point) != key, name
    for name, value in point.items():
        changed = {**point, name: value + 1 if isinstance(value, (int, float)) else value + "_"}
        assert config_key(exp, changed) != key, name
    assert config_key(exp, {**point, "eta": 1}) != config_key(exp, {**point, "eta": 1.0})  # types matter


# ------------------------------------------------------------------------------------------ files and imports


@pytest.mark.parametrize("path", SPACE_FILES, ids=[os.path.basename(p) for p in SPACE_FILES])
def test_search_space_files_load(path):
    spec = load_spec(path)
    assert Path(path).stem.startswith(spec.name)  # a variant file may share its sweep (e.g. *_muP_SP)
    assert spec.n_points() > 0
    assert Path(path).read_text().startswith("#"), "each file opens with a comment block"


def test_expected_space_files_and_sizes():
    sizes = {Path(p).stem: load_spec(p).n_points() for p in SPACE_FILES}
    assert sizes["quickstart"] == 24
    assert sizes["study_main_grid"] == 17 * 25 * 7
    assert sizes["study_small_mup"] == 3 * 5 * 2 * 2
    assert {"poly_teacher_grid", "width_sweep", "gamma_eta_phase", "digits_temperature"} <= set(sizes)


def test_import_does_not_pull_ray_or_torch():
    code = "import raysweep.space, sys; print('ray' in sys.modules, 'torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ------------------------------------------------------------------------------------------- malformed specs


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ([1, 2], r"^top level: must be a mapping"),
        (spec_with(name=DELETE), r"^name: is required .*got nothing"),
        (spec_with(name="my sweep"), r"^name: must match .*got 'my sweep'"),
        (spec_with(name=".hidden"), r"^name: must match"),
        (spec_with(experimnet={}), r"^experimnet: unknown key; did you mean 'experiment'\?"),
        (spec_with(**{"space.widht": [64]}), r"^space\.widht: unknown key; did you mean 'width'\? \(<string>\)$"),
        (spec_with(**{"space.width": DELETE}), r"^space\.width: is required .*got nothing"),
        (
            spec_with(**{"space.batch_size": [8, 16, -4]}),
            r"^space\.batch_size\[2\]: must be a positive integer, got -4",
        ),
        (spec_with(**{"space.batch_size": [0]}), r"^space\.batch_size\[0\]: must be a positive integer, got 0"),
        (spec_with(**{"space.batch_size": [2.5]}), r"^space\.batch_size\[0\]: must be a positive integer, got 2.5"),
        (spec_with(**{"space.batch_size": True}), r"^space\.batch_size: must be a positive integer, got True"),
        (spec_with(**{"space.eta": [0.0]}), r"^space\.eta\[0\]: must be > 0, got 0.0 \(<string>\)$"),
        (spec_with(**{"space.eta": [-1]}), r"^space\.eta\[0\]: must be > 0, got -1 \("),
        (spec_with(**{"space.gamma": ["big"]}), r"^space\.gamma\[0\]: must be a finite number > 0, got 'big'"),
        (spec_with(**{"space.gamma": [float("nan")]}), r"^space\.gamma\[0\]: must be a finite number"),
        (spec_with(**{"space.depth": [1]}), r"^space\.depth\[0\]: must be an integer >= 2, got 1"),
        (spec_with(**{"space.seed": [-1]}), r"^space\.seed\[0\]: must be an integer >= 0"),
        (
            spec_with(**{"space.parametrization": ["XP"]}),
            r"^space\.parametrization\[0\]: must be one of SP, muP, torch_sp, got 'XP'",
        ),
        (
            spec_with(**{"space.optimizer": "Adma"}),
            r"^space\.optimizer: must be one of SGD, Adam, AdamW, got 'Adma'; did you mean 'Adam'\?",
        ),
        (spec_with(**{"space.optimizer": ["RMSprop"]}), r"^space\.optimizer\[0\]: must be one of SGD, Adam"),
        (spec_with(**{"space.eta": []}), r"^space\.eta: must list at least one value, got \[\]"),
        (spec_with(**{"space.eta": None}), r"^space\.eta: must be a finite number > 0, got None"),
        (
            spec_with(**{"space.eta": {"pow2": [0, 1], "logspace": [1, 2, 2]}}),
            r"^space\.eta: a range form must have exactly one",
        ),
        (spec_with(**{"space.eta": {"powers": [0, 1]}}), r"^space\.eta\.powers: unknown key; did you mean 'pow2'\?"),
        (
            spec_with(**{"space.eta": {"pow2": [3, -2]}}),
            r"^space\.eta\.pow2: must be \[a, b\] with integers .*got \[3, -2\]",
        ),
        (spec_with(**{"space.eta": {"pow2": [0.5, 2]}}), r"^space\.eta\.pow2: must be an integer, got 0.5"),
        (spec_with(**{"space.eta": {"pow2": [0, 20000000]}}), r"^space\.eta\.pow2: must be \[a, b\]"),
        (
            spec_with(**{"space.width": {"pow2": [0, 2], "step": 0.5}}),
            r"^space\.width\.pow2: must give whole numbers .*got 2\*\*0\.5 = 1\.414",
        ),
        (spec_with(**{"space.eta": {"pow2": [0, 2], "step": 0}}), r"^space\.eta\.step: must be > 0, got 0 \("),
        (spec_with(**{"space.eta": {"range": [0, 2], "step": 1}}), r"^space\.eta\.step: only pow2 takes"),
        (spec_with(**{"space.eta": {"range": [1, 4]}}), r"^space\.eta\.range: range is for integer axes"),
        (spec_with(**{"space.width": {"linspace": [1, 4, 4]}}), r"^space\.width\.linspace: linspace is for float axes"),
        (spec_with(**{"space.seed": {"range": [3, 0]}}), r"^space\.seed\.range: must give 1 to"),
        (spec_with(**{"space.seed": {"range": [0, 3, 0]}}), r"^space\.seed\.range: must have a non-zero step"),
        (spec_with(**{"space.eta": {"logspace": [0, 1, 3]}}), r"^space\.eta\.logspace: must be > 0, got 0"),
        (spec_with(**{"space.eta": {"logspace": [1, 2]}}), r"^space\.eta\.logspace: must be a list \[lo, hi, n\]"),
        (spec_with(**{"space.eta": {"linspace": [0, 1, 3]}}), r"^space\.eta\.linspace: must be > 0, got 0.0"),
        (spec_with(**{"space.optimizer": {"range": [0, 1]}}), r"^space\.optimizer: must be a value or a list"),
        (
            spec_with(**{"experiment.family": "mnits"}),
            r"^experiment\.family: must be one of poly_online, .*got 'mnits'; did you mean 'mnist'\?",
        ),
        (spec_with(**{"experiment.family": DELETE}), r"^experiment\.family: is required"),
        (spec_with(experiment=None), r"^experiment: must be a mapping"),
        (spec_with(space=DELETE), r"^space: must be a mapping \(it is required\), got nothing"),
        (spec_with(**{"experiment.steps": 0}), r"^experiment\.steps: must be a positive integer, got 0"),
        (spec_with(**{"experiment.steps": DELETE}), r"^experiment\.steps: is required: poly_online trains online"),
        (spec_with(**{"experiment.epochs": 1}), r"^experiment\.epochs: must be null: poly_online trains online"),
        (
            spec_with(experiment={"family": "digits", "steps": 5, "epochs": 2}),
            r"^experiment\.steps: digits takes exactly one of steps or epochs, got both",
        ),
        (
            spec_with(experiment={"family": "poly_fixed"}),
            r"^experiment\.steps: poly_fixed takes exactly one of steps or epochs, got neither",
        ),
        (
            spec_with(experiment={"family": "digits", "epochs": 2, "degree": 3}),
            r"^experiment\.degree: not a key of family digits \(it belongs to poly_online, poly_fixed\); "
            r"digits takes test_fraction",
        ),
        (spec_with(**{"experiment.degre": 3}), r"^experiment\.degre: unknown key; did you mean 'degree'\?"),
        (spec_with(experiment={"family": "mnist", "epochs": 1}), r"^experiment\.path: is required for family mnist"),
        (
            spec_with(experiment={"family": "mnist1m_sampled", "path": "p", "epochs": 1}),
            r"^experiment\.max_train_samples: is required",
        ),
        (
            spec_with(**{"experiment.dtype": "float16"}),
            r"^experiment\.dtype: must be one of float32, float64, got 'float16'",
        ),
        (spec_with(**{"experiment.divergence_factor": 1}), r"^experiment\.divergence_factor: must be > 1, got 1 \("),
        (spec_with(**{"experiment.divergence_factor": 0.5}), r"^experiment\.divergence_factor: must be > 1"),
        (
            spec_with(**{"experiment.mse_convention": "mean"}),
            r"^experiment\.mse_convention: must be one of half_sum, study",
        ),
        (
            spec_with(**{"experiment.eval_samples": None}),
            r"^experiment\.eval_samples: must be a positive integer, got None",
        ),
        (
            spec_with(**{"experiment.test_fraction": 0.2}),
            r"^experiment\.test_fraction: not a key of family poly_online",
        ),
        (
            spec_with(experiment={"family": "digits", "epochs": 1, "test_fraction": 1.0}),
            r"^experiment\.test_fraction: must be > 0 and < 1, got 1.0",
        ),
        (
            spec_with(experiment={"family": "mlp_teacher", "steps": 5, "online": "yes please"}),
            r"^experiment\.online: must be true or false",
        ),
        (
            spec_with(**{"space.loss": ["mse", "xent"]}),
            r"^space\.loss: must be mse for a regression family.*poly_online",
        ),
        (spec_with(**{"space.lr_rule": ["mup_adam"]}), r"^space\.lr_rule: mup_adam is the per-layer muP Adam rule"),
        (spec_with(search={"algorithm": "random"}), r"^search\.n_samples: is required for random search"),
        (
            spec_with(search={"algorithm": "grid", "n_samples": 10}),
            r"^search\.n_samples: must be null for grid search .*got 10",
        ),
        (spec_with(search={"algorithm": "hyperopt"}), r"^search\.algorithm: must be one of grid, random, optuna, .*got 'hyperopt'"),
        (
            spec_with(search={"max_concurrent": 0}),
            r"^search\.max_concurrent: must be a positive integer or null, got 0",
        ),
        (spec_with(search=[1]), r"^search: must be a mapping"),
        (spec_with(fusion={"enabled": "no"}), r"^fusion\.enabled: must be true or false, got 'no'"),
        (spec_with(fusion={"max_member": 4}), r"^fusion\.max_member: unknown key; did you mean 'max_members'\?"),
        (
            spec_with(resources={"gpus_per_trial": 2}),
            r"^resources\.gpus_per_trial: must be > 0 and <= 1 or null, got 2 \(",
        ),
        (spec_with(resources={"cpus_per_trial": 0}), r"^resources\.cpus_per_trial: must be > 0, got 0 \("),
        (spec_with(description=5), r"^description: must be a string, got 5"),
    ],
)
def test_malformed_spec(mapping, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(mapping)


def test_error_names_the_source_file(tmp_path):
    path = write(tmp_path, yaml.safe_dump(spec_with(**{"space.eta": [0.0]})))
    with pytest.raises(SpecError, match=re.escape(f"space.eta[0]: must be > 0, got 0.0 ({path})")):
        load_spec(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name: x\nspace: {eta: [1, 2\nexperiment: {}\n", r"invalid YAML at line \d+.*starts at line 2"),
        ("name: x\n  bad: indent\n", r"invalid YAML at line 2, column \d+.*line 2: 'bad: indent'"),
        ("", r"empty file"),
        ("# only a comment\n", r"empty file"),
        ("- 1\n- 2\n", r"^top level: must be a mapping .*got \[1, 2\]"),
        ("name: x\nname: y\n", r"invalid YAML at line 2.*duplicate key 'name'"),
    ],
)
def test_malformed_files(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(SpecError, match=match) as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_missing_file_suggests_a_neighbour(tmp_path):
    write(tmp_path, "x", name="quickstart.yaml")
    with pytest.raises(SpecError, match=r"no such search-space file; did you mean .*quickstart\.yaml'\?"):
        load_spec(tmp_path / "quickstrat.yaml")
    with pytest.raises(SpecError, match=r"no such search-space file"):
        load_spec(tmp_path / "nope" / "x.yaml")
    with pytest.raises(SpecError, match=r"is a directory"):
        load_spec(tmp_path)


def test_spec_errors_are_value_errors_with_no_assert():
    with pytest.raises(ValueError):
        parse_spec({})
    assert "assert " not in Path(sys.modules["raysweep.space"].__file__).read_text()
