"""Experiment configs: YAML files, ``key=value`` overrides, ``${...}`` interpolation, validation.

A config is checked as a whole before anything is built or written, and every
problem is reported at once with its key path::

    invalid config (configs/mnist_iaf.yaml): 2 problems
      model.flows[0].name: unknown flow 'iaff'. Did you mean 'iaf'? Available: iaf, ...
      trainer.epoch: unknown key 'epoch'. Did you mean 'epochs'? Available keys: ...

A YAML file may start from another with ``base: other.yaml`` (a path relative to the
file): its keys are merged over the base's, lists replaced whole. Modules listed under
``plugins:`` are imported before validation so that the components they register can
be named in the rest of the config.
"""

from __future__ import annotations

__all__ = ["ExperimentConfig", "load_config"]

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, Iterable, Mapping

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flowzoo.errors import ConfigError, Problem, did_you_mean
from flowzoo.evaluation import EvalConfig
from flowzoo.plugins import import_modules
from flowzoo.registry import datasets, models
from flowzoo.runs import LoggingConfig
from flowzoo.schema import Checked, check_value, section_problems, with_defaults
from flowzoo.trainer import TrainerConfig


def _check_name(value: Any, path: str) -> list[Problem]:
    """A string that can name a directory inside ``output_dir``."""
    problems = check_value(value, str, path)
    if not problems and ("/" in value or "\\" in value):
        problems.append(Problem(path, f"expected a name without '/' or '\\' for the run directory, got {value!r}"))
    return problems


@dataclasses.dataclass(kw_only=True)
class ExperimentConfig:
    """The whole experiment: what data, which model, how to train and evaluate it."""

    name: Annotated[str, Checked(_check_name, "a name for the run directory")] = "experiment"
    """Names the run directory ``<output_dir>/<name>-<timestamp>``."""
    plugins: list[str] = dataclasses.field(default_factory=list)
    """Local modules to import first; they register components named in this config."""
    seed: int = 0
    """Seeds model initialisation, posterior sampling and data order."""
    output_dir: str = "runs"
    """Where run directories are created."""
    data: datasets.spec = dataclasses.field(default_factory=lambda: {"name": "binarized_mnist"})
    """The data set (``flowzoo list datasets``)."""
    model: models.spec
    """The model (``flowzoo list models``); without ``name``, the flat ``vae``."""
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)


def load_config(source: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> DictConfig:
    """Load, override, complete, resolve and validate an experiment config.

    Args:
        source: a YAML file or a mapping (a plain dict or a ``DictConfig``).
        overrides: ``key=value`` strings; keys are dotted paths with list indices
            (``model.flows[0].hidden_features=64``), values are YAML.

    Returns:
        The resolved config with every default filled in.

    Raises:
        ConfigError: listing every problem found.

    Example:
        >>> config = load_config({"model": {"latent_size": 8, "encoder": {"name": "mlp"},
        ...                                 "decoder": {"name": "mlp"}}}, ["trainer.epochs=3"])
        >>> config.trainer.epochs, config.model.posterior.name
        (3, 'diagonal_gaussian')
        >>> load_config({"model": {"latent_size": 8}, "trainer": {"epoch": 3}})
        Traceback (most recent call last):
        ...
        flowzoo.errors.ConfigError: invalid config: 3 problems
          model.encoder: missing (expected an encoder spec)
          model.decoder: missing (expected a decoder spec)
          trainer.epoch: unknown key 'epoch'. Did you mean 'epochs'? Available keys: ...
    """
    label = str(source) if isinstance(source, (str, Path)) else None
    raw = _read(source, label)
    problems = _apply_overrides(raw, overrides)
    # Plugins first: the components they register are completed and checked like the rest.
    problems += import_modules(_plugin_modules(raw))
    completed = OmegaConf.create(with_defaults(ExperimentConfig, OmegaConf.to_container(raw, resolve=False)))
    problems += _interpolation_problems(completed, "", _all_keys(completed))
    if problems:
        raise ConfigError(problems, label)
    plain = OmegaConf.to_container(completed, resolve=True)
    problems = section_problems(ExperimentConfig, plain, "")
    if problems:
        raise ConfigError(problems, label)
    return OmegaConf.create(plain)


def _plugin_modules(raw: DictConfig) -> list[str]:
    """The ``plugins`` list, if it is one of names (otherwise validation reports it)."""
    try:
        modules = OmegaConf.to_container(raw, resolve=True).get("plugins", [])
    except OmegaConfBaseException:  # an interpolation problem, reported with the others
        return []
    return modules if isinstance(modules, list) and all(isinstance(m, str) for m in modules) else []


BASE_KEY = "base"


def _read(source: str | Path | Mapping[str, Any], label: str | None, chain: tuple[Path, ...] = ()) -> DictConfig:
    in_base = f" in {source}" if chain else ""  # a problem in a base file names that file
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            where = f"{chain[-1]}: {BASE_KEY}" if chain else ""
            raise ConfigError([Problem(where, f"no config file at {path}")], label)
        try:
            loaded = OmegaConf.load(path)
        except yaml.YAMLError as error:
            raise ConfigError([Problem("", f"not valid YAML{in_base}: {_yaml_message(error)}")], label) from None
        except UnicodeDecodeError as error:
            raise ConfigError([Problem("", f"not UTF-8 text{in_base}: {error}")], label) from None
        except OmegaConfBaseException as error:  # e.g. a malformed ${...}, located by full_key
            message = str(error).splitlines()[0] + in_base
            raise ConfigError([Problem(error.full_key or "", message)], label) from None
    else:
        loaded = OmegaConf.create(source if isinstance(source, DictConfig) else dict(source))
    if not isinstance(loaded, DictConfig):
        message = f"the top level{in_base} must be a mapping of sections (name, data, model, ...)"
        raise ConfigError([Problem("", message)], label)
    if BASE_KEY not in loaded:
        return loaded
    base = loaded.pop(BASE_KEY)
    if not isinstance(source, (str, Path)) or not isinstance(base, str):
        raise ConfigError([Problem(BASE_KEY, "expected the path of a YAML file, relative to this one")], label)
    base_path = (path.parent / base).resolve()
    if base_path in chain or base_path == path.resolve():
        raise ConfigError([Problem(BASE_KEY, f"{base} is already a base of this config (a cycle)")], label)
    return OmegaConf.merge(_read(base_path, label, (*chain, path.resolve())), loaded)


def _yaml_message(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _apply_overrides(config: DictConfig, overrides: Iterable[str]) -> list[Problem]:
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(Problem("", f"override '{item}' is not of the form key=value"))
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            problems.append(Problem(key, f"cannot parse override value {text!r}: {_yaml_message(error)}"))
            continue
        try:
            OmegaConf.update(config, key, value, merge=False)
        except (OmegaConfBaseException, TypeError) as error:  # TypeError: a non-integer list index
            problems.append(Problem(key, f"cannot apply override: {str(error).splitlines()[0]}"))
    return problems


def _all_keys(node: Any, path: str = "") -> list[str]:
    """Every dotted key path in a config, for "did you mean" on interpolations."""
    keys = [path] if path else []
    if isinstance(node, DictConfig):
        for key in node.keys():
            keys += _all_keys(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            keys += _all_keys(node._get_node(i), f"{path}[{i}]")
    return keys


def _interpolation_problems(node: Any, path: str, keys: list[str]) -> list[Problem]:
    problems = []
    if isinstance(node, DictConfig):
        children = [(key, f"{path}.{key}" if path else str(key)) for key in node.keys()]
    elif isinstance(node, ListConfig):
        children = [(i, f"{path}[{i}]") for i in range(len(node))]
    else:
        return problems
    for key, child_path in children:
        try:
            value = node[key]
        except OmegaConfBaseException as error:
            raw = node._get_node(key)._value()
            message = str(error).splitlines()[0]
            missing = re.search(r"Interpolation key '([^']+)' not found", message)
            hint = f" {did_you_mean(missing.group(1), keys, kind='keys')}" if missing else ""
            problems.append(Problem(child_path, f"cannot resolve {raw!r}: {message}.{hint}"))
            continue
        problems += _interpolation_problems(value, child_path, keys)
    return problems
