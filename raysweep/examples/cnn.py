"""A small CNN on sklearn's bundled digits (8 x 8 images, no download): the model and data factories of
``search_spaces/custom_cnn_digits.yaml``.

``build``: ``depth - 1`` convolutions of ``width`` channels (3 x 3, padding 1, ReLU), a 2 x 2 average pooling and
a linear readout ``head`` of the flattened features (``width * 16 -> n_out`` on 8 x 8 images) divided by
``gamma``. PyTorch's default initialisation; no batch norm
(``batch_norm: true`` adds one after every convolution, which makes the model unfusable in training mode;
``dropout: p`` adds dropout before the readout, unfusable too: its members draw their masks from their own seeds).
"""

from __future__ import annotations

import torch
from torch import nn


class CNN(nn.Module):
    def __init__(self, channels: int, width: int, depth: int, n_out: int, gamma: float, batch_norm: bool,
                 pooled: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for _ in range(max(1, depth - 1)):
            layers.append(nn.Conv2d(c, width, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU())
            c = width
        self.features = nn.Sequential(*layers, nn.AvgPool2d(2), nn.Flatten(),
                                      *([nn.Dropout(dropout)] if dropout else []))
        self.head = nn.Linear(width * pooled, n_out)
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) / self.gamma


def build(*, width: int, depth: int, gamma: float, parametrization: str, input_shape, n_out: int,
          batch_norm: bool = False, dropout: float = 0.0) -> nn.Module:
    """The model factory (``experiment.model.factory: raysweep.examples.cnn:build``)."""
    pooled = (int(input_shape[1]) // 2) * (int(input_shape[2]) // 2)
    return CNN(int(input_shape[0]), width, depth, n_out, gamma, batch_norm, pooled, dropout)


def digits_images(*, seed: int, test_fraction: float = 0.2) -> dict:
    """The data factory (``experiment.factory: raysweep.examples.cnn:digits_images``): the digits family's split
    (:func:`raysweep.data.digits.build_digits`, the same ``data_seed``) as images ``[n, 1, 8, 8]`` in [0, 1]."""
    from raysweep.data.digits import build_digits  # the built-in family's split and scaling

    task = build_digits({"family": "digits", "data_seed": seed, "test_fraction": test_fraction},
                        dtype=torch.float64)
    return {"x_train": task.x_train.reshape(-1, 1, 8, 8), "y_train": task.y_train,
            "x_test": task.x_eval.reshape(-1, 1, 8, 8), "y_test": task.y_eval, "n_out": 10,
            "dataset": "digits_images"}
