"""Components from outside flowzoo: installed plugin packages and local modules.

A plugin package declares an entry point in the group ``flowzoo.plugins`` whose
value is a module (imported) or a function (called); either registers components
with the ``register_*`` decorators::

    [project.entry-points."flowzoo.plugins"]
    example = "flowzoo_example"

Entry points are loaded once per process, the first time a registry is consulted.
A plugin that fails to load becomes a :class:`PluginWarning` naming it, and the
others still load, whatever the plugin raises (even ``SystemExit``). Setting
``FLOWZOO_DISABLE_PLUGINS`` to a true value (``1``, ``true``, ``yes``, ``on``) turns
auto-loading off; ``0``, ``false``, ``no``, ``off`` or nothing leave it on.
Unpackaged code is listed under ``plugins:`` in a config, or passed to the command
line with ``--import``: module names found on ``sys.path``, then in the working
directory. The working directory is searched only while those named modules are
imported, so that a file there never shadows a module flowzoo imports later
(``tensorboard.py``, ``wandb.py``). See docs/safety.md.
"""

from __future__ import annotations

__all__ = [
    "ENTRY_POINT_GROUP",
    "DISABLE_VARIABLE",
    "PluginWarning",
    "load_entry_points",
    "import_modules",
    "origin_of",
    "plugins_disabled",
]

import functools
import importlib
import importlib.metadata
import os
import sys
import types
import warnings
from typing import Iterable

from flowzoo.errors import ConfigError, Problem

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


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def plugins_disabled() -> bool:
    """Whether ``FLOWZOO_DISABLE_PLUGINS`` turns entry points off; raises :class:`ConfigError`
    for a value that is not a boolean.

    Example:
        >>> import os; os.environ["FLOWZOO_DISABLE_PLUGINS"] = "false"
        >>> plugins_disabled()
        False
        >>> del os.environ["FLOWZOO_DISABLE_PLUGINS"]
    """
    value = os.environ.get(DISABLE_VARIABLE, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise ConfigError([Problem(DISABLE_VARIABLE, f"expected a boolean ({', '.join(_TRUE)} to disable "
                                   f"plugins; {', '.join(_FALSE[1:])} or empty to load them), got {value!r}")])
    return value in _TRUE


@functools.cache
def load_entry_points() -> tuple[str, ...]:
    """Load every ``flowzoo.plugins`` entry point once; returns the names that loaded."""
    if plugins_disabled():
        return ()
    loaded = []
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = point.load()
            if not isinstance(target, types.ModuleType):
                target()
        except BaseException as error:  # a broken plugin, even one calling sys.exit, must not end flowzoo
            warnings.warn(
                f"flowzoo plugin '{point.name}' ({point.value}, from {_distribution(point)}) failed to load "
                f"and is skipped: {type(error).__name__}: {error}. Set {DISABLE_VARIABLE}=1 to skip all plugins.",
                PluginWarning,
                stacklevel=2,
            )
            continue
        loaded.append(point.name)
    return tuple(loaded)


def import_modules(names: Iterable[str], path: str = "plugins", search_working_directory: bool = True) -> list[Problem]:
    """Import local modules that register components; one problem per module that fails.

    Module names are resolved from ``sys.path``, then (with ``search_working_directory``)
    from the working directory, which is on the path only while these modules are imported.
    """
    names = list(names)
    if not names:
        return []
    cwd, before = os.getcwd(), list(sys.path)
    if search_working_directory and cwd not in sys.path:
        sys.path.append(cwd)
    elif not search_working_directory:  # `python -m` puts the working directory first
        sys.path[:] = [entry for entry in sys.path if entry not in ("", cwd)]
    problems = []
    try:
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name:
                problems.append(Problem(f"{path}[{i}]", f"expected a module name, got {name!r}"))
                continue
            try:
                importlib.import_module(name)
            except BaseException as error:  # SystemExit or KeyboardInterrupt raised by the module, too
                problems.append(Problem(f"{path}[{i}]", f"cannot import module '{name}': "
                                        f"{type(error).__name__}: {error}"))
    finally:  # the path as it was, with what the modules added to it
        sys.path[:] = before + [entry for entry in sys.path if entry not in before and entry != cwd]
    return problems
