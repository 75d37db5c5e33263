"""From a config to a trained, evaluated run — and back from a run directory."""

from __future__ import annotations

__all__ = ["Run", "train", "evaluate_run", "load_run"]

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from omegaconf import DictConfig

from flowzoo.checkpoint import load_checkpoint
from flowzoo.config import load_config
from flowzoo.console import config_panel, console, parameter_table, results_table
from flowzoo.errors import CheckpointError, ConfigError, Problem
from flowzoo.evaluation import evaluate
from flowzoo.registry import datasets
from flowzoo.runs import RunDir
from flowzoo.trainer import Trainer, resolve_device
from flowzoo.vae import VAE, build_vae


@dataclasses.dataclass
class Run:
    """A finished run: its directory, its model (best validation weights) and its final metrics."""

    dir: RunDir
    model: VAE
    metrics: dict[str, float]


def train(config: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> Run:
    """Validate a config, train its model, and evaluate the best checkpoint.

    Nothing is written until the config, the model and the data have all been checked.

    Args:
        config: a YAML file, a mapping, or a config from :func:`~flowzoo.config.load_config`.
        overrides: ``key=value`` strings applied on top.
    """
    config = load_config(config, overrides)
    torch.manual_seed(config.seed)
    dataset = datasets.build(config.data, "data")
    model = build_vae(config.model, dataset.shape)
    splits = {split: dataset.load(split) for split in ("train", "valid", "test")}
    run = RunDir.create(config.output_dir, config.name, config)
    console.print(config_panel(config, title=f"{config.name} → {run.path}"))
    console.print(parameter_table(model))
    trainer = Trainer(model, splits, config, run)
    trainer.fit()
    best = load_checkpoint(run.best, map_location=trainer.device)
    model.load_state_dict(best["model"])
    metrics = _evaluate(model, splits[config.eval.split], config)
    run.log("test" if config.eval.split == "test" else "eval", step=best["step"], epoch=best["epoch"],
            split=config.eval.split, **metrics)
    caption = f"{len(splits[config.eval.split]):,} images; weights of the best validation epoch ({best['epoch']})"
    console.print(results_table(metrics, title=f"{config.eval.split} metrics (nats per example)", caption=caption))
    console.print(f"run directory: {run.path}")
    return Run(run, model, metrics)


def load_run(run_dir: str | Path, overrides: Iterable[str] = ()) -> tuple[DictConfig, VAE, Any]:
    """The config, model (best weights, on the configured device) and data set of a saved run.

    Only the ``eval`` section and ``trainer.device`` may be overridden: the rest
    describes the model that was trained.
    """
    run = RunDir.open(run_dir)
    overrides = list(overrides)
    fixed = [item for item in overrides if not item.startswith(("eval.", "trainer.device="))]
    if fixed:
        raise ConfigError([Problem(item.partition("=")[0], "only eval.* and trainer.device can be changed "
                                   "when loading a saved run") for item in fixed])
    config = load_config(run.config_file, overrides)
    dataset = datasets.build(config.data, "data")
    model = build_vae(config.model, dataset.shape)
    checkpoint = load_checkpoint(run.best)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{run.best} does not match the model in {run.config_file}: "
                              f"{str(error).splitlines()[0]}") from error
    return config, model.to(resolve_device(config.trainer.device)), dataset


def evaluate_run(run_dir: str | Path, overrides: Iterable[str] = ()) -> dict[str, float]:
    """Evaluate a saved run's best checkpoint (``flowzoo eval RUN_DIR``) and log the result."""
    config, model, dataset = load_run(run_dir, overrides)
    run = RunDir(run_dir)
    metrics = _evaluate(model, dataset.load(config.eval.split), config)
    run.log("eval", split=config.eval.split, **metrics)
    caption = f"{metrics['examples']:,} images; {run.best}"
    console.print(results_table(metrics, title=f"{config.eval.split} metrics (nats per example)", caption=caption))
    return metrics


def _evaluate(model: VAE, images: torch.Tensor, config: DictConfig) -> dict[str, float]:
    settings = config.eval
    with console.status(f"evaluating on {len(images):,} {settings.split} images with K={settings.iw_samples}"):
        return evaluate(model, images, iw_samples=settings.iw_samples, batch_size=settings.batch_size,
                        max_batch=settings.max_batch, seed=settings.seed)
