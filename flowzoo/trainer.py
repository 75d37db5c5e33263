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
from flowzoo.graphs import GraphedStep
from flowzoo.images import image_grid, sample_images
from flowzoo.loader import TrainLoader
from flowzoo.optim import make_optimizer
from flowzoo.runs import RunDir
from flowzoo.schedules import kl_weight, lr_factor

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
        self.optimizer = make_optimizer(settings.optimizer, model.parameters(), lr=settings.lr,
                                        weight_decay=settings.weight_decay,
                                        eps=settings.optimizer_eps)
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
        self.kl_weight = torch.ones((), device=self.device)  # a tensor: no re-tracing, no re-capture
        self.kl_weight_value = 1.0
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_valid = math.inf
        self.best_epoch = 0
        self.stale_epochs = 0  # epochs since the best one that count toward early stopping
        self.window: dict[str, Tensor] = {}
        # The guard's state lives on the device and is read every log_every steps (_settle):
        # the flag of this step (the optimizer and the EMA skip on it), the applied steps
        # in the window, the current run of bad steps, and that run's length after each
        # step since the last read.
        self.skip = torch.zeros((), device=self.device)
        self.optimizer.found_inf = self.skip
        self.window_steps = torch.zeros((), device=self.device)
        self.consecutive = torch.zeros((), device=self.device)
        self.runs_since_read = torch.zeros(settings.log_every, device=self.device)
        self.position = torch.zeros(1, dtype=torch.long, device=self.device)  # of this step in runs_since_read
        self.read_at = 0
        self.graphed = None
        if settings.cuda_graphs:
            _check_capturable(self.device, workers)
            self.graphed = GraphedStep(self._device_step)
            self._lr_on_device()
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
            # Every record's epoch counts from 1: the epoch its step belongs to (train records, the
            # epoch in progress; valid and test records, the epoch just finished).
            self.run.log("start", step=self.step, epoch=self.epoch + 1)  # when (re)started: see report.training_seconds
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
                        if self.step % settings.log_every == 0:
                            self._settle()
                            rate = seen / (time.perf_counter() - started)
                            means = self._log_window(rate)
                            if means is not None:
                                progress.update(task, status=training_status(means, rate))
                            started, seen = time.perf_counter(), 0
                        progress.update(task, completed=self.step)
                        if settings.checkpoint_every and self.step % settings.checkpoint_every == 0:
                            self._checkpoint(self.run.last)
                    self._end_epoch(progress)
        finally:
            self.run.close()

    def _train_step(self, x: Tensor) -> None:
        """One step: the schedules' values into their device tensors, then the device part,
        replayed from a CUDA graph with ``trainer.cuda_graphs`` (for every full batch)."""
        settings = self.settings
        weight = (kl_weight(self.epoch + 1, settings.kl_warmup_epochs) if settings.kl_warmup_epochs  # per epoch
                  else kl_weight(self.step + 1, settings.kl_warmup_steps))  # step n of the warm-up weighs n / warm-up
        if weight != self.kl_weight_value:
            self.kl_weight.fill_(weight)
            self.kl_weight_value = weight
        if self.ema is not None:
            self.ema.schedule(self.step)
        if self.graphed is not None and len(x) == self.settings.batch_size:
            self.graphed(x)
        else:
            self._device_step(x)
        self.scheduler.step()  # the schedules follow the step count, skipped steps included

    def _device_step(self, x: Tensor) -> None:
        """Forward and backward; then the guard: a non-finite step is skipped, any other applied.

        Nothing here reads a tensor on the host: the guard's decision is a device flag
        that the optimizer, the gradient scaler and the EMA act on (see :mod:`flowzoo.optim`),
        and every tensor written stays in place (see :mod:`flowzoo.graphs`).
        """
        settings = self.settings
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None,
                            cache_enabled=not settings.cuda_graphs):
            losses = self.network(x, kl_weight=self.kl_weight, free_bits=settings.free_bits)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)  # fp16: records the overflow for scaler.update() on the device
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if settings.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in parameters], foreach=True)
        bad = ~(torch.isfinite(losses["loss"].detach()) & torch.isfinite(norm))
        skip = self.workers.sum(bad.float()) > 0  # every rank skips together
        self.skip.copy_(skip)
        self.optimizer.step()  # a no-op on the device when self.skip is 1
        self.scaler.update()  # fp16: lower the scale after an overflow, raise it after a good run
        if self.ema is not None:
            self.ema.move(skipped=self.skip)
        for key, value in losses.items():
            if key not in self.window:
                self.window[key] = torch.zeros((), device=self.device)
            self.window[key].add_(torch.where(skip, 0, value.detach().float()))
        self.window_steps += 1 - self.skip
        self.consecutive.add_(1).mul_(self.skip)
        self.runs_since_read.index_copy_(0, self.position, self.consecutive.view(1))
        self.position += 1

    def _settle(self) -> None:
        """Read what the guard did since the last read: log the skipped steps, and roll back
        to last.pt when ``max_bad_steps`` of them came in a row."""
        runs = self.runs_since_read[: self.step - self.read_at].tolist()
        steps_per_epoch = len(self.loader)
        for offset, run in enumerate(runs):
            if run:
                step = self.read_at + offset
                if self.workers.is_main:
                    self.run.log("skipped", step=step, epoch=step // steps_per_epoch + 1, consecutive=int(run))
        self.read_at = self.step
        self.position.zero_()
        self.bad_steps = int(max(runs, default=0))
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
        if self.graphed is not None:  # the optimizer's state tensors are new ones
            self._lr_on_device()
            self.graphed.reset()
        self.rollbacks += 1
        if self.workers.is_main:
            self.run.log("rollback", step=self.step, epoch=self.epoch + 1, to_step=state["step"],
                         rollbacks=self.rollbacks)
            console.print(
                f"[yellow]{self.bad_steps} consecutive non-finite steps at step {self.step}: restored the weights "
                f"of step {state['step']} from {self.run.last} (rollback {self.rollbacks} of at most "
                f"{self.settings.max_rollbacks})"
            )
        self.bad_steps = 0
        self.consecutive.zero_()

    def _log_window(self, rate: float) -> dict[str, float] | None:
        """Log the means of the losses over the applied steps since the last record, over all
        ranks, and return them (None when every step since was skipped)."""
        keys = sorted(self.window)
        *totals, applied = self.workers.sum(torch.stack([*(self.window[k] for k in keys), self.window_steps])).tolist()
        if not applied:
            return None
        means = {key: total / applied for key, total in zip(keys, totals)}  # applied: summed over the ranks too
        for total in (*self.window.values(), self.window_steps):
            total.zero_()  # in place: a captured step adds to these tensors
        if self.workers.is_main:
            self.run.log("train", step=self.step, epoch=self.epoch + 1, images_per_second=round(rate, 1),
                         lr=float(self.scheduler.get_last_lr()[0]), kl_weight=self.kl_weight_value, **means)
        return means

    def _end_epoch(self, progress) -> None:
        settings = self.settings
        self.epoch += 1
        self.batch_in_epoch = 0
        valid = self._validate()
        if not math.isfinite(valid["neg_elbo"]):
            self._invalid_validation(valid["neg_elbo"])
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

    def _invalid_validation(self, value: float) -> None:
        """End the run: the model gives a non-finite −ELBO on validation images. Neither best.pt nor
        last.pt takes these weights, so last.pt still holds the last good checkpoint to resume from."""
        raise TrainingError(
            f"the validation −ELBO is {value} after epoch {self.epoch} (step {self.step}), although the training "
            f"losses were finite: the model overflows on some validation images. {self.run.last} keeps the last "
            "checkpoint before it; try a lower trainer.lr, trainer.grad_clip, or a flow that stays finite on "
            "large latents (flowzoo check-flow NAME trains it in a small VAE)."
        )

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
            images = sample_images(self.valid_images, count, self.evaluation.seed)  # the same ones every epoch
            pictures = self.model.pictures(images.to(self.device).float())
        for name, images in pictures.items():
            self.run.save_image(name, image_grid(images), self.epoch, self.step)

    # -- checkpoints --------------------------------------------------------------------

    def _checkpoint(self, path) -> None:
        """Write a checkpoint (rank 0), unless the weights are not finite: then roll back."""
        self._settle()  # a checkpoint records a decided guard
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
            "optimizer": _plain_lr(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_valid": self.best_valid,
            "early_stopping": {"best_epoch": self.best_epoch, "stale_epochs": self.stale_epochs},
            "window": {"sums": {k: v.cpu() for k, v in self.window.items()}, "steps": int(self.window_steps),
                       "consecutive_bad": int(self.consecutive)},
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
        if self.graphed is not None:
            self._lr_on_device()
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.best_valid = state["batch_in_epoch"], state["best_valid"]
        early_stopping = legacy.early_stopping_state(state)
        self.best_epoch, self.stale_epochs = early_stopping["best_epoch"], early_stopping["stale_epochs"]
        self.window = {k: v.to(self.device) for k, v in state["window"]["sums"].items()}
        self.window_steps.fill_(state["window"]["steps"])
        self.consecutive.fill_(state["window"].get("consecutive_bad", 0))  # absent before the device-side guard
        self.read_at = self.step
        self.loader.load_state_dict(state["rng"])
        ranks = state["rng"]["ranks"]
        if len(ranks) == self.workers.world_size:  # else: fresh sampling noise, same data order
            _set_rng_state(ranks[self.workers.rank], self.device)
        if self.workers.is_main:
            self.run.truncate_metrics(state["metrics_size"])  # records after the checkpoint are written again


    def _lr_on_device(self) -> None:
        """The learning rate as a device tensor, which the scheduler fills and a captured step reads."""
        for group in self.optimizer.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=self.device)


def _plain_lr(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict with the learning rates as numbers, as every run writes them."""
    groups = [{**group, "lr": float(group["lr"])} for group in state["param_groups"]]
    return {**state, "param_groups": groups}


def _check_capturable(device: torch.device, workers: Distributed) -> None:
    """What ``trainer.cuda_graphs`` needs at run time, beyond what the config's check saw."""
    if device.type != "cuda":
        raise TrainingError(f"trainer.cuda_graphs needs a CUDA device; this run is on {device}")
    if workers.enabled:
        raise TrainingError("trainer.cuda_graphs is not supported under torchrun (the gradient all-reduce "
                            "would have to be captured too); set trainer.cuda_graphs=false")


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
