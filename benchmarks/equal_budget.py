"""flowzoo's training defaults against a plain PyTorch loop over the same modules, at equal budget.

Both sides train the model a config describes, from the same initial weights, on the
same data, with batches of the config's size, for the same number of epochs, in one
process. flowzoo trains with its :class:`~flowzoo.trainer.Trainer` and the config's
``trainer`` section as it is; the plain loop is the script a researcher would write:
Adam at lr 1e-3, shuffled batches, nothing else. After every epoch both are scored the
same way, by :func:`flowzoo.evaluate` on the test split with one posterior sample (the
test −ELBO; flowzoo scores the weights it would evaluate, i.e. its Polyak average when
``trainer.ema_decay`` is on). The trainer is handed the test split as its validation
split, so its own per-epoch validation is that score.

With a constant learning rate and no warm-up that depends on the run's length (the
defaults), epoch ``e`` of a longer run is exactly a run of ``e`` epochs, so one run of
``--epochs 50`` compares every budget from 1 to 50 epochs.

    python benchmarks/equal_budget.py configs/mnist_iaf.yaml --epochs 12
    python benchmarks/equal_budget.py configs/mnist_vae.yaml --epochs 50 --json vae50.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import flowzoo
from flowzoo.console import console
from flowzoo.registry import datasets, models
from flowzoo.runs import RunDir
from flowzoo.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from common import describe_machine  # noqa: E402

PLAIN_LR = 1e-3


def plain_loop(model, train, test, *, epochs: int, batch_size: int, seed: int, score) -> tuple[list[float], float]:
    """Adam at lr 1e-3 over shuffled batches; the test score after each epoch and the training images/s."""
    optimizer = torch.optim.Adam(model.parameters(), lr=PLAIN_LR)
    order = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    scores, seconds = [], 0.0
    for _ in range(epochs):
        model.train()
        started = time.perf_counter()
        for indices in torch.randperm(len(train), generator=order).split(batch_size):
            loss = model(train[indices].float())["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds += time.perf_counter() - started
        scores.append(score(model))
    return scores, epochs * len(train) / seconds


def flowzoo_loop(model, train, test, config, *, epochs: int, folder: Path) -> tuple[list[float], float]:
    """The config's trainer section, for ``epochs`` epochs; its per-epoch validation scores the test split."""
    settings = dataclasses.replace(config.trainer, epochs=epochs, picture_count=0, tensorboard=False,
                                   checkpoint_every=0)
    run = RunDir.create(folder, "equal_budget", {})
    torch.manual_seed(config.seed)
    trainer = Trainer(model, {"train": train, "valid": test}, settings, run, evaluation=config.eval,
                      seed=config.seed, config={})
    trainer.fit()
    scores = [record["neg_elbo"] for record in run.records("valid")]
    rates = [record["images_per_second"] for record in run.records("train")]
    return scores, statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("config", nargs="?", default="configs/mnist_iaf.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to the config, e.g. seed=1")
    parser.add_argument("--epochs", type=int, default=12, help="the budget: epochs of each side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the issue's measurement)")
    parser.add_argument("--json", metavar="PATH", help="also write settings, machine and every score as JSON")
    args = parser.parse_intermixed_args(argv)
    torch.set_num_threads(args.threads)
    config = flowzoo.load_config(args.config, [*args.overrides, "trainer.device=cpu"])
    torch.manual_seed(config.seed)
    dataset = datasets.instantiate(config.data, "data")
    model = models.instantiate(config.model, "model", data_shape=tuple(dataset.shape))
    initial = copy.deepcopy(model)
    train, test = dataset.load("train"), dataset.load("test")

    def score(candidate) -> float:
        return flowzoo.evaluate(candidate, test, iw_samples=1, batch_size=config.eval.batch_size,
                                max_batch=config.eval.max_batch, seed=config.eval.seed)["neg_elbo"]

    console.quiet = True  # the trainer's progress bar and epoch lines; the table below says it all
    with tempfile.TemporaryDirectory() as folder:
        ours, our_rate = flowzoo_loop(model, train, test, config, epochs=args.epochs, folder=Path(folder))
    console.quiet = False
    plain, plain_rate = plain_loop(initial, train, test, epochs=args.epochs, batch_size=config.trainer.batch_size,
                                   seed=config.seed, score=score)

    trainer = config.trainer
    recipe = (f"{trainer.optimizer} lr {trainer.lr:g}, {trainer.lr_schedule} schedule, EMA {trainer.ema_decay:g}, "
              f"grad clip {trainer.grad_clip:g}, KL warm-up {trainer.kl_warmup_steps} steps")
    print(f"{args.config}: test −ELBO (K=1, nats) after each epoch; flowzoo: {recipe}; plain: adam lr {PLAIN_LR:g}")
    print(f"{'epoch':>5} {'flowzoo':>9} {'plain':>9} {'plain − flowzoo':>16}")
    for epoch, (a, b) in enumerate(zip(ours, plain), 1):
        print(f"{epoch:>5} {a:>9.2f} {b:>9.2f} {b - a:>16.2f}")
    wins = sum(a < b for a, b in zip(ours, plain))
    print(f"flowzoo lower at {wins} of {len(ours)} budgets; training images/s flowzoo {our_rate:,.0f}, "
          f"plain {plain_rate:,.0f} (ratio {our_rate / plain_rate:.2f})")
    machine = describe_machine(torch.device("cpu"))
    print(f"machine: {machine['cpu']}, {machine['cpu_cores']} cores, {machine['torch_threads']} torch threads, "
          f"torch {machine['torch']}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "config": args.config, "overrides": args.overrides, "epochs": args.epochs, "recipe": recipe,
            "flowzoo": ours, "plain": plain, "images_per_second": {"flowzoo": our_rate, "plain": plain_rate},
            "machine": machine}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
