"""Experiment configs: the typed sections, and how a YAML file becomes one.

:func:`load_config` reads YAML with omegaconf, merges ``base:`` files and ``key=value``
overrides, fills in the sections' defaults and resolves ``${...}`` interpolations;
then one walk resolves every section: it completes and checks each value against
its annotation (component specs by their registries) and returns the typed
:class:`ExperimentConfig`, or every problem at once with its key path::

    invalid config (configs/mnist_iaf.yaml): 2 problems
      model.flows[0].name: unknown flow 'iaff'. Did you mean 'iaf'? Available: iaf, ...
      trainer.epoch: unknown key 'epoch'. Did you mean 'epochs'? Available keys: ...

A YAML file may start from another with ``base: other.yaml`` (a path relative to the
file): its keys are merged over the base's, lists replaced whole. Modules listed under
``plugins:`` are imported before validation so that the components they register can
be named in the rest of the config.
"""

from __future__ import annotations

__all__ = ["ExperimentConfig", "TrainerConfig", "EvalConfig", "LoggingConfig", "WandbConfig", "load_config",
           "yaml_value", "base_file"]

import dataclasses
import importlib.util
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Mapping

import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flowzoo.distributed import check_device
from flowzoo.errors import ConfigError, Problem, did_you_mean
from flowzoo.plugins import import_modules
from flowzoo.registry import datasets, models
from flowzoo.schedules import LR_SCHEDULES
from flowzoo.schema import (
    Checked,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    Resolved,
    UnitInterval,
    describe,
    resolve_value,
    show,
)

# Config sections are frozen keyword-only dataclasses: a field without a default is
# required, and each field's annotation is what its value is resolved against.


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """The ``trainer`` section."""

    epochs: PositiveInt = 100
    """Passes over the training set; with early stopping, the most there may be."""
    batch_size: PositiveInt = 100
    """Examples per step, over all processes together when distributed."""
    optimizer: Literal["adam", "adamax"] = "adam"
    """With ``lr`` and ``ema_decay``, the defaults that beat a plain Adam 1e-3 loop at every budget of 1-50
    epochs (benchmarks/equal_budget.py, docs/results.md); the IAF paper's Adamax is ``adamax``."""
    lr: PositiveFloat = 2e-3
    """Peak learning rate; twice plain Adam's usual 1e-3, which the Polyak average makes safe."""
    weight_decay: NonNegativeFloat = 0.0
    """L2 penalty of the optimizer."""
    optimizer_eps: PositiveFloat = 1e-8
    """ε of Adam and Adamax, added to the denominator of every update (PyTorch's default; the
    Sylvester-flow authors used 1e-7)."""
    lr_schedule: Literal[LR_SCHEDULES] = "constant"  # type: ignore[valid-type]
    """``constant``, or ``cosine``, ``linear`` or ``exponential`` decay to ``lr_final_ratio · lr`` at the last step."""
    lr_warmup_steps: NonNegativeInt = 0
    """Steps of linear learning-rate warm-up from 0."""
    lr_final_ratio: Annotated[float, Range(min=0, max=1, min_exclusive=True)] = 0.01
    """Learning rate at the last step of a decaying schedule, as a fraction of ``lr``."""
    kl_warmup_steps: NonNegativeInt = 0
    """Steps over which the KL term's weight grows linearly from 0 to 1 (0: no warm-up)."""
    kl_warmup_epochs: NonNegativeInt = 0
    """Epochs over which the KL term's weight grows: ``min(epoch / N, 1)`` in every step of epoch
    ``epoch`` (counted from 1), the Sylvester-flow authors' warm-up (0: none). Set this or
    ``kl_warmup_steps``, not both."""
    early_stopping_patience: NonNegativeInt = 0
    """Epochs in a row without a lower validation −ELBO that a run waits through: it stops after
    the next one, keeping the best epoch's weights (0: no early stopping)."""
    early_stopping_start_epoch: PositiveInt = 1
    """The first epoch (counted from 1) whose lack of improvement counts toward the patience; the
    Sylvester-flow authors count from the end of their KL warm-up."""
    free_bits: NonNegativeFloat = 0.0
    """Nats of KL per latent group that the loss does not push below (Kingma et al. 2016's λ)."""
    grad_clip: NonNegativeFloat = 0.0
    """Largest gradient norm; larger gradients are scaled down (0: no clipping)."""
    ema_decay: UnitInterval = 0.999
    """Decay of the Polyak average of the weights used for validation, test and pictures (0: off); averaging
    over about 1000 steps removes the noise of the larger learning rate from the evaluated weights."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast dtype of the forward pass; fp16 adds a gradient scaler. Weights stay fp32."""
    compile: bool = False
    """Compile the model's forward pass with ``torch.compile``."""
    cuda_graphs: bool = False
    """Capture the whole training step (forward, backward, guard, optimizer) in a CUDA graph
    and replay it: far fewer kernel launches for small models. CUDA only; fp32 or bf16."""
    data_on_device: Literal["auto", "always", "never"] = "auto"
    """Keep the training set on the GPU (auto: when it takes under a quarter of the free memory);
    otherwise batches are copied from pinned memory."""
    device: Annotated[str, Checked(check_device, "'auto', 'cpu', 'cuda' or 'cuda:N'")] = "auto"
    """``auto`` is CUDA when there is a GPU, else the CPU."""
    log_every: PositiveInt = 100
    """Steps between train records in metrics.jsonl and updates of the progress bar."""
    checkpoint_every: NonNegativeInt = 1000
    """Steps between checkpoints to last.pt, besides the one at each epoch's end (0: epoch ends only)."""
    max_bad_steps: PositiveInt = 20
    """Consecutive steps with a non-finite loss or gradient (each skipped) before rolling back to last.pt."""
    max_rollbacks: NonNegativeInt = 3
    """Rollbacks before the run stops with an error."""
    picture_count: NonNegativeInt = 64
    """Images in each epoch's sample and reconstruction grids (0: none)."""
    tensorboard: bool = True
    """Also write scalars and images as TensorBoard events under the run directory."""

    def check(self, path: str) -> list[Problem]:
        """Problems of keys together (each alone was checked against its type), each at the key to change."""
        problems = []
        if self.kl_warmup_steps and self.kl_warmup_epochs:
            problems.append(Problem(_join(path, "kl_warmup_epochs"), "the KL warm-up is given in steps or in epochs, "
                                    f"not both: kl_warmup_steps is {self.kl_warmup_steps}; set one of the two to 0"))
        if not self.cuda_graphs:
            return problems
        key = _join(path, "cuda_graphs")
        if self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available()):
            problems.append(Problem(key, "CUDA graphs need a CUDA device, and this run would be on the CPU; "
                                         "set trainer.cuda_graphs=false"))
        if self.compile:
            problems.append(Problem(key, "trainer.compile and trainer.cuda_graphs both take over the step; "
                                         "choose one"))
        if self.precision == "fp16":
            problems.append(Problem(key, "the fp16 gradient scaler's step is not captured; "
                                         "use trainer.precision=bf16 (no scaler) or fp32"))
        return problems


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """The ``eval`` section."""

    iw_samples: PositiveInt = 100
    """K, the importance samples per example for −log p(x); the literature uses 5000."""
    batch_size: PositiveInt = 100
    """Examples per batch."""
    max_batch: PositiveInt | None = None
    """Most (example, sample) pairs decoded in one pass; null: 500 on the CPU (on 2 cores 500
    evaluated 1.6× faster than 10,000: larger passes spend their time in page faults),
    20,000 on a GPU, where a pass of a few hundred images is mostly kernel launches."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Autocast dtype of the evaluation's passes; the sums stay in float64.
    benchmarks/iwae_eval.py measures how far bf16 moves the estimates."""
    split: Literal["test", "valid"] = "test"
    """Split evaluated at the end of training and by ``flowzoo eval``."""
    seed: int = 1234
    """Seed of the evaluation's own random stream, so numbers repeat exactly."""


def _check_wandb_project(value: Any, path: str) -> Resolved:
    """A W&B project name, or null; a name needs the wandb package."""
    value, problems = resolve_value(value, str | None, path)
    if not problems and value is not None and importlib.util.find_spec("wandb") is None:
        problems.append(Problem(path, "W&B logging needs the wandb package: pip install 'flowzoo[wandb]' "
                                      "(or leave logging.wandb.project null)"))
    return value, problems


@dataclasses.dataclass(frozen=True, kw_only=True)
class WandbConfig:
    """The ``logging.wandb`` section: a Weights & Biases run beside each run (``pip install 'flowzoo[wandb]'``)."""

    project: Annotated[str | None, Checked(_check_wandb_project, "a W&B project name or null")] = None
    """W&B project to log to; null: no W&B logging."""
    entity: str | None = None
    """W&B user or team; null: your default entity."""
    group: str | None = None
    """W&B group, e.g. one per setting of a sweep so that its seeds are shown together."""
    tags: list[str] = dataclasses.field(default_factory=list)
    """Tags of the W&B run."""
    mode: Literal["online", "offline"] = "online"
    """``offline``: write the W&B run under the run directory only, for ``wandb sync`` later."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    """The ``logging`` section: where a run reports besides metrics.jsonl and TensorBoard."""

    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)


def _check_name(value: Any, path: str) -> Resolved:
    """A string that can name a directory inside ``output_dir``."""
    value, problems = resolve_value(value, str, path)
    if not problems and ("/" in value or "\\" in value):
        problems.append(Problem(path, f"expected a name without '/' or '\\' for the run directory, got {value!r}"))
    return value, problems


@dataclasses.dataclass(frozen=True, kw_only=True)
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


def load_config(source: str | Path | Mapping[str, Any] | ExperimentConfig,
                overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Load, override, complete, resolve and validate an experiment config.

    Args:
        source: a YAML file, a mapping (a plain dict or a ``DictConfig``), or a config
            this function returned (given back as it is when there are no overrides).
        overrides: ``key=value`` strings; keys are dotted paths with list indices
            (``model.flows[0].hidden_features=64``), values are YAML.

    Returns:
        The resolved config: typed sections, and the ``data`` and ``model`` specs as
        plain dicts with every default filled in.

    Raises:
        ConfigError: listing every problem found.

    Example:
        >>> config = load_config({"model": {"latent_size": 8, "encoder": {"name": "mlp"},
        ...                                 "decoder": {"name": "mlp"}}}, ["trainer.epochs=3"])
        >>> config.trainer.epochs, config.model["posterior"]["name"]
        (3, 'diagonal_gaussian')
        >>> load_config({"model": {"latent_size": 8}, "trainer": {"epoch": 3}})
        Traceback (most recent call last):
        ...
        flowzoo.errors.ConfigError: invalid config: 3 problems
          model.encoder: missing (expected an encoder spec)
          model.decoder: missing (expected a decoder spec)
          trainer.epoch: unknown key 'epoch'. Did you mean 'epochs'? Available keys: ...
    """
    overrides = list(overrides)
    if isinstance(source, ExperimentConfig):
        if not overrides:
            return source
        source = dataclasses.asdict(source)
    label = str(source) if isinstance(source, (str, Path)) else None
    raw = _read(source, label)
    problems = _apply_overrides(raw, overrides)
    problems += [Problem(key, "may not read environment variables (${oc.env:...}): the run directory's path "
                         "would carry their values into logs and reports; write the value itself")
                 for key in RUN_PATH_KEYS if _reads_environment(raw, key)]
    _add_section_defaults(raw, ExperimentConfig)
    plain = _interpolated(raw, "", _all_keys(raw), problems)
    # Plugins first: the components they register are resolved like the rest.
    problems += import_modules(_plugin_modules(plain))
    if problems:
        raise ConfigError(problems, label)
    config, problems = _resolve_section(ExperimentConfig, plain, "")
    if problems:
        raise ConfigError(problems, label)
    return config


RUN_PATH_KEYS = ("name", "output_dir")
"""The keys that make up a run directory's path."""

_REFERENCE = re.compile(r"\$\{([\w.\[\]-]+)\}")


def _reads_environment(raw: DictConfig, key: str, depth: int = 0) -> bool:
    """Whether the value at dotted ``key``, or a value it interpolates, reads ``${oc.env:...}``."""
    node: Any = raw
    for part in key.split("."):
        node = node._get_node(part) if isinstance(node, DictConfig) and part in node else None
    text = str(node._value()) if node is not None else ""
    return "oc.env" in text or (depth < 10 and any(_reads_environment(raw, reference, depth + 1)
                                                   for reference in _REFERENCE.findall(text)))


def _add_section_defaults(node: DictConfig, section: type) -> None:
    """Give ``node`` the defaults of the section's fields it lacks, nested sections key by
    key, before interpolation, so that ``${trainer.batch_size}`` can name a default. (A
    component's parameter defaults depend on its resolved name: the registry adds them.)"""
    hints = typing.get_type_hints(section, include_extras=True)
    for field in dataclasses.fields(section):
        present = field.name in node.keys()
        if dataclasses.is_dataclass(hints[field.name]):
            if not present:
                node[field.name] = {}
            if isinstance(node._get_node(field.name), DictConfig):  # else: reported when resolved
                _add_section_defaults(node[field.name], hints[field.name])
        elif not present and field.default is not dataclasses.MISSING:
            node[field.name] = field.default
        elif not present and field.default_factory is not dataclasses.MISSING:
            node[field.name] = field.default_factory()


def _resolve_section(section: type, value: Any, path: str) -> Resolved:
    """The section's instance and every problem with ``value`` as one: unknown keys (with
    the closest valid key), missing keys, and each field's problems (see
    :func:`~flowzoo.schema.resolve_value`); nested sections in turn; then, once every value is
    valid, the section's ``conflicts`` between values (where it has the method)."""
    if not isinstance(value, Mapping):
        return value, [Problem(path, f"expected a mapping, got {show(value)}")]
    fields = {field.name: field for field in dataclasses.fields(section)}
    hints = typing.get_type_hints(section, include_extras=True)
    problems = [Problem(_join(path, key), f"unknown key '{key}'. {did_you_mean(key, fields, kind='keys')}")
                for key in value if key not in fields]
    resolved = {}
    for name in fields:
        if name not in value:  # a required field: the others were given their defaults before interpolation
            problems.append(Problem(_join(path, name), f"missing (expected {describe(hints[name])})"))
            continue
        if dataclasses.is_dataclass(hints[name]):
            resolved[name], found = _resolve_section(hints[name], value[name], _join(path, name))
        else:
            resolved[name], found = resolve_value(value[name], hints[name], _join(path, name))
        problems += found
    if problems:
        return value, problems
    instance = section(**resolved)
    problems = instance.check(path) if hasattr(instance, "check") else []
    return (instance if not problems else value), problems


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _plugin_modules(plain: Mapping[str, Any]) -> list[str]:
    """The ``plugins`` list, if it is one of names (otherwise validation reports it)."""
    modules = plain.get("plugins", [])
    return modules if isinstance(modules, list) and all(isinstance(m, str) for m in modules) else []


BASE_KEY = "base"

MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 10_000
"""Limits on a config file and on each override value: far above any real config, far below
what a YAML anchor bomb expands to (aliases make a small file a huge tree). The node limit is
omegaconf's own for files (``max_yaml_expanded_nodes``), applied here to overrides too."""


def _too_large(value: Any) -> bool:
    """Whether ``value``, with every alias expanded, has more than :data:`MAX_CONFIG_NODES` nodes
    (counted without expanding them)."""
    pending, count = [value], 0
    while pending:
        node = pending.pop()
        count += 1
        if count > MAX_CONFIG_NODES:
            return True
        if isinstance(node, dict):
            pending += node.values()
        elif isinstance(node, list):
            pending += node
    return False


def _check_bounds(text: str, where: str) -> None:
    """Refuse YAML ``text`` (an override's) above the limits, before omegaconf expands it."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([Problem(where, f"{len(text):,} characters: configs are limited to {MAX_CONFIG_BYTES:,}")])
    if _too_large(yaml.safe_load(text)):
        raise ConfigError([Problem(where, f"expands to more than {MAX_CONFIG_NODES:,} values (YAML anchors "
                                   "and aliases repeated?); configs are limited to that")])


def _read(source: str | Path | Mapping[str, Any], label: str | None, chain: tuple[Path, ...] = ()) -> DictConfig:
    in_base = f" in {source}" if chain else ""  # a problem in a base file names that file
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            where = f"{chain[-1]}: {BASE_KEY}" if chain else ""
            raise ConfigError([Problem(where, f"no config file at {path}")], label)
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                message = f"{path.stat().st_size:,} bytes{in_base}: config files are limited to {MAX_CONFIG_BYTES:,}"
                raise ConfigError([Problem("", message)], label)
            loaded = OmegaConf.load(path, max_yaml_expanded_nodes=MAX_CONFIG_NODES)
        except OSError as error:
            raise ConfigError([Problem("", f"cannot read {path}: {error.strerror or error}")], label) from None
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
    return _merged(_read(base_path, label, (*chain, path.resolve())), loaded)


def _merged(base: DictConfig, config: DictConfig) -> DictConfig:
    """``config`` merged over its base: mappings key by key and lists replaced whole, except
    that a component spec naming another component than the base's (its ``name`` differs, or
    the base's has none) replaces the base's spec whole, as it does on the command line:
    the base's parameters belong to the other component."""
    _drop_replaced_specs(base, config)
    return OmegaConf.merge(base, config)


def _drop_replaced_specs(base: DictConfig, config: DictConfig) -> None:
    for key in config.keys():
        new, old = config._get_node(key), base._get_node(key) if key in base else None
        if not (isinstance(new, DictConfig) and isinstance(old, DictConfig)):
            continue
        if "name" in new and ("name" not in old or new._get_node("name")._value() != old._get_node("name")._value()):
            del base[key]
        else:
            _drop_replaced_specs(old, new)  # specs inside specs: the model's encoder, a block, ...


def base_file(path: str | Path) -> Path | None:
    """The file a YAML config starts from (its ``base:``, relative to it), or None.

    Example:
        >>> base_file("configs/mnist_planar.yaml")
        PosixPath('configs/mnist_vae.yaml')
    """
    base = OmegaConf.load(path).get(BASE_KEY)
    return Path(path).parent / base if base is not None else None


def _yaml_message(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


class _ValueLoader(yaml.SafeLoader):
    """PyYAML's safe loader, whose YAML 1.1 floats need a dot (``3e-4`` is a string there),
    with the floats of YAML 1.2 that omegaconf also reads in files: ``3e-4`` is a number."""


# add_implicit_resolver would append to lists shared with yaml.SafeLoader: copy them first.
_ValueLoader.yaml_implicit_resolvers = {first: list(resolvers)
                                        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_ValueLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def yaml_value(text: str) -> Any:
    """A value written on the command line (``key=value``), read as a config file's values are.

    Raises:
        yaml.YAMLError: ``text`` is not YAML.

    Example:
        >>> yaml_value("3e-4"), yaml_value("[64, 64]"), yaml_value("{name: mlp}"), yaml_value("1e3x")
        (0.0003, [64, 64], {'name': 'mlp'}, '1e3x')
    """
    return yaml.load(text, Loader=_ValueLoader)


def _apply_overrides(config: DictConfig, overrides: Iterable[str]) -> list[Problem]:
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(Problem("", f"override '{item}' is not of the form key=value"))
            continue
        try:
            _check_bounds(text, key)
            value = yaml_value(text)
        except ConfigError as error:
            problems += error.problems
            continue
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


def _interpolated(node: Any, path: str, keys: list[str], problems: list[Problem]) -> Any:
    """``node`` as plain dicts and lists with every ``${...}`` resolved; each that cannot be
    is added to ``problems`` (with the closest key, for one that names no key) and left out."""
    if isinstance(node, DictConfig):
        children, plain = [(key, _join(path, key)) for key in node.keys()], {}
    elif isinstance(node, ListConfig):
        children, plain = [(i, f"{path}[{i}]") for i in range(len(node))], []
    else:
        return node
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
        value = _interpolated(value, child_path, keys, problems)
        if isinstance(plain, dict):
            plain[key] = value
        else:
            plain.append(value)
    return plain
