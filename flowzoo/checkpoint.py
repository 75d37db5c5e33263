"""Checkpoints written atomically and read back with ``weights_only=True``."""

from __future__ import annotations

__all__ = ["save_checkpoint", "load_checkpoint", "evaluation_weights"]

import os
from pathlib import Path
from typing import Any

import torch

from flowzoo.errors import CheckpointError


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` so that a crash mid-write leaves the old file intact.

    The payload must hold only tensors, numbers, strings and containers of them, so
    that :func:`load_checkpoint` can read it without unpickling arbitrary objects.
    """
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        torch.save(payload, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, truncated or not a flowzoo checkpoint.
    """
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # arbitrary bytes make the unpickler raise almost anything
        first = (str(error).splitlines() or [""])[0]
        if first.startswith("Weights only load failed"):  # torch's advice to unpickle anyway does not apply
            first = "it holds objects other than tensors, numbers and containers"
        raise CheckpointError(
            f"{path} is not a readable flowzoo checkpoint ({type(error).__name__}{': ' + first if first else ''}). "
            "It may be truncated or corrupt; use another checkpoint of the run or train again."
        ) from error
    weights = [payload.get("model"), payload.get("ema", {})] if isinstance(payload, dict) else [None]
    if not all(isinstance(w, dict) for w in weights):
        raise CheckpointError(f"{path} is a torch file but not a flowzoo checkpoint (no model weights in it)")
    return payload


def evaluation_weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The weights to evaluate: the Polyak average where the run kept one, else the trained weights."""
    return {**checkpoint["model"], **checkpoint.get("ema", {})}
