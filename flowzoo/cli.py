"""The ``flowzoo`` command: train, sweep, resume, eval, sample, report, list, check-flow, toy."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import math
import os
import shlex
import sys

import torch
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flowzoo import toy
from flowzoo.console import console
from flowzoo.errors import ConfigError, FlowzooError, Problem, TrainingError
from flowzoo.executors import LocalOptions, SlurmOptions
from flowzoo.experiment import evaluate_run, resume, sample_run, train
from flowzoo.flowcheck import check_flow
from flowzoo.plugins import import_modules
from flowzoo.registry import REGISTRIES, get_registry
from flowzoo.report import report_runs
from flowzoo.sweep import run_sweep, sweep_hint

FAILED = 1
USER_ERROR = 2
INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (1 for a failed check or a diverged run, 2 for a user error)."""
    parser = argparse.ArgumentParser(prog="flowzoo", description="VAEs with normalizing-flow posteriors.")
    commands = parser.add_subparsers(dest="command", required=True)
    training = commands.add_parser("train", help="train a model from a YAML config")
    training.add_argument("config", help="YAML config file, e.g. configs/mnist_iaf.yaml")
    training.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. trainer.epochs=1")
    where = training.add_mutually_exclusive_group()
    where.add_argument("--resume", action="store_true",
                       help="continue the newest run of this config in its output_dir from its last checkpoint")
    where.add_argument("--run-dir", metavar="DIR",
                       help="train in this directory instead of a new <output_dir>/<name>-<timestamp>")
    sweeping = commands.add_parser(
        "sweep", help="train every point of a grid of configs × values × seeds, in parallel or on SLURM",
        description="Train one run per point of the cartesian product of the config files, the overrides with "
                    "several values (key=v1,v2: commas inside [], {} or quotes do not separate) and the seeds. "
                    "Every point is validated first; running the same command again skips finished points, "
                    "resumes unfinished ones and retries failed ones. See docs/sweeps.md.")
    sweeping.add_argument("items", nargs="*", metavar="CONFIG ... key=v1,v2",
                          help="config files, then overrides, e.g. trainer.lr=0.001,0.0003 trainer.epochs=5")
    sweeping.add_argument("--seeds", type=int, metavar="N", help="an axis seed=0,...,N-1")
    sweeping.add_argument("--grid", metavar="FILE", help="a YAML file of axes (key: [values] or key: {name: value}) "
                          "and config files (config: [paths or patterns])")
    sweeping.add_argument("--output", metavar="SWEEP_DIR", help="the sweep directory (default "
                          "<output_dir>/sweep-<configs>-<digest of the grid>: the same for the same command)")
    sweeping.add_argument("--dry-run", action="store_true", help="validate and show the points; run and write nothing")
    sweeping.add_argument("--executor", choices=("local", "slurm"), default="local",
                          help="local processes (default) or SLURM jobs through submitit")
    sweeping.add_argument("--jobs", type=int, default=1, metavar="N",
                          help="local: runs at a time, the CPU cores (and GPUs) split between them (default 1)")
    slurm = sweeping.add_argument_group("slurm executor (pip install 'flowzoo[slurm]')")
    slurm.add_argument("--time", metavar="LIMIT", help="each job's time limit: MINUTES or [D-]HH:MM[:SS] (required)")
    slurm.add_argument("--partition", help="the SLURM partition")
    slurm.add_argument("--gpus-per-job", type=int, default=1, metavar="N", help="default 1")
    slurm.add_argument("--cpus-per-job", type=int, metavar="N", help="also the torch threads of each job")
    slurm.add_argument("--mem-gb", type=float, metavar="GB")
    slurm.add_argument("--array-parallelism", type=int, metavar="N", help="at most N jobs of the array at once")
    slurm.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                       help="another parameter of submitit's SlurmExecutor, e.g. account=abc (repeatable)")
    slurm.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm",
                       help="submitit's cluster: local or debug run the same jobs on this machine, to try a sweep")
    resuming = commands.add_parser("resume", help="continue a run from its last checkpoint")
    resuming.add_argument("run_dir")
    resuming.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. trainer.epochs=200")
    evaluation = commands.add_parser("eval", help="evaluate a saved run's best checkpoint")
    evaluation.add_argument("run_dir")
    evaluation.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. eval.iw_samples=5000")
    sampling = commands.add_parser("sample", help="write sample, reconstruction and interpolation grids of a run")
    sampling.add_argument("run_dir")
    sampling.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. trainer.device=cpu")
    sampling.add_argument("--count", type=int, default=64, help="samples and reconstructions (default 64)")
    sampling.add_argument("--pairs", type=int, default=8, help="interpolations, one per row (default 8)")
    sampling.add_argument("--steps", type=int, default=10, help="images along each interpolation (default 10)")
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--output", metavar="DIR", help="where the PNG files go (default RUN_DIR/samples)")
    reporting = commands.add_parser("report", help="compare runs in one table; also writes report.md and report.csv")
    reporting.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    reporting.add_argument("--output", default=".", metavar="DIR", help="where report.md and report.csv go (default .)")
    reporting.add_argument("--sort", metavar="COLUMN", help="order rows by a report.csv column, best first, "
                           "e.g. test_nll_iw")
    fitting = commands.add_parser("toy", help="fit flows to 2-D test densities (Rezende & Mohamed 2015) and draw them")
    fitting.add_argument("--targets", nargs="+", default=list(toy.TARGETS), metavar="NAME",
                         help=f"any of {', '.join(toy.TARGETS)} (default all)")
    fitting.add_argument("--flows", nargs="+", default=list(toy.DEFAULT_FLOWS), metavar="NAME",
                         help=f"registered flows, or {toy.BASELINE} for none (default {' '.join(toy.DEFAULT_FLOWS)})")
    fitting.add_argument("--steps", type=int, default=toy.STEPS, help=f"Adam steps per fit (default {toy.STEPS})")
    fitting.add_argument("--flow-steps", type=int, default=toy.FLOW_STEPS,
                         help=f"K, steps of each flow (default {toy.FLOW_STEPS})")
    fitting.add_argument("--batch-size", type=int, default=toy.BATCH_SIZE,
                         help=f"samples from q per Adam step (default {toy.BATCH_SIZE})")
    fitting.add_argument("--seed", type=int, default=0)
    fitting.add_argument("--output", default="runs/toy", metavar="DIR", help="where toy.png and toy.md go")
    listing = commands.add_parser("list", help="list registered components and where they come from")
    listing.add_argument("kind", nargs="?", help=f"one of {', '.join(REGISTRIES)}")
    listing.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'iaf*'")
    checking = commands.add_parser("check-flow", help="check a flow's log-det, gradients and structure")
    checking.add_argument("name", help="a registered flow, e.g. planar")
    checking.add_argument("parameters", nargs="*", metavar="key=value", help="flow parameters, e.g. hidden_features=16")
    checking.add_argument("--features", type=int, default=5, help="size of z (default 5)")
    checking.add_argument("--context-features", type=int, default=3, help="size of the context h, 0 for none")
    checking.add_argument("--batch-size", type=int, default=4, help="number of random inputs (default 4)")
    checking.add_argument("--seed", type=int, default=0)
    checking.add_argument("--tolerance", type=_tolerance, default=1e-6, help="largest accepted absolute error")
    for command in (listing, checking, resuming, evaluation, sampling):
        command.add_argument("--import", dest="modules", action="append", default=[], metavar="MODULE",
                             help="import a local module that registers components first (repeatable)")
    for command in (resuming, evaluation, sampling):
        command.add_argument("--trust-plugins", action="store_true",
                             help="import the modules the run's config lists under plugins: from the working "
                                  "directory too (installed ones are always imported); only for runs you trust")
    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command in ("train", "sweep"):  # key=value after options: --run-dir D trainer.epochs=1
        command = commands.choices[args.command]
        args = command.parse_intermixed_args(argv[argv.index(args.command) + 1 :],
                                             argparse.Namespace(command=args.command))
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        problems = import_modules(getattr(args, "modules", []), path="--import")
        if problems:
            raise ConfigError(problems)
        if args.command == "train":
            try:
                train(args.config, args.overrides, resume=args.resume, run_dir=args.run_dir)
            except ConfigError as error:
                raise sweep_hint(error, args.config, args.overrides) from None
        elif args.command == "sweep":
            command = shlex.join(["flowzoo", *argv])
            return run_sweep(args.items, seeds=args.seeds, grid_file=args.grid, output=args.output,
                             executor=_executor_options(args), dry_run=args.dry_run, command=command)
        elif args.command == "resume":
            resume(args.run_dir, args.overrides, args.trust_plugins)
        elif args.command == "eval":
            evaluate_run(args.run_dir, args.overrides, args.trust_plugins)
        elif args.command == "sample":
            sample_run(args.run_dir, args.overrides, count=args.count, pairs=args.pairs, steps=args.steps,
                       seed=args.seed, output=args.output, trust_plugins=args.trust_plugins)
        elif args.command == "report":
            report_runs(args.run_dirs, args.output, args.sort)
        elif args.command == "toy":
            toy.run_toy(args.targets, args.flows, steps=args.steps, flow_steps=args.flow_steps,
                        batch_size=args.batch_size, seed=args.seed, output=args.output)
        elif args.command == "list":
            console.print(_component_table(args.kind, args.pattern))
        else:
            return _check_flow(args)
    except TrainingError as error:
        _print_error(str(error))
        return FAILED
    except FlowzooError as error:
        _print_error(str(error))
        return USER_ERROR
    except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
        if not isinstance(error, MemoryError) and not _out_of_memory(error):
            raise
        _print_error(f"out of memory: {_first_line(error)}. The config asks for more memory than this machine "
                     "has: make the model (hidden sizes, flow steps) or trainer.batch_size smaller")
        return USER_ERROR
    except OSError as error:
        if error.filename is None:  # not about a file the user named: a bug to report, with its traceback
            raise
        _print_error(f"{error.filename}: {error.strerror or error}")
        return USER_ERROR
    except KeyboardInterrupt:
        how = ("the same command continues the sweep" if args.command == "sweep"
               else "`flowzoo resume RUN_DIR` continues from the last checkpoint")
        Console(stderr=True).print(f"interrupted; {how}")
        return INTERRUPTED
    return 0


def _executor_options(args: argparse.Namespace) -> LocalOptions | SlurmOptions:
    slurm_only = [option for option in ("time", "partition", "cpus_per_job", "mem_gb", "array_parallelism")
                  if getattr(args, option) is not None] + (["slurm"] if args.slurm else []) \
        + (["gpus_per_job"] if args.gpus_per_job != 1 else []) + (["cluster"] if args.cluster != "slurm" else [])
    if args.executor == "local":
        if slurm_only:
            raise ConfigError([Problem(f"--{option.replace('_', '-')}", "is an option of --executor slurm")
                               for option in slurm_only])
        return LocalOptions(args.jobs)
    if args.jobs != 1:
        raise ConfigError([Problem("--jobs", "is an option of --executor local; SLURM runs the array's jobs "
                                   "(--array-parallelism limits how many at once)")])
    return SlurmOptions(time=args.time, partition=args.partition, gpus_per_job=args.gpus_per_job,
                        cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb, array_parallelism=args.array_parallelism,
                        sbatch=tuple(args.slurm), cluster=args.cluster)


def _print_error(message: str) -> None:
    """Print ``message`` as it is: a Text object is neither markup nor emoji codes (``:x:`` in a path)."""
    Console(stderr=True).print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)


def _out_of_memory(error: RuntimeError) -> bool:
    """Whether torch failed to allocate (CPU: "can't allocate memory"; CUDA: OutOfMemoryError)."""
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def _tolerance(text: str) -> float:
    """``--tolerance``: a finite number ≥ 0 (NaN would fail every comparison, so every check)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number ≥ 0, got {text!r}")
    return value


def _check_flow(args: argparse.Namespace) -> int:
    spec: dict = {"name": args.name}
    problems = []
    for item in args.parameters:
        key, sep, text = item.partition("=")
        try:
            spec[key] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            problems.append(Problem(f"flow.{key}", f"cannot parse value {text!r}: {error}"))
        if not sep or not key:
            problems.append(Problem("flow", f"'{item}' is not of the form key=value"))
    if problems:
        raise ConfigError(problems)
    for option in ("features", "batch_size"):
        if getattr(args, option) < 1:
            raise ConfigError([Problem(f"--{option.replace('_', '-')}", "must be at least 1")])
    report = check_flow(spec, features=args.features, context_features=max(args.context_features, 0),
                        batch_size=args.batch_size, seed=args.seed, tolerance=args.tolerance)
    console.print(report.table())
    if report.passed:
        return 0
    summary = ", ".join(f"{c.name}" + (f" (max error {c.error:.2e})" if c.error is not None else "")
                        for c in report.failures)
    _print_error(f"{args.name} failed: {summary}")
    return FAILED


def _component_table(kind: str | None, pattern: str) -> Table:
    registries = [get_registry(kind)] if kind else list(REGISTRIES.values())
    table = Table(title="registered components", title_justify="left")
    table.add_column("kind")
    table.add_column("name", no_wrap=True)
    table.add_column("description", ratio=3)
    table.add_column("origin", ratio=1)
    table.add_column("defined in", overflow="fold", ratio=1)
    for registry in registries:
        for name in registry.list(pattern):
            entry = registry[name]
            table.add_row(registry.kind, name, entry.summary, entry.origin, entry.module)
    return table


if __name__ == "__main__":
    if not sys.flags.safe_path and sys.path and sys.path[0] == os.getcwd():
        del sys.path[0]  # `python -m` put the working directory first: its files must not shadow modules
    sys.exit(main())
