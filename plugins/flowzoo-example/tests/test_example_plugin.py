"""The plugin's own tests: its flow and its encoder keep flowzoo's contracts, and a VAE
built from its components by name trains on real binarized MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowzoo import load_config, train
from flowzoo.contracts import check_encoder
from flowzoo.flowcheck import check_flow
from flowzoo.registry import encoders, flows

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mnist_coupling.yaml"


@pytest.mark.parametrize("half", ["even", "odd"])
@pytest.mark.parametrize("context_features", [0, 3])
def test_affine_coupling_passes_the_flow_checker(half, context_features):
    check_flow({"name": "affine_coupling", "half": half, "hidden_features": 16},
               context_features=context_features).assert_passed()


@pytest.mark.parametrize("blocks", [0, 2])
def test_residual_mlp_keeps_the_encoder_contract(blocks):
    """Output (batch, out_features), gradients to every parameter, save/load (width from test_parameters)."""
    check_encoder({"name": "residual_mlp", "blocks": blocks}).assert_passed()


def test_components_are_found_through_the_entry_point():
    assert flows["affine_coupling"].origin.startswith("plugin flowzoo-example")
    assert encoders["residual_mlp"].origin.startswith("plugin flowzoo-example")


def test_a_few_training_steps_lower_the_loss(tmp_path):
    """One epoch of 50 steps (batch 1000) by name from YAML, through flowzoo's trainer."""
    config = load_config(CONFIG, ["trainer.epochs=1", "trainer.batch_size=1000", "trainer.log_every=10",
                                  "eval.iw_samples=2", f"output_dir={tmp_path}"])
    run = train(config)
    losses = [r["loss"] for r in run.dir.records() if r["kind"] == "train"]
    assert len(losses) >= 4 and losses[-1] < losses[0] - 50
    assert run.metrics["neg_elbo"] < losses[0]
