"""The run directory: resolved config, metrics log and checkpoints of one training run.

::

    runs/mnist_iaf-20261124-101500/
        config.yaml     the resolved config the run was started with
        metrics.jsonl   one JSON record per line: train, valid, test and eval events
        best.pt         checkpoint with the best validation −ELBO
        last.pt         the latest checkpoint (every ``trainer.checkpoint_every`` steps and
                        at the end of each epoch): what ``flowzoo resume`` continues from
        images/         samples-epochNNN.png and reconstructions-epochNNN.png per epoch
        tensorboard/    the same scalars and images for TensorBoard
"""

from __future__ import annotations

__all__ = ["RunDir"]

import json
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from flowzoo.errors import CheckpointError
from flowzoo.images import save_png


class RunDir:
    """Paths and files of a run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.yaml"
        self.metrics_file = self.path / "metrics.jsonl"
        self.best = self.path / "best.pt"
        self.last = self.path / "last.pt"
        self.images = self.path / "images"
        self.tensorboard_dir = self.path / "tensorboard"
        self._writer = None

    @classmethod
    def create(cls, output_dir: str | Path, name: str, config: Mapping[str, Any]) -> "RunDir":
        """A new, uniquely named run directory holding ``config`` (the resolved config as plain data)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(output_dir) / f"{name}-{stamp}"
        path, suffix = base, 1
        while path.exists():
            suffix += 1
            path = base.with_name(f"{base.name}-{suffix}")
        path.mkdir(parents=True)
        run = cls(path)
        run.write_config(config)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory; raises :class:`CheckpointError` if it is not one."""
        run = cls(path)
        if not run.config_file.is_file():
            raise CheckpointError(f"{run.path} is not a flowzoo run directory (no config.yaml in it)")
        return run

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write the resolved config (as plain data) to ``config.yaml``."""
        self.config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True))

    def open_tensorboard(self, purge_step: int = 0) -> None:
        """Also write scalars and images as TensorBoard events from now on.

        Events of an earlier attempt at steps ≥ ``purge_step`` (after the checkpoint a
        resumed run starts from) are hidden by TensorBoard.
        """
        from torch.utils.tensorboard import SummaryWriter  # slow import, needed by training only

        self._writer = SummaryWriter(self.tensorboard_dir, purge_step=purge_step or None)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def log(self, kind: str, **record: Any) -> None:
        """Append one record to ``metrics.jsonl``; its numbers also go to TensorBoard as ``kind/key``."""
        with open(self.metrics_file, "a") as file:
            file.write(json.dumps({"kind": kind, "time": round(time.time(), 3), **record}) + "\n")
        if self._writer is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch"):
                    self._writer.add_scalar(f"{kind}/{key}", value, record["step"])
            self._writer.flush()

    def metrics_size(self) -> int:
        """Bytes in ``metrics.jsonl`` so far: stored in checkpoints to undo records written after them."""
        return self.metrics_file.stat().st_size if self.metrics_file.is_file() else 0

    def truncate_metrics(self, size: int) -> None:
        """Drop the records written after a checkpoint, before a run resumes from it."""
        if self.metrics_file.is_file():
            with open(self.metrics_file, "r+b") as file:
                file.truncate(size)

    def save_image(self, name: str, grid: Any, epoch: int, step: int) -> Path:
        """Write a ``(channels, H, W)`` uint8 grid as ``images/{name}-epochNNN.png`` (and to TensorBoard)."""
        self.images.mkdir(exist_ok=True)
        path = self.images / f"{name}-epoch{epoch:03d}.png"
        save_png(grid, path)
        if self._writer is not None:
            self._writer.add_image(name, grid, step)
        return path

    def records(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """The records of ``metrics.jsonl``, optionally only those of one kind."""
        if not self.metrics_file.is_file():
            return
        with open(self.metrics_file) as file:
            for line in file:
                record = json.loads(line)
                if kind is None or record["kind"] == kind:
                    yield record
