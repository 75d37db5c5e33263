"""The training loop. It knows models only through their losses and pictures.

A model trained here takes a batch and returns a dict of scalar tensors with the one
to minimise under ``loss``::

    model(x, kl_weight=..., free_bits=...) -> {"loss": ..., "neg_elbo": ..., ...}

and may offer ``pictures(x) -> {name: images in [0, 1]}`` for the per-epoch grids.
Everything else (flows, posteriors, likelihoods) is the model's business.
"""

from __future__ import annotations

__all__ = ["TrainerConfig", "Trainer", "resolve_device"]

import contextlib
import dataclasses
import math
import re
import time
import warnings
from typing import Annotated, Any, Callable, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from flowzoo.checkpoint import load_checkpoint, save_checkpoint
from flowzoo.console import console, training_progress
from flowzoo.distributed import Distributed
from flowzoo.ema import EMA
from flowzoo.errors import Problem, TrainingError
from flowzoo.evaluation import evaluate, evaluation_settings
from flowzoo.images import image_grid
from flowzoo.runs import RunDir
from flowzoo.schedules import LR_SCHEDULES, kl_weight, lr_factor
from flowzoo.schema import Checked, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range, UnitInterval


def check_device(value: Any, path: str) -> list[Problem]:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device must exist on this machine."""
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return [Problem(path, f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")]
    if value.startswith("cuda") and not torch.cuda.is_available():
        return [Problem(path, f"'{value}' asked for, but this machine has no CUDA device; use 'auto' or 'cpu'")]
    return []


def resolve_device(name: str, workers: Distributed = Distributed()) -> torch.device:
    """``auto`` is a CUDA device if there is one, else the CPU; under ``torchrun`` each
    process takes the CUDA device of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", workers.local_rank if workers.enabled else torch.cuda.current_device())
    return torch.device(name)


@dataclasses.dataclass(kw_only=True)
class TrainerConfig:
    """The ``trainer`` section."""

    epochs: PositiveInt = 100
    """Passes over the training set."""
    batch_size: PositiveInt = 100
    """Examples per step, over all processes together when distributed."""
    optimizer: Literal["adam", "adamax"] = "adamax"
    """Adamax is what the IAF paper used."""
    lr: PositiveFloat = 1e-3
    """Peak learning rate."""
    weight_decay: NonNegativeFloat = 0.0
    """L2 penalty of the optimizer."""
    lr_schedule: Literal[LR_SCHEDULES] = "constant"  # type: ignore[valid-type]
    """``constant``, or ``cosine``, ``linear`` or ``exponential`` decay to ``lr_final_ratio · lr`` at the last step."""
    lr_warmup_steps: NonNegativeInt = 0
    """Steps of linear learning-rate warm-up from 0."""
    lr_final_ratio: Annotated[float, Range(min=0, max=1, min_exclusive=True)] = 0.01
    """Learning rate at the last step of a decaying schedule, as a fraction of ``lr``."""
    kl_warmup_steps: NonNegativeInt = 0
    """Steps over which the KL term's weight grows linearly from 0 to 1 (0: no warm-up)."""
    free_bits: NonNegativeFloat = 0.0
    """Nats of KL per latent group that the loss does not push below (Kingma et al. 2016's λ)."""
    grad_clip: NonNegativeFloat = 0.0
    """Largest gradient norm; larger gradients are scaled down (0: no clipping)."""
    ema_decay: UnitInterval = 0.0
    """Decay of the Polyak average of the weights used for validation, test and pictures (0: off)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast dtype of the forward pass; fp16 adds a gradient scaler. Weights stay fp32."""
    compile: bool = False
    """Compile the model's forward pass with ``torch.compile``."""
    data_on_device: Literal["auto", "always", "never"] = "auto"
    """Keep the training set on the GPU (auto: when it takes under a quarter of the free memory);
    otherwise batches are copied from pinned memory."""
    device: Annotated[str, Checked(check_device, "'auto', 'cpu', 'cuda' or 'cuda:N'")] = "auto"
    """``auto`` is CUDA when there is a GPU, else the CPU."""
    log_every: PositiveInt = 100
    """Steps between train records in metrics.jsonl and updates of the progress bar."""
    checkpoint_every: NonNegativeInt = 1000
    """Steps between checkpoints to last.pt, besides the one at each epoch's end (0: epoch ends only)."""
    max_bad_steps: PositiveInt = 20
    """Consecutive steps with a non-finite loss or gradient (each skipped) before rolling back to last.pt."""
    max_rollbacks: NonNegativeInt = 3
    """Rollbacks before the run stops with an error."""
    picture_count: NonNegativeInt = 64
    """Images in each epoch's sample and reconstruction grids (0: none)."""
    tensorboard: bool = True
    """Also write scalars and images as TensorBoard events under the run directory."""


_OPTIMIZERS = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    """Minibatch training with validation, checkpoints, resumption and a non-finite guard.

    Args:
        model: see the module docstring for what it must return.
        splits: ``train`` and ``valid`` examples as tensors (converted to float per batch).
        config: the resolved experiment config (its ``trainer``, ``eval`` and ``seed``
            are used; all of it is stored in checkpoints).
        run: where metrics, pictures and checkpoints go (written by rank 0 only).
        workers: this process's place under ``torchrun``; one process by default.
        train_transform: maps each training batch (on the device) to the model's input,
            e.g. a fresh binarization of grayscale images; ``x.float()`` by default.
    """

    def __init__(
        self,
        model: nn.Module,
        splits: dict[str, Tensor],
        config: DictConfig,
        run: RunDir,
        workers: Distributed = Distributed(),
        train_transform: Callable[[Tensor], Tensor] | None = None,
    ):
        self.settings = settings = config.trainer
        self.train_transform = train_transform or Tensor.float
        self.config = config
        self.run = run
        self.workers = workers
        self.device = resolve_device(settings.device, workers)
        self.model = model.to(self.device)
        self.train_images = self._place(splits["train"])
        self.valid_images = splits["valid"]
        self.optimizer = _OPTIMIZERS[settings.optimizer](
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        batches_per_epoch = len(self._global_batches(torch.arange(len(self.train_images))))  # one rule for both
        self.total_steps = settings.epochs * batches_per_epoch
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
        self.data_order = torch.Generator().manual_seed(config.seed)
        self.epoch_order = self.data_order.get_state()
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_valid = math.inf
        self.window: dict[str, Tensor] = {}
        self.window_steps = 0
        self.bad_steps = 0
        self.rollbacks = 0
        self._staging: list[tuple[Tensor, torch.cuda.Event | None]] = []

    # -- data ---------------------------------------------------------------------------

    def _place(self, images: Tensor) -> Tensor:
        if self.device.type != "cuda":
            return images
        free, _ = torch.cuda.mem_get_info(self.device)
        mode = self.settings.data_on_device
        if mode == "always" or (mode == "auto" and images.nbytes < free / 4):
            return images.to(self.device)
        return images.pin_memory()

    def _global_batches(self, order: Tensor) -> list[Tensor]:
        batches = list(order.split(self.settings.batch_size))
        if self.workers.enabled and len(batches[-1]) < self.workers.world_size:
            batches.pop()  # a rank with no examples would have no loss to average
        return batches

    def _fetch(self, indices: Tensor) -> Tensor:
        """This step's examples on the device: an index on device-resident data, or a
        gather into one of two pinned buffers and an asynchronous copy."""
        if self.train_images.device == self.device:
            return self.train_images[indices.to(self.device, non_blocking=True)]
        if not self._staging:
            shape = (self.settings.batch_size, *self.train_images.shape[1:])
            self._staging = [(torch.empty(shape, dtype=self.train_images.dtype).pin_memory(), None) for _ in range(2)]
        buffer, copied = self._staging[self.step % 2]
        if copied is not None:
            copied.synchronize()  # the copy out of this buffer two steps ago has finished
        staged = buffer[: len(indices)]
        torch.index_select(self.train_images, 0, indices, out=staged)
        batch = staged.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._staging[self.step % 2] = (buffer, event)
        return batch

    # -- training -----------------------------------------------------------------------

    def fit(self) -> None:
        """Train until ``trainer.epochs`` epochs are done (continuing a resumed run)."""
        if self.settings.tensorboard and self.workers.is_main:
            self.run.open_tensorboard(purge_step=self.step)
        if self.step == 0:
            self._checkpoint(self.run.last)  # something to roll back to from the first step on
        if self.workers.is_main:
            self.run.log("start", step=self.step, epoch=self.epoch)  # when (re)started: see report.training_seconds
        try:
            with training_progress(disable=not self.workers.is_main) as progress:
                task = progress.add_task("training", total=self.total_steps, completed=self.step, status="")
                while self.epoch < self.settings.epochs:
                    progress.update(task, description=f"epoch {self.epoch + 1}/{self.settings.epochs}")
                    self._train_epoch(progress, task)
                    self._end_epoch(progress)
        finally:
            self.run.close()

    def _train_epoch(self, progress, task) -> None:
        self.network.train()
        if self.batch_in_epoch == 0:
            self.epoch_order = self.data_order.get_state()
        self.data_order.set_state(self.epoch_order)  # a resumed epoch draws the same order again
        order = torch.randperm(len(self.train_images), generator=self.data_order)
        started, seen = time.perf_counter(), 0
        for batch in self._global_batches(order)[self.batch_in_epoch :]:
            self._train_step(self._fetch(self.workers.shard(batch)))
            self.step += 1
            self.batch_in_epoch += 1
            seen += len(batch)
            if self.step % self.settings.log_every == 0 and self.window_steps:
                rate = seen / (time.perf_counter() - started)
                status = self._log_window(rate)
                progress.update(task, status=status)
                started, seen = time.perf_counter(), 0
            progress.update(task, completed=self.step)
            if self.settings.checkpoint_every and self.step % self.settings.checkpoint_every == 0:
                self._checkpoint(self.run.last)

    def _train_step(self, x: Tensor) -> None:
        settings = self.settings
        weight = kl_weight(self.step + 1, settings.kl_warmup_steps)  # step n of the warm-up weighs n / warm-up
        if weight != self.kl_weight_value:
            self.kl_weight.fill_(weight)
            self.kl_weight_value = weight
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            losses = self.network(self.train_transform(x), kl_weight=self.kl_weight, free_bits=settings.free_bits)
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

    def _log_window(self, rate: float) -> str:
        keys = sorted(self.window)
        totals = self.workers.sum(torch.stack([self.window[k] for k in keys]))
        means = dict(zip(keys, (totals / (self.window_steps * self.workers.world_size)).tolist()))
        self.window, self.window_steps = {}, 0
        if self.workers.is_main:
            self.run.log("train", step=self.step, epoch=self.epoch, images_per_second=round(rate, 1),
                         lr=self.scheduler.get_last_lr()[0], kl_weight=self.kl_weight_value, **means)
        bits = f"  {means['bpd']:.3f} bits/dim" if "bpd" in means else ""
        return (f"loss {means['loss']:.2f}  −ELBO {means.get('neg_elbo', math.nan):.2f}  "
                f"KL {means.get('kl', math.nan):.2f}{bits}  {rate:,.0f} img/s")

    def _end_epoch(self, progress) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        valid = self._validate()
        improved = valid["neg_elbo"] < self.best_valid
        if improved:
            self.best_valid = valid["neg_elbo"]
        self._pictures()
        if improved:
            self._checkpoint(self.run.best)
        self._checkpoint(self.run.last)
        if self.workers.is_main:
            mark = " [green](best)" if improved else ""
            bits = f", {valid['bpd_elbo']:.3f} bits/dim" if "bpd_elbo" in valid else ""
            progress.console.print(
                f"epoch {self.epoch}: valid −ELBO {valid['neg_elbo']:.2f} "
                f"(recon {valid['recon']:.2f}, KL {valid['kl']:.2f}{bits}){mark}"
            )

    def evaluated_weights(self):
        """Context in which the model holds the weights used for evaluation (the EMA, if on)."""
        return self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext()

    def _validate(self) -> dict[str, float]:
        with self.evaluated_weights():
            metrics = evaluate(self.model, self.valid_images, workers=self.workers,
                               **evaluation_settings(self.config.eval, iw_samples=1))
        if self.workers.is_main:
            self.run.log("valid", step=self.step, epoch=self.epoch, **metrics)
        return metrics

    def _pictures(self) -> None:
        count = self.settings.picture_count
        if not (count and self.workers.is_main and hasattr(self.model, "pictures")):
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self.evaluated_weights():
            torch.manual_seed(self.config.eval.seed)  # the same noise every epoch; training's stream untouched
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
            "window": {"sums": {k: v.cpu() for k, v in self.window.items()}, "steps": self.window_steps},
            "rng": {
                "data_order": self.data_order.get_state(),
                "epoch_order": self.epoch_order,
                "ranks": rank_rng or [_rng_state(self.device)],
            },
            "metrics_size": self.run.metrics_size(),
            "config": OmegaConf.to_container(self.config),
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
        self.window = {k: v.to(self.device) for k, v in state["window"]["sums"].items()}
        self.window_steps = state["window"]["steps"]
        self.data_order.set_state(state["rng"]["data_order"])
        self.epoch_order = state["rng"]["epoch_order"]
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
