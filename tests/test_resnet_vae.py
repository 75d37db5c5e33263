"""The ResNet VAE with IAF blocks: autoregressive convolutions, block log-dets, the
per-layer KL and free bits, bits/dim, configs, and training on the real CIFAR-10 subset."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from flowzoo.registry import datasets
from flowzoo.blocks import AutoregressiveConvNet, GaussianBlock, IAFBlock
from flowzoo.config import load_config
from flowzoo.errors import ConfigError
from flowzoo.evaluation import evaluate
from flowzoo.experiment import train
from flowzoo.vae import build_model

REPO = Path(__file__).resolve().parents[1]
SMALL = {"name": "resnet_vae", "width": 8, "latent_channels": 3, "levels": 2, "blocks_per_level": 2}


def images(n: int, shape=(3, 8, 8), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed)).float()


def test_the_autoregressive_network_never_lets_channel_k_reach_outputs_up_to_k():
    torch.manual_seed(0)
    channels = 5
    net = AutoregressiveConvNet(channels, hidden_channels=12, hidden_layers=2)
    z, context = torch.randn(2, channels, 6, 6), torch.randn(2, 12, 6, 6)
    outputs = net(z, context)
    for k in range(channels):
        changed = z.clone()
        changed[:, k] += torch.randn(2, 6, 6)
        for before, after in zip(outputs, net(changed, context)):
            assert torch.equal(before[:, : k + 1], after[:, : k + 1]), f"channel {k} reached outputs ≤ {k}"
            if k < channels - 1:  # and the later channels do see it, everywhere around
                assert not torch.allclose(before[:, k + 1 :], after[:, k + 1 :])


@pytest.fixture
def iaf_block() -> IAFBlock:
    torch.manual_seed(1)
    block = IAFBlock(width=6, latent_channels=3, downsample=False).double()
    nn.init.normal_(block.autoregressive.output.weight, std=0.5)  # far from the near-identity start
    return block


def test_the_iaf_step_log_det_equals_the_autograd_jacobian_in_float64(iaf_block):
    z, context = torch.randn(1, 3, 2, 2, dtype=torch.float64), torch.randn(1, 6, 2, 2, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda flat: iaf_block.transform(flat.view(z.shape), context)[0]
                                                  .flatten(), z.flatten())
    _, log_diagonal = iaf_block.transform(z, context)
    sign, log_det = torch.linalg.slogdet(jacobian)
    assert sign > 0
    assert torch.allclose(log_det, log_diagonal.sum(), atol=1e-10)
    # Channel-major order: output (c, position) depends on channels < c anywhere, and on itself.
    per_channel = jacobian.view(3, 4, 3, 4)
    for c in range(3):
        assert torch.all(per_channel[c, :, c + 1 :] == 0)
        off_diagonal = per_channel[c, :, c] - torch.diag(torch.diagonal(per_channel[c, :, c]))
        assert torch.all(off_diagonal == 0)
    assert torch.any(per_channel[2, :, :2] != 0)


def test_a_gaussian_block_posterior_log_density_is_that_of_its_sample():
    torch.manual_seed(2)
    block = GaussianBlock(width=4, latent_channels=2, downsample=False).double()
    d, (q_mean, q_log_std, context) = block.up(torch.randn(3, 4, 5, 5, dtype=torch.float64))
    h = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    torch.manual_seed(3)
    _, _, log_q, log_p = block.down(h, (q_mean, q_log_std, context))
    # Redraw the same noise and compute both densities independently with torch.distributions.
    p_mean, p_log_std, r_mean, r_log_std = block.down_in(nn.functional.elu(h))[:, :8].split(2, dim=1)
    torch.manual_seed(3)
    noise = torch.randn_like(q_mean)
    scale = (q_log_std + r_log_std).exp()
    z = q_mean + r_mean + scale * noise
    expected_q = torch.distributions.Normal(q_mean + r_mean, scale).log_prob(z).sum((2, 3))
    expected_p = torch.distributions.Normal(p_mean, p_log_std.exp()).log_prob(z).sum((2, 3))
    assert torch.allclose(log_q, expected_q) and torch.allclose(log_p, expected_p)


def test_log_weights_split_the_kl_over_layers_and_channels():
    model = build_model(SMALL, (3, 8, 8))
    x = images(4)
    terms = model.log_weights(x, n_samples=3)
    assert terms["log_px_given_z"].shape == terms["log_pz"].shape == terms["log_qz"].shape == (3, 4)
    assert terms["kl_groups"].shape == (3, 4, 4, 3)  # samples, batch, layers, latent channels
    assert torch.allclose(terms["kl_groups"].sum((2, 3)), terms["log_qz"] - terms["log_pz"], atol=1e-3)
    assert not torch.allclose(terms["log_qz"][0], terms["log_qz"][1])  # each sample its own noise


def test_free_bits_floor_each_layer_and_channel_and_the_losses_are_the_elbo():
    torch.manual_seed(0)
    model = build_model(SMALL, (3, 8, 8))
    x = images(4)
    torch.manual_seed(5)
    plain = model(x)
    torch.manual_seed(5)
    floored = model(x, free_bits=1e4)
    assert torch.allclose(plain["loss"], plain["neg_elbo"])
    groups = len(model.layer_names) * 3
    assert torch.allclose(floored["loss"] - floored["recon"], torch.tensor(groups * 1e4))
    assert torch.allclose(sum(plain[f"kl/{name}"] for name in model.layer_names), plain["kl"])
    assert torch.allclose(plain["bpd"], plain["neg_elbo"] / (3 * 8 * 8 * math.log(2)))


def test_evaluation_reports_bits_per_dim_and_each_layers_kl():
    torch.manual_seed(0)
    model = build_model(SMALL, (3, 8, 8))
    metrics = evaluate(model, images(6).to(torch.uint8), iw_samples=5, batch_size=3)
    dims = 3 * 8 * 8
    assert metrics["bpd_elbo"] == pytest.approx(metrics["neg_elbo"] / (dims * math.log(2)))
    assert metrics["bpd_iw"] == pytest.approx(metrics["nll_iw"] / (dims * math.log(2)))
    assert metrics["bpd_iw"] <= metrics["bpd_elbo"]
    assert list(metrics["kl_per_layer"]) == list(model.layer_names)
    assert sum(metrics["kl_per_layer"].values()) == pytest.approx(metrics["kl"], rel=1e-4)


def test_every_parameter_gets_a_gradient():  # as DistributedDataParallel requires
    model = build_model(SMALL, (3, 8, 8))
    model(images(2))["loss"].backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_samples_and_reconstructions_are_images():
    model = build_model(SMALL, (3, 8, 8))
    pictures = model.pictures(images(2))
    assert pictures["samples"].shape == (2, 3, 8, 8)
    assert pictures["reconstructions"].shape == (2, 3, 8, 16)
    assert 0 <= pictures["samples"].min() and pictures["samples"].max() <= 1


@pytest.mark.parametrize("spec, shape", [
    (SMALL, (3, 8, 8)),
    ({"latent_size": 3, "encoder": {"name": "mlp"}, "decoder": {"name": "mlp"}}, (1, 8, 8)),
])
def test_interpolations_run_between_the_two_reconstructions(spec, shape):
    model = build_model(spec, shape)
    x_a, x_b = images(2, shape, seed=1), images(2, shape, seed=2)
    if shape[0] == 1:
        x_a, x_b = (x_a > 127).float(), (x_b > 127).float()
    torch.manual_seed(0)
    path = model.interpolate(x_a, x_b, steps=5)
    assert path.shape == (2, 5, *shape)
    torch.manual_seed(0)
    start, end = model.encode(x_a), model.encode(x_b)
    assert torch.allclose(path[:, 0], model.decode(start)) and torch.allclose(path[:, -1], model.decode(end))
    assert not torch.allclose(path[:, 2], path[:, 0])


@pytest.mark.parametrize("config", ["cifar_iaf", "cifar_vae", "mnist_resnet_iaf"])
def test_the_configs_build_the_models_they_describe(config):
    resolved = load_config(REPO / "configs" / f"{config}.yaml")
    shape = (1, 28, 28) if resolved.data.name == "mnist_dynamic" else (3, 32, 32)
    model = build_model(resolved.model, shape)
    expected = "IAFBlock" if "iaf" in config else "GaussianBlock"
    assert {type(block).__name__ for level in model.levels for block in level} == {expected}
    assert len(model.layer_names) == resolved.model.levels * resolved.model.blocks_per_level


@pytest.mark.parametrize(
    "changes, path, message",
    [
        ({"levels": 3}, "model", "28×28 images cannot be halved 3 times"),
        ({"block": {"name": "iaff"}}, "model.block.name", "Did you mean 'iaf'?"),
        ({"block": {"name": "gaussian", "ar_layers": 2}}, "model.block.ar_layers", "unknown parameter"),
        ({"width": 0}, "model.width", "expected an integer ≥ 1"),
        ({"latent_size": 32}, "model.latent_size", "Did you mean 'latent_channels'?"),
    ],
)
def test_bad_resnet_configs_name_the_key(changes, path, message):
    with pytest.raises(ConfigError) as error:
        build_model({**SMALL, **changes}, (1, 28, 28))
    (problem,) = error.value.problems
    assert problem.path == path and message in problem.message


@pytest.fixture(scope="module")
def cifar_root(shared_data_root) -> Path:
    if not (shared_data_root / "cifar10_subset" / "cifar-10-batches-py" / "data_batch_1").is_file():
        pytest.skip("the CIFAR-10 subset is not under the data root")
    return shared_data_root


def loss_after_steps(model: nn.Module, train_images: torch.Tensor, held_out: torch.Tensor, steps: int,
                     transform=lambda x: x) -> tuple[float, float]:
    """The −ELBO of ``held_out`` (fixed noise) before and after ``steps`` Adamax steps on ``train_images``."""

    def held_out_loss() -> float:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            return model(held_out)["neg_elbo"].item()

    before = held_out_loss()
    optimizer = torch.optim.Adamax(model.parameters(), lr=2e-3)
    for step in range(steps):
        batch = train_images[step * 32 % len(train_images):][:32]
        optimizer.zero_grad()
        model(transform(batch), free_bits=0.25)["loss"].backward()
        optimizer.step()
    return before, held_out_loss()


def test_a_few_steps_on_the_real_cifar_subset_lower_the_loss(cifar_root):
    data = datasets.build({"name": "cifar10", "root": str(cifar_root), "download": False}, "data")
    torch.manual_seed(0)
    model = build_model({**SMALL, "width": 16, "latent_channels": 4, "blocks_per_level": 1}, data.shape)
    before, after = loss_after_steps(model, data.load("train").float(), data.load("test")[:64].float(), steps=40)
    assert after < before - 0.2 * 3072 * math.log(2)  # by more than 0.2 bits/dim


def test_the_resnet_vae_lowers_the_loss_on_dynamically_binarized_mnist(shared_data_root):
    data = datasets.build({"name": "mnist_dynamic", "root": str(shared_data_root)}, "data")
    torch.manual_seed(0)
    model = build_model({**SMALL, "likelihood": {"name": "bernoulli"}}, data.shape)
    before, after = loss_after_steps(model, data.load("train")[:1280].float(), data.load("valid")[:64].float(),
                                     steps=40, transform=data.train_transform)
    assert after < before - 50


def test_the_documented_cpu_smoke_run_of_cifar_iaf_prints_bits_per_dim(cifar_root, tmp_path, capsys):
    smoke = ["model.width=32", "model.latent_channels=8", "trainer.epochs=1", "eval.iw_samples=4"]
    assert " ".join(smoke) in (REPO / "configs" / "cifar_iaf.yaml").read_text()
    config = load_config(REPO / "configs" / "cifar_iaf.yaml", [
        *smoke, "model.width=8", "model.latent_channels=2", "trainer.log_every=10", "trainer.tensorboard=false",
        f"data.root={cifar_root}", f"output_dir={tmp_path}",
    ])
    finished = train(config)
    (test,) = finished.dir.records("test")
    assert test["examples"] == 1000 and 0 < test["bpd_iw"] <= test["bpd_elbo"] < 8.5
    assert list(test["kl_per_layer"]) == list(finished.model.layer_names)
    printed = capsys.readouterr().out
    assert "bits/dim" in printed and f"{test['bpd_elbo']:.3f}" in printed
