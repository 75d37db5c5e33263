"""The contract of every kind of component, over its whole registry (plugins included),
and planted faults that each check catches.

The contracts are :mod:`flowzoo.contracts`; flows have theirs in tests/test_flows.py
(:func:`flowzoo.flowcheck.check_flow`). A newly registered component is tested here
without writing a test.
"""

from __future__ import annotations

import math

import pytest
from torch import nn

from flowzoo.blocks import IAFBlock
from flowzoo.contracts import (
    check_block,
    check_dataset,
    check_decoder,
    check_encoder,
    check_likelihood,
    check_model,
    check_posterior,
    check_prior,
)
from flowzoo.datasets import BinarizedMNIST
from flowzoo.decoders import MLPDecoder
from flowzoo.encoders import MLPEncoder
from flowzoo.errors import ConfigError
from flowzoo.likelihoods import Bernoulli
from flowzoo.posteriors import DiagonalGaussian
from flowzoo.priors import StandardNormal
from flowzoo.registry import (
    REGISTRIES,
    list_blocks,
    list_datasets,
    list_decoders,
    list_encoders,
    list_likelihoods,
    list_models,
    list_posteriors,
    list_priors,
)
from flowzoo.vae import compose_vae

BLOCK_PLACES = {"middle": {}, "downsampling": {"downsample": True}, "top": {"top": True}}

CONTRACTS = [
    *[pytest.param(check_encoder, name, {}, id=f"encoder-{name}") for name in list_encoders()],
    *[pytest.param(check_decoder, name, {"likelihood": likelihood}, id=f"decoder-{name}-{likelihood}")
      for name in list_decoders() for likelihood in list_likelihoods()],  # each likelihood's params_per_channel
    *[pytest.param(check_likelihood, name, {}, id=f"likelihood-{name}") for name in list_likelihoods()],
    *[pytest.param(check_posterior, name, {}, id=f"posterior-{name}") for name in list_posteriors()],
    *[pytest.param(check_prior, name, {}, id=f"prior-{name}") for name in list_priors()],
    *[pytest.param(check_block, name, options, id=f"block-{name}-{place}")
      for name in list_blocks() for place, options in BLOCK_PLACES.items()],
    *[pytest.param(check_dataset, name, {}, id=f"dataset-{name}") for name in list_datasets()],
    *[pytest.param(check_model, name, {}, id=f"model-{name}") for name in list_models()],
]


@pytest.mark.parametrize("check, name, options", CONTRACTS)
def test_contract(check, name, options):
    check(name, **options).assert_passed()


# -- planted faults ---------------------------------------------------------------------------


@pytest.fixture
def scratch_registries(monkeypatch):
    """Registrations made in a test disappear after it."""
    for registry in REGISTRIES.values():
        monkeypatch.setattr(registry, "_entries", dict(registry.entries))
    return REGISTRIES


def failed(report) -> dict[str, str]:
    return {check.name: check.detail for check in report.failures}


def test_an_encoder_announcing_the_wrong_out_features_fails(scratch_registries):
    @scratch_registries["encoders"].register("miscounted")
    class Miscounted(MLPEncoder):
        def __init__(self, input_shape: tuple):
            super().__init__(input_shape, hidden_sizes=(8,))
            self.out_features = 9

    report = check_encoder("miscounted")
    assert set(failed(report)) == {"output shape"} and "expected (4, 9)" in failed(report)["output shape"]


def test_a_decoder_ignoring_the_likelihoods_parameters_fails(scratch_registries):
    @scratch_registries["decoders"].register("one_per_pixel")
    class OnePerPixel(MLPDecoder):
        def __init__(self, latent_size: int, output_shape: tuple):
            super().__init__(latent_size, (3, *output_shape[1:]), hidden_sizes=(8,))

    assert check_decoder("one_per_pixel", likelihood="bernoulli").passed
    report = check_decoder("one_per_pixel", likelihood="discretized_logistic")
    assert set(failed(report)) == {"output shape (2 per channel)"}


def test_a_likelihood_losing_mass_or_leaving_the_unit_interval_fails(scratch_registries):
    @scratch_registries["likelihoods"].register("leaky")
    class Leaky(Bernoulli):
        def log_prob(self, x, params):
            return super().log_prob(x, params) + math.log(0.99)  # 1% of the mass gone

    @scratch_registries["likelihoods"].register("logits_as_mean")
    class LogitsAsMean(Bernoulli):
        def mean(self, params):
            return params

    report = check_likelihood("leaky")
    assert set(failed(report)) == {"probabilities sum to 1"} and report.failures[0].error > 1e-3
    assert set(failed(check_likelihood("logits_as_mean"))) == {"images in [0, 1]"}


def test_a_posterior_forgetting_log_sigma_fails(scratch_registries):
    @scratch_registries["posteriors"].register("no_log_sigma")
    class NoLogSigma(DiagonalGaussian):
        def forward(self, features, n_samples=1):
            z0, log_q0 = super().forward(features, n_samples)
            _, log_std = self.head(features).chunk(2, dim=-1)
            return z0, log_q0 + log_std.sum(-1)

    report = check_posterior("no_log_sigma")
    assert set(failed(report)) == {"log q is the density of z0"} and report.failures[0].error > 0.1


def test_a_prior_scoring_the_wrong_normal_fails(scratch_registries):
    @scratch_registries["priors"].register("wide_samples")
    class WideSamples(StandardNormal):
        def sample(self, n):
            return 1.5 * super().sample(n)

    assert set(failed(check_prior("wide_samples"))) == {"log p is the density of its samples"}


def test_a_block_with_the_wrong_sign_of_its_log_det_fails(scratch_registries):
    @scratch_registries["blocks"].register("iaf_sign_slip")
    class SignSlip(IAFBlock):
        def transform(self, z, context):
            z, log_diagonal = super().transform(z, context)
            return z, -log_diagonal

    report = check_block("iaf_sign_slip")
    assert set(failed(report)) == {"log q is the density of z"}


def test_a_model_with_an_unused_parameter_fails(scratch_registries):
    @scratch_registries["models"].register("forgetful", test_parameters={"latent_size": 2})
    def forgetful(data_shape: tuple, latent_size: int) -> nn.Module:
        model = compose_vae(data_shape, latent_size=latent_size, encoder={"name": "mlp", "hidden_sizes": [8]},
                            decoder={"name": "mlp", "hidden_sizes": [8]})
        model.forgotten = nn.Linear(2, 2)
        return model

    report = check_model("forgetful")
    assert set(failed(report)) == {"finite gradients"} and "forgotten.weight" in failed(report)["finite gradients"]


def test_a_dataset_reading_at_construction_fails(scratch_registries):
    @scratch_registries["datasets"].register("eager")
    class Eager(BinarizedMNIST):
        def __init__(self, root: str | None = None, download: bool = True):
            super().__init__(root, download)
            self.index = (self.root / "index.txt").read_text()

    report = check_dataset("eager")
    assert [check.name for check in report.failures] == ["built on an empty root"]
    assert "FileNotFoundError" in report.failures[0].detail


def test_a_component_without_small_parameters_is_told_how_to_declare_them(scratch_registries):
    @scratch_registries["models"].register("needs_size")
    def needs_size(data_shape: tuple, latent_size: int) -> nn.Module:
        raise AssertionError("not built: the spec is incomplete")

    with pytest.raises(ConfigError) as error:
        check_model("needs_size")
    assert "model.latent_size: missing" in str(error.value)
    assert "@register_model('needs_size', test_parameters={...})" in str(error.value)
