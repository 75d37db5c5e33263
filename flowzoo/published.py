"""Published results to set beside flowzoo's runs: ``flowzoo report --published FILE|NAME``.

A published table is a YAML file: a ``title``, the full ``reference``, whether its values were
``checked`` against the publication, a ``note``, and ``rows``, each with a ``label`` (the
publication's name for the row), the ``config`` whose runs it is compared with (the flowzoo
config's ``name``), the ``data`` set, the ``source`` of its values (table and row) and any of
``neg_elbo``, ``nll`` and ``bpd``, each ``{mean: ..., std: ...}`` (std optional). Tables shipped
with flowzoo are in ``flowzoo/published/`` and are named by their file's stem
(:func:`list_published`). docs/report.md describes the table the report prints.
"""

from __future__ import annotations

__all__ = ["PublishedValue", "PublishedRow", "PublishedTable", "PUBLISHED_DIR", "list_published", "load_published"]

import dataclasses
import fnmatch
from pathlib import Path
from typing import Any, Mapping

import yaml

from flowzoo.errors import ConfigError, Problem, did_you_mean

PUBLISHED_DIR = Path(__file__).with_name("published")
METRICS = ("neg_elbo", "nll", "bpd")
"""The published metrics: −ELBO and −log p(x) in nats, and bits/dim (of −log p(x))."""
_ROW_KEYS = ("label", "config", "data", "source", *METRICS)
_TABLE_KEYS = ("title", "reference", "checked", "note", "rows")


@dataclasses.dataclass(frozen=True)
class PublishedValue:
    """A published number: the mean over the authors' runs and, when given, its standard deviation."""

    mean: float
    std: float | None = None


@dataclasses.dataclass(frozen=True)
class PublishedRow:
    """One row of a published table, and the flowzoo config whose runs it is set beside."""

    label: str
    config: str
    data: str
    source: str
    values: dict[str, PublishedValue]
    """Those of :data:`METRICS` that the publication gives for the row."""


@dataclasses.dataclass(frozen=True)
class PublishedTable:
    """A publication's results, as read from its YAML file."""

    title: str
    reference: str
    checked: bool
    note: str
    rows: tuple[PublishedRow, ...]
    path: Path


def list_published(pattern: str = "*") -> list[str]:
    """The names of the published tables shipped with flowzoo that match ``pattern``.

    Example:
        >>> list_published("sylvester*")
        ['sylvester2018']
    """
    return sorted(path.stem for path in PUBLISHED_DIR.glob("*.yaml") if fnmatch.fnmatch(path.stem, pattern))


def load_published(source: str | Path) -> PublishedTable:
    """Read a published table: a YAML file's path, or the name of one shipped with flowzoo.

    Raises:
        ConfigError: no such file or name (with the closest name), or a file that is not a
            published table, listing every problem with its key path.

    Example:
        >>> table = load_published("sylvester2018")
        >>> table.checked, table.rows[0].label, table.rows[0].values["nll"]
        (False, 'No flow', PublishedValue(mean=82.14, std=0.07))
    """
    path = Path(source)
    if not path.is_file():
        shipped = PUBLISHED_DIR / f"{source}.yaml"
        if not shipped.is_file():
            raise ConfigError([Problem("--published", f"no file {source} and no published table of that name. "
                                       + did_you_mean(str(source), list_published()))])
        path = shipped
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError([Problem("", f"not a YAML published table: {error}")], str(path)) from None
    problems: list[Problem] = []
    table = _table(raw, problems)
    if problems:
        raise ConfigError(problems, str(path))
    return PublishedTable(**table, path=path)


def _table(raw: Any, problems: list[Problem]) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        problems.append(Problem("", f"expected a mapping with {', '.join(_TABLE_KEYS)}"))
        return {}
    _unknown(raw, _TABLE_KEYS, "", problems)
    table = {key: _text(raw, key, "", problems) for key in ("title", "reference", "note")}
    table["checked"] = raw.get("checked")
    if not isinstance(table["checked"], bool):
        problems.append(Problem("checked", "expected true or false: whether the values were checked against "
                                           "the publication"))
    rows = raw.get("rows")
    if not isinstance(rows, list) or not rows:
        problems.append(Problem("rows", "expected a list of rows"))
        rows = []
    table["rows"] = tuple(_row(row, f"rows[{i}]", problems) for i, row in enumerate(rows))
    return table


def _row(raw: Any, path: str, problems: list[Problem]) -> PublishedRow | None:
    if not isinstance(raw, Mapping):
        problems.append(Problem(path, f"expected a mapping with {', '.join(_ROW_KEYS)}"))
        return None
    _unknown(raw, _ROW_KEYS, path, problems)
    texts = {key: _text(raw, key, path, problems) for key in ("label", "config", "data", "source")}
    values = {}
    for metric in METRICS:
        value = raw.get(metric)
        if value is None:
            continue
        where = f"{path}.{metric}"
        if not isinstance(value, Mapping) or not _number(value.get("mean")) or set(value) - {"mean", "std"} \
                or not (value.get("std") is None or _number(value["std"])):
            problems.append(Problem(where, "expected {mean: NUMBER} or {mean: NUMBER, std: NUMBER}"))
            continue
        values[metric] = PublishedValue(float(value["mean"]), None if value.get("std") is None else float(value["std"]))
    return PublishedRow(**texts, values=values)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(raw: Mapping[str, Any], key: str, path: str, problems: list[Problem]) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        problems.append(Problem(f"{path}.{key}" if path else key, "expected a text" if key in raw else "missing"))
        return ""
    return value


def _unknown(raw: Mapping[str, Any], keys: tuple[str, ...], path: str, problems: list[Problem]) -> None:
    for key in raw:
        if key not in keys:
            where = f"{path}.{key}" if path else str(key)
            problems.append(Problem(where, f"unknown key '{key}'. {did_you_mean(str(key), list(keys))}"))
