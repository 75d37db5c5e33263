"""Registration, listing, and building user components by name."""

from __future__ import annotations

import pytest
import torch
from nflows.transforms import Transform

from flowzoo.config import load_config
from flowzoo.errors import ConfigError, Problem
from flowzoo.registry import REGISTRIES, RegistryError, flows, get_registry, list_flows, models, register_flow
from flowzoo.schema import describe
from flowzoo.vae import build_model


@pytest.fixture
def scratch_flows(monkeypatch):
    """Registrations made in a test disappear after it."""
    monkeypatch.setattr(flows, "_entries", dict(flows._entries))


def test_list_with_pattern():
    assert list_flows("iaf") == ["iaf"]
    assert set(list_flows("*perm*")) == {"random_permutation"}
    assert list_flows() == sorted(list_flows())


def test_duplicate_name_names_both_places(scratch_flows):
    with pytest.raises(RegistryError) as error:

        @register_flow("iaf")
        class Impostor(Transform):
            def __init__(self, features: int):
                super().__init__()

    message = str(error.value)
    assert "flowzoo.flows.iaf.GatedIAF" in message and "Impostor" in message and "iaf.py" in message


def test_components_must_have_explicit_parameters(scratch_flows):
    with pytest.raises(RegistryError, match=r"\*\*kwargs"):

        @register_flow("loose")
        def loose(features: int, **kwargs):
            return None


def test_custom_flow_used_by_name_from_a_config(scratch_flows):
    @register_flow("scale")
    class Scale(Transform):
        """Multiply z by a learned positive scale."""

        def __init__(self, features: int, init: float = 1.0):
            super().__init__()
            self.log_scale = torch.nn.Parameter(torch.full((features,), float(init)).log())

        def forward(self, z, context=None):
            return z * self.log_scale.exp(), self.log_scale.sum().expand(len(z))

    config = load_config(
        {"model": {"latent_size": 3, "encoder": {"name": "mlp"}, "decoder": {"name": "mlp"},
                   "flows": [{"name": "scale", "init": 2.0}]}}
    )
    model = build_model(config.model, (1, 28, 28))
    assert isinstance(model.flows._transforms[0], Scale)
    with pytest.raises(ConfigError, match=r"model.flows\[0\].init: expected a number, got 'big'"):
        load_config({"model": {"latent_size": 3, "encoder": {"name": "mlp"}, "decoder": {"name": "mlp"},
                               "flows": [{"name": "scale", "init": "big"}]}})


def test_registry_by_kind_name():
    assert get_registry("flows") is get_registry("flow") is flows


@pytest.mark.parametrize("kind, name", [(kind, name) for kind, registry in REGISTRIES.items()
                                        for name in registry.list()])
def test_every_default_is_a_valid_value_of_its_parameter(kind, name):
    """The defaults a resolved config records must pass the checks a config's values do."""
    registry = REGISTRIES[kind]
    _, problems = registry.resolve({"name": name}, kind)  # every default is filled in and checked
    required = [p for p in registry[name].parameters.values() if p.required]
    assert problems == [Problem(f"{kind}.{p.name}", f"missing (expected {describe(p.annotation)})")
                        for p in required]


def test_a_spec_without_a_name_is_the_registrys_default():
    assert models.default == "vae"
    spec, _ = models.resolve({"latent_size": 2, "encoder": {"name": "mlp"}, "decoder": {"name": "mlp"}}, "model")
    assert list(spec)[:2] == ["name", "latent_size"] and spec["name"] == "vae"
    assert spec["posterior"] == {"name": "diagonal_gaussian"} and spec["flows"] == []
    assert spec["encoder"]["hidden_sizes"] == [300, 300]  # nested specs are completed too
    with pytest.raises(ConfigError, match="model.name: missing"):
        flows.build({"features": 2}, "model")
