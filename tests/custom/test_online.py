"""A model factory on an online teacher (raysweep.custom.train's blocks of fresh samples): the MLP path's own SP
network written as an nn.Module (tests.support.factories:study_mlp) trains on poly_online exactly as the MLP path
trains it (the same stream of blocks, batches inside a block or larger than one), fused bundles equal their members
alone (to 1e-10, as the factory path's other tests), a bundle resumes mid-block bit for bit, and the gradient noise scale draws fresh samples without moving a
training number."""

from __future__ import annotations

import pytest
import torch

from raysweep.custom import train as custom_train
from raysweep.data import build_task
from raysweep.space import parse_spec
from raysweep.train import train_bundle

ONLINE = {"family": "poly_online", "dim": 8, "n_train": 32, "degree": 2, "dtype": "float64", "steps": 24,
          "report_every": 6, "eval_samples": 128}
FACTORY = {"factory": "tests.support.factories:study_mlp", "centred": True, "base_width": 16}
NUMBERS = ("step", "epoch", "samples_seen", "members", "train_loss", "eval_loss", "initial_loss", "diverged")


def spec_of(model, batch_size, **experiment):
    return parse_spec({"name": "o", "experiment": {**ONLINE, **experiment, "model": model},
                       "space": {"batch_size": batch_size, "eta": [0.05, 0.2], "seed": [0, 1], "width": 16,
                                 "depth": 3, "parametrization": "SP", "lr_rule": "raw"}})


def rows(reports):
    return [tuple(getattr(r, k) for k in NUMBERS) for r in reports]


@pytest.mark.parametrize("batch_size", [8, 48])  # 4 batches a block of 32; a batch larger than a block
def test_a_factory_trains_online_as_the_mlp_path_does(batch_size):
    mlp, factory = spec_of("mlp", batch_size), spec_of(FACTORY, batch_size)
    task = build_task(mlp.experiment.as_dict(), dtype=torch.float64)
    ours = list(train_bundle(task, mlp.experiment, mlp.points()))
    theirs = list(custom_train.train_bundle(task, factory.experiment.as_dict(), factory.points()))
    assert [r.step for r in ours] == [r.step for r in theirs] == [6, 12, 18, 24]
    assert all(r.epoch is None for r in theirs) and [r.samples_seen for r in theirs] == [6 * batch_size * i
                                                                                          for i in (1, 2, 3, 4)]
    for a, b in zip(ours, theirs):
        assert a.members == b.members
        for name in ("train_loss", "eval_loss", "initial_loss"):
            assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-10, abs=1e-14), (a.step, name)
    # a member's own training (different eta, seed, stream) moved: the comparison is not of constants
    assert len({round(v, 12) for v in ours[-1].train_loss}) == 4


def test_online_fused_equals_alone_resumes_mid_block_and_measures_noise_without_moving_a_number():
    spec = spec_of(FACTORY, 8, grad_noise_scale={"batches": 4, "batch_size": 4})
    exp = spec.experiment.as_dict()
    task = build_task(exp, dtype=torch.float64)
    whole, state = [], None
    for r in custom_train.train_bundle(task, exp, spec.points()):
        whole.append(r)
        if r.step == 6:  # 48 samples: the middle of the second block
            state = r.export()
    resumed = list(custom_train.train_bundle(task, exp, spec.points(), resume=state))
    assert rows(resumed) == rows(whole[1:])
    assert [r.grad_noise_scale for r in resumed] == [r.grad_noise_scale for r in whole[1:]]
    quiet = spec_of(FACTORY, 8)
    assert rows(custom_train.train_bundle(task, quiet.experiment.as_dict(), quiet.points())) == rows(whole)
    for i, p in enumerate(spec.points()):
        alone = list(custom_train.train_bundle(task, exp, [p]))
        for r_b, r_a in zip(whole, alone):
            slot = r_b.members.index(i)
            # vmap batches a bundle's matmuls (other kernels than one member's): the factory path's 1e-10
            assert (r_b.train_loss[slot], r_b.eval_loss[slot], r_b.grad_sq[slot]) == pytest.approx(
                (r_a.train_loss[0], r_a.eval_loss[0], r_a.grad_sq[0]), rel=1e-10)
