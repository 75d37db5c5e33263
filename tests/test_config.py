"""Config loading, overrides, interpolation and whole-config validation."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

import flowzoo.registry
from flowzoo.config import load_config
from flowzoo.errors import ConfigError
from flowzoo.experiment import train
from flowzoo.registry import Registry, flows
from flowzoo.vae import build_model

from conftest import FIXTURES, REPO, run_cli, tiny_config

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def problems(source, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load_config(source, overrides)
    return [str(p) for p in error.value.problems]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_build(path):
    config = load_config(path)
    model = build_model(config.model, (1, 28, 28))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_mnist_iaf_is_the_documented_architecture():
    config = load_config(REPO / "configs" / "mnist_iaf.yaml")
    model = build_model(config.model, (1, 28, 28))
    steps = [type(step).__name__ for step in model.flows._transforms]
    assert steps == ["GatedIAF", "ReversePermutation"] * 3 + ["GatedIAF"]
    made = model.flows._transforms[0].autoregressive_net
    assert config.model["latent_size"] == 32
    assert made.initial_layer.out_features == 320 and len(made.blocks) == 1  # 2 hidden layers of 320


def test_unknown_flow_name_gets_path_and_suggestion():
    (message,) = problems(REPO / "configs" / "mnist_iaf.yaml", ["model.flows[0].name=iaff"])
    assert message.startswith("model.flows[0].name: unknown flow 'iaff'. Did you mean 'iaf'? Available: ")
    assert "reverse" in message


def test_every_problem_is_reported_at_once():
    found = problems(
        REPO / "configs" / "mnist_iaf.yaml",
        [
            "trainer.epoch=3",
            "trainer.lr=-1",
            "model.encoder.name=convv",
            "model.flows[0].hidden_featres=10",
            "model.flows[0].features=5",
            "model.latent_size=0",
            "eval.split=train",
        ],
    )
    assert len(found) == 7, found
    text = "\n".join(found)
    assert "trainer.epoch: unknown key 'epoch'. Did you mean 'epochs'?" in text
    assert "trainer.lr: expected a number > 0, got -1" in text
    assert "model.encoder.name: unknown encoder 'convv'. Did you mean 'conv'?" in text
    assert "model.flows[0].hidden_featres: unknown parameter. Did you mean 'hidden_features'?" in text
    assert "model.flows[0].features: is set by the model" in text
    assert "model.latent_size: expected an integer ≥ 1, got 0" in text
    assert "eval.split: expected one of 'test', 'valid', got 'train'" in text


def test_overrides_reach_list_items_and_parse_yaml_values():
    config = load_config(
        REPO / "configs" / "mnist_iaf.yaml",
        ["model.flows[0].hidden_features=64", "model.encoder.channels=[8, 16]", "trainer.device=cpu"],
    )
    assert config.model["flows"][0]["hidden_features"] == 64
    assert list(config.model["decoder"]["channels"]) == [8, 16]  # follows the interpolation
    assert config.trainer.device == "cpu"


def test_component_override_replaces_the_whole_spec():
    overrides = ["model.encoder={name: mlp}", "model.decoder={name: mlp}"]
    config = load_config(REPO / "configs" / "mnist_vae.yaml", overrides)
    assert config.model["encoder"] == {"name": "mlp", "hidden_sizes": [300, 300],
                                                            "activation": "elu"}  # no key left from `conv`


def test_the_resolved_config_records_every_default_of_nested_specs():
    config = load_config(REPO / "configs" / "cifar_vae.yaml")
    assert config.model["block"] == {"name": "gaussian", "kernel_size": 3, "residual_scale": 0.1}
    assert config.data["download"] is True and config.data["valid_size"] is None
    mnist = load_config(REPO / "configs" / "mnist_iaf.yaml")
    assert mnist.model["name"] == "vae" and list(mnist.model)[0] == "name"
    assert mnist.model["flows"][0]["activation"] == "elu" and mnist.model["flows"][0]["repeat"] == 4


def test_interpolation_errors_name_the_key_and_suggest():
    (message,) = problems(REPO / "configs" / "mnist_vae.yaml", ["model.decoder.channels=${model.encoder.chanels}"])
    assert message.startswith("model.decoder.channels: cannot resolve '${model.encoder.chanels}'")
    assert "Did you mean 'model.encoder.channels'?" in message


def test_defaults_fill_in_and_can_be_interpolated():
    config = load_config(
        {"model": {"latent_size": 4, "encoder": {"name": "mlp"}, "decoder": {"name": "mlp"}},
         "eval": {"batch_size": "${trainer.batch_size}"}}
    )
    assert config.eval.batch_size == config.trainer.batch_size == 100
    assert config.data["name"] == "binarized_mnist" and config.model["flows"] == []


def test_bad_yaml_names_the_line(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodel:\n  latent_size: [32\n")
    (message,) = problems(path)
    assert "not valid YAML" in message and "line" in message


def test_malformed_override_is_reported():
    assert problems(REPO / "configs" / "mnist_vae.yaml", ["trainer.epochs"]) == [
        "override 'trainer.epochs' is not of the form key=value"
    ]


def test_bad_parameter_value_caught_when_building():
    with pytest.raises(ConfigError) as error:
        build_model({"latent_size": 4, "encoder": {"name": "conv", "hidden_sizes": []}, "decoder": {"name": "mlp"}},
                  (1, 28, 28))
    assert str(error.value.problems[0]).startswith("model.encoder: encoder 'conv': hidden_sizes must have")


def test_cli_reports_config_errors_without_traceback_or_run_directory(tmp_path: Path):
    result = run_cli("train", "configs/mnist_iaf.yaml", "model.flows[0].name=iaff", "trainer.epoch=1",
                     f"output_dir={tmp_path / 'runs'}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "model.flows[0].name: unknown flow 'iaff'. Did you mean 'iaf'?" in result.stderr
    assert "trainer.epoch: unknown key 'epoch'. Did you mean 'epochs'?" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_config_extends_its_base_and_replaces_lists(tmp_path: Path):
    (tmp_path / "parent.yaml").write_text(
        "name: parent\nmodel:\n  latent_size: 8\n  context_size: 4\n  encoder: {name: mlp}\n  decoder: {name: mlp}\n"
        "  flows: [{name: iaf, repeat: 2}, {name: reverse}]\ntrainer: {epochs: 7, lr: 0.01}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "base: ../parent.yaml\nname: child\nmodel:\n  flows: [{name: planar}]\ntrainer: {epochs: 2}\n"
    )
    config = load_config(tmp_path / "sub" / "child.yaml", ["trainer.lr=0.5"])
    assert config.name == "child" and config.model["latent_size"] == 8 and config.model["context_size"] == 4
    assert [f["name"] for f in config.model["flows"]] == ["planar"]
    assert (config.trainer.epochs, config.trainer.lr) == (2, 0.5)
    assert "base" not in dataclasses.asdict(config)


def test_a_spec_naming_another_component_replaces_the_base_spec_in_yaml_as_on_the_command_line(tmp_path: Path):
    mlp = "{name: mlp, hidden_sizes: [128]}"
    (tmp_path / "mlp.yaml").write_text(f"base: {REPO / 'configs' / 'mnist_vae.yaml'}\n"
                                       f"model:\n  encoder: {mlp}\n  decoder: {mlp}\n")
    in_yaml = load_config(tmp_path / "mlp.yaml")
    on_the_command_line = load_config(REPO / "configs" / "mnist_vae.yaml",
                                      [f"model.encoder={mlp}", f"model.decoder={mlp}"])
    for part in ("encoder", "decoder"):
        assert in_yaml.model[part] == on_the_command_line.model[part] == {
            "name": "mlp", "hidden_sizes": [128], "activation": "elu"}
    # The same component keeps the base's parameters: only the keys given change.
    (tmp_path / "wider.yaml").write_text(f"base: {REPO / 'configs' / 'mnist_vae.yaml'}\n"
                                         "model:\n  encoder: {name: conv, hidden_sizes: [600]}\n")
    base = load_config(REPO / "configs" / "mnist_vae.yaml").model["encoder"]
    assert load_config(tmp_path / "wider.yaml").model["encoder"] == {**base, "hidden_sizes": [600]}


def test_numbers_in_exponent_notation_are_numbers_in_files_and_overrides(tmp_path: Path):
    (tmp_path / "lr.yaml").write_text(f"base: {REPO / 'configs' / 'mnist_iaf.yaml'}\ntrainer: {{lr: 3e-4}}\n")
    assert load_config(tmp_path / "lr.yaml").trainer.lr == pytest.approx(3e-4)
    config = load_config(REPO / "configs" / "mnist_iaf.yaml", ["trainer.lr=2e-3", "trainer.grad_clip=1E+2"])
    assert (config.trainer.lr, config.trainer.grad_clip) == (pytest.approx(2e-3), 100.0)
    assert problems(REPO / "configs" / "mnist_iaf.yaml", ["trainer.lr=3e-4x"]) == [
        "trainer.lr: expected a number > 0, got '3e-4x'"]


def test_shipped_family_configs_differ_from_their_base_only_in_flows():
    vae = load_config(REPO / "configs" / "mnist_vae.yaml")
    for name in ("planar", "sylvester", "householder", "radial"):
        config = load_config(REPO / "configs" / f"mnist_{name}.yaml")
        assert config.model["encoder"] == vae.model["encoder"] and config.model["decoder"] == vae.model["decoder"]
        assert config.trainer == vae.trainer and config.model["flows"]


def test_a_missing_or_cyclic_base_is_reported(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    assert any("(a cycle)" in p for p in problems(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    assert any("no config file at" in p and "nowhere.yaml" in p for p in problems(tmp_path / "c.yaml"))


def test_a_flow_parameter_from_the_command_line_is_checked_once_on_its_way_to_the_flow(tmp_path, monkeypatch):
    """From load_config through building the data set and the model, training and the
    final evaluation, the flow spec is resolved once and its overridden value checked once."""
    resolved_specs, checked_values = Counter(), Counter()
    resolve_spec, resolve_value = Registry.resolve, flowzoo.registry.resolve_value

    def counting_resolve_spec(registry, spec, path):
        resolved_specs[path] += 1
        return resolve_spec(registry, spec, path)

    def counting_resolve_value(value, annotation, path):
        checked_values[path] += 1
        return resolve_value(value, annotation, path)

    monkeypatch.setattr(Registry, "resolve", counting_resolve_spec)
    monkeypatch.setattr(flowzoo.registry, "resolve_value", counting_resolve_value)
    monkeypatch.syspath_prepend(str(FIXTURES))  # the subset_data plugin
    config = tiny_config(output_dir=str(tmp_path / "runs"), data={"train": 100, "valid": 50, "test": 50},
                         trainer={"epochs": 1, "batch_size": 50, "picture_count": 0, "tensorboard": False},
                         eval={"iw_samples": 1})
    run = train(load_config(config, ["model.flows[0].hidden_features=64"]))
    assert resolved_specs["model.flows[0]"] == 1 and resolved_specs["model"] == 1 and resolved_specs["data"] == 1
    assert checked_values["model.flows[0].hidden_features"] == 1
    built = flows.build({"name": "iaf", "hidden_features": 64}, "flow", features=8, context_features=16)
    first = run.model.flows._transforms[0]
    assert sum(p.numel() for p in first.parameters()) == sum(p.numel() for p in built.parameters())
