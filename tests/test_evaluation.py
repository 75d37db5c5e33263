"""`flowzoo eval` as a batch job sees it: progress lines with the time left, output piped."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import FIXTURES, run_cli, tiny_config

pytestmark = pytest.mark.usefixtures("shared_data_root")


def test_eval_with_output_piped_prints_progress_lines_with_an_eta(tmp_path):
    config = tmp_path / "tiny.yaml"
    trainer = {"epochs": 1, "picture_count": 0, "tensorboard": False}
    config.write_text(yaml.safe_dump(tiny_config(output_dir=str(tmp_path / "runs"), trainer=trainer)))
    env = {"PYTHONPATH": str(FIXTURES), "OMP_NUM_THREADS": "1"}
    assert run_cli("train", str(config), env=env).returncode == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = run_cli("eval", str(run_dir), "eval.iw_samples=20", env=env)  # stdout is a pipe, not a terminal
    assert result.returncode == 0, result.stderr
    lines = re.findall(r"evaluating valid images with K=20: ([\d,]+)/500 images, \d+ s elapsed, ETA \d+ s",
                       result.stdout)
    assert lines == ["100", "200", "300", "400", "500"]  # a line per tenth of the way at most: one per batch here
