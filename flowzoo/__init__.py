"""flowzoo: variational autoencoders with normalizing-flow posteriors.

Compose a VAE from registered components in YAML or Python, train it, and evaluate
it with the metrics papers report (−ELBO, importance-weighted −log p(x)).
"""

# Importing the component modules registers the built-in components.
from flowzoo import datasets, decoders, encoders, flows, likelihoods, posteriors, priors  # noqa: F401
from flowzoo.config import ExperimentConfig, load_config
from flowzoo.errors import CheckpointError, ConfigError, DataError, FlowzooError
from flowzoo.evaluation import evaluate
from flowzoo.experiment import Run, evaluate_run, load_run, train
from flowzoo.flowcheck import check_flow
from flowzoo.registry import (
    list_datasets,
    list_decoders,
    list_encoders,
    list_flows,
    list_likelihoods,
    list_posteriors,
    list_priors,
    register_dataset,
    register_decoder,
    register_encoder,
    register_flow,
    register_likelihood,
    register_posterior,
    register_prior,
)
from flowzoo.vae import VAE, build_vae

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExperimentConfig",
    "FlowzooError",
    "Run",
    "VAE",
    "build_vae",
    "check_flow",
    "evaluate",
    "evaluate_run",
    "list_datasets",
    "list_decoders",
    "list_encoders",
    "list_flows",
    "list_likelihoods",
    "list_posteriors",
    "list_priors",
    "load_config",
    "load_run",
    "register_dataset",
    "register_decoder",
    "register_encoder",
    "register_flow",
    "register_likelihood",
    "register_posterior",
    "register_prior",
    "train",
]
