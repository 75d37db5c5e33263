"""The training loop. It knows models only through their losses and pictures.

A model trained here takes a batch and returns a dict of scalar tensors with the one
to minimise under ``loss``::

    model(x, kl_weight=..., free_bits=...) -> {"loss": ..., "neg_elbo": ..., ...}

and may offer ``pictures(x) -> {name: images in [0, 1]}`` for the per-epoch grids.
Everything else (flows, posteriors, likelihoods) is the model's business; the
batches come from :class:`~flowzoo.loader.TrainLoader`, the console lines from
:mod:`flowzoo.console`.
"""

from __future__ import annotations

__all__ = ["Trainer"]

import contextlib
import math
import time
import warnings
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from flowzoo import legacy
from flowzoo.checkpoint import load_checkpoint, save_checkpoint
from flowzoo.config import EvalConfig, TrainerConfig
from flowzoo.console import console, early_stop_summary, epoch_summary, training_progress, training_status
from flowzoo.distributed import Distributed, resolve_device
from flowzoo.ema import EMA
from flowzoo.errors import TrainingError
from flowzoo.evaluation import evaluate, evaluation_settings
from flowzoo.images import image_grid
from flowzoo.loader import TrainLoader
from flowzoo.runs import RunDir
from flowzoo.schedules import kl_weight, lr_factor

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    """Minibatch training with validation, early stopping, checkpoints, resumption and a non-finite guard.

    Args:
        model: see the module docstring for what it must return.
        splits: ``train`` and ``valid`` examples as tensors (converted to float per batch).
        settings: the ``trainer`` section.
        run: where metrics, pictures and checkpoints go (written by rank 0 only).
        evaluation: the ``eval`` section: how each epoch is validated (with K = 1) and
            the seed of the pictures' noise.
        seed: seeds the order of the training examples.
        config: the resolved experiment config as plain data, stored in checkpoints.
        workers: this process's place under ``torchrun``; one process by default.
        train_transform: maps each training batch (on the device) to the model's input,
            e.g. a fresh binarization of grayscale images; ``x.float()`` by default.
    """

    def __init__(
        self,
        model: nn.Module,
        splits: dict[str, Tensor],
        settings: TrainerConfig,
        run: RunDir,
        *,
        evaluation: EvalConfig = EvalConfig(),
        seed: int = 0,
        config: Mapping[str, Any],
        workers: Distributed = Distributed(),
        train_transform: Callable[[Tensor], Tensor] | None = None,
    ):
        self.settings = settings
        self.evaluation = evaluation
        self.config = config
        self.run = run
        self.workers = workers
        self.device = resolve_device(settings.device, workers)
        self.model = model.to(self.device)
        self.loader = TrainLoader(splits["train"], batch_size=settings.batch_size, seed=seed, device=self.device,
                                  workers=workers, on_device=settings.data_on_device, transform=train_transform)
        self.valid_images = splits["valid"]
        self.optimizer = _OPTIMIZERS[settings.optimizer](
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, eps=settings.optimizer_eps
        )
        self.total_steps = settings.epochs * len(self.loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(step, self.total_steps, settings.lr_schedule,
                                   settings.lr_warmup_steps, settings.lr_final_ratio),
        )
        self.autocast_dtype = _AUTOCAST[settings.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=settings.precision == "fp16")
        self.ema = EMA(model, settings.ema_decay) if settings.ema_decay else None
        if settings.compile:
            model.compile()  # in place: parameter names and checkpoints stay as they are
        self.network = model
        if workers.enabled:
            device_ids = [self.device] if self.device.type == "cuda" else None
            self.network = DistributedDataParallel(model, device_ids=device_ids)
        self.kl_weight = torch.ones((), device=self.device)  # a tensor, so a compiled forward is not re-traced
        self.kl_weight_value = 1.0
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_valid = math.inf
        self.best_epoch = 0
        self.stale_epochs = 0  # epochs since the best one that count toward early stopping
        self.window: dict[str, Tensor] = {}
        self.window_steps = 0
        self.bad_steps = 0
        self.rollbacks = 0

    def fit(self) -> None:
        """Train until ``trainer.epochs`` epochs are done or early stopping ends the run (continuing a resumed run)."""
        settings = self.settings
        if settings.tensorboard and self.workers.is_main:
            self.run.open_tensorboard(purge_step=self.step)
        if self.step == 0:
            self._checkpoint(self.run.last)  # something to roll back to from the first step on
        if self.workers.is_main:
            self.run.log("start", step=self.step, epoch=self.epoch)  # when (re)started: see report.training_seconds
        try:
            with training_progress(disable=not self.workers.is_main) as progress:
                task = progress.add_task("training", total=self.total_steps, completed=self.step, status="")
                while self.epoch < settings.epochs and not self.stopped_early:
                    progress.update(task, description=f"epoch {self.epoch + 1}/{settings.epochs}")
                    self.network.train()
                    started, seen = time.perf_counter(), 0
                    for size, x in self.loader.epoch(self.batch_in_epoch):
                        self._train_step(x)  # forward, backward, guard, update
                        self.step += 1
                        self.batch_in_epoch += 1
                        seen += size
                        if self.step % settings.log_every == 0 and self.window_steps:
                            rate = seen / (time.perf_counter() - started)
                            progress.update(task, status=training_status(self._log_window(rate), rate))
                            started, seen = time.perf_counter(), 0
                        progress.update(task, completed=self.step)
                        if settings.checkpoint_every and self.step % settings.checkpoint_every == 0:
                            self._checkpoint(self.run.last)
                    self._end_epoch(progress)
        finally:
            self.run.close()

    def _train_step(self, x: Tensor) -> None:
        """Forward and backward; then the guard: a non-finite step is skipped, any other applied."""
        settings = self.settings
        weight = (kl_weight(self.epoch + 1, settings.kl_warmup_epochs) if settings.kl_warmup_epochs  # per epoch
                  else kl_weight(self.step + 1, settings.kl_warmup_steps))  # step n of the warm-up weighs n / warm-up
        if weight != self.kl_weight_value:
            self.kl_weight.fill_(weight)
            self.kl_weight_value = weight
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            losses = self.network(x, kl_weight=self.kl_weight, free_bits=settings.free_bits)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        bad = ~torch.isfinite(losses["loss"].detach())
        if settings.grad_clip:
            parameters = [p for p in self.model.parameters() if p.grad is not None]
            bad |= ~torch.isfinite(torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip))
        # The one host synchronisation per step: a bad step must be skipped before the
        # optimizer applies it. Without clipping only the loss is checked (a gradient
        # norm costs a pass over every gradient); a non-finite gradient behind a finite
        # loss makes the next losses non-finite, which the rollback then undoes. The
        # sum over ranks makes every rank skip together.
        if self.workers.sum(bad.float()).item():
            self.scaler.update()  # fp16: lower the scale after an overflow
            self._skip_step()
            return
        self.bad_steps = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with warnings.catch_warnings():  # fp16: the scaler skipped an overflowing step; the schedule moves on
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step()` before", UserWarning)
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.step)
        for key, value in losses.items():  # summed on the device: no host sync per step
            self.window[key] = self.window.get(key, 0) + value.detach().float()
        self.window_steps += 1

    def _skip_step(self) -> None:
        self.bad_steps += 1
        if self.workers.is_main:
            self.run.log("skipped", step=self.step, epoch=self.epoch, consecutive=self.bad_steps)
        if self.bad_steps >= self.settings.max_bad_steps:
            self._roll_back()

    def _roll_back(self) -> None:
        """Restore weights and optimizer state from last.pt, keeping the data position."""
        if self.rollbacks >= self.settings.max_rollbacks:
            raise TrainingError(
                f"training diverged: {self.bad_steps} consecutive steps with a non-finite loss or gradient at step "
                f"{self.step}, after {self.rollbacks} rollback(s) to {self.run.last}. Try a lower trainer.lr, "
                "trainer.grad_clip, trainer.kl_warmup_steps, or check the data for NaNs."
            )
        state = load_checkpoint(self.run.last, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.rollbacks += 1
        if self.workers.is_main:
            self.run.log("rollback", step=self.step, epoch=self.epoch, to_step=state["step"], rollbacks=self.rollbacks)
            console.print(
                f"[yellow]{self.bad_steps} consecutive non-finite steps at step {self.step}: restored the weights "
                f"of step {state['step']} from {self.run.last} (rollback {self.rollbacks} of at most "
                f"{self.settings.max_rollbacks})"
            )
        self.bad_steps = 0

    def _log_window(self, rate: float) -> dict[str, float]:
        """Log the means of the losses since the last record, over all ranks, and return them."""
        keys = sorted(self.window)
        totals = self.workers.sum(torch.stack([self.window[k] for k in keys]))
        means = dict(zip(keys, (totals / (self.window_steps * self.workers.world_size)).tolist()))
        self.window, self.window_steps = {}, 0
        if self.workers.is_main:
            self.run.log("train", step=self.step, epoch=self.epoch, images_per_second=round(rate, 1),
                         lr=self.scheduler.get_last_lr()[0], kl_weight=self.kl_weight_value, **means)
        return means

    def _end_epoch(self, progress) -> None:
        settings = self.settings
        self.epoch += 1
        self.batch_in_epoch = 0
        valid = self._validate()
        improved = valid["neg_elbo"] < self.best_valid
        if improved:
            self.best_valid, self.best_epoch, self.stale_epochs = valid["neg_elbo"], self.epoch, 0
        elif self.epoch >= settings.early_stopping_start_epoch:
            self.stale_epochs += 1
        self._pictures()
        if improved:
            self._checkpoint(self.run.best)
        stopping = self.stopped_early
        if stopping and self.workers.is_main:  # before last.pt, which then holds the record: a resume writes no second
            self.run.log("early_stop", step=self.step, epoch=self.epoch, best_epoch=self.best_epoch,
                         best_valid_neg_elbo=self.best_valid, stale_epochs=self.stale_epochs,
                         patience=settings.early_stopping_patience)
        self._checkpoint(self.run.last)
        if self.workers.is_main:
            patience = settings.early_stopping_patience
            waiting = (self.stale_epochs, patience) if patience else None
            progress.console.print(epoch_summary(self.epoch, valid, improved, waiting))
            if stopping:
                progress.console.print(early_stop_summary(self.epoch, self.stale_epochs, self.best_epoch,
                                                          self.best_valid, settings.early_stopping_start_epoch))

    @property
    def stopped_early(self) -> bool:
        """More epochs in a row without a better validation −ELBO than ``trainer.early_stopping_patience``."""
        patience = self.settings.early_stopping_patience
        return bool(patience) and self.stale_epochs > patience

    def evaluated_weights(self):
        """Context in which the model holds the weights used for evaluation (the EMA, if on)."""
        return self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext()

    def _validate(self) -> dict[str, float]:
        with self.evaluated_weights():
            metrics = evaluate(self.model, self.valid_images, workers=self.workers,
                               **evaluation_settings(self.evaluation, iw_samples=1))
        if self.workers.is_main:
            self.run.log("valid", step=self.step, epoch=self.epoch, **metrics)
        return metrics

    def _pictures(self) -> None:
        count = self.settings.picture_count
        if not (count and self.workers.is_main and hasattr(self.model, "pictures")):
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self.evaluated_weights():
            torch.manual_seed(self.evaluation.seed)  # the same noise every epoch; training's stream untouched
            pictures = self.model.pictures(self.valid_images[:count].to(self.device).float())
        for name, images in pictures.items():
            self.run.save_image(name, image_grid(images), self.epoch, self.step)

    # -- checkpoints --------------------------------------------------------------------

    def _checkpoint(self, path) -> None:
        """Write a checkpoint (rank 0), unless the weights are not finite: then roll back."""
        ranks = self.workers.gather(_rng_state(self.device))
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self.bad_steps = self.settings.max_bad_steps
            self._roll_back()
            return
        if self.workers.is_main:
            save_checkpoint(self.state_dict(ranks), path)

    def state_dict(self, rank_rng: list[dict[str, Tensor]] | None = None) -> dict[str, Any]:
        """Everything needed to continue the run, loadable with ``weights_only=True``."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_valid": self.best_valid,
            "early_stopping": {"best_epoch": self.best_epoch, "stale_epochs": self.stale_epochs},
            "window": {"sums": {k: v.cpu() for k, v in self.window.items()}, "steps": self.window_steps},
            "rng": {**self.loader.state_dict(), "ranks": rank_rng or [_rng_state(self.device)]},
            "metrics_size": self.run.metrics_size(),
            "config": self.config,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.best_valid = state["batch_in_epoch"], state["best_valid"]
        early_stopping = legacy.early_stopping_state(state)
        self.best_epoch, self.stale_epochs = early_stopping["best_epoch"], early_stopping["stale_epochs"]
        self.window = {k: v.to(self.device) for k, v in state["window"]["sums"].items()}
        self.window_steps = state["window"]["steps"]
        self.loader.load_state_dict(state["rng"])
        ranks = state["rng"]["ranks"]
        if len(ranks) == self.workers.world_size:  # else: fresh sampling noise, same data order
            _set_rng_state(ranks[self.workers.rank], self.device)
        if self.workers.is_main:
            self.run.truncate_metrics(state["metrics_size"])  # records after the checkpoint are written again


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
