"""The trainer under faults: kills, NaNs, resumption, several processes; and what it writes.

Runs go through the real command line in fresh processes, on the first few thousand
images of real static binarized MNIST (tests/fixtures/subset_data.py).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from flowzoo.checkpoint import load_checkpoint, save_checkpoint
from flowzoo.errors import CheckpointError
from flowzoo.experiment import load_run

from conftest import FIXTURES, REPO, tiny_config

pytestmark = pytest.mark.usefixtures("shared_data_root")

ENV = {"PYTHONPATH": str(FIXTURES), "OMP_NUM_THREADS": "1", "COLUMNS": "120"}


def write_config(tmp_path: Path, **sections) -> Path:
    config = tiny_config(**sections, output_dir=str(tmp_path / "runs"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowzoo.cli", *args]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), cwd=cwd, env={**os.environ, **ENV}, capture_output=True, text=True,
                          timeout=600)


def the_run(tmp_path: Path) -> Path:
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


def records(run_dir: Path, *kinds: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] in kinds]


def losses(run_dir: Path) -> list[dict]:
    """The records a deterministic rerun must reproduce: all but wall-clock figures."""
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_second")}
            for r in records(run_dir, "train", "valid", "eval")]


def finite(checkpoint: dict) -> bool:
    weights = [*checkpoint["model"].values(), *checkpoint.get("ema", {}).values()]
    return all(torch.isfinite(w).all() for w in weights if w.is_floating_point())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    result = run("train", str(write_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    return the_run(tmp_path)


def test_a_run_killed_mid_epoch_resumes_to_the_same_losses(uninterrupted, tmp_path):
    config = write_config(tmp_path)
    process = subprocess.Popen(command("train", str(config)), cwd=REPO, env={**os.environ, **ENV},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:  # kill well inside epoch 2 of 3
        runs = list((tmp_path / "runs").glob("*/metrics.jsonl"))
        if runs and any(r["step"] >= 170 for r in records(runs[0].parent, "train")):
            break
        time.sleep(0.01)
    assert process.poll() is None, f"training ended before it could be killed: {process.stderr.read()}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = the_run(tmp_path)
    state = load_checkpoint(run_dir / "last.pt")
    assert state["epoch"] == 1 and 0 < state["batch_in_epoch"] < 120, "not a mid-epoch checkpoint"

    result = run("resume", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert f"resuming {run_dir} at step {state['step']}" in result.stdout
    assert losses(run_dir) == losses(uninterrupted)
    assert load_checkpoint(run_dir / "last.pt")["step"] == 360
    assert [r["step"] for r in records(run_dir, "start")] == [0, state["step"]]  # the report's train time skips the gap


def test_train_resume_flag_continues_the_newest_run_and_refuses_a_changed_config(uninterrupted, tmp_path):
    (tmp_path / "runs").mkdir()
    copy = tmp_path / "runs" / uninterrupted.name
    subprocess.run(["cp", "-r", str(uninterrupted), str(copy)], check=True)
    config = write_config(tmp_path)
    changed = run("train", str(config), "model.latent_size=4", "--resume")
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert "model.latent_size: is 4 here but 8 in" in changed.stderr
    longer = run("train", str(config), "trainer.epochs=4", "--resume")
    assert longer.returncode == 0, longer.stderr
    assert f"resuming {copy} at step 360 (epoch 4" in longer.stdout
    assert [r["epoch"] for r in records(copy, "valid")] == [1, 2, 3, 4]
    assert yaml.safe_load((copy / "config.yaml").read_text())["trainer"]["epochs"] == 4


def test_resume_refuses_model_changes_and_missing_runs(tmp_path):
    result = run("train", str(write_config(tmp_path)), "--resume")
    assert result.returncode == 2 and "no run of 'tiny' with a checkpoint" in result.stderr
    result = run("resume", str(tmp_path), "model.latent_size=3")
    assert result.returncode == 2 and "is not a flowzoo run directory" in result.stderr


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    writer = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from flowzoo.checkpoint import save_checkpoint\n"
        "for step in range(1000):\n"
        "    weights = {'w': torch.full((8_000_000,), float(step))}\n"
        "    save_checkpoint({'model': weights, 'step': step}, Path(sys.argv[1]))\n"
        "    print(step, flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", writer, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "0"  # one complete checkpoint exists
    partial = tmp_path / "last.pt.partial"
    while not partial.exists():  # the next write has begun
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert partial.exists(), "the kill should have interrupted a write"
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.full((8_000_000,), float(state["step"])))
    with pytest.raises(CheckpointError, match="not a readable flowzoo checkpoint"):
        load_checkpoint(partial)


def test_poisoned_batches_are_skipped_and_no_checkpoint_holds_nan(tmp_path):
    config = write_config(tmp_path, data={"poison": [3, 1500]})
    result = run("train", str(config))
    assert result.returncode == 0, result.stderr
    run_dir = the_run(tmp_path)
    skipped = records(run_dir, "skipped")
    assert len(skipped) == 2 * 3  # two poisoned batches in each of three epochs
    assert all(math.isfinite(r["loss"]) for r in records(run_dir, "train"))
    for name in ("best.pt", "last.pt"):
        assert finite(load_checkpoint(run_dir / name)), name
    assert records(run_dir, "eval")[0]["neg_elbo"] < 250


def test_repeated_failures_roll_back_to_the_last_checkpoint(tmp_path):
    config = write_config(tmp_path, data={"poison": [3]}, trainer={"max_bad_steps": 1, "max_rollbacks": 5})
    result = run("train", str(config))
    assert result.returncode == 0, result.stderr
    run_dir = the_run(tmp_path)
    rollbacks = records(run_dir, "rollback")
    assert len(rollbacks) == 3 and all(r["to_step"] <= r["step"] for r in rollbacks)
    assert "consecutive non-finite steps at step" in result.stdout and "restored the weights of step" in result.stdout
    assert finite(load_checkpoint(run_dir / "last.pt"))


def test_a_run_that_keeps_failing_stops_with_a_clear_error(tmp_path):
    config = write_config(tmp_path, data={"poison": [3]}, trainer={"max_bad_steps": 1, "max_rollbacks": 0})
    result = run("train", str(config))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "training diverged" in result.stderr and "trainer.grad_clip" in result.stderr


def test_two_processes_with_gloo_match_one_process_on_the_same_global_batch(uninterrupted, tmp_path):
    config = write_config(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "flowzoo.cli", "train", str(config)],
        cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test metrics") + result.stdout.count("valid metrics") == 1  # rank 0 alone prints
    run_dir = the_run(tmp_path)
    assert len(load_checkpoint(run_dir / "last.pt")["rng"]["ranks"]) == 2
    single, double = records(uninterrupted, "train"), records(run_dir, "train")
    assert [r["step"] for r in double] == [r["step"] for r in single]  # 120 global batches of 25 per epoch
    for key in ("neg_elbo", "kl"):
        one = records(uninterrupted, "eval")[0][key]
        two = records(run_dir, "eval")[0][key]
        assert two == pytest.approx(one, rel=0.05), key
    assert double[-1]["loss"] == pytest.approx(single[-1]["loss"], rel=0.05)


def test_run_directory_has_pictures_tensorboard_and_schedules(tmp_path, monkeypatch):
    trainer = {"lr": 1e-3, "lr_schedule": "cosine", "lr_warmup_steps": 20, "kl_warmup_steps": 100,
               "ema_decay": 0.99, "epochs": 2}
    result = run("train", str(write_config(tmp_path, trainer=trainer)))
    assert result.returncode == 0, result.stderr
    run_dir = the_run(tmp_path)
    from PIL import Image

    for epoch in (1, 2):
        assert Image.open(run_dir / "images" / f"samples-epoch00{epoch}.png").size[0] > 28 * 4
        assert Image.open(run_dir / "images" / f"reconstructions-epoch00{epoch}.png").size[0] > 56 * 4
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "valid/neg_elbo"} <= set(events.Tags()["scalars"])
    assert {"samples", "reconstructions"} <= set(events.Tags()["images"])
    train = records(run_dir, "train")
    lr = {r["step"]: r["lr"] for r in train}
    assert lr[10] == pytest.approx(0.5e-3) and lr[20] == pytest.approx(1e-3)  # warm-up
    assert lr[240] < lr[130] < lr[30]  # cosine decay
    weights = {r["step"]: r["kl_weight"] for r in train}
    assert weights[50] == 0.5 and weights[100] == 1.0
    assert all(r["loss"] < r["neg_elbo"] for r in train if r["step"] <= 90)  # KL down-weighted
    best = load_checkpoint(run_dir / "best.pt")
    assert set(best) >= {"model", "ema", "optimizer", "scheduler", "scaler", "rng", "config", "step", "epoch"}
    key = "encoder.dense.0.weight"
    assert not torch.equal(best["ema"][key], best["model"][key])
    monkeypatch.syspath_prepend(str(FIXTURES))  # the run's config imports subset_data
    _, evaluated, _ = load_run(run_dir)  # `flowzoo eval` evaluates the averaged weights
    assert torch.equal(evaluated.state_dict()[key], best["ema"][key])
    assert "Polyak-averaged" in result.stdout


def test_save_checkpoint_replaces_atomically(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {}, "step": 1}, path)
    save_checkpoint({"model": {}, "step": 2}, path)
    assert load_checkpoint(path)["step"] == 2 and not (tmp_path / "c.pt.partial").exists()


def test_compile_and_bf16_autocast_run_on_the_cpu_too(tmp_path):
    result = run("train", str(write_config(tmp_path, trainer={"epochs": 1, "compile": True, "precision": "bf16"})))
    assert result.returncode == 0, result.stderr
    train = records(the_run(tmp_path), "train")
    assert all(math.isfinite(r["loss"]) for r in train) and train[-1]["loss"] < train[0]["loss"] - 50


def test_dynamically_binarized_mnist_trains_on_fresh_binary_samples(tmp_path):
    config = write_config(tmp_path, plugins=[], trainer={"epochs": 1, "batch_size": 500, "log_every": 20})
    data_root = os.environ.get("FLOWZOO_DATA_ROOT", REPO.parent / "shared" / "data")
    result = run("train", str(config), f"data={{name: mnist_dynamic, root: {data_root}}}")
    assert result.returncode == 0, result.stderr
    train = records(the_run(tmp_path), "train")
    # Raw grey levels 0..255 would cost thousands of nats per image under a Bernoulli likelihood.
    assert len(train) == 5 and all(r["recon"] < 784 * math.log(2) for r in train[1:])
    assert train[-1]["loss"] < train[0]["loss"]


def test_a_non_finite_validation_ends_the_run_as_a_training_error_and_keeps_last_pt(tmp_path):
    config = write_config(tmp_path, data={"poison_valid": [7]}, trainer={"epochs": 2})
    result = run("train", str(config))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "the validation −ELBO is nan after epoch 1" in result.stderr and "best.pt" not in result.stderr
    run_dir = the_run(tmp_path)
    assert not (run_dir / "best.pt").exists()
    last = load_checkpoint(run_dir / "last.pt")  # the checkpoint before the bad validation: resumable
    assert finite(last) and last["epoch"] == 0
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()

    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    (valid,) = [r for r in (json.loads(line, parse_constant=no_constants) for line in lines) if r["kind"] == "valid"]
    assert valid["neg_elbo"] is None and valid["epoch"] == 1


def test_records_at_the_same_step_share_one_epoch_number(uninterrupted):
    by_step = {}
    for record in records(uninterrupted, "train", "valid"):
        by_step.setdefault(record["step"], set()).add(record["epoch"])
    ends = [r["step"] for r in records(uninterrupted, "valid")]
    assert ends and all(len(by_step[step]) == 1 for step in ends), by_step
    assert [r["epoch"] for r in records(uninterrupted, "valid")] == [1, 2, 3]
    assert min(r["epoch"] for r in records(uninterrupted, "train")) == 1
