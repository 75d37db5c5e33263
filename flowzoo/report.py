"""Compare runs in one table: ``flowzoo report RUN_DIR...``.

Each run becomes one row of numbers read from its run directory (``config.yaml``,
``metrics.jsonl`` and ``best.pt``; nothing is re-evaluated). The table is printed,
and written to ``report.md`` (best per metric in bold) and ``report.csv`` (plain,
full-precision numbers). A run without a test evaluation yet, e.g. one still
training, gets a row with blanks where its test metrics would be. docs/report.md
defines every column.
"""

from __future__ import annotations

__all__ = [
    "Column",
    "COLUMNS",
    "describe_model",
    "trainable_parameters",
    "training_seconds",
    "summarize_run",
    "sort_rows",
    "runs_table",
    "markdown_report",
    "write_csv",
    "report_runs",
]

import csv
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml
from rich import box
from rich.table import Table
from rich.text import Text

from flowzoo.checkpoint import load_checkpoint
from flowzoo.console import METRIC_LABELS, console
from flowzoo.errors import CheckpointError, ConfigError, Problem, did_you_mean
from flowzoo.registry import models
from flowzoo.runs import RunDir

Row = dict[str, Any]


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of the report: a row key (the CSV header), its label, and how it is shown."""

    key: str
    label: str
    format: Callable[[Any], str] | None = None
    """Number to text; None for a descriptive text column."""
    best: Callable[[Iterable[Any]], Any] | None = None
    """``min`` or ``max``: picks the value marked best; None: no mark."""


_NATS = "{:.2f}".format
_BITS = "{:.3f}".format
_COUNT = "{:,}".format

COLUMNS = (
    Column("run", "run"),
    Column("model", "model"),
    Column("data", "data"),
    Column("train_neg_elbo", f"train {METRIC_LABELS['neg_elbo']}", _NATS, min),
    Column("valid_neg_elbo", f"valid {METRIC_LABELS['neg_elbo']}", _NATS, min),
    Column("best_epoch", "best epoch", _COUNT),
    Column("test_neg_elbo", f"test {METRIC_LABELS['neg_elbo']}", _NATS, min),
    Column("test_recon", "test −log p(x|z)", _NATS),
    Column("test_kl", "test KL", _NATS),
    Column("test_nll_iw", f"test {METRIC_LABELS['nll_iw']}", _NATS, min),
    Column("iw_samples", "K", _COUNT),
    Column("bpd_elbo", "bits/dim (ELBO)", _BITS, min),
    Column("bpd_iw", "bits/dim (IWAE)", _BITS, min),
    Column("parameters", "params", _COUNT),
    Column("epochs", "epochs", _COUNT),
    Column("steps", "steps", _COUNT),
    Column("train_seconds", "train time", _duration),
    Column("images_per_second", "images/s", "{:,.0f}".format, max),
)
"""The report's columns in order; docs/report.md defines each."""


def describe_model(model: Any) -> str:
    """A short description of a ``model`` config section.

    A model with a list of flows is described by them, after its name unless it is
    the default model (so configs written before models had names read the same).
    Any other model is described by its name and the names of its component specs.

    Example:
        >>> describe_model({"name": "vae", "flows": [{"name": "iaf", "repeat": 4, "between": "reverse"}]})
        '4 × iaf'
        >>> describe_model({"latent_size": 32, "flows": []})
        'no flow'
        >>> describe_model({"name": "resnet_vae", "width": 32, "block": {"name": "iaf", "hidden_layers": 2},
        ...                 "likelihood": {"name": "discretized_logistic"}})
        'resnet_vae: block iaf, likelihood discretized_logistic'
    """
    if not isinstance(model, Mapping):
        return ""
    name = str(model.get("name", models.default))
    flows = model.get("flows")
    if isinstance(flows, list):
        steps = [step for step in flows if isinstance(step, Mapping)]
        described = " + ".join(f"{s['repeat']} × {s.get('name')}" if s.get("repeat", 1) != 1 else str(s.get("name"))
                               for s in steps) or "no flow"
        return described if name == models.default else f"{name}: {described}"
    components = [f"{key} {spec['name']}" for key, spec in model.items()
                  if isinstance(spec, Mapping) and "name" in spec]
    return f"{name}: {', '.join(components)}" if components else name


def trainable_parameters(checkpoint: Mapping[str, Any]) -> int | None:
    """Elements of the parameters the optimizer trained, counted from its first moments.

    The model's state dict is no measure: it also holds floating-point buffers, such
    as the masks of MADE layers (15% more than the parameters of ``mnist_iaf.yaml``).
    A parameter that never gets a gradient, e.g. a context layer that no flow reads,
    has no moments and is not counted. None if the optimizer keeps no ``exp_avg``
    (Adam and Adamax do).

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(3, 2)
        >>> optimizer = torch.optim.Adamax(layer.parameters())
        >>> layer(torch.ones(1, 3)).sum().backward()
        >>> optimizer.step()
        >>> trainable_parameters({"model": layer.state_dict(), "optimizer": optimizer.state_dict()})
        8
    """
    states = checkpoint.get("optimizer", {}).get("state", {}).values()
    moments = [state["exp_avg"] for state in states if "exp_avg" in state]
    return sum(moment.numel() for moment in moments) if moments else None


def training_seconds(records: Iterable[Mapping[str, Any]], batch_size: int) -> float | None:
    """Seconds spent training and validating, from ``start``, ``train`` and ``valid`` records.

    A train record's window took its images (steps since the record before it times
    ``batch_size``) divided by its images/s; a valid record adds the clock time since
    the record before it: the epoch's last steps and the validation pass. A start
    record, written whenever training starts or resumes, only sets the clock, so the
    time a run was stopped before a resume never counts. None for a run without start
    records (older runs) whose first record is a valid one: then none says when
    training began.

    Example:
        >>> training_seconds([{"kind": "start", "time": 1.0, "step": 0},
        ...                   {"kind": "valid", "time": 3.0, "step": 5},
        ...                   {"kind": "train", "time": 5.0, "step": 10, "images_per_second": 200.0},
        ...                   {"kind": "valid", "time": 7.5, "step": 12},
        ...                   {"kind": "start", "time": 100.0, "step": 12},
        ...                   {"kind": "valid", "time": 101.0, "step": 14},
        ...                   {"kind": "test", "time": 130.0, "step": 14}], batch_size=100)
        8.0
    """
    timed = [record for record in records if record["kind"] in ("start", "train", "valid")]
    if not timed or timed[0]["kind"] == "valid":
        return None
    total = 0.0
    for previous, record in zip([{"step": 0}, *timed], timed):
        if record["kind"] == "train":
            total += (record["step"] - previous["step"]) * batch_size / record["images_per_second"]
        elif record["kind"] == "valid":
            total += record["time"] - previous["time"]
    return total


def summarize_run(run_dir: str | Path) -> Row:
    """One report row: every :data:`COLUMNS` key, None where the run has no such number yet.

    Raises:
        CheckpointError: ``run_dir`` is not a run directory, or its ``best.pt`` or
            ``metrics.jsonl`` is unreadable.
        ConfigError: its ``config.yaml`` is not a YAML mapping.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise CheckpointError(f"no run directory at {path}")
    run = RunDir.open(path)
    config = _read_config(run)
    try:
        records = list(run.records())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{run.metrics_file} has a line that is not JSON ({error.msg})") from error
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    # The end-of-training test record and any `flowzoo eval` of the test split, in order.
    tested = [r for r in records if r["kind"] in ("test", "eval") and r.get("split", "test") == "test"]
    best_valid = min(valid, key=lambda r: r["neg_elbo"], default={})  # the first minimum, as best.pt
    first_test = tested[0] if tested else {}
    tightest = max(reversed(tested), key=lambda r: r["iw_samples"], default={})  # the latest of the largest K
    batch_size = _section(config, "trainer").get("batch_size")
    return {
        "run": path.resolve().name,
        "model": describe_model(config.get("model")),
        "data": _section(config, "data").get("name"),
        "train_neg_elbo": train[-1].get("neg_elbo") if train else None,
        "valid_neg_elbo": best_valid.get("neg_elbo"),
        "best_epoch": best_valid.get("epoch"),
        "test_neg_elbo": first_test.get("neg_elbo"),
        "test_recon": first_test.get("recon"),
        "test_kl": first_test.get("kl"),
        "test_nll_iw": tightest.get("nll_iw"),
        "iw_samples": tightest.get("iw_samples"),
        "bpd_elbo": first_test.get("bpd_elbo"),
        "bpd_iw": tightest.get("bpd_iw"),
        "parameters": trainable_parameters(load_checkpoint(run.best)) if run.best.is_file() else None,
        "epochs": max((r["epoch"] for r in valid), default=0),
        "steps": max((r["step"] for r in records if "step" in r), default=0),
        "train_seconds": training_seconds(records, batch_size) if batch_size else None,
        "images_per_second": statistics.fmean(r["images_per_second"] for r in train) if train else None,
    }


def _read_config(run: RunDir) -> dict[str, Any]:
    try:
        config = yaml.safe_load(run.config_file.read_text())
    except yaml.YAMLError as error:
        raise ConfigError([Problem("", f"not valid YAML: {error}")], str(run.config_file)) from error
    if not isinstance(config, dict):
        raise ConfigError([Problem("", "expected a mapping of config sections")], str(run.config_file))
    return config


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = config.get(name)
    return section if isinstance(section, Mapping) else {}


def _column(key: str) -> Column:
    for column in COLUMNS:
        if column.key == key:
            return column
    raise ConfigError([Problem("--sort", f"no column '{key}'. {did_you_mean(key, [c.key for c in COLUMNS])}")])


def sort_rows(rows: Sequence[Row], key: str) -> list[Row]:
    """Rows by one column, best first (lowest, or highest for images/s); blanks last.

    Raises:
        ConfigError: ``key`` is not a column.
    """
    column = _column(key)
    present = sorted((row for row in rows if row[key] is not None), key=lambda row: row[key],
                     reverse=column.best is max)
    return present + [row for row in rows if row[key] is None]


def _cells(rows: Sequence[Row]) -> tuple[list[Column], list[list[tuple[str, bool]]]]:
    """The columns with a value in some row, and each row's cells as (text, marked best).

    Best is decided among the runs on the same data set: nats on MNIST and on CIFAR-10
    do not compete.
    """
    columns = [c for c in COLUMNS if any(row[c.key] is not None for row in rows)]
    best = {}
    for data in {row["data"] for row in rows}:
        for column in columns:
            values = [row[column.key] for row in rows if row["data"] == data and row[column.key] is not None]
            if column.best and len(values) > 1:  # marking a lone value would say nothing
                best[data, column.key] = column.best(values)

    def is_best(row: Row, column: Column) -> bool:
        return row[column.key] is not None and best.get((row["data"], column.key)) == row[column.key]

    cells = [[(_text(c, row[c.key]), is_best(row, c)) for c in columns] for row in rows]
    return columns, cells


def _text(column: Column, value: Any) -> str:
    if value is None:
        return ""
    return column.format(value) if column.format else str(value)


def _notes(rows: Sequence[Row]) -> list[str]:
    notes = ["Nats per example; best per metric among the runs on the same data in bold "
             "(lowest −ELBO, IWAE bound and bits/dim, highest images/s)."]
    for data in dict.fromkeys(row["data"] for row in rows):
        samples = sorted({row["iw_samples"] for row in rows if row["data"] == data and row["iw_samples"] is not None})
        if len(samples) > 1:
            notes.append(f"The IWAE bounds on {data} use different K ({', '.join(map(_COUNT, samples))}): "
                         "compare them at equal K only.")
    untested = [row["run"] for row in rows if row["test_neg_elbo"] is None]
    if untested:
        notes.append(f"No test evaluation yet (still training, stopped, or evaluated on valid only): "
                     f"{', '.join(untested)}.")
    return notes


def runs_table(rows: Sequence[Row]) -> Table:
    """The runs as a rich table with one column per run and one row per metric (a report
    has many more metrics than runs, so this reads in a terminal), best per metric in
    bold green; metrics blank in every run are left out."""
    columns, cells = _cells(rows)
    table = Table(title="runs compared", title_justify="left", caption="\n".join(_notes(rows)),
                  caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("")
    for row in cells:
        table.add_column(Text(row[0][0], style="bold"), justify="right", overflow="fold")
    for i, column in enumerate(columns[1:], 1):
        table.add_row(column.label, *(Text(row[i][0], style="bold green" if row[i][1] else "") for row in cells))
    return table


def markdown_report(rows: Sequence[Row], run_dirs: Sequence[str | Path]) -> str:
    """``report.md``: which runs and when, the table with the best per metric in bold, and notes."""
    columns, cells = _cells(rows)

    def line(texts: Iterable[str]) -> str:
        return "| " + " | ".join(text.replace("|", "\\|") for text in texts) + " |"

    stamp = time.strftime("%Y-%m-%d %H:%M %Z")
    paths = ", ".join(f"`{Path(d).resolve()}`" for d in run_dirs)
    lines = [
        "# Run report",
        "",
        f"{len(rows)} run{'s' if len(rows) != 1 else ''} compared by `flowzoo report` on {stamp}: {paths}.",
        "",
        line(c.label for c in columns),
        "|" + "|".join("---:" if c.format else "---" for c in columns) + "|",
        *(line(f"**{text}**" if marked else text for text, marked in row) for row in cells),
        "",
        *_notes(rows),
    ]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """``report.csv``: a header of :data:`COLUMNS` keys, then the values as logged; blank where missing."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(c.key for c in COLUMNS)
        writer.writerows([("" if row[c.key] is None else row[c.key]) for c in COLUMNS] for row in rows)


def report_runs(run_dirs: Sequence[str | Path], output: str | Path = ".", sort: str | None = None) -> list[Row]:
    """Print the table comparing ``run_dirs`` and write ``report.md`` and ``report.csv`` to ``output``.

    Args:
        run_dirs: run directories, one row each, in this order unless sorted.
        output: folder for the two files (created if missing).
        sort: a column key (a ``report.csv`` header, e.g. ``test_nll_iw``) to order the rows by, best first.

    Returns:
        The rows, as :func:`summarize_run` gives them.

    Raises:
        CheckpointError: a path is not a readable run directory.
        ConfigError: ``sort`` is not a column, or a run's config is unreadable.
    """
    if sort is not None:
        _column(sort)  # a typo fails before any run is read
    rows = [summarize_run(path) for path in run_dirs]
    if sort is not None:
        rows = sort_rows(rows, sort)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    console.print(runs_table(rows))
    (output / "report.md").write_text(markdown_report(rows, run_dirs))
    write_csv(rows, output / "report.csv")
    console.print(f"wrote {output / 'report.md'} and {output / 'report.csv'}")
    return rows
