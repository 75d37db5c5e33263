"""The Sylvester-flow authors' training recipe in the trainer: early stopping on the validation
−ELBO, KL warm-up in epochs, the optimizer's ε; with the early-stopping state in the checkpoints.

Runs train in this process on the first images of real static binarized MNIST
(tests/fixtures/subset_data.py); where a test needs a given validation curve, the
trainer's validation is replaced by one that returns it, epoch by epoch.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

import flowzoo
from flowzoo.checkpoint import load_checkpoint
from flowzoo.errors import ConfigError
from flowzoo.experiment import resume
from flowzoo.trainer import Trainer
from flowzoo.vae import VariationalModel

from conftest import FIXTURES, tiny_config

pytestmark = pytest.mark.usefixtures("shared_data_root")


@pytest.fixture(autouse=True)
def fixtures_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))  # the configs import subset_data


def quick_config(tmp_path, **trainer) -> dict:
    """One step of 50 images per epoch, nothing drawn: an epoch costs milliseconds. No Polyak average, as in the
    paper recipe, so that the weights validated are the weights trained."""
    return tiny_config(
        data={"train": 50, "valid": 50, "test": 50},
        trainer={"batch_size": 50, "picture_count": 0, "tensorboard": False, "checkpoint_every": 0, "ema_decay": 0.0,
                 **trainer},
        output_dir=str(tmp_path / "runs"),
    )


def records(run_dir, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


def authors_stopping_epoch(curve: list[float], patience: int, start: int, epochs: int) -> int:
    """The epoch after which the Sylvester-flow authors' loop ends (main_experiment.py lines 186-211
    of riannevdberg/sylvester-flows, their `warmup` as `start`), written out here independently."""
    best, e = float("inf"), 0
    for epoch in range(1, epochs + 1):
        loss = curve[epoch - 1]
        if loss < best:
            e, best = 0, loss
        elif patience > 0 and epoch >= start:
            e += 1
            if e > patience:
                return epoch
    return epochs


@pytest.fixture
def scripted_validation(monkeypatch):
    """Make the trainer's validation −ELBO follow ``curve``; record the weights at each epoch's end."""
    weights: list[dict[str, torch.Tensor]] = []
    curve: list[float] = []

    def validate(self: Trainer) -> dict[str, float]:
        metrics = {"neg_elbo": curve[self.epoch - 1], "recon": 0.0, "kl": curve[self.epoch - 1]}
        self.run.log("valid", step=self.step, epoch=self.epoch, **metrics)
        weights.append({key: value.clone() for key, value in self.model.state_dict().items()})
        return metrics

    monkeypatch.setattr(Trainer, "_validate", validate)
    return curve, weights


def test_early_stopping_stops_after_patience_plus_one_epochs_without_improvement(tmp_path, scripted_validation,
                                                                                 capsys):
    curve, weights = scripted_validation
    curve += [10.0, 9.0, 8.0, 8.5, 7.0, 7.5, 7.2, 7.1, 7.0, 6.9, 6.0, 5.0]  # best at 5; 9 ties it, which is no better
    run = flowzoo.train(quick_config(tmp_path, epochs=12, early_stopping_patience=3))
    assert [r["epoch"] for r in records(run.dir.path, "valid")] == list(range(1, 10))
    assert authors_stopping_epoch(curve, 3, 1, 12) == 9
    (stop,) = records(run.dir.path, "early_stop")
    assert (stop["epoch"], stop["best_epoch"], stop["best_valid_neg_elbo"], stop["stale_epochs"]) == (9, 5, 7.0, 4)
    best = load_checkpoint(run.dir.best)
    assert best["epoch"] == 5
    for key, value in weights[4].items():  # best.pt and the evaluated model hold epoch 5's weights
        assert torch.equal(best["model"][key], value) and torch.equal(run.model.state_dict()[key], value)
    assert not torch.equal(weights[4]["encoder.dense.0.weight"], weights[8]["encoder.dense.0.weight"])
    (test,) = records(run.dir.path, "eval")  # the tiny config evaluates the valid split
    assert test["epoch"] == 5
    console = " ".join(capsys.readouterr().out.split())  # rich wraps lines at the terminal's width
    assert "no improvement for 3/3 epochs" in console
    assert "early stopping after epoch 9: 4 epochs in a row without a validation −ELBO below 7.00, that of epoch 5" \
        in console


@pytest.mark.parametrize("seed", range(3))
def test_the_stopping_epoch_is_the_authors_on_random_curves(tmp_path, scripted_validation, seed):
    """With the count starting late, as theirs does after KL warm-up: epochs before the start never count."""
    curve, _ = scripted_validation
    rng = random.Random(seed)
    curve += [100 - epoch + rng.choice([-3, 3, 6]) for epoch in range(30)]
    expected = authors_stopping_epoch(curve, patience=2, start=8, epochs=30)
    assert expected < 30  # a curve that stops early, or the test says nothing
    run = flowzoo.train(quick_config(tmp_path, epochs=30, early_stopping_patience=2, early_stopping_start_epoch=8))
    assert max(r["epoch"] for r in records(run.dir.path, "valid")) == expected


def test_without_patience_every_epoch_runs(tmp_path, scripted_validation):
    curve, _ = scripted_validation
    curve += [5.0, 6.0, 7.0, 8.0]
    run = flowzoo.train(quick_config(tmp_path, epochs=4))
    assert len(records(run.dir.path, "valid")) == 4 and not records(run.dir.path, "early_stop")
    assert load_checkpoint(run.dir.best)["epoch"] == 1


def losses(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_second")}
            for kind in ("train", "valid", "early_stop", "eval") for r in records(run_dir, kind)]


def test_a_resumed_run_keeps_counting_toward_the_patience(tmp_path, scripted_validation):
    """Stopped by its epoch limit one epoch after its best, a run resumed with a higher limit stops
    where the uninterrupted run stops, with the same losses: the counter was in last.pt."""
    curve, _ = scripted_validation
    curve += [9.0, 8.0, 8.5, 8.4, 8.3, 8.2, 8.1, 8.0, 7.0]  # best at 2; 3 epochs without improvement end it at 5
    settings = {"log_every": 1, "early_stopping_patience": 2}
    whole = flowzoo.train(quick_config(tmp_path / "whole", epochs=9, **settings))
    part = flowzoo.train(quick_config(tmp_path / "part", epochs=3, **settings))
    assert load_checkpoint(part.dir.last)["early_stopping"] == {"best_epoch": 2, "stale_epochs": 1}
    resumed = resume(part.dir.path, ["trainer.epochs=9"])  # drops the records after last.pt: part's evaluation
    assert max(r["epoch"] for r in records(resumed.dir.path, "valid")) == 5
    assert len(records(resumed.dir.path, "early_stop")) == 1
    assert losses(resumed.dir.path) == losses(whole.dir.path)


def test_kl_warmup_in_epochs_weighs_every_step_of_an_epoch_alike(tmp_path, monkeypatch):
    weights = []
    forward = VariationalModel.forward

    def recording(self, x, kl_weight=1.0, free_bits=0.0):
        weights.append(float(kl_weight))
        return forward(self, x, kl_weight, free_bits)

    monkeypatch.setattr(VariationalModel, "forward", recording)
    config = quick_config(tmp_path, epochs=4, kl_warmup_epochs=3, log_every=1)
    config["data"]["train"] = 200  # four steps per epoch
    run = flowzoo.train(config)
    assert weights == pytest.approx([1 / 3] * 4 + [2 / 3] * 4 + [1.0] * 8)
    assert [r["kl_weight"] for r in records(run.dir.path, "train")] == pytest.approx(weights)


def test_kl_warmup_in_steps_and_in_epochs_together_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        flowzoo.load_config(tiny_config(trainer={"kl_warmup_steps": 100, "kl_warmup_epochs": 10}))
    assert "trainer.kl_warmup_epochs: the KL warm-up is given in steps or in epochs, not both" in str(error.value)
    assert "kl_warmup_steps is 100" in str(error.value)


def test_the_optimizer_uses_the_configured_eps(tmp_path):
    run = flowzoo.train(quick_config(tmp_path, epochs=1, optimizer_eps=1e-7))
    (group,) = load_checkpoint(run.dir.last)["optimizer"]["param_groups"]
    assert group["eps"] == 1e-7
