"""The VAE's posterior density and its evaluation metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from flowzoo.datasets import BinarizedMNIST
from flowzoo.evaluation import evaluate
from flowzoo.vae import build_model


def small_vae(latent: int, flows: list, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(
        {
            "latent_size": latent,
            "context_size": 4,
            "encoder": {"name": "mlp", "hidden_sizes": [16]},
            "decoder": {"name": "mlp", "hidden_sizes": [16]},
            "flows": flows,
        },
        data_shape=(1, 6, 6),
    ).double()
    with torch.no_grad():  # move the flows off their near-identity start
        for parameter in model.flows.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    return model


IAF_STACK = [{"name": "iaf", "hidden_features": 16, "repeat": 2, "between": "reverse"}]


def test_log_q_equals_change_of_variables_computed_independently():
    """log q(zT|x) from the model = log N(z0; μ, σ) − log|det ∂zT/∂z0| with the
    Jacobian of the whole chain taken by autograd and the base density by torch.distributions."""
    model = small_vae(latent=3, flows=IAF_STACK)
    x = torch.randint(0, 2, (5, 1, 6, 6)).double()
    torch.manual_seed(7)
    z_T, log_q = model.posterior_sample(x, n_samples=2)

    features = model.encoder(x)
    mean, log_std = model.posterior.head(features).chunk(2, dim=-1)
    torch.manual_seed(7)
    z0 = mean + log_std.exp() * torch.randn(2, *mean.shape, dtype=torch.float64)
    h = model.context(features)
    base = torch.distributions.Normal(mean, log_std.exp())
    for k in range(2):
        for b in range(5):
            def chain(v, context=h[b : b + 1]):
                return model.flows(v[None], context=context)[0][0]

            torch.testing.assert_close(chain(z0[k, b]), z_T[k, b])
            J = jacobian(chain, z0[k, b])
            expected = base.log_prob(z0[k, b])[b].sum() - torch.linalg.slogdet(J).logabsdet
            torch.testing.assert_close(log_q[k, b], expected, rtol=1e-9, atol=1e-9)


def test_posterior_density_integrates_to_one():
    """q(zT|x) on a 2-D grid, via z0 = f⁻¹(zT) and the flows' forward log-dets, sums to 1."""
    model = small_vae(latent=2, flows=IAF_STACK, seed=3)
    x = torch.randint(0, 2, (1, 1, 6, 6)).double()
    features = model.encoder(x)
    mean, log_std = model.posterior.head(features).chunk(2, dim=-1)
    h = model.context(features)
    with torch.no_grad():
        center = model.flows(mean, context=h)[0][0]
        half, n = 10 * log_std.exp().max().item() + 3, 801
        axis = [torch.linspace(c - half, c + half, n, dtype=torch.float64) for c in center]
        grid = torch.stack(torch.meshgrid(*axis, indexing="ij"), -1).reshape(-1, 2)
        context = h.expand(len(grid), -1)
        z0, _ = model.flows.inverse(grid, context=context)
        _, forward_logabsdet = model.flows(z0, context=context)
        log_q0 = torch.distributions.Normal(mean, log_std.exp()).log_prob(z0).sum(-1)
        density = (log_q0 - forward_logabsdet).exp()
    cell = (axis[0][1] - axis[0][0]) * (axis[1][1] - axis[1][0])
    assert (density.sum() * cell).item() == pytest.approx(1.0, abs=2e-3)


@pytest.fixture(scope="module")
def briefly_trained():
    """A small IAF VAE after 150 steps on real binarized MNIST, and 300 test images."""
    torch.manual_seed(0)
    data = BinarizedMNIST()
    train, test = data.load("train")[:15_000].float(), data.load("test")[:300]
    model = build_model(
        {
            "latent_size": 16,
            "context_size": 16,
            "encoder": {"name": "mlp", "hidden_sizes": [200]},
            "decoder": {"name": "mlp", "hidden_sizes": [200]},
            "flows": [{"name": "iaf", "hidden_features": 64, "repeat": 2, "between": "reverse"}],
        },
        data_shape=data.shape,
    )
    optimizer = torch.optim.Adamax(model.parameters(), lr=2e-3)
    for batch in train.split(100):
        optimizer.zero_grad()
        model(batch)["loss"].backward()
        optimizer.step()
    return model, test


def test_iwae_bound_is_below_the_elbo_and_tightens_with_k(briefly_trained):
    model, test = briefly_trained
    results = {k: evaluate(model, test, iw_samples=k, batch_size=100) for k in (1, 10, 100)}
    for metrics in results.values():
        assert metrics["nll_iw"] <= metrics["neg_elbo"] + 1e-9
    assert results[1]["nll_iw"] == pytest.approx(results[1]["neg_elbo"])
    assert results[100]["nll_iw"] < results[10]["nll_iw"] < results[1]["nll_iw"]
    # The ELBO averaged over more samples estimates the same quantity: it must not drift.
    assert results[100]["neg_elbo"] == pytest.approx(results[1]["neg_elbo"], abs=1.5)


def test_evaluation_is_reproducible_and_chunking_does_not_change_it(briefly_trained):
    model, test = briefly_trained
    torch.manual_seed(0)
    a = evaluate(model, test, iw_samples=20, batch_size=100, max_batch=2_000)
    b = evaluate(model, test, iw_samples=20, batch_size=100, max_batch=2_000)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.rand(1) == after, "evaluation must not consume the global random stream"
    assert a == b
    chunked = evaluate(model, test, iw_samples=20, batch_size=100, max_batch=300)  # 3 samples per pass
    assert chunked["nll_iw"] == pytest.approx(a["nll_iw"], abs=1.0)
    assert chunked["examples"] == 300 and chunked["iw_samples"] == 20


def test_metrics_are_consistent(briefly_trained):
    model, test = briefly_trained
    metrics = evaluate(model, test, iw_samples=5)
    assert metrics["neg_elbo"] == pytest.approx(metrics["recon"] + metrics["kl"])
    assert metrics["kl"] > 0 and metrics["recon"] > 0
    assert math.isfinite(metrics["nll_iw"])


def test_bf16_evaluation_stays_within_a_tenth_of_a_percent_of_fp32(briefly_trained):
    model, test = briefly_trained
    fp32 = evaluate(model, test, iw_samples=20, batch_size=100)
    bf16 = evaluate(model, test, iw_samples=20, batch_size=100, precision="bf16")  # same seed: same noise
    for key in ("nll_iw", "neg_elbo"):
        assert bf16[key] == pytest.approx(fp32[key], rel=0.001), key
    assert bf16[key] != fp32[key]  # the passes did run in bf16
