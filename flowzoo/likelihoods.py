"""Likelihoods p(x | z) over data, parameterized by the decoder's output."""

from __future__ import annotations

__all__ = ["Bernoulli"]

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowzoo.registry import register_likelihood


@register_likelihood("bernoulli")
class Bernoulli(nn.Module):
    """Independent Bernoulli pixels; the decoder outputs one logit per pixel.

    For binary data such as static binarized MNIST.

    Example:
        >>> likelihood = Bernoulli()
        >>> x = torch.tensor([[[[1.0, 0.0]]]])
        >>> likelihood.log_prob(x, torch.zeros(1, 1, 1, 2))  # two fair coins
        tensor([-1.3863])
    """

    params_per_channel = 1

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """``log p(x|z)`` summed over each example's dimensions.

        ``params`` may carry extra leading sample dimensions; ``x`` broadcasts against them.
        """
        log_p = -F.binary_cross_entropy_with_logits(params, x.expand_as(params), reduction="none")
        return log_p.flatten(-x.dim() + 1).sum(-1)

    def mean(self, params: Tensor) -> Tensor:
        """The expected image (pixel probabilities)."""
        return torch.sigmoid(params)
