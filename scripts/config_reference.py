"""Generate docs/reference.md, the config reference, from the code so that it cannot drift.

The experiment sections come from the config dataclasses (types from their
annotations, defaults from their fields, meanings from the attribute docstrings
after each field); the components come from the registries (types and defaults
from each factory's signature, meanings from the ``Args:`` section of its
docstring). Only built-in components are listed, so an installed plugin does not
change the file.

Usage::

    python scripts/config_reference.py           # write docs/reference.md
    python scripts/config_reference.py --check   # exit 1 if docs/reference.md is out of date
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any, Callable, Iterator

import flowzoo  # noqa: F401  (importing the package registers the built-in components)
from flowzoo.config import ExperimentConfig
from flowzoo.docstrings import markdown, parameter_docs, parameter_rows, summary, yaml_inline
from flowzoo.registry import REGISTRIES, Entry, Registry
from flowzoo.schema import checked_by, describe
from flowzoo.vae import resolve_flows

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "reference.md"
COMMAND = "python scripts/config_reference.py"
BUILT_IN = "built-in"

# Checked annotations whose values are specs of a registry without being resolved by the
# registry itself: the model's list of flows.
_SPEC_LISTS: dict[Callable[..., Any], str] = {resolve_flows: "flows"}


# -- text -----------------------------------------------------------------------------------


def code(text: str, cell: bool = True) -> str:
    return f"`{text}`".replace("|", "\\|") if cell else f"`{text}`"


def field_docs(section: type) -> dict[str, str]:
    """Field name → attribute docstring (the string literal right after the field), for a dataclass."""
    docs: dict[str, str] = {}
    for cls in reversed(section.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        body = next(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)).body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


# -- tables ---------------------------------------------------------------------------------


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def type_words(annotation: Any) -> str:
    """``describe(annotation)``, linked to the registry section when it is a spec of a registry."""
    words = markdown(describe(annotation))
    checked = checked_by(annotation)
    if checked is None:
        return words
    for plural, registry in REGISTRIES.items():
        if checked.resolve == registry.resolve or _SPEC_LISTS.get(checked.resolve) == plural:
            return f"[{words}](#{plural})"
    return words


def section_names(section: type, key: str = "") -> Iterator[tuple[str, type]]:
    """The config section at ``key`` and, in field order, every nested section."""
    yield key, section
    hints = typing.get_type_hints(section, include_extras=True)
    for field in dataclasses.fields(section):
        if dataclasses.is_dataclass(hints[field.name]):
            yield from section_names(hints[field.name], f"{key}.{field.name}" if key else field.name)


def section_anchor(key: str) -> str:
    return key.replace(".", "") if key else "top-level"


def section_lines(key: str, section: type) -> list[str]:
    hints = typing.get_type_hints(section, include_extras=True)
    docs = field_docs(section)
    title = f"`{key}`" if key else "Top level"
    lines = [f"### {title}", "",
             f"`{section.__module__}.{section.__qualname__}`: {markdown(summary(section), cell=False)}", ""]
    rows = []
    for field in dataclasses.fields(section):
        annotation = hints[field.name]
        meaning = markdown(docs.get(field.name, ""))
        if dataclasses.is_dataclass(annotation):
            nested = f"{key}.{field.name}" if key else field.name
            kind = "a mapping"
            default = f"[see below](#{section_anchor(nested)})"
            meaning = meaning or markdown(summary(annotation))
        else:
            kind = type_words(annotation)
            if field.default is not dataclasses.MISSING:
                default = code(yaml_inline(field.default))
            elif field.default_factory is not dataclasses.MISSING:
                default = code(yaml_inline(field.default_factory()))
            else:
                default = "required"
        rows.append((code(field.name), kind, default, meaning))
    return lines + table(("key", "type", "default", "meaning"), rows) + [""]


def entry_lines(registry: Registry, entry: Entry) -> list[str]:
    factory = entry.factory
    lines = [f"#### `{entry.name}`", "",
             f"`{entry.module}.{factory.__qualname__}`: {markdown(summary(factory), cell=False)}", ""]
    rows = [(code(row.name), type_words(row.annotation), "required" if row.default is None else code(row.default),
             markdown(row.meaning)) for row in parameter_rows(factory, entry.parameters)]
    lines += table(("parameter", "type", "default", "meaning"), rows) if rows else ["No parameters."]
    notes = []
    if entry.injected:
        source = "Set from the data set" if registry is REGISTRIES.get("models") else "Set by the model"
        notes.append(f"{source}: " + ", ".join(code(name, cell=False) for name in entry.injected) + ".")
    if entry.tags:
        tags = [code(f"{key}: {yaml_inline(value)}", cell=False) for key, value in sorted(entry.tags.items())]
        notes.append("Tags: " + ", ".join(tags) + ".")
    if notes:
        lines += ["", *notes]
    return lines + [""]


def built_in(registry: Registry) -> list[Entry]:
    return [registry[name] for name in registry.list() if registry[name].origin == BUILT_IN]


def registry_lines(plural: str, registry: Registry) -> list[str]:
    lines = [f"### {plural}", ""]
    article = "An" if registry.kind[0] in "aeiou" else "A"
    intro = (f"{article} {registry.kind} spec is a mapping whose `name` chooses one of these; "
             "its other keys are the parameters.")
    if registry.default is not None:
        intro += f" `name` may be omitted: it defaults to `{registry.default}`."
    lines += [intro, f"`flowzoo list {plural}` also shows the {plural} that plugins add.", ""]
    for entry in built_in(registry):
        lines += entry_lines(registry, entry)
    return lines


# -- the page -------------------------------------------------------------------------------


def generate() -> str:
    """The text of docs/reference.md."""
    sections = list(section_names(ExperimentConfig))
    lines = [
        "# Config reference",
        "",
        f"<!-- Generated by {COMMAND} from the code; do not edit by hand. -->",
        "",
        "Every key of an experiment config and every parameter of every built-in component, with its",
        "type, default and meaning, generated from the code: the config dataclasses, the component",
        "registries, and their docstrings. Types are written as the validator describes them in its",
        "error messages; defaults are written as YAML. See [guide.md](guide.md) for how a config is put",
        "together and [training.md](training.md) for the `trainer` section in depth.",
        "",
        "## Contents",
        "",
        "- Experiment config: " + ", ".join(
            f"[{'`' + key + '`' if key else 'top level'}](#{section_anchor(key)})" for key, _ in sections),
    ]
    for plural, registry in REGISTRIES.items():
        names = ", ".join(code(entry.name, cell=False) for entry in built_in(registry))
        lines.append(f"- [{plural}](#{plural}): {names}")
    lines += ["", "## Experiment config", ""]
    lines += [
        "A config file sets any of these keys; the rest take their defaults. `base: other.yaml` starts",
        "from another file, `${...}` interpolates, and `key=value` arguments override (see",
        "[guide.md](guide.md)).",
        "",
    ]
    for key, section in sections:
        lines += section_lines(key, section)
    lines += ["## Components", ""]
    lines += [
        "Parameters marked \"set by the model\" come from the rest of the config (the latent size, the",
        "data's shape, ...); a spec must not set them. [plugins.md](plugins.md) shows how to add components.",
        "",
    ]
    for plural, registry in REGISTRIES.items():
        lines += registry_lines(plural, registry)
    return "\n".join(lines).rstrip("\n") + "\n"


def undocumented() -> list[str]:
    """Keys and parameters without a description, and ``Args:`` entries naming no parameter."""
    notes = []
    for key, section in section_names(ExperimentConfig):
        docs = field_docs(section)
        hints = typing.get_type_hints(section, include_extras=True)
        notes += [f"{key or 'top level'}: {field.name} has no docstring" for field in dataclasses.fields(section)
                  if field.name not in docs and not dataclasses.is_dataclass(hints[field.name])]
    for plural, registry in REGISTRIES.items():
        for entry in built_in(registry):
            docs = parameter_docs(entry.factory)
            where = f"{plural} {entry.name} ({entry.module}.{entry.factory.__qualname__})"
            if not entry.factory.__doc__:
                notes.append(f"{where}: no docstring")
            notes += [f"{where}: parameter {name} not described under Args:" for name in entry.parameters
                      if name not in docs]
            known = {*entry.parameters, *entry.injected}
            notes += [f"{where}: Args: describes {name}, which is no parameter" for name in docs if name not in known]
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/reference.md is out of date")
    args = parser.parse_args(argv)
    text = generate()
    shown = OUTPUT.relative_to(REPO) if OUTPUT.is_relative_to(REPO) else OUTPUT
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.is_file() else None
        if current != text:
            print(f"{shown} is out of date; run {COMMAND}", file=sys.stderr)
            return 1
        print(f"{shown} is up to date")
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {shown}")
    for note in undocumented():
        print(f"note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
