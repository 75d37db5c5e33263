"""The ``flowzoo`` command as a new user meets it: argument order, --version, printing a
config, one component in detail, --help texts and what Ctrl-C says."""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

import flowzoo
from flowzoo.cli import main
from flowzoo.registry import flows

from conftest import FIXTURES, REPO, run_cli, tiny_config

SINH_FLOWS = FIXTURES / "sinh_flows.py"


def test_overrides_and_flags_mix_in_any_order_for_every_command(tiny_mlp_run, tmp_path, capsys):
    assert main(["sample", str(tiny_mlp_run), "--count", "4", "--output", str(tmp_path), "eval.iw_samples=3"]) == 0
    assert (tmp_path / "samples.png").is_file()
    assert main(["config", "configs/mnist_iaf.yaml", "--diff", "trainer.epochs=2"]) == 0
    assert re.search(r"^  trainer\.epochs: \d+ → 2$", capsys.readouterr().out, flags=re.M)
    checked = run_cli("check-flow", "sinh_shift", "--import", "sinh_flows", "--train-steps", "0", "c=2.0",
                      cwd=FIXTURES)
    assert checked.returncode == 0 and "check-flow sinh_shift: passed" in checked.stdout, checked.stderr
    # An unknown key after a flag is the config's error (exit 2, its key named), not argparse's usage line.
    trained = run_cli("train", "configs/mnist_iaf.yaml", "--run-dir", str(tmp_path / "run"), "trainer.epoch=1")
    assert trained.returncode == 2 and "trainer.epoch: unknown key 'epoch'" in trained.stderr, trained.stderr
    assert "unrecognized arguments" not in trained.stderr


def test_numbers_in_exponent_notation_are_numbers_on_the_command_line(capsys):
    assert main(["config", "configs/mnist_iaf.yaml", "trainer.lr=3e-4", "trainer.grad_clip=1E2"]) == 0
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["lr"] == pytest.approx(3e-4) and trainer["grad_clip"] == 100.0


def test_version_and_python_dash_m():
    version = importlib.metadata.version("flowzoo")
    assert flowzoo.__version__ == version
    result = subprocess.run([sys.executable, "-m", "flowzoo", "--version"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"flowzoo {version}"


def test_config_prints_the_resolved_config_and_its_difference_from_the_base(capsys):
    assert main(["config", "configs/mnist_planar.yaml"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["flows"][0]["name"] == "planar" and resolved["trainer"]["batch_size"] > 0
    assert main(["config", "configs/mnist_planar.yaml", "--diff"]) == 0
    diff = capsys.readouterr().out
    assert "differs from its base configs/mnist_vae.yaml" in diff and "model.flows" in diff
    assert "trainer.batch_size" not in diff  # the same in both
    assert main(["config", "configs/mnist_planar.yaml", "trainer.nosuch=1"]) == 2


def test_list_of_nothing_is_a_user_error_with_the_closest_names(capsys):
    assert main(["list", "flows", "housholder"]) == 2
    assert "no flow matches 'housholder'. Did you mean 'householder'?" in capsys.readouterr().err


def test_list_of_one_component_shows_its_parameters_and_docstring():
    result = run_cli("list", "flows", "householder")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "flow householder" in text and "parameters" in text
    assert "reflections" in text and "PositiveInt" not in text  # parameters and their types in words
    assert "Tomczak" in text  # its References section


def test_summaries_keep_parameter_names_as_code():
    assert "`reflections` hyperplanes" in flows["householder"].summary
    assert "product of `reflections` Householder reflections" in flows["sylvester_householder"].summary


def test_help_shows_defaults_and_names_the_overrides_of_seed_output_and_device():
    assert "(default: 1e-06)" in " ".join(run_cli("check-flow", "--help").stdout.split())
    assert "(default: runs/toy)" in " ".join(run_cli("toy", "--help").stdout.split())
    text = " ".join(run_cli("train", "--help").stdout.split())
    assert "seed=1" in text and "output_dir=" in text and "trainer.device=" in text


def test_ctrl_c_prints_the_resume_command_of_the_run(tmp_path):
    config = tiny_config(output_dir=str(tmp_path / "runs"), trainer={"epochs": 50})
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(FIXTURES), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    process = subprocess.Popen([sys.executable, "-m", "flowzoo.cli", "train", str(path)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "runs").glob("*/last.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert process.returncode == 130, stderr
    assert f"`flowzoo resume {run_dir}` continues from its last checkpoint" in " ".join(stderr.split())
