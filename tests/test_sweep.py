"""``flowzoo sweep``: grids, validation before anything runs, jobs at once, kills and resumes, submitit, logging.

The sweeps train a tiny VAE for 400 steps on the first images of real static binarized
MNIST (tests/fixtures/subset_data.py), through the real command line in fresh processes,
one CPU thread per job (``OMP_NUM_THREADS=1``), so that a resumed run can be compared
with an uninterrupted one exactly.
"""

from __future__ import annotations

import csv
import datetime
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from flowzoo.cli import main
from flowzoo.config import load_config
from flowzoo.errors import ConfigError
from flowzoo.executors import LocalExecutor, Task
from flowzoo.runs import RunDir, git_state, lock_directory
from flowzoo.sweep import expand, read_grid, split_values

from conftest import FIXTURES, REPO

TINY = """\
name: tiny
plugins: [subset_data]
data: {name: mnist_subset, train: 1000, valid: 100, test: 100}
model:
  latent_size: 4
  context_size: 8
  encoder: {name: mlp, hidden_sizes: [32]}
  decoder: {name: mlp, hidden_sizes: [32]}
trainer: {epochs: 4, batch_size: 10, lr: 0.001, log_every: 10, checkpoint_every: 10, device: cpu,
          picture_count: 0}
eval: {iw_samples: 2}
"""
STEPS = 400
ENV = {"PYTHONPATH": str(FIXTURES), "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
IAF, VAE = str(REPO / "configs" / "mnist_iaf.yaml"), str(REPO / "configs" / "mnist_vae.yaml")


# -- the grid --------------------------------------------------------------------------------


def test_values_split_at_commas_outside_brackets_braces_and_quotes():
    assert split_values("0.001,0.0003") == ["0.001", "0.0003"]
    assert split_values("[64,64],[128]") == ["[64,64]", "[128]"]
    assert split_values("[{name: iaf, repeat: 2}],[{name: planar}]") == ["[{name: iaf, repeat: 2}]", "[{name: planar}]"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]
    assert split_values("'it''s, quoted',x") == ["'it''s, quoted'", "x"]
    assert split_values("it's,x") == ["it's", "x"]  # a quote inside a word is a letter
    assert split_values("[1,2]") == ["[1,2]"]  # one value: a list
    for text, message in (("[64,64", "unclosed '['"), ("64]", "unmatched ']'"), ('"a,b', 'unclosed "'),
                          ("1,,2", "empty value"), ("1,", "empty value")):
        with pytest.raises(ValueError, match=re.escape(message)):
            split_values(text)


def test_the_grid_is_the_cartesian_product_of_configs_values_and_seeds():
    grid = read_grid([VAE, IAF, "trainer.lr=0.001,0.0003", "model.encoder.hidden_sizes=[64,64],[128]",
                      "trainer.epochs=1"], seeds=3)
    points = expand(grid)
    combinations = list(itertools.product((VAE, IAF), ("0.001", "0.0003"), ("[64,64]", "[128]"), "012"))
    assert [(p.config, *(o.partition("=")[2] for o in p.overrides[1:])) for p in points] == \
        [(config, lr, sizes, seed) for config, lr, sizes, seed in combinations]  # seeds vary fastest
    assert all(point.overrides[0] == "trainer.epochs=1" for point in points)
    assert points[5].label == "mnist_vae-lr=0.001,hidden_sizes=128,seed=2"
    assert len({point.label for point in points}) == len(points) == 24
    config = load_config(points[5].config, points[5].overrides)
    assert (config.trainer.lr, list(config.model["encoder"]["hidden_sizes"]), config.seed, config.trainer.epochs) == \
        (0.001, [128], 2, 1)


def test_a_grid_file_sweeps_named_flow_specs_and_every_config_matching_a_pattern(tmp_path, capsys):
    flows = {"iaf": [{"name": "iaf", "repeat": 2, "between": "reverse"}], "planar": [{"name": "planar", "repeat": 4}]}
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({"config": str(REPO / "configs" / "mnist_[iv]a?.yaml"),  # iaf and vae
                                         "model.flows": flows, "trainer.lr": [0.001, 0.0003], "eval.iw_samples": 7}))
    points = expand(read_grid([], seeds=2, grid_file=str(grid_file)))
    assert [Path(p.config).name for p in points[::8]] == ["mnist_iaf.yaml", "mnist_vae.yaml"]
    assert points[0].label == "mnist_iaf-flows=iaf,lr=0.001,seed=0"
    assert points[4].label == "mnist_iaf-flows=planar,lr=0.001,seed=0"
    assert len(points) == 2 * 2 * 2 * 2
    for point in points:
        config = load_config(point.config, point.overrides)
        given = flows[dict(point.values)["model.flows"]]  # completed with the flows' defaults in the config
        assert [{key: spec[key] for key in wanted} for spec, wanted in zip(config.model["flows"], given)] == given
        assert len(config.model["flows"]) == len(given) and config.eval.iw_samples == 7
    output = tmp_path / "sweep"
    assert main(["sweep", "--grid", str(grid_file), "--seeds", "2", "--dry-run", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "16 points" in out and "mnist_vae-flows=planar,lr=0.0003,seed=1" in out and not output.exists()


def test_every_point_is_validated_before_anything_runs(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a job was started or a run directory written")

    monkeypatch.setattr(LocalExecutor, "launch", refuse)
    monkeypatch.setattr(RunDir, "record_sweep_point", refuse)
    output = tmp_path / "sweep"
    status = main(["sweep", VAE, IAF, "model.flows[0].name=iaf,iaff", "trainer.epoch=1", "eval.iw_samples=10,0",
                   "--seeds", "2", "--output", str(output)])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and not output.exists()
    assert "invalid config (sweep): 4 problems" in err
    assert "trainer.epoch: unknown key 'epoch'. Did you mean 'epochs'?" in err and "[every point]" in err
    lines = {line.strip().split(":")[0]: line for line in err.splitlines()}
    assert "unknown flow 'iaff'" in lines["model.flows[0].name"]
    assert "points mnist_iaf-name=iaff,iw_samples=10,seed=0, mnist_iaf-name=iaff,iw_samples=10,seed=1," \
           in lines["model.flows[0].name"]
    assert "expected an integer ≥ 1, got 0" in lines["eval.iw_samples"]
    assert "model.flows: expected a list of flow specs" in err  # mnist_vae has no flow to rename


def test_train_with_several_values_fails_and_points_to_sweep(capsys):
    assert main(["train", VAE, "seed=[0,1,2]"]) == 2
    err = capsys.readouterr().err
    assert "seed: expected an integer, got a list" in err
    assert f"use flowzoo sweep {VAE} seed=0,1,2" in err


def test_sweep_options_are_checked_with_the_grid(tmp_path, capsys):
    status = main(["sweep", VAE, "--seeds", "0", "--jobs", "0", "trainer.lr=[1,", "--output", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert status == 2 and "--jobs: expected at least 1" in err and "--seeds: expected at least 1" in err
    assert "trainer.lr: cannot split '[1,' into values: unclosed '['" in err
    assert main(["sweep", VAE, "--executor", "slurm", "--cluster", "local", "--slurm", "acount=abc"]) == 2
    err = capsys.readouterr().err
    assert "--time: required with --executor slurm" in err and "Did you mean 'account'?" in err
    assert main(["sweep", VAE, "--time", "10"]) == 2
    assert "--time: is an option of --executor slurm" in capsys.readouterr().err


def test_local_jobs_share_the_cores_and_the_gpus():
    executor = LocalExecutor(3, cpus=8, gpus=["4", "6"])
    assert executor.threads == 2
    assert [executor.environment(slot)["CUDA_VISIBLE_DEVICES"] for slot in range(3)] == ["4", "6", "4"]
    assert executor.environment(0)["OMP_NUM_THREADS"] == "2"
    assert "CUDA_VISIBLE_DEVICES" not in LocalExecutor(2, cpus=2, gpus=[]).environment(1)


def test_provenance_has_no_git_state_without_git_or_outside_a_work_tree(tmp_path, monkeypatch):
    assert git_state(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert git_state(REPO) is None


def test_wandb_logging_needs_the_wandb_package(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match="logging.wandb.project: W&B logging needs the wandb package"):
        load_config(VAE, ["logging.wandb.project=flowzoo"])


# -- real sweeps -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Where the sweeps start, outside any git work tree; it holds tiny.yaml."""
    folder = tmp_path_factory.mktemp("sweeps")
    (folder / "tiny.yaml").write_text(TINY)
    return folder


def sweep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowzoo.cli", "sweep", "tiny.yaml", *args]


def run(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(*args), cwd=workdir, env={**os.environ, **ENV, **(env or {})},
                          capture_output=True, text=True, timeout=900)


def start(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(sweep_command(*args), cwd=workdir, env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def records(run_dir: Path, *kinds: str) -> list[dict]:
    """The complete records of metrics.jsonl (one may be half written while a job runs)."""
    if not (run_dir / "metrics.jsonl").is_file():
        return []
    parsed = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return [r for r in parsed if not kinds or r["kind"] in kinds]


def outcome(run_dir: Path) -> list[dict]:
    """What an uninterrupted run must reproduce: the losses of every record and the test metrics."""
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_second")}
            for r in records(run_dir, "train", "valid", "test")]


def provenance(run_dir: Path) -> dict:
    return json.loads((run_dir / "provenance.json").read_text())


def wait_until(condition, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the sweep ended first: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def mid_run(run_dir: Path) -> bool:
    """Training has passed a checkpoint after its first one and is far from its end."""
    return any(30 <= r["step"] < STEPS - 100 for r in records(run_dir, "train"))


def sweep_file(sweep_dir: Path) -> dict:
    return yaml.safe_load((sweep_dir / "sweep.yaml").read_text())


@pytest.fixture(scope="module")
def finished(workdir) -> Path:
    """Two seeds, two jobs at once, uninterrupted."""
    result = run(workdir, "--seeds", "2", "--jobs", "2", "--output", "finished")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "2 of 2 points finished" in result.stdout
    return workdir / "finished"


def test_two_jobs_run_at_once(finished):
    attempts = [provenance(finished / f"tiny-seed={seed}")["attempts"] for seed in (0, 1)]
    assert [len(a) for a in attempts] == [1, 1]
    (first,), (second,) = attempts
    start_0, end_0, start_1, end_1 = (datetime.datetime.fromisoformat(first["started"]),
                                      datetime.datetime.fromisoformat(first["finished"]),
                                      datetime.datetime.fromisoformat(second["started"]),
                                      datetime.datetime.fromisoformat(second["finished"]))
    assert start_0 < end_1 and start_1 < end_0, "the two runs did not overlap"
    assert first["pid"] != second["pid"]
    assert first["environment"]["OMP_NUM_THREADS"] == "1"


def test_the_sweep_directory_holds_the_grid_command_points_and_runs(finished):
    recorded = sweep_file(finished)
    assert recorded["command"] == "flowzoo sweep tiny.yaml --seeds 2 --jobs 2 --output finished"
    assert recorded["grid"] == {"config": ["tiny.yaml"], "seed": [0, 1]}
    assert recorded["executor"] == {"name": "local", "jobs": 2}
    assert [(p["run_dir"], p["overrides"], p["status"], p["attempts"]) for p in recorded["points"]] == \
        [("tiny-seed=0", ["seed=0"], "finished", 1), ("tiny-seed=1", ["seed=1"], "finished", 1)]
    for seed in (0, 1):
        run_dir = finished / f"tiny-seed={seed}"
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == seed
        assert records(run_dir, "test") and (run_dir / "last.pt").is_file()
        assert "flowzoo train tiny.yaml seed=" in (run_dir / "console.log").read_text().splitlines()[0]
    assert outcome(finished / "tiny-seed=0") != outcome(finished / "tiny-seed=1")  # the seed reached the runs


def test_each_run_records_its_provenance(finished, workdir):
    recorded = provenance(finished / "tiny-seed=1")
    (attempt,) = recorded["attempts"]
    assert recorded["sweep"] == {"dir": str(finished.resolve()), "point": 1, "label": "tiny-seed=1",
                                 "config": "tiny.yaml", "overrides": ["seed=1"],
                                 "command": "flowzoo sweep tiny.yaml --seeds 2 --jobs 2 --output finished"}
    assert attempt["command"].startswith(f"{sys.executable} -m flowzoo.executors ")
    assert attempt["cwd"] == str(workdir) and attempt["host"] == socket.gethostname()
    assert attempt["versions"] == {"flowzoo": distribution_version("flowzoo"), "torch": torch.__version__,
                                   "nflows": distribution_version("nflows"), "python": sys.version.split()[0],
                                   "cuda": torch.version.cuda}
    assert attempt["device"].startswith("cpu (") and attempt["device"].endswith("1 thread)")
    assert attempt["git"] is None  # started outside a git work tree: no failure, no state
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:  # flowzoo itself comes from this checkout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip() != ""
        assert attempt["flowzoo_git"] == {"root": str(REPO), "commit": head.stdout.strip(), "dirty": dirty}
    started, ended = (datetime.datetime.fromisoformat(attempt[key]) for key in ("started", "finished"))
    first, last = records(finished / "tiny-seed=1")[0]["time"], records(finished / "tiny-seed=1", "test")[0]["time"]
    milliseconds = [round(t * 1000) for t in (started.timestamp(), first, last, ended.timestamp())]
    assert milliseconds[0] <= milliseconds[1] + 1 and milliseconds[2] <= milliseconds[3] + 1  # both to the ms


def distribution_version(name: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(name)


def test_tensorboard_gets_the_test_metrics_hyperparameters_and_config(finished):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = finished / "tiny-seed=1"
    scalars, texts, sessions, experiments = {}, [], [], []
    for events in (run_dir / "tensorboard").glob("events.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                plugin = value.metadata.plugin_data
                if plugin.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
                    (sessions if data.HasField("session_start_info") else experiments).append(data)
                elif plugin.plugin_name == "text":
                    texts.append(value.tensor.string_val[0].decode())
                elif value.tensor.float_val:
                    scalars[value.tag, event.step] = value.tensor.float_val[0]
    (test,) = records(run_dir, "test")
    for key in ("neg_elbo", "recon", "kl", "nll_iw"):
        assert scalars["test/" + key, test["step"]] == pytest.approx(test[key])
    (session,) = [s.session_start_info for s in sessions]
    hparams = session.hparams
    assert hparams["seed"].number_value == 1 and hparams["trainer.lr"].number_value == 0.001
    assert hparams["model.encoder.name"].string_value == "mlp"
    assert hparams["model.flows"].string_value == "[]"
    metrics = {info.name.tag for data in experiments for info in data.experiment.metric_infos}
    assert {"test/neg_elbo", "test/nll_iw"} <= metrics
    (text,) = texts
    assert "    name: tiny" in text and "    seed: 1" in text  # the resolved config, as a Markdown code block


def test_the_same_command_again_skips_the_finished_points(finished, workdir):
    before = {p: p.read_bytes() for p in finished.glob("*/metrics.jsonl")}
    result = run(workdir, "--seeds", "2", "--jobs", "2", "--output", "finished")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "tiny-seed=" in line]
    assert len(rows) == 2 and all("finished before" in row for row in rows)
    assert "2 finished before, 0 to run" in result.stdout
    assert {p: p.read_bytes() for p in finished.glob("*/metrics.jsonl")} == before
    assert [p["attempts"] for p in sweep_file(finished)["points"]] == [0, 0]


def test_a_sweep_directory_holding_runs_of_another_config_is_refused(finished, workdir):
    before = (finished / "sweep.yaml").read_text()
    result = run(workdir, "--seeds", "2", "--output", "finished", "trainer.lr=0.01")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "finished/tiny-seed=0 holds a run of another config: trainer.lr is 0.001 there, 0.01 here" \
        in " ".join(result.stderr.split())
    assert (finished / "sweep.yaml").read_text() == before


def test_a_killed_job_resumes_and_a_failing_point_does_not_stop_the_others(finished, workdir):
    """The clean point is the finished sweep's seed 0 (the poison list defaults to empty); its job is
    killed mid-run and the retry resumes it from last.pt. The poisoned point diverges, twice."""
    grid = workdir / "poison.yaml"
    grid.write_text(yaml.safe_dump({"data.poison": {"clean": [], "poisoned": list(range(0, 1000, 2))}}))
    process = start(workdir, "--grid", "poison.yaml", "--jobs", "2", "--output", "faults",
                    "trainer.max_bad_steps=2", "trainer.max_rollbacks=0")
    clean = workdir / "faults" / "tiny-poison=clean"
    wait_until(lambda: mid_run(clean), process)
    (pid,) = [p["job"] for p in sweep_file(workdir / "faults")["points"] if p["run_dir"] == clean.name]
    os.kill(int(pid), signal.SIGKILL)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1, err + out
    points = {p["run_dir"]: p for p in sweep_file(workdir / "faults")["points"]}
    assert (points[clean.name]["status"], points[clean.name]["attempts"]) == ("finished", 2)
    poisoned = points["tiny-poison=poisoned"]
    assert (poisoned["status"], poisoned["attempts"], poisoned["exit_status"]) == ("failed", 2, 1)
    assert "training diverged" in poisoned["error"]
    assert "failed: tiny-poison=poisoned" in out
    starts = [r["step"] for r in records(clean, "start")]
    assert starts[0] == 0 and 0 < starts[1] < STEPS and len(starts) == 2
    assert [a["pid"] for a in provenance(clean)["attempts"]][0] == int(pid)
    assert outcome(clean) == outcome(finished / "tiny-seed=0")  # killed and resumed = uninterrupted


def test_an_interrupted_sweep_resumes_and_skips_its_finished_points(finished, workdir):
    """One job at a time: seed 0 finishes, seed 1 is interrupted (Ctrl-C) mid-run; the same command
    again skips seed 0 and resumes seed 1 to the numbers of the uninterrupted sweep."""
    process = start(workdir, "--seeds", "2", "--output", "interrupted")
    second = workdir / "interrupted" / "tiny-seed=1"
    wait_until(lambda: mid_run(second), process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130 and "the same command continues the sweep" in err
    assert [p["status"] for p in sweep_file(workdir / "interrupted")["points"]] == ["finished", "interrupted"]
    assert not records(second, "test")
    first_records = (workdir / "interrupted" / "tiny-seed=0" / "metrics.jsonl").read_bytes()

    result = run(workdir, "--seeds", "2", "--output", "interrupted")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "1 finished before, 1 to run" in result.stdout
    assert (workdir / "interrupted" / "tiny-seed=0" / "metrics.jsonl").read_bytes() == first_records
    assert "flowzoo resume" in (second / "console.log").read_text().split("==>")[-1].splitlines()[0]
    assert [r["step"] for r in records(second, "start")][1] > 0
    for seed in (0, 1):
        assert outcome(workdir / "interrupted" / f"tiny-seed={seed}") == outcome(finished / f"tiny-seed={seed}")


def test_submitit_local_executor_runs_the_slurm_path_and_requeues_a_preempted_job(finished, workdir):
    """submitit's LocalExecutor runs the array job as SLURM would; SIGUSR2, SLURM's warning before
    preemption, makes submitit checkpoint the task and requeue it, and the new job resumes."""
    pytest.importorskip("submitit")
    process = start(workdir, "--seeds", "2", "--output", "submitit", "--executor", "slurm", "--cluster", "local",
                    "--time", "60", "--gpus-per-job", "0", "--cpus-per-job", "1", "--partition", "ignored")
    second = workdir / "submitit" / "tiny-seed=1"
    wait_until(lambda: mid_run(second), process)
    os.kill(provenance(second)["attempts"][-1]["pid"], signal.SIGUSR2)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err + out
    assert "submitit (local)" in out and list((workdir / "submitit" / "submitit").glob("*_result.pkl"))
    assert sweep_file(workdir / "submitit")["executor"]["cluster"] == "local"
    attempts = provenance(second)["attempts"]
    assert len(attempts) == 2 and attempts[0]["pid"] != attempts[1]["pid"] and attempts[1]["finished"]
    assert attempts[0]["environment"]["OMP_NUM_THREADS"] == "1"
    assert [r["step"] for r in records(second, "start")][1] > 0
    log = (second / "console.log").read_text()
    assert "flowzoo train tiny.yaml seed=1" in log and f"flowzoo resume {second}" in log
    for seed in (0, 1):
        assert outcome(workdir / "submitit" / f"tiny-seed={seed}") == outcome(finished / f"tiny-seed={seed}")


def test_a_run_in_use_by_another_process_is_left_alone(finished):
    run_dir = finished / "tiny-seed=0"
    before = (run_dir / "metrics.jsonl").read_bytes()
    lock = lock_directory(run_dir, "the test")
    try:
        result = subprocess.run([sys.executable, "-m", "flowzoo.cli", "resume", str(run_dir)],
                                cwd=run_dir.parent.parent, env={**os.environ, **ENV}, capture_output=True, text=True,
                                timeout=300)
    finally:
        lock.close()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"is in use by process {os.getpid()} on {socket.gethostname()}" in " ".join(result.stderr.split())
    assert (run_dir / "metrics.jsonl").read_bytes() == before


# -- reports of sweeps -----------------------------------------------------------------------


def group_rows(output: Path) -> dict[str, dict[str, str]]:
    with open(output / "report-groups.csv", newline="") as file:
        return {row["group"]: row for row in csv.DictReader(file)}


def test_report_of_a_sweep_groups_its_seeds(finished, tmp_path, capsys):
    assert main(["report", str(finished), "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "groups compared (mean ± std over seeds)" in out
    (group,) = group_rows(tmp_path).values()
    tests = [records(finished / f"tiny-seed={seed}", "test")[0] for seed in (0, 1)]
    assert (group["group"], group["n"], group["seeds"]) == ("tiny", "2", "0, 1")
    assert group["runs"] == "tiny-seed=0 tiny-seed=1"
    for key in ("neg_elbo", "nll_iw"):
        values = [test[key] for test in tests]
        assert float(group[f"test_{key}_mean"]) == pytest.approx(statistics.mean(values))
        assert float(group[f"test_{key}_std"]) == pytest.approx(statistics.stdev(values))
    with open(tmp_path / "report.csv", newline="") as file:
        assert [(row["run"], row["seed"]) for row in csv.DictReader(file)] == [("tiny-seed=0", "0"),
                                                                                ("tiny-seed=1", "1")]


def relabelled(source: Path, target: Path, seed: int, neg_elbo: float, lr: float = 0.001) -> Path:
    """A copy of a run with another seed (and learning rate) in its config and ``neg_elbo`` as its test −ELBO."""
    shutil.copytree(source, target)
    config = yaml.safe_load((target / "config.yaml").read_text())
    config["seed"], config["trainer"]["lr"] = seed, lr
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [json.dumps({**r, "neg_elbo": neg_elbo} if r["kind"] == "test" else r) for r in records(target)]
    (target / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return target


def test_mean_and_sample_std_equal_numbers_computed_by_hand(finished, tmp_path):
    """Three seeds at test −ELBO 90, 91 and 95: mean 92, sample variance ((−2)² + (−1)² + 3²)/(3 − 1) = 7.
    A fourth run at another learning rate, alone, has the best mean and is its own group."""
    source = finished / "tiny-seed=0"
    runs = [relabelled(source, tmp_path / f"lr1-{seed}", seed, value) for seed, value in ((0, 90.0), (1, 91.0),
                                                                                           (2, 95.0))]
    runs.append(relabelled(source, tmp_path / "lr2-0", 0, 80.0, lr=0.01))
    output = tmp_path / "report"
    assert main(["report", *map(str, runs), "--output", str(output)]) == 0
    groups = group_rows(output)
    assert set(groups) == {"tiny trainer.lr=0.001", "tiny trainer.lr=0.01"}
    three, one = groups["tiny trainer.lr=0.001"], groups["tiny trainer.lr=0.01"]
    assert (three["n"], three["seeds"], float(three["test_neg_elbo_mean"])) == ("3", "0, 1, 2", 92.0)
    assert float(three["test_neg_elbo_std"]) == pytest.approx(7 ** 0.5, abs=1e-12)
    assert (one["n"], float(one["test_neg_elbo_mean"]), one["test_neg_elbo_std"]) == ("1", 80.0, "")
    text = (output / "report.md").read_text()
    table = text.split("## Groups")[1].split("## Runs")[0]
    assert "| tiny trainer.lr=0.001 | no flow | mnist_subset | 0, 1, 2 | 3 |" in table
    assert "| 92.00 ± 2.65 |" in table and "| **80.00** |" in table  # the best group by its mean
    assert "sample standard deviation (n − 1 in the denominator)" in text


def test_runs_that_differ_in_more_than_the_seed_report_as_before(finished, tmp_path):
    runs = [relabelled(finished / "tiny-seed=0", tmp_path / "a", 0, 90.0),
            relabelled(finished / "tiny-seed=1", tmp_path / "b", 1, 91.0, lr=0.01)]
    assert main(["report", *map(str, runs), "--output", str(tmp_path / "report")]) == 0
    assert not (tmp_path / "report" / "report-groups.csv").exists()
    assert "## Groups" not in (tmp_path / "report" / "report.md").read_text()


# -- Weights & Biases ------------------------------------------------------------------------


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B ``.wandb`` file: a 7-byte header, then 32 KiB blocks of
    chunks, each with a 7-byte header (checksum, length, type: full, first, middle, last)."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending, found = path.read_bytes(), 32768, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            found.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return found


def test_a_wandb_run_in_offline_mode_mirrors_the_config_and_metrics(workdir):
    pytest.importorskip("wandb")
    run_dir = workdir / "wandb-run"
    state = workdir / "wandb-state"
    env = {**os.environ, **ENV, "WANDB_CONFIG_DIR": str(state), "WANDB_CACHE_DIR": str(state),
           "WANDB_DATA_DIR": str(state)}
    result = subprocess.run([sys.executable, "-m", "flowzoo.cli", "train", "tiny.yaml", "--run-dir", str(run_dir),
                             "trainer.epochs=2", "logging.wandb.project=flowzoo-tests", "logging.wandb.mode=offline",
                             "logging.wandb.tags=[sweep-test]"],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    wandb_id = provenance(run_dir)["wandb_id"]
    (file,) = (run_dir / "wandb").glob(f"offline-run-*-{wandb_id}/run-{wandb_id}.wandb")
    found = wandb_records(file)
    (started,) = [r.run for r in found if r.WhichOneof("record_type") == "run"]
    assert (started.project, started.display_name, list(started.tags)) == ("flowzoo-tests", "wandb-run",
                                                                            ["sweep-test"])
    config = {item.key: json.loads(item.value_json) for item in started.config.update}
    assert config["trainer"]["epochs"] == 2 and config["model"]["latent_size"] == 4
    history = [{(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in r.history.item}
               for r in found if r.WhichOneof("record_type") == "history"]
    valid = [(row["_step"], row["valid/neg_elbo"]) for row in history if "valid/neg_elbo" in row]
    assert valid == [(r["step"], r["neg_elbo"]) for r in records(run_dir, "valid")]
    summary = {(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
               for r in found if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    (test,) = records(run_dir, "test")
    assert summary["test/neg_elbo"] == pytest.approx(test["neg_elbo"])
    assert summary["test/nll_iw"] == pytest.approx(test["nll_iw"])


def test_task_arguments_follow_the_run_directory(tmp_path):
    task = Task("tiny.yaml", ("seed=1",), str(tmp_path / "run"), str(tmp_path))
    assert task.arguments() == ["train", "tiny.yaml", "seed=1", "--run-dir", str(tmp_path / "run")]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"")
    assert task.arguments() == ["resume", str(tmp_path / "run")]
    assert Task.from_json(task.to_json()) == task

