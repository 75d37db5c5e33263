"""What a component's docstring and signature say about it, for readers of the reference.

The generated config reference (``scripts/config_reference.py`` → docs/reference.md),
``flowzoo list KIND NAME`` and the one-line descriptions of ``flowzoo list`` all read a
component the same way: its own Google-style docstring (a summary line, a description,
``Args:``, ``References:``) and its registered parameters, defaults written as YAML and
reStructuredText roles and literals as Markdown code (```reflections``` → `reflections`,
so that a parameter named in a sentence still reads as one).
"""

from __future__ import annotations

__all__ = [
    "ParameterDoc",
    "markdown",
    "yaml_inline",
    "own_docstring",
    "summary",
    "description",
    "section",
    "docstring_args",
    "parameter_docs",
    "parameter_rows",
]

import dataclasses
import inspect
import re
import typing
from typing import Any, Callable, Mapping

import yaml

_SECTIONS = ("Args", "Arguments", "Parameters", "Returns", "Yields", "Raises", "Example", "Examples",
             "References", "Note", "Notes", "Attributes", "See Also", "Warning", "Warnings")
_HEADER = re.compile(rf"(?:{'|'.join(_SECTIONS)}):")


def markdown(text: str, cell: bool = True) -> str:
    """Docstring text (reStructuredText) as one line of Markdown; in a table ``cell``, ``|`` is escaped.

    Example:
        >>> markdown("Reflect z across ``reflections`` hyperplanes (:class:`~flowzoo.flows.Householder`).")
        'Reflect z across `reflections` hyperplanes (`Householder`).'
    """
    text = " ".join(text.split())
    text = re.sub(r":[\w:]+:`(~?)([^`]+)`", _role, text)
    text = text.replace("``", "`")
    return text.replace("|", "\\|") if cell else text


def _role(match: re.Match) -> str:
    """``:class:`~a.b.C``` as `C`, ``:func:`f``` as `f`."""
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def yaml_inline(value: Any) -> str:
    """A default as it would be written in a YAML config: tuples as lists, mappings inline.

    Example:
        >>> yaml_inline((32, 64)), yaml_inline(None), yaml_inline({"name": "iaf"})
        ('[32, 64]', 'null', '{name: iaf}')
    """

    def plain(item: Any) -> Any:
        if isinstance(item, (tuple, list)):
            return [plain(v) for v in item]
        if isinstance(item, typing.Mapping):
            return {k: plain(v) for k, v in item.items()}
        return item

    text = yaml.safe_dump(plain(value), default_flow_style=True, sort_keys=False, allow_unicode=True, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def own_docstring(obj: Any) -> str:
    """The object's own docstring, cleaned (a class without one does not inherit its base's)."""
    return inspect.cleandoc(obj.__doc__) if obj.__doc__ else ""


def summary(obj: Any) -> str:
    """The summary of the object's own docstring: its first paragraph, on one line, as written."""
    return " ".join(own_docstring(obj).split("\n\n", 1)[0].split())


def description(doc: str) -> str:
    """A docstring's text before its first section (``Args:``, ``Example:``, ...), paragraphs kept.

    Example:
        >>> description("Summary.\\n\\nMore words.\\n\\nArgs:\\n    a: first.")
        'Summary.\\n\\nMore words.'
    """
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    end = next((i for i, line in enumerate(lines) if _HEADER.fullmatch(line.strip()) and not line[:1].isspace()),
               len(lines))
    return "\n".join(lines[:end]).strip()


def section(doc: str, name: str) -> str:
    """The dedented body of a docstring's section, e.g. ``References``; empty if it has none.

    Example:
        >>> section("Summary.\\n\\nReferences:\\n    Someone (2016).\\n\\nExample:\\n    >>> 1\\n    1", "References")
        'Someone (2016).'
    """
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    starts = [i for i, line in enumerate(lines) if line.strip() == f"{name}:" and not line[:1].isspace()]
    if not starts:
        return ""
    body = []
    for line in lines[starts[0] + 1 :]:
        if line.strip() and not line[:1].isspace():
            break
        body.append(line)
    return inspect.cleandoc("\n".join(body))


def docstring_args(doc: str | None) -> dict[str, str]:
    """Parameter name → description from the Google-style ``Args:`` section of a docstring.

    Each entry is ``name: text`` (or ``name (type): text``); lines indented further
    than the entry continue it; the section ends at the first non-blank line indented
    no further than the ``Args:`` header.

    Example:
        >>> doc = "Summary.\\n\\nArgs:\\n    a: first\\n        line.\\n    b (int): two.\\n\\nReturns:\\n    x"
        >>> docstring_args(doc)
        {'a': 'first line.', 'b': 'two.'}
    """
    if not doc:
        return {}
    lines = inspect.cleandoc(doc).splitlines()
    result: dict[str, list[str]] = {}
    header_indent = entry_indent = None
    current = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if header_indent is None:
            if line.strip() in ("Args:", "Arguments:", "Parameters:"):
                header_indent = indent
            continue
        if not line.strip():
            continue
        if indent <= header_indent:
            break
        if entry_indent is None:
            entry_indent = indent
        match = re.fullmatch(r"\*{0,2}(\w+)\s*(?:\([^)]*\))?:\s*(.*)", line.strip())
        if indent <= entry_indent and match:
            current = match.group(1)
            result[current] = [match.group(2)]
        elif current is not None:
            result[current].append(line.strip())
    return {name: " ".join(" ".join(parts).split()) for name, parts in result.items()}


def parameter_docs(factory: Callable[..., Any]) -> dict[str, str]:
    """Descriptions of a factory's parameters: its ``Args:``, and for a class its ``__init__``'s too."""
    docs = {}
    if inspect.isclass(factory) and "__init__" in vars(factory):
        docs.update(docstring_args(vars(factory)["__init__"].__doc__))
    docs.update(docstring_args(factory.__doc__))
    return docs


@dataclasses.dataclass(frozen=True)
class ParameterDoc:
    """One row of a component's parameter table."""

    name: str
    annotation: Any
    """What its value is checked against (:func:`flowzoo.schema.describe` puts it in words)."""
    default: str | None
    """As YAML; None for a required parameter."""
    meaning: str
    """Its ``Args:`` entry, as written (:func:`markdown` turns it into Markdown)."""


def parameter_rows(factory: Callable[..., Any], parameters: Mapping[str, Any]) -> list[ParameterDoc]:
    """The rows of a registered component's parameter table, in signature order.

    Args:
        factory: the registered class or function, whose docstring describes the parameters.
        parameters: its config-settable parameters (:attr:`flowzoo.registry.Entry.parameters`).
    """
    docs = parameter_docs(factory)
    return [ParameterDoc(param.name, param.annotation, None if param.required else yaml_inline(param.default),
                         docs.get(param.name, "")) for param in parameters.values()]
