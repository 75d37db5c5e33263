"""The ``flowzoo`` command: train, eval, list."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flowzoo.console import console
from flowzoo.errors import FlowzooError
from flowzoo.experiment import evaluate_run, train
from flowzoo.registry import REGISTRIES, get_registry

USER_ERROR = 2
INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a user error)."""
    parser = argparse.ArgumentParser(prog="flowzoo", description="VAEs with normalizing-flow posteriors.")
    commands = parser.add_subparsers(dest="command", required=True)
    training = commands.add_parser("train", help="train a model from a YAML config")
    training.add_argument("config", help="YAML config file, e.g. configs/mnist_iaf.yaml")
    training.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. trainer.epochs=1")
    evaluation = commands.add_parser("eval", help="evaluate a saved run's best checkpoint")
    evaluation.add_argument("run_dir")
    evaluation.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. eval.iw_samples=5000")
    listing = commands.add_parser("list", help="list registered components")
    listing.add_argument("kind", nargs="?", help=f"one of {', '.join(REGISTRIES)}")
    listing.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'iaf*'")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            train(args.config, args.overrides)
        elif args.command == "eval":
            evaluate_run(args.run_dir, args.overrides)
        else:
            console.print(_component_table(args.kind, args.pattern))
    except FlowzooError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return USER_ERROR
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted; checkpoints written so far are in the run directory")
        return INTERRUPTED
    return 0


def _component_table(kind: str | None, pattern: str) -> Table:
    registries = [get_registry(kind)] if kind else list(REGISTRIES.values())
    table = Table(title="registered components", title_justify="left")
    for column in ("kind", "name", "description", "defined in"):
        table.add_column(column)
    for registry in registries:
        for name in registry.list(pattern):
            entry = registry[name]
            table.add_row(registry.kind, name, entry.summary, entry.module)
    return table


if __name__ == "__main__":
    sys.exit(main())
