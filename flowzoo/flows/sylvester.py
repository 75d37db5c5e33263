"""Sylvester normalizing flows (van den Berg et al. 2018): orthogonal, Householder and triangular."""

from __future__ import annotations

__all__ = ["Sylvester", "OrthogonalSylvester", "HouseholderSylvester", "TriangularSylvester"]

import torch
from nflows.transforms import InverseNotAvailable, Transform
from torch import Tensor

from flowzoo.flows.amortized import FlowParameters
from flowzoo.flows.householder import reflect
from flowzoo.registry import register_flow
from flowzoo.schema import PositiveInt


class Sylvester(Transform):
    r"""A Sylvester step, a planar flow with an M-unit hidden layer.

    .. math::
        z' = z + Q R \tanh(\tilde R Q^\top z + b), \qquad
        \log|\det \partial z'/\partial z| = \textstyle\sum_{i=1}^M
            \log|1 + R_{ii} \tilde R_{ii} \tanh'\big((\tilde R Q^\top z + b)_i\big)|,

    where Q is ``D × M`` with orthonormal columns and R, R̃ are ``M × M`` upper
    triangular. By Sylvester's determinant identity the Jacobian's determinant is
    that of the triangular ``I_M + diag(tanh') R̃ R``, hence the cheap log-det. The
    diagonals are ``tanh`` of free values, so ``R_ii R̃_ii > -1`` and the step is
    invertible. All parameters are computed from the context h for each data point
    (free parameters when there is no context). Subclasses say how Q is made.

    References:
        van den Berg, Hasenclever, Tomczak & Welling, "Sylvester Normalizing Flows for
        Variational Inference", UAI 2018, section 3.
    """

    def __init__(self, features: int, context_features: int, hidden: int, **q_shapes: tuple[int, ...]):
        super().__init__()
        self.hidden = hidden
        self.params = FlowParameters(
            context_features,
            r=(hidden * (hidden - 1) // 2,),
            r_diag=(hidden,),
            r_tilde=(hidden * (hidden - 1) // 2,),
            r_tilde_diag=(hidden,),
            b=(hidden,),
            **q_shapes,
        )
        self.register_buffer("upper", torch.triu_indices(hidden, hidden, offset=1), persistent=False)

    def orthonormal(self, params: dict[str, Tensor]) -> Tensor:
        """Q, ``(batch, features, hidden)`` with orthonormal columns, from this data point's parameters."""
        raise NotImplementedError

    def _triangular(self, off_diagonal: Tensor, diagonal: Tensor) -> Tensor:
        matrix = torch.diag_embed(torch.tanh(diagonal))
        matrix[:, self.upper[0], self.upper[1]] = off_diagonal
        return matrix

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.params(context, z.shape[0])
        q = self.orthonormal(p)
        r = self._triangular(p["r"], p["r_diag"])
        r_tilde = self._triangular(p["r_tilde"], p["r_tilde_diag"])
        pre = torch.einsum("bij,bkj,bk->bi", r_tilde, q, z) + p["b"]
        activation = torch.tanh(pre)
        z_new = z + torch.einsum("bkm,bmi,bi->bk", q, r, activation)
        diagonal = 1 + torch.tanh(p["r_diag"]) * torch.tanh(p["r_tilde_diag"]) * (1 - activation.square())
        return z_new, torch.log(diagonal.abs()).sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise InverseNotAvailable(
            f"the {type(self).__name__} flow has no closed-form inverse; it is only used in the forward direction"
        )


@register_flow("sylvester_orthogonal")
class OrthogonalSylvester(Sylvester):
    """Sylvester step with Q of ``num_ortho_vecs`` orthonormal columns (O-SNF).

    Q is the orthonormal factor of a QR decomposition of an amortized ``D × M`` matrix.
    (The paper orthogonalises iteratively to a tolerance; QR gives orthonormal columns
    to machine precision, which the log-det formula relies on, without a data-dependent
    loop.)

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        num_ortho_vecs: M, the number of orthonormal columns of Q (at most ``features``;
            ``None`` for ``features``).

    Example:
        >>> flow = OrthogonalSylvester(features=4, context_features=3, num_ortho_vecs=2)
        >>> z_new, logabsdet = flow(torch.randn(5, 4), context=torch.randn(5, 3))
        >>> z_new.shape, logabsdet.shape
        (torch.Size([5, 4]), torch.Size([5]))
    """

    def __init__(self, features: int, context_features: int = 0, num_ortho_vecs: PositiveInt | None = None):
        num_ortho_vecs = num_ortho_vecs or features
        if num_ortho_vecs > features:
            raise ValueError(f"num_ortho_vecs={num_ortho_vecs} exceeds the latent size {features}")
        super().__init__(features, context_features, num_ortho_vecs, q=(features, num_ortho_vecs))

    def orthonormal(self, params: dict[str, Tensor]) -> Tensor:
        q = params["q"]
        with torch.autocast(q.device.type, enabled=False):  # no half-precision QR kernels on CUDA
            return torch.linalg.qr(q.to(torch.promote_types(q.dtype, torch.float32))).Q


@register_flow("sylvester_householder")
class HouseholderSylvester(Sylvester):
    """Sylvester step with Q a product of ``reflections`` Householder reflections (H-SNF), M = D.

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        reflections: number of Householder reflections making up Q.

    Example:
        >>> flow = HouseholderSylvester(features=4, context_features=3, reflections=2)
        >>> z_new, logabsdet = flow(torch.randn(5, 4), context=torch.randn(5, 3))
        >>> z_new.shape, logabsdet.shape
        (torch.Size([5, 4]), torch.Size([5]))
    """

    def __init__(self, features: int, context_features: int = 0, reflections: PositiveInt = 4):
        super().__init__(features, context_features, features, v=(reflections, features))

    def orthonormal(self, params: dict[str, Tensor]) -> Tensor:
        v = params["v"]
        q = torch.eye(self.hidden, dtype=v.dtype, device=v.device).expand(v.shape[0], -1, -1)
        for k in range(v.shape[1]):
            q = reflect(q, v[:, k])
        return q


@register_flow("sylvester_triangular", triangular="upper")
class TriangularSylvester(Sylvester):
    """Sylvester step with Q the identity (T-SNF): ``z' = z + R tanh(R̃ z + b)``, M = D.

    The Jacobian is upper triangular. The paper alternates Q between the identity and
    the order reversal; put ``between: reverse`` on the flow spec for the same effect.

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).

    Example:
        >>> flow = TriangularSylvester(features=4, context_features=3)
        >>> z_new, logabsdet = flow(torch.randn(5, 4), context=torch.randn(5, 3))
        >>> z_new.shape, logabsdet.shape
        (torch.Size([5, 4]), torch.Size([5]))
    """

    def __init__(self, features: int, context_features: int = 0):
        super().__init__(features, context_features, features)

    def orthonormal(self, params: dict[str, Tensor]) -> Tensor:
        batch = params["b"].shape[0]
        return torch.eye(self.hidden, dtype=params["b"].dtype, device=params["b"].device).expand(batch, -1, -1)
