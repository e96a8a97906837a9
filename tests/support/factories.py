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


class _StudyMLP(torch.nn.Module):
    """raysweep's own SP MLP (raysweep.model) as an nn.Module: bias-free linear layers holding the MLP path's N(0, 1)
    draws, h = relu(h W / sqrt(fan_in)), f = h W_out / (gamma sqrt(N))."""

    def __init__(self, weights, gamma: float, width: int):
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for w in weights:
            layer = torch.nn.Linear(w.shape[0], w.shape[1], bias=False, dtype=w.dtype)
            with torch.no_grad():
                layer.weight.copy_(w.T)
            self.layers.append(layer)
        self.out_scale = 1.0 / (gamma * width**0.5)

    def forward(self, x):
        h = x
        for layer in self.layers[:-1]:
            h = torch.relu(layer(h) / layer.in_features**0.5)
        return self.layers[-1](h) * self.out_scale


def study_mlp(*, width, depth, gamma, input_shape, n_out, **kwargs):
    """The MLP path's SP network and initial weights (build_model seeds torch with the trial's init seed, which
    raysweep.model.init_weights then draws from): the general path trains the same function from the same start."""
    from raysweep import model

    weights = model.init_weights(model.layer_widths(input_shape[0], width, depth, n_out), [torch.initial_seed()],
                                 dtype=torch.float64)
    return _StudyMLP([w[0] for w in weights], gamma, width)


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
