"""Test-set metrics: −ELBO, its two terms, and the importance-weighted −log p(x)."""

from __future__ import annotations

__all__ = ["evaluate", "evaluation_settings", "CPU_MAX_BATCH", "GPU_MAX_BATCH"]

import math
from typing import Any

import torch
from torch import Tensor, nn

from flowzoo.config import EvalConfig
from flowzoo.console import EvaluationProgress
from flowzoo.distributed import Distributed
from flowzoo.likelihoods import bits_per_dim

CPU_MAX_BATCH = 500
GPU_MAX_BATCH = 20_000
"""(example, sample) pairs per pass when ``eval.max_batch`` is null."""


def evaluation_settings(settings: EvalConfig, **changes: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate` from the ``eval`` settings, with ``changes``."""
    chosen = {key: getattr(settings, key) for key in ("iw_samples", "batch_size", "max_batch", "precision", "seed")}
    return {**chosen, **changes}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Tensor,
    *,
    iw_samples: int = 100,
    batch_size: int = 100,
    max_batch: int | None = None,
    precision: str = "fp32",
    seed: int = 1234,
    workers: Distributed = Distributed(),
    progress: str | None = None,
) -> dict[str, float]:
    r"""Average per-example metrics of a VAE over ``images``, in nats.

    With ``K`` posterior samples :math:`z_k \sim q(z|x)` and log-weights
    :math:`\log w_k = \log p(x|z_k) + \log p(z_k) - \log q(z_k|x)`:

    - ``neg_elbo`` = :math:`-\frac1K\sum_k \log w_k` (the −ELBO, averaged over the K samples),
      and its terms ``recon`` = :math:`-\frac1K\sum_k \log p(x|z_k)` and ``kl`` = ``neg_elbo − recon``;
    - ``nll_iw`` = :math:`-\log \frac1K \sum_k w_k`, the importance-weighted bound on
      :math:`-\log p(x)` (Burda et al. 2016), which is ≤ ``neg_elbo`` and tightens as K grows;
    - for 8-bit images (a likelihood with ``reports_bits_per_dim``), ``bpd_elbo`` and
      ``bpd_iw``: the two bounds in bits per dimension;
    - for a model with several stochastic layers, ``kl_per_layer``: each layer's KL
      term, ``{layer name: nats}``, which shows the layers in use and the collapsed ones.

    Samples are drawn in chunks of at most ``max_batch`` (example, sample) pairs with
    a running log-sum-exp, so any K fits in memory (by default 500 pairs on the CPU and
    20,000 on a GPU, see ``eval.max_batch``); ``precision="bf16"`` runs the passes under
    bf16 autocast and sums in float64. The evaluation draws from its own
    seeded random stream and leaves the global one untouched. Under ``torchrun`` each
    rank evaluates its share of ``images`` and every rank gets the averages over all.
    With ``progress`` (its description), rank 0 shows the images done and the time left.

    References:
        Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.

    Example:
        >>> from flowzoo.vae import build_model
        >>> model = build_model({"latent_size": 2, "encoder": {"name": "mlp", "hidden_sizes": [8]},
        ...                    "decoder": {"name": "mlp", "hidden_sizes": [8]}}, data_shape=(1, 4, 4))
        >>> metrics = evaluate(model, torch.randint(0, 2, (10, 1, 4, 4)), iw_samples=20)
        >>> metrics["nll_iw"] <= metrics["neg_elbo"], metrics["iw_samples"]
        (True, 20)
    """
    device = next(model.parameters()).device
    n, dims = len(images), images[0].numel()
    images = workers.shard(images)
    was_training = model.training
    model.eval()
    max_batch = max_batch or (GPU_MAX_BATCH if device.type == "cuda" else CPU_MAX_BATCH)
    chunk = max(1, min(iw_samples, max_batch // batch_size))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    layer_names = getattr(model, "layer_names", ("z",))
    # Σ log w, Σ log p(x|z), Σ log-IW, Σ KL per layer: summed on the device, no per-batch sync
    totals = torch.zeros(3 + len(layer_names), dtype=torch.float64, device=device)
    devices = [device] if device.type == "cuda" else []
    shown = EvaluationProgress(progress or "", total=len(images), disable=progress is None or not workers.is_main)
    with torch.random.fork_rng(devices=devices), shown, autocast:
        torch.manual_seed(seed)
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device).float()
            running = torch.full((len(x),), -math.inf, device=device, dtype=torch.float64)
            for first in range(0, iw_samples, chunk):
                terms = model.log_weights(x, min(chunk, iw_samples - first))
                log_w = (terms["log_px_given_z"] + terms["log_pz"] - terms["log_qz"]).double()
                running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
                totals[0] += log_w.sum()
                totals[1] += terms["log_px_given_z"].double().sum()
                totals[3:] += terms["kl_groups"].double().sum((0, 1, 3))
            totals[2] += (running - math.log(iw_samples)).sum()
            shown.advance(len(x))
    model.train(was_training)
    log_w, log_px_given_z, log_iw, *layer_kl = workers.sum(totals).tolist()
    neg_elbo = -log_w / (n * iw_samples)
    recon = -log_px_given_z / (n * iw_samples)
    metrics = {
        "neg_elbo": neg_elbo,
        "recon": recon,
        "kl": neg_elbo - recon,
        "nll_iw": -log_iw / n,
        "iw_samples": iw_samples,
        "examples": n,
    }
    if getattr(model.likelihood, "reports_bits_per_dim", False):
        metrics["bpd_elbo"] = bits_per_dim(neg_elbo, dims)
        metrics["bpd_iw"] = bits_per_dim(metrics["nll_iw"], dims)
    if len(layer_names) > 1:
        metrics["kl_per_layer"] = {name: total / (n * iw_samples) for name, total in zip(layer_names, layer_kl)}
    return metrics
