"""Training throughput and peak memory of flowzoo's trainer against a plain PyTorch loop.

Both train the model of ``configs/mnist_iaf.yaml`` (conv encoder/decoder, 4 gated IAF
steps) on real static binarized MNIST, in the same process, in interleaved rounds:

- ``plain``: the smallest correct loop over the same modules: index a batch of
  device-resident data, ``loss.backward()``, ``Adamax.step()``; fp32, nothing else;
- ``trainer``: :class:`flowzoo.trainer.Trainer` for one epoch of the same number of
  steps, with everything it does in a real run (non-finite guard, running metrics,
  logging, TensorBoard, a checkpoint at the end), plus the variants named with
  ``--variants`` (mixed precision, ``torch.compile``, ``trainer.cuda_graphs``) on a GPU.

Each round reports images per second of the training steps (the trainer's checkpoints
and its epoch-end validation and pictures are timed separately as "epoch end") and the
peak memory (CUDA: ``max_memory_allocated`` above what the round started with; CPU:
the peak growth of the resident set during one round run alone in a fresh process).
The table gives medians over rounds and each variant's throughput as a ratio to
the plain loop of the same rounds.

    python benchmarks/train_throughput.py --device cpu --steps 100 --rounds 3
    python benchmarks/train_throughput.py --device cpu trainer.optimizer=adamax trainer.lr=0.001 trainer.ema_decay=0
    python benchmarks/train_throughput.py --device cuda --steps 500 --rounds 3 \\
        --variants fp32 bf16 bf16+compile fp32+graphs bf16+graphs --json train_throughput_cuda.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from common import describe_machine, synchronize
from rich.console import Console
from rich.table import Table

from flowzoo.config import load_config
from flowzoo.console import console as flowzoo_console
from flowzoo.registry import datasets
from flowzoo.runs import RunDir
from flowzoo.trainer import Trainer
from flowzoo.vae import build_model

REPO = Path(__file__).resolve().parents[1]


def cuda_peak_megabytes(run: Callable[[], None], device: torch.device) -> float:
    """Peak memory allocated on the GPU while ``run`` runs, above what was allocated before."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def cpu_peak_megabytes(args: argparse.Namespace, name: str) -> float:
    """Peak growth of the resident set while one round of ``name`` runs, in a fresh
    process: in the benchmark's own process the allocator keeps what earlier rounds freed."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_child_peak, (vars(args), name))


def _child_peak(options: dict, name: str) -> float:
    bench = Bench(argparse.Namespace(**options))
    run = bench.round(name)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) left by loading the data
    before = _status_kilobytes("VmRSS")
    run()
    return (_status_kilobytes("VmHWM") - before) / 1024


def _status_kilobytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (this measurement needs Linux)")


def experiment(device: str, steps: int, batch_size: int, variant: str, output: Path, overrides: list[str]):
    """The resolved mnist_iaf config for one variant, with an epoch of exactly ``steps`` steps."""
    precision, _, option = variant.partition("+")
    return load_config(REPO / "configs" / "mnist_iaf.yaml", [
        f"trainer.device={device}",
        f"trainer.batch_size={batch_size}",
        "trainer.epochs=1",
        f"trainer.precision={precision}",
        f"trainer.compile={'true' if option == 'compile' else 'false'}",
        f"trainer.cuda_graphs={'true' if option == 'graphs' else 'false'}",
        f"trainer.log_every={max(1, steps // 5)}",
        "trainer.checkpoint_every=0",
        f"output_dir={output}",
        *overrides,
    ])


def plain_loop(model: torch.nn.Module, images: torch.Tensor, steps: int, batch_size: int,
               device: torch.device) -> Callable[[], None]:
    """The baseline: what anyone would write by hand for the same model."""
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
    data = images.to(device)
    order = torch.randperm(len(data), device=device)

    def run() -> None:
        for step in range(steps):
            x = data[order[step * batch_size:(step + 1) * batch_size]].float()
            loss = model(x)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


class Bench:
    """The data, the model and the two kinds of training loop, for one device."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        flowzoo_console.quiet = True  # the trainer's progress bar would be timed too
        self.scratch = Path(tempfile.mkdtemp(prefix="flowzoo-bench-"))
        self.base = experiment(args.device, args.steps, args.batch_size, "fp32", self.scratch, args.overrides)
        self.dataset = datasets.build(self.base.data, "data")
        self.images = self.dataset.load("train")[: args.steps * args.batch_size]
        self.valid = self.dataset.load("valid")[:1000]
        self.outside_steps = 0.0  # seconds of this round spent in checkpoints and at the epoch's end
        self._depth = 0

    def fresh_model(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(self.base.model, self.dataset.shape).to(self.device)

    def round(self, name: str) -> Callable[[], None]:
        """One round of the plain loop (``plain``) or of the trainer with settings ``name``."""
        args = self.args
        self.outside_steps = 0.0
        if name == "plain":
            return plain_loop(self.fresh_model(), self.images, args.steps, args.batch_size, self.device)
        config = experiment(args.device, args.steps, args.batch_size, name, self.scratch, args.overrides)
        plain = dataclasses.asdict(config)
        run = RunDir.create(self.scratch, name.replace("+", "-"), plain)
        trainer = Trainer(self.fresh_model(), {"train": self.images, "valid": self.valid}, config.trainer, run,
                          evaluation=config.eval, seed=config.seed, config=plain)
        for method in ("_checkpoint", "_end_epoch"):
            setattr(trainer, method, self._timed(getattr(trainer, method)))
        return trainer.fit

    def _timed(self, method: Callable[..., None]) -> Callable[..., None]:
        def wrapper(*args, **kwargs) -> None:
            self._depth += 1
            started = time.perf_counter()
            try:
                method(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:  # a checkpoint inside the epoch's end is counted once
                    synchronize(self.device)
                    self.outside_steps += time.perf_counter() - started
        return wrapper

    def measure(self, name: str) -> dict[str, float]:
        """Images per second of the training steps of one round, and the time outside them."""
        run = self.round(name)
        synchronize(self.device)
        started = time.perf_counter()
        run()
        synchronize(self.device)
        seconds = time.perf_counter() - started - self.outside_steps
        return {"seconds": seconds, "epoch_end_seconds": self.outside_steps,
                "images_per_second": self.args.steps * self.args.batch_size / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=100, help="training steps per round")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["fp32"],
                        help="trainer settings: fp32, bf16, fp16, each optionally +compile; fp32 or bf16 +graphs")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="applied to the trainer's config, e.g. trainer.optimizer=adamax trainer.ema_decay=0")
    args = parser.parse_intermixed_args()
    bench = Bench(args)
    names = ["plain", *args.variants]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for warmup in (True, False):  # one untimed round compiles and fills caches
        for _ in range(1 if warmup else args.rounds):
            for name in names:
                measured = bench.measure(name)
                if not warmup:
                    results[name].append(measured)
    for name in names:  # memory last, apart from the timed rounds
        if bench.device.type == "cuda":
            peak = cuda_peak_megabytes(bench.round(name), bench.device)
        else:
            peak = cpu_peak_megabytes(args, name)
        for measured in results[name]:
            measured["peak_mb"] = peak

    table = Table(title=f"training throughput, mnist_iaf, {args.steps} steps of {args.batch_size}, "
                        f"{args.device}, median of {args.rounds} rounds", title_justify="left")
    for column in ("loop", "images/s", "ratio to plain", "epoch end (s)", "peak memory (MiB)"):
        table.add_column(column, justify="left" if column == "loop" else "right")
    plain_rate = statistics.median(r["images_per_second"] for r in results["plain"])
    summary = {}
    for name, rounds in results.items():
        rate = statistics.median(r["images_per_second"] for r in rounds)
        memory = statistics.median(r["peak_mb"] for r in rounds)
        epoch_end = statistics.median(r["epoch_end_seconds"] for r in rounds)
        summary[name] = {"images_per_second": rate, "ratio_to_plain": rate / plain_rate, "peak_mb": memory,
                         "rounds": rounds}
        table.add_row(name if name == "plain" else f"trainer {name}", f"{rate:,.0f}", f"{rate / plain_rate:.3f}",
                      f"{epoch_end:.2f}", f"{memory:,.0f}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "steps": args.steps, "batch_size": args.batch_size,
                                         "machine": describe_machine(bench.device), "results": summary}, indent=2))


if __name__ == "__main__":
    main()
