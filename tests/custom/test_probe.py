"""The probe of a model factory: real steps of the trainer's step, measured."""

import torch

from raysweep.custom.probe import peak_bytes, run_steps
from raysweep.data import build_task
from raysweep.space import parse_spec


def test_probe_runs_the_real_step_of_both_examples():
    for exp, space in (
        ({"family": "custom", "factory": "raysweep.examples.cnn:digits_images", "epochs": 1,
          "model": {"factory": "raysweep.examples.cnn:build", "centred": True}}, {"optimizer": "Adam"}),
        ({"family": "custom", "factory": "raysweep.examples.transformer:markov_language", "steps": 2,
          "kwargs": {"n_train": 32, "n_test": 8, "context": 8, "vocab": 8},
          "model": {"factory": "raysweep.examples.transformer:build"}}, {"parametrization": "muP"}),
    ):
        spec = parse_spec({"name": "p", "experiment": exp,
                           "space": {"batch_size": 8, "eta": 0.1, "width": 16, "loss": "xent", **space}})
        experiment = spec.experiment.as_dict()
        task = build_task(experiment, dtype=torch.float32)
        point = spec.points()[0]
        run_steps(experiment, task, point, n_members=2, batch_size=8, mode="val", steps=1)
        m = peak_bytes(experiment, task, point, n_members=2, batch_size=8)
        assert m["status"] == "ok" and m["peak_bytes"] >= 0


def test_the_probe_takes_one_reports_instruments_as_the_trainer_does(monkeypatch):
    """With curvature and the noise scale on, a train-mode probe also runs one measurement of each (their memory is
    the trial's), one stream per member, at the members' parameters; val mode and a plain spec run none."""
    from raysweep.custom import curvature, noise

    calls = []
    monkeypatch.setattr(curvature.CurvatureFeed, "measure",
                        lambda self, members, fn, stream, skip, **kw: calls.append(("curvature", stream, len(self.x))))
    monkeypatch.setattr(noise.NoiseFeed, "estimate",
                        lambda self, members, fn, stream, step, init=None: calls.append(("noise", stream, self.size)))
    base = {"family": "poly_online", "dim": 8, "n_train": 64, "steps": 10,
            "model": {"factory": "tests.support.factories:mlp", "centred": True}}
    for instruments, mode, expected in (
            ({"curvature": {"batch": 128}, "grad_noise_scale": {"batches": 2, "batch_size": 4}}, "train",
             [("curvature", [0, 1, 2], 3), ("noise", [0, 1, 2], 4)]),
            ({"curvature": True}, "val", []), ({}, "train", [])):
        calls.clear()
        spec = parse_spec({"name": "p", "experiment": {**base, **instruments},
                           "space": {"batch_size": 8, "eta": 0.1, "width": 16, "optimizer": "Adam"}})
        experiment = spec.experiment.as_dict()
        run_steps(experiment, build_task(experiment), spec.points()[0], n_members=3, batch_size=8, mode=mode)
        assert calls == expected, instruments
