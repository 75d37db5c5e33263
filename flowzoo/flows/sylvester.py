"""Sylvester normalizing flows (van den Berg et al. 2018): orthogonal, Householder and triangular."""

from __future__ import annotations

__all__ = ["Sylvester", "OrthogonalSylvester", "HouseholderSylvester", "TriangularSylvester", "bjorck_orthonormal"]

import warnings
from typing import Literal

import torch
from nflows.transforms import InverseNotAvailable, Transform
from torch import Tensor

from flowzoo.flows.amortized import FlowInit, FlowParameters
from flowzoo.flows.householder import reflect
from flowzoo.registry import register_flow
from flowzoo.schema import PositiveInt

TriangleParameters = Literal["packed", "shared_square"]
"""Where the strict upper triangles of R and R̃ come from: ``packed`` (their M(M−1)/2
values each) or ``shared_square`` (one M × M matrix per step: R's triangle is its strict
upper one, R̃'s its strict lower one transposed, as in the authors' code; its M diagonal
values are computed but never used, so the step has M·(C+1) more parameters, which get
no gradient: the price of the authors' exact parameter count)."""


def bjorck_orthonormal(a: Tensor, tolerance: float, max_steps: int = 100) -> Tensor:
    r"""Orthonormal columns made from ``a`` by the Björck–Bowie iteration, as the Sylvester-flow authors do.

    ``a`` ``(batch, D, M)`` is divided by its Frobenius norm, so that its singular values
    are at most 1 and the iteration converges; then
    :math:`A \leftarrow A\,(3I - A^\top A)/2` until
    :math:`\max_{\text{batch}} \lVert A^\top A - I\rVert_F \le` ``tolerance`` (a
    ``RuntimeWarning`` if ``max_steps`` pass first). The limit is the orthonormal polar
    factor :math:`UV^\top` of :math:`a = U\Sigma V^\top`.

    References:
        Björck & Bowie, "An Iterative Algorithm for Computing the Best Estimate of an
        Orthogonal Matrix", SIAM J. Numer. Anal. 8(2), 1971.

    Example:
        >>> q = bjorck_orthonormal(torch.randn(2, 5, 3), tolerance=1e-6)
        >>> bool(torch.allclose(q.mT @ q, torch.eye(3).expand(2, 3, 3), atol=1e-5))
        True
    """
    a = a / a.flatten(1).norm(dim=1)[:, None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(max_steps):
        a = a @ (1.5 * eye - 0.5 * a.mT @ a)
        error = (a.mT @ a - eye).flatten(1).norm(dim=1).max()
        if error <= tolerance:
            return a
    warnings.warn(f"Björck orthonormalization stopped after {max_steps} steps at ‖QᵀQ − I‖ = {error:.2e} > "
                  f"{tolerance:g}: the log-determinants assume orthonormal columns", RuntimeWarning, stacklevel=2)
    return a


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
    (free parameters when there is no context); ``triangles`` says how R's and R̃'s
    off-diagonals are laid out (:data:`TriangleParameters`). Subclasses say how Q is made.

    References:
        van den Berg, Hasenclever, Tomczak & Welling, "Sylvester Normalizing Flows for
        Variational Inference", UAI 2018, section 3.
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden: int,
        init: FlowInit = "near_identity",
        triangles: TriangleParameters = "packed",
        **q_shapes: tuple[int, ...],
    ):
        super().__init__()
        self.hidden = hidden
        self.triangles = triangles
        if triangles == "packed":
            off_diagonals = {"r": (hidden * (hidden - 1) // 2,), "r_tilde": (hidden * (hidden - 1) // 2,)}
        else:
            off_diagonals = {"square": (hidden, hidden)}
        self.params = FlowParameters(
            context_features,
            init=init,
            **off_diagonals,
            r_diag=(hidden,),
            r_tilde_diag=(hidden,),
            b=(hidden,),
            **q_shapes,
        )
        self.register_buffer("upper", torch.triu_indices(hidden, hidden, offset=1), persistent=False)

    def orthonormal(self, params: dict[str, Tensor]) -> Tensor:
        """Q, ``(batch, features, hidden)`` with orthonormal columns, from this data point's parameters."""
        raise NotImplementedError

    def _strict_upper(self, params: dict[str, Tensor], name: str) -> Tensor:
        if self.triangles == "shared_square":
            square = params["square"]
            return (square if name == "r" else square.mT).triu(1)
        values = params[name]
        matrix = values.new_zeros(len(values), self.hidden, self.hidden)
        matrix[:, self.upper[0], self.upper[1]] = values
        return matrix

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.params(context, z.shape[0])
        q = self.orthonormal(p)
        r_diag, r_tilde_diag = torch.tanh(p["r_diag"]), torch.tanh(p["r_tilde_diag"])
        r = self._strict_upper(p, "r") + torch.diag_embed(r_diag)
        r_tilde = self._strict_upper(p, "r_tilde") + torch.diag_embed(r_tilde_diag)
        pre = torch.einsum("bij,bkj,bk->bi", r_tilde, q, z) + p["b"]
        activation = torch.tanh(pre)
        z_new = z + torch.einsum("bkm,bmi,bi->bk", q, r, activation)
        diagonal = 1 + r_diag * r_tilde_diag * (1 - activation.square())
        return z_new, torch.log(diagonal.abs()).sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise InverseNotAvailable(
            f"the {type(self).__name__} flow has no closed-form inverse; it is only used in the forward direction"
        )


@register_flow("sylvester_orthogonal")
class OrthogonalSylvester(Sylvester):
    """Sylvester step with Q of ``num_ortho_vecs`` orthonormal columns (O-SNF).

    Q is made from an amortized ``D × M`` matrix: by default the orthonormal factor of
    its QR decomposition, which gives orthonormal columns to machine precision (the
    log-det formula relies on them) without a data-dependent loop; or, with
    ``orthogonalization: bjorck``, as in the authors' code, its polar factor by the
    Björck iteration (:func:`bjorck_orthonormal`) to their tolerance, 1e-6 (1e-5 when
    M = D). Both reach every Q; they map the same matrix to different ones.

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        num_ortho_vecs: M, the number of orthonormal columns of Q (at most ``features``;
            ``None`` for ``features``).
        orthogonalization: ``qr`` or ``bjorck``.
        init: ``near_identity`` or ``pytorch`` (the authors'); see :data:`~flowzoo.flows.amortized.FlowInit`.
        triangles: ``packed`` or ``shared_square`` (the authors'); see :data:`TriangleParameters`.

    Example:
        >>> flow = OrthogonalSylvester(features=4, context_features=3, num_ortho_vecs=2)
        >>> z_new, logabsdet = flow(torch.randn(5, 4), context=torch.randn(5, 3))
        >>> z_new.shape, logabsdet.shape
        (torch.Size([5, 4]), torch.Size([5]))
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        num_ortho_vecs: PositiveInt | None = None,
        orthogonalization: Literal["qr", "bjorck"] = "qr",
        init: FlowInit = "near_identity",
        triangles: TriangleParameters = "packed",
    ):
        num_ortho_vecs = num_ortho_vecs or features
        if num_ortho_vecs > features:
            raise ValueError(f"num_ortho_vecs={num_ortho_vecs} exceeds the latent size {features}")
        super().__init__(features, context_features, num_ortho_vecs, init, triangles, q=(features, num_ortho_vecs))
        self.orthogonalization = orthogonalization
        self.tolerance = 1e-5 if num_ortho_vecs == features else 1e-6  # the authors' (models/VAE.py)

    def orthonormal(self, params: dict[str, Tensor]) -> Tensor:
        q = params["q"]
        # Full precision: no half-precision QR kernels on CUDA, and Björck's tolerance is below fp16's resolution.
        with torch.autocast(q.device.type, enabled=False):
            q = q.to(torch.promote_types(q.dtype, torch.float32))
            return torch.linalg.qr(q).Q if self.orthogonalization == "qr" else bjorck_orthonormal(q, self.tolerance)


@register_flow("sylvester_householder")
class HouseholderSylvester(Sylvester):
    """Sylvester step with Q a product of ``reflections`` Householder reflections (H-SNF), M = D.

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        reflections: number of Householder reflections making up Q.
        init: ``near_identity`` or ``pytorch`` (the authors'); see :data:`~flowzoo.flows.amortized.FlowInit`.
        triangles: ``packed`` or ``shared_square`` (the authors'); see :data:`TriangleParameters`.

    Example:
        >>> flow = HouseholderSylvester(features=4, context_features=3, reflections=2)
        >>> z_new, logabsdet = flow(torch.randn(5, 4), context=torch.randn(5, 3))
        >>> z_new.shape, logabsdet.shape
        (torch.Size([5, 4]), torch.Size([5]))
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        reflections: PositiveInt = 4,
        init: FlowInit = "near_identity",
        triangles: TriangleParameters = "packed",
    ):
        super().__init__(features, context_features, features, init, triangles, v=(reflections, features))

    def orthonormal(self, params: dict[str, Tensor]) -> Tensor:
        v = params["v"]
        q = torch.eye(self.hidden, dtype=v.dtype, device=v.device).expand(v.shape[0], -1, -1)
        for k in range(v.shape[1]):
            q = reflect(q, v[:, k])
        return q


@register_flow("sylvester_triangular", triangular="upper")
class TriangularSylvester(Sylvester):
    """Sylvester step with Q the identity (T-SNF): ``z' = z + R tanh(R̃ z + b)``, M = D.

    The Jacobian is upper triangular. The authors' code makes Q the order reversal P
    in every second step, ``z' = z + P R tanh(R̃ P z + b)``: ``K`` steps with
    ``between: reverse`` compute exactly their map, followed for even ``K`` by one
    more ``{name: reverse}`` (each of their ``P T P`` steps is a reversal, a step and a
    reversal, and the reversals of consecutive steps cancel).

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        init: ``near_identity`` or ``pytorch`` (the authors'); see :data:`~flowzoo.flows.amortized.FlowInit`.
        triangles: ``packed`` or ``shared_square`` (the authors'); see :data:`TriangleParameters`.

    Example:
        >>> flow = TriangularSylvester(features=4, context_features=3)
        >>> z_new, logabsdet = flow(torch.randn(5, 4), context=torch.randn(5, 3))
        >>> z_new.shape, logabsdet.shape
        (torch.Size([5, 4]), torch.Size([5]))
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        init: FlowInit = "near_identity",
        triangles: TriangleParameters = "packed",
    ):
        super().__init__(features, context_features, features, init, triangles)

    def orthonormal(self, params: dict[str, Tensor]) -> Tensor:
        batch = params["b"].shape[0]
        return torch.eye(self.hidden, dtype=params["b"].dtype, device=params["b"].device).expand(batch, -1, -1)
