"""Optimizers that decide on the device whether to apply a step.

The trainer's non-finite guard never reads a tensor on the host: it sets
``optimizer.found_inf`` (a float tensor on the parameters' device, 1 for a bad step)
and calls ``step()`` every time. A step with ``found_inf == 1`` leaves the weights and
every tensor of the optimizer's state bit-identical. Adam is torch's fused kernel,
which skips on ``found_inf`` itself (as :class:`torch.amp.GradScaler` uses it);
Adamax has no fused kernel, so :class:`Adamax` keeps its step count on the device
and selects the old values back with ``torch.where`` after a bad step.
"""

from __future__ import annotations

__all__ = ["Adamax", "OPTIMIZERS", "make_optimizer"]

from typing import Iterable

import torch
from torch import Tensor


class Adamax(torch.optim.Adamax):
    """:class:`torch.optim.Adamax` with its step count on the device and a device-side skip.

    The update is torch's own multi-tensor "capturable" Adamax (step count, bias
    correction and learning rate as device tensors), run on any device, so that a
    step reads nothing on the host and can be captured in a CUDA graph. The state
    dict has torch's layout: checkpoints load into either.

    Args:
        params: the parameters, or parameter groups.
        **options: as for :class:`torch.optim.Adamax` (``lr``, ``betas``, ``eps``, ``weight_decay``).

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015 (section 7.1, AdaMax).

    Example:
        >>> weight = torch.nn.Parameter(torch.ones(3))
        >>> optimizer = Adamax([weight], lr=0.1)
        >>> weight.grad = torch.full((3,), float("nan"))
        >>> optimizer.found_inf = torch.ones(())  # a bad step: nothing moves
        >>> optimizer.step()
        >>> weight.tolist(), optimizer.state[weight]["step"].item()
        ([1.0, 1.0, 1.0], 0.0)
        >>> weight.grad, optimizer.found_inf = torch.ones(3), torch.zeros(())
        >>> optimizer.step()
        >>> [round(w, 3) for w in weight.tolist()]
        [0.9, 0.9, 0.9]
    """

    def __init__(self, params: Iterable, **options):
        super().__init__(params, **options, foreach=True, capturable=True)

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("flowzoo's Adamax takes no closure")
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            params, grads, exp_avgs, exp_infs, steps = [], [], [], [], []
            self._init_group(group, params, grads, exp_avgs, exp_infs, steps)
            if not params:
                continue
            state = [*params, *exp_avgs, *exp_infs, *steps]
            before = None if found_inf is None else [t.clone() for t in state]
            _capturable_adamax(params, grads, exp_avgs, exp_infs, steps, group)
            if before is not None:
                skip = found_inf > 0
                for value, old in zip(state, before):
                    torch.where(skip, old, value, out=value)


def _capturable_adamax(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_infs: list[Tensor],
                       steps: list[Tensor], group: dict) -> None:
    """torch.optim.adamax._multi_tensor_adamax with ``capturable=True``, without its device check."""
    beta1, beta2 = group["betas"]
    torch._foreach_add_(steps, 1)
    if group["weight_decay"]:
        grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_infs, beta2)
    grads = torch._foreach_abs(grads)
    torch._foreach_add_(grads, group["eps"])
    torch._foreach_maximum_(exp_infs, grads)
    bias_corrections = torch._foreach_pow(beta1, steps)
    torch._foreach_sub_(bias_corrections, 1)
    torch._foreach_div_(bias_corrections, group["lr"])
    torch._foreach_addcdiv_(params, exp_avgs, torch._foreach_mul(exp_infs, bias_corrections))


def _adam(params: Iterable, **options) -> torch.optim.Adam:
    """torch's fused Adam (CUDA and CPU kernels), which skips a step on ``found_inf`` on the device."""
    return torch.optim.Adam(params, **options, fused=True)


OPTIMIZERS = {"adam": _adam, "adamax": Adamax}


def make_optimizer(name: str, params: Iterable, *, lr: float, weight_decay: float,
                   eps: float) -> torch.optim.Optimizer:
    """The ``trainer.optimizer`` named ``name`` over ``params``: see the module docstring."""
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, eps=eps)
