"""Shared fixtures. Real data is found through $FLOWZOO_DATA_ROOT (CI: ../shared/data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
collect_ignore = ["fixtures"]  # modules imported by the configs of subprocess runs, not tests


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """The folder holding the canonical data files; tests needing them skip without it."""
    root = Path(os.environ.get("FLOWZOO_DATA_ROOT", REPO.parent / "shared" / "data"))
    if not (root / "binarized_mnist" / "binarized_mnist_test.amat").is_file():
        pytest.skip(f"canonical binarized MNIST files not found under {root}; set FLOWZOO_DATA_ROOT")
    return root


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``flowzoo ARGS`` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "flowzoo.cli", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "120", **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )


# A tiny experiment on the first images of real static binarized MNIST
# (tests/fixtures/subset_data.py, imported from FIXTURES): 120 steps of 25 per epoch,
# seconds on a CPU. Tests change it with tiny_config.
TINY = {
    "name": "tiny",
    "plugins": ["subset_data"],
    "data": {"name": "mnist_subset", "train": 3000, "valid": 500, "test": 500},
    "model": {
        "latent_size": 8,
        "context_size": 16,
        "encoder": {"name": "mlp", "hidden_sizes": [64]},
        "decoder": {"name": "mlp", "hidden_sizes": [64]},
        "flows": [{"name": "iaf", "hidden_features": 32, "repeat": 2, "between": "reverse"}],
    },
    "trainer": {"epochs": 3, "batch_size": 25, "log_every": 10, "checkpoint_every": 40, "device": "cpu",
                "picture_count": 16},
    "eval": {"iw_samples": 2, "split": "valid"},
}


def tiny_config(**sections) -> dict:
    """A copy of :data:`TINY` with sections changed: a mapping updates the section's keys, anything else replaces it."""
    config = json.loads(json.dumps(TINY))
    for key, changes in sections.items():
        config[key] = {**config.get(key, {}), **changes} if isinstance(changes, dict) else changes
    return config


# A small version of configs/mnist_iaf.yaml: 500 steps (one epoch) on real binarized MNIST.
TINY_IAF = [
    "model.encoder.channels=[16, 32]",
    "model.encoder.hidden_sizes=[128]",
    "model.flows[0].hidden_features=64",
    "trainer.epochs=1",
    "trainer.log_every=50",
    "eval.iw_samples=10",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``flowzoo train configs/mnist_iaf.yaml`` at a small size, through the real command line."""
    output = tmp_path_factory.mktemp("runs")
    result = run_cli("train", "configs/mnist_iaf.yaml", *TINY_IAF, f"output_dir={output}")
    assert result.returncode == 0, result.stderr
    (run_dir,) = output.iterdir()
    return run_dir, result


@pytest.fixture(scope="session")
def tiny_mlp_run(tmp_path_factory) -> Path:
    """One epoch of :data:`TINY` (MLPs on 3,000 real images), trained in this process: a saved
    run for the commands that read one, in seconds."""
    import yaml

    from flowzoo.cli import main

    tmp_path = tmp_path_factory.mktemp("tiny_mlp")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(output_dir=str(tmp_path / "runs"))))
    sys.path.insert(0, str(FIXTURES))
    try:
        assert main(["train", str(config), "trainer.epochs=1"]) == 0
    finally:
        sys.path.remove(str(FIXTURES))
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir
