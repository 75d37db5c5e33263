"""Runs written before the redesign of issue 13 still load, evaluate to the metrics they logged, and resume.

The run directories in tests/fixtures/legacy_runs were written by commit 5093cd8 with
the old parameter names and module layout (see their README.md); flowzoo.legacy reads
them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import FIXTURES
from flowzoo import evaluate_run, train
from flowzoo.contracts import build
from flowzoo.errors import ConfigError
from flowzoo.ema import EMA
from flowzoo.flows import AffineIAF, GatedIAF, ResidualGatedIAF
from flowzoo.legacy import saved_config
from flowzoo.vae import build_model

RUNS = sorted(path for path in (FIXTURES / "legacy_runs").iterdir() if path.is_dir())
RECORD_KEYS = ("kind", "time", "step", "epoch", "split")  # what a record says besides the metrics
IAF_STEPS = (GatedIAF, AffineIAF)  # the modules renamed by issue 13 (ResidualGatedIAF is a GatedIAF)


def flat(metrics: dict, prefix: str = "") -> dict:
    """Nested metrics (``kl_per_layer``) as one level of keys, for pytest.approx."""
    return {name: number for key, value in metrics.items()
            for name, number in (flat(value, f"{prefix}{key}/") if isinstance(value, dict)
                                 else {f"{prefix}{key}": value}).items()}


def logged_test_metrics(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (test,) = [record for record in records if record["kind"] == "test"]
    return flat({key: value for key, value in test.items() if key not in RECORD_KEYS})


@pytest.fixture(params=RUNS, ids=[run.name for run in RUNS])
def old_run(request, tmp_path) -> Path:
    """A copy of one legacy run directory (evaluating it appends to its metrics.jsonl)."""
    return Path(shutil.copytree(request.param, tmp_path / request.param.name))


def test_an_old_run_evaluates_to_the_metrics_it_logged(old_run):
    """Same weights, same evaluation seed and K: the same numbers, to rounding."""
    expected = logged_test_metrics(old_run)
    metrics = evaluate_run(old_run)
    assert flat(metrics) == pytest.approx(expected, rel=1e-9, abs=0)


def test_the_old_configs_use_every_renamed_parameter():
    """The fixtures exercise each rename that flowzoo.legacy upgrades."""
    flat, resnet = (yaml.safe_load((FIXTURES / "legacy_runs" / name / "config.yaml").read_text())
                    for name in ("legacy_flat", "legacy_resnet"))
    old_keys = {(spec["name"], key) for spec in flat["model"]["flows"] for key in spec}
    assert {("iaf_resnet", "residual_blocks"), ("masked_affine_autoregressive", "num_blocks"),
            ("masked_affine_autoregressive", "residual_blocks"), ("rq_spline_autoregressive", "num_blocks")} <= old_keys
    assert "ar_layers" in resnet["model"]["block"]


def test_saved_configs_are_upgraded_to_the_new_names_and_values():
    flat = saved_config(FIXTURES / "legacy_runs" / "legacy_flat" / "config.yaml")
    by_name = {spec["name"]: spec for spec in flat["model"]["flows"]}
    assert by_name["iaf_resnet"]["hidden_layers"] == 2  # residual_blocks: 1
    assert by_name["masked_affine_autoregressive"]["hidden_layers"] == 2  # num_blocks: 1
    assert by_name["masked_affine_autoregressive"]["residual"] is True  # residual_blocks: true
    assert by_name["rq_spline_autoregressive"]["hidden_layers"] == 3  # num_blocks: 2
    assert by_name["rq_spline_autoregressive"]["residual"] is False
    assert not {"num_blocks", "residual_blocks"} & {key for spec in by_name.values() for key in spec}
    resnet = saved_config(FIXTURES / "legacy_runs" / "legacy_resnet" / "config.yaml")
    assert resnet["model"]["block"]["hidden_layers"] == 1 and "ar_layers" not in resnet["model"]["block"]


def test_a_config_with_todays_names_is_read_as_it_is(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {"flows": [{"name": "iaf_resnet", "hidden_layers": 2}]}}))
    assert saved_config(path) == path
    path.write_text("name: broken\n\tmodel: {}\n")  # left for the config loader to report, with the path
    assert saved_config(path) == path


def test_an_old_run_resumes_from_its_checkpoint(old_run):
    """``flowzoo train --resume`` with today's names finds the old run, whose trainer state and
    weights (old keys) load; with no epoch left it evaluates the same best weights again."""
    runs = old_run.parent / "runs"
    copy = Path(shutil.copytree(old_run, runs / f"{old_run.name}-20250101-000000"))
    shutil.copy(copy / "best.pt", copy / "last.pt")  # best.pt is a full checkpoint of the last epoch
    config = {**saved_config(copy / "config.yaml"), "output_dir": str(runs)}
    run = train(config, resume=True)
    assert run.dir.path == copy
    assert flat(run.metrics) == pytest.approx(logged_test_metrics(old_run), rel=1e-9, abs=0)
    assert "hidden_layers" in (copy / "config.yaml").read_text()  # saved again, with today's names


def old_layout(module: torch.nn.Module, state: dict) -> dict:
    """``module``'s state as flowzoo wrote it before issue 13: each IAF step's MADE under
    ``made`` (nflows' own transforms kept ``autoregressive_net``)."""
    steps = [f"{name}." if name else "" for name, part in module.named_modules() if isinstance(part, IAF_STEPS)]

    def old(key: str) -> str:
        step = next((prefix for prefix in steps if key.startswith(f"{prefix}autoregressive_net.")), None)
        return key if step is None else f"{step}made.{key[len(step) + len('autoregressive_net.'):]}"

    return {old(key): value for key, value in state.items()}


@pytest.mark.parametrize("flow_class", [GatedIAF, ResidualGatedIAF, AffineIAF])
def test_an_iaf_step_loads_a_state_saved_with_the_old_key_names(flow_class):
    torch.manual_seed(0)
    saved = flow_class(features=4, context_features=3, hidden_features=8)
    old = old_layout(saved, saved.state_dict())
    assert any(key.startswith("made.") for key in old) and not any("autoregressive_net" in key for key in old)
    torch.manual_seed(1)
    fresh = flow_class(features=4, context_features=3, hidden_features=8)
    fresh.load_state_dict(old)  # strict: every key found, none left over
    z, h = torch.randn(5, 4), torch.randn(5, 3)
    for a, b in zip(saved(z, context=h), fresh(z, context=h)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


SPEC = {"latent_size": 4, "context_size": 3, "encoder": {"name": "mlp", "hidden_sizes": [8]},
        "decoder": {"name": "mlp", "hidden_sizes": [8]},
        "flows": [{"name": "iaf", "hidden_features": 8, "repeat": 2, "between": "reverse"},
                  {"name": "masked_affine_autoregressive", "hidden_features": 8}]}
"""A VAE with IAF steps (renamed modules) and an nflows transform (not renamed)."""


def test_a_model_loads_old_keys_of_the_iaf_steps_it_holds():
    """The remap works through any load_state_dict that reaches the step: here the whole VAE's."""
    torch.manual_seed(0)
    saved = build_model(SPEC, (1, 4, 4))
    old = old_layout(saved, saved.state_dict())
    assert "flows._transforms.0.made.final_layer.weight" in old
    assert "flows._transforms.3.autoregressive_net.final_layer.weight" in old  # nflows' transform, not renamed
    torch.manual_seed(1)
    fresh = build_model(SPEC, (1, 4, 4))
    fresh.load_state_dict(old)
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)


def test_the_polyak_average_in_an_old_checkpoint_loads():
    """A resumed run's EMA reads its averaged weights through the model, so the old IAF keys load there too."""
    torch.manual_seed(0)
    model = build_model(SPEC, (1, 4, 4))
    average = EMA(model, decay=0.9)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    average.update(step=100)
    torch.manual_seed(1)
    fresh = EMA(build_model(SPEC, (1, 4, 4)), decay=0.9)
    fresh.load_state_dict(old_layout(model, average.state_dict()))
    assert fresh.shadow.keys() == average.shadow.keys()
    for key, value in average.shadow.items():
        torch.testing.assert_close(fresh.shadow[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("old, new, hint", [
    ({"name": "masked_affine_autoregressive", "num_blocks": 1}, "hidden_layers", "num_blocks + 1"),
    ({"name": "rq_spline_autoregressive", "num_blocks": 1}, "hidden_layers", "num_blocks + 1"),
    ({"name": "masked_affine_autoregressive", "residual_blocks": True}, "residual", "true or false"),
    ({"name": "iaf_resnet", "residual_blocks": 1}, "residual", "hidden_layers: n + 1"),
])
def test_an_old_name_in_a_users_spec_points_at_the_new_one(old, new, hint):
    """A user's YAML is not upgraded silently: the old name is unknown, and the message names its successor."""
    with pytest.raises(ConfigError) as error:
        build("flows", old, features=4, context_features=0)
    (problem,) = error.value.problems
    assert "unknown parameter" in problem.message and f"Did you mean '{new}'?" in problem.message, problem
    assert hint in problem.message


def test_an_old_block_parameter_points_at_the_new_one():
    with pytest.raises(ConfigError) as error:
        build_model({"name": "resnet_vae", "width": 4, "latent_channels": 2,
                     "block": {"name": "iaf", "ar_layers": 2}}, (1, 8, 8))
    (problem,) = error.value.problems
    assert problem.path == "model.block.ar_layers" and "Did you mean 'hidden_layers'?" in problem.message
