"""Small building blocks shared by encoders, decoders and flows."""

from __future__ import annotations

__all__ = ["Activation", "Gated", "activation", "mlp"]

from typing import Callable, Literal, Sequence

import torch
from torch import Tensor, nn

Activation = Literal["elu", "relu", "gelu", "silu", "tanh", "sigmoid"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def activation(name: Activation) -> nn.Module:
    """A fresh activation module by name.

    Example:
        >>> activation("elu")
        ELU(alpha=1.0)
    """
    return _ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], act: Activation, *, final_activation: bool) -> nn.Sequential:
    """Dense layers ``sizes[0] → sizes[1] → ... → sizes[-1]``.

    Example:
        >>> mlp([4, 8, 2], "relu", final_activation=False)
        Sequential(
          (0): Linear(in_features=4, out_features=8, bias=True)
          (1): ReLU()
          (2): Linear(in_features=8, out_features=2, bias=True)
        )
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if final_activation or i < len(sizes) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers)


class Gated(nn.Module):
    r"""A layer gated by a sigmoid of its twin: :math:`h(x) \odot \mathrm{sigmoid}(g(x))`.

    ``h`` and ``g`` are two independent layers of the same kind, both made by ``layer()``;
    ``h`` has no activation of its own, as in the gated convolutions of van den Berg et
    al. (2018).

    Args:
        layer: makes one layer (called twice).

    References:
        Dauphin, Fan, Auli & Grangier, "Language Modeling with Gated Convolutional
        Networks", ICML 2017.

    Example:
        >>> gated = Gated(lambda: nn.Conv2d(1, 4, 3, padding=1))
        >>> gated(torch.zeros(2, 1, 5, 5)).shape
        torch.Size([2, 4, 5, 5])
    """

    def __init__(self, layer: Callable[[], nn.Module]):
        super().__init__()
        self.h = layer()
        self.g = layer()

    def forward(self, x: Tensor) -> Tensor:
        return self.h(x) * torch.sigmoid(self.g(x))
