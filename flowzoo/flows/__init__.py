"""Posterior flows: invertible maps z_{t-1} → z_t following nflows' ``Transform`` contract.

Every flow's ``forward(z, context) -> (z', logabsdet)`` returns
``log|det ∂z'/∂z|`` per example, so ``log q(z_T|x) = log q(z_0|x) − Σ_t logabsdet_t``.
Importing this package registers the built-in flows; ``flowzoo list flows`` shows them.
"""

from flowzoo.flows.amortized import FlowParameters
from flowzoo.flows.autoregressive import masked_affine_autoregressive, rq_spline_autoregressive
from flowzoo.flows.householder import Householder
from flowzoo.flows.iaf import AffineIAF, GatedIAF, ResidualGatedIAF
from flowzoo.flows.permutations import random_permutation, reverse
from flowzoo.flows.planar import Planar
from flowzoo.flows.radial import Radial
from flowzoo.flows.sylvester import HouseholderSylvester, OrthogonalSylvester, TriangularSylvester

__all__ = [
    "AffineIAF",
    "FlowParameters",
    "GatedIAF",
    "Householder",
    "HouseholderSylvester",
    "OrthogonalSylvester",
    "Planar",
    "Radial",
    "ResidualGatedIAF",
    "TriangularSylvester",
    "masked_affine_autoregressive",
    "random_permutation",
    "reverse",
    "rq_spline_autoregressive",
]
