"""flowzoo: variational autoencoders with normalizing-flow posteriors.

Compose a VAE from registered components in YAML or Python, train it, and evaluate
it with the metrics papers report (−ELBO, importance-weighted −log p(x)).
"""

import importlib.metadata

# Importing the component modules registers the built-in components.
from flowzoo import blocks, datasets, decoders, encoders, flows, likelihoods, posteriors, priors, resnet_vae  # noqa: F401
from flowzoo.config import ExperimentConfig, load_config
from flowzoo.errors import CheckpointError, ConfigError, DataError, FlowzooError
from flowzoo.evaluation import evaluate
from flowzoo.experiment import Run, evaluate_run, load_run, train
from flowzoo.flowcheck import check_flow
from flowzoo.registry import (
    list_blocks,
    list_datasets,
    list_decoders,
    list_encoders,
    list_flows,
    list_likelihoods,
    list_models,
    list_posteriors,
    list_priors,
    register_block,
    register_dataset,
    register_decoder,
    register_encoder,
    register_flow,
    register_likelihood,
    register_model,
    register_posterior,
    register_prior,
)
from flowzoo.vae import VAE, build_model

__version__ = importlib.metadata.version("flowzoo")
"""The installed distribution's version (its package metadata)."""

__all__ = [
    "__version__",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExperimentConfig",
    "FlowzooError",
    "Run",
    "VAE",
    "build_model",
    "check_flow",
    "evaluate",
    "evaluate_run",
    "list_blocks",
    "list_datasets",
    "list_decoders",
    "list_encoders",
    "list_flows",
    "list_likelihoods",
    "list_models",
    "list_posteriors",
    "list_priors",
    "load_config",
    "load_run",
    "register_block",
    "register_dataset",
    "register_decoder",
    "register_encoder",
    "register_flow",
    "register_likelihood",
    "register_model",
    "register_posterior",
    "register_prior",
    "train",
]
