"""A catalogue of malformed user input: each is one clear error, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from flowzoo.cli import main
from flowzoo.config import load_config
from flowzoo.runs import RunDir

from conftest import REPO, run_cli

IAF = str(REPO / "configs" / "mnist_iaf.yaml")

SMALL = """\
name: small
model:
  latent_size: 8
  encoder: {name: mlp, hidden_sizes: [16]}
  decoder: {name: mlp, hidden_sizes: [16]}
"""


@pytest.fixture(autouse=True)
def no_run_directory(monkeypatch):
    """A case that is wrongly accepted fails here, before a run directory is made or training starts."""

    def refuse(*args, **kwargs):
        raise AssertionError("the input was accepted: a run directory would be created and training would start")

    monkeypatch.setattr(RunDir, "create", refuse)


def flowzoo(capsys, *args: str) -> tuple[int, str, str]:
    """``flowzoo ARGS`` in this process: exit status, stdout, stderr."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def assert_problem(stderr: str, path: str, fragment: str) -> None:
    """A line of ``stderr`` starts with the key path (if the problem has one) and contains the message fragment."""
    prefix = f"{path}: " if path else ""
    lines = [line.strip() for line in stderr.splitlines()]
    assert any(line.startswith(prefix) and fragment in line for line in lines), stderr


def config_case(case_id, overrides=(), path="", fragment="", files=None, marks=()):
    """``files`` are written to tmp_path (``config.yaml`` is trained); without it configs/mnist_iaf.yaml is."""
    return pytest.param(files, list(overrides), path, fragment, id=case_id, marks=marks)


CONFIG_CASES = [
    # unknown component names
    config_case("unknown-encoder", ["model.encoder.name=convv"],
                "model.encoder.name", "unknown encoder 'convv'. Did you mean 'conv'?"),
    config_case("unknown-flow", files={"config.yaml": SMALL + "  flows: [{name: planr}]\n"},
                path="model.flows[0].name", fragment="unknown flow 'planr'. Did you mean 'planar'?"),
    config_case("unknown-likelihood", ["model.likelihood.name=bernouli"],
                "model.likelihood.name", "unknown likelihood 'bernouli'. Did you mean 'bernoulli'?"),
    config_case("unknown-posterior", ["model.posterior.name=diagonal_gausian"],
                "model.posterior.name", "unknown posterior 'diagonal_gausian'. Did you mean 'diagonal_gaussian'?"),
    config_case("unknown-prior", ["model.prior.name=standard_norml"],
                "model.prior.name", "unknown prior 'standard_norml'. Did you mean 'standard_normal'?"),
    config_case("unknown-dataset", ["data.name=binarized_mnst"],
                "data.name", "unknown dataset 'binarized_mnst'. Did you mean 'binarized_mnist'?"),
    # wrong types
    config_case("epochs-not-a-number", ["trainer.epochs=abc"], "trainer.epochs", "expected an integer ≥ 1, got 'abc'"),
    config_case("lr-a-list", ["trainer.lr=[1]"], "trainer.lr", "expected a number > 0, got a list"),
    config_case("latent-size-a-bool", ["model.latent_size=true"],
                "model.latent_size", "expected an integer ≥ 1, got true"),
    config_case("optimizer-unknown", ["trainer.optimizer=sgd"],
                "trainer.optimizer", "expected one of 'adam', 'adamax', got 'sgd'"),
    config_case("trainer-not-a-mapping", ["trainer=fast"], "trainer", "expected a mapping, got 'fast'"),
    config_case("flow-not-a-mapping", ["model.flows=[iaf]"],
                "model.flows[0]", "expected a mapping with a 'name' key choosing a flow"),
    # negative and zero sizes
    config_case("latent-size-negative", ["model.latent_size=-3"],
                "model.latent_size", "expected an integer ≥ 1, got -3"),
    config_case("flow-hidden-features-zero", ["model.flows[0].hidden_features=0"],
                "model.flows[0].hidden_features", "expected an integer ≥ 1, got 0"),
    config_case("encoder-hidden-size-negative",
                files={"config.yaml": SMALL.replace("encoder: {name: mlp, hidden_sizes: [16]}",
                                                    "encoder: {name: mlp, hidden_sizes: [16, -4]}")},
                path="model.encoder.hidden_sizes[1]", fragment="expected an integer ≥ 1, got -4"),
    config_case("encoder-without-layers",
                files={"config.yaml": SMALL.replace("hidden_sizes: [16]}\n  decoder", "hidden_sizes: []}\n  decoder")},
                path="model.encoder", fragment="encoder 'mlp': hidden_sizes must have at least one layer"),
    # missing required keys
    config_case("missing-latent-size", files={"config.yaml": SMALL.replace("  latent_size: 8\n", "")},
                path="model.latent_size", fragment="missing (expected an integer ≥ 1)"),
    config_case("missing-data-name", files={"config.yaml": SMALL + "data: {download: false}\n"},
                path="data.name", fragment="missing. Available datasets: binarized_mnist"),
    config_case("data-null", files={"config.yaml": SMALL + "data: null\n"},
                path="data", fragment="expected a mapping with a 'name' key choosing a dataset"),
    # YAML that does not parse
    config_case("yaml-tab", files={"config.yaml": "name: small\n\tmodel: {}\n"},
                fragment="not valid YAML: found a tab character that violates indentation at line 2"),
    config_case("yaml-unclosed-bracket", files={"config.yaml": SMALL + "  flows: [{name: iaf}\n"},
                fragment="not valid YAML: did not find expected ',' or ']'"),
    config_case("yaml-not-utf8", files={"config.yaml": SMALL.encode() + b"name: caf\xe9\n"},
                fragment="not UTF-8 text: 'utf-8' codec can't decode byte 0xe9"),
    config_case("yaml-top-level-a-list", files={"config.yaml": "- model\n- data\n"},
                fragment="the top level must be a mapping of sections"),
    # unknown keys
    config_case("unknown-top-level-key", files={"config.yaml": SMALL + "traner: {epochs: 1}\n"},
                path="traner", fragment="unknown key 'traner'. Did you mean 'trainer'?"),
    config_case("unknown-section-key", files={"config.yaml": SMALL + "trainer: {epoch: 1}\n"},
                path="trainer.epoch", fragment="unknown key 'epoch'. Did you mean 'epochs'?"),
    config_case("unknown-flow-parameter", ["model.flows[0].hidden_feature=64"],
                "model.flows[0].hidden_feature", "unknown parameter. Did you mean 'hidden_features'?"),
    # bad key=value overrides
    config_case("override-without-equals", ["trainer.epochs"],
                fragment="override 'trainer.epochs' is not of the form key=value"),
    config_case("override-unknown-key-path", ["model.encoder.chanels=[8]"],
                "model.encoder.chanels", "unknown parameter. Did you mean 'channels'?"),
    config_case("override-index-not-a-number", ["model.flows[x].name=iaf"],
                "model.flows[x].name", "cannot apply override: Index 'x' (str) is not an int"),
    config_case("override-index-out-of-range", ["model.flows[3].name=iaf"],
                "model.flows[3].name", "cannot apply override: list index out of range"),
    config_case("override-value-not-yaml", ["trainer.epochs=[1"],
                "trainer.epochs", "cannot parse override value '[1'"),
    # interpolation and base files
    config_case("interpolation-to-missing-key",
                files={"config.yaml": SMALL + "eval: {batch_size: '${model.latnt_size}'}\n"},
                path="eval.batch_size", fragment="cannot resolve '${model.latnt_size}'"),
    config_case("interpolation-did-you-mean", ["model.decoder.hidden_sizes=${model.latnt_size}"],
                "model.decoder.hidden_sizes", "Did you mean 'model.latent_size'?"),
    config_case("interpolation-unclosed", files={"config.yaml": SMALL + "trainer: {device: '${model.'}\n"},
                path="trainer.device", fragment="no viable alternative at input '${model.'"),
    config_case("base-missing", files={"config.yaml": "base: nowhere.yaml\n"},
                path="{tmp}/config.yaml: base", fragment="no config file at {tmp}/nowhere.yaml"),
    config_case("base-not-yaml", files={"config.yaml": "base: base.yaml\n", "base.yaml": "name: small\n\tmodel: {}\n"},
                fragment="not valid YAML in {tmp}/base.yaml: found a tab character that violates indentation"),
    config_case("config-file-missing", fragment="no config file at {tmp}/config.yaml", files={}),
    # sizes the model sets itself, and flows that do not fit the latent size
    config_case("flow-features-set", ["model.flows[0].features=16"],
                "model.flows[0].features", "is set by the model from the rest of the config; remove it"),
    config_case("flow-context-features-set", ["model.flows[0].context_features=16"],
                "model.flows[0].context_features", "is set by the model"),
    config_case("posterior-latent-size-set", ["model.posterior.latent_size=16"],
                "model.posterior.latent_size", "is set by the model"),
    config_case("sylvester-wider-than-latent",
                files={"config.yaml": SMALL + "  flows: [{name: sylvester_orthogonal, num_ortho_vecs: 9}]\n"},
                path="model.flows[0]", fragment="num_ortho_vecs=9 exceeds the latent size 8"),
    config_case("flow-repeat-zero", ["model.flows[0].repeat=0"],
                "model.flows[0].repeat", "expected an integer ≥ 1, got 0"),
    config_case("flow-between-unknown", ["model.flows[0].between=nonexistent"],
                "model.flows[0].between", "unknown flow 'nonexistent'. Available: "),
    # devices, splits, names, plugins
    config_case("device-cuda-absent", ["trainer.device=cuda:0"],
                "trainer.device", "'cuda:0' asked for, but this machine has no CUDA device",
                marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")),
    config_case("device-gpu", ["trainer.device=gpu"],
                "trainer.device", "expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    config_case("eval-split-train", ["eval.split=train"], "eval.split", "expected one of 'test', 'valid', got 'train'"),
    config_case("name-with-a-slash", ["name=../escape"],
                "name", "expected a name without '/' or '\\' for the run directory, got '../escape'"),
    config_case("plugin-not-importable", ["plugins=[no_such_flowzoo_plugin]"],
                "plugins[0]", "cannot import module 'no_such_flowzoo_plugin'"),
]


@pytest.mark.parametrize("files, overrides, path, fragment", CONFIG_CASES)
def test_malformed_config_is_one_clear_error(tmp_path, capsys, files, overrides, path, fragment):
    config = IAF
    if files is not None:
        config = str(tmp_path / "config.yaml")
        for name, text in files.items():
            write = (tmp_path / name).write_bytes if isinstance(text, bytes) else (tmp_path / name).write_text
            write(text)
    output = tmp_path / "runs"
    status, out, err = flowzoo(capsys, "train", config, *overrides, f"output_dir={output}")
    assert status == 2, err
    assert "invalid config" in err and ": 1 problem\n" in err, err
    assert_problem(err, path.replace("{tmp}", str(tmp_path)), fragment.replace("{tmp}", str(tmp_path)))
    assert "Traceback" not in err + out
    assert not output.exists() or not any(output.iterdir())


@pytest.mark.parametrize("split", ["train", "valid"], ids=["truncated-train-split", "flipped-pixel-in-valid-split"])
def test_corrupt_data_file_stops_training_before_a_run_directory(capsys, tmp_path, shared_data_root, split):
    canonical = shared_data_root / "binarized_mnist"
    folder = tmp_path / "data" / "binarized_mnist"
    folder.mkdir(parents=True)
    if split == "train":
        with open(canonical / "binarized_mnist_train.amat", "rb") as file:
            (folder / "binarized_mnist_train.amat").write_bytes(file.read(100 * 2 * 784))  # the first 100 images
    else:  # the train split, read first, is intact; one pixel of the valid split is flipped
        (folder / "binarized_mnist_train.amat").symlink_to(canonical / "binarized_mnist_train.amat")
        raw = bytearray((canonical / "binarized_mnist_valid.amat").read_bytes())
        raw[1000] = ord("1") if raw[1000] == ord("0") else ord("0")
        (folder / "binarized_mnist_valid.amat").write_bytes(bytes(raw))
    output = tmp_path / "runs"
    status, out, err = flowzoo(capsys, "train", IAF, f"data.root={tmp_path / 'data'}", f"output_dir={output}")
    assert status == 2, err
    assert f"{folder / f'binarized_mnist_{split}.amat'} is not the canonical binarized MNIST '{split}' file" in err, err
    assert "corrupt or truncated" in err and "Traceback" not in err + out
    assert not output.exists()


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A hand-made run directory: the resolved configs/mnist_vae.yaml and no checkpoint yet."""
    run = tmp_path / "run"
    run.mkdir()
    RunDir(run).write_config(dataclasses.asdict(load_config(REPO / "configs" / "mnist_vae.yaml")))
    return run


CHECKPOINT_CASES = [
    pytest.param(lambda path: path.write_bytes(b""),
                 "is not a readable flowzoo checkpoint (EOFError)", id="zero-bytes"),
    pytest.param(lambda path: path.write_bytes(random.Random(0).randbytes(4096)),
                 "is not a readable flowzoo checkpoint (UnpicklingError", id="random-bytes"),
    pytest.param(lambda path: path.write_text("hello"), "is not a readable flowzoo checkpoint", id="text-file"),
    pytest.param(lambda path: torch.save(torch.zeros(3), path),
                 "is a torch file but not a flowzoo checkpoint", id="torch-tensor"),
    pytest.param(lambda path: torch.save({"weights": torch.zeros(3)}, path),
                 "is a torch file but not a flowzoo checkpoint", id="torch-dict-without-model"),
    pytest.param(lambda path: torch.save({"model": "weights"}, path), "is a torch file but not a flowzoo checkpoint",
                 id="model-not-a-mapping"),
    pytest.param(lambda path: torch.save({"model": nn.Linear(2, 2).state_dict()}, path),
                 "does not match the model in", id="weights-of-another-model"),
]


@pytest.mark.parametrize("write, fragment", CHECKPOINT_CASES)
def test_unusable_checkpoint_is_one_clear_error(capsys, run_dir, write, fragment):
    write(run_dir / "best.pt")
    status, out, err = flowzoo(capsys, "eval", str(run_dir))
    assert status == 2, err
    assert f"{run_dir / 'best.pt'} " in err and fragment in err, err
    assert "Traceback" not in err + out
    assert not (run_dir / "metrics.jsonl").exists()


def test_eval_override_is_validated_before_the_checkpoint_is_read(capsys, run_dir):
    status, out, err = flowzoo(capsys, "eval", str(run_dir), "eval.split=train")
    assert status == 2, err
    assert_problem(err, "eval.split", "expected one of 'test', 'valid', got 'train'")
    assert "best.pt" not in err


def test_a_users_terminal_sees_no_traceback_for_a_bad_config(tmp_path):
    (tmp_path / "config.yaml").write_text("name: small\n\tmodel: {}\n")
    result = run_cli("train", str(tmp_path / "config.yaml"), f"output_dir={tmp_path / 'runs'}")
    assert result.returncode == 2
    assert "not valid YAML: found a tab character" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()


def test_a_users_terminal_sees_no_traceback_for_a_garbage_checkpoint(run_dir):
    (run_dir / "best.pt").write_bytes(random.Random(0).randbytes(4096))
    result = run_cli("eval", str(run_dir))
    assert result.returncode == 2
    assert f"{run_dir / 'best.pt'} is not a readable flowzoo checkpoint" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (run_dir / "metrics.jsonl").exists()
