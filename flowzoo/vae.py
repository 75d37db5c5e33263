"""The VAE with a flow posterior, and its composition from a model config."""

from __future__ import annotations

__all__ = ["VAE", "ModelConfig", "build_vae", "check_flows", "flow_specs", "parameter_count"]

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import torch
from nflows.transforms import CompositeTransform, Transform
from torch import Tensor, nn

from flowzoo.errors import ConfigError, Problem
from flowzoo.priors import StandardNormal
from flowzoo.registry import decoders, encoders, flows, likelihoods, posteriors, priors
from flowzoo.schema import (
    NonNegativeInt,
    PositiveInt,
    check_value,
    component,
    section_problems,
    to_plain,
    with_defaults,
)


class VAE(nn.Module):
    r"""A VAE whose posterior is a base distribution pushed through a chain of flows.

    .. math::
        z_0 \sim q(z_0|x), \quad z_T = f_T \circ \dots \circ f_1(z_0; h), \quad
        \log q(z_T|x) = \log q(z_0|x) - \textstyle\sum_t \log|\det \partial z_t/\partial z_{t-1}|,

    and the loss is the negative ELBO,
    :math:`-\mathbb{E}_q[\log p(x|z_T) + \log p(z_T) - \log q(z_T|x)]`, estimated with
    one sample per example. The KL term is estimated by Monte Carlo for every model,
    with or without flows, so that all models are compared with the same estimator.

    Args:
        encoder: backbone mapping ``x`` to features; must expose ``out_features``.
        posterior: base posterior built on the features; must expose ``latent_size``.
        decoder: maps ``z`` to the likelihood's parameters.
        likelihood: ``log_prob(x, params)``, ``mean(params)`` (images in [0, 1]) and
            ``unit(x)`` (the data as images in [0, 1]: what the encoder sees).
        flows: transforms applied to ``z0`` in order.
        prior: ``log_prob(z)`` and ``sample(n)``; standard normal by default.
        context_size: size of the context ``h`` (a linear map of the features) given
            to every flow; 0 for none.

    Example:
        >>> from flowzoo.encoders import MLPEncoder
        >>> from flowzoo.decoders import MLPDecoder
        >>> from flowzoo.posteriors import DiagonalGaussian
        >>> from flowzoo.likelihoods import Bernoulli
        >>> from flowzoo.flows import GatedIAF, reverse
        >>> encoder = MLPEncoder((1, 28, 28), hidden_sizes=(64,))
        >>> model = VAE(
        ...     encoder=encoder,
        ...     posterior=DiagonalGaussian(encoder.out_features, latent_size=8),
        ...     decoder=MLPDecoder(8, (1, 28, 28), hidden_sizes=(64,)),
        ...     likelihood=Bernoulli(),
        ...     flows=[GatedIAF(8, context_features=16, hidden_features=32), reverse(8)],
        ...     context_size=16,
        ... )
        >>> losses = model(torch.randint(0, 2, (3, 1, 28, 28)).float())
        >>> sorted(losses)
        ['kl', 'loss', 'neg_elbo', 'recon']
    """

    def __init__(
        self,
        encoder: nn.Module,
        posterior: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
        flows: Iterable[Transform] = (),
        prior: nn.Module | None = None,
        context_size: int = 0,
    ):
        super().__init__()
        self.encoder = encoder
        self.posterior = posterior
        self.context = nn.Linear(encoder.out_features, context_size) if context_size else None
        self.flows = CompositeTransform(list(flows))
        self.decoder = decoder
        self.prior = prior if prior is not None else StandardNormal(posterior.latent_size)
        self.likelihood = likelihood

    def posterior_sample(self, x: Tensor, n_samples: int = 1) -> tuple[Tensor, Tensor]:
        """Posterior samples ``z_T``, ``(n_samples, batch, latent)``, and ``log q(z_T|x)``, ``(n_samples, batch)``."""
        features = self.encoder(self.likelihood.unit(x))
        z0, log_q0 = self.posterior(features, n_samples)
        n, batch, latent = z0.shape
        context = None
        if self.context is not None:
            context = self.context(features).expand(n, batch, -1).reshape(n * batch, -1)
        z, logabsdet = self.flows(z0.reshape(n * batch, latent), context=context)
        return z.view(n, batch, latent), log_q0 - logabsdet.view(n, batch)

    def log_weights(self, x: Tensor, n_samples: int = 1) -> dict[str, Tensor]:
        """The terms of the importance weights ``log p(x|z) + log p(z) − log q(z|x)``, each ``(n_samples, batch)``."""
        z, log_q = self.posterior_sample(x, n_samples)
        params = self.decoder(z.flatten(0, 1))
        params = params.view(*z.shape[:2], *params.shape[1:])
        return {
            "log_px_given_z": self.likelihood.log_prob(x, params),
            "log_pz": self.prior.log_prob(z),
            "log_qz": log_q,
        }

    def forward(self, x: Tensor, kl_weight: float | Tensor = 1.0, free_bits: float = 0.0) -> dict[str, Tensor]:
        r"""Batch-mean losses: ``loss`` (what to minimise), ``neg_elbo``, ``recon`` (−log p(x|z)) and ``kl``.

        ``loss`` is ``recon + kl_weight · max(kl, free_bits)``: the −ELBO itself with
        the defaults; a KL weight below 1 during warm-up; and "free bits" (Kingma et
        al. 2016), which stop pushing the KL, averaged over the batch, below
        ``free_bits`` nats so that the posterior is not driven onto the prior early on.
        The latent vector is one group here, so the floor applies to its whole KL.
        """
        terms = self.log_weights(x)
        recon = -terms["log_px_given_z"].mean()
        kl = (terms["log_qz"] - terms["log_pz"]).mean()
        neg_elbo = recon + kl
        loss = recon + kl_weight * kl.clamp(min=free_bits) if free_bits else recon + kl_weight * kl
        return {"loss": loss, "neg_elbo": neg_elbo, "recon": recon, "kl": kl}

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` images: the likelihood's mean for ``z`` drawn from the prior."""
        return self.likelihood.mean(self.decoder(self.prior.sample(n)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """The likelihood's mean for one posterior sample ``z_T`` per image."""
        z, _ = self.posterior_sample(x)
        return self.likelihood.mean(self.decoder(z[0]))

    @torch.no_grad()
    def pictures(self, x: Tensor) -> dict[str, Tensor]:
        """Images in [0, 1] for the trainer's per-epoch grids: ``samples`` from the
        prior, and ``reconstructions``, each image of ``x`` beside its reconstruction."""
        originals = self.likelihood.unit(x)
        return {"samples": self.sample(len(x)), "reconstructions": torch.cat([originals, self.reconstruct(x)], dim=-1)}

    def components(self) -> dict[str, nn.Module]:
        """The named parts of the model, for parameter summaries."""
        parts = {
            "encoder": self.encoder,
            "posterior": self.posterior,
            "context": self.context,
            "flows": self.flows,
            "decoder": self.decoder,
            "prior": self.prior,
            "likelihood": self.likelihood,
        }
        return {name: module for name, module in parts.items() if module is not None}


_FLOW_KEYS: dict[str, Any] = {"repeat": PositiveInt, "between": str | None}


def check_flows(flows_config: Any, path: str) -> list[Problem]:
    """Every problem with a list of flow specs; each may also set ``repeat`` and ``between``."""
    if not isinstance(flows_config, list):
        return [Problem(path, "expected a list of flow specs")]
    problems = []
    for i, entry in enumerate(flows_config):
        entry_path = f"{path}[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(Problem(entry_path, "expected a mapping with a 'name' key choosing a flow"))
            continue
        for key, annotation in _FLOW_KEYS.items():
            if key in entry:
                problems += check_value(entry[key], annotation, f"{entry_path}.{key}")
        problems += flows.check({k: v for k, v in entry.items() if k not in _FLOW_KEYS}, entry_path)
        if isinstance(entry.get("between"), str):  # a bare name: its problems belong to `between`, not `between.name`
            between = flows.check({"name": entry["between"]}, f"{entry_path}.between")
            problems += [Problem(p.path.removesuffix(".name"), p.message) for p in between]
    return problems


def flow_specs(flows_config: Sequence[Mapping[str, Any]], path: str = "model.flows") -> list[tuple[str, dict]]:
    """Expand ``repeat`` and ``between`` into the flat list of ``(path, spec)`` steps.

    ``{name: iaf, repeat: 3, between: reverse}`` is ``iaf, reverse, iaf, reverse, iaf``.

    Example:
        >>> [spec["name"] for _, spec in flow_specs([{"name": "iaf", "repeat": 2, "between": "reverse"}])]
        ['iaf', 'reverse', 'iaf']
    """
    steps = []
    for i, entry in enumerate(flows_config):
        spec = {k: v for k, v in entry.items() if k not in _FLOW_KEYS}
        repeat, between = entry.get("repeat", 1), entry.get("between")
        for r in range(repeat):
            if r and between:
                steps.append((f"{path}[{i}].between", {"name": between}))
            steps.append((f"{path}[{i}]", spec))
    return steps


@dataclasses.dataclass(kw_only=True)
class ModelConfig:
    """The ``model`` section: sizes and one spec per component."""

    latent_size: PositiveInt
    context_size: NonNegativeInt = 0
    encoder: dict = component(encoders, doc="an encoder spec")
    posterior: dict = component(posteriors, "diagonal_gaussian", doc="a base posterior spec")
    flows: list = dataclasses.field(
        default_factory=list,
        metadata={"check": check_flows, "doc": "a list of flow specs, each optionally with repeat and between"},
    )
    decoder: dict = component(decoders, doc="a decoder spec")
    prior: dict = component(priors, "standard_normal", doc="a prior spec")
    likelihood: dict = component(likelihoods, "bernoulli", doc="a likelihood spec")


def build_vae(model: Mapping[str, Any], data_shape: Sequence[int], path: str = "model") -> VAE:
    """Build a :class:`VAE` from a model config for data of shape ``data_shape``.

    Raises:
        ConfigError: listing every problem in the model config.

    Example:
        >>> model = build_vae({
        ...     "latent_size": 4,
        ...     "context_size": 8,
        ...     "encoder": {"name": "mlp", "hidden_sizes": [32]},
        ...     "decoder": {"name": "mlp", "hidden_sizes": [32]},
        ...     "flows": [{"name": "iaf", "hidden_features": 16, "repeat": 2, "between": "reverse"}],
        ... }, data_shape=(1, 28, 28))
        >>> [type(f).__name__ for f in model.flows._transforms]
        ['GatedIAF', 'ReversePermutation', 'GatedIAF']
    """
    model = to_plain(model)
    problems = section_problems(ModelConfig, model, path)
    if problems:
        raise ConfigError(problems)
    model = with_defaults(ModelConfig, model)
    latent, context = model["latent_size"], model["context_size"]

    def build(registry, spec, spec_path: str, **injected):
        try:
            return registry.build(spec, spec_path, **injected)
        except ConfigError as error:
            problems.extend(error.problems)

    likelihood = build(likelihoods, model["likelihood"], f"{path}.likelihood")
    per_channel = getattr(likelihood, "params_per_channel", 1)
    output_shape = (data_shape[0] * per_channel, *data_shape[1:])
    encoder = build(encoders, model["encoder"], f"{path}.encoder", input_shape=tuple(data_shape))
    posterior = None
    if encoder is not None:
        posterior = build(
            posteriors, model["posterior"], f"{path}.posterior", in_features=encoder.out_features, latent_size=latent
        )
    decoder = build(decoders, model["decoder"], f"{path}.decoder", latent_size=latent, output_shape=output_shape)
    prior = build(priors, model["prior"], f"{path}.prior", latent_size=latent)
    steps = [
        build(flows, spec, spec_path, features=latent, context_features=context)
        for spec_path, spec in flow_specs(model["flows"], f"{path}.flows")
    ]
    if problems:
        raise ConfigError(problems)
    return VAE(encoder, posterior, decoder, likelihood, flows=steps, prior=prior, context_size=context)


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

