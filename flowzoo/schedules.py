"""Schedules over training steps: the learning rate and the KL warm-up weight (over steps or epochs)."""

from __future__ import annotations

__all__ = ["LR_SCHEDULES", "lr_factor", "kl_weight"]

import math

LR_SCHEDULES = ("constant", "cosine", "linear", "exponential")


def lr_factor(step: int, total_steps: int, schedule: str, warmup_steps: int = 0, final_ratio: float = 0.0) -> float:
    """The learning rate at ``step`` as a fraction of the configured one.

    A linear warm-up from 0 over ``warmup_steps``, then, until ``total_steps``, one of
    ``constant``; ``cosine`` or ``linear`` decay to ``final_ratio``; or ``exponential``
    decay by a constant factor per step that reaches ``final_ratio`` at the end.

    Example:
        >>> [round(lr_factor(s, 100, "cosine", warmup_steps=10, final_ratio=0.1), 3) for s in (0, 5, 10, 55, 100)]
        [0.0, 0.5, 1.0, 0.55, 0.1]
        >>> round(lr_factor(50, 100, "exponential", final_ratio=0.01), 3)
        0.1
    """
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1 - (1 - final_ratio) * progress
    if schedule == "exponential":
        return final_ratio**progress
    raise ValueError(f"unknown schedule '{schedule}'; expected one of {', '.join(LR_SCHEDULES)}")


def kl_weight(count: int, warmup: int) -> float:
    """The weight of the KL term: linear from 0 to 1 over ``warmup`` steps or epochs ("KL annealing").

    ``count`` is the step, counted from 1, or, for a warm-up in epochs, the epoch, counted
    from 1: then every step of an epoch has the same weight, the Sylvester-flow authors' β
    (0.01 in the first of 100 warm-up epochs, 1 from the 100th on).

    References:
        Bowman et al., "Generating Sentences from a Continuous Space", CoNLL 2016;
        Sønderby et al., "Ladder Variational Autoencoders", NeurIPS 2016.

    Example:
        >>> [kl_weight(n, 4) for n in (0, 2, 4, 9)]
        [0.0, 0.5, 1.0, 1.0]
        >>> kl_weight(1, 100)
        0.01
    """
    return min(1.0, count / warmup) if warmup else 1.0
