"""Model and data factories by import path: the spec's checks, and the driver's import-and-build check before Ray
starts (exit 2 naming the field)."""

import re

import pytest

from raysweep import launch
from raysweep.errors import FactoryError, SpecError
from raysweep.points import config_keys
from raysweep.space import load_spec, parse_spec

CNN = {"factory": "raysweep.examples.cnn:build"}
DIGITS = {"family": "custom", "factory": "raysweep.examples.cnn:digits_images", "epochs": 1}


def spec(model=CNN, **experiment):
    exp = {**DIGITS, "model": model, **experiment}
    return parse_spec({"name": "byom", "experiment": exp,
                       "space": {"batch_size": 32, "eta": [0.1], "width": [8, 16], "depth": 3, "loss": "xent"}})


def test_model_mapping_filled_in_and_keys_stable():
    s = spec()
    model = s.experiment.model
    assert model == {"factory": "raysweep.examples.cnn:build", "kwargs": {}, "readout": None, "base_width": 8,
                     "centred": False}  # base width: the smallest width of the space
    assert s.space.lr_rule == ("raw",)
    again = parse_spec(s.to_dict())
    assert again == s
    assert config_keys(again.experiment.as_dict(), again.points()) == config_keys(s.experiment.as_dict(), s.points())


def test_mlp_config_keys_unchanged():
    s = load_spec("search_spaces/quickstart.yaml")
    assert "model" not in s.experiment.as_dict()


@pytest.mark.parametrize("model, field", [
    ({"factory": "no colon"}, "experiment.model.factory"),
    ({"kwargs": {}}, "experiment.model.factory"),
    ({"factory": "a.b:c", "extra": 1}, "experiment.model"),
    ({"factory": "a.b:c", "readout": 3}, "experiment.model.readout"),
    ("resnet", "experiment.model"),
])
def test_model_mapping_errors(model, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        spec(model)


def test_factory_model_axes():
    as_built = parse_spec({"name": "x", "experiment": {**DIGITS, "model": CNN},
                           "space": {"batch_size": 8, "eta": 0.1, "width": 8, "parametrization": "torch_sp",
                                     "loss": "xent"}})  # PyTorch's default: the module as built, one eta
    assert as_built.points()[0]["parametrization"] == "torch_sp"
    with pytest.raises(SpecError, match="space.lr_rule"):
        parse_spec({"name": "x", "experiment": {**DIGITS, "model": CNN},
                    "space": {"batch_size": 8, "eta": 0.1, "width": 8, "lr_rule": "study", "loss": "xent"}})
    online = parse_spec({"name": "x", "experiment": {"family": "poly_online", "steps": 5, "model": CNN},
                         "space": {"batch_size": 8, "eta": 0.1, "width": 8}})  # fresh blocks, as the MLP path
    assert online.experiment.online
    noisy = parse_spec({"name": "x", "experiment": {**DIGITS, "model": CNN, "grad_noise_scale": True},
                        "space": {"batch_size": 8, "eta": 0.1, "width": 8, "loss": "xent"}})
    assert noisy.experiment.grad_noise_scale == {"batches": 8, "batch_size": None}  # measured by the general path
    with pytest.raises(SpecError, match="experiment.model"):  # the custom family needs a model factory
        parse_spec({"name": "x", "experiment": DIGITS, "space": {"batch_size": 8, "eta": 0.1, "width": 8}})


BAD = [
    ({"model": {"factory": "no_such_module_xyz:build"}}, "experiment.model.factory", "cannot import module"),
    ({"model": {"factory": "tests.support.factories:missing"}}, "experiment.model.factory", "no attribute"),
    ({"model": {"factory": "tests.support.factories:NOT_CALLABLE"}}, "experiment.model.factory", "not callable"),
    ({"model": {"factory": "tests.support.factories:returns_list"}}, "experiment.model.factory", "torch.nn.Module"),
    ({"model": {"factory": "tests.support.factories:raises"}}, "experiment.model.factory", "the factory broke"),
    ({"family": "digits", "model": {"factory": "tests.support.factories:broken_forward"}, "factory": None},
     "experiment.model.factory", "forward failed"),
    ({"family": "digits", "model": {"factory": "tests.support.factories:wrong_outputs"}, "factory": None},
     "experiment.model.factory", r"\[B, \.\.\., 10\]"),
    ({"factory": "tests.support.factories:data_not_tensors"}, "experiment.factory", "must be torch tensors"),
    ({"factory": "tests.support.factories:data_float_labels"}, "experiment.factory", "int64 class labels"),
    ({"model": {"factory": "raysweep.examples.cnn:build", "readout": "nothing"}}, "experiment.model.readout",
     "must name a module"),
]


@pytest.mark.parametrize("change, field, why", BAD)
def test_bad_factories_exit_2_before_ray(tmp_path, capsys, change, field, why):
    exp = {**DIGITS, "model": CNN, **change}
    exp = {k: v for k, v in exp.items() if v is not None}
    lines = ["name: bad", "experiment:"] + [f"  {k}: {v!r}" if isinstance(v, str) else f"  {k}: {v}"
                                            for k, v in exp.items()]
    lines += ["space: {batch_size: 32, eta: 0.1, width: 8, depth: 3, loss: xent, parametrization: muP}"]
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    storage = tmp_path / "results"
    assert launch.main([str(path), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}"), err
    assert re.search(why, err), err
    assert str(path) in err
    assert not (storage / "bad").exists()  # nothing written: Ray was never started


def test_dry_run_names_fusion_or_why_not(tmp_path, capsys):
    for batch_norm, expected in ((False, "one torch.func.vmap"), (True, "fusion: off for this model")):
        path = tmp_path / f"cnn{batch_norm}.yaml"
        path.write_text("name: cnn\nexperiment: {family: custom, factory: 'raysweep.examples.cnn:digits_images', "
                        "epochs: 1, model: {factory: 'raysweep.examples.cnn:build', kwargs: {batch_norm: %s}}}\n"
                        "space: {batch_size: 32, eta: [0.1, 0.2], width: 8, loss: xent, parametrization: muP}\n"
                        % str(batch_norm).lower())
        assert launch.main([str(path), "--storage", str(tmp_path / "r"), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert expected in out and "readout 'head' (detected)" in out, out
    assert "BatchNorm2d in training mode" in out


def test_factory_error_is_spec_error():
    assert issubclass(FactoryError, SpecError)
