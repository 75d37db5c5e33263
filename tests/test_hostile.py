"""Hostile files and faults (issue 17): each is one clear error with the user-error exit code (2),
no traceback, no file outside the run touched; after a fault the run resumes to the records of an
uninterrupted run. What flowzoo guarantees is in docs/safety.md."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from flowzoo.checkpoint import RESUME_ENTRIES, load_checkpoint
from flowzoo.cli import main

from conftest import FIXTURES, REPO, run_cli, tiny_config

ENV = {"PYTHONPATH": str(FIXTURES), "OMP_NUM_THREADS": "1"}
SMALL = {"data": {"train": 200, "valid": 50, "test": 50},
         "trainer": {"epochs": 2, "log_every": 4, "checkpoint_every": 5, "picture_count": 4, "tensorboard": False}}


def write_config(folder: Path, dataset: dict | None = None, **sections) -> Path:
    """The tiny config of the tests, smaller (:data:`SMALL`), with ``sections`` changed; ``dataset``
    replaces the data section (another data set, without the plugin)."""
    changes = {key: {**SMALL.get(key, {}), **value} if isinstance(value, dict) else value
               for key, value in {**SMALL, **sections}.items()}
    config = tiny_config(**changes, output_dir=str(folder / "runs"))
    if dataset is not None:
        config.update(data=dataset, plugins=[])
    path = folder / "tiny.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def flowzoo(capsys, *args: str) -> tuple[int, str]:
    """``flowzoo ARGS`` in this process: the exit status and stdout + stderr, checked to hold no traceback."""
    status = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out + err


def losses(run_dir: Path) -> list[dict]:
    """The records a resumed run must reproduce: all but wall-clock figures."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_second")}
            for r in map(json.loads, lines) if r["kind"] in ("train", "valid", "eval", "test")]


@pytest.fixture(autouse=True)
def fixtures_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))  # the subset_data plugin of the tiny configs


@pytest.fixture(autouse=True)
def outside(tmp_path) -> Path:
    """A file outside every run, the target of the links below: it must be the same after each case."""
    bait = tmp_path / "outside" / "bait.txt"
    bait.parent.mkdir()
    bait.write_text("not flowzoo's\n")
    yield bait
    assert bait.read_text() == "not flowzoo's\n", "a file outside the run was written"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted tiny run (2 epochs, 16 steps, checkpoints every 5 steps)."""
    folder = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(FIXTURES))
        assert main(["train", str(write_config(folder))]) == 0
    (run_dir,) = (folder / "runs").iterdir()
    return run_dir


@pytest.fixture
def run_dir(reference, tmp_path) -> Path:
    """A copy of the reference run to damage."""
    return Path(shutil.copytree(reference, tmp_path / "run"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """The run's files (but the lock's note of its holder)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".lock"}


# -- 1. code from the working directory -------------------------------------------------------------

SHADOW = "import pathlib\npathlib.Path(__file__).with_name('{name}-ran').touch()\nraise SystemExit(3)\n"


def test_a_module_in_the_working_directory_does_not_shadow_one_flowzoo_imports(tmp_path):
    """A real ``tensorboard.py`` where the user runs ``flowzoo train`` (with trainer.tensorboard on)."""
    (tmp_path / "tensorboard.py").write_text(SHADOW.format(name="tensorboard"))
    config = write_config(tmp_path, trainer={"epochs": 1, "tensorboard": True})
    result = run_cli("train", str(config), cwd=tmp_path, env=ENV)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "tensorboard-ran").exists(), "the working directory's tensorboard.py was executed"
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*")), "the real TensorBoard did not write"


@pytest.mark.parametrize("command", [["eval"], ["sample", "--count", "2", "--pairs", "1"], ["resume"]])
def test_a_received_run_does_not_import_modules_planted_beside_it(capsys, monkeypatch, run_dir, tmp_path, command):
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**config, "plugins": ["subset_data", "planted"]}))
    (tmp_path / "planted.py").write_text(SHADOW.format(name="planted"))
    monkeypatch.chdir(tmp_path)
    before = snapshot(run_dir)
    status, output = flowzoo(capsys, command[0], str(run_dir), *command[1:])
    assert status == 2
    assert "cannot import module 'planted'" in output and "--trust-plugins" in output
    assert not (tmp_path / "planted-ran").exists()
    assert snapshot(run_dir) == before


def test_trust_plugins_imports_a_received_runs_local_modules(capsys, monkeypatch, run_dir, tmp_path):
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**config, "plugins": ["subset_data", "opted_in"]}))
    (tmp_path / "opted_in.py").write_text("import pathlib\npathlib.Path(__file__).with_name('opted-in-ran').touch()\n")
    monkeypatch.chdir(tmp_path)
    status, output = flowzoo(capsys, "eval", str(run_dir), "--trust-plugins")
    assert status == 0, output
    assert (tmp_path / "opted-in-ran").exists()


# -- 4. plugins that exit ------------------------------------------------------------------------------

@pytest.mark.parametrize("raised", ["SystemExit(0)", "KeyboardInterrupt()", "GeneratorExit()"])
def test_a_local_module_that_exits_at_import_is_a_clear_error(capsys, monkeypatch, tmp_path, raised):
    (tmp_path / "quitter.py").write_text(f"raise {raised}\n")
    monkeypatch.chdir(tmp_path)
    status, output = flowzoo(capsys, "list", "flows", "--import", "quitter")
    assert status == 2
    assert f"--import[0]: cannot import module 'quitter': {raised.split('(')[0]}" in output


def test_an_entry_point_that_exits_at_import_is_a_warning_and_the_command_goes_on(tmp_path):
    info = tmp_path / "site" / "quitting_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: quitting-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[flowzoo.plugins]\nquitting = quitting_plugin\n")
    (tmp_path / "site" / "quitting_plugin.py").write_text("import sys\nsys.exit(0)\n")
    result = run_cli("list", "flows", env={"PYTHONPATH": str(tmp_path / "site")})
    assert result.returncode == 0, result.stderr
    assert "flowzoo plugin 'quitting' (quitting_plugin, from quitting-plugin 0.1) failed to load" in result.stderr
    assert "SystemExit" in result.stderr and "iaf" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize("value, loaded", [("false", True), ("off", True), ("yes", False)])
def test_disable_plugins_is_parsed_as_a_boolean(value, loaded):
    result = run_cli("list", "flows", "*affine*", env={"FLOWZOO_DISABLE_PLUGINS": value})  # iaf_affine too
    assert result.returncode == 0, result.stderr
    assert ("affine_coupling" in result.stdout) == loaded


def test_disable_plugins_that_is_not_a_boolean_is_a_clear_error():
    result = run_cli("list", "flows", env={"FLOWZOO_DISABLE_PLUGINS": "maybe"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "FLOWZOO_DISABLE_PLUGINS: expected a boolean" in result.stderr


# -- 2. run directories that can be damaged ----------------------------------------------------------------

@pytest.mark.parametrize("command", ["resume", "eval"])
@pytest.mark.parametrize("entry", ["metrics.jsonl", "config.yaml", "last.pt", ".lock"])
def test_a_link_out_of_the_run_is_refused(capsys, run_dir, outside, command, entry):
    (run_dir / entry).unlink(missing_ok=True)
    (run_dir / entry).symlink_to(outside)
    override = "trainer.epochs=3" if command == "resume" else "eval.iw_samples=2"
    status, output = flowzoo(capsys, command, str(run_dir), override)
    assert status == 2
    assert f"{run_dir / entry} is a link to {outside}, outside the run directory" in output


@pytest.mark.parametrize("cut", ["mid-record", "whole-records"])
def test_resume_refuses_a_metrics_log_shorter_than_its_checkpoint(capsys, run_dir, cut):
    size = load_checkpoint(run_dir / "last.pt")["metrics_size"]
    lines = (run_dir / "metrics.jsonl").read_bytes()[:size].splitlines(keepends=True)
    kept = b"".join(lines[:-1]) + (lines[-1][:10] if cut == "mid-record" else b"")
    (run_dir / "metrics.jsonl").write_bytes(kept)
    before = snapshot(run_dir)
    status, output = flowzoo(capsys, "resume", str(run_dir), "trainer.epochs=3")
    assert status == 2
    assert f"{run_dir / 'metrics.jsonl'} has {len(kept):,} bytes, but the checkpoint was written after" in output
    assert snapshot(run_dir) == before


HOLDER = """
import sys, time
from flowzoo.runs import RunDir
run = RunDir(sys.argv[1])
run.lock()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(run_dir):
    """Another process writing the run: it holds the run's lock."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "locked\n"
    yield process
    process.kill()
    process.wait()


SAMPLE = ["sample", "--count", "2", "--pairs", "1"]


@pytest.mark.parametrize("command", [["resume", "trainer.epochs=3"], ["eval"], SAMPLE])
def test_a_run_locked_by_another_process_is_a_clear_error_naming_it(capsys, run_dir, holder, command):
    before = snapshot(run_dir)
    status, output = flowzoo(capsys, command[0], str(run_dir), *command[1:])
    assert status == 2
    assert f"{run_dir} is in use by process {holder.pid} on {socket.gethostname()}" in output
    assert snapshot(run_dir) == before


def test_the_lock_of_a_killed_process_is_released(capsys, run_dir, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    status, output = flowzoo(capsys, "eval", str(run_dir))
    assert status == 0, output


def test_two_real_resumes_of_one_run(run_dir):
    """``flowzoo resume RUN`` twice at once: the first trains on, the second stops naming it."""
    attempts = len(json.loads((run_dir / "provenance.json").read_text())["attempts"])
    first = subprocess.Popen([sys.executable, "-m", "flowzoo.cli", "resume", str(run_dir), "trainer.epochs=100"],
                             cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while (len(json.loads((run_dir / "provenance.json").read_text())["attempts"]) == attempts
               and first.poll() is None and time.monotonic() < deadline):
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        second = run_cli("resume", str(run_dir), "trainer.epochs=100", env=ENV)
        assert first.poll() is None, "the first run ended before the second was refused"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"{run_dir} is in use by process {first.pid} on {socket.gethostname()}" in second.stderr


# -- 3. resume that checks what it resumes --------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [("trainer.batch_size", 50), ("trainer.lr", 0.1), ("model.latent_size", 4)])
def test_resume_refuses_a_hand_edited_config_before_writing_anything(capsys, run_dir, key, value):
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    section, name = key.split(".")
    config[section][name] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = snapshot(run_dir)
    status, output = flowzoo(capsys, "resume", str(run_dir), "trainer.epochs=3")
    assert status == 2
    assert f"{key}: is {value!r} in {run_dir / 'config.yaml'} but" in output
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("entry", ["rng", "optimizer", "config"])
def test_resume_refuses_a_checkpoint_missing_an_entry(capsys, run_dir, entry):
    state = load_checkpoint(run_dir / "last.pt")
    del state[entry]
    torch.save(state, run_dir / "last.pt")
    before = snapshot(run_dir)
    status, output = flowzoo(capsys, "resume", str(run_dir))
    assert status == 2
    assert f"{run_dir / 'last.pt'} lacks {entry}" in output
    assert snapshot(run_dir) == before


def test_a_run_stopped_before_its_first_checkpoint_starts_again_on_resume(capsys, reference, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(reference / "config.yaml", run_dir)
    records = (reference / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_text("".join(records[:2]))  # what it logged before it was killed
    status, output = flowzoo(capsys, "resume", str(run_dir))
    assert status == 0, output
    assert losses(run_dir) == losses(reference)


# -- 5. unbounded input ---------------------------------------------------------------------------------------

BOMB = "[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], " \
       "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]"


@pytest.mark.parametrize("override, fragment", [
    (f"model.flows={BOMB}", "model.flows: expands to more than 10,000 values"),
    ("model.flows[0].repeat=100000", "model.flows: 200,000 flow steps (repeat and between included)"),
    ("model.flows[0].hidden_features=1000000", "parameters: training them needs about"),
    ("model.encoder.hidden_sizes=[10000000]", "parameters: training them needs about"),
], ids=["anchor-bomb", "repeat", "hidden-features", "hidden-sizes"])
def test_a_config_asking_for_too_much_is_refused_before_building(capsys, tmp_path, override, fragment):
    started = time.monotonic()
    status, output = flowzoo(capsys, "train", str(write_config(tmp_path)), override)
    assert status == 2
    assert fragment in output
    assert time.monotonic() - started < 60
    assert not (tmp_path / "runs").exists()


def test_an_anchor_bomb_in_a_config_file_is_refused(capsys, tmp_path):
    (tmp_path / "bomb.yaml").write_text("a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]\n" for previous, name in zip("abcd", "bcde")))
    status, output = flowzoo(capsys, "train", str(tmp_path / "bomb.yaml"))
    assert status == 2 and "YAML node expansion exceeds the configured limit of 10000" in output


def test_a_huge_config_file_is_refused(capsys, tmp_path):
    (tmp_path / "huge.yaml").write_text("name: huge\n" + "#" * (2 << 20) + "\n")
    status, output = flowzoo(capsys, "train", str(tmp_path / "huge.yaml"))
    assert status == 2 and "config files are limited to 1,048,576" in output


def test_a_gzip_bomb_as_an_mnist_file_is_refused(capsys, tmp_path):
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    zeros = b"\0" * (1 << 20)
    with gzip.open(tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as file:
        for _ in range(300):  # 300 MiB of zeros in about 300 kB
            file.write(zeros)
    config = write_config(tmp_path, dataset={"name": "mnist_dynamic", "root": str(tmp_path / "data")})
    status, output = flowzoo(capsys, "train", str(config))
    assert status == 2
    assert "train-images-idx3-ubyte.gz expands to more than 256 MiB when decompressed" in output


# -- 6. faults and user errors that were tracebacks --------------------------------------------------------------

def fail_checkpoint_write(monkeypatch, error: BaseException, at: int) -> None:
    """The ``at``-th checkpoint write fails with ``error`` (a full disk, a Ctrl-C) after writing its bytes."""
    calls = []
    fsync = os.fsync

    def failing(descriptor):
        calls.append(descriptor)
        if len(calls) == at:
            raise error
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", failing)  # called by save_checkpoint only


@pytest.mark.parametrize("error, status, message", [
    (OSError(errno.ENOSPC, "No space left on device"), 2, "the disk is full"),
    (KeyboardInterrupt(), 130, "continues from its last checkpoint"),
], ids=["full-disk", "ctrl-c"])
def test_a_failed_checkpoint_write_leaves_a_usable_run_that_resumes_to_the_same_records(
        capsys, monkeypatch, reference, tmp_path, error, status, message):
    fail_checkpoint_write(monkeypatch, error, at=3)
    code, output = flowzoo(capsys, "train", str(write_config(tmp_path)))
    assert code == status and message in output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert status != 130 or f"interrupted; `flowzoo resume {run_dir}` continues" in output  # the real command
    assert not list(run_dir.glob("*.partial"))
    load_checkpoint(run_dir / "last.pt", required=RESUME_ENTRIES)  # the previous checkpoint, intact
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(FIXTURES))
    code, output = flowzoo(capsys, "resume", str(run_dir))
    assert code == 0, output
    assert losses(run_dir) == losses(reference)


@pytest.mark.parametrize("setting, fragment", [
    ({"output_dir": "FILE"}, "output_dir FILE cannot be a folder: FILE is a file"),
    ({"output_dir": "FILE/runs"}, "output_dir FILE/runs cannot be a folder: FILE is a file"),
    ({"name": "a\0b"}, "may not hold NUL characters"),
    ({"name": "x" * 300}, "name is 300 bytes long; run directory names allow at most 236"),
], ids=["output-dir-is-a-file", "output-dir-under-a-file", "nul-in-name", "300-character-name"])
def test_a_run_directory_that_cannot_be_made_is_refused_before_training(capsys, tmp_path, setting, fragment):
    (tmp_path / "file").write_text("a file\n")
    config = yaml.safe_load(write_config(tmp_path).read_text())
    for key, value in setting.items():
        config[key] = value.replace("FILE", str(tmp_path / "file"))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    status, output = flowzoo(capsys, "train", str(tmp_path / "tiny.yaml"))
    assert status == 2
    assert fragment.replace("FILE", str(tmp_path / "file")) in output
    assert not (tmp_path / "runs").exists()


def test_an_empty_validation_split_is_a_clear_error(capsys, tmp_path):
    status, output = flowzoo(capsys, "train", str(write_config(tmp_path, data={"valid": 0})))
    assert status == 2 and "data: the valid split of mnist_subset holds no images" in output
    assert not (tmp_path / "runs").exists()


def test_a_data_file_that_cannot_be_read_is_a_clear_error(capsys, monkeypatch, shared_data_root, tmp_path):
    read_bytes = Path.read_bytes

    def unreadable(path):  # as for a file without read permission (the tests may run as root)
        if path.name.endswith(".amat"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    status, output = flowzoo(capsys, "train", str(write_config(tmp_path)))
    assert status == 2
    assert f"{shared_data_root / 'binarized_mnist' / 'binarized_mnist_train.amat'}: Permission denied" in output


def write_line(line: str):
    return lambda run: run.joinpath("metrics.jsonl").open("a").write(line + "\n")


@pytest.mark.parametrize("damage, fragment", [
    (write_line("{not json"), "is not JSON"),
    (write_line("[1, 2]"), "is not a flowzoo record"),
    (write_line('{"step": 3}'), "is not a flowzoo record"),
    (write_line('{"kind": "valid", "step": 99, "epoch": 9, "neg_elbo": "low"}'), "not as flowzoo writes them"),
    (write_line('{"kind": "valid", "step": 99}'), "not as flowzoo writes them"),
    (lambda run: run.joinpath("config.yaml").write_bytes(b"name: \xff\xfe\n"), "not UTF-8 text"),
], ids=["not-json", "not-an-object", "no-kind", "string-loss", "missing-loss", "non-utf8-config"])
def test_report_on_a_damaged_run_is_a_clear_error(capsys, run_dir, tmp_path, damage, fragment):
    damage(run_dir)
    status, output = flowzoo(capsys, "report", str(run_dir), "--output", str(tmp_path / "report"))
    assert status == 2 and fragment in output
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("command", [["report", "RUN"], ["sample", "RUN", "--count", "2", "--pairs", "1"]])
def test_an_existing_file_as_output_is_refused_before_the_work(capsys, run_dir, tmp_path, command):
    (tmp_path / "taken").write_text("mine\n")
    args = [str(run_dir) if arg == "RUN" else arg for arg in command]
    status, output = flowzoo(capsys, *args, "--output", str(tmp_path / "taken"))
    assert status == 2
    assert f"--output {tmp_path / 'taken'} cannot be a folder: {tmp_path / 'taken'} is a file" in output
    assert (tmp_path / "taken").read_text() == "mine\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_eval_of_a_read_only_run_fails_before_evaluating(capsys, run_dir):
    run_dir.chmod(0o555)
    try:
        status, output = flowzoo(capsys, "eval", str(run_dir))
    finally:
        run_dir.chmod(0o755)
    assert status == 2 and "cannot write" in output and "metrics" not in output.split("error:")[0]


# -- 7. smaller ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["name", "output_dir"])
def test_environment_variables_may_not_name_the_run_directory(capsys, monkeypatch, tmp_path, key):
    monkeypatch.setenv("FLOWZOO_TEST_SECRET", "hunter2")
    status, output = flowzoo(capsys, "train", str(write_config(tmp_path)), f"{key}=${{oc.env:FLOWZOO_TEST_SECRET}}")
    assert status == 2 and f"{key}: may not read environment variables" in output
    assert "hunter2" not in output and not (tmp_path / "runs").exists() and not Path("hunter2").exists()


@pytest.mark.parametrize("tolerance", ["nan", "inf", "-1", "tiny"])
def test_check_flow_rejects_a_tolerance_that_is_not_a_finite_number(capsys, tolerance):
    with pytest.raises(SystemExit) as stopped:
        main(["check-flow", "planar", "--tolerance", tolerance])
    assert stopped.value.code == 2
    assert "argument --tolerance: expected a" in capsys.readouterr().err


def test_errors_are_printed_as_they_are_without_markup_or_emoji(capsys, tmp_path):
    path = tmp_path / "root:x:0:0 [bold]not bold[/bold]" / "config.yaml"
    status, output = flowzoo(capsys, "train", str(path))
    assert status == 2
    assert f"no config file at {path}" in output and "❌" not in output
