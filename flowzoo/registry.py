"""Registries that map names to components, and build components from config specs.

There is one registry per kind of component. A component is a class (or a function
returning a module) whose ``__init__`` signature is its config schema: parameter
names are the keys a YAML spec may set, annotations (see :mod:`flowzoo.schema`)
are checked before anything is built, and defaults are the defaults.

Some parameters are *injected*: the model supplies them from the rest of the config
(a flow's ``features`` is the latent size, an encoder's ``input_shape`` comes from
the data set), so a spec must not set them.

A spec is resolved once (:meth:`Registry.resolve`: completed with its defaults and
checked, nested specs in turn) and then built from without further checks
(:meth:`Registry.instantiate`); :meth:`Registry.build` does both, for specs written
by hand.

Example:
    >>> from flowzoo.registry import flows, list_flows
    >>> "iaf" in list_flows()
    True
    >>> list_flows("rev*")
    ['reverse']
    >>> flow = flows.build({"name": "iaf", "hidden_features": 8}, "flow", features=3)
    >>> type(flow).__name__
    'GatedIAF'
"""

from __future__ import annotations

__all__ = [
    "Entry",
    "Registry",
    "RegistryError",
    "REGISTRIES",
    "get_registry",
    "encoders",
    "decoders",
    "posteriors",
    "priors",
    "flows",
    "likelihoods",
    "datasets",
    "blocks",
    "models",
    "register_encoder",
    "register_decoder",
    "register_posterior",
    "register_prior",
    "register_flow",
    "register_likelihood",
    "register_dataset",
    "register_block",
    "register_model",
    "list_encoders",
    "list_decoders",
    "list_posteriors",
    "list_priors",
    "list_flows",
    "list_likelihoods",
    "list_datasets",
    "list_blocks",
    "list_models",
]

import fnmatch
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from flowzoo import docstrings
from flowzoo.errors import ConfigError, FlowzooError, Problem, did_you_mean
from flowzoo.plugins import load_entry_points, origin_of
from flowzoo.schema import Checked, Resolved, describe, resolve_value


class RegistryError(FlowzooError):
    """A component that cannot be registered (duplicate name, unusable signature)."""


@dataclass(frozen=True)
class Parameter:
    """One config-settable parameter of a component."""

    name: str
    annotation: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


@dataclass(frozen=True)
class Entry:
    """A registered component: its factory, parameters, tags and where it came from.

    ``origin`` is ``built-in``, ``plugin <distribution> <version>`` or ``module <name>``;
    ``tags`` are the keyword arguments given to the ``register_*`` decorator (flows use
    ``triangular="lower"`` or ``"upper"`` to declare the shape of their Jacobian).
    """

    name: str
    factory: Callable[..., Any]
    parameters: Mapping[str, Parameter]
    injected: tuple[str, ...]
    module: str
    location: str
    origin: str
    tags: Mapping[str, Any]

    @property
    def summary(self) -> str:
        """First line of the component's own docstring, as Markdown: a parameter named in it stays
        code (`reflections`) rather than reading as a word of the sentence."""
        return docstrings.markdown(docstrings.summary(self.factory), cell=False)


class Registry:
    """Names → components of one kind.

    Args:
        kind: singular noun used in messages ("flow").
        injected: parameter names the model supplies; specs may not set them.
        default: the name a spec without ``name`` stands for, if any.
    """

    def __init__(self, kind: str, injected: tuple[str, ...] = (), default: str | None = None):
        self.kind = kind
        self.injected = injected
        self.default = default
        self._entries: dict[str, Entry] = {}

    @property
    def spec(self) -> Any:
        """The annotation of a config value that is a spec of this kind, resolved by this registry."""
        article = "an" if self.kind[0] in "aeiou" else "a"
        return typing.Annotated[dict, Checked(self.resolve, f"{article} {self.kind} spec")]

    def register(self, name: str, **tags: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering a class or function under ``name``, with optional tags."""

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            entry = self._make_entry(name, factory, tags)
            existing = self._entries.get(name)
            # Re-importing the module that registered a name is not a conflict.
            if existing is not None and existing.location != entry.location:
                raise RegistryError(
                    f"{self.kind} '{name}' is registered twice: first by {existing.location}, "
                    f"then by {entry.location}. Rename one of them."
                )
            self._entries[name] = entry
            return factory

        return decorator

    def _make_entry(self, name: str, factory: Callable[..., Any], tags: Mapping[str, Any]) -> Entry:
        module = factory.__module__
        origin = origin_of(module)
        target = factory.__init__ if inspect.isclass(factory) else factory
        if target in (object.__init__, nn.Module.__init__):  # a class with no parameters of its own
            return Entry(name, factory, {}, (), module, _location(factory), origin, dict(tags))
        signature = inspect.signature(target)
        hints = typing.get_type_hints(target, include_extras=True)
        parameters, injected = {}, []
        for param in list(signature.parameters.values())[1 if inspect.isclass(factory) else 0 :]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise RegistryError(
                    f"{self.kind} '{name}' ({_location(factory)}) takes *args or **kwargs; "
                    "registered components need explicit parameters so configs can be checked"
                )
            if param.name in self.injected:
                injected.append(param.name)
            else:
                parameters[param.name] = Parameter(param.name, hints.get(param.name, Any), param.default)
        return Entry(name, factory, parameters, tuple(injected), module, _location(factory), origin, dict(tags))

    @property
    def entries(self) -> Mapping[str, Entry]:
        """Every registered component, including those of plugins (loaded on first use)."""
        load_entry_points()
        return self._entries

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> Entry:
        return self.entries[name]

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style pattern, sorted."""
        return sorted(n for n in self.entries if fnmatch.fnmatchcase(n, pattern))

    def resolve(self, spec: Any, path: str) -> Resolved:
        """Complete and check a spec ``{name: ..., **params}`` in one pass, without building it.

        Returns the spec with its name and every parameter, given or default, in
        signature order (nested specs resolved in turn): what a run's resolved config
        records and :meth:`instantiate` builds. And every problem with it: unknown or
        injected keys, missing parameters, values that do not match their annotations.

        Example:
            >>> spec, problems = flows.resolve({"name": "iaf", "hidden_features": 8}, "flow")
            >>> spec["hidden_layers"], problems
            (2, [])
        """
        if not isinstance(spec, Mapping):
            return spec, [Problem(path, f"expected a mapping with a 'name' key choosing a {self.kind}")]
        name = spec.get("name", self.default)
        if name is None:
            return spec, [Problem(f"{path}.name", f"missing. {did_you_mean('', self.list(), kind=self.kind + 's')}")]
        if not isinstance(name, str):
            return spec, [Problem(f"{path}.name", f"expected the name of a {self.kind}, got {name!r}")]
        if name not in self.entries:
            return spec, [Problem(f"{path}.name", f"unknown {self.kind} '{name}'. {did_you_mean(name, self.list())}")]
        entry = self.entries[name]
        problems: list[Problem] = []
        given = {}
        for key, value in spec.items():  # in the order written, so problems are reported in that order
            if key == "name":
                continue
            if key in entry.injected or key in self.injected:
                problems.append(Problem(f"{path}.{key}", "is set by the model from the rest of the config; remove it"))
            elif key not in entry.parameters:
                hint = did_you_mean(key, entry.parameters, kind=f"parameters of {self.kind} '{name}'")
                problems.append(Problem(f"{path}.{key}", f"unknown parameter. {hint}"))
            else:
                given[key], found = resolve_value(value, entry.parameters[key].annotation, f"{path}.{key}")
                problems += found
        resolved: dict[str, Any] = {"name": name}
        for param in entry.parameters.values():
            if param.name in given:
                resolved[param.name] = given[param.name]
            elif param.required:
                problems.append(Problem(f"{path}.{param.name}", f"missing (expected {describe(param.annotation)})"))
            else:
                resolved[param.name], found = resolve_value(_yaml(param.default), param.annotation,
                                                            f"{path}.{param.name}")
                problems += found
        return resolved, problems

    def instantiate(self, spec: Mapping[str, Any], path: str, **injected: Any) -> Any:
        """Build the component of a resolved spec (see :meth:`resolve`), passing the injected
        values it accepts; nothing is checked again.

        Raises:
            ConfigError: the component rejected its values (a ``ValueError``), located at
                ``path``; or parts it builds from specs of their own did, reported by it
                with paths relative to its own spec (``flows[0]``) and here under ``path``.
        """
        entry = self.entries[spec.get("name", self.default)]
        params = {k: _plain(v) for k, v in spec.items() if k != "name"}
        params.update({k: v for k, v in injected.items() if k in entry.injected})
        try:
            return entry.factory(**params)
        except ConfigError as error:
            raise ConfigError([Problem(_within(path, p.path), p.message) for p in error.problems]) from error
        except ValueError as error:
            raise ConfigError([Problem(path, f"{self.kind} '{entry.name}': {error}")]) from error

    def build(self, spec: Mapping[str, Any], path: str, **injected: Any) -> Any:
        """Resolve a spec written by hand and build its component (:meth:`resolve`, then :meth:`instantiate`).

        Raises:
            ConfigError: listing every problem with the spec, or the component rejected its values.
        """
        resolved, problems = self.resolve(spec, path)
        if problems:
            raise ConfigError(problems)
        return self.instantiate(resolved, path, **injected)


def _plain(value: Any) -> Any:
    """YAML lists become tuples so components can hash and compare them."""
    return tuple(_plain(v) for v in value) if isinstance(value, list) else value


def _yaml(value: Any) -> Any:
    """A default as a fresh config value: tuples become lists, mappings are copied."""
    if isinstance(value, (tuple, list)):
        return [_yaml(v) for v in value]
    return {k: _yaml(v) for k, v in value.items()} if isinstance(value, Mapping) else value


def _within(path: str, relative: str) -> str:
    """``relative`` (a path inside the spec at ``path``) as a full key path."""
    if not relative:
        return path
    return f"{path}{relative}" if relative.startswith("[") else f"{path}.{relative}"


def _location(factory: Callable[..., Any]) -> str:
    try:
        file = inspect.getsourcefile(factory)
        line = inspect.getsourcelines(factory)[1]
        where = f" ({file}:{line})"
    except (OSError, TypeError):
        where = ""
    return f"{factory.__module__}.{factory.__qualname__}{where}"


encoders = Registry("encoder", injected=("input_shape",))
decoders = Registry("decoder", injected=("latent_size", "output_shape"))
posteriors = Registry("posterior", injected=("in_features", "latent_size"))
priors = Registry("prior", injected=("latent_size",))
flows = Registry("flow", injected=("features", "context_features"))
likelihoods = Registry("likelihood")
datasets = Registry("dataset")
blocks = Registry("block", injected=("width", "latent_channels", "downsample", "top"))
models = Registry("model", injected=("data_shape",), default="vae")

REGISTRIES: dict[str, Registry] = {
    "encoders": encoders,
    "decoders": decoders,
    "posteriors": posteriors,
    "priors": priors,
    "flows": flows,
    "likelihoods": likelihoods,
    "datasets": datasets,
    "blocks": blocks,
    "models": models,
}

register_encoder = encoders.register
register_decoder = decoders.register
register_posterior = posteriors.register
register_prior = priors.register
register_flow = flows.register
register_likelihood = likelihoods.register
register_dataset = datasets.register
register_block = blocks.register
register_model = models.register

list_encoders = encoders.list
list_decoders = decoders.list
list_posteriors = posteriors.list
list_priors = priors.list
list_flows = flows.list
list_likelihoods = likelihoods.list
list_datasets = datasets.list
list_blocks = blocks.list
list_models = models.list


def get_registry(kind: str) -> Registry:
    """The registry for a kind, by plural name ("flows") or singular ("flow")."""
    for plural, registry in REGISTRIES.items():
        if kind in (plural, registry.kind):
            return registry
    raise FlowzooError(f"unknown component kind '{kind}'. {did_you_mean(kind, REGISTRIES)}")
