"""Check that a flow keeps the ``Transform`` contract: ``flowzoo check-flow NAME``.

The checks build the flow at a small size in float64, move its parameters away
from their (often near-identity) initialisation, and compare what it reports with
what autograd measures on random inputs and contexts. A flow can pass all of these
and still explode in use, where a VAE feeds it latents of its own scale, stacked a
few steps deep (``z + sinh(z)`` overflows after three steps from ``z = 3``), so the
last check trains it, from its initialisation in float32, inside a small VAE on real
data. The same function serves the command line, flowzoo's own test suite (run over
every registered flow) and a plugin author's tests.
"""

from __future__ import annotations

__all__ = ["check_flow", "jacobians", "TRAIN_STEPS", "TRAIN_REPEAT"]

import functools
import math
from typing import Any, Mapping

import torch
from nflows.transforms import InverseNotAvailable
from torch import nn
from torch.autograd.functional import jacobian

from flowzoo.contracts import FAIL, PASS, SKIP, Report, build, gradient_check, perturb, run_check, save_load_check
from flowzoo.datasets import BinarizedMNIST
from flowzoo.registry import flows
from flowzoo.vae import build_model

TRAIN_STEPS = 50
"""Adam steps of the training check."""
TRAIN_REPEAT = 4
"""Steps of the flow in the training check's VAE, as configs stack them (``repeat: 4``)."""
_TRAIN_BATCH, _TRAIN_IMAGES, _VALID_IMAGES = 100, 5000, 500


def jacobians(flow: nn.Module, z: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """Per-example Jacobians ``∂z'/∂z``, ``(batch, features, features)``, by autograd."""

    def one(i: int) -> torch.Tensor:
        c = None if context is None else context[i : i + 1]
        return jacobian(lambda u: flow(u[None], context=c)[0][0], z[i])

    return torch.stack([one(i) for i in range(z.shape[0])])


def check_flow(
    flow: str | Mapping[str, Any],
    features: int = 5,
    context_features: int = 3,
    batch_size: int = 4,
    seed: int = 0,
    perturbation: float = 0.3,
    tolerance: float = 1e-6,
    train_steps: int = TRAIN_STEPS,
) -> Report:
    """Build a registered flow small, in float64, and check it against autograd; then train it.

    Checks: output shapes; log-det against ``log|det J|`` of the autograd Jacobian;
    finite gradients reaching every parameter and the input; the Jacobian's
    triangular structure for flows registered with ``triangular="lower"``/``"upper"``;
    the inverse, when the flow has one; a state-dict round trip; and that it trains:
    :data:`TRAIN_REPEAT` steps of it in a VAE (MLP encoder and decoder, latent size
    ``features``, context ``context_features``) on static binarized MNIST, ``train_steps``
    Adam steps of 100 images from its initialisation in float32, keep every loss and the
    validation −ELBO finite and lower the loss.

    Args:
        flow: a registered name, or a spec ``{name: ..., **parameters}``.
        features: size of z.
        context_features: size of the context h (0 for none).
        batch_size: number of random inputs.
        seed: seeds the flow's parameters and the inputs.
        perturbation: scale of the noise added to every parameter (divided by the
            square root of the fan-in for weight matrices), so the checks do not only
            see the near-identity start.
        tolerance: largest accepted absolute error.
        train_steps: Adam steps of the training check; 0 leaves it out.

    Raises:
        ConfigError: the name is unknown or the parameters are invalid.

    Example:
        >>> report = check_flow("planar")
        >>> report.passed, [check.name for check in report.checks]
        (True, ['output shapes', 'log-det = log|det J|', 'finite gradients', 'inverse', 'save/load', 'trains in a VAE'])
    """
    spec = {"name": flow} if isinstance(flow, str) else dict(flow)

    def build_flow(seed: int) -> nn.Module:
        module = build("flows", spec, seed, features=features, context_features=context_features).double()
        return perturb(module, perturbation)

    module = build_flow(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(batch_size, features, generator=generator, dtype=torch.float64)
    context = torch.randn(batch_size, context_features, generator=generator, dtype=torch.float64)
    context = context if context_features else None
    triangular = flows[spec["name"]].tags.get("triangular")

    checks = [run_check("output shapes", lambda: _shapes(module, z, context))]
    if checks[0].status == PASS:
        checks.append(run_check("log-det = log|det J|", lambda: _logabsdet(module, z, context, tolerance)))
        checks.append(run_check("finite gradients", lambda: _gradients(module, z, context)))
        if triangular:
            checks.append(run_check(f"{triangular} triangular J",
                                    lambda: _triangular(module, z, context, triangular, tolerance)))
        checks.append(run_check("inverse", lambda: _inverse(module, z, context, tolerance)))
        checks.append(run_check("save/load", lambda: save_load_check(module, build_flow(seed + 100),
                                                                     lambda flow: flow(z, context=context))))
        if train_steps:
            checks.append(run_check("trains in a VAE",
                                    lambda: _trains(spec, features, context_features, seed, train_steps)))
    caption = f"float64, tolerance {tolerance:g}" + ("; training in float32" if train_steps else "")
    return Report("flow", spec["name"], spec, tuple(checks), caption=caption)


def _shapes(flow, z, context):
    out, logabsdet = flow(z, context=context)
    if out.shape != z.shape or logabsdet.shape != z.shape[:1]:
        return FAIL, (f"z {tuple(z.shape)} gave z' {tuple(out.shape)} and logabsdet {tuple(logabsdet.shape)}; "
                      f"expected {tuple(z.shape)} and {tuple(z.shape[:1])}"), None
    return PASS, f"z' {tuple(out.shape)}, logabsdet {tuple(logabsdet.shape)}", None


def _logabsdet(flow, z, context, tolerance):
    _, logabsdet = flow(z, context=context)
    expected = torch.linalg.slogdet(jacobians(flow, z, context)).logabsdet
    error = (logabsdet - expected).abs().max().item()
    status = PASS if error <= tolerance else FAIL
    return status, f"reported {logabsdet[0].item():.6g}, autograd {expected[0].item():.6g} (first input)", error


def _gradients(flow, z, context):
    z = z.clone().requires_grad_()
    out, logabsdet = flow(z, context=context)
    return gradient_check(flow, out.square().sum() + logabsdet.sum(), {"the input": z})


def _triangular(flow, z, context, which, tolerance):
    mask = torch.ones(z.shape[1], z.shape[1], dtype=torch.bool)
    outside = mask.triu(diagonal=1) if which == "lower" else mask.tril(diagonal=-1)
    error = jacobians(flow, z, context)[:, outside].abs().max().item()
    side = "above" if which == "lower" else "below"
    return (PASS if error <= tolerance else FAIL), f"largest |∂z'_i/∂z_j| {side} the diagonal", error


def _inverse(flow, z, context, tolerance):
    out, logabsdet = flow(z, context=context)
    try:
        back, inverse_logabsdet = flow.inverse(out, context=context)
    except InverseNotAvailable as reason:
        return SKIP, str(reason) or "no analytic inverse", None
    error = max((back - z).abs().max().item(), (inverse_logabsdet + logabsdet).abs().max().item())
    return (PASS if error <= tolerance else FAIL), "inverse(forward(z)) = z and its log-det = −log-det", error


@functools.cache
def _images(split: str, count: int) -> torch.Tensor:
    """The first images of a split of static binarized MNIST (the packaged copy needs no download)."""
    return BinarizedMNIST(download=False).load(split)[:count].float()


def _trains(spec, features, context_features, seed, steps):
    small = flows[spec["name"]].tags.get("test_parameters") or {}
    torch.manual_seed(seed)
    model = build_model({"latent_size": features, "context_size": context_features,
                         "encoder": {"name": "mlp", "hidden_sizes": [128]},
                         "decoder": {"name": "mlp", "hidden_sizes": [128]},
                         "flows": [{**small, **spec, "repeat": TRAIN_REPEAT}]}, data_shape=(1, 28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = _images("train", _TRAIN_IMAGES)
    batches = torch.randint(len(images), (steps, _TRAIN_BATCH), generator=torch.Generator().manual_seed(seed))
    where = f"{TRAIN_REPEAT} steps of it in a VAE on binarized MNIST"
    losses = []
    for step, batch in enumerate(batches, 1):
        loss = model(images[batch])["loss"]
        if not torch.isfinite(loss):
            return FAIL, f"loss {loss.item()} at Adam step {step} of {steps} ({where})", None
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        valid = model(_images("valid", _VALID_IMAGES))["neg_elbo"].item()
    window = max(1, steps // 5)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    detail = f"{steps} Adam steps of {where}: loss {first:.1f} → {last:.1f}, validation −ELBO {valid:.1f}"
    return (PASS if math.isfinite(valid) and last < first else FAIL), detail, None
