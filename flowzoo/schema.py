"""The type vocabulary shared by experiment configs and component signatures.

A parameter annotated ``PositiveInt`` in a flow's ``__init__`` and a field annotated
``PositiveInt`` in the experiment schema are checked by the same code, so a
component author gets config validation by writing an ordinary signature.
:func:`resolve_value` completes and checks a value against its annotation in one
pass; values that are more than plain values (a component spec, a list of flows, a
device) say how with :class:`Checked` metadata.
"""

from __future__ import annotations

__all__ = [
    "Range",
    "Checked",
    "Resolved",
    "checked_by",
    "PositiveInt",
    "NonNegativeInt",
    "PositiveFloat",
    "NonNegativeFloat",
    "UnitInterval",
    "resolve_value",
    "describe",
    "show",
]

import collections.abc
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from flowzoo.errors import Problem

Resolved = tuple[Any, list[Problem]]
"""A value completed with its defaults, and every problem found with it (none: the value is valid)."""


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
    ``Annotated[dict, Checked(resolve, doc)]``: a component spec, a list of flows, a device.

    Args:
        resolve: ``resolve(value, path) -> (value, problems)``: the value completed
            (a component spec gets its name and parameter defaults) and every problem
            with it, located under ``path``.
        doc: what is expected, in words ("an encoder spec").
    """

    resolve: typing.Callable[[Any, str], Resolved]
    doc: str


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


def resolve_value(value: Any, annotation: Any, path: str) -> Resolved:
    """Complete and check a plain (YAML-loaded) value against an annotation, in one pass.

    A :class:`Checked` annotation resolves the value itself; the items of a list are
    resolved one by one (one problem per bad item); any other value is returned as it
    is, with one problem describing what was expected if it does not match. Integers
    are accepted where numbers are expected; booleans are not accepted as numbers.

    Example:
        >>> resolve_value(-3, PositiveInt, "model.latent_size")
        (-3, [Problem(path='model.latent_size', message='expected an integer ≥ 1, got -3')])
        >>> resolve_value([16, 0], list[PositiveInt], "hidden_sizes")[1]
        [Problem(path='hidden_sizes[1]', message='expected an integer ≥ 1, got 0')]
    """
    checked = checked_by(annotation)
    if checked is not None:
        return checked.resolve(value, path)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple, collections.abc.Sequence) and args and isinstance(value, (list, tuple)):
        items = [resolve_value(item, args[0], f"{path}[{i}]") for i, item in enumerate(value)]
        return [item for item, _ in items], [problem for _, found in items for problem in found]
    if _matches(value, annotation):
        return value, []
    return value, [Problem(path, f"expected {describe(annotation)}, got {show(value)}")]


def _matches(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin is Annotated:
        ranges = [meta for meta in args[1:] if isinstance(meta, Range)]
        return _matches(value, args[0]) and all(r.check(value) for r in ranges)
    if origin is Literal:
        return value in args
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args else Any
        return all(_matches(v, item) for v in value)
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


def show(value: Any) -> str:
    """A value as an error message shows it: strings quoted, YAML's words for null and booleans."""
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
