"""Hostile inputs on the bring-your-own-model path: each is refused before Ray starts with one line naming the spec
field (exit 2), nothing written; the model and data factories the specs name are this module's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raysweep import coordcheck, launch
from raysweep.autobatch.__main__ import main as autobatch_main
from raysweep.autobatch.module import find_batch_size
from raysweep.custom.spec import check_factory
from raysweep.errors import SpecError, UserModelError

HERE = "tests.custom.test_hostile:"


# --- model factories -------------------------------------------------------------------------------------------


def mlp(*, width, input_shape, n_out, **kwargs):
    return nn.Sequential(nn.Linear(input_shape[0], width), nn.ReLU(), nn.Linear(width, n_out))


def batch_norm(*, width, input_shape, n_out, **kwargs):
    return nn.Sequential(nn.Linear(input_shape[0], width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, n_out))


class _Wrapped(nn.Module):
    def __init__(self, inner, how):
        super().__init__()
        self.inner, self.how = inner, how

    def forward(self, x):
        out = self.inner(x)
        return out.half() if self.how == "half" else out[:2] if self.how == "first_two" else out


def half(**kwargs):
    return _Wrapped(mlp(**kwargs), "half")  # float16 outputs: a loss column float32 cannot trust


def first_two(**kwargs):
    return _Wrapped(mlp(**kwargs), "first_two")  # fine on the check's two inputs, wrong on any other batch


class _Parameterless(nn.Module):
    def forward(self, x):
        return x[:, :3].clone()


def no_parameters(**kwargs):
    return _Parameterless()


def integer_parameter(**kwargs):
    model = mlp(**kwargs)
    model.register_parameter("count", nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False))
    return model


_BUILT: dict = {}


def one_instance(*, input_shape, n_out, **kwargs):
    return _BUILT.setdefault("model", mlp(width=8, input_shape=input_shape, n_out=n_out))  # one object for every call


def exits(**kwargs):
    raise SystemExit(3)


# --- data factories --------------------------------------------------------------------------------------------


def data(*, seed, n=64, n_out=None, labels=3, corrupt=None):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, labels, (n,), generator=g)
    x_test, y_test = x[:16].clone(), y[:16].clone()
    if corrupt == "nan":
        x[3, 1] = float("nan")
    elif corrupt == "int_test":
        x_test = x_test.long()
    elif corrupt == "meta":
        x = x.to("meta")
    elif corrupt == "complex":
        x, x_test = x.to(torch.complex64), x_test.to(torch.complex64)
    elif corrupt == "label_positions":
        y = y[:, None].repeat(1, 3)
    elif corrupt == "many_lines":
        raise RuntimeError("first line\nsecond line\nthird line")
    elif corrupt == "exit":
        raise SystemExit(5)
    out = {"x_train": x, "y_train": y, "x_test": x_test, "y_test": y_test}
    return out if n_out is None else {**out, "n_out": n_out}


def targets_1d(*, seed):
    x, y = torch.randn(32, 4), torch.randn(32)
    return x, y, x[:8], y[:8]


# --- the launch ------------------------------------------------------------------------------------------------


def launch_fails(tmp_path, capsys, experiment=None, model=None, space=None):
    """Launch (not a dry run) a tiny custom spec; assert exit 2, one line, the spec's file named, nothing written;
    the error line."""
    import yaml

    exp = {"family": "custom", "factory": HERE + "data", "epochs": 1,
           "model": {"factory": HERE + "mlp", **(model or {})}, **(experiment or {})}
    spec = {"name": "hostile", "experiment": exp,
            "space": {"batch_size": 8, "eta": 0.1, "width": [8, 16], "loss": "xent", "parametrization": "muP",
                      **(space or {})}}
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(spec))
    storage = tmp_path / "results"
    assert launch.main([str(path), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err, err
    assert not storage.exists()  # Ray never started: nothing written
    return err


REFUSED = [
    # (experiment, model, space): field, text
    ({}, {"factory": HERE + "exits"}, {}, "experiment.model.factory", r"raised SystemExit: 3"),
    ({}, {"factory": HERE + "no_parameters"}, {}, "experiment.model.factory", "has no parameters"),
    ({}, {"factory": HERE + "integer_parameter"}, {}, "experiment.model.factory",
     "parameter count is torch.int64"),
    ({}, {"factory": HERE + "half"}, {}, "experiment.model.factory", r"got torch.float16 \(2, 3\)"),
    ({}, {"factory": HERE + "first_two"}, {}, "experiment.model.factory", r"here \[3, 3\].*got torch.float32 \(2, 3\)"),
    ({}, {"factory": HERE + "batch_norm"}, {"batch_size": [1, 8]}, "experiment.model.factory",
     r"forward failed on inputs \(1, 4\).*Expected more than 1 value"),
    ({}, {"factory": HERE + "one_instance"}, {}, "experiment.model.factory", "returned the same module object"),
    ({}, {"base_width": 2**40}, {}, "experiment.model.base_width", "must be a positive integer <= 1,073,741,823"),
    ({}, {"readout": "0"}, {}, "experiment.model.readout", "must map width-scaled features"),
    ({}, {"kwargs": {"scale": float("nan")}}, {}, "experiment.model.kwargs", "must hold no NaN"),
    ({}, {"kwargs": {"width": 3}}, {}, "experiment.model.kwargs.width", "is passed to the factory by raysweep"),
    ({"kwargs": {"seed": 3}}, {}, {}, "experiment.kwargs.seed", "is passed to the factory by raysweep"),
    ({"kwargs": {"corrupt": "many_lines"}}, {}, {}, "experiment.factory", "raised RuntimeError: first line"),
    ({"kwargs": {"corrupt": "exit"}}, {}, {}, "experiment.factory", "raised SystemExit: 5"),
    ({"kwargs": {"corrupt": "nan"}}, {}, {}, "experiment.factory", "x_train holds NaN or inf"),
    ({"kwargs": {"corrupt": "int_test"}}, {}, {}, "experiment.factory", "x_train and x_test differ in dtype"),
    ({"kwargs": {"corrupt": "meta"}}, {}, {}, "experiment.factory", "x_train must be a CPU tensor, got one on meta"),
    ({"kwargs": {"corrupt": "complex"}}, {}, {}, "experiment.factory", "x_train must be real"),
    ({"kwargs": {"corrupt": "label_positions"}}, {}, {}, "experiment.factory", "y_train and y_test samples differ"),
    ({"kwargs": {"n_out": 2}}, {}, {}, "experiment.factory", r"class labels must be in \[0, n_out = 2\), got 2"),
    ({"kwargs": {"n_out": 0}}, {}, {}, "experiment.factory", r"number of outputs \(n_out\) must be in \[1"),
    ({"kwargs": {"n_out": "3"}}, {}, {}, "experiment.factory", "n_out must be an integer, got '3'"),
    ({"kwargs": {"labels": 2**40}}, {}, {}, "experiment.factory", r"\(max label \+ 1\) must be in \[1, 2\*\*31 - 1\]"),
    ({"factory": HERE + "targets_1d", "kind": "regression"}, {}, {"loss": "mse"}, "experiment.factory",
     r"y_train must be float targets \[n, \.\.\., n_out\]"),
    ({"epochs": 2**62}, {}, {}, "experiment.epochs", r"times the training set \(64 samples\) must fit int64"),
]


@pytest.mark.parametrize("experiment, model, space, field, text", REFUSED)
def test_hostile_input_refused_before_ray(tmp_path, capsys, experiment, model, space, field, text):
    import re

    err = launch_fails(tmp_path, capsys, experiment, model, space)
    assert err.startswith(f"error: {field}: "), err
    assert re.search(text, err), err


def test_a_module_exiting_on_import_is_a_factory_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "exits_on_import.py").write_text("raise SystemExit(7)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    err = launch_fails(tmp_path, capsys, model={"factory": "exits_on_import:build"})
    assert err.startswith("error: experiment.model.factory: cannot import module 'exits_on_import'"), err
    assert "(SystemExit: 7)" in err


def test_import_paths_of_any_identifiers():
    assert check_factory("f", "paquet.modèle:construire") == "paquet.modèle:construire"
    for bad in ("pkg. mod:fn", "..pkg:fn", "pkg.mod:fn:x", "pkg.mod", "pkg.1mod:fn", 3):
        with pytest.raises(SpecError, match="must be an import path"):
            check_factory("f", bad)


def test_coordcheck_runs_the_factory_check_first(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"name: c\nexperiment: {{family: custom, factory: '{HERE}data', epochs: 1, "
                    f"model: {{factory: '{HERE}no_parameters'}}}}\n"
                    "space: {batch_size: 8, eta: 0.1, width: [8, 16], loss: xent}\n")
    assert coordcheck.main([str(path), "--steps", "1", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: experiment.model.factory: the model at width 8 has no parameters"), err


def test_autobatch_refuses_what_it_cannot_size(tmp_path, capsys):
    with pytest.raises(UserModelError, match=r"max_batch_size: must be an integer in \[1, 2\*\*31 - 1\]"):
        find_batch_size(None, None, max_batch_size=2**40)
    path = tmp_path / "c.yaml"  # a factory's trials are measured, not fitted: no target fractions to compare
    path.write_text(f"name: c\nexperiment: {{family: custom, factory: '{HERE}data', epochs: 1, "
                    f"model: {{factory: '{HERE}mlp'}}}}\nspace: {{batch_size: auto, eta: 0.1, width: 8, loss: xent}}\n")
    assert autobatch_main([str(path), "--fractions", "0.5", "--storage", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --fractions: not with a model factory's space"), err
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()
    assert autobatch_main(["--model", HERE + "exits", "--batch", HERE + "data", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "error: --model: raised SystemExit: 3\n"
