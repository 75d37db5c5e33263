"""A conditional affine coupling flow (RealNVP) registered as ``affine_coupling``."""

from __future__ import annotations

__all__ = ["AffineCoupling"]

from typing import Literal

import torch
from nflows.transforms import Transform
from torch import Tensor, nn

from flowzoo.registry import register_flow
from flowzoo.schema import PositiveInt


@register_flow("affine_coupling")
class AffineCoupling(Transform):
    r"""Scale and shift half of z by a network of the other half and the context h.

    .. math::
        z'_a = z_a, \quad s, t = \mathrm{net}(z_a, h), \quad
        z'_b = z_b \odot e^{\tanh(s)} + t, \quad
        \log|\det \partial z'/\partial z| = \textstyle\sum_i \tanh(s_i).

    The bounded log-scale keeps early training stable; the inverse is exact. Use
    ``half: even`` and ``half: odd`` in turn (or ``between: reverse``) so every
    coordinate gets transformed.

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        hidden_features: width of the conditioner network.
        half: which coordinates are transformed: the ``even`` or the ``odd`` ones.

    References:
        Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.

    Example:
        >>> flow = AffineCoupling(features=4, context_features=3, hidden_features=16)
        >>> z, h = torch.randn(5, 4), torch.randn(5, 3)
        >>> torch.allclose(flow.inverse(flow(z, context=h)[0], context=h)[0], z, atol=1e-6)
        True
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden_features: PositiveInt = 128,
        half: Literal["even", "odd"] = "odd",
    ):
        super().__init__()
        transformed = torch.arange(features) % 2 == (1 if half == "odd" else 0)
        self.register_buffer("transformed", transformed, persistent=False)
        n_fixed, n_moved = int((~transformed).sum()), int(transformed.sum())
        self.net = nn.Sequential(
            nn.Linear(n_fixed + context_features, hidden_features),
            nn.ELU(),
            nn.Linear(hidden_features, 2 * n_moved),
        )
        nn.init.zeros_(self.net[-1].weight)  # start as the identity
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        fixed = z[:, ~self.transformed]
        inputs = fixed if context is None else torch.cat([fixed, context], dim=-1)
        s, t = self.net(inputs).chunk(2, dim=-1)
        return torch.tanh(s), t

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._scale_shift(z, context)
        out = z.clone()
        out[:, self.transformed] = z[:, self.transformed] * log_scale.exp() + shift
        return out, log_scale.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._scale_shift(z, context)  # the fixed half is unchanged
        out = z.clone()
        out[:, self.transformed] = (z[:, self.transformed] - shift) * (-log_scale).exp()
        return out, -log_scale.sum(-1)
