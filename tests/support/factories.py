"""Bad model and data factories for the tests of raysweep.custom's checks (named by import path in specs)."""

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


def ntk_mlp(*, width, depth, input_shape, n_out, **kwargs):
    """A bias-free ReLU MLP of ``depth`` nn.Linear layers whose weights are drawn N(0, 1 / fan_in) from the global
    RNG: the NTK parametrization's N(0, 1) draws over sqrt(fan_in)."""
    sizes = [input_shape[0]] + [width] * (depth - 1) + [n_out]
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        linear = torch.nn.Linear(fan_in, fan_out, bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(fan_out, fan_in) / fan_in ** 0.5)
        layers += [linear, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])
