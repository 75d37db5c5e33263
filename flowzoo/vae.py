"""VAEs: the ELBO objective every model shares, the VAE with a flow posterior, and models built from specs.

A model is a registered component (``flowzoo list models``) built from the ``model``
section of a config; ``vae`` (the default) composes an encoder, a base posterior, a
chain of flows, a decoder, a prior and a likelihood. Every model derives from
:class:`VariationalModel`, which turns its importance weights into the losses the
trainer minimises and the pictures it draws.
"""

from __future__ import annotations

__all__ = [
    "VariationalModel",
    "VAE",
    "compose_vae",
    "build_model",
    "resolve_flows",
    "flow_specs",
]

from typing import Annotated, Any, Iterable, Mapping, Sequence

import torch
from nflows.transforms import CompositeTransform, Transform
from torch import Tensor, nn

from flowzoo.errors import ConfigError, Problem
from flowzoo.likelihoods import bits_per_dim
from flowzoo.priors import StandardNormal
from flowzoo.registry import decoders, encoders, likelihoods, models, posteriors, priors, register_model
from flowzoo.registry import flows as flow_registry
from flowzoo.schema import Checked, NonNegativeInt, PositiveInt, Resolved, resolve_value


class VariationalModel(nn.Module):
    r"""The negative ELBO and its terms, for any model that gives its importance weights.

    A subclass implements ``log_weights(x, n_samples)``, returning for ``n_samples``
    posterior samples per example ``log_px_given_z``, ``log_pz`` and ``log_qz``, each
    ``(n_samples, batch)``, and ``kl_groups``, ``(n_samples, batch, layers, groups)``:
    ``log q − log p`` split over the stochastic layers (named by ``layer_names``) and
    the latent groups within each, whose sum is ``log_qz − log_pz``. It also provides
    ``sample(n)`` (images in [0, 1] from the prior), ``encode(x)`` (one posterior
    sample of its latents, as a list of tensors) and ``decode(latents)`` (images in
    [0, 1]), ``components()`` (named parts, for parameter counts) and a
    ``likelihood`` with ``unit(x)``.
    """

    layer_names: tuple[str, ...] = ("z",)
    likelihood: nn.Module

    def log_weights(self, x: Tensor, n_samples: int = 1) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, kl_weight: float | Tensor = 1.0, free_bits: float = 0.0) -> dict[str, Tensor]:
        r"""Batch-mean losses: ``loss`` (what to minimise), ``neg_elbo``, ``recon`` (−log p(x|z)),
        ``kl``, ``bpd`` (bits/dim of the −ELBO, for 8-bit images) and ``kl/<layer>`` (with several layers).

        ``loss`` is :math:`\mathrm{recon} + \beta \sum_g \max(\mathrm{KL}_g, \lambda)`:
        the −ELBO itself with the defaults; a KL weight β below 1 during warm-up; and
        "free bits" λ (Kingma et al. 2016), which stop pushing the KL of each latent
        group g, averaged over the batch, below λ nats so that groups are not driven
        onto the prior early on. The groups are the model's (``kl_groups``).
        """
        terms = self.log_weights(x)
        recon = -terms["log_px_given_z"].mean()
        kl_groups = terms["kl_groups"].mean(dim=(0, 1))  # (layers, groups), averaged over the batch
        kl = kl_groups.sum()
        kl_objective = kl_groups.clamp(min=free_bits).sum() if free_bits else kl
        losses = {"loss": recon + kl_weight * kl_objective, "neg_elbo": recon + kl, "recon": recon, "kl": kl}
        if getattr(self.likelihood, "reports_bits_per_dim", False):
            losses["bpd"] = bits_per_dim(losses["neg_elbo"], x[0].numel())
        if len(self.layer_names) > 1:
            losses.update({f"kl/{name}": layer for name, layer in zip(self.layer_names, kl_groups.sum(-1))})
        return losses

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Images in [0, 1] decoded from one posterior sample per image."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def interpolate(self, x_a: Tensor, x_b: Tensor, steps: int = 8) -> Tensor:
        """Images decoded along the straight lines between the latents of ``x_a`` and of
        ``x_b`` (one posterior sample each), ``(batch, steps, channels, height, width)``;
        the first and last columns are the two reconstructions."""
        start, end = self.encode(x_a), self.encode(x_b)
        columns = [self.decode([torch.lerp(a, b, t) for a, b in zip(start, end)])
                   for t in torch.linspace(0, 1, steps).tolist()]
        return torch.stack(columns, dim=1)

    @torch.no_grad()
    def pictures(self, x: Tensor) -> dict[str, Tensor]:
        """Images in [0, 1] for the trainer's per-epoch grids: ``samples`` from the
        prior, and ``reconstructions``, each image of ``x`` beside its reconstruction."""
        originals = self.likelihood.unit(x)
        return {"samples": self.sample(len(x)), "reconstructions": torch.cat([originals, self.reconstruct(x)], dim=-1)}


class VAE(VariationalModel):
    r"""A VAE whose posterior is a base distribution pushed through a chain of flows.

    .. math::
        z_0 \sim q(z_0|x), \quad z_T = f_T \circ \dots \circ f_1(z_0; h), \quad
        \log q(z_T|x) = \log q(z_0|x) - \textstyle\sum_t \log|\det \partial z_t/\partial z_{t-1}|,

    and the loss is the negative ELBO,
    :math:`-\mathbb{E}_q[\log p(x|z_T) + \log p(z_T) - \log q(z_T|x)]`, estimated with
    one sample per example. The KL term is estimated by Monte Carlo for every model,
    with or without flows, so that all models are compared with the same estimator.
    The latent vector is one stochastic layer and one free-bits group.

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
        features_as_context: give the flows the encoder's features themselves as
            ``h``, with no context layer (the Sylvester-flow authors' amortization);
            ``context_size`` must then be 0.

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
        features_as_context: bool = False,
    ):
        super().__init__()
        if features_as_context and context_size:
            raise ValueError("features_as_context gives the flows the encoder's features: context_size must be 0")
        self.encoder = encoder
        self.posterior = posterior
        self.context = nn.Linear(encoder.out_features, context_size) if context_size else None
        self.features_as_context = features_as_context
        self.flows = CompositeTransform(list(flows))
        self.decoder = decoder
        self.prior = prior if prior is not None else StandardNormal(posterior.latent_size)
        self.likelihood = likelihood

    def posterior_sample(self, x: Tensor, n_samples: int = 1) -> tuple[Tensor, Tensor]:
        """Posterior samples ``z_T``, ``(n_samples, batch, latent)``, and ``log q(z_T|x)``, ``(n_samples, batch)``."""
        features = self.encoder(self.likelihood.unit(x))
        z0, log_q0 = self.posterior(features, n_samples)
        n, batch, latent = z0.shape
        context = features if self.features_as_context else None
        if self.context is not None:
            context = self.context(features)
        if context is not None:
            context = context.expand(n, batch, -1).reshape(n * batch, -1)
        z, logabsdet = self.flows(z0.reshape(n * batch, latent), context=context)
        return z.view(n, batch, latent), log_q0 - logabsdet.view(n, batch)

    def log_weights(self, x: Tensor, n_samples: int = 1) -> dict[str, Tensor]:
        """The terms of the importance weights ``log p(x|z) + log p(z) − log q(z|x)``, each ``(n_samples, batch)``."""
        z, log_q = self.posterior_sample(x, n_samples)
        params = self.decoder(z.flatten(0, 1))
        params = params.view(*z.shape[:2], *params.shape[1:])
        log_pz = self.prior.log_prob(z)
        return {
            "log_px_given_z": self.likelihood.log_prob(x, params),
            "log_pz": log_pz,
            "log_qz": log_q,
            "kl_groups": (log_q - log_pz)[..., None, None],
        }

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` images: the likelihood's mean for ``z`` drawn from the prior."""
        return self.decode([self.prior.sample(n)])

    @torch.no_grad()
    def encode(self, x: Tensor) -> list[Tensor]:
        """One posterior sample ``z_T`` per image, as the one-element list of latents."""
        return [self.posterior_sample(x)[0][0]]

    @torch.no_grad()
    def decode(self, latents: Sequence[Tensor]) -> Tensor:
        """The likelihood's mean given ``z``."""
        return self.likelihood.mean(self.decoder(latents[0]))

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


def resolve_flows(flows_config: Any, path: str) -> Resolved:
    """A list of flow specs, each completed and checked by the flows registry; an entry
    may also set ``repeat`` and ``between`` (kept as written)."""
    if not isinstance(flows_config, list):
        return flows_config, [Problem(path, "expected a list of flow specs")]
    resolved, problems = [], []
    for i, entry in enumerate(flows_config):
        entry_path = f"{path}[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(Problem(entry_path, "expected a mapping with a 'name' key choosing a flow"))
            resolved.append(entry)
            continue
        extras = {}
        for key, annotation in _FLOW_KEYS.items():
            if key in entry:
                extras[key], found = resolve_value(entry[key], annotation, f"{entry_path}.{key}")
                problems += found
        spec, found = flow_registry.resolve({k: v for k, v in entry.items() if k not in _FLOW_KEYS}, entry_path)
        problems += found
        if isinstance(entry.get("between"), str):  # a bare name: its problems belong to `between`, not `between.name`
            _, between = flow_registry.resolve({"name": entry["between"]}, f"{entry_path}.between")
            problems += [Problem(p.path.removesuffix(".name"), p.message) for p in between]
        resolved.append({**spec, **extras})
    return resolved, problems


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


FlowList = Annotated[list, Checked(resolve_flows, "a list of flow specs, each optionally with repeat and between")]


@register_model("vae", test_parameters={  # the small VAE of the contract checks (flowzoo.contracts)
    "latent_size": 4, "context_size": 3, "flows": [{"name": "iaf", "hidden_features": 8}],
    "encoder": {"name": "mlp", "hidden_sizes": [16]}, "decoder": {"name": "mlp", "hidden_sizes": [16]},
})
def compose_vae(
    data_shape: Sequence[int],
    *,
    latent_size: PositiveInt,
    context_size: NonNegativeInt = 0,
    features_as_context: bool = False,
    encoder: encoders.spec,
    posterior: posteriors.spec = {"name": "diagonal_gaussian"},  # spec defaults are copied, never mutated
    flows: FlowList = (),
    decoder: decoders.spec,
    prior: priors.spec = {"name": "standard_normal"},
    likelihood: likelihoods.spec = {"name": "bernoulli"},
) -> VAE:
    """A VAE with a flow posterior: encoder, base posterior, flows, decoder, prior, likelihood.

    Args:
        data_shape: shape of one example (set from the data set).
        latent_size: size of z.
        context_size: size of the context h given to every flow; 0 for none.
        features_as_context: the encoder's features are h (no context layer; needs
            ``context_size: 0``), as in the Sylvester-flow authors' code.
        encoder: maps x to features.
        posterior: the base posterior q(z0|x) on the encoder's features.
        flows: flow steps applied to z0 in order; an entry may set ``repeat: N`` and
            ``between: NAME`` (a flow put between repeats, e.g. ``reverse``).
        decoder: maps z to the likelihood's parameters.
        prior: p(z).
        likelihood: p(x|z).

    Example:
        >>> model = compose_vae((1, 28, 28), latent_size=4, context_size=8,
        ...                     encoder={"name": "mlp", "hidden_sizes": [32]},
        ...                     decoder={"name": "mlp", "hidden_sizes": [32]},
        ...                     flows=[{"name": "iaf", "hidden_features": 16, "repeat": 2, "between": "reverse"}])
        >>> [type(f).__name__ for f in model.flows._transforms]
        ['GatedIAF', 'ReversePermutation', 'GatedIAF']
    """
    problems: list[Problem] = []

    def build(registry, spec, spec_path: str, **injected):  # specs were resolved with the model's: build only
        try:
            return registry.instantiate(spec, spec_path, **injected)
        except ConfigError as error:
            problems.extend(error.problems)

    built_likelihood = build(likelihoods, likelihood, "likelihood")
    per_channel = getattr(built_likelihood, "params_per_channel", 1)
    output_shape = (data_shape[0] * per_channel, *data_shape[1:])
    built_encoder = build(encoders, encoder, "encoder", input_shape=tuple(data_shape))
    built_posterior = None
    if built_encoder is not None:
        built_posterior = build(
            posteriors, posterior, "posterior", in_features=built_encoder.out_features, latent_size=latent_size
        )
    built_decoder = build(decoders, decoder, "decoder", latent_size=latent_size, output_shape=output_shape)
    built_prior = build(priors, prior, "prior", latent_size=latent_size)
    context_features = context_size
    if features_as_context:
        if context_size:
            problems.append(Problem("features_as_context", "gives the flows the encoder's features, so there is no "
                                    f"context layer: set context_size to 0 (it is {context_size}) or this to false"))
        context_features = getattr(built_encoder, "out_features", 0)
    steps = [
        build(flow_registry, spec, spec_path, features=latent_size, context_features=context_features)
        for spec_path, spec in flow_specs(flows, "flows")
    ]
    if problems:
        raise ConfigError(problems)
    return VAE(built_encoder, built_posterior, built_decoder, built_likelihood, flows=steps, prior=built_prior,
               context_size=context_size, features_as_context=features_as_context)


def build_model(spec: Mapping[str, Any], data_shape: Sequence[int], path: str = "model") -> VariationalModel:
    """Build the model a ``model`` config section describes, for data of shape ``data_shape``.

    The section is resolved once, its nested specs with it, and the model is built
    from the result (:meth:`~flowzoo.registry.Registry.build`).

    Raises:
        ConfigError: listing every problem in the section.

    Example:
        >>> model = build_model({
        ...     "latent_size": 4,
        ...     "encoder": {"name": "mlp", "hidden_sizes": [32]},
        ...     "decoder": {"name": "mlp", "hidden_sizes": [32]},
        ... }, data_shape=(1, 28, 28))
        >>> type(model).__name__, model.prior.latent_size
        ('VAE', 4)
    """
    return models.build(spec, path, data_shape=tuple(data_shape))

