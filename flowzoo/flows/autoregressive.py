"""The MADE every autoregressive flow uses, and nflows' masked autoregressive transforms as posterior flows.

Every autoregressive flow (these two and the IAF steps of :mod:`flowzoo.flows.iaf`)
describes its MADE with the same four parameters, turned into nflows' arguments by
:func:`made_arguments`: ``hidden_features`` units per hidden layer, ``hidden_layers``
hidden layers counting the first (where the context h enters), ``residual`` to make
every later one a residual block (two masked layers and a skip, h added in each), and
the ``activation``.

In nflows' convention ``forward`` is the direction computed in one MADE pass. A
posterior flow only runs forward (z0 → zT), so these act as inverse autoregressive
flows here: sampling and log q(zT|x) both cost one pass, and ``inverse`` costs
``features`` passes.
"""

from __future__ import annotations

__all__ = ["made_arguments", "masked_affine_autoregressive", "rq_spline_autoregressive"]

from typing import Any

from nflows.transforms import (
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    Transform,
)

from flowzoo import layers
from flowzoo.layers import Activation
from flowzoo.registry import register_flow
from flowzoo.schema import PositiveFloat, PositiveInt


def made_arguments(
    features: int, context_features: int, hidden_features: int, hidden_layers: int, residual: bool,
    activation: Activation,
) -> dict[str, Any]:
    """The keyword arguments of nflows' ``MADE`` (and of the masked transforms that build one) for a flow's MADE.

    nflows counts the blocks after the first hidden layer (``num_blocks``);
    ``hidden_layers`` counts that layer too.

    Example:
        >>> import torch
        >>> from nflows.transforms.made import MADE
        >>> made = MADE(**made_arguments(4, 3, 16, hidden_layers=2, residual=False, activation="elu"))
        >>> made(torch.randn(5, 4), context=torch.randn(5, 3)).shape, len(made.blocks)
        (torch.Size([5, 4]), 1)
    """
    return {
        "features": features,
        "hidden_features": hidden_features,
        "context_features": context_features or None,
        "num_blocks": hidden_layers - 1,
        "use_residual_blocks": residual,
        "activation": layers.activation(activation),
    }


@register_flow("masked_affine_autoregressive", triangular="lower")
def masked_affine_autoregressive(
    features: int,
    context_features: int = 0,
    hidden_features: PositiveInt = 320,
    hidden_layers: PositiveInt = 2,
    residual: bool = False,
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
        hidden_layers: MADE hidden layers, counting the first (where h enters).
        residual: the hidden layers after the first are residual blocks (two masked
            layers and a skip, h added in each).
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
        **made_arguments(features, context_features, hidden_features, hidden_layers, residual, activation)
    )


@register_flow("rq_spline_autoregressive", triangular="lower")
def rq_spline_autoregressive(
    features: int,
    context_features: int = 0,
    hidden_features: PositiveInt = 320,
    hidden_layers: PositiveInt = 2,
    residual: bool = False,
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
        hidden_layers: MADE hidden layers, counting the first (where h enters).
        residual: the hidden layers after the first are residual blocks (two masked
            layers and a skip, h added in each).
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
        **made_arguments(features, context_features, hidden_features, hidden_layers, residual, activation),
        num_bins=num_bins,
        tails="linear",
        tail_bound=tail_bound,
    )
