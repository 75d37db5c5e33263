"""User-facing errors: one clear message, no traceback from the command line."""

from __future__ import annotations

__all__ = [
    "FlowzooError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "TrainingError",
    "Problem",
    "did_you_mean",
]

import difflib
from dataclasses import dataclass
from typing import Iterable, Sequence

from flowzoo.legacy import RENAMED_PARAMETERS


class FlowzooError(Exception):
    """An error caused by the user's input (config, data, checkpoint, plugin).

    The command line prints its message and exits with status 2, without a traceback.
    """


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config, located by its dotted key path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(FlowzooError):
    """Every problem found in a config, reported at once."""

    def __init__(self, problems: Sequence[Problem], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" ({source})" if source else ""
        count = len(self.problems)
        lines = [f"invalid config{where}: {count} problem{'s' if count != 1 else ''}"]
        lines += [f"  {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


class DataError(FlowzooError):
    """A data set that is missing, corrupt or cannot be fetched."""


class CheckpointError(FlowzooError):
    """A run directory or checkpoint that cannot be loaded."""


class TrainingError(FlowzooError):
    """A run that cannot go on, e.g. losses that stay non-finite after every rollback.

    The command line prints its message and exits with status 1.
    """


def did_you_mean(word: str, choices: Iterable[str], *, kind: str = "") -> str:
    """Suggest the closest valid choice, or the new name of a renamed one, and list all of them.

    Example:
        >>> did_you_mean("iaff", ["iaf", "reverse"])
        "Did you mean 'iaf'? Available: iaf, reverse"
        >>> did_you_mean("ar_layers", ["hidden_layers", "kernel_size"]).split(" Available")[0]
        "Did you mean 'hidden_layers'? (the new name of ar_layers: the same number)"
    """
    choices = sorted(choices)
    new_name, change = RENAMED_PARAMETERS.get(str(word), (None, ""))
    if new_name in choices:
        hint = f"Did you mean '{new_name}'? (the new name of {word}: {change}) "
    else:
        close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
        hint = f"Did you mean '{close[0]}'? " if close else ""
    label = f"Available {kind}: " if kind else "Available: "
    return f"{hint}{label}{', '.join(choices) if choices else '(none)'}"
