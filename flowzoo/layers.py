"""Small building blocks shared by encoders, decoders and flows."""

from __future__ import annotations

__all__ = ["Activation", "activation", "mlp"]

from typing import Literal, Sequence

from torch import nn

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
