"""Priors p(z) over the latent variables."""

from __future__ import annotations

__all__ = ["StandardNormal"]

import math

import torch
from torch import Tensor, nn

from flowzoo.registry import register_prior


@register_prior("standard_normal")
class StandardNormal(nn.Module):
    """The standard normal prior ``p(z) = N(0, I)``.

    Args:
        latent_size: size of ``z`` (set by the model).

    Example:
        >>> prior = StandardNormal(2)
        >>> prior.log_prob(torch.zeros(1, 2))
        tensor([-1.8379])
    """

    def __init__(self, latent_size: int):
        super().__init__()
        self.latent_size = latent_size
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        return -(0.5 * z.square() + 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, n: int) -> Tensor:
        return torch.randn(n, self.latent_size, device=self._anchor.device, dtype=self._anchor.dtype)
