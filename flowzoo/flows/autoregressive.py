"""The MADE every autoregressive flow uses, and nflows' masked autoregressive transforms as posterior flows.

Every autoregressive flow (these two and the IAF steps of :mod:`flowzoo.flows.iaf`)
describes its MADE with the same four parameters, turned into nflows' arguments by
:func:`made_arguments`: ``hidden_features`` units per hidden layer, ``hidden_layers``
hidden layers counting the first (where the context h enters), ``residual`` to make
every later one a residual block (two masked layers and a skip, h added in each), and
the ``activation``. :func:`made` builds the network from them, with the two ways of the
Sylvester-flow authors' IAF as options: h added as it is after the first activation
(:data:`ContextEntry`), and their masks (:data:`MadeMasks`).

In nflows' convention ``forward`` is the direction computed in one MADE pass. A
posterior flow only runs forward (z0 → zT), so these act as inverse autoregressive
flows here: sampling and log q(zT|x) both cost one pass, and ``inverse`` costs
``features`` passes.
"""

from __future__ import annotations

__all__ = ["ContextEntry", "MadeMasks", "made_arguments", "made", "use_block_masks", "masked_affine_autoregressive",
           "rq_spline_autoregressive"]

from typing import Any, Literal

import torch
from nflows.transforms import (
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    Transform,
)
from nflows.transforms.made import MADE, MaskedLinear
from torch import Tensor

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


ContextEntry = Literal["projected", "added_after_activation"]
"""How the context h enters a MADE's first hidden layer: ``projected``, through a linear map
of the step's own, added before the activation, ``act(W z + act(V h))`` (nflows); or
``added_after_activation``, as it is, ``act(W z) + h``, so h must have ``hidden_features``
values and the step has no weights for it (the Sylvester-flow authors' IAF, whose h comes
from one context layer that all steps share: ``model.context_size``)."""

MadeMasks = Literal["cyclic", "blocks"]
"""The MADE's connectivity. ``cyclic``: nflows' degrees, hidden unit j sees ``z_1 … z_d`` with
``d = j mod (D − 1) + 1``, and a unit sees every unit of the layer below of a degree not
above its own. ``blocks``: the Sylvester-flow authors' ``MaskedLinear``, the hidden units in
D consecutive blocks of ``hidden_features / D``, block i seeing ``z_1 … z_i``, and in the
later hidden layers unit j seeing units ``1 … j`` of the layer below (a subset of what its
degree allows). Either way the outputs of latent i see only ``z_{<i}``."""


class _ContextAfterActivationMADE(MADE):
    """nflows' MADE (plain blocks) with h added after the first hidden layer's activation, no weights for it."""

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        hidden = self.activation(self.initial_layer(inputs))
        if context is not None:
            hidden = hidden + context
        for block in self.blocks:
            hidden = block(hidden)
        return self.final_layer(hidden)


def made(
    features: int, context_features: int, hidden_features: int, hidden_layers: int, residual: bool,
    activation: Activation, *, output_multiplier: int = 1, context_entry: ContextEntry = "projected",
    masks: MadeMasks = "cyclic",
) -> MADE:
    """The MADE of an autoregressive flow step: nflows' ``MADE`` from :func:`made_arguments`,
    its context entering as ``context_entry`` says, with ``masks``.

    Raises:
        ValueError: h added after the activation with a residual MADE (whose blocks start with
            an activation of their own) or with a size other than ``hidden_features``; block
            masks with ``hidden_features`` not a multiple of ``features``.

    Example:
        >>> network = made(4, 8, 8, hidden_layers=2, residual=False, activation="elu",
        ...                context_entry="added_after_activation", masks="blocks")
        >>> network(torch.randn(5, 4), context=torch.randn(5, 8)).shape, hasattr(network, "context_layer")
        (torch.Size([5, 4]), False)
    """
    arguments = {**made_arguments(features, context_features, hidden_features, hidden_layers, residual, activation),
                 "output_multiplier": output_multiplier}
    if context_entry == "projected":
        network = MADE(**arguments)
    else:
        if residual:
            raise ValueError("context_entry 'added_after_activation' adds h to a plain first hidden layer; a residual "
                             "MADE's blocks start with an activation of their own: set residual to false")
        if context_features not in (0, hidden_features):
            raise ValueError(f"context_entry 'added_after_activation' adds h to the {hidden_features} hidden units, "
                             f"but h has {context_features} values: make them equal (model.context_size)")
        network = _ContextAfterActivationMADE(**{**arguments, "context_features": None})
    if masks == "blocks":
        use_block_masks(network, features)
    return network


@torch.no_grad()
def use_block_masks(network: MADE, features: int) -> None:
    """Give a built nflows MADE the Sylvester-flow authors' masks (:data:`MadeMasks`), in place."""
    hidden = network.initial_layer.out_features
    if hidden % features:
        raise ValueError(f"masks 'blocks' split the {hidden} hidden units into {features} equal blocks, one per "
                         f"latent: hidden_features must be a multiple of {features}")
    degrees = torch.arange(hidden) // (hidden // features) + 1  # block i (from 1) sees z_1 … z_i
    layers = [layer for layer in network.blocks.modules() if isinstance(layer, MaskedLinear)]
    network.initial_layer.mask.copy_(degrees[:, None] >= torch.arange(1, features + 1))
    for layer in [network.initial_layer, *layers]:
        layer.degrees.copy_(degrees)
    for layer in layers:
        layer.mask.copy_(torch.ones(hidden, hidden).tril())  # unit j sees units 1 … j of the layer below
    final = network.final_layer
    final.mask.copy_(final.degrees[:, None] > degrees)  # the outputs of latent i: blocks < i


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
