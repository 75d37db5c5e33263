"""Posterior flows: invertible maps z_{t-1} → z_t following nflows' ``Transform`` contract.

Every flow's ``forward(z, context) -> (z', logabsdet)`` returns
``log|det ∂z'/∂z|`` per example, so ``log q(z_T|x) = log q(z_0|x) − Σ_t logabsdet_t``.
"""

from flowzoo.flows.iaf import GatedIAF
from flowzoo.flows.permutations import random_permutation, reverse

__all__ = ["GatedIAF", "random_permutation", "reverse"]
