"""The trainer's GPU paths: mixed precision, torch.compile, CUDA graphs, no synchronisation, data placement.

Skipped without CUDA (CI has none); run on a lent GPU with ``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from flowzoo.experiment import train
from flowzoo.registry import flows, list_flows

from conftest import FIXTURES, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_on_gpu(tmp_path, **trainer) -> dict:
    return tiny_config(output_dir=str(tmp_path / "runs"),
                       trainer={"device": "cuda", "epochs": 2, "checkpoint_every": 0, **trainer},
                       data={"root": None})  # the packaged copy: a lent GPU has no shared data folder


@pytest.fixture(autouse=True)
def fixtures_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))


@pytest.mark.parametrize("precision, compiled", [("fp32", False), ("bf16", False), ("fp16", False), ("bf16", True)])
def test_precisions_and_compile_train_on_the_gpu(tmp_path, precision, compiled):
    run = train(tiny_on_gpu(tmp_path, precision=precision, compile=compiled))
    train_records = list(run.dir.records("train"))
    assert all(math.isfinite(r["loss"]) for r in train_records)
    assert train_records[-1]["loss"] < train_records[0]["loss"] - 20
    assert run.metrics["neg_elbo"] < 230
    assert next(run.model.parameters()).dtype == torch.float32  # autocast leaves the weights in fp32


def test_pinned_host_data_trains_like_device_resident_data(tmp_path):
    resident = train(tiny_on_gpu(tmp_path / "a", data_on_device="always"))
    pinned = train(tiny_on_gpu(tmp_path / "b", data_on_device="never"))
    assert pinned.metrics["neg_elbo"] == pytest.approx(resident.metrics["neg_elbo"], rel=0.02)


@pytest.mark.parametrize("name", list_flows())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_flow_runs_under_cuda_autocast(name, dtype):
    torch.manual_seed(0)
    flow = flows.build({"name": name}, "flow", features=5, context_features=3).cuda()
    z0 = torch.randn(4, 5, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=dtype):
        z, logabsdet = flow(z0, context=torch.randn(4, 3, device="cuda"))
    (z.float().square().sum() - logabsdet.float().sum()).backward()
    assert torch.isfinite(z).all() and torch.isfinite(logabsdet).all() and torch.isfinite(z0.grad).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graphs_train_like_the_eager_step(tmp_path, precision):
    options = {"precision": precision, "ema_decay": 0.99, "kl_warmup_steps": 50, "free_bits": 0.05, "grad_clip": 5.0}
    eager = train(tiny_on_gpu(tmp_path / "eager", **options))
    graphed = train(tiny_on_gpu(tmp_path / "graphed", cuda_graphs=True, **options))
    records = list(graphed.dir.records("train"))
    assert all(math.isfinite(r["loss"]) for r in records) and records[-1]["loss"] < records[0]["loss"] - 20
    assert graphed.metrics["neg_elbo"] == pytest.approx(eager.metrics["neg_elbo"], rel=0.02)


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "graphed"])
def test_the_steady_state_of_an_epoch_never_synchronises(tmp_path, cuda_graphs):
    from test_device_step import make_trainer, take_steps

    trainer = make_trainer(tmp_path, data={"root": None}, device="cuda", log_every=50, ema_decay=0.99, grad_clip=1.0,
                           kl_warmup_steps=100, cuda_graphs=cuda_graphs)
    batches = iter(trainer.loader.epoch())
    take_steps(trainer, batches, 50)  # warm-up, capture
    trainer._settle()
    trainer._log_window(rate=1.0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        take_steps(trainer, batches, 49)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    take_steps(trainer, batches, 1)
    trainer._settle()
    assert math.isfinite(trainer._log_window(rate=1.0)["loss"])
