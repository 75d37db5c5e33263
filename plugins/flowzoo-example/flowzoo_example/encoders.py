"""A residual MLP encoder registered as ``residual_mlp``."""

from __future__ import annotations

__all__ = ["ResidualMLPEncoder"]

import math
from typing import Sequence

from torch import Tensor, nn

from flowzoo.registry import register_encoder
from flowzoo.schema import NonNegativeInt, PositiveInt


@register_encoder("residual_mlp", test_parameters={"width": 32})  # small, for flowzoo.contracts.check_encoder
class ResidualMLPEncoder(nn.Module):
    """Flatten, project to ``width`` units, then ``blocks`` residual two-layer blocks.

    Args:
        input_shape: shape of one example (set by the model).
        width: units in every layer; also ``out_features``.
        blocks: number of residual blocks.

    Example:
        >>> import torch
        >>> encoder = ResidualMLPEncoder((1, 28, 28), width=32, blocks=2)
        >>> encoder(torch.zeros(3, 1, 28, 28)).shape
        torch.Size([3, 32])
    """

    def __init__(self, input_shape: Sequence[int], width: PositiveInt = 256, blocks: NonNegativeInt = 2):
        super().__init__()
        self.out_features = width
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ELU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.ELU(), nn.Linear(width, width)) for _ in range(blocks)
        )
        self.activation = nn.ELU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.project(x)
        for block in self.blocks:
            h = self.activation(h + block(h))
        return h
