"""Sweeps: one training run per point of a grid of configs × values × seeds (``flowzoo sweep``).

::

    flowzoo sweep configs/mnist_vae.yaml configs/mnist_iaf.yaml --seeds 3 --jobs 2 trainer.epochs=1

is 2 configs × 3 seeds = 6 runs, two at a time. The grid is the cartesian product of
its axes, in this order: the config files, the axes of a ``--grid`` file, every
``key=v1,v2,...`` override with more than one value (Hydra's multirun syntax), and the
seeds (``--seeds N`` or ``seed=...``) last. An override's values are split at commas,
except commas inside brackets, braces or quotes, and each value is YAML, as in
``flowzoo train``::

    trainer.lr=0.001,0.0003                       two values
    model.encoder.hidden_sizes=[64,64],[128]      two lists
    'data.root="/data/a,b"'                       one string (quoted)
    trainer.epochs=5                              one value: the same for every point

Every point is validated with :func:`~flowzoo.config.load_config` before anything runs
or is written, and all problems of all points are reported together, each with the
points it belongs to. The sweep directory holds ``sweep.yaml`` (the command, the grid,
the points and their status) and one run directory per point, named after the point's
values (``mnist_iaf-seed=0``), so that the same command run again finds them: finished
points are skipped, unfinished ones resume from ``last.pt``, and a point whose job
fails is tried once more (unless it failed on bad input). docs/sweeps.md has the details.
"""

from __future__ import annotations

__all__ = ["Value", "Axis", "Grid", "Point", "split_values", "read_grid", "expand", "run_sweep", "sweep_hint"]

import collections
import dataclasses
import glob
import hashlib
import itertools
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml
from omegaconf import OmegaConf
from rich.live import Live
from rich.table import Table
from rich.text import Text

from flowzoo.config import ExperimentConfig, load_config, yaml_value
from flowzoo.console import console
from flowzoo.errors import ConfigError, Problem
from flowzoo.executors import LocalOptions, SlurmOptions, Task
from flowzoo.runs import RunDir, flat_config, lock_directory

CONFIG_AXIS = "config"
SEED = "seed"
USER_ERROR = 2
"""Exit status of a job stopped by bad input (config, data, checkpoint): trying again cannot help."""
ATTEMPTS = 2
"""Jobs per point and ``flowzoo sweep`` command: one, and one more if it fails."""
POLL_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class Value:
    """One value of an axis."""

    text: str
    """As an override writes it (YAML), or a config file's path."""
    name: str
    """As run directory names show it."""


@dataclasses.dataclass(frozen=True)
class Axis:
    key: str
    """A config key, or ``config`` for the config files."""
    values: tuple[Value, ...]


@dataclasses.dataclass(frozen=True)
class Grid:
    """The sweep's definition: its axes (config files first, seeds last) and the overrides every point gets."""

    axes: tuple[Axis, ...]
    fixed: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The grid as ``sweep.yaml`` shows it: each axis's values, by name where they have one."""
        grid = {}
        for axis in self.axes:
            if axis.key == CONFIG_AXIS:
                grid[axis.key] = [value.text for value in axis.values]
            elif any(value.name != value.text for value in axis.values):
                grid[axis.key] = {value.name: _parsed(value.text) for value in axis.values}
            else:
                grid[axis.key] = [_parsed(value.text) for value in axis.values]
        return {"grid": grid, "overrides": list(self.fixed)}

    def digest(self) -> str:
        """Eight hex digits that change with the grid: the default sweep directory's suffix."""
        return hashlib.sha1(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:8]


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep."""

    index: int
    label: str
    """The name of its run directory in the sweep directory."""
    config: str
    overrides: tuple[str, ...]
    values: tuple[tuple[str, str], ...]
    """(axis key, value name) for each axis."""


_CLOSING = {"[": "]", "{": "}"}


def split_values(text: str) -> list[str]:
    """The values of a sweep override: split at commas outside brackets, braces and quotes.

    A quote opens a quoted YAML scalar where a value or an item of a list or mapping
    begins (a quote inside a word, as in ``it's``, is a letter).

    Raises:
        ValueError: unbalanced brackets or quotes, or an empty value.

    Example:
        >>> split_values("0.001,0.0003")
        ['0.001', '0.0003']
        >>> split_values("[64,64],[128]")
        ['[64,64]', '[128]']
        >>> split_values('"a,b",c')
        ['"a,b"', 'c']
        >>> split_values("[{name: iaf, repeat: 2}]")
        ['[{name: iaf, repeat: 2}]']
    """
    values, expected, quote, start, previous = [], [], None, 0, ","
    i = 0
    while i < len(text):
        char = text[i]
        if quote is not None:
            if char == "\\" and quote == '"':
                i += 1
            elif char == quote and quote == "'" and text[i + 1 : i + 2] == "'":
                i += 1  # '' is a quote inside a single-quoted scalar
            elif char == quote:
                quote = None
        elif char in "'\"" and previous in ",[{:":
            quote = char
        elif char in _CLOSING:
            expected.append(_CLOSING[char])
        elif char in "]}":
            if not expected or expected.pop() != char:
                raise ValueError(f"unmatched '{char}'")
        elif char == "," and not expected:
            values.append(text[start:i])
            start = i + 1
        if not char.isspace():
            previous = char
        i += 1
    if quote is not None:
        raise ValueError(f"unclosed {quote}")
    if expected:
        raise ValueError(f"unclosed '{ {']': '[', '}': '{'}[expected[-1]]}'")
    values = [value.strip() for value in [*values, text[start:]]]
    if len(values) > 1 and not all(values):
        raise ValueError("an empty value (two commas in a row, or one at an end)")
    return values


def _parsed(text: str) -> Any:
    """An override's value as the config gets it (the text itself if it is no YAML: validation says so)."""
    try:
        return yaml_value(text)
    except yaml.YAMLError:
        return text


def _yaml_text(value: Any) -> str:
    """A value as override text, on one line."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True).removesuffix(
        "\n...\n").strip()


def _read_grid_file(path: str) -> tuple[list[Value], list[Axis], list[str], list[Problem]]:
    """The config files, axes and fixed overrides of a ``--grid`` file, and its problems.

    Each key is a config key whose value is a list of values or a mapping of names to
    values (the names label the run directories); a scalar, or a list of one, is fixed.
    ``config`` lists config files or shell patterns, relative to the grid file.
    """
    file = Path(path)
    if not file.is_file():
        return [], [], [], [Problem("--grid", f"no grid file at {file}")]
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    except yaml.YAMLError as error:
        return [], [], [], [Problem("--grid", f"{file} is not valid YAML: {error}")]
    if not isinstance(loaded, dict):
        return [], [], [], [Problem("--grid", f"{file} must be a mapping of config keys to lists of values")]
    configs, axes, fixed, problems = [], [], [], []
    for key, given in loaded.items():
        if key == CONFIG_AXIS:
            patterns = given if isinstance(given, list) else [given]
            for pattern in patterns:
                if not isinstance(pattern, str):
                    problems.append(Problem(f"{file}: config", f"expected a path or pattern, got {pattern!r}"))
                    continue
                joined = os.path.normpath(os.path.join(file.parent, pattern))
                matches = sorted(glob.glob(joined)) if glob.has_magic(pattern) else [joined]
                if not matches:
                    problems.append(Problem(f"{file}: config", f"no file matches {pattern!r}"))
                configs += [Value(match, Path(match).stem) for match in matches]
            continue
        if isinstance(given, dict):
            values = [Value(_yaml_text(value), str(name)) for name, value in given.items()]
        elif isinstance(given, list):
            values = [Value(_yaml_text(value), _yaml_text(value)) for value in given]
        else:
            values = [Value(_yaml_text(given), _yaml_text(given))]
        if not values:
            problems.append(Problem(f"{file}: {key}", "no values"))
        elif len(values) == 1:
            fixed.append(f"{key}={values[0].text}")
        else:
            axes.append(Axis(key, tuple(values)))
    return configs, axes, fixed, problems


def read_grid(items: Sequence[str], seeds: int | None = None, grid_file: str | None = None) -> Grid:
    """The grid of a ``flowzoo sweep`` command line.

    Args:
        items: config files, then ``key=value`` overrides (an item with ``=`` is an override).
        seeds: ``--seeds N``: an axis ``seed`` of 0, ..., N−1.
        grid_file: ``--grid FILE``.

    Raises:
        ConfigError: every problem with the grid itself (each point is checked later).

    Example:
        >>> grid = read_grid(["a.yaml", "b.yaml", "trainer.lr=0.001,0.0003", "trainer.epochs=1"], seeds=2)
        >>> [(axis.key, [v.text for v in axis.values]) for axis in grid.axes]
        [('config', ['a.yaml', 'b.yaml']), ('trainer.lr', ['0.001', '0.0003']), ('seed', ['0', '1'])]
        >>> grid.fixed
        ('trainer.epochs=1',)
    """
    configs, axes, fixed, problems = _read_grid_file(grid_file) if grid_file else ([], [], [], [])
    configs = [Value(item, Path(item).stem) for item in items if "=" not in item] + configs
    for item in (item for item in items if "=" in item):
        key, _, text = item.partition("=")
        if not key:
            problems.append(Problem("", f"override '{item}' is not of the form key=value"))
            continue
        try:
            values = split_values(text)
        except ValueError as error:
            problems.append(Problem(key, f"cannot split {text!r} into values: {error}"))
            continue
        if len(values) == 1:
            fixed.append(item)
        else:
            axes.append(Axis(key, tuple(Value(value, value) for value in values)))
    if seeds is not None:
        if seeds < 1:
            problems.append(Problem("--seeds", f"expected at least 1, got {seeds}"))
        axes.append(Axis(SEED, tuple(Value(str(seed), str(seed)) for seed in range(max(seeds, 0)))))
    keys = [axis.key for axis in axes] + [item.partition("=")[0] for item in fixed]
    problems += [Problem(key, "given more than once (an axis is one key=v1,v2,... or one entry of the grid file)")
                 for key, count in collections.Counter(keys).items() if count > 1]
    if not configs:
        problems.append(Problem("", "no config file: name one or more, or list them under `config:` in the grid file"))
    if problems:
        raise ConfigError(problems, "sweep")
    axes.sort(key=lambda axis: axis.key == SEED)  # seeds last, so that a setting's seeds are neighbours
    return Grid((Axis(CONFIG_AXIS, tuple(configs)), *axes), tuple(fixed))


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each key by its shortest dotted tail that no other key ends with (``trainer.lr`` → ``lr``)."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            tail = ".".join(parts[-size:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
                break
        short[key] = tail
    return short


def _path_part(name: str) -> str:
    """A value name as a run directory name shows it: safe characters only, long ones abbreviated."""
    safe = re.sub(r"[^A-Za-z0-9._+=-]+", "_", name).strip("_") or "_"
    return safe if len(safe) <= 32 else f"{safe[:24]}~{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def expand(grid: Grid) -> list[Point]:
    """The points of the grid, in order (the last axis varies fastest), each with a unique label.

    Example:
        >>> grid = read_grid(["configs/mnist_iaf.yaml", "model.encoder.hidden_sizes=[64,64],[128]", "seed=0,1"])
        >>> for point in expand(grid):
        ...     print(point.label)
        mnist_iaf-hidden_sizes=64_64,seed=0
        mnist_iaf-hidden_sizes=64_64,seed=1
        mnist_iaf-hidden_sizes=128,seed=0
        mnist_iaf-hidden_sizes=128,seed=1
        >>> expand(grid)[1].overrides
        ('model.encoder.hidden_sizes=[64,64]', 'seed=1')
    """
    configs, *axes = grid.axes
    short = _short_keys([axis.key for axis in axes])
    points = []
    for index, (config, *values) in enumerate(itertools.product(configs.values, *(axis.values for axis in axes))):
        parts = ",".join(f"{short[axis.key]}={_path_part(value.name)}" for axis, value in zip(axes, values))
        label = "-".join(filter(None, [_path_part(config.name), parts]))
        overrides = (*grid.fixed, *(f"{axis.key}={value.text}" for axis, value in zip(axes, values)))
        named = ((CONFIG_AXIS, config.name), *((axis.key, value.name) for axis, value in zip(axes, values)))
        points.append(Point(index, label, config.text, overrides, named))
    counts = collections.Counter(point.label for point in points)
    return [dataclasses.replace(point, label=f"{point.label}~{_digest(point)}") if counts[point.label] > 1 else point
            for point in points]


def _digest(point: Point) -> str:
    return hashlib.sha1(json.dumps([point.config, point.overrides]).encode()).hexdigest()[:6]


def _where(labels: list[str], total: int) -> str:
    if len(labels) == total and total > 1:
        return "every point"
    shown = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")
    return f"point{'s' if len(labels) > 1 else ''} {shown}"


def _validate(points: Sequence[Point]) -> list[ExperimentConfig]:
    """Each point's resolved config; raises one :class:`ConfigError` with every problem of every point."""
    resolved, failing = [], {}
    for point in points:
        try:
            resolved.append(load_config(point.config, point.overrides))
        except ConfigError as error:
            for problem in error.problems:
                failing.setdefault(problem, []).append(point.label)
    if failing:
        raise ConfigError([Problem(problem.path, f"{problem.message} [{_where(labels, len(points))}]")
                           for problem, labels in failing.items()], "sweep")
    return resolved


FINISHED, UNFINISHED, NEW = "finished", "unfinished", "new"


def _state(run: RunDir, config: ExperimentConfig) -> tuple[str, Problem | None]:
    """Where a point's run directory stands, or a problem if it holds a run of another config."""
    if not run.config_file.is_file():
        return NEW, None
    saved, wanted = flat_config(yaml.safe_load(run.config_file.read_text())), flat_config(config)
    changed = [key for key in sorted(saved.keys() | wanted.keys())
               if key != "output_dir" and saved.get(key) != wanted.get(key)]
    if changed:
        shown = "; ".join(f"{key} is {saved.get(key)!r} there, {wanted.get(key)!r} here" for key in changed[:3])
        more = f" (and {len(changed) - 3} more keys)" if len(changed) > 3 else ""
        return NEW, Problem("", f"{run.path} holds a run of another config: {shown}{more}. Use another --output, "
                                "or move that run away")
    attempts = run.provenance().get("attempts", [])
    if attempts and attempts[-1]["finished"]:
        return FINISHED, None
    return (UNFINISHED if run.last.is_file() else NEW), None


@dataclasses.dataclass
class _Status:
    """What became of a point in this command, as ``sweep.yaml`` records it."""

    state: str
    status: str
    attempts: int = 0
    exit_status: int | None = None
    error: str | None = None
    job: str | None = None
    started: float | None = dataclasses.field(default=None, repr=False)
    ended: float | None = dataclasses.field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        fields = {"status": self.status, "attempts": self.attempts, "exit_status": self.exit_status,
                  "error": self.error, "job": self.job}
        return {key: value for key, value in fields.items() if value is not None}


def _failure(status: int, log: Path) -> str:
    """What a failed job said in its try (the lines of the log after the last ``==>`` header):
    its ``error:`` line, else its last line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] \
        if log.is_file() else []
    headers = [i for i, line in enumerate(lines) if line.startswith("==> ")]
    lines = lines[headers[-1] + 1:] if headers else lines
    errors = [line for line in lines if line.startswith("error:")]
    said = errors[-1] if errors else (lines[-1] if lines else "no output")
    how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
    return f"{how}: {said}"


def _last_record(run: RunDir) -> dict[str, Any] | None:
    if not run.metrics_file.is_file():
        return None
    with open(run.metrics_file, "rb") as file:
        file.seek(max(0, file.seek(0, os.SEEK_END) - 4096))
        lines = file.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue  # the first, partly read line, or one being written
    return None


class _Sweep:
    """A sweep being run: its points, their run directories and status, ``sweep.yaml``."""

    def __init__(self, directory: Path, grid: Grid, points: Sequence[Point], configs: Sequence[ExperimentConfig],
                 header: dict[str, Any]):
        self.directory, self.grid, self.points, self.configs, self.header = directory, grid, points, configs, header
        self.runs = [RunDir(directory / point.label) for point in points]
        self.status: list[_Status] = []
        problems = []
        for run, config in zip(self.runs, configs):
            state, problem = _state(run, config)
            self.status.append(_Status(state, FINISHED if state == FINISHED else "pending"))
            problems += [problem] if problem else []
        if problems:
            raise ConfigError(problems, "sweep")

    def task(self, point: Point) -> Task:
        return Task(point.config, point.overrides, str(self.runs[point.index].path.resolve()), self.header["cwd"])

    def write(self) -> None:
        points = [{"run_dir": point.label, "config": point.config, "overrides": list(point.overrides),
                   **status.record()} for point, status in zip(self.points, self.status)]
        text = yaml.safe_dump({**self.header, **self.grid.describe(), "points": points}, sort_keys=False,
                              allow_unicode=True, width=120)
        partial = self.directory / "sweep.yaml.partial"
        partial.write_text(text)
        os.replace(partial, self.directory / "sweep.yaml")

    def table(self, title: str) -> Table:
        table = Table(title=title, title_justify="left")
        for column in ("#", "run directory", "status", "tries", "time", "progress"):
            table.add_column(column, justify="right" if column in ("#", "tries", "time") else "left",
                             no_wrap=column != "progress", overflow="fold")
        styles = {FINISHED: "green", "failed": "red", "running": "yellow", "interrupted": "red"}
        for point, status, run, config in zip(self.points, self.status, self.runs, self.configs):
            elapsed = (status.ended or time.monotonic()) - status.started if status.started else None
            text = {"pending": ("retrying" if status.attempts else "to resume" if status.state == UNFINISHED
                                else "new"),
                    FINISHED: "finished" if status.attempts else "finished before"}.get(status.status, status.status)
            table.add_row(str(point.index), point.label, Text(text, style=styles.get(status.status, "")),
                          str(status.attempts), f"{elapsed:.0f} s" if elapsed is not None else "",
                          status.error or _progress(run, config))
        return table


def _progress(run: RunDir, config: ExperimentConfig) -> str:
    record = _last_record(run)
    if record is None or "step" not in record:
        return ""
    epoch = min(record.get("epoch", 0) + (record["kind"] == "train"), config.trainer.epochs)
    loss = f", {record['kind']} −ELBO {record['neg_elbo']:.2f}" if "neg_elbo" in record else ""
    return f"epoch {epoch}/{config.trainer.epochs}, step {record['step']:,}{loss}"


def _default_directory(grid: Grid, config: ExperimentConfig) -> Path:
    names = [value.name for value in grid.axes[0].values]
    shown = "+".join(names) if len(names) <= 2 else f"{names[0]}+{len(names) - 1}"
    return Path(config.output_dir) / f"sweep-{_path_part(shown)}-{grid.digest()}"


def run_sweep(items: Sequence[str], *, seeds: int | None = None, grid_file: str | None = None,
              output: str | Path | None = None, executor: LocalOptions | SlurmOptions = LocalOptions(),
              dry_run: bool = False, command: str = "") -> int:
    """``flowzoo sweep``: validate every point, then train the unfinished ones.

    Args:
        items: config files, then ``key=value`` overrides (see the module docstring).
        seeds: ``--seeds N``.
        grid_file: ``--grid FILE``.
        output: the sweep directory; by default ``<output_dir>/sweep-<configs>-<digest of the grid>``
            (``output_dir`` of the first point), the same for the same command.
        executor: where the runs execute (:mod:`flowzoo.executors`).
        dry_run: print the points and stop; nothing is written.
        command: the command line, for ``sweep.yaml``.

    Returns:
        0 when every point has finished, 1 when some failed.

    Raises:
        ConfigError: every problem of the grid, of the executor's options or of any point, before
            anything is written.
    """
    problems = executor.problems()
    try:
        grid = read_grid(items, seeds, grid_file)
    except ConfigError as error:
        raise ConfigError([*problems, *error.problems], "sweep") from None
    if problems:
        raise ConfigError(problems, "sweep")
    points = expand(grid)
    configs = _validate(points)
    directory = Path(output) if output is not None else _default_directory(grid, configs[0])
    options = json.loads(json.dumps(dataclasses.asdict(executor)))  # plain lists for YAML
    header = {"command": command, "cwd": os.getcwd(),
              "executor": {"name": "local" if isinstance(executor, LocalOptions) else "slurm", **options}}
    sweep = _Sweep(directory, grid, points, configs, header)
    todo = [point for point, status in zip(points, sweep.status) if status.status != FINISHED]
    summary = (f"{len(points)} point{'s' if len(points) != 1 else ''} in {directory}: "
               f"{len(points) - len(todo)} finished before, {len(todo)} to run")
    if dry_run:
        console.print(sweep.table(f"sweep (dry run: nothing written) — {summary}"))
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    lock = lock_directory(directory, "this sweep")
    try:
        runner = executor.executor(directory)
        console.print(f"sweep: {summary}, on {runner.describe()}")
        _run_points(sweep, todo, runner)
    finally:
        lock.close()
    failed = [point.label for point, status in zip(points, sweep.status) if status.status != FINISHED]
    console.print(f"{len(points) - len(failed)} of {len(points)} points finished"
                  + (f"; failed: {', '.join(failed)} (their console.log says why; run the same command again "
                     "to try them once more)" if failed else "")
                  + f"\ncompare them: flowzoo report {directory}")
    return 1 if failed else 0


def _run_points(sweep: _Sweep, todo: Sequence[Point], runner) -> None:
    """Run the points, ``runner.capacity`` at a time, with a live table; a failing point is tried once more."""
    queue = collections.deque(todo)
    running: dict[int, Any] = {}
    sweep.write()
    with Live(sweep.table("sweep"), console=console, refresh_per_second=1) as live:
        try:
            while queue or running:
                batch = [queue.popleft() for _ in range(min(len(queue), runner.capacity - len(running)))]
                for point in batch:
                    sweep.runs[point.index].record_sweep_point({
                        "dir": str(sweep.directory.resolve()), "point": point.index, "label": point.label,
                        "config": point.config, "overrides": list(point.overrides),
                        "command": sweep.header["command"]})
                for point, job in zip(batch, runner.launch([sweep.task(point) for point in batch])):
                    status = sweep.status[point.index]
                    status.status, status.attempts, status.job = "running", status.attempts + 1, job.ident
                    status.started, status.ended = time.monotonic(), None
                    running[point.index] = job
                ended = [(index, code) for index, code in ((i, job.poll()) for i, job in running.items())
                         if code is not None]
                for index, code in ended:
                    del running[index]
                    _ended(sweep, index, code, queue)
                if batch or ended:
                    sweep.write()
                live.update(sweep.table("sweep"))
                if queue or running:
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            _interrupt(sweep, running)
            live.update(sweep.table("sweep (interrupted: the same command resumes it)"))
            raise
    if not console.is_terminal:  # in a terminal, Live ends its table with a new line
        console.line()


def _ended(sweep: _Sweep, index: int, code: int, queue: collections.deque) -> None:
    status = sweep.status[index]
    status.exit_status, status.job, status.ended = code, None, time.monotonic()
    if code == 0:
        status.status, status.error = FINISHED, None
        return
    status.error = _failure(code, sweep.runs[index].console_log)
    if code != USER_ERROR and status.attempts < ATTEMPTS:
        status.status = "pending"
        queue.append(sweep.points[index])
    else:
        status.status = "failed"


def _interrupt(sweep: _Sweep, running: dict[int, Any], wait_seconds: float = 60) -> None:
    """Stop the running jobs (each keeps its last checkpoint) and record them as interrupted."""
    for job in running.values():
        job.cancel()
    deadline = time.monotonic() + wait_seconds
    while any(job.poll() is None for job in running.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for index in running:
        sweep.status[index].status = "interrupted"
    sweep.write()


def sweep_hint(error: ConfigError, config: str, overrides: Iterable[str]) -> ConfigError:
    """``error`` of ``flowzoo train``, with a pointer to ``flowzoo sweep`` when an override
    with several values (``seed=0,1,2`` or ``seed=[0,1,2]``) was refused."""
    refused = {problem.path for problem in error.problems}
    for item in overrides:
        key, _, text = item.partition("=")
        try:
            parsed = yaml_value(text)
            values = [_yaml_text(value) for value in parsed] if isinstance(parsed, list) else split_values(text)
        except (yaml.YAMLError, ValueError):
            continue
        if key in refused and len(values) > 1:
            hint = (f"flowzoo train runs one config; for one run per value of {key}, use "
                    f"flowzoo sweep {config} {key}={','.join(values)}")
            return ConfigError([*error.problems, Problem("", hint)], error.source)
    return error
