"""Radial flow (Rezende & Mohamed 2015)."""

from __future__ import annotations

__all__ = ["Radial"]

import torch
import torch.nn.functional as F
from nflows.transforms import Transform
from torch import Tensor

from flowzoo.flows.amortized import FlowParameters
from flowzoo.registry import register_flow


@register_flow("radial")
class Radial(Transform):
    r"""One radial step: contract or expand z around a reference point z_ref.

    .. math::
        z' = z + \beta\, h(\alpha, r)\,(z - z_\mathrm{ref}), \quad r = \|z - z_\mathrm{ref}\|, \quad
        h = \frac{1}{\alpha + r},

    .. math::
        \log|\det \partial z'/\partial z| = (D - 1)\log(1 + \beta h) + \log(1 + \beta h - \beta h^2 r),

    with :math:`\alpha = \mathrm{softplus}(\tilde\alpha) > 0` and
    :math:`\beta = -\alpha + \mathrm{softplus}(\tilde\beta) > -\alpha`, which makes the
    step invertible. ``z_ref``, ``α̃`` and ``β̃`` are computed from the context h for each
    data point (free parameters when there is no context). The inverse is exact: the
    radius solves a quadratic.

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).

    References:
        Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015,
        section 4.1 and appendix A.2.

    Example:
        >>> flow = Radial(features=4, context_features=3)
        >>> z, h = torch.randn(5, 4), torch.randn(5, 3)
        >>> z_new, logabsdet = flow(z, context=h)
        >>> torch.allclose(flow.inverse(z_new, context=h)[0], z, atol=1e-5)
        True
    """

    def __init__(self, features: int, context_features: int = 0):
        super().__init__()
        self.features = features
        self.params = FlowParameters(context_features, z_ref=(features,), alpha=(), beta=())

    def _center_alpha_beta(self, context: Tensor | None, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
        p = self.params(context, batch_size)
        alpha = F.softplus(p["alpha"])
        return p["z_ref"], alpha, F.softplus(p["beta"]) - alpha

    def _scale(self, r: Tensor, alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
        """``β h(α, r)`` and the log-det of the step at input radius ``r``."""
        beta_h = beta / (alpha + r)
        logabsdet = (self.features - 1) * torch.log1p(beta_h) + torch.log1p(beta_h * alpha / (alpha + r))
        return beta_h, logabsdet

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_ref, alpha, beta = self._center_alpha_beta(context, z.shape[0])
        offset = z - z_ref
        beta_h, logabsdet = self._scale(offset.norm(dim=-1), alpha, beta)
        return z + beta_h[:, None] * offset, logabsdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Exact: ``r' = r (1 + β/(α + r))`` gives ``r² + (α + β − r') r − α r' = 0``."""
        z_ref, alpha, beta = self._center_alpha_beta(context, z.shape[0])
        offset = z - z_ref
        r_out = offset.norm(dim=-1)
        c = alpha + beta - r_out
        r = (-c + torch.sqrt(c.square() + 4 * alpha * r_out)) / 2
        beta_h, logabsdet = self._scale(r, alpha, beta)
        return z_ref + offset / (1 + beta_h[:, None]), -logabsdet
