"""The ``flowzoo`` command: train, config, sweep, resume, eval, sample, report, list, check-flow, toy.

Every command takes its flags and its ``key=value`` items in any order. ``python -m
flowzoo`` runs the same command.
"""

from __future__ import annotations

__all__ = ["main", "build_parser"]

import argparse
import dataclasses
import math
import os
import shlex
import sys

import torch
import yaml
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from flowzoo import __version__, toy
from flowzoo.config import base_file, load_config, yaml_value
from flowzoo.console import console
from flowzoo.docstrings import description, markdown, own_docstring, parameter_rows, section, yaml_inline
from flowzoo.errors import ConfigError, FlowzooError, Problem, TrainingError, did_you_mean
from flowzoo.executors import LocalOptions, SlurmOptions
from flowzoo.experiment import RunInterrupted, evaluate_run, resume, sample_run, train
from flowzoo.flowcheck import TRAIN_STEPS, check_flow
from flowzoo.plugins import import_modules
from flowzoo.registry import REGISTRIES, Entry, Registry, get_registry
from flowzoo.report import report_runs
from flowzoo.runs import flat_config
from flowzoo.schema import describe
from flowzoo.sweep import run_sweep, sweep_hint

FAILED = 1
USER_ERROR = 2
INTERRUPTED = 130


class _HelpFormatter(argparse.HelpFormatter):
    """``--help`` ends each option's text with its default, where it has one (lists as typed)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if not action.help or default is None or default is False or default is argparse.SUPPRESS or default == []:
            return action.help
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{action.help} (default: {shown})".replace("%", "%%")


_OVERRIDES = ("Flags and key=value overrides mix in any order. Any config key is an override, e.g. seed=1, "
              "output_dir=runs/mine, trainer.device=cpu, trainer.lr=3e-4 or model.flows[0].repeat=8 (every key: "
              "docs/reference.md); `flowzoo config CONFIG key=value ...` prints the resolved config without training.")


def build_parser() -> argparse.ArgumentParser:
    """The ``flowzoo`` command's parser, one subparser per command."""
    parser = argparse.ArgumentParser(prog="flowzoo", description="VAEs with normalizing-flow posteriors.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"flowzoo {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                                   formatter_class=_HelpFormatter)

    training = command("train", "train a model from a YAML config",
                       "Validate a config (every problem at once), train its model with checkpoints, and evaluate the "
                       "best-on-validation weights. " + _OVERRIDES)
    training.add_argument("config", help="YAML config file, e.g. configs/mnist_iaf.yaml")
    training.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. trainer.epochs=1 seed=1")
    where = training.add_mutually_exclusive_group()
    where.add_argument("--resume", action="store_true",
                       help="continue the newest run of this config in its output_dir from its last checkpoint")
    where.add_argument("--run-dir", metavar="DIR",
                       help="train in this directory instead of a new <output_dir>/<name>-<timestamp>")
    showing = command("config", "print the resolved config of a YAML file and overrides, without training",
                      "Validate a config as `flowzoo train` would and print it resolved, every default filled in "
                      "(what the run's config.yaml would hold), or with --diff what it changes. " + _OVERRIDES)
    showing.add_argument("config", help="YAML config file, e.g. configs/mnist_iaf_affine.yaml")
    showing.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. trainer.lr=3e-4")
    showing.add_argument("--diff", action="store_true",
                         help="print only the keys whose values differ from the config's base: file (or, for a "
                              "file without base:, from the file without the overrides)")
    sweeping = command(
        "sweep", "train every point of a grid of configs × values × seeds, in parallel or on SLURM",
        "Train one run per point of the cartesian product of the config files, the overrides with "
        "several values (key=v1,v2: commas inside [], {} or quotes do not separate) and the seeds. "
        "Every point is validated first; running the same command again skips finished points, "
        "resumes unfinished ones and retries failed ones. Flags, config files and overrides mix in any order. "
        "See docs/sweeps.md.")
    sweeping.add_argument("items", nargs="*", metavar="CONFIG ... key=v1,v2",
                          help="config files, then overrides, e.g. trainer.lr=1e-3,3e-4 trainer.epochs=5")
    sweeping.add_argument("--seeds", type=int, metavar="N", help="an axis seed=0,...,N-1")
    sweeping.add_argument("--grid", metavar="FILE", help="a YAML file of axes (key: [values] or key: {name: value}) "
                          "and config files (config: [paths or patterns])")
    sweeping.add_argument("--output", metavar="SWEEP_DIR", help="the sweep directory (default "
                          "<output_dir>/sweep-<configs>-<digest of the grid>: the same for the same command)")
    sweeping.add_argument("--dry-run", action="store_true", help="validate and show the points; run and write nothing")
    sweeping.add_argument("--executor", choices=("local", "slurm"), default="local",
                          help="local processes or SLURM jobs through submitit")
    sweeping.add_argument("--jobs", type=int, default=1, metavar="N",
                          help="local: runs at a time, the CPU cores (and GPUs) split between them")
    slurm = sweeping.add_argument_group("slurm executor (pip install 'flowzoo[slurm]')")
    slurm.add_argument("--time", metavar="LIMIT", help="each job's time limit: MINUTES or [D-]HH:MM[:SS] (required)")
    slurm.add_argument("--partition", help="the SLURM partition")
    slurm.add_argument("--gpus-per-job", type=int, default=1, metavar="N", help="GPUs of each job")
    slurm.add_argument("--cpus-per-job", type=int, metavar="N", help="also the torch threads of each job")
    slurm.add_argument("--mem-gb", type=float, metavar="GB")
    slurm.add_argument("--array-parallelism", type=int, metavar="N", help="at most N jobs of the array at once")
    slurm.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                       help="another parameter of submitit's SlurmExecutor, e.g. account=abc (repeatable)")
    slurm.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm",
                       help="submitit's cluster: local or debug run the same jobs on this machine, to try a sweep")
    resuming = command("resume", "continue a run from its last checkpoint",
                       "Continue a run from its last checkpoint. Overrides may change only how long it trains, "
                       "where and how it reports (trainer.epochs, trainer.device, eval.*, ...).")
    resuming.add_argument("run_dir")
    resuming.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. trainer.epochs=200")
    evaluation = command("eval", "evaluate a saved run's best checkpoint")
    evaluation.add_argument("run_dir")
    evaluation.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. eval.iw_samples=5000")
    sampling = command("sample", "write sample, reconstruction and interpolation grids of a run",
                       "Write PNG grids of a saved run's best weights: samples from the prior, images of the "
                       "evaluation split (a seeded random draw) beside their reconstructions, and latent "
                       "interpolations between pairs of them.")
    sampling.add_argument("run_dir")
    sampling.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. trainer.device=cpu")
    sampling.add_argument("--count", type=int, default=64, help="samples and reconstructions")
    sampling.add_argument("--pairs", type=int, default=8, help="interpolations, one per row")
    sampling.add_argument("--steps", type=int, default=10, help="images along each interpolation")
    sampling.add_argument("--seed", type=int, default=0, help="seeds the choice of images and the sampling noise")
    sampling.add_argument("--output", metavar="DIR", help="where the PNG files go (default RUN_DIR/samples)")
    reporting = command("report", "compare runs in one table; also writes report.md and report.csv")
    reporting.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    reporting.add_argument("--output", default=".", metavar="DIR", help="where report.md and report.csv go")
    reporting.add_argument("--sort", metavar="COLUMN", help="order rows by a report.csv column, best first, "
                           "e.g. test_nll_iw")
    reporting.add_argument("--published", metavar="FILE|NAME", help="set a publication's values beside the runs: "
                           "a YAML file, or a table shipped with flowzoo (e.g. sylvester2018)")
    fitting = command("toy", "fit flows to 2-D test densities (Rezende & Mohamed 2015) and draw them")
    fitting.add_argument("--targets", nargs="+", default=list(toy.TARGETS), metavar="NAME",
                         help=f"any of {', '.join(toy.TARGETS)}")
    fitting.add_argument("--flows", nargs="+", default=list(toy.DEFAULT_FLOWS), metavar="NAME",
                         help=f"registered flows, or {toy.BASELINE} for none")
    fitting.add_argument("--steps", type=int, default=toy.STEPS, help="Adam steps per fit")
    fitting.add_argument("--flow-steps", type=int, default=toy.FLOW_STEPS, help="K, steps of each flow")
    fitting.add_argument("--batch-size", type=int, default=toy.BATCH_SIZE, help="samples from q per Adam step")
    fitting.add_argument("--seed", type=int, default=0, help="seeds the flows and the samples")
    fitting.add_argument("--output", default="runs/toy", metavar="DIR", help="where toy.png and toy.md go")
    listing = command("list", "list registered components and where they come from",
                      "List registered components and where they come from; name one (flowzoo list flows iaf) for "
                      "its parameters, types, defaults and documentation.")
    listing.add_argument("kind", nargs="?", help=f"one of {', '.join(REGISTRIES)}")
    listing.add_argument("pattern", nargs="?", default="*", help="a name, or a shell-style pattern such as 'iaf*'")
    checking = command("check-flow", "check a flow's log-det, gradients and structure, and that it trains in a VAE")
    checking.add_argument("name", help="a registered flow, e.g. planar")
    checking.add_argument("parameters", nargs="*", metavar="key=value", help="flow parameters, e.g. hidden_features=16")
    checking.add_argument("--features", type=int, default=5, help="size of z")
    checking.add_argument("--context-features", type=int, default=3, help="size of the context h, 0 for none")
    checking.add_argument("--batch-size", type=int, default=4, help="number of random inputs")
    checking.add_argument("--seed", type=int, default=0, help="seeds the flow's parameters and the inputs")
    checking.add_argument("--tolerance", type=_tolerance, default=1e-6, help="largest accepted absolute error")
    checking.add_argument("--train-steps", type=int, default=TRAIN_STEPS, metavar="N",
                          help="Adam steps of the training check (0: skip it)")
    for parser_ in (listing, checking, resuming, evaluation, sampling):
        parser_.add_argument("--import", dest="modules", action="append", default=[], metavar="MODULE",
                             help="import a local module that registers components first (repeatable)")
    for parser_ in (resuming, evaluation, sampling):
        parser_.add_argument("--trust-plugins", action="store_true",
                             help="import the modules the run's config lists under plugins: from the working "
                                  "directory too (installed ones are always imported); only for runs you trust")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The command's arguments, its flags and ``key=value`` items in any order
    (``flowzoo train CFG --resume trainer.epochs=2``)."""
    found, _ = parser.parse_known_args(argv)  # which command (and --version, --help)
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    rest = argv[argv.index(found.command) + 1 :]
    return commands.choices[found.command].parse_intermixed_args(rest, argparse.Namespace(command=found.command))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (1 for a failed check or a diverged run, 2 for a user error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(build_parser(), argv)
    try:
        problems = import_modules(getattr(args, "modules", []), path="--import")
        if problems:
            raise ConfigError(problems)
        if args.command == "train":
            try:
                train(args.config, args.overrides, resume=args.resume, run_dir=args.run_dir)
            except ConfigError as error:
                raise sweep_hint(error, args.config, args.overrides) from None
        elif args.command == "config":
            _print_config(args.config, args.overrides, args.diff)
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
            report_runs(args.run_dirs, args.output, args.sort, args.published)
        elif args.command == "toy":
            toy.run_toy(args.targets, args.flows, steps=args.steps, flow_steps=args.flow_steps,
                        batch_size=args.batch_size, seed=args.seed, output=args.output)
        elif args.command == "list":
            console.print(_components(args.kind, args.pattern))
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
    except KeyboardInterrupt as interrupt:
        Console(stderr=True).print(f"interrupted{_after_interrupt(args.command, interrupt)}", highlight=False,
                                   soft_wrap=True)
        return INTERRUPTED
    return 0


def _after_interrupt(command: str, interrupt: KeyboardInterrupt) -> str:
    """What continues the interrupted work, if anything does."""
    if command == "sweep":
        return "; the same command continues the sweep"
    if not isinstance(interrupt, RunInterrupted):
        return ""
    if not interrupt.run.last.is_file():
        return f"; {interrupt.run.path} holds no checkpoint yet, so there is nothing to resume"
    return f"; `{shlex.join(['flowzoo', 'resume', str(interrupt.run.path)])}` continues from its last checkpoint"


def _print_config(config: str, overrides: list[str], diff: bool) -> None:
    """``flowzoo config``: the resolved config as YAML, or what it changes with ``--diff``."""
    resolved = dataclasses.asdict(load_config(config, overrides))
    if not diff:
        sys.stdout.write(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True, default_flow_style=None,
                                        width=100))
        return
    base = base_file(config)
    against = dataclasses.asdict(load_config(base if base else config))
    now, before = flat_config(resolved), flat_config(against)
    keys = [*before, *(key for key in now if key not in before)]
    changed = [key for key in keys if key not in now or key not in before or now[key] != before[key]]

    def shown(values: dict, key: str) -> str:
        return yaml_inline(values[key]) if key in values else "(absent)"

    label = f"its base {base}" if base else f"{config} without overrides"
    lines = [f"{shlex.join([config, *overrides])} differs from {label} in {len(changed)} "
             f"key{'s' if len(changed) != 1 else ''}{':' if changed else ''}"]
    lines += [f"  {key}: {shown(before, key)} → {shown(now, key)}" for key in changed]
    sys.stdout.write("\n".join(lines) + "\n")


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
            spec[key] = yaml_value(text)
        except yaml.YAMLError as error:
            problems.append(Problem(f"flow.{key}", f"cannot parse value {text!r}: {error}"))
        if not sep or not key:
            problems.append(Problem("flow", f"'{item}' is not of the form key=value"))
    if problems:
        raise ConfigError(problems)
    for option in ("features", "batch_size"):
        if getattr(args, option) < 1:
            raise ConfigError([Problem(f"--{option.replace('_', '-')}", "must be at least 1")])
    if args.train_steps < 0:
        raise ConfigError([Problem("--train-steps", "must be at least 0")])
    report = check_flow(spec, features=args.features, context_features=max(args.context_features, 0),
                        batch_size=args.batch_size, seed=args.seed, tolerance=args.tolerance,
                        train_steps=args.train_steps)
    console.print(report.table())
    if report.passed:
        return 0
    summary = ", ".join(f"{c.name}" + (f" (max error {c.error:.2e})" if c.error is not None else "")
                        for c in report.failures)
    _print_error(f"{args.name} failed: {summary}")
    return FAILED


def _components(kind: str | None, pattern: str) -> RenderableType:
    """``flowzoo list [KIND [PATTERN]]``: a table of the matching components, or one component
    in detail when PATTERN is its name."""
    registries = [get_registry(kind)] if kind else list(REGISTRIES.values())
    if kind and not any(char in pattern for char in "*?[") and pattern in registries[0]:
        return _component_details(registries[0], registries[0][pattern])
    table = Table(title="registered components", title_justify="left")
    table.add_column("kind")
    table.add_column("name", no_wrap=True)
    table.add_column("description", ratio=3)
    table.add_column("origin", ratio=1)
    table.add_column("defined in", overflow="fold", ratio=1)
    for registry in registries:
        for name in registry.list(pattern):
            entry = registry[name]
            table.add_row(registry.kind, name, escape(entry.summary), entry.origin, entry.module)
    if not table.row_count:
        raise FlowzooError(f"no {registries[0].kind} matches '{pattern}'. "
                           f"{did_you_mean(pattern, registries[0].list(), kind=kind)}")
    return table


def _component_details(registry: Registry, entry: Entry) -> RenderableType:
    """One component as docs/reference.md describes it: summary, parameters (type, default,
    meaning), what the model sets, tags, and the rest of its documentation."""
    doc = own_docstring(entry.factory)
    where = f"{entry.origin}, {entry.location}"
    parts: list[RenderableType] = [Text(f"{registry.kind} {entry.name}", style="bold"), Text(where, style="dim")]
    parts += [Text(_lines(description(doc)) or entry.summary)]
    if entry.parameters:
        table = Table(title="parameters (YAML keys)", title_justify="left")
        for column in ("parameter", "type", "default", "meaning"):
            table.add_column(column, no_wrap=column == "parameter", ratio=3 if column == "meaning" else None)
        for row in parameter_rows(entry.factory, entry.parameters):
            table.add_row(row.name, describe(row.annotation), "required" if row.default is None else row.default,
                          markdown(row.meaning, cell=False))
        parts.append(table)
    else:
        parts.append(Text("No parameters."))
    if entry.injected:
        source = "Set from the data set" if registry is REGISTRIES["models"] else "Set by the model"
        parts.append(Text(f"{source}: {', '.join(entry.injected)}."))
    if entry.tags:
        parts.append(Text("Tags: " + ", ".join(f"{key}: {yaml_inline(value)}"
                                               for key, value in sorted(entry.tags.items())) + "."))
    references = section(doc, "References")
    if references:
        parts.append(Text("References:\n" + _lines(references)))
    return Group(*parts)


def _lines(text: str) -> str:
    """Docstring text for the terminal: roles and literals as `code`, each line's indentation kept."""
    return "\n".join(line[: len(line) - len(line.lstrip())] + markdown(line, cell=False)
                     for line in text.splitlines())


if __name__ == "__main__":
    if not sys.flags.safe_path and sys.path and sys.path[0] == os.getcwd():
        del sys.path[0]  # `python -m` put the working directory first: its files must not shadow modules
    sys.exit(main())
