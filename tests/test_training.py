"""Training end to end through the command line, on real static binarized MNIST."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from flowzoo.checkpoint import load_checkpoint
from flowzoo.evaluation import evaluate
from flowzoo.experiment import load_run
from flowzoo.vae import build_model

from conftest import run_cli


def records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_training_lowers_the_loss_on_real_data(tiny_run):
    run_dir, _ = tiny_run
    train = records(run_dir, "train")
    assert [r["step"] for r in train] == list(range(50, 501, 50))  # 500 steps of 100 images
    first, last = train[0]["loss"], train[-1]["loss"]
    assert last < first - 50, (first, last)
    assert all(r["neg_elbo"] == pytest.approx(r["recon"] + r["kl"], rel=1e-5) for r in train)


def test_trained_model_beats_its_initialisation_on_validation(tiny_run):
    run_dir, _ = tiny_run
    config, trained, dataset = load_run(run_dir)
    valid = dataset.load("valid")[:500]
    torch.manual_seed(config.seed)  # the same initialisation the run started from
    untrained = build_model(config.model, dataset.shape)
    before = evaluate(untrained, valid, iw_samples=1)["neg_elbo"]
    after = evaluate(trained, valid, iw_samples=1)["neg_elbo"]
    assert after < before - 100, (before, after)


def test_run_directory_holds_config_metrics_and_checkpoints(tiny_run):
    run_dir, result = tiny_run
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["flows"][0]["hidden_features"] == 64
    assert saved["model"]["decoder"]["channels"] == [16, 32]  # stored resolved
    best = load_checkpoint(run_dir / "best.pt")
    assert set(best) >= {"model", "optimizer", "step", "epoch", "rng", "config"}
    assert best["step"] == 500 and best["epoch"] == 1 and best["config"] == saved
    (valid,) = records(run_dir, "valid")
    (test,) = records(run_dir, "test")
    assert test["iw_samples"] == 10 and test["examples"] == 10_000
    assert test["nll_iw"] <= test["neg_elbo"]
    assert best["best_valid"] == valid["neg_elbo"]


def test_console_shows_summary_progress_and_test_metrics(tiny_run):
    _, result = tiny_run
    out = result.stdout
    for text in ("mnist_iaf", "encoder", "flows", "CompositeTransform", "total", "epoch 1: valid −ELBO",
                 "test metrics", "−ELBO", "reconstruction −log p(x|z)", "KL term", "IWAE −log p(x) (K=10)"):
        assert text in out, text


def test_eval_command_evaluates_the_saved_run(tiny_run):
    run_dir, _ = tiny_run
    result = run_cli("eval", str(run_dir), "eval.iw_samples=3", "eval.split=valid")
    assert result.returncode == 0, result.stderr
    assert "valid metrics" in result.stdout and "IWAE −log p(x) (K=3)" in result.stdout
    (logged,) = [r for r in records(run_dir, "eval") if r["iw_samples"] == 3]
    assert logged["split"] == "valid" and logged["examples"] == 10_000


def test_eval_refuses_to_change_the_model(tiny_run):
    run_dir, _ = tiny_run
    result = run_cli("eval", str(run_dir), "model.latent_size=3")
    assert result.returncode == 2 and "only eval.* and trainer.device" in result.stderr


def test_eval_of_a_corrupt_checkpoint_is_a_clear_error(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    broken = tmp_path / "broken_run"
    broken.mkdir()
    (broken / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (broken / "best.pt").write_bytes((run_dir / "best.pt").read_bytes()[:5000])
    result = run_cli("eval", str(broken))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "best.pt is not a readable flowzoo checkpoint" in result.stderr


def test_eval_of_a_directory_that_is_not_a_run(tmp_path):
    result = run_cli("eval", str(tmp_path))
    assert result.returncode == 2 and "is not a flowzoo run directory" in result.stderr


def test_list_command():
    result = run_cli("list", "flows", "i*")
    assert result.returncode == 0 and "iaf" in result.stdout and "reverse" not in result.stdout
    result = run_cli("list", "flowz")
    assert result.returncode == 2 and "Did you mean 'flows'?" in result.stderr
