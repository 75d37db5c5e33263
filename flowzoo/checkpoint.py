"""Checkpoints written atomically and read back with ``weights_only=True``."""

from __future__ import annotations

__all__ = ["save_checkpoint", "load_checkpoint", "evaluation_weights", "EVALUATION_ENTRIES", "RESUME_ENTRIES"]

import io
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from flowzoo.errors import CheckpointError
from flowzoo.runs import refuse_links, write_error

EVALUATION_ENTRIES = ("model",)
"""What ``best.pt`` must hold to be evaluated."""

RESUME_ENTRIES = EVALUATION_ENTRIES + ("optimizer", "scheduler", "scaler", "step", "epoch", "batch_in_epoch",
                                       "best_valid", "window", "rng", "metrics_size", "config")
"""What ``last.pt`` must hold to be resumed (:meth:`flowzoo.trainer.Trainer.state_dict`)."""


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` so that a crash, a full disk or Ctrl-C mid-write leaves
    the old file intact and no ``.partial`` file behind.

    The payload must hold only tensors, numbers, strings and containers of them, so
    that :func:`load_checkpoint` can read it without unpickling arbitrary objects.

    Raises:
        CheckpointError: the file cannot be written (the message says why, e.g. a full disk).
    """
    partial = path.with_name(path.name + ".partial")
    try:
        buffer = io.BytesIO()  # serialized first: the OS's error for the file (ENOSPC) is then not torch's
        torch.save(payload, buffer)
        with open(partial, "wb", opener=refuse_links) as file:
            file.write(buffer.getbuffer())
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException as error:  # KeyboardInterrupt too: the partial file goes, the interrupt goes on
        partial.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_error(path, error) from None
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu",
                    required: Iterable[str] = EVALUATION_ENTRIES) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` that holds the entries ``required``.

    Raises:
        CheckpointError: the file is missing, truncated, lacks an entry or is not a flowzoo checkpoint.
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
    missing = [entry for entry in required if entry not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: it is incomplete or not written by this "
                              "version of flowzoo; use another checkpoint of the run or train again")
    return payload


def evaluation_weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The weights to evaluate: the Polyak average where the run kept one, else the trained weights."""
    return {**checkpoint["model"], **checkpoint.get("ema", {})}
