"""The contract every registered flow must meet, plus the structure of particular flows.

The contract is :func:`flowzoo.flowcheck.check_flow`, parametrized over the registry
(plugins included), so a newly registered flow is tested without writing a test.
"""

from __future__ import annotations

import pytest
import torch

from flowzoo.flowcheck import TRAIN_STEPS, check_flow, jacobians
from flowzoo.flows import GatedIAF, Planar, Radial
from flowzoo.registry import flows, list_flows
from flowzoo.vae import build_model

FEATURES, CONTEXT, BATCH = 5, 3, 4


@pytest.mark.parametrize("context_features", [CONTEXT, 0], ids=["with_context", "without_context"])
@pytest.mark.parametrize("name", list_flows())
def test_flow_contract(name, context_features):
    """Shapes, log-det vs the autograd Jacobian (float64), gradients, declared triangularity, inverse, save/load;
    and, once per flow (the slowest check), that it trains in a small VAE on real data."""
    check_flow(name, features=FEATURES, context_features=context_features,
               train_steps=TRAIN_STEPS if context_features else 0).assert_passed()


@pytest.mark.parametrize("name", list_flows())
def test_flow_trains_inside_a_vae(name):
    """Every flow composes into a VAE: finite loss and finite gradients in float32 with several samples."""
    torch.manual_seed(0)
    model = build_model({
        "latent_size": 4,
        "context_size": 6,
        "encoder": {"name": "mlp", "hidden_sizes": [16]},
        "decoder": {"name": "mlp", "hidden_sizes": [16]},
        "flows": [{"name": name, "repeat": 2}],
    }, data_shape=(1, 6, 6))
    x = torch.randint(0, 2, (8, 1, 6, 6)).float()
    losses = model(x)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    terms = model.log_weights(x, n_samples=3)
    assert terms["kl_groups"].shape == (3, 8, 1, 1)  # one layer, one group: the latent vector
    assert all(t.shape[:2] == (3, 8) and torch.isfinite(t).all() for t in terms.values())


@pytest.mark.parametrize("name", list_flows())
def test_flow_runs_under_bf16_autocast(name):
    """``trainer.precision: bf16`` autocasts every flow (tests/test_gpu.py repeats this on CUDA,
    whose autocast leaves more operations, a QR among them, in bf16)."""
    torch.manual_seed(0)
    flow = flows.build({"name": name}, "flow", features=FEATURES, context_features=CONTEXT)
    z0 = torch.randn(BATCH, FEATURES, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, logabsdet = flow(z0, context=torch.randn(BATCH, CONTEXT))
    (z.float().square().sum() - logabsdet.float().sum()).backward()
    assert torch.isfinite(z).all() and torch.isfinite(logabsdet).all() and torch.isfinite(z0.grad).all()


def small(flow_class, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A float64 flow pushed away from its initialisation."""
    torch.manual_seed(seed)
    flow = flow_class(features=FEATURES, context_features=CONTEXT, **kwargs).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return flow


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(BATCH, FEATURES, generator=generator, dtype=torch.float64)
    h = torch.randn(BATCH, CONTEXT, generator=generator, dtype=torch.float64)
    return z, h


def test_iaf_jacobian_is_lower_triangular_in_the_latent_order():
    """z'_i may depend on z_j only for j ≤ i, and does depend on earlier coordinates."""
    flow = small(GatedIAF, hidden_features=16)
    z, h = inputs()
    above = torch.ones(FEATURES, FEATURES, dtype=torch.bool).triu(diagonal=1)
    for J in jacobians(flow, z, h):
        assert torch.count_nonzero(J[above]) == 0
        assert J[above.T].abs().min() > 0


def test_iaf_diagonal_is_the_gate_and_logabsdet_its_log_sum():
    flow = small(GatedIAF, hidden_features=16)
    z, h = inputs()
    m, s = flow._pair(flow.autoregressive_net(z, h))
    J = jacobians(flow, z, h)
    torch.testing.assert_close(torch.diagonal(J, dim1=1, dim2=2), torch.sigmoid(s))
    out, logabsdet = flow(z, context=h)
    torch.testing.assert_close(out, torch.sigmoid(s) * z + (1 - torch.sigmoid(s)) * m)
    torch.testing.assert_close(logabsdet, torch.log(torch.sigmoid(s)).sum(-1))


@pytest.mark.parametrize("name", [n for n in list_flows() if "context_features" in flows[n].injected
                                  and n not in ("reverse", "random_permutation")])
def test_flow_uses_its_context(name):
    """Amortized flows: a different context h gives a different map."""
    torch.manual_seed(0)
    flow = flows.build({"name": name}, "flow", features=FEATURES, context_features=CONTEXT).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    z, h = inputs()
    assert not torch.allclose(flow(z, context=h)[0], flow(z, context=h + 1)[0])


def test_iaf_starts_close_to_a_pass_through():
    """With the gate bias, σ starts near sigmoid(2) for every input: no exploding first steps."""
    torch.manual_seed(0)
    flow = GatedIAF(features=32, context_features=32)
    z, h = torch.randn(64, 32), torch.randn(64, 32)
    _, s = flow._pair(flow.autoregressive_net(z, h))
    expected = torch.full_like(s, torch.sigmoid(torch.tensor(2.0)).item())
    torch.testing.assert_close(torch.sigmoid(s), expected, atol=0.02, rtol=0)


def test_planar_stays_invertible_when_u_opposes_w():
    """The constraint w·û > −1 holds even for u = −5w, where the raw step would fold space."""
    flow = Planar(features=FEATURES).double()
    w = torch.randn(FEATURES, dtype=torch.float64)
    with torch.no_grad():
        flow.params.free.copy_(torch.cat([-5 * w, w, torch.zeros(1, dtype=torch.float64)]))
    z, _ = inputs()
    _, logabsdet = flow(z)
    determinants = torch.linalg.det(jacobians(flow, z, None))
    assert (determinants > 0).all() and torch.isfinite(logabsdet).all()


def test_radial_contracts_towards_its_reference_point_when_beta_is_negative():
    flow = Radial(features=FEATURES).double()
    with torch.no_grad():  # z_ref = 0, α = softplus(0), β = −α + softplus(−5) < 0
        flow.params.free.copy_(torch.cat([torch.zeros(FEATURES + 1), torch.tensor([-5.0])]).double())
    z, _ = inputs()
    out, logabsdet = flow(z)
    assert (out.norm(dim=-1) < z.norm(dim=-1)).all() and (logabsdet < 0).all()
