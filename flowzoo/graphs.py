"""A training step captured once in a CUDA graph and replayed (``trainer.cuda_graphs``).

The models trained here are small, so on a GPU a step's time goes to launching a few
hundred kernels from Python. A CUDA graph records the whole step (forward, backward,
the non-finite guard, the optimizer, the weight average, the loss window) once and
replays it with one launch. Everything the step reads must then live in tensors that
stay put: the batch is copied into a static buffer, and the schedules (learning rate,
KL weight, the average's rate) are device tensors filled on the host before each
replay. :class:`flowzoo.trainer.Trainer` keeps to that; this module only captures.
"""

from __future__ import annotations

__all__ = ["GraphedStep"]

from typing import Callable

import torch
from torch import Tensor

from flowzoo.errors import TrainingError


class GraphedStep:
    """``step(x)`` replayed from a CUDA graph, with ``x`` copied into a static buffer.

    The first ``warmup`` calls run ``step`` eagerly on a side stream (as CUDA graph
    capture needs: lazily initialised kernels, autograd's accumulation buffers); the
    next one captures it and replays it. :meth:`reset` drops the graph, e.g. after the
    optimizer's state tensors were replaced by loading a checkpoint.

    Args:
        step: the device part of a training step; it must not read tensors on the host.
        warmup: eager calls before the capture.
        capture: False replays the same static-buffer step eagerly (the CPU's stand-in,
            used by the tests to check the buffers without a GPU).

    References:
        "CUDA Graphs", PyTorch documentation, section "Whole-network capture".

    Example:
        >>> total = torch.zeros(())
        >>> graphed = GraphedStep(lambda x: total.add_(x.sum()), capture=False)
        >>> for batch in (torch.ones(2), torch.full((2,), 2.0)):
        ...     graphed(batch)
        >>> total.item()
        6.0
    """

    def __init__(self, step: Callable[[Tensor], None], *, warmup: int = 3, capture: bool = True):
        self.step = step
        self.warmup = warmup
        self.capture = capture
        self.reset()

    def reset(self) -> None:
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x: Tensor | None = None
        self.warm = 0

    def __call__(self, x: Tensor) -> None:
        if self.static_x is None:
            self.static_x = torch.empty_like(x)
        self.static_x.copy_(x)
        if not self.capture:
            self.step(self.static_x)
        elif self.warm < self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step(self.static_x)
            torch.cuda.current_stream().wait_stream(side)
            self.warm += 1
        else:
            if self.graph is None:
                self.graph = _captured(self.step, self.static_x)
            self.graph.replay()


def _captured(step: Callable[[Tensor], None], x: Tensor) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step(x)
    except RuntimeError as error:  # e.g. "operation not permitted when stream is capturing"
        raise TrainingError(
            f"trainer.cuda_graphs: this model's training step cannot be captured in a CUDA graph "
            f"({str(error).splitlines()[0]}); a component reads a tensor on the host or changes shape. "
            "Set trainer.cuda_graphs=false, or trainer.compile=true instead."
        ) from None
    return graph
