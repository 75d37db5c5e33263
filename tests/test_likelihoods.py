"""The discretized logistic likelihoods for 8-bit images, checked against independent float64 computations."""

from __future__ import annotations

import math

import pytest
import torch

from flowzoo.errors import ConfigError
from flowzoo.likelihoods import (
    LOG_SCALE_MIN,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    bits_per_dim,
)
from flowzoo.registry import likelihoods, list_likelihoods
from flowzoo.vae import build_model

K = 3  # mixture components in most tests

LIKELIHOODS = {
    "logistic": DiscretizedLogistic,
    "mixture": lambda: DiscretizedLogisticMixture(components=K),
}
EVERY_VALUE = torch.arange(256.0)


def make(name: str):
    return LIKELIHOODS[name]()


def rows(likelihood) -> tuple[slice, slice]:
    """Which of the ``params_per_channel`` parameter rows are locations and which log-scales."""
    if isinstance(likelihood, DiscretizedLogisticMixture):
        k = likelihood.components
        return slice(k, 2 * k), slice(2 * k, 3 * k)
    return slice(0, 1), slice(1, 2)


def random_params(likelihood, shape: tuple[int, ...], generator: torch.Generator, extreme: bool = False):
    """Decoder outputs ``(*lead, P*C, H, W)`` for data of shape ``shape = (*lead, C, H, W)``.

    With ``extreme``, locations sit on and well past the edge values and log-scales run
    from far below the clamp to enormous, in every combination.
    """
    *lead, c, h, w = shape
    p = likelihood.params_per_channel
    params = torch.randn(*lead, p, c, h, w, generator=generator) * 3  # logits of mixtures: weights from even to peaked
    locs, scales = (params[..., r, :, :, :] for r in rows(likelihood))
    if extreme:
        loc_values = torch.tensor([-1.0, 1.0, -1.3, 1.3, -5.0, 5.0, -0.999, 0.999])
        scale_values = torch.tensor([-30.0, -7.0, -6.0, 0.0, 3.0, 10.0, 40.0, 100.0])
        n = locs.numel()
        locs.copy_(loc_values.repeat(n // 8 + 1)[:n].view_as(locs))
        scales.copy_(scale_values.repeat_interleave(8).repeat(n // 64 + 1)[:n].view_as(scales))
    else:
        locs.uniform_(-1.2, 1.2, generator=generator)
        scales.copy_(torch.randn(scales.shape, generator=generator) * 1.5 - 3.0)  # about 4 values, × or ÷ 100
    return params.reshape(*lead, p * c, h, w)


def per_pixel_log_probs(likelihood, params: torch.Tensor) -> torch.Tensor:
    """``(n, 256)``: log P(value) of each of ``n`` one-sub-pixel parameter sets ``(n, P, 1, 1)``,
    from the public API: the 256 values are a batch and the ``n`` pixels leading sample dimensions."""
    x = EVERY_VALUE.view(256, 1, 1, 1)
    return likelihood.log_prob(x, params.unsqueeze(1))  # params (n, 1, P, 1, 1) against x (256, 1, 1, 1)


def reference_log_mass(k: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(K = k) in float64 from the logistic CDF written out, independently of flowzoo's log-space form.

    Below the location, masses are differences of CDFs; above it, differences of survival
    functions, so that neither tail loses precision to cancellation. (The logistic built
    from torch.distributions, Uniform pushed through logit and an affine map, cannot serve:
    its CDF flushes values below about 1e-16 to 0.)
    """
    k, mean, log_scale = (t.double() for t in torch.broadcast_tensors(k, mean, log_scale))
    loc = (mean + 1) * 127.5
    scale = torch.exp(log_scale.clamp(min=LOG_SCALE_MIN)) * 127.5

    def cdf(t):
        return 1 / (1 + torch.exp(-(t - loc) / scale))

    def sf(t):
        return 1 / (1 + torch.exp((t - loc) / scale))

    lo, hi = k - 0.5, k + 0.5
    mass = torch.where(k > loc, sf(lo) - sf(hi), cdf(hi) - cdf(lo))
    mass = torch.where(k == 0, cdf(hi), torch.where(k == 255, sf(lo), mass))
    return mass.log()


def test_registered_with_their_schema():
    assert {"discretized_logistic", "discretized_logistic_mixture"} <= set(list_likelihoods())
    entry = likelihoods["discretized_logistic_mixture"]
    assert entry.parameters["components"].default == 10
    assert likelihoods.build({"name": "discretized_logistic_mixture"}, "l").params_per_channel == 30
    assert likelihoods.build({"name": "discretized_logistic"}, "l").params_per_channel == 2
    with pytest.raises(ConfigError, match="components"):
        likelihoods.build({"name": "discretized_logistic_mixture", "components": 0}, "l")


@pytest.mark.parametrize("extreme", [False, True], ids=["typical", "extreme"])
@pytest.mark.parametrize("name", LIKELIHOODS)
def test_probabilities_of_the_256_values_sum_to_one(name, extreme):
    likelihood = make(name)
    g = torch.Generator().manual_seed(1)
    params = random_params(likelihood, (200, 1, 1, 1), g, extreme=extreme)
    log_p = per_pixel_log_probs(likelihood, params)
    assert log_p.shape == (200, 256)
    assert torch.isfinite(log_p).all() or extreme  # masses may underflow to -inf only for extreme params
    assert not torch.isnan(log_p).any()
    torch.testing.assert_close(log_p.logsumexp(-1), torch.zeros(200), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_probabilities_sum_to_one_for_every_pixel_of_an_image(name):
    """A (256, C, H, W) batch in which one sub-pixel takes every value and the others are 0,
    where their parameters put all the mass: its log-probabilities are that sub-pixel's alone."""
    likelihood = make(name)
    g = torch.Generator().manual_seed(2)
    c, h, w = 3, 2, 2
    p = likelihood.params_per_channel
    params = random_params(likelihood, (c, h, w), g).view(p, c, h, w)
    certain = params.clone()
    locs, scales = rows(likelihood)
    certain[locs], certain[scales] = -5.0, LOG_SCALE_MIN  # P(0) = σ(510.5 / 0.12) = 1
    for i, j, k in [(0, 0, 0), (1, 1, 0), (2, 0, 1), (2, 1, 1)]:
        x = torch.zeros(256, c, h, w)
        x[:, i, j, k] = EVERY_VALUE
        mixed = certain.clone()
        mixed[:, i, j, k] = params[:, i, j, k]
        log_p = likelihood.log_prob(x, mixed.view(1, p * c, h, w))
        assert log_p.shape == (256,)
        assert log_p.max() > -50  # not a pixel made certain by mistake elsewhere
        torch.testing.assert_close(log_p.logsumexp(0), torch.tensor(0.0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", LIKELIHOODS)
def test_log_prob_matches_torch_distributions_in_float64(name, dtype):
    likelihood = make(name)
    g = torch.Generator().manual_seed(3)
    n = 500
    params = random_params(likelihood, (n, 1, 1, 1), g)
    x = torch.randint(0, 256, (n, 1, 1, 1), generator=g).float()
    x[:20] = 0.0  # the edge bins
    x[20:40] = 255.0
    got = likelihood.log_prob(x.to(dtype), params.to(dtype))
    assert got.dtype == dtype
    if isinstance(likelihood, DiscretizedLogisticMixture):
        logits, means, log_scales = params.double().view(n, 3, K).unbind(1)
        expected = (logits.log_softmax(-1) + reference_log_mass(x.view(n, 1), means, log_scales)).logsumexp(-1)
    else:
        means, log_scales = params.double().view(n, 2).unbind(1)
        expected = reference_log_mass(x.view(n), means, log_scales)
    representable = expected > -700  # the plain float64 formula underflows beyond e^-745
    assert representable.float().mean() > 0.9
    assert expected[representable].min() < -50  # improbable values are compared, not only typical ones
    tolerance = {torch.float32: 1e-4, torch.float64: 1e-9}[dtype]
    torch.testing.assert_close(got.double()[representable], expected[representable], atol=tolerance, rtol=tolerance)
    assert (got[~representable] < -700).all()


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_log_prob_sums_over_the_dimensions_of_each_example(name):
    likelihood = make(name)
    g = torch.Generator().manual_seed(4)
    b, c, h, w = 4, 3, 2, 5
    params = random_params(likelihood, (b, c, h, w), g)
    x = torch.randint(0, 256, (b, c, h, w), generator=g).float()
    total = likelihood.log_prob(x, params)
    p = likelihood.params_per_channel
    by_pixel = params.view(b, p, c, h, w).permute(0, 2, 3, 4, 1).reshape(-1, p, 1, 1)
    pixels = likelihood.log_prob(x.reshape(-1, 1, 1, 1), by_pixel).view(b, -1).sum(-1)
    torch.testing.assert_close(total, pixels)


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_gradients_are_finite_for_extreme_parameters(name):
    likelihood = make(name)
    g = torch.Generator().manual_seed(5)
    params = random_params(likelihood, (64, 1, 1, 1), g, extreme=True)
    params = params.repeat(3, 1, 1, 1).requires_grad_()
    x = torch.cat([torch.zeros(64), torch.full((64,), 255.0), torch.full((64,), 128.0)]).view(192, 1, 1, 1)
    log_p = likelihood.log_prob(x, params)
    assert torch.isfinite(log_p).all()
    log_p.sum().backward()
    assert torch.isfinite(params.grad).all()
    assert params.grad.abs().sum() > 0
    mean = likelihood.mean(params)
    params.grad = None
    mean.sum().backward()
    assert torch.isfinite(params.grad).all()


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_leading_sample_dimensions_broadcast_like_a_loop(name):
    likelihood = make(name)
    g = torch.Generator().manual_seed(6)
    s, b, c, h, w = 3, 2, 3, 4, 4
    params = random_params(likelihood, (s, b, c, h, w), g)
    x = torch.randint(0, 256, (b, c, h, w), generator=g).float()
    together = likelihood.log_prob(x, params)
    assert together.shape == (s, b)
    looped = torch.stack([likelihood.log_prob(x, params[i]) for i in range(s)])
    torch.testing.assert_close(together, looped)
    assert not torch.allclose(together[0], together[1])  # the samples really differ
    deeper = likelihood.log_prob(x, params.unsqueeze(0).expand(2, -1, -1, -1, -1, -1))
    torch.testing.assert_close(deeper, torch.stack([together, together]))


@pytest.mark.parametrize("extreme", [False, True], ids=["typical", "extreme"])
@pytest.mark.parametrize("name", LIKELIHOODS)
def test_mean_is_the_expected_value_of_the_256_bins(name, extreme):
    likelihood = make(name)
    g = torch.Generator().manual_seed(7)
    params = random_params(likelihood, (200, 1, 1, 1), g, extreme=extreme)
    mean = likelihood.mean(params)
    assert mean.shape == (200, 1, 1, 1)
    assert (mean >= 0).all() and (mean <= 1).all()
    p = per_pixel_log_probs(likelihood, params.double()).exp()
    expected = (p * EVERY_VALUE.double()).sum(-1) / 255
    torch.testing.assert_close(mean.view(200).double(), expected, atol=1e-5, rtol=0)
    assert expected.max() - expected.min() > 0.5  # images from near black to near white


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_mean_of_images_keeps_their_shape(name):
    likelihood = make(name)
    params = random_params(likelihood, (2, 5, 3, 4, 4), torch.Generator().manual_seed(8))
    assert likelihood.mean(params).shape == (2, 5, 3, 4, 4)


def test_log_scales_are_clamped_at_the_floor():
    likelihood = DiscretizedLogistic()
    x = torch.tensor([100.0]).view(1, 1, 1, 1)
    below = likelihood.log_prob(x, torch.tensor([[[[-0.2]], [[-50.0]]]]))
    at = likelihood.log_prob(x, torch.tensor([[[[-0.2]], [[LOG_SCALE_MIN]]]]))
    assert torch.isfinite(below) and below == at


def test_a_single_component_mixture_is_the_discretized_logistic():
    g = torch.Generator().manual_seed(9)
    params = random_params(DiscretizedLogistic(), (4, 3, 2, 2), g)
    x = torch.randint(0, 256, (4, 3, 2, 2), generator=g).float()
    with_logits = torch.cat([torch.randn(4, 3, 2, 2, generator=g), params], dim=1)
    mixture = DiscretizedLogisticMixture(components=1)
    torch.testing.assert_close(mixture.log_prob(x, with_logits), DiscretizedLogistic().log_prob(x, params))
    torch.testing.assert_close(mixture.mean(with_logits), DiscretizedLogistic().mean(params))


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_wrong_number_of_parameter_channels_is_an_error(name):
    likelihood = make(name)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="channels"):
        likelihood.log_prob(x, torch.zeros(2, likelihood.params_per_channel * 3 + 1, 4, 4))


def test_half_precision_parameters_are_computed_in_float32():
    likelihood = DiscretizedLogisticMixture(components=K)
    g = torch.Generator().manual_seed(10)
    params = random_params(likelihood, (3, 3, 4, 4), g)
    x = torch.randint(0, 256, (3, 3, 4, 4), generator=g).float()
    half = likelihood.log_prob(x, params.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, likelihood.log_prob(x, params.bfloat16().float()))


def test_bits_per_dim():
    assert bits_per_dim(3072 * math.log(256), 3072) == pytest.approx(8.0, abs=1e-12)
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0, abs=1e-12)
    assert bits_per_dim(1.0, 1) == pytest.approx(1 / math.log(2))
    assert bits_per_dim(6500.0, 3072) == pytest.approx(3.0525774, abs=1e-7)
    with pytest.raises(ValueError):
        bits_per_dim(1.0, 0)


def test_a_huge_scale_spreads_the_mass_evenly_over_the_interior_bins():
    """With s = 1000 (127,500 values) every interior bin gets 1/(4 × 127,500) of the mass, to within 1e-5."""
    likelihood = DiscretizedLogistic()
    x = torch.randint(1, 255, (2, 3, 8, 8)).float()
    params = torch.zeros(2, 6, 8, 8)
    params[:, 3:] = math.log(1e3)
    nats = -likelihood.log_prob(x, params)
    torch.testing.assert_close(nats, torch.full((2,), 3 * 64 * math.log(4 * 127.5e3)), rtol=1e-5, atol=0)
    edges = -likelihood.log_prob(torch.tensor([0.0, 255.0]).view(2, 1, 1, 1), params[:, [0, 3], :1, :1])
    torch.testing.assert_close(edges, torch.full((2,), math.log(2)), rtol=1e-3, atol=0)  # the tails: 1/2 each


@pytest.mark.parametrize(
    "spec", [{"name": "discretized_logistic"}, {"name": "discretized_logistic_mixture", "components": 2}]
)
def test_a_vae_built_from_the_registry_gives_finite_losses(spec):
    torch.manual_seed(0)
    model = build_model(
        {
            "latent_size": 4,
            "context_size": 4,
            "encoder": {"name": "mlp", "hidden_sizes": [16]},
            "decoder": {"name": "mlp", "hidden_sizes": [16]},
            "flows": [{"name": "iaf", "hidden_features": 8}],
            "likelihood": spec,
        },
        data_shape=(3, 8, 8),
    )
    per_channel = model.likelihood.params_per_channel
    assert model.decoder(torch.zeros(1, 4)).shape == (1, 3 * per_channel, 8, 8)
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8).float()
    losses = model(x)
    assert set(losses) == {"loss", "neg_elbo", "recon", "kl", "bpd"}  # 8-bit data: bits/dim too
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["recon"] > 0  # a probability mass function: −log p(x|z) ≥ 0
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    samples = model.sample(3)
    assert samples.shape == (3, 3, 8, 8) and (samples >= 0).all() and (samples <= 1).all()
