"""Small user modules for the any-module autobatch tests (:mod:`raysweep.autobatch.module`): importable by
reference (``tests.support.modules:make_model``), as the CPU trials' fresh processes need. Kept free of pytest so
that a trial process imports only torch and this file."""

from __future__ import annotations

import torch

DIM, HIDDEN = 64, 2048


def make_model() -> torch.nn.Module:
    """A wide one-hidden-layer MLP: cheap steps (no N x N matmul), activations of 8 KiB per sample and tensor,
    0.5 MiB of weights."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(DIM, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1))


def make_batch(batch_size: int):
    return torch.randn(batch_size, DIM), torch.randn(batch_size, 1)


def loss_fn(outputs, targets):
    return torch.nn.functional.mse_loss(outputs, targets)


def not_a_module():
    return "a string"


def vector_loss(outputs, targets):
    return (outputs - targets) ** 2


def one_tensor(batch_size: int):
    return torch.randn(batch_size, DIM)


NOT_CALLABLE = 3
