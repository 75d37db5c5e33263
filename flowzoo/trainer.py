"""The training loop. It knows models only through ``model(x)["loss"]``."""

from __future__ import annotations

__all__ = ["TrainerConfig", "Trainer", "resolve_device"]

import dataclasses
import math
import re
import time
from typing import Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from flowzoo.checkpoint import save_checkpoint
from flowzoo.console import training_progress
from flowzoo.errors import Problem
from flowzoo.evaluation import evaluate
from flowzoo.runs import RunDir
from flowzoo.schema import NonNegativeFloat, PositiveFloat, PositiveInt


def check_device(value: Any, path: str) -> list[Problem]:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device must exist on this machine."""
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return [Problem(path, f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")]
    if value.startswith("cuda") and not torch.cuda.is_available():
        return [Problem(path, f"'{value}' asked for, but this machine has no CUDA device; use 'auto' or 'cpu'")]
    return []


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclasses.dataclass(kw_only=True)
class TrainerConfig:
    """The ``trainer`` section."""

    epochs: PositiveInt = 100
    batch_size: PositiveInt = 100
    optimizer: Literal["adam", "adamax"] = "adamax"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    device: str = dataclasses.field(default="auto", metadata={"check": check_device})
    log_every: PositiveInt = 100
    """Steps between train records in metrics.jsonl and loss updates on the progress bar."""


_OPTIMIZERS = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}


class Trainer:
    """Minibatch training with per-epoch validation and best/last checkpoints.

    Args:
        model: returns a dict with a scalar ``loss`` (and other scalars to log) for a batch.
        splits: ``train`` and ``valid`` examples as tensors (converted to float per batch).
        config: the resolved experiment config (its ``trainer`` and ``eval`` sections
            are used; all of it is stored in checkpoints).
        run: where metrics and checkpoints go.
    """

    def __init__(self, model: nn.Module, splits: dict[str, Tensor], config: DictConfig, run: RunDir):
        self.settings = config.trainer
        self.config = config
        self.device = resolve_device(self.settings.device)
        self.model = model.to(self.device)
        self.train_images = splits["train"].to(self.device)
        self.valid_images = splits["valid"].to(self.device)
        self.run = run
        self.optimizer = _OPTIMIZERS[self.settings.optimizer](
            model.parameters(), lr=self.settings.lr, weight_decay=self.settings.weight_decay
        )
        self.data_order = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.epoch = 0
        self.best_valid = math.inf

    def fit(self) -> None:
        """Train for the configured number of epochs."""
        batches = math.ceil(len(self.train_images) / self.settings.batch_size)
        with training_progress() as progress:
            task = progress.add_task("training", total=batches * self.settings.epochs, status="")
            while self.epoch < self.settings.epochs:
                progress.update(task, description=f"epoch {self.epoch + 1}/{self.settings.epochs}")
                self._train_epoch(progress, task)
                self.epoch += 1
                valid = self._validate()
                improved = valid["neg_elbo"] < self.best_valid
                if improved:
                    self.best_valid = valid["neg_elbo"]
                    save_checkpoint(self.state_dict(), self.run.best)
                save_checkpoint(self.state_dict(), self.run.last)
                mark = " [green](best)" if improved else ""
                progress.console.print(
                    f"epoch {self.epoch}: valid −ELBO {valid['neg_elbo']:.2f} "
                    f"(recon {valid['recon']:.2f}, KL {valid['kl']:.2f}){mark}"
                )

    def _train_epoch(self, progress, task) -> None:
        self.model.train()
        order = torch.randperm(len(self.train_images), generator=self.data_order).to(self.device)
        running: dict[str, Tensor] = {}
        window, seen, started = 0, 0, time.perf_counter()
        for batch in order.split(self.settings.batch_size):
            losses = self.model(self.train_images[batch].float())
            self.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            self.optimizer.step()
            self.step += 1
            window += 1
            seen += len(batch)
            for key, value in losses.items():  # summed on the device: no host sync per step
                running[key] = running.get(key, 0) + value.detach()
            if self.step % self.settings.log_every == 0:
                means = {key: (total / window).item() for key, total in running.items()}
                rate = seen / (time.perf_counter() - started)
                self.run.log("train", step=self.step, epoch=self.epoch, images_per_second=round(rate, 1), **means)
                progress.update(task, status=f"loss {means['loss']:.2f}  KL {means.get('kl', math.nan):.2f}")
                running, window = {}, 0
            progress.advance(task)

    def _validate(self) -> dict[str, float]:
        settings = self.config.eval
        metrics = evaluate(self.model, self.valid_images, iw_samples=1, batch_size=settings.batch_size,
                           max_batch=settings.max_batch, seed=settings.seed)
        self.run.log("valid", step=self.step, epoch=self.epoch, **metrics)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run, loadable with ``weights_only=True``."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "best_valid": self.best_valid,
            "rng": {"torch": torch.get_rng_state(), "data_order": self.data_order.get_state()},
            "config": OmegaConf.to_container(self.config),
        }
