"""Polyak averaging: an exponential moving average of the weights, used for evaluation."""

from __future__ import annotations

__all__ = ["EMA"]

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn


class EMA:
    r"""Exponential moving average of a model's floating-point parameters and buffers.

    After every optimizer step, :math:`\bar\theta \leftarrow d\,\bar\theta + (1-d)\,\theta`,
    with the decay warmed up as :math:`d_t = \min(d, (1+t)/(10+t))` so that early
    averages do not remember the random initialisation. The update runs on the
    device with no host synchronisation.

    Args:
        model: the model whose weights are averaged.
        decay: the long-run decay :math:`d`, e.g. 0.999.

    References:
        Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging",
        SIAM Journal on Control and Optimization, 1992. Kingma et al. (2016) evaluate
        their IAF models with Polyak-averaged weights.

    Example:
        >>> model = nn.Linear(2, 1)
        >>> ema = EMA(model, decay=0.9)
        >>> with torch.no_grad():
        ...     _ = model.weight.add_(1.0)
        >>> ema.update(step=100)
        >>> with ema.applied(model):
        ...     shifted = model.weight.clone()
        >>> bool(((model.weight - shifted) - 0.9).abs().max() < 1e-6)  # 10% of the way
        True
    """

    def __init__(self, model: nn.Module, decay: float):
        self.model = model
        self.decay = decay
        self.names = [name for name, _ in self._averaged(model)]
        self.current = [value for _, value in self._averaged(model)]  # views sharing the live weights
        self.shadow = {name: value.clone() for name, value in zip(self.names, self.current)}
        self.rate = torch.zeros((), device=self.current[0].device if self.current else None)

    @staticmethod
    def _averaged(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                yield name, value

    def update(self, step: int, skipped: Tensor | None = None) -> None:
        """Move the average towards the current weights after optimizer step ``step``:
        :meth:`schedule`, then :meth:`move`."""
        self.schedule(step)
        self.move(skipped)

    def schedule(self, step: int) -> None:
        """Set the rate of the next :meth:`move` for optimizer step ``step`` (a device tensor,
        so that a move captured in a CUDA graph follows the warm-up)."""
        self.rate.fill_(1 - min(self.decay, (1 + step) / (10 + step)))

    @torch.no_grad()
    def move(self, skipped: Tensor | None = None) -> None:
        """Move the average towards the current weights at the scheduled rate, on the device.

        ``skipped`` (a device flag, 1 for a step the optimizer skipped) leaves the average
        as it is without reading the flag on the host.
        """
        rate = self.rate if skipped is None else (1 - skipped) * self.rate  # exactly 0 after a skipped step
        shadow = [self.shadow[n] for n in self.names]
        steps = torch._foreach_sub(self.current, shadow)
        torch._foreach_mul_(steps, rate)  # not _foreach_lerp_, which reads a tensor weight on the host
        torch._foreach_add_(shadow, steps)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Within the block, ``model`` holds the averaged weights; its own are restored after."""
        saved = {name: value.detach().clone() for name, value in self._averaged(model)}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(saved, strict=False)

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights, in the model's own ``state_dict`` layout (minus integer buffers)."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Averaged weights from :meth:`state_dict`, read through the model's own ``load_state_dict``
        so that modules renaming their keys as they load (:mod:`flowzoo.legacy`) read old checkpoints."""
        with self.applied(self.model):
            unexpected = self.model.load_state_dict(state, strict=False).unexpected_keys
            if unexpected:
                raise KeyError(f"averaged weights of parameters the model does not have: {', '.join(unexpected)}")
            for name, value in zip(self.names, self.current):
                self.shadow[name].copy_(value)
