"""IWAE evaluation speed: flowzoo's ``evaluate`` against a plain per-batch loop, and bf16's error.

The model of ``configs/mnist_iaf.yaml`` (freshly initialised: speed does not depend on
the weights) is evaluated on the first ``--images`` static binarized MNIST test images
with K = ``--samples`` importance samples, in the same process, in interleaved rounds:

- ``plain``: what one writes by hand: for each batch of ``--batch-size`` images, one
  pass per ``--plain-chunk`` samples, a log-sum-exp, a ``.item()`` per batch;
- ``flowzoo fp32`` / ``flowzoo bf16`` (``--loops`` picks among the three): :func:`flowzoo.evaluation.evaluate` with its
  default pass size for the device (``eval.max_batch`` null) or ``--max-batch``, in
  fp32 and under bf16 autocast.

It reports images × samples per second, the ratio to the plain loop, the time the
whole test set (10,000 images) would take at that rate, and how far bf16 moves
−log p(x) and the −ELBO (nats per image) from fp32 on the same noise.

    python benchmarks/iwae_eval.py --device cpu --images 200 --samples 100 --rounds 3
    python benchmarks/iwae_eval.py --device cuda --images 10000 --samples 5000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from common import describe_machine, synchronize
from rich.console import Console
from rich.table import Table

from flowzoo.config import load_config
from flowzoo.console import console as flowzoo_console
from flowzoo.evaluation import evaluate
from flowzoo.registry import datasets
from flowzoo.vae import build_model

REPO = Path(__file__).resolve().parents[1]
TEST_SET = 10_000


@torch.no_grad()
def plain_nll(model: torch.nn.Module, images: torch.Tensor, samples: int, batch_size: int, chunk: int) -> float:
    """The hand-written IWAE bound: mean −log (1/K) Σ_k w_k over ``images``."""
    total = 0.0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].float()
        log_w = []
        for first in range(0, samples, chunk):
            terms = model.log_weights(x, min(chunk, samples - first))
            log_w.append(terms["log_px_given_z"] + terms["log_pz"] - terms["log_qz"])
        total += -(torch.logsumexp(torch.cat(log_w), dim=0) - math.log(samples)).sum().item()
    return total / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--samples", type=int, default=100, help="K")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--max-batch", type=int, default=None, help="flowzoo's pairs per pass (default: by device)")
    parser.add_argument("--plain-chunk", type=int, default=5, help="samples per pass of the plain loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loops", nargs="+", default=["plain", "fp32", "bf16"], choices=["plain", "fp32", "bf16"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    flowzoo_console.quiet = True
    config = load_config(REPO / "configs" / "mnist_iaf.yaml", [f"trainer.device={args.device}"])
    dataset = datasets.build(config.data, "data")
    images = dataset.load("test")[: args.images].to(device)
    torch.manual_seed(0)
    model = build_model(config.model, dataset.shape).to(device).eval()

    def flowzoo_run(precision: str):
        return lambda x: evaluate(model, x, iw_samples=args.samples, batch_size=args.batch_size,
                                  max_batch=args.max_batch, precision=precision, seed=0)

    candidates = {
        "plain": lambda x: plain_nll(model, x, args.samples, args.batch_size, args.plain_chunk),
        "flowzoo fp32": flowzoo_run("fp32"),
        "flowzoo bf16": flowzoo_run("bf16"),
    }
    candidates = {name: run for name, run in candidates.items() if name.split()[-1] in args.loops}
    seconds = {name: [] for name in candidates}
    outputs = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up, on one batch
        names = list(candidates) if round_ % 2 else list(reversed(candidates))
        for name in names:
            synchronize(device)
            started = time.perf_counter()
            outputs[name] = candidates[name](images if round_ else images[: args.batch_size])
            synchronize(device)
            if round_:
                seconds[name].append(time.perf_counter() - started)

    pairs = args.images * args.samples
    plain_rate = pairs / statistics.median(seconds["plain"]) if "plain" in seconds else math.nan
    table = Table(title=f"IWAE evaluation, mnist_iaf, {args.images:,} images × K={args.samples:,}, {args.device}, "
                        f"median of {args.rounds} rounds", title_justify="left")
    for column in ("loop", "images×samples/s", "ratio to plain", f"{TEST_SET:,} test images (s)"):
        table.add_column(column, justify="left" if column == "loop" else "right")
    summary = {}
    for name, times in seconds.items():
        rate = pairs / statistics.median(times)
        summary[name] = {"pairs_per_second": rate, "ratio_to_plain": rate / plain_rate, "seconds": times,
                         "test_set_seconds": TEST_SET * args.samples / rate}
        table.add_row(name, f"{rate:,.0f}", f"{rate / plain_rate:.2f}", f"{TEST_SET * args.samples / rate:,.1f}")
    difference = {}
    if {"flowzoo fp32", "flowzoo bf16"} <= set(outputs):
        fp32, bf16 = outputs["flowzoo fp32"], outputs["flowzoo bf16"]
        difference = {key: bf16[key] - fp32[key] for key in ("nll_iw", "neg_elbo")}
        table.caption = (f"bf16 − fp32 on the same noise: −log p(x) {difference['nll_iw']:+.4f}, "
                         f"−ELBO {difference['neg_elbo']:+.4f} nats/image (fp32: {fp32['nll_iw']:.3f})")
    Console().print(table)
    Console().print(f"machine: {describe_machine(device)}")
    if args.json:
        args.json.write_text(json.dumps({**vars(args), "json": str(args.json), "machine": describe_machine(device),
                                         "results": summary, "bf16_minus_fp32": difference}, indent=2))


if __name__ == "__main__":
    main()
