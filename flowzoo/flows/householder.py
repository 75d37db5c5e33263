"""Householder flow (Tomczak & Welling 2016): volume-preserving reflections of z."""

from __future__ import annotations

__all__ = ["Householder", "reflect"]

import torch
from nflows.transforms import Transform
from torch import Tensor

from flowzoo.flows.amortized import FlowParameters
from flowzoo.registry import register_flow
from flowzoo.schema import PositiveInt


def reflect(x: Tensor, v: Tensor) -> Tensor:
    r"""Apply the Householder reflection :math:`H = I - 2 v v^\top / \|v\|^2` to ``x``.

    Args:
        x: ``(batch, features)`` vectors, or ``(batch, features, k)`` columns.
        v: ``(batch, features)`` reflection vectors, one per data point.

    Example:
        >>> reflect(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0]]))
        tensor([[-1.,  2.]])
    """
    v = v / v.norm(dim=-1, keepdim=True)
    if x.dim() == 3:
        return x - 2 * v[:, :, None] * torch.einsum("bd,bdk->bk", v, x)[:, None, :]
    return x - 2 * v * (v * x).sum(-1, keepdim=True)


@register_flow("householder")
class Householder(Transform):
    r"""Reflect z across ``reflections`` hyperplanes: an orthogonal map, log-det 0.

    .. math::
        z' = H_K \cdots H_1 z, \qquad H_k = I - 2\frac{v_k v_k^\top}{\|v_k\|^2}, \qquad
        \log|\det \partial z'/\partial z| = 0.

    The vectors ``v_k`` are computed from the context h for each data point (free
    parameters when there is no context), so the flow rotates a diagonal Gaussian into
    a full-covariance one per data point. Each reflection is its own inverse.

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        reflections: number of reflections K in this step.

    References:
        Tomczak & Welling, "Improving Variational Auto-Encoders using Householder Flow",
        NeurIPS 2016 Bayesian Deep Learning workshop, arXiv:1611.09630.

    Example:
        >>> flow = Householder(features=4, context_features=3, reflections=2)
        >>> z, h = torch.randn(5, 4), torch.randn(5, 3)
        >>> z_new, logabsdet = flow(z, context=h)
        >>> torch.allclose(z_new.norm(dim=-1), z.norm(dim=-1)), logabsdet.abs().max().item()
        (True, 0.0)
    """

    def __init__(self, features: int, context_features: int = 0, reflections: PositiveInt = 1):
        super().__init__()
        self.params = FlowParameters(context_features, init_std=1.0, v=(reflections, features))

    def _vectors(self, context: Tensor | None, batch_size: int) -> Tensor:
        return self.params(context, batch_size)["v"]

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        v = self._vectors(context, z.shape[0])
        for k in range(v.shape[1]):
            z = reflect(z, v[:, k])
        return z, z.new_zeros(z.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        v = self._vectors(context, z.shape[0])
        for k in reversed(range(v.shape[1])):
            z = reflect(z, v[:, k])
        return z, z.new_zeros(z.shape[0])
