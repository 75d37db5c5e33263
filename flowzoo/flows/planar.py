"""Planar flow (Rezende & Mohamed 2015)."""

from __future__ import annotations

__all__ = ["Planar"]

import torch
import torch.nn.functional as F
from nflows.transforms import InverseNotAvailable, Transform
from torch import Tensor

from flowzoo.flows.amortized import FlowInit, FlowParameters
from flowzoo.registry import register_flow


@register_flow("planar")
class Planar(Transform):
    r"""One planar step: a single hidden unit added to the identity.

    .. math::
        z' = z + \hat u \tanh(w^\top z + b), \qquad
        \log|\det \partial z'/\partial z| = \log|1 + \hat u^\top w \, \tanh'(w^\top z + b)|,

    with :math:`\hat u = u + (m(w^\top u) - w^\top u)\, w / \|w\|^2` and
    :math:`m(x) = -1 + \mathrm{softplus}(x)`, so that :math:`w^\top \hat u > -1` and the
    step is invertible. ``u``, ``w`` and ``b`` are computed from the context h for each
    data point (free parameters when there is no context). There is no closed-form
    inverse; :meth:`inverse` raises ``InverseNotAvailable``.

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        init: how the map from h starts: ``near_identity`` (flowzoo's) or ``pytorch``
            (``nn.Linear``'s default, as in the Sylvester-flow authors' planar VAE).

    References:
        Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015,
        section 4.1 and appendix A.1.

    Example:
        >>> flow = Planar(features=4, context_features=3)
        >>> z_new, logabsdet = flow(torch.randn(5, 4), context=torch.randn(5, 3))
        >>> z_new.shape, logabsdet.shape
        (torch.Size([5, 4]), torch.Size([5]))
    """

    def __init__(self, features: int, context_features: int = 0, init: FlowInit = "near_identity"):
        super().__init__()
        self.params = FlowParameters(context_features, init=init, u=(features,), w=(features,), b=())

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.params(context, z.shape[0])
        u, w = p["u"], p["w"]
        wu = (w * u).sum(-1, keepdim=True)
        u_hat = u + (F.softplus(wu) - 1 - wu) * w / w.square().sum(-1, keepdim=True)
        activation = torch.tanh((w * z).sum(-1) + p["b"])
        slope = 1 - activation.square()
        logabsdet = torch.log((1 + slope * (w * u_hat).sum(-1)).abs())
        return z + u_hat * activation[:, None], logabsdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise InverseNotAvailable("the planar flow has no closed-form inverse; it only runs forward")
