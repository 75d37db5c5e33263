"""The 256-way categorical likelihood for 8-bit images, and a model with it learning real Frey faces."""

from __future__ import annotations

import pytest
import torch

from flowzoo.datasets import FreyFaces
from flowzoo.likelihoods import Categorical, bits_per_dim
from flowzoo.registry import likelihoods
from flowzoo.vae import build_model


def test_registered_with_256_parameters_per_channel_and_bits_per_dim():
    likelihood = likelihoods.build({"name": "categorical"}, "likelihood")
    assert isinstance(likelihood, Categorical)
    assert likelihood.params_per_channel == 256 and likelihood.reports_bits_per_dim


def test_the_mass_of_the_256_values_sums_to_one():
    torch.manual_seed(0)
    logits = 4 * torch.randn(7, 256, 1, 1, dtype=torch.float64)  # seven pixels' logits, one sub-pixel each
    every_value = torch.arange(256.0, dtype=torch.float64).view(256, 1, 1, 1)
    log_p = torch.stack([Categorical().log_prob(every_value, pixel.expand(256, -1, -1, -1)) for pixel in logits])
    assert torch.allclose(log_p.logsumexp(-1), torch.zeros(7, dtype=torch.float64), atol=1e-12)


def test_log_prob_is_the_sum_of_each_sub_pixels_log_softmax_at_its_value():
    """Output channel k·C + c holds the logit of value k for channel c (the authors' (256, C, H, W) view)."""
    torch.manual_seed(0)
    batch, channels, height, width = 2, 3, 2, 4
    params = torch.randn(batch, 256 * channels, height, width)
    x = torch.randint(0, 256, (batch, channels, height, width)).float()
    expected = torch.zeros(batch)
    for n in range(batch):
        for c in range(channels):
            for i in range(height):
                for j in range(width):
                    logits = params[n, [k * channels + c for k in range(256)], i, j]
                    expected[n] += torch.distributions.Categorical(logits=logits).log_prob(x[n, c, i, j].long())
    assert torch.allclose(Categorical().log_prob(x, params), expected, atol=1e-4)


def test_extra_sample_dimensions_broadcast_against_the_data():
    torch.manual_seed(0)
    params, x = torch.randn(5, 2, 256, 3, 3), torch.randint(0, 256, (2, 1, 3, 3)).float()
    log_p = Categorical().log_prob(x, params)
    assert log_p.shape == (5, 2)
    assert torch.allclose(log_p[3], Categorical().log_prob(x, params[3]))


def test_mean_is_the_expected_value_over_255():
    torch.manual_seed(0)
    params = torch.randn(2, 512, 2, 2)  # two channels
    probs = params.view(2, 256, 2, 2, 2).softmax(1)
    expected = (probs * torch.arange(256.0).view(1, 256, 1, 1, 1)).sum(1) / 255
    assert torch.allclose(Categorical().mean(params), expected, atol=1e-6)


def test_parameters_of_the_wrong_size_are_refused():
    with pytest.raises(ValueError, match="256 × 1 = 256 channels"):
        Categorical().log_prob(torch.zeros(1, 1, 2, 2), torch.zeros(1, 255, 2, 2))


def test_the_paper_frey_faces_model_learns_real_faces(shared_data_root):
    """The authors' Frey Faces model (gated convolutions, categorical likelihood, Adamax at their learning
    rate) lowers the −ELBO of 100 real validation faces within 12 steps of 50 faces, and reports bits/dim."""
    torch.manual_seed(0)
    data = FreyFaces(root=str(shared_data_root))
    train, valid = data.load("train").float(), data.load("valid")[:100].float()
    model = build_model({
        "latent_size": 64,
        "encoder": {"name": "gated_conv"},
        "decoder": {"name": "gated_conv", "head_channels": 256},
        "posterior": {"name": "softplus_gaussian", "variance_range": [0.01, 7.0]},
        "likelihood": {"name": "categorical"},
    }, data_shape=data.shape)
    optimizer = torch.optim.Adamax(model.parameters(), lr=5e-4, eps=1e-7)

    def valid_neg_elbo() -> float:
        with torch.no_grad():
            return model(valid)["neg_elbo"].item()

    before = valid_neg_elbo()
    for step in range(12):
        losses = model(train[torch.randint(0, len(train), (50,))])
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    after = valid_neg_elbo()
    assert after < before - 15, (before, after)  # from 3108 nats (8.0 bits/dim, the uniform model's)
    assert losses["bpd"].item() == pytest.approx(bits_per_dim(losses["neg_elbo"].item(), 28 * 20), rel=1e-6)
