"""Base posteriors q(z0 | x): the distribution the flows start from."""

from __future__ import annotations

__all__ = ["DiagonalGaussian", "SoftplusGaussian"]

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowzoo.registry import register_posterior
from flowzoo.schema import PositiveFloat


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

    def log_std(self, scale: Tensor) -> Tensor:
        """``log σ`` from the scale half of the head's output: that half itself."""
        return scale

    def forward(self, features: Tensor, n_samples: int = 1) -> tuple[Tensor, Tensor]:
        """Draw ``n_samples`` reparameterized samples per example and their log-density.

        Returns:
            ``z0`` of shape ``(n_samples, batch, latent)`` and ``log q(z0|x)`` of shape
            ``(n_samples, batch)``.
        """
        mean, scale = self.head(features).chunk(2, dim=-1)
        log_std = self.log_std(scale)
        eps = torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device)
        z0 = mean + log_std.exp() * eps
        log_q0 = -(0.5 * eps.square() + log_std + 0.5 * math.log(2 * math.pi)).sum(-1)
        return z0, log_q0


@register_posterior("softplus_gaussian")
class SoftplusGaussian(DiagonalGaussian):
    """A diagonal Gaussian whose variance is the softplus of a linear map of the features: the
    Sylvester-flow authors' posterior head.

    As :class:`DiagonalGaussian`, with ``σ² = softplus(a)`` for the scale half ``a`` of the
    linear map, optionally clamped to ``variance_range`` (values outside it get no
    gradient). The authors' two linear heads, one for ``μ`` and one for ``a``, are the
    two halves of this one, with the same parameters; for their 8-bit data sets they clamp
    ``σ²`` to ``[0.01, 7]`` (a ``Hardtanh`` after the softplus), for binary ones not at all.

    Args:
        in_features: size of the encoder features (set by the model).
        latent_size: size of ``z`` (set by the model).
        variance_range: ``[low, high]`` to clamp ``σ²`` to, or null for no clamp.

    References:
        van den Berg, Hasenclever, Tomczak & Welling, "Sylvester Normalizing Flows for
        Variational Inference", UAI 2018, and its released code (models/VAE.py).

    Example:
        >>> q = SoftplusGaussian(in_features=10, latent_size=3, variance_range=[0.01, 7.0])
        >>> z0, log_q0 = q(torch.randn(4, 10), n_samples=2)
        >>> z0.shape, log_q0.shape
        (torch.Size([2, 4, 3]), torch.Size([2, 4]))
    """

    def __init__(self, in_features: int, latent_size: int, variance_range: Sequence[PositiveFloat] | None = None):
        super().__init__(in_features, latent_size)
        if variance_range is not None and (len(variance_range) != 2 or variance_range[0] >= variance_range[1]):
            raise ValueError(f"variance_range must be [low, high] with low < high, got {list(variance_range)}")
        # Clamping σ² to [low, high] is clamping log σ to [log(low) / 2, log(high) / 2].
        self.log_std_range = None if variance_range is None else tuple(math.log(v) / 2 for v in variance_range)

    def extra_repr(self) -> str:
        return f"log_std_range={self.log_std_range}"

    def log_std(self, scale: Tensor) -> Tensor:
        """``log σ = log(softplus(a)) / 2``, clamped to the variance range."""
        log_std = 0.5 * torch.log(F.softplus(scale))
        return log_std if self.log_std_range is None else log_std.clamp(*self.log_std_range)
