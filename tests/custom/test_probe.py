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
