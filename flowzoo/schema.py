"""The type vocabulary shared by experiment configs and component signatures.

A parameter annotated ``PositiveInt`` in a flow's ``__init__`` and a field annotated
``PositiveInt`` in the experiment schema are checked by the same code, so a
component author gets config validation by writing an ordinary signature.
"""

from __future__ import annotations

__all__ = [
    "Range",
    "Checked",
    "checked_by",
    "PositiveInt",
    "NonNegativeInt",
    "PositiveFloat",
    "NonNegativeFloat",
    "UnitInterval",
    "check_value",
    "describe",
    "suggest_key",
    "section_problems",
    "with_defaults",
    "to_plain",
]

import collections.abc
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from flowzoo.errors import Problem, did_you_mean


def to_plain(value: Any) -> Any:
    """OmegaConf containers as plain dicts and lists; anything else unchanged."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


@dataclass(frozen=True)
class Range:
    """Bounds on a number, used as ``Annotated[int, Range(min=1)]``."""

    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False

    def check(self, value: float) -> bool:
        if self.min is not None and (value <= self.min if self.min_exclusive else value < self.min):
            return False
        return self.max is None or value <= self.max

    def __str__(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.min_exclusive else '≥'} {self.min:g}")
        if self.max is not None:
            parts.append(f"≤ {self.max:g}")
        return " and ".join(parts)


@dataclass(frozen=True)
class Checked:
    """Metadata for values that are more than plain values, used as
    ``Annotated[dict, Checked(check, doc)]``: a component spec, a list of flows, a device.

    Args:
        check: ``check(value, path) -> list[Problem]``.
        doc: what is expected, in words ("an encoder spec").
        complete: ``complete(value) -> value`` filling in defaults, if any (a
            component spec's name and parameter defaults).
    """

    check: typing.Callable[[Any, str], list[Problem]]
    doc: str
    complete: typing.Callable[[Any], Any] | None = None


def checked_by(annotation: Any) -> Checked | None:
    """The :class:`Checked` metadata of an annotation, if any."""
    if typing.get_origin(annotation) is Annotated:
        return next((meta for meta in typing.get_args(annotation)[1:] if isinstance(meta, Checked)), None)
    return None


PositiveInt = Annotated[int, Range(min=1)]
NonNegativeInt = Annotated[int, Range(min=0)]
PositiveFloat = Annotated[float, Range(min=0, min_exclusive=True)]
NonNegativeFloat = Annotated[float, Range(min=0)]
UnitInterval = Annotated[float, Range(min=0, max=1)]

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def describe(annotation: Any) -> str:
    """Describe an annotation in words for error messages.

    Example:
        >>> describe(PositiveInt)
        'an integer ≥ 1'
        >>> describe(Literal["adam", "adamax"])
        "one of 'adam', 'adamax'"
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    checked = checked_by(annotation)
    if checked is not None:
        return checked.doc
    if origin is Annotated:
        bounds = [str(meta) for meta in args[1:] if isinstance(meta, Range)]
        return " ".join([describe(args[0]), *bounds])
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin in (Union, types.UnionType):
        named = [describe(arg) for arg in args if arg is not type(None)]
        optional = " or null" if type(None) in args else ""
        return " or ".join(named) + optional
    if origin in (list, tuple, collections.abc.Sequence):
        return f"a list of {_plural(describe(args[0]))}" if args else "a list"
    if origin in (dict, collections.abc.Mapping) or annotation in (dict, collections.abc.Mapping):
        return "a mapping"
    if annotation is Any:
        return "any value"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _plural(noun: str) -> str:
    for article in ("an ", "a "):
        if noun.startswith(article):
            word, _, rest = noun[len(article):].partition(" ")
            return f"{word}s {rest}".strip()
    return noun


def check_value(value: Any, annotation: Any, path: str) -> list[Problem]:
    """Check a plain (YAML-loaded) value against an annotation.

    Returns one problem describing what was expected (one per bad item of a list),
    or none. Integers are accepted where numbers are expected; booleans are not
    accepted as numbers.

    Example:
        >>> check_value(-3, PositiveInt, "model.latent_size")
        [Problem(path='model.latent_size', message='expected an integer ≥ 1, got -3')]
    """
    checked = checked_by(annotation)
    if checked is not None:
        return checked.check(value, path)
    if _matches(value, annotation, path):
        return []
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple, collections.abc.Sequence) and args and isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in check_value(item, args[0], f"{path}[{i}]")]
    return [Problem(path, f"expected {describe(annotation)}, got {_show(value)}")]


def _matches(value: Any, annotation: Any, path: str) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin is Annotated:
        ranges = [meta for meta in args[1:] if isinstance(meta, Range)]
        return _matches(value, args[0], path) and all(r.check(value) for r in ranges)
    if origin is Literal:
        return value in args
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg, path) for arg in args)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args else Any
        return all(_matches(v, item, path) for v in value)
    if origin in (dict, collections.abc.Mapping) or annotation in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return repr(value)


def suggest_key(key: str, valid: typing.Iterable[str]) -> str:
    """Message for an unknown key, with the closest valid key."""
    return f"unknown key '{key}'. {did_you_mean(key, valid, kind='keys')}"


# Config sections are keyword-only dataclasses: a field without a default is required,
# and a field annotated with :class:`Checked` metadata is validated (and completed) by it.


def section_problems(section: type, value: Any, path: str) -> list[Problem]:
    """Every problem with ``value`` as an instance of the config ``section``: unknown
    keys (with the closest valid key), missing keys, wrong types, bad components."""
    if not isinstance(value, Mapping):
        return [Problem(path, f"expected a mapping, got {_show(value)}")]
    fields = {f.name: f for f in dataclasses.fields(section)}
    hints = typing.get_type_hints(section, include_extras=True)
    problems = [Problem(_join(path, key), suggest_key(key, fields)) for key in value if key not in fields]
    for name, field in fields.items():
        field_path = _join(path, name)
        if name not in value:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                problems.append(Problem(field_path, f"missing (expected {describe(hints[name])})"))
            continue
        if dataclasses.is_dataclass(hints[name]):
            problems += section_problems(hints[name], value[name], field_path)
        else:
            problems += check_value(value[name], hints[name], field_path)
    return problems


def with_defaults(section: type, value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` completed with the section's defaults; nested sections are completed
    key by key, fields with a :class:`Checked` ``complete`` by it (a component spec
    gets its name and parameter defaults), other values are taken whole."""
    if not isinstance(value, Mapping):
        return value  # reported by section_problems
    hints = typing.get_type_hints(section, include_extras=True)
    result: dict[str, Any] = dict(value)  # unknown keys stay, so that validation reports them
    for field in dataclasses.fields(section):
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            result[field.name] = with_defaults(annotation, value.get(field.name, {}))
            continue
        if field.name in value:
            given = value[field.name]
        elif field.default is not dataclasses.MISSING:
            given = field.default
        elif field.default_factory is not dataclasses.MISSING:
            given = field.default_factory()
        else:
            continue
        checked = checked_by(annotation)
        result[field.name] = checked.complete(given) if checked is not None and checked.complete else given
    return result


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
