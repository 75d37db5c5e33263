"""Formats flowzoo wrote before, and how they are read today: old runs keep loading.

Everything flowzoo knows of its earlier names lives here. The redesign of issue 13
gave the autoregressive flows one MADE vocabulary, which renamed

- parameters in a saved run's ``config.yaml``: the nflows flows' ``num_blocks: n``
  (blocks after the first hidden layer) is ``hidden_layers: n + 1`` and their
  ``residual_blocks: true/false`` is ``residual``; ``iaf_resnet``'s count
  ``residual_blocks: n`` is ``hidden_layers: n + 1`` (``residual`` is on by
  default); the ResNet VAE's ``iaf`` block's ``ar_layers`` is ``hidden_layers``.
  :func:`saved_config` upgrades a saved config as it is read;
- the IAF steps' MADE, the submodule ``made`` that is nflows' ``autoregressive_net``
  now, so their checkpoint keys changed. :func:`load_old_iaf_states` lets an IAF step
  rename the keys of an old state as it loads it, whichever ``load_state_dict`` call
  reaches it (the model's in ``flowzoo eval``, the trainer's on resume, a user's).

Checkpoints written before the trainer had early stopping (issue 14) hold no
early-stopping state; :func:`early_stopping_state` reads theirs as nothing counted yet.

A user's own YAML is not upgraded silently: an old name there is an unknown
parameter whose "did you mean" (:data:`RENAMED_PARAMETERS`) gives the new one.
"""

from __future__ import annotations

__all__ = ["RENAMED_PARAMETERS", "upgrade_config", "saved_config", "rename_keys", "load_old_iaf_states",
           "early_stopping_state"]

import copy
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml
from torch import nn

RENAMED_PARAMETERS: dict[str, tuple[str, str]] = {
    "num_blocks": ("hidden_layers", "num_blocks + 1, as it counts the first hidden layer too"),
    "residual_blocks": ("residual", "true or false; iaf_resnet's count n is hidden_layers: n + 1"),
    "ar_layers": ("hidden_layers", "the same number"),
}
"""Component parameters renamed by issue 13: old name → (new name, how the value changes)."""


def _nflows_flow(spec: dict) -> None:
    _rename(spec, "num_blocks", "hidden_layers", lambda n: n + 1)
    _rename(spec, "residual_blocks", "residual", lambda on: on, kind=bool)


def _residual_iaf(spec: dict) -> None:
    _rename(spec, "residual_blocks", "hidden_layers", lambda n: n + 1)


def _iaf_block(spec: dict) -> None:
    _rename(spec, "ar_layers", "hidden_layers", lambda n: n)


_FLOW_UPGRADES: dict[str, Callable[[dict], None]] = {
    "masked_affine_autoregressive": _nflows_flow,
    "rq_spline_autoregressive": _nflows_flow,
    "iaf_resnet": _residual_iaf,
}
_BLOCK_UPGRADES: dict[str, Callable[[dict], None]] = {"iaf": _iaf_block}


def _rename(spec: dict, old: str, new: str, convert: Callable[[Any], Any], kind: type = int) -> None:
    """``spec[old]`` as ``spec[new]``, converted; a value of another type stays for validation to report."""
    value = spec.get(old)
    if type(value) is kind and new not in spec:
        spec[new] = convert(spec.pop(old))


def upgrade_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A saved run's config with the parameters renamed by issue 13 given their new names and values.

    Example:
        >>> old = {"model": {"flows": [{"name": "masked_affine_autoregressive", "num_blocks": 1,
        ...                             "residual_blocks": True}, {"name": "iaf_resnet", "residual_blocks": 2}]}}
        >>> for spec in upgrade_config(old)["model"]["flows"]:
        ...     print(spec)
        {'name': 'masked_affine_autoregressive', 'hidden_layers': 2, 'residual': True}
        {'name': 'iaf_resnet', 'hidden_layers': 3}
        >>> resnet = {"model": {"name": "resnet_vae", "block": {"name": "iaf", "ar_layers": 2}}}
        >>> upgrade_config(resnet)["model"]["block"]
        {'name': 'iaf', 'hidden_layers': 2}
    """
    config = copy.deepcopy(dict(config))
    model = config.get("model")
    if not isinstance(model, dict):
        return config
    for spec in model.get("flows") or []:
        if isinstance(spec, dict) and spec.get("name") in _FLOW_UPGRADES:
            _FLOW_UPGRADES[spec["name"]](spec)
    block = model.get("block")
    if isinstance(block, dict) and block.get("name") in _BLOCK_UPGRADES:
        _BLOCK_UPGRADES[block["name"]](block)
    return config


def saved_config(path: Path) -> Path | dict[str, Any]:
    """What to load for a run's saved ``config.yaml``: the file itself, or, where it uses
    names from before issue 13, its upgraded content (:func:`upgrade_config`).

    A file that is not a YAML mapping is returned as it is, for the config loader to
    report with its path.
    """
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return path
    if not isinstance(config, dict):
        return path
    upgraded = upgrade_config(config)
    return path if upgraded == config else upgraded


def rename_keys(state_dict: dict[str, Any], prefix: str, renamed: Mapping[str, str]) -> None:
    """Rename, in place, the keys of the submodules ``{old: new}`` of the module whose keys start with ``prefix``.

    Example:
        >>> state = {"flows.0.made.final_layer.bias": 1, "flows.0.made_up": 2}
        >>> rename_keys(state, "flows.0.", {"made": "autoregressive_net"})
        >>> state
        {'flows.0.made_up': 2, 'flows.0.autoregressive_net.final_layer.bias': 1}
    """
    for old, new in renamed.items():
        start = f"{prefix}{old}."
        for key in [key for key in state_dict if key.startswith(start)]:
            state_dict[f"{prefix}{new}.{key[len(start):]}"] = state_dict.pop(key)


def _rename_on_load(module: nn.Module, renamed: Mapping[str, str]) -> None:
    def hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        rename_keys(state_dict, prefix, renamed)

    module.register_load_state_dict_pre_hook(hook)


def load_old_iaf_states(module: nn.Module) -> None:
    """Let an IAF step load states saved before issue 13, whose MADE was the submodule ``made``."""
    _rename_on_load(module, {"made": "autoregressive_net"})


def early_stopping_state(checkpoint: Mapping[str, Any]) -> dict[str, int]:
    """A checkpoint's early-stopping state: the best epoch and the epochs after it that count toward the
    patience; for a checkpoint from before early stopping, none counted and the best epoch unknown (0).

    Example:
        >>> early_stopping_state({"step": 500})
        {'best_epoch': 0, 'stale_epochs': 0}
    """
    return dict(checkpoint.get("early_stopping", {"best_epoch": 0, "stale_epochs": 0}))
