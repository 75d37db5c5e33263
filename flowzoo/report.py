"""Compare runs in one table: ``flowzoo report RUN_DIR... | SWEEP_DIR...``.

Each run becomes one row of numbers read from its run directory (``config.yaml``,
``metrics.jsonl`` and ``best.pt``; nothing is re-evaluated). The table is printed,
and written to ``report.md`` (best per metric in bold) and ``report.csv`` (plain,
full-precision numbers). A run without a test evaluation yet, e.g. one still
training, gets a row with blanks where its test metrics would be. A sweep directory
stands for the runs of its points.

Runs whose configs differ only in ``seed`` (and in where and how they report, see
:data:`NOT_COMPARED`) form a group. When some group has several runs, the report
leads with one row per group: the mean ± sample standard deviation of each
measurement over its runs, the number of runs and their seeds, and the best group
per metric marked (also written to ``report-groups.csv``). With ``--published``, a
table of a publication's values (:mod:`flowzoo.published`) follows, each row beside the
group of runs of the config it names. docs/report.md defines every column.
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
    "Spread",
    "NOT_COMPARED",
    "group_runs",
    "aggregate",
    "expand_sweeps",
    "PUBLISHED_COLUMNS",
    "beside_published",
    "report_runs",
]

import csv
import dataclasses
import json
import math
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
from flowzoo.published import PublishedTable, load_published
from flowzoo.registry import models
from flowzoo.runs import RunDir, check_folder, flat_config, make_folder

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
    averaged: bool = False
    """A measurement that varies with the seed: a group shows its mean ± std; otherwise its value
    (or range of values) over the group's runs."""


_NATS = "{:.2f}".format
_BITS = "{:.3f}".format
_COUNT = "{:,}".format

COLUMNS = (
    Column("run", "run"),
    Column("model", "model"),
    Column("data", "data"),
    Column("seed", "seed", str),
    Column("train_neg_elbo", f"train {METRIC_LABELS['neg_elbo']}", _NATS, min, averaged=True),
    Column("valid_neg_elbo", f"valid {METRIC_LABELS['neg_elbo']}", _NATS, min, averaged=True),
    Column("best_epoch", "best epoch", _COUNT),
    Column("test_neg_elbo", f"test {METRIC_LABELS['neg_elbo']}", _NATS, min, averaged=True),
    Column("test_recon", "test −log p(x|z)", _NATS, averaged=True),
    Column("test_kl", "test KL", _NATS, averaged=True),
    Column("test_nll_iw", f"test {METRIC_LABELS['nll_iw']}", _NATS, min, averaged=True),
    Column("iw_samples", "K", _COUNT),
    Column("bpd_elbo", "bits/dim (ELBO)", _BITS, min, averaged=True),
    Column("bpd_iw", "bits/dim (IWAE)", _BITS, min, averaged=True),
    Column("parameters", "params", _COUNT),
    Column("epochs", "epochs", _COUNT),
    Column("steps", "steps", _COUNT),
    Column("train_seconds", "train time", _duration, averaged=True),
    Column("images_per_second", "images/s", "{:,.0f}".format, max, averaged=True),
)
"""The report's columns in order; docs/report.md defines each."""

GROUP_COLUMNS = (
    Column("run", "group"),
    Column("model", "model"),
    Column("data", "data"),
    Column("seed", "seeds"),
    Column("n", "n", str),
    *COLUMNS[4:],
)
"""The columns of the table of groups: ``run`` holds the group's label, ``seed`` its seeds."""


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
    records = list(run.records())
    try:
        return _row(path, run, config, records)
    except (KeyError, TypeError, ValueError) as error:  # a record edited, or not written by flowzoo
        raise CheckpointError(f"{run.metrics_file} holds records that are not as flowzoo writes them "
                              f"({type(error).__name__}: {error})") from None


def _row(path: Path, run: RunDir, config: Mapping[str, Any], records: list[dict[str, Any]]) -> Row:
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    # The end-of-training test record and any `flowzoo eval` of the test split, in order.
    tested = [r for r in records if r["kind"] in ("test", "eval") and r.get("split", "test") == "test"]
    # The first minimum, as best.pt; a non-finite value (null; NaN in older files) never is.
    finite = [r for r in valid if isinstance(r.get("neg_elbo"), (int, float)) and math.isfinite(r["neg_elbo"])]
    best_valid = min(finite, key=lambda r: r["neg_elbo"], default={})
    first_test = tested[0] if tested else {}
    tightest = max(reversed(tested), key=lambda r: r["iw_samples"], default={})  # the latest of the largest K
    batch_size = _section(config, "trainer").get("batch_size")
    return {
        "run": path.resolve().name,
        "model": describe_model(config.get("model")),
        "data": _section(config, "data").get("name"),
        "seed": config.get("seed"),
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
        config = yaml.safe_load(run.config_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError([Problem("", f"not valid YAML: {error}")], str(run.config_file)) from error
    except UnicodeDecodeError as error:
        raise ConfigError([Problem("", f"not UTF-8 text: {error}")], str(run.config_file)) from None
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


@dataclasses.dataclass(frozen=True)
class Spread:
    """A column's values over the runs of a group that have one."""

    mean: float
    std: float | None
    """The sample standard deviation (n − 1 in the denominator, as papers report it); None for one value."""
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        """Example:
        >>> Spread.of([90.0, 91.0, 95.0])
        Spread(mean=92.0, std=2.6457513110645907, n=3, low=90.0, high=95.0)
        """
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values),
                   min(values), max(values))


def _score(value: Any) -> Any:
    """What best and sorting compare: a group's mean."""
    return value.mean if isinstance(value, Spread) else value


def sort_rows(rows: Sequence[Row], key: str) -> list[Row]:
    """Rows (of runs or of groups) by one column, best first (lowest, or highest for images/s; a
    group by its mean); blanks last.

    Raises:
        ConfigError: ``key`` is not a column.
    """
    column = _column(key)
    present = sorted((row for row in rows if row[key] is not None), key=lambda row: _score(row[key]),
                     reverse=column.best is max)
    return present + [row for row in rows if row[key] is None]


NOT_COMPARED = ("seed", "output_dir", "trainer.log_every", "trainer.checkpoint_every", "trainer.picture_count",
                "trainer.tensorboard", "logging.")
"""Config keys (``.``: and the keys under it) in which the runs of a group may differ: the
seed, and where and how a run reports. Runs that differ in any other key are different
experiments, and so are runs whose IWAE bounds use different K."""


def _setting(config: Mapping[str, Any], row: Row) -> dict[str, Any]:
    """What a run's group is made of: its config without :data:`NOT_COMPARED`, and the K of its bound."""
    setting = {key: value for key, value in flat_config(config).items()
               if not any(key.startswith(k) if k.endswith(".") else key == k for k in NOT_COMPARED)}
    return {**setting, "K": row["iw_samples"]}


def _short(value: Any, width: int = 24) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def group_runs(configs: Sequence[Mapping[str, Any]], rows: Sequence[Row]) -> list[tuple[str, list[int]]]:
    """The groups of runs that differ only in :data:`NOT_COMPARED`, in order of first appearance,
    each as (label, indices of its runs). A label is the config's ``name``, then, when other
    groups have that name too, the keys in which it differs from them.

    Example:
        >>> configs = [{"name": "a", "seed": seed, "trainer": {"lr": lr}} for lr in (0.1, 0.2) for seed in (0, 1)]
        >>> group_runs(configs + [{"name": "b", "seed": 0}], [{"iw_samples": 10}] * 5)
        [('a trainer.lr=0.1', [0, 1]), ('a trainer.lr=0.2', [2, 3]), ('b', [4])]
    """
    groups: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for index, (config, row) in enumerate(zip(configs, rows)):
        setting = _setting(config, row)
        groups.setdefault(json.dumps(setting, sort_keys=True, default=str), (setting, []))[1].append(index)
    labelled = []
    for setting, members in groups.values():
        peers = [other for other, _ in groups.values()
                 if other is not setting and other.get("name") == setting.get("name")]
        differing = [key for key in dict.fromkeys([*setting, *(k for other in peers for k in other)])
                     if key != "name" and any(other.get(key) != setting.get(key) for other in peers)]
        parts = [f"{key}={_short(setting.get(key))}" for key in differing[:3]] + (["…"] if len(differing) > 3 else [])
        labelled.append((" ".join([str(setting.get("name")), *parts]), members))
    return labelled


def aggregate(label: str, rows: Sequence[Row]) -> Row:
    """One row of :data:`GROUP_COLUMNS` for the runs of a group: a :class:`Spread` for each numeric
    column with a value in some run, the common text of the others, the seeds and their number."""
    group = {"run": label, "n": len(rows), "seed": ", ".join(str(row["seed"]) for row in rows)}
    for column in (c for c in COLUMNS[1:] if c.key != "seed"):
        values = [row[column.key] for row in rows if row[column.key] is not None]
        if column.format is None:
            group[column.key] = values[0] if values else None  # equal in a group: they come from the config
        else:
            group[column.key] = Spread.of(values) if values else None
    return group


def _cells(rows: Sequence[Row], columns: Sequence[Column] = COLUMNS
           ) -> tuple[list[Column], list[list[tuple[str, bool]]]]:
    """The columns with a value in some row, and each row's cells as (text, marked best).

    Best is decided among the rows on the same data set (nats on MNIST and on CIFAR-10
    do not compete), for a group by its mean.
    """
    columns = [c for c in columns if any(row[c.key] is not None for row in rows)]
    best = {}
    for data in {row["data"] for row in rows}:
        for column in columns:
            values = [_score(row[column.key]) for row in rows if row["data"] == data and row[column.key] is not None]
            if column.best and len(values) > 1:  # marking a lone value would say nothing
                best[data, column.key] = column.best(values)

    def is_best(row: Row, column: Column) -> bool:
        return row[column.key] is not None and best.get((row["data"], column.key)) == _score(row[column.key])

    cells = [[(_text(c, row[c.key], row.get("n")), is_best(row, c)) for c in columns] for row in rows]
    return columns, cells


def _text(column: Column, value: Any, runs: int | None = None) -> str:
    """A cell: a run's value, or a group's mean ± std (with its n when some runs have no value) or range."""
    if value is None:
        return ""
    if not isinstance(value, Spread):
        return column.format(value) if column.format else str(value)
    if not column.averaged:
        return column.format(value.low) + ("" if value.low == value.high else f"–{column.format(value.high)}")
    text = column.format(value.mean) + (f" ± {column.format(value.std)}" if value.std is not None else "")
    return text + (f" (n={value.n})" if runs is not None and value.n != runs else "")


def _notes(rows: Sequence[Row], missing: Sequence[str] = ()) -> list[str]:
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
    return notes + list(missing)


_GROUP_NOTE = ("Each group is the runs whose configs differ only in the seed (and in where and how they report); "
               "mean ± sample standard deviation (n − 1 in the denominator) over its runs, n runs, best group per "
               "metric by its mean. Counts that differ between the runs of a group show their range.")


def runs_table(rows: Sequence[Row], columns: Sequence[Column] = COLUMNS, title: str = "runs compared",
               notes: Sequence[str] | None = None) -> Table:
    """The runs (or groups) as a rich table with one column per run and one row per metric (a
    report has many more metrics than runs, so this reads in a terminal), best per metric in
    bold green; metrics blank in every run are left out."""
    columns, cells = _cells(rows, columns)
    table = Table(title=title, title_justify="left", caption="\n".join(_notes(rows) if notes is None else notes),
                  caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("")
    for row in cells:
        table.add_column(Text(row[0][0], style="bold"), justify="right", overflow="fold")
    for i, column in enumerate(columns[1:], 1):
        table.add_row(column.label, *(Text(row[i][0], style="bold green" if row[i][1] else "") for row in cells))
    return table


def _markdown_table(rows: Sequence[Row], columns: Sequence[Column]) -> list[str]:
    columns, cells = _cells(rows, columns)

    def line(texts: Iterable[str]) -> str:
        return "| " + " | ".join(text.replace("|", "\\|") for text in texts) + " |"

    return [line(c.label for c in columns), "|" + "|".join("---:" if c.format else "---" for c in columns) + "|",
            *(line(f"**{text}**" if marked else text for text, marked in row) for row in cells)]


def markdown_report(rows: Sequence[Row], run_dirs: Sequence[str | Path], groups: Sequence[Row] = (),
                    missing: Sequence[str] = (), published: tuple[str, Sequence[Row], Sequence[str]] | None = None
                    ) -> str:
    """``report.md``: which runs and when, the table of groups (when given) and of runs with the
    best per metric in bold, and notes; then, when given, the table beside a publication's values
    (its title, rows and notes)."""
    stamp = time.strftime("%Y-%m-%d %H:%M %Z")
    paths = ", ".join(f"`{Path(d).resolve()}`" for d in run_dirs)
    count = f"{len(rows)} run{'s' if len(rows) != 1 else ''}"
    count += f" in {len(groups)} group{'s' if len(groups) != 1 else ''}" if groups else ""
    lines = ["# Run report", "", f"{count} compared by `flowzoo report` on {stamp}: {paths}.", ""]
    if groups:
        lines += ["## Groups: mean ± standard deviation over seeds", "", *_markdown_table(groups, GROUP_COLUMNS), "",
                  _GROUP_NOTE, "", "## Runs", ""]
    lines += [*_markdown_table(rows, COLUMNS), "", *_notes(rows, missing)]
    if published:
        title, beside, notes = published
        lines += ["", f"## Beside the published values: {title}", "", *_markdown_table(beside, PUBLISHED_COLUMNS), "",
                  *notes]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """``report.csv``: a header of :data:`COLUMNS` keys, then the values as logged; blank where missing."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(c.key for c in COLUMNS)
        writer.writerows([("" if row[c.key] is None else row[c.key]) for c in COLUMNS] for row in rows)


def _write_groups_csv(groups: Sequence[Row], runs: Sequence[Sequence[str]], path: Path) -> None:
    """``report-groups.csv``: group, runs, n, seeds, model, data, then ``KEY_mean``, ``KEY_std`` and
    ``KEY_n`` of each numeric column (blank mean and std, and n 0, where no run has a value)."""
    numeric = COLUMNS[4:]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["group", "runs", "n", "seeds", "model", "data",
                         *(f"{c.key}_{part}" for c in numeric for part in ("mean", "std", "n"))])
        for group, names in zip(groups, runs):
            numbers = []
            for column in numeric:
                spread = group[column.key]
                numbers += (["", "", 0] if spread is None
                            else [spread.mean, "" if spread.std is None else spread.std, spread.n])
            writer.writerow([group["run"], " ".join(names), group["n"], group["seed"], group["model"],
                             group["data"], *numbers])


PUBLISHED_COLUMNS = (
    Column("run", "published row"),
    Column("data", "data"),
    Column("source", "source"),
    Column("published_neg_elbo", f"published {METRIC_LABELS['neg_elbo']}", _NATS, averaged=True),
    Column("published_nll", "published −log p(x)", _NATS, averaged=True),
    Column("published_bpd", "published bits/dim", _BITS, averaged=True),
    Column("group", "flowzoo group"),
    Column("n", "runs", str),
    Column("test_neg_elbo", f"flowzoo test {METRIC_LABELS['neg_elbo']}", _NATS, averaged=True),
    Column("test_nll_iw", f"flowzoo test {METRIC_LABELS['nll_iw']}", _NATS, averaged=True),
    Column("iw_samples", "K", _COUNT),
    Column("bpd_iw", "flowzoo bits/dim (IWAE)", _BITS, averaged=True),
    Column("epochs", "epochs", _COUNT),
)
"""The columns of the table beside a publication's values; a group's numbers are its mean ± std."""


def beside_published(table: PublishedTable, groups: Sequence[Row], names: Sequence[str]) -> tuple[list[Row], list[str]]:
    """The rows of :data:`PUBLISHED_COLUMNS`: each published row that names the config of a group or is
    on a data set of the groups, beside each group whose config ``name`` (``names``, one per group) is
    the row's ``config`` (blank when none is); and the notes: where the values come from, and the
    groups that no published row names."""
    rows, matched = [], set()
    shown = {group["data"] for group in groups} | set(names)
    for published in (row for row in table.rows if row.data in shown or row.config in shown):
        values = {f"published_{metric}": Spread(value.mean, value.std, 1, value.mean, value.mean)
                  for metric, value in published.values.items()}
        base = {"run": published.label, "data": published.data, "source": published.source, **values}
        members = [i for i, name in enumerate(names) if name == published.config]
        matched.update(members)
        for i in members or [None]:
            group = groups[i] if i is not None else {}
            rows.append({column.key: None for column in PUBLISHED_COLUMNS} | base | {
                "group": group.get("run"), "n": group.get("n"),
                **{key: group.get(key) for key in ("test_neg_elbo", "test_nll_iw", "iw_samples", "bpd_iw", "epochs")}})
    checked = "" if table.checked else " NOT CHECKED against the publication."
    notes = [f"Published: {table.reference}.{checked} {table.note} ({table.path})"]
    unnamed = [group["run"] for i, group in enumerate(groups) if i not in matched]
    if unnamed:
        notes.append(f"No published row names the config of: {', '.join(unnamed)}.")
    return rows, notes


def _published_console_table(rows: Sequence[Row], notes: Sequence[str], title: str) -> Table:
    """The table beside the publication with one row per published row, as in the paper."""
    columns, cells = _cells(rows, PUBLISHED_COLUMNS)
    table = Table(title=title, title_justify="left", caption="\n".join(notes), caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        table.add_column(column.label, justify="right" if column.format else "left", overflow="fold")
    for row in cells:
        table.add_row(*(text for text, _ in row))
    return table


def expand_sweeps(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The run directories of ``paths``, a sweep directory (one holding ``sweep.yaml``) standing
    for the run directories of its points; and notes on points without a run yet or that failed.

    Raises:
        CheckpointError: a ``sweep.yaml`` that cannot be read.
    """
    runs, notes = [], []
    for path in map(Path, paths):
        sweep_file = path / "sweep.yaml"
        if not sweep_file.is_file():
            runs.append(path)
            continue
        try:
            points = yaml.safe_load(sweep_file.read_text())["points"]
            labels = [(point["run_dir"], point.get("status")) for point in points]
        except (yaml.YAMLError, TypeError, KeyError) as error:
            raise CheckpointError(f"{sweep_file} is not a flowzoo sweep file ({error})") from error
        runs += [path / label for label, _ in labels if (path / label / "config.yaml").is_file()]
        unstarted = [label for label, _ in labels if not (path / label / "config.yaml").is_file()]
        failed = [label for label, status in labels if status == "failed"]
        if unstarted:
            notes.append(f"Not started in {path}: {', '.join(unstarted)}.")
        if failed:
            notes.append(f"Failed in {path} (see their console.log): {', '.join(failed)}.")
    return runs, notes


def report_runs(run_dirs: Sequence[str | Path], output: str | Path = ".", sort: str | None = None,
                published: str | Path | None = None) -> list[Row]:
    """Print the table comparing ``run_dirs`` and write ``report.md`` and ``report.csv`` to ``output``
    (and ``report-groups.csv`` when some runs differ only in their seed); with ``published``, also
    the table beside a publication's values, printed and in ``report.md``.

    Args:
        run_dirs: run directories or sweep directories, one row per run, in this order unless sorted.
        output: folder for the files (created if missing).
        sort: a column key (a ``report.csv`` header, e.g. ``test_nll_iw``) to order the rows and the
            groups by, best first.
        published: a published table's YAML file or the name of one shipped with flowzoo
            (:func:`flowzoo.published.load_published`, e.g. ``sylvester2018``).

    Returns:
        The rows of the runs, as :func:`summarize_run` gives them.

    Raises:
        CheckpointError: a path is not a readable run directory or sweep directory.
        ConfigError: ``sort`` is not a column, ``published`` is not a published table, or a run's
            config is unreadable.
    """
    if sort is not None:
        _column(sort)  # a typo fails before any run is read
    check_folder(output, "--output")
    table = load_published(published) if published is not None else None
    paths, missing = expand_sweeps(run_dirs)
    rows = [summarize_run(path) for path in paths]
    configs = [_read_config(RunDir(path)) for path in paths]
    grouped = group_runs(configs, rows)
    output = make_folder(output)
    groups = [aggregate(label, [rows[i] for i in members]) for label, members in grouped]
    names = [[rows[i]["run"] for i in members] for _, members in grouped]
    beside = None
    if table is not None:
        beside = (table.title, *beside_published(table, groups, [configs[members[0]].get("name")
                                                                 for _, members in grouped]))
    several = any(len(members) > 1 for _, members in grouped)
    if sort is not None:
        rows = sort_rows(rows, sort)
        order = sort_rows(groups, sort)
        names = [names[groups.index(group)] for group in order]
        groups = order
    if several:
        console.print(runs_table(groups, GROUP_COLUMNS, title="groups compared (mean ± std over seeds)",
                                 notes=[_GROUP_NOTE, *_notes(rows, missing)]))
    else:
        console.print(runs_table(rows, notes=_notes(rows, missing)))
    if beside is not None:
        console.print(_published_console_table(beside[1], beside[2], f"beside the published values: {beside[0]}"))
    (output / "report.md").write_text(markdown_report(rows, paths, groups if several else (), missing, beside))
    write_csv(rows, output / "report.csv")
    written = [output / "report.md", output / "report.csv"]
    if several:
        _write_groups_csv(groups, names, output / "report-groups.csv")
        written.append(output / "report-groups.csv")
    console.print(f"wrote {', '.join(map(str, written[:-1]))} and {written[-1]}"
                  + ("; the runs one by one are in report.md" if several else ""))
    return rows
