"""Devices, and data-parallel training under ``torchrun``: which process this is, and what it shares.

``torchrun --nproc_per_node N -m flowzoo.cli train CONFIG`` starts N processes with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set. Each trains a
:class:`~torch.nn.parallel.DistributedDataParallel` copy of the model on its share of
every global batch; rank 0 alone prints and writes the run directory. Without those
variables flowzoo runs as one process and nothing here communicates.

The config's ``trainer.device`` is checked by :func:`check_device` and turned into a
device by :func:`resolve_device` (each process its own GPU under ``torchrun``).
"""

from __future__ import annotations

__all__ = ["Distributed", "setup_distributed", "check_device", "resolve_device"]

import dataclasses
import os
import re
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from flowzoo.errors import Problem
from flowzoo.schema import Resolved


@dataclasses.dataclass(frozen=True)
class Distributed:
    """This process's place among the data-parallel workers (one worker when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    """Where collectives run: this rank's GPU under NCCL, the CPU under gloo."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes files."""
        return self.rank == 0

    def shard(self, items: Tensor) -> Tensor:
        """This rank's share of a global batch (every ``world_size``-th item)."""
        return items[self.rank :: self.world_size]

    def sum(self, values: Tensor) -> Tensor:
        """Elementwise sum of ``values`` over all ranks (``values`` itself when not distributed)."""
        if not self.enabled:
            return values
        reduced = values.to(self.device, copy=True)
        dist.all_reduce(reduced)
        return reduced.to(values.device)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (after a final :meth:`barrier` when all went well)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(cuda: bool) -> Distributed:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Uses NCCL when training on CUDA devices and gloo otherwise; each rank takes the
    CUDA device of its ``LOCAL_RANK``. Without ``WORLD_SIZE`` > 1 this returns a single worker.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    collectives = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, collectives)


def check_device(value: Any, path: str) -> Resolved:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device must exist on this machine."""
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return value, [Problem(path, f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")]
    if value.startswith("cuda") and not torch.cuda.is_available():
        return value, [Problem(path, f"'{value}' asked for, but this machine has no CUDA device; use 'auto' or 'cpu'")]
    return value, []


def resolve_device(name: str, workers: Distributed = Distributed()) -> torch.device:
    """``auto`` is a CUDA device if there is one, else the CPU; under ``torchrun`` each
    process takes the CUDA device of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", workers.local_rank if workers.enabled else torch.cuda.current_device())
    return torch.device(name)
