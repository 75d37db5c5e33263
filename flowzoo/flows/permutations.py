"""Permutations of the latent order (log-det 0), from nflows."""

from __future__ import annotations

__all__ = ["reverse", "random_permutation"]

from nflows.transforms import RandomPermutation, ReversePermutation, Transform

from flowzoo.registry import register_flow


@register_flow("reverse")
def reverse(features: int) -> Transform:
    """Reverse the order of z, as between IAF steps (nflows ``ReversePermutation``).

    Example:
        >>> import torch
        >>> reverse(3)(torch.tensor([[1.0, 2.0, 3.0]]))
        (tensor([[3., 2., 1.]]), tensor([0.]))
    """
    return ReversePermutation(features)


@register_flow("random_permutation")
def random_permutation(features: int) -> Transform:
    """A fixed random order of z, drawn at build time and saved with the model (nflows ``RandomPermutation``).

    Example:
        >>> import torch
        >>> flow = random_permutation(4)
        >>> z = torch.arange(4.0)[None]
        >>> bool((flow.inverse(flow(z)[0])[0] == z).all())
        True
    """
    return RandomPermutation(features)
