"""The training set on the device, in shuffled batches split over the processes.

Each epoch draws a fresh order of the examples from a seeded generator and cuts it
into global batches of ``batch_size``; under ``torchrun`` each rank takes every
``world_size``-th example of each. The training set is moved to the GPU once when it
fits (``trainer.data_on_device``), so a batch is an index into device memory;
otherwise each batch is gathered into one of two pinned host buffers and copied
asynchronously while the previous step runs.
"""

from __future__ import annotations

__all__ = ["TrainLoader"]

from typing import Any, Callable, Iterator, Literal

import torch
from torch import Tensor

from flowzoo.distributed import Distributed


class TrainLoader:
    """This process's share of each training batch, on the device, epoch by epoch.

    Args:
        images: the training split, on the CPU.
        batch_size: examples per global batch, over all processes together.
        seed: seeds the order of the examples (the same on every rank).
        device: where the batches go.
        workers: this process's place under ``torchrun``; one process by default.
        on_device: keep the training set in device memory: ``always``, ``never``, or
            ``auto`` (when it takes under a quarter of the free memory). CUDA only.
        transform: maps each batch (on the device) to the model's input, e.g. a fresh
            binarization of grayscale images; ``x.float()`` by default.

    Example:
        >>> loader = TrainLoader(torch.arange(10).view(10, 1), batch_size=4, seed=0, device=torch.device("cpu"))
        >>> len(loader), [len(x) for _, x in loader.epoch()]
        (3, [4, 4, 2])
    """

    def __init__(
        self,
        images: Tensor,
        *,
        batch_size: int,
        seed: int,
        device: torch.device,
        workers: Distributed = Distributed(),
        on_device: Literal["auto", "always", "never"] = "auto",
        transform: Callable[[Tensor], Tensor] | None = None,
    ):
        self.images = _place(images, device, on_device)
        self.batch_size = batch_size
        self.device = device
        self.workers = workers
        self.transform = transform or Tensor.float
        self.order = torch.Generator().manual_seed(seed)
        self.epoch_order = self.order.get_state()
        self._staging: list[tuple[Tensor, torch.cuda.Event | None]] = []
        self._turn = 0

    def __len__(self) -> int:
        """Global batches per epoch."""
        return len(self._global_batches(torch.arange(len(self.images))))  # one rule for both

    def epoch(self, start: int = 0) -> Iterator[tuple[int, Tensor]]:
        """The epoch's batches from batch ``start`` on: for each, the size of the global
        batch and this rank's share of it on the device. An epoch resumed in the middle
        draws the same order again."""
        if start == 0:
            self.epoch_order = self.order.get_state()
        self.order.set_state(self.epoch_order)
        order = torch.randperm(len(self.images), generator=self.order)
        for batch in self._global_batches(order)[start:]:
            yield len(batch), self.transform(self._fetch(self.workers.shard(batch)))

    def _global_batches(self, order: Tensor) -> list[Tensor]:
        batches = list(order.split(self.batch_size))
        if self.workers.enabled and len(batches[-1]) < self.workers.world_size:
            batches.pop()  # a rank with no examples would have no loss to average
        return batches

    def _fetch(self, indices: Tensor) -> Tensor:
        """The examples at ``indices`` on the device: an index on device-resident data, or
        a gather into one of two pinned buffers and an asynchronous copy."""
        if self.images.device == self.device:
            return self.images.index_select(0, indices.to(self.device, non_blocking=True))  # no sync
        if not self._staging:
            shape = (self.batch_size, *self.images.shape[1:])
            self._staging = [(torch.empty(shape, dtype=self.images.dtype).pin_memory(), None) for _ in range(2)]
        buffer, copied = self._staging[self._turn]
        if copied is not None:
            copied.synchronize()  # the copy out of this buffer two batches ago has finished
        staged = buffer[: len(indices)]
        torch.index_select(self.images, 0, indices, out=staged)
        batch = staged.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._staging[self._turn] = (buffer, event)
        self._turn = 1 - self._turn
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The position of the data order, as checkpoints keep it (``rng.data_order``, ``rng.epoch_order``)."""
        return {"data_order": self.order.get_state(), "epoch_order": self.epoch_order}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.set_state(state["data_order"])
        self.epoch_order = state["epoch_order"]


def _place(images: Tensor, device: torch.device, on_device: str) -> Tensor:
    """The training set where batches are taken from: on the device, or in pinned host memory."""
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    if on_device == "always" or (on_device == "auto" and images.nbytes < free / 4):
        return images.to(device)
    return images.pin_memory()
