"""The contract every registered flow must meet, plus IAF-specific structure.

Parametrized over the registry, so a newly registered flow is tested without
writing a test.
"""

from __future__ import annotations

import io

import pytest
import torch
from nflows.transforms import InverseNotAvailable
from torch.autograd.functional import jacobian

from flowzoo.flows import GatedIAF
from flowzoo.registry import flows, list_flows

FEATURES, CONTEXT, BATCH = 5, 3, 4


def make_flow(name: str, seed: int = 0) -> torch.nn.Module:
    """A small float64 flow whose parameters are pushed away from their
    near-identity initialisation, so that every check sees a non-trivial map."""
    torch.manual_seed(seed)
    spec = {"name": name, **({"hidden_features": 16} if "hidden_features" in flows[name].parameters else {})}
    flow = flows.build(spec, "flow", features=FEATURES, context_features=CONTEXT).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return flow


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(BATCH, FEATURES, generator=generator, dtype=torch.float64)
    h = torch.randn(BATCH, CONTEXT, generator=generator, dtype=torch.float64)
    return z, h


def jacobians(flow, z, h) -> torch.Tensor:
    """Per-example Jacobians ∂z'/∂z, ``(batch, features, features)``, by autograd."""
    def one(v, c):
        return jacobian(lambda u: flow(u[None], context=c[None])[0][0], v)

    return torch.stack([one(v, c) for v, c in zip(z, h, strict=True)])


@pytest.mark.parametrize("name", list_flows())
class TestFlowContract:
    def test_shapes(self, name):
        z, h = inputs()
        out, logabsdet = make_flow(name)(z, context=h)
        assert out.shape == z.shape and logabsdet.shape == (BATCH,)

    def test_logabsdet_matches_autograd_jacobian(self, name):
        flow = make_flow(name)
        z, h = inputs()
        _, logabsdet = flow(z, context=h)
        expected = torch.linalg.slogdet(jacobians(flow, z, h)).logabsdet
        torch.testing.assert_close(logabsdet, expected, rtol=1e-9, atol=1e-9)

    def test_finite_gradient_for_every_parameter(self, name):
        flow = make_flow(name)
        z, h = inputs()
        z.requires_grad_()
        out, logabsdet = flow(z, context=h)
        (out.square().sum() + logabsdet.sum()).backward()
        assert torch.isfinite(z.grad).all()
        for pname, parameter in flow.named_parameters():
            assert parameter.grad is not None, f"{pname} gets no gradient"
            assert torch.isfinite(parameter.grad).all(), f"{pname} has a non-finite gradient"

    def test_save_and_load_reproduce_outputs(self, name):
        flow = make_flow(name, seed=0)
        buffer = io.BytesIO()
        torch.save(flow.state_dict(), buffer)
        buffer.seek(0)
        other = make_flow(name, seed=99)
        other.load_state_dict(torch.load(buffer, weights_only=True))
        z, h = inputs()
        for a, b in zip(flow(z, context=h), other(z, context=h)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    def test_inverse_undoes_forward(self, name):
        flow = make_flow(name)
        z, h = inputs()
        out, logabsdet = flow(z, context=h)
        try:
            back, inverse_logabsdet = flow.inverse(out, context=h)
        except InverseNotAvailable:
            pytest.skip(f"{name} has no analytic inverse")
        torch.testing.assert_close(back, z, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(inverse_logabsdet, -logabsdet, rtol=1e-8, atol=1e-8)


def test_iaf_jacobian_is_lower_triangular_in_the_latent_order():
    """z'_i may depend on z_j only for j ≤ i, and does depend on earlier coordinates."""
    flow = make_flow("iaf")
    z, h = inputs()
    above = torch.ones(FEATURES, FEATURES, dtype=torch.bool).triu(diagonal=1)
    for J in jacobians(flow, z, h):
        assert torch.count_nonzero(J[above]) == 0
        assert J[above.T].abs().min() > 0


def test_iaf_diagonal_is_the_gate_and_logabsdet_its_log_sum():
    flow = make_flow("iaf")
    z, h = inputs()
    m, s = flow._gate(z, h)
    J = jacobians(flow, z, h)
    torch.testing.assert_close(torch.diagonal(J, dim1=1, dim2=2), torch.sigmoid(s))
    out, logabsdet = flow(z, context=h)
    torch.testing.assert_close(out, torch.sigmoid(s) * z + (1 - torch.sigmoid(s)) * m)
    torch.testing.assert_close(logabsdet, torch.log(torch.sigmoid(s)).sum(-1))


def test_iaf_uses_its_context():
    flow = make_flow("iaf")
    z, h = inputs()
    assert not torch.allclose(flow(z, context=h)[0], flow(z, context=h + 1)[0])


def test_iaf_starts_close_to_a_pass_through():
    """With the gate bias, σ starts near sigmoid(2) for every input: no exploding first steps."""
    torch.manual_seed(0)
    flow = GatedIAF(features=32, context_features=32)
    z, h = torch.randn(64, 32), torch.randn(64, 32)
    _, s = flow._gate(z, h)
    expected = torch.full_like(s, torch.sigmoid(torch.tensor(2.0)).item())
    torch.testing.assert_close(torch.sigmoid(s), expected, atol=0.02, rtol=0)
