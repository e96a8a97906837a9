"""The probe of a model factory: real steps of the trainer's step, measured; the batch-size search's sequence."""

import torch

from raysweep.custom.probe import largest_batch, peak_bytes, run_steps
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


def test_largest_batch_doubles_until_the_first_misfit():
    tried = []

    def fits(b):
        tried.append(b)
        return b * 1000 <= 40_000  # an out-of-memory (or over-budget) step above 40

    assert largest_batch(fits, min_batch_size=4, max_batch_size=1024) == 32
    assert tried == [4, 8, 16, 32, 64]
    assert largest_batch(lambda b: False, min_batch_size=4) is None
    assert largest_batch(lambda b: True, min_batch_size=3, max_batch_size=20) == 12
