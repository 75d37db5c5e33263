"""The run directory: resolved config, metrics log and checkpoints of one training run.

::

    runs/mnist_iaf-20261124-101500/
        config.yaml     the resolved config the run was started with
        metrics.jsonl   one JSON record per line: train, valid, test and eval events
        best.pt         checkpoint with the best validation −ELBO
        last.pt         checkpoint at the end of the latest epoch
"""

from __future__ import annotations

__all__ = ["RunDir"]

import json
import time
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from flowzoo.errors import CheckpointError


class RunDir:
    """Paths and files of a run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.yaml"
        self.metrics_file = self.path / "metrics.jsonl"
        self.best = self.path / "best.pt"
        self.last = self.path / "last.pt"

    @classmethod
    def create(cls, output_dir: str | Path, name: str, config: DictConfig) -> "RunDir":
        """A new, uniquely named run directory holding ``config``."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(output_dir) / f"{name}-{stamp}"
        path, suffix = base, 1
        while path.exists():
            suffix += 1
            path = base.with_name(f"{base.name}-{suffix}")
        path.mkdir(parents=True)
        run = cls(path)
        OmegaConf.save(config, run.config_file)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory; raises :class:`CheckpointError` if it is not one."""
        run = cls(path)
        if not run.config_file.is_file():
            raise CheckpointError(f"{run.path} is not a flowzoo run directory (no config.yaml in it)")
        return run

    def log(self, kind: str, **record: Any) -> None:
        """Append one record to ``metrics.jsonl``."""
        with open(self.metrics_file, "a") as file:
            file.write(json.dumps({"kind": kind, "time": round(time.time(), 3), **record}) + "\n")

    def records(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """The records of ``metrics.jsonl``, optionally only those of one kind."""
        if not self.metrics_file.is_file():
            return
        with open(self.metrics_file) as file:
            for line in file:
                record = json.loads(line)
                if kind is None or record["kind"] == kind:
                    yield record
