"""Model and data factories for the tests of raysweep.custom (named by import path in specs): bad ones for its checks, and
small good ones."""

import torch

NOT_CALLABLE = 3


def returns_list(**kwargs):
    return [torch.nn.Linear(2, 2)]


def raises(**kwargs):
    raise RuntimeError("the factory broke")


class _Broken(torch.nn.Module):
    def __init__(self, n_out):
        super().__init__()
        self.head = torch.nn.Linear(3, n_out)  # the inputs have 64 features: the forward fails

    def forward(self, x):
        return self.head(x)


def broken_forward(*, n_out, **kwargs):
    return _Broken(n_out)


def wrong_outputs(*, input_shape, **kwargs):
    return torch.nn.Linear(input_shape[0], 3)  # 3 outputs where the task has 10


def data_not_tensors(*, seed):
    return [1, 2, 3, 4]


def data_float_labels(*, seed):
    x = torch.randn(8, 4)
    return x, torch.zeros(8), x, torch.zeros(8)


def mlp(*, width, input_shape, n_out, **kwargs):
    """A plain PyTorch MLP with biases, for a built-in family's flat features."""
    return torch.nn.Sequential(torch.nn.Linear(input_shape[0], width), torch.nn.ReLU(), torch.nn.Linear(width, n_out))


def linear(*, input_shape, n_out, **kwargs):
    """A bias-free linear model f(x) = x W^T, for a built-in family's flat features (closed-form gradients)."""
    return torch.nn.Linear(input_shape[0], n_out, bias=False)
