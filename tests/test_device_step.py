"""The training step on the device: no host reads, a guard that skips bit-exactly, fused optimizers.

In-process trainers on the first images of real static binarized MNIST
(tests/fixtures/subset_data.py). On the CPU a "host read" is any operator that turns a
tensor's value into a Python value; on CUDA each one is a synchronisation.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from flowzoo.checkpoint import load_checkpoint
from flowzoo.config import load_config
from flowzoo.experiment import _build
from flowzoo.graphs import GraphedStep
from flowzoo.optim import make_optimizer
from flowzoo.runs import RunDir
from flowzoo.trainer import Trainer

from conftest import FIXTURES, run_cli, tiny_config

pytestmark = pytest.mark.usefixtures("shared_data_root")

HOST_READS = {"_local_scalar_dense", "is_nonzero", "item", "equal"}


class HostReads(TorchDispatchMode):
    """Counts the operators that read a tensor's value on the host, and device-to-host copies."""

    def __init__(self):
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in HOST_READS:
            self.calls[name] += 1
        elif name in ("_to_copy", "copy_") and _to_host(func, args, kwargs):
            self.calls["device-to-host copy"] += 1
        return func(*args, **kwargs)


def _to_host(func, args, kwargs) -> bool:
    source = args[1] if func.overloadpacket.__name__ == "copy_" else args[0]
    target = args[0].device if func.overloadpacket.__name__ == "copy_" else kwargs.get("device")
    return source.device.type != "cpu" and target is not None and torch.device(target).type == "cpu"


@pytest.fixture(autouse=True)
def fixtures_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))


def make_trainer(tmp_path, data=None, **trainer) -> Trainer:
    config = load_config(tiny_config(output_dir=str(tmp_path / "runs"), data=data or {}, trainer=trainer))
    torch.manual_seed(config.seed)
    dataset, model = _build(config)
    splits = {split: dataset.load(split) for split in ("train", "valid")}
    plain = dataclasses.asdict(config)
    return Trainer(model, splits, config.trainer, RunDir.create(config.output_dir, config.name, plain), config=plain)


def take_steps(trainer: Trainer, batches, count: int) -> None:
    """``count`` steps as fit() takes them, without its log-step reads."""
    for _ in range(count):
        _, x = next(batches)
        trainer._train_step(x)
        trainer.step += 1


EVERYTHING_ON = {"grad_clip": 1.0, "ema_decay": 0.99, "kl_warmup_steps": 50, "free_bits": 0.05,
                 "lr_schedule": "cosine", "lr_warmup_steps": 5}


@pytest.mark.parametrize("optimizer", ["adam", "adamax"])
@pytest.mark.parametrize("options", [{}, EVERYTHING_ON], ids=["plain", "clip-ema-warmups-free-bits"])
def test_no_step_between_two_log_steps_reads_a_tensor_on_the_host(tmp_path, optimizer, options):
    trainer = make_trainer(tmp_path, optimizer=optimizer, log_every=10, **options)
    batches = iter(trainer.loader.epoch())
    take_steps(trainer, batches, 10)  # first steps allocate the optimizer state
    trainer._settle()
    trainer._log_window(rate=1.0)
    with HostReads() as reads:
        take_steps(trainer, batches, 9)  # steps 11..19: up to the next log step
    assert dict(reads.calls) == {}
    # On main before the device-side guard: 27 reads per step (the guard's .item() and
    # one per parameter tensor in the optimizer's bias correction).
    take_steps(trainer, batches, 1)
    trainer._settle()
    means = trainer._log_window(rate=1.0)
    assert means is not None and math.isfinite(means["loss"])


def snapshot(trainer: Trainer) -> list[torch.Tensor]:
    """Everything a skipped step must leave as it was: weights, optimizer state, the EMA."""
    tensors = [t.clone() for t in trainer.model.state_dict().values()]
    for state in trainer.optimizer.state.values():
        tensors += [t.clone() for t in state.values()]
    if trainer.ema is not None:
        tensors += [t.clone() for t in trainer.ema.shadow.values()]
    return tensors


def bit_identical(before: list[torch.Tensor], after: list[torch.Tensor]) -> bool:
    return len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("optimizer", ["adam", "adamax"])
@pytest.mark.parametrize("options", [{}, {"grad_clip": 1.0, "ema_decay": 0.99}, {"precision": "fp16"}],
                         ids=["plain", "clip-ema", "fp16-scaler"])
@pytest.mark.parametrize("poison", ["nan-batch", "nan-gradient"])
def test_a_poisoned_step_leaves_weights_and_optimizer_state_bit_identical(tmp_path, optimizer, options, poison):
    trainer = make_trainer(tmp_path, optimizer=optimizer, **options)
    batches = iter(trainer.loader.epoch())
    take_steps(trainer, batches, 3)
    before, applied = snapshot(trainer), trainer.window_steps.item()
    _, x = next(batches)
    if poison == "nan-batch":
        x = x.clone()
        x[0] = float("nan")
        trainer._train_step(x)
    else:  # a finite loss with a non-finite gradient in one layer
        weight = next(trainer.model.parameters())
        hook = weight.register_hook(lambda grad: torch.full_like(grad, float("nan")))
        trainer._train_step(x)
        hook.remove()
    trainer.step += 1
    assert trainer.skip.item() == 1 and trainer.window_steps.item() == applied  # not in the loss window
    assert bit_identical(before, snapshot(trainer))
    for _ in range(20):  # the next good step is applied (fp16: once the scaler has backed off)
        take_steps(trainer, batches, 1)
        if trainer.skip.item() == 0:
            break
    assert trainer.skip.item() == 0 and not bit_identical(before, snapshot(trainer))


def test_max_bad_steps_in_a_row_roll_back_at_the_next_read(tmp_path):
    trainer = make_trainer(tmp_path, max_bad_steps=3, log_every=10)
    trainer._checkpoint(trainer.run.last)  # step 0, as fit() writes it
    batches = iter(trainer.loader.epoch())
    take_steps(trainer, batches, 4)
    trained = snapshot(trainer)
    for _ in range(3):
        _, x = next(batches)
        trainer._train_step(torch.full_like(x, float("nan")))
        trainer.step += 1
    assert bit_identical(trained, snapshot(trainer))  # skipped; the rollback waits for the read
    trainer._settle()
    assert [r["consecutive"] for r in trainer.run.records("skipped")] == [1, 2, 3]
    assert [(r["step"], r["to_step"]) for r in trainer.run.records("rollback")] == [(7, 0)]
    restored = load_checkpoint(trainer.run.last)["model"]
    assert all(torch.equal(value, restored[key]) for key, value in trainer.model.state_dict().items())
    assert trainer.consecutive.item() == 0 and not bit_identical(trained, snapshot(trainer))


@pytest.mark.parametrize("name, reference", [("adam", torch.optim.Adam), ("adamax", torch.optim.Adamax)])
def test_fused_and_foreach_optimizers_match_torchs_default_implementation(tmp_path, name, reference):
    trainer = make_trainer(tmp_path)
    model = trainer.model
    copy = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    ours = make_optimizer(name, model.parameters(), lr=1e-3, weight_decay=1e-4, eps=1e-8)  # torch's eps
    theirs = reference(copy, lr=1e-3, weight_decay=1e-4, foreach=False)
    batches = iter(trainer.loader.epoch())
    for _ in range(20):  # real gradients of the model on real batches, given to both
        _, x = next(batches)
        model.zero_grad()
        model(x)["loss"].backward()
        for mine, other in zip(model.parameters(), copy):
            other.grad = mine.grad.clone()
        ours.step()
        theirs.step()
    for mine, other in zip(model.parameters(), copy):
        torch.testing.assert_close(mine.detach(), other.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "adamax"])
def test_the_static_buffer_step_of_cuda_graphs_run_eagerly_equals_the_eager_step(tmp_path, optimizer):
    """What a CUDA graph replays, checked on the CPU: the step from a static input buffer,
    with the learning rate as a device tensor, against the plain step."""
    # lr 1e-3: the float32 learning rate's rounding, compounded over 21 steps, stays inside the tolerance below
    options = {**EVERYTHING_ON, "optimizer": optimizer, "lr": 1e-3, "log_every": 7}
    eager, graphed = make_trainer(tmp_path / "eager", **options), make_trainer(tmp_path / "graphed", **options)
    graphed.graphed = GraphedStep(graphed._device_step, capture=False)
    graphed._lr_on_device()
    for trainer in (eager, graphed):
        torch.manual_seed(1)  # the same sampling noise for both
        batches = iter(trainer.loader.epoch())
        for _ in range(3):
            take_steps(trainer, batches, 7)
            trainer._settle()
            trainer._log_window(rate=1.0)
    for plain, static in zip(snapshot(eager), snapshot(graphed), strict=True):  # fused Adam: lr in float32, not 64
        torch.testing.assert_close(static, plain, rtol=1e-5, atol=1e-7)
    records = [[{k: v for k, v in r.items() if k not in ("kind", "time")} for r in t.run.records("train")]
               for t in (eager, graphed)]
    assert len(records[0]) == 3 and records[1] == [pytest.approx(r, rel=1e-6) for r in records[0]]
    assert isinstance(graphed.state_dict()["optimizer"]["param_groups"][0]["lr"], float)  # as eager runs write it


def test_cuda_graphs_are_refused_before_anything_runs_where_they_cannot_work(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(output_dir=str(tmp_path / "runs"))))
    result = run_cli("train", str(config), "trainer.cuda_graphs=true", "trainer.precision=fp16",
                     env={"PYTHONPATH": str(FIXTURES)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "trainer.cuda_graphs: CUDA graphs need a CUDA device" in result.stderr
    assert "use trainer.precision=bf16" in result.stderr
    assert not (tmp_path / "runs").exists()
