"""Training throughput of one gated IAF step against nflows' masked affine autoregressive step.

Both steps are built the way ``configs/mnist_iaf.yaml`` builds its flow: 32 latents, a
context h of 32, and a MADE with 2 hidden layers of 320 ELU units, so they share the
same network and differ only in the elementwise update (gated for flowzoo's ``iaf``,
softplus-scaled affine for nflows). Each is timed on a forward pass plus the backward
pass of a KL-like loss, in the same process, in interleaved rounds; the table reports
the median time per step, samples per second and the ratio IAF/MAF (> 1: IAF faster).

    python benchmarks/iaf_step.py --device cpu --steps 100 --repeats 11
    python benchmarks/iaf_step.py --device cuda --json iaf_step_cuda.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from common import describe_machine, synchronize
from nflows.transforms import Transform
from rich.console import Console
from rich.table import Table
from torch import Tensor

from flowzoo.console import parameter_count
from flowzoo.flows.autoregressive import masked_affine_autoregressive
from flowzoo.flows.iaf import GatedIAF

# The flow step of configs/mnist_iaf.yaml.
FEATURES = 32
CONTEXT_FEATURES = 32
HIDDEN_FEATURES = 320
HIDDEN_LAYERS = 2

# Enough to get past lazy initialisation (CUDA context, cuBLAS handles, allocator pools).
WARMUP_STEPS = 20

LABELS = {
    "iaf": "GatedIAF (flowzoo 'iaf')",
    "maf": "MaskedAffineAutoregressiveTransform (nflows)",
}


def build_steps() -> dict[str, Transform]:
    """The two flow steps, keyed as in :data:`LABELS`, with identical MADEs."""
    return {
        "iaf": GatedIAF(FEATURES, CONTEXT_FEATURES, HIDDEN_FEATURES, HIDDEN_LAYERS),
        # nflows' transform, its MADE built from the same arguments (flowzoo.flows.autoregressive.made_arguments).
        "maf": masked_affine_autoregressive(FEATURES, CONTEXT_FEATURES, HIDDEN_FEATURES, HIDDEN_LAYERS),
    }


def training_step(step: Transform, z: Tensor, h: Tensor) -> Callable[[], None]:
    """A closure running one forward and backward pass, clearing gradients as an optimiser would."""

    def run() -> None:
        step.zero_grad(set_to_none=True)
        z_new, logabsdet = step(z, context=h)
        # The flow's share of a KL term against a standard normal: touches both outputs.
        (0.5 * z_new.square().sum(-1) - logabsdet).mean().backward()

    return run


def seconds_per_call(fn: Callable[[], None], calls: int, device: torch.device) -> float:
    """Mean wall-clock seconds per call over ``calls`` back-to-back calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def interleaved_timings(
    candidates: dict[str, Callable[[], None]], calls: int, repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each candidate in each of ``repeats`` rounds.

    Every round times each candidate once, and the order flips between rounds, so slow
    drifts (clock boost, thermal throttling, a neighbour's load) fall on all candidates alike.
    """
    for fn in candidates.values():
        for _ in range(WARMUP_STEPS):
            fn()
    names = list(candidates)
    timings: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            timings[name].append(seconds_per_call(candidates[name], calls, device))
    return timings


def run_benchmark(device: torch.device, batch_size: int, steps: int, repeats: int) -> dict[str, Any]:
    """Time both flow steps and return the figures, per-round timings included."""
    torch.manual_seed(0)
    flow_steps = {name: step.to(device) for name, step in build_steps().items()}
    z = torch.randn(batch_size, FEATURES, device=device)
    h = torch.randn(batch_size, CONTEXT_FEATURES, device=device)
    timings = interleaved_timings(
        {name: training_step(step, z, h) for name, step in flow_steps.items()}, steps, repeats, device
    )
    results = {}
    for name, step in flow_steps.items():
        median = statistics.median(timings[name])
        results[name] = {
            "label": LABELS[name],
            "parameters": parameter_count(step),
            "seconds_per_step": median,
            "samples_per_second": batch_size / median,
            "round_seconds_per_step": timings[name],
        }
    return {
        "benchmark": "iaf_step",
        "settings": {
            "device": device.type,
            "batch_size": batch_size,
            "steps": steps,
            "repeats": repeats,
            "warmup_steps": WARMUP_STEPS,
            "features": FEATURES,
            "context_features": CONTEXT_FEATURES,
            "hidden_features": HIDDEN_FEATURES,
            "hidden_layers": HIDDEN_LAYERS,
        },
        "machine": describe_machine(device),
        "results": results,
        "ratio_iaf_over_maf": results["maf"]["seconds_per_step"] / results["iaf"]["seconds_per_step"],
    }


def results_table(report: dict[str, Any]) -> Table:
    """The figures as a rich table, the ratio and machine in its caption."""
    settings, machine = report["settings"], report["machine"]
    table = Table(
        title=f"One flow step, forward + backward, batch {settings['batch_size']} on {settings['device']}",
        caption=(
            f"IAF/MAF throughput ratio {report['ratio_iaf_over_maf']:.3f} (> 1: IAF faster); "
            f"median of {settings['repeats']} interleaved rounds of {settings['steps']} steps\n"
            f"{machine['gpu'] or machine['cpu']}, {machine['cpu_cores']} cores, {machine['torch_threads']} "
            f"torch threads, torch {machine['torch']}, nflows {machine['nflows']}"
        ),
    )
    # Fold rather than truncate the class names when the console is narrow (80 columns when piped).
    table.add_column("flow step", overflow="fold")
    table.add_column("parameters", justify="right")
    table.add_column("ms/step", justify="right")
    table.add_column("min–max", justify="right")
    table.add_column("samples/s", justify="right")
    for figures in report["results"].values():
        rounds_ms = [1e3 * seconds for seconds in figures["round_seconds_per_step"]]
        table.add_row(
            figures["label"],
            f"{figures['parameters']:,}",
            f"{1e3 * figures['seconds_per_step']:.3f}",
            f"{min(rounds_ms):.3f}–{max(rounds_ms):.3f}",
            f"{figures['samples_per_second']:,.0f}",
        )
    return table


def main() -> None:
    """Parse the options, run the benchmark, print the table and write the JSON if asked."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=100, help="samples per step (default: 100)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per round (default: 100)")
    parser.add_argument("--repeats", type=int, default=11, help="interleaved rounds (default: 11)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here as JSON")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if min(args.batch_size, args.steps, args.repeats) < 1:
        parser.error("--batch-size, --steps and --repeats must be positive")

    report = run_benchmark(torch.device(args.device), args.batch_size, args.steps, args.repeats)
    Console().print(results_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
