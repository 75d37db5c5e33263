"""Aggregate training throughput of N runs sharing one device, against one run alone.

Each of N processes (spawned, like ``flowzoo sweep --jobs N``'s local executor starts
them) builds the model of ``configs/mnist_iaf.yaml`` and flowzoo's trainer exactly as
``train_throughput.py`` does, runs one untimed warm-up round, waits for the others at
a barrier, then trains ``--steps`` steps. The aggregate rate is all the processes'
images over the time from the first start to the last finish; the ratio is that over
the rate of N = 1 measured the same way, in the same invocation.

    python benchmarks/concurrent_runs.py --device cpu --jobs 1 2 --steps 20
    python benchmarks/concurrent_runs.py --device cuda --jobs 1 4 8 16 --steps 300 --variant bf16+graphs
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

from common import describe_machine
from rich.console import Console
from rich.table import Table
from train_throughput import Bench

import torch


def _one_run(options: dict, barrier) -> tuple[float, float, int]:
    """One process's warm-up, then its timed round: (start, end, images)."""
    args = argparse.Namespace(**options)
    bench = Bench(args)
    bench.measure(args.variant)  # untimed: compiles, captures, fills the caches
    run = bench.round(args.variant)
    barrier.wait()
    started = time.time()
    run()
    if bench.device.type == "cuda":
        torch.cuda.synchronize(bench.device)
    return started, time.time(), args.steps * args.batch_size


def aggregate(options: dict, jobs: int) -> float:
    """Images per second of ``jobs`` concurrent runs together."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(jobs) as pool:
        barrier = manager.Barrier(jobs)
        runs = pool.starmap(_one_run, [(options, barrier)] * jobs)
    starts, ends, images = zip(*runs)
    return sum(images) / (max(ends) - min(starts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--variant", default="fp32", help="as train_throughput.py's --variants: fp32, bf16+graphs, ...")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    options = {"device": args.device, "steps": args.steps, "batch_size": args.batch_size, "variant": args.variant}
    rates = {jobs: aggregate(options, jobs) for jobs in sorted(set([1, *args.jobs]))}
    table = Table(title=f"concurrent runs on one {args.device}, mnist_iaf, trainer {args.variant}, "
                        f"{args.steps} steps of {args.batch_size} each", title_justify="left")
    for column in ("runs", "aggregate images/s", "per run", "ratio to one run"):
        table.add_column(column, justify="right")
    for jobs, rate in rates.items():
        table.add_row(str(jobs), f"{rate:,.0f}", f"{rate / jobs:,.0f}", f"{rate / rates[1]:.2f}")
    Console().print(table)
    machine = describe_machine(torch.device(args.device))
    Console().print(f"machine: {machine}")
    if args.json:
        args.json.write_text(json.dumps({**options, "machine": machine,
                                         "aggregate_images_per_second": rates}, indent=2))


if __name__ == "__main__":
    main()
