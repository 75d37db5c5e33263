"""nflows' masked autoregressive transforms, registered as posterior flows.

In nflows' convention ``forward`` is the direction computed in one MADE pass. A
posterior flow only runs forward (z0 → zT), so these act as inverse autoregressive
flows here: sampling and log q(zT|x) both cost one pass, and ``inverse`` costs
``features`` passes.
"""

from __future__ import annotations

__all__ = ["masked_affine_autoregressive", "rq_spline_autoregressive"]

from nflows.transforms import (
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    Transform,
)

from flowzoo import layers
from flowzoo.layers import Activation
from flowzoo.registry import register_flow
from flowzoo.schema import NonNegativeInt, PositiveFloat, PositiveInt


@register_flow("masked_affine_autoregressive", triangular="lower")
def masked_affine_autoregressive(
    features: int,
    context_features: int = 0,
    hidden_features: PositiveInt = 320,
    num_blocks: NonNegativeInt = 1,
    residual_blocks: bool = False,
    activation: Activation = "elu",
) -> Transform:
    r"""nflows' masked affine autoregressive transform: ``z' = z · (softplus(s) + 10⁻³) + m``, one MADE pass.

    ``[m, s] = MADE(z, h)`` with h added to the first hidden layer; log-det
    ``Σ log(softplus(s_i) + 10⁻³)`` (nflows 0.14). Like :class:`~flowzoo.flows.GatedIAF`
    with a free shift instead of a gate.

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        hidden_features: units in each MADE hidden layer.
        num_blocks: MADE blocks after the first hidden layer.
        residual_blocks: residual blocks (two masked layers and a skip) instead of plain layers.
        activation: MADE nonlinearity.

    References:
        Papamakarios et al., "Masked Autoregressive Flow for Density Estimation",
        NeurIPS 2017. Durkan et al., nflows.

    Example:
        >>> import torch
        >>> flow = masked_affine_autoregressive(4, context_features=3, hidden_features=16)
        >>> flow(torch.randn(5, 4), context=torch.randn(5, 3))[1].shape
        torch.Size([5])
    """
    return MaskedAffineAutoregressiveTransform(
        features=features,
        hidden_features=hidden_features,
        context_features=context_features or None,
        num_blocks=num_blocks,
        use_residual_blocks=residual_blocks,
        activation=layers.activation(activation),
    )


@register_flow("rq_spline_autoregressive", triangular="lower")
def rq_spline_autoregressive(
    features: int,
    context_features: int = 0,
    hidden_features: PositiveInt = 320,
    num_blocks: NonNegativeInt = 1,
    residual_blocks: bool = False,
    activation: Activation = "elu",
    num_bins: PositiveInt = 8,
    tail_bound: PositiveFloat = 5.0,
) -> Transform:
    r"""nflows' autoregressive rational-quadratic spline: a monotone spline per latent, one MADE pass.

    Each ``z_i`` goes through a monotone rational-quadratic spline with ``num_bins``
    bins on ``[-tail_bound, tail_bound]`` whose knots come from ``MADE(z_{<i}, h)``;
    outside that interval the map is the identity (linear tails).

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        hidden_features: units in each MADE hidden layer.
        num_blocks: MADE blocks after the first hidden layer.
        residual_blocks: residual blocks (two masked layers and a skip) instead of plain layers.
        activation: MADE nonlinearity.
        num_bins: spline bins per latent.
        tail_bound: half-width of the interval where the spline acts.

    References:
        Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows", NeurIPS 2019.

    Example:
        >>> import torch
        >>> flow = rq_spline_autoregressive(4, context_features=3, hidden_features=16)
        >>> flow(torch.randn(5, 4), context=torch.randn(5, 3))[1].shape
        torch.Size([5])
    """
    return MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
        features=features,
        hidden_features=hidden_features,
        context_features=context_features or None,
        num_bins=num_bins,
        tails="linear",
        tail_bound=tail_bound,
        num_blocks=num_blocks,
        use_residual_blocks=residual_blocks,
        activation=layers.activation(activation),
    )
