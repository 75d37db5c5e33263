"""Base posteriors q(z0 | x): the distribution the flows start from."""

from __future__ import annotations

__all__ = ["DiagonalGaussian"]

import math

import torch
from torch import Tensor, nn

from flowzoo.registry import register_posterior


@register_posterior("diagonal_gaussian")
class DiagonalGaussian(nn.Module):
    """A diagonal Gaussian whose mean and log-std are a linear map of the encoder features.

    ``z0 = μ + σ ⊙ ε`` with ``ε ~ N(0, I)`` (the reparameterization trick), and
    ``log q(z0|x) = -Σ_i (ε_i²/2 + log σ_i + log(2π)/2)`` computed from ``ε``
    directly, as in equation 16 of the IAF write-up.

    Args:
        in_features: size of the encoder features (set by the model).
        latent_size: size of ``z`` (set by the model).

    References:
        Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.

    Example:
        >>> q = DiagonalGaussian(in_features=10, latent_size=3)
        >>> z0, log_q0 = q(torch.randn(4, 10), n_samples=2)
        >>> z0.shape, log_q0.shape
        (torch.Size([2, 4, 3]), torch.Size([2, 4]))
    """

    def __init__(self, in_features: int, latent_size: int):
        super().__init__()
        self.latent_size = latent_size
        self.head = nn.Linear(in_features, 2 * latent_size)

    def forward(self, features: Tensor, n_samples: int = 1) -> tuple[Tensor, Tensor]:
        """Draw ``n_samples`` reparameterized samples per example and their log-density.

        Returns:
            ``z0`` of shape ``(n_samples, batch, latent)`` and ``log q(z0|x)`` of shape
            ``(n_samples, batch)``.
        """
        mean, log_std = self.head(features).chunk(2, dim=-1)
        eps = torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device)
        z0 = mean + log_std.exp() * eps
        log_q0 = -(0.5 * eps.square() + log_std + 0.5 * math.log(2 * math.pi)).sum(-1)
        return z0, log_q0
