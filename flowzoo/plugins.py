"""Components from outside flowzoo: installed plugin packages and local modules.

A plugin package declares an entry point in the group ``flowzoo.plugins`` whose
value is a module (imported) or a function (called); either registers components
with the ``register_*`` decorators::

    [project.entry-points."flowzoo.plugins"]
    example = "flowzoo_example"

Entry points are loaded once per process, the first time a registry is consulted.
A plugin that fails to load becomes a :class:`PluginWarning` naming it, and the
others still load. Setting ``FLOWZOO_DISABLE_PLUGINS=1`` turns auto-loading off.
Unpackaged code is listed under ``plugins:`` in a config (module names importable
from the working directory), or passed to the command line with ``--import``.
"""

from __future__ import annotations

__all__ = [
    "ENTRY_POINT_GROUP",
    "DISABLE_VARIABLE",
    "PluginWarning",
    "load_entry_points",
    "import_modules",
    "origin_of",
]

import functools
import importlib
import importlib.metadata
import os
import sys
import types
import warnings
from typing import Iterable

from flowzoo.errors import Problem

ENTRY_POINT_GROUP = "flowzoo.plugins"
DISABLE_VARIABLE = "FLOWZOO_DISABLE_PLUGINS"


class PluginWarning(UserWarning):
    """A plugin could not be loaded; its components are missing."""


def _distribution(point: importlib.metadata.EntryPoint) -> str:
    return f"{point.dist.name} {point.dist.version}" if point.dist else point.name


@functools.cache
def _plugin_packages() -> dict[str, str]:
    """Top-level package of each plugin entry point → ``plugin <distribution> <version>``."""
    points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {point.module.split(".")[0]: f"plugin {_distribution(point)}" for point in points}


def origin_of(module: str) -> str:
    """Where a component defined in ``module`` comes from: built-in, a plugin, or a local module.

    Example:
        >>> origin_of("flowzoo.flows.iaf")
        'built-in'
    """
    top = module.split(".")[0]
    if top == "flowzoo":
        return "built-in"
    return _plugin_packages().get(top, f"module {module}")


@functools.cache
def load_entry_points() -> tuple[str, ...]:
    """Load every ``flowzoo.plugins`` entry point once; returns the names that loaded."""
    if os.environ.get(DISABLE_VARIABLE, "").strip() not in ("", "0"):
        return ()
    loaded = []
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = point.load()
            if not isinstance(target, types.ModuleType):
                target()
        except Exception as error:  # a broken plugin must not take flowzoo down with it
            warnings.warn(
                f"flowzoo plugin '{point.name}' ({point.value}, from {_distribution(point)}) failed to load "
                f"and is skipped: {type(error).__name__}: {error}. Set {DISABLE_VARIABLE}=1 to skip all plugins.",
                PluginWarning,
                stacklevel=2,
            )
            continue
        loaded.append(point.name)
    return tuple(loaded)


def import_modules(names: Iterable[str], path: str = "plugins") -> list[Problem]:
    """Import local modules that register components; one problem per module that fails.

    Module names are resolved from the working directory first, then ``sys.path``.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    problems = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            problems.append(Problem(f"{path}[{i}]", f"expected a module name, got {name!r}"))
            continue
        try:
            importlib.import_module(name)
        except Exception as error:
            problems.append(Problem(f"{path}[{i}]", f"cannot import module '{name}': {type(error).__name__}: {error}"))
    return problems
