"""Flow parameters produced per data point from the encoder's context h."""

from __future__ import annotations

__all__ = ["FlowInit", "FlowParameters"]

import math
from typing import Literal

import torch
from torch import Tensor, nn

FlowInit = Literal["near_identity", "pytorch"]
"""How the map from the context h to a flow step's parameters starts: ``near_identity``
(small weights, zero bias: every step starts close to the identity) or ``pytorch``
(``nn.Linear``'s own initialisation, uniform in ±1/√C for weights and bias, which the
Sylvester-flow authors' code keeps)."""


class FlowParameters(nn.Module):
    r"""Named parameter tensors for one flow step, amortized over the data.

    With a context (``context_features > 0``) every parameter is a linear function
    of h, so each data point gets its own flow, as in Rezende & Mohamed (2015) and
    van den Berg et al. (2018). Without one, the parameters are free and shared by
    all data points.

    Args:
        context_features: size of h, 0 for free parameters.
        init_std: standard deviation of the initial free parameters, or of the
            initial weights of the map from h (its bias starts at 0) with
            ``init: near_identity``.
        init: how the map from h starts (see :data:`FlowInit`); ``pytorch`` needs a
            context.
        **shapes: the shape of each parameter, per data point.

    Example:
        >>> params = FlowParameters(3, u=(4,), b=())
        >>> {name: tuple(p.shape) for name, p in params(torch.randn(5, 3), 5).items()}
        {'u': (5, 4), 'b': (5,)}
        >>> FlowParameters(0, u=(4,))(None, 5)["u"].shape
        torch.Size([5, 4])
    """

    def __init__(
        self,
        context_features: int,
        init_std: float = 0.1,
        init: FlowInit = "near_identity",
        **shapes: tuple[int, ...],
    ):
        super().__init__()
        if init == "pytorch" and not context_features:
            raise ValueError("init='pytorch' initialises the map from the context h, but this flow has no context: "
                             "set model.context_size or model.features_as_context, or use init='near_identity'")
        self.shapes = shapes
        self.sizes = [math.prod(shape) for shape in shapes.values()]
        total = sum(self.sizes)
        self.from_context = nn.Linear(context_features, total) if context_features else None
        if self.from_context is None:
            self.free = nn.Parameter(init_std * torch.randn(total))
        elif init == "near_identity":
            nn.init.normal_(self.from_context.weight, std=init_std / math.sqrt(context_features))
            nn.init.zeros_(self.from_context.bias)

    def forward(self, context: Tensor | None, batch_size: int) -> dict[str, Tensor]:
        """Each parameter with a leading batch dimension: ``(batch_size, *shape)``."""
        if self.from_context is None:
            flat = self.free.expand(batch_size, -1)
        elif context is None:
            raise ValueError("this flow was built to take its parameters from a context h, but got none")
        else:
            flat = self.from_context(context)
        chunks = flat.split(self.sizes, dim=-1)
        return {name: chunk.reshape(-1, *shape) for (name, shape), chunk in zip(self.shapes.items(), chunks)}
