"""The Sylvester-flow paper's model in flowzoo: gated convolutions, the authors' posterior head and
amortization, and parameter counts equal to those of the authors' released models."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from nflows.transforms import CompositeTransform
from torch import nn

from conftest import REPO

from flowzoo.config import load_config
from flowzoo.console import parameter_count
from flowzoo.decoders import GatedConvDecoder
from flowzoo.encoders import GatedConvEncoder
from flowzoo.errors import ConfigError
from flowzoo.flowcheck import check_flow
from flowzoo.flows import GatedIAF, Planar, TriangularSylvester, reverse
from flowzoo.flows.sylvester import bjorck_orthonormal
from flowzoo.layers import Gated
from flowzoo.posteriors import SoftplusGaussian
from flowzoo.registry import datasets, models
from flowzoo.vae import build_model

# -- the gated convolutional encoder and decoder --------------------------------------------


def test_a_gated_layer_multiplies_its_output_by_the_sigmoid_of_its_twin():
    torch.manual_seed(0)
    gated = Gated(lambda: nn.Conv2d(2, 3, 3, padding=1))
    x = torch.randn(4, 2, 6, 5)
    assert torch.allclose(gated(x), gated.h(x) * torch.sigmoid(gated.g(x)))
    assert not torch.equal(gated.h.weight, gated.g.weight)  # two layers, not one shared


def feature_maps(layers: nn.Sequential, x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes = []
    for layer in layers:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


@pytest.mark.parametrize("height, width", [(28, 28), (28, 20)], ids=["28x28", "28x20"])
def test_the_encoder_halves_twice_then_covers_the_map_with_one_kernel(height, width):
    encoder = GatedConvEncoder((1, height, width))
    x = torch.rand(3, 1, height, width)
    h, w = height // 4, width // 4
    assert feature_maps(encoder.convs, x) == [
        (32, height, width), (32, 2 * h, 2 * w), (64, 2 * h, 2 * w), (64, h, w), (64, h, w), (256, 1, 1)
    ]
    assert encoder.convs[-1].h.kernel_size == (h, w) and encoder.convs[-1].h.padding == (0, 0)
    assert encoder(x).shape == (3, 256) and encoder.out_features == 256


@pytest.mark.parametrize("height, width, out_channels, head_channels",
                         [(28, 28, 1, 0), (28, 20, 256, 256)], ids=["28x28-bernoulli", "28x20-categorical"])
def test_the_decoder_mirrors_the_encoder_up_to_the_likelihoods_head(height, width, out_channels, head_channels):
    decoder = GatedConvDecoder(64, (out_channels, height, width), head_channels=head_channels)
    z = torch.randn(5, 64)
    h, w = height // 4, width // 4
    assert feature_maps(decoder.deconvs, z.view(5, 64, 1, 1)) == [
        (64, h, w), (64, h, w), (32, 2 * h, 2 * w), (32, 2 * h, 2 * w), (32, height, width), (32, height, width)
    ]
    head = [(conv.in_channels, conv.out_channels, conv.kernel_size) for conv in decoder.head]
    if head_channels:
        assert head == [(32, 256, (5, 5)), (256, out_channels, (1, 1))]
    else:
        assert head == [(32, out_channels, (1, 1))]
    assert decoder(z).shape == (5, out_channels, height, width)


def test_image_sides_must_be_divisible_by_four():
    with pytest.raises(ConfigError, match=r"model.encoder: encoder 'gated_conv': .*divisible by 4.*\(1, 30, 28\)"):
        build_model({"latent_size": 8, "encoder": {"name": "gated_conv"}, "decoder": {"name": "gated_conv"}},
                    data_shape=(1, 30, 28))


# -- the authors' posterior head --------------------------------------------------------------


def test_softplus_variance_is_the_gaussian_with_that_variance():
    torch.manual_seed(0)
    posterior = SoftplusGaussian(6, 3)
    features = torch.randn(4, 6)
    z0, log_q0 = posterior(features, n_samples=2)
    mean, raw = posterior.head(features).chunk(2, dim=-1)
    expected = torch.distributions.Normal(mean, nn.functional.softplus(raw).sqrt()).log_prob(z0).sum(-1)
    assert torch.allclose(log_q0, expected, atol=1e-5)


@pytest.mark.parametrize("bias, variance", [(-30.0, 0.01), (30.0, 7.0)], ids=["floor", "ceiling"])
def test_variance_range_clamps_the_variance(bias, variance):
    torch.manual_seed(0)
    posterior = SoftplusGaussian(6, 3, variance_range=(0.01, 7.0))
    with torch.no_grad():
        posterior.head.weight.zero_()
        posterior.head.bias[:3] = 0.0  # the mean half
        posterior.head.bias[3:] = bias  # the scale half
    z0, log_q0 = posterior(torch.randn(4, 6), n_samples=200)
    assert torch.allclose(log_q0, torch.distributions.Normal(0.0, variance**0.5).log_prob(z0).sum(-1), atol=1e-4)
    assert abs(z0.var().item() - variance) < 0.15 * variance


def test_a_bad_variance_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.posterior: .*low < high"):
        build_model({"latent_size": 4, "encoder": {"name": "mlp", "hidden_sizes": [8]},
                     "decoder": {"name": "mlp", "hidden_sizes": [8]},
                     "posterior": {"name": "softplus_gaussian", "variance_range": [7, 0.01]}}, data_shape=(1, 4, 4))


# -- amortization: the encoder's features as the flows' context ------------------------------


def small_vae(**model) -> dict:
    return {"latent_size": 4, "encoder": {"name": "mlp", "hidden_sizes": [10]},
            "decoder": {"name": "mlp", "hidden_sizes": [8]}, **model}


def test_features_as_context_hands_the_features_to_every_flow():
    torch.manual_seed(0)
    model = build_model(small_vae(features_as_context=True, flows=[{"name": "planar", "repeat": 2}]),
                        data_shape=(1, 4, 4))
    assert model.context is None
    assert parameter_count(model.flows) == 2 * (10 + 1) * (2 * 4 + 1)  # a Linear(10, 2D + 1) per step
    seen = []
    for step in model.flows._transforms:
        step.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    x = torch.randint(0, 2, (3, 1, 4, 4)).float()
    terms = model.log_weights(x, n_samples=2)
    features = model.encoder(x)
    assert len(seen) == 2 and all(torch.equal(context, features.repeat(2, 1)) for context in seen)
    assert all(torch.isfinite(t).all() for t in terms.values())


def test_features_as_context_with_a_context_layer_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        build_model(small_vae(features_as_context=True, context_size=8), data_shape=(1, 4, 4))
    assert "model.features_as_context" in str(error.value) and "context_size to 0" in str(error.value)


def test_pytorch_init_needs_a_context():
    with pytest.raises(ConfigError, match=r"model.flows\[0\]: .*init='pytorch'.*no context"):
        build_model(small_vae(flows=[{"name": "planar", "init": "pytorch"}]), data_shape=(1, 4, 4))


@pytest.mark.parametrize("init, weight_std, bias_zero", [("near_identity", 0.1 / 256**0.5, True),
                                                         ("pytorch", 1 / (3 * 256) ** 0.5, False)])
def test_init_chooses_how_the_map_from_the_context_starts(init, weight_std, bias_zero):
    torch.manual_seed(0)
    linear = Planar(64, context_features=256, init=init).params.from_context
    assert abs(linear.weight.std().item() - weight_std) < 0.05 * weight_std
    assert bool((linear.bias == 0).all()) == bias_zero
    if init == "pytorch":
        assert linear.weight.abs().max() <= 1 / 16 and linear.bias.abs().max() <= 1 / 16


SYLVESTER_AS_THE_AUTHORS = [
    {"name": "sylvester_orthogonal", "num_ortho_vecs": 3, "orthogonalization": "bjorck"},
    {"name": "sylvester_orthogonal", "num_ortho_vecs": 5, "orthogonalization": "bjorck"},  # M = D: tolerance 1e-5
    {"name": "sylvester_householder", "reflections": 3},
    {"name": "sylvester_triangular"},
]


@pytest.mark.parametrize("spec", SYLVESTER_AS_THE_AUTHORS, ids=lambda spec: f"{spec['name']}-{len(spec)}")
def test_the_authors_sylvester_variants_meet_the_flow_contract(spec):
    """Log-det against the autograd Jacobian (float64), gradients, triangularity, save/load."""
    check_flow({**spec, "init": "pytorch", "triangles": "shared_square"}).assert_passed()


def test_planar_with_pytorch_init_meets_the_flow_contract():
    check_flow({"name": "planar", "init": "pytorch"}).assert_passed()


def test_shared_square_reads_r_above_and_r_tilde_below_its_diagonal():
    """The authors' R1 = triu(D, 1) + diag(tanh d1), R2 = triu(Dᵀ, 1) + diag(tanh d2) with Q = I:
    z' = z + R1 tanh(R2 z + b), computed here from the step's own amortized values."""
    torch.manual_seed(0)
    step = TriangularSylvester(4, context_features=3, init="pytorch", triangles="shared_square")
    z, h = torch.randn(6, 4), torch.randn(6, 3)
    p = step.params(h, 6)
    r1 = torch.triu(p["square"], 1) + torch.diag_embed(torch.tanh(p["r_diag"]))
    r2 = torch.triu(p["square"].mT, 1) + torch.diag_embed(torch.tanh(p["r_tilde_diag"]))
    expected = z + (r1 @ torch.tanh(r2 @ z[..., None] + p["b"][..., None]))[..., 0]
    assert torch.allclose(step(z, context=h)[0], expected, atol=1e-6)


def test_the_diagonal_of_the_shared_square_gets_no_gradient():
    torch.manual_seed(0)
    step = TriangularSylvester(4, context_features=3, init="pytorch", triangles="shared_square")
    z_new, logabsdet = step(torch.randn(6, 4), context=torch.randn(6, 3))
    (z_new.square().sum() + logabsdet.sum()).backward()
    square = step.params.from_context.bias.grad[:16].view(4, 4)  # the first 4 × 4 values are the square's
    assert (square.diagonal() == 0).all()
    assert (square[~torch.eye(4, dtype=torch.bool)] != 0).all()


def test_triangular_steps_with_reversals_between_and_after_are_the_authors_alternation():
    """The authors' T-SNF uses Q = P (the reversal) in every second step, z' = z + P R tanh(R̃ P z + b);
    the flow list [T, reverse, T, reverse, T, reverse, T, reverse] computes the same map."""
    torch.manual_seed(0)
    steps = [TriangularSylvester(5, context_features=3, init="pytorch") for _ in range(4)]
    chain = CompositeTransform([transform for step in steps for transform in (step, reverse(5))])
    z, h = torch.randn(7, 5), torch.randn(7, 3)
    expected, expected_logabsdet = z, torch.zeros(7)
    for k, step in enumerate(steps):
        if k % 2:
            out, logabsdet = step(expected.flip(-1), context=h)
            expected = out.flip(-1)
        else:
            expected, logabsdet = step(expected, context=h)
        expected_logabsdet = expected_logabsdet + logabsdet
    out, logabsdet = chain(z, context=h)
    assert torch.allclose(out, expected, atol=1e-6) and torch.allclose(logabsdet, expected_logabsdet, atol=1e-6)


# -- the authors' IAF step -----------------------------------------------------------------

AUTHORS_IAF_STEP = {"context_entry": "added_after_activation", "masks": "blocks", "init": "kaiming_fan_out",
                    "gate_bias": 1.0}


def authors_masks(features: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Their MaskedLinear masks as (outputs, inputs), written from their rule (models/layers.py 91-108):
    hidden unit j sees inputs <= j // k, unit i of the next hidden layer units <= i, and output i
    hidden units < k i, with k = hidden / features."""
    k = hidden // features
    j, i = torch.arange(hidden), torch.arange(features)
    first = (i[None, :] <= j[:, None] // k).float()
    middle = (j[None, :] <= j[:, None]).float()
    last = (j[None, :] < k * i[:, None]).float()
    return first, middle, last


def test_the_authors_iaf_step_computes_their_step():
    """Their step, written out from models/flows.py 262-298: h = ELU(W1 z) + h_context, h = ELU(W2 h),
    gate = sigmoid(W_s h + 1.0) with their fixed 1.0 (flowzoo's learned bias of s starts at it),
    z' = gate z + (1 - gate) W_m h, log-det sum log gate; their masks; ELU."""
    torch.manual_seed(0)
    features, hidden = 4, 12
    step = GatedIAF(features, context_features=hidden, hidden_features=hidden, hidden_layers=2, **AUTHORS_IAF_STEP)
    made = step.autoregressive_net
    first, middle, last = authors_masks(features, hidden)
    assert torch.equal(made.initial_layer.mask, first)
    assert torch.equal(made.blocks[0].linear.mask, middle)
    assert torch.equal(made.final_layer.mask.view(features, 2, hidden)[:, 0], last)  # m's rows
    assert torch.equal(made.final_layer.mask.view(features, 2, hidden)[:, 1], last)  # s's rows
    assert not hasattr(made, "context_layer")  # no per-step weights for h
    z, h_context = torch.randn(6, features), torch.randn(6, hidden)
    w1, w2 = made.initial_layer, made.blocks[0].linear
    hidden_units = F.elu(F.linear(z, w1.weight * first, w1.bias)) + h_context
    hidden_units = F.elu(F.linear(hidden_units, w2.weight * middle, w2.bias))
    w_out = (made.final_layer.weight * made.final_layer.mask).view(features, 2, hidden)
    b_out = made.final_layer.bias.view(features, 2)
    mean = hidden_units @ w_out[:, 0].T + b_out[:, 0]
    s = hidden_units @ w_out[:, 1].T + (b_out[:, 1] - 1.0)  # their bias of s, next to the fixed 1.0
    gate = torch.sigmoid(s + 1.0)
    out, logabsdet = step(z, context=h_context)
    assert torch.allclose(out, gate * z + (1 - gate) * mean, atol=1e-6)
    assert torch.allclose(logabsdet, torch.log(gate).sum(-1), atol=1e-5)


def test_the_authors_iaf_step_starts_as_their_kaiming_init():
    """kaiming_normal of weights stored as (in, out): std sqrt(2 / outputs); zero biases but for the
    gate's 1.0 (flowzoo's bias of s), models/layers.py 75, 86-89."""
    torch.manual_seed(0)
    made = GatedIAF(64, context_features=320, hidden_features=320, hidden_layers=2,
                    **AUTHORS_IAF_STEP).autoregressive_net
    final = made.final_layer
    for layer, std in [(made.initial_layer, (2 / 320) ** 0.5), (made.blocks[0].linear, (2 / 320) ** 0.5),
                       (final, (2 / 64) ** 0.5)]:
        assert layer.weight.std().item() == pytest.approx(std, rel=0.02)
        assert layer.weight.mean().item() == pytest.approx(0, abs=0.05 * std)
    assert (made.initial_layer.bias == 0).all() and (made.blocks[0].linear.bias == 0).all()
    m_bias, s_bias = final.bias.view(64, 2).unbind(1)
    assert (m_bias == 0).all() and (s_bias == 1.0).all()


@pytest.mark.parametrize("options", [AUTHORS_IAF_STEP, {"context_entry": "added_after_activation"},
                                     {"masks": "blocks"}, {"init": "kaiming_fan_out"}],
                         ids=["all", "context_entry", "masks", "init"])
def test_the_authors_iaf_options_meet_the_flow_contract(options):
    """Log-det against the autograd Jacobian (float64), lower-triangular Jacobian, inverse, save/load."""
    context = 10 if "context_entry" in options else 3
    check_flow({"name": "iaf", "hidden_features": 10, **options}, features=5, context_features=context).assert_passed()


@pytest.mark.parametrize("options, message", [
    ({"context_entry": "added_after_activation", "hidden_features": 8}, r"h has 3 values.*model.context_size"),
    ({"context_entry": "added_after_activation", "hidden_features": 3, "residual": True}, r"set residual to false"),
    ({"masks": "blocks", "hidden_features": 7}, r"multiple of 4"),
])
def test_the_authors_iaf_options_name_what_to_change(options, message):
    with pytest.raises(ConfigError, match=message):
        build_model({"latent_size": 4, "context_size": 3, "encoder": {"name": "mlp"}, "decoder": {"name": "mlp"},
                     "flows": [{"name": "iaf", **options}]}, data_shape=(1, 28, 28))


def test_bjorck_gives_the_orthonormal_polar_factor():
    torch.manual_seed(0)
    a = torch.randn(6, 8, 3, dtype=torch.float64)
    q = bjorck_orthonormal(a, tolerance=1e-12)
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    assert torch.allclose(q, u @ vh, atol=1e-10)
    assert not torch.allclose(q.abs(), torch.linalg.qr(a).Q.abs(), atol=1e-2)  # not the QR factor


def test_bjorck_warns_when_it_runs_out_of_steps():
    with pytest.warns(RuntimeWarning, match="stopped after 2 steps"):
        bjorck_orthonormal(torch.randn(2, 8, 3), tolerance=1e-6, max_steps=2)


# -- parameter counts equal to the authors' models ----------------------------------------------

# The authors' parameter counts: riannevdberg/sylvester-flows at commit
# 32dde9b7d696fee94f946a338182e542779eecfe, models/VAE.py's VAE, PlanarVAE, OrthogonalSylvesterVAE,
# HouseholderSylvesterVAE and TriangularSylvesterVAE built with main_experiment.py's defaults
# (z_size 64, num_flows 4, num_ortho_vecs 8, num_householder 8) and load_data.py's input_size and
# input_type for MNIST ([1, 28, 28], binary) and Frey Faces ([1, 28, 20], multinomial), counted as
# sum(p.numel() for p in model.parameters()) per top-level module, with torch 2.13 on CPU.
# encoder = q_z_nn; posterior = q_z_mean + q_z_var; decoder = p_x_nn + p_x_mean; flows = amor_*.
AUTHORS_COUNTS = {
    "mnist": {"encoder": 2_171_456, "posterior": 32_896, "decoder": 862_753},
    "freyfaces": {"encoder": 1_712_704, "posterior": 32_896, "decoder": 1_018_880},
}
AUTHORS_FLOW_COUNTS = {  # the same on both data sets
    "no_flow": 0,
    "planar": 132_612,
    "orthogonal": 616_800,
    "householder": 4_934_400,
    "triangular": 4_408_064,
    "iaf": 740_672,  # h_context = Linear(256, 320), 82,240, and 4 steps of 164,608
}
AUTHORS_TOTALS = {
    ("mnist", "no_flow"): 3_067_105, ("mnist", "planar"): 3_199_717, ("mnist", "orthogonal"): 3_683_905,
    ("mnist", "householder"): 8_001_505, ("mnist", "triangular"): 7_475_169,
    ("freyfaces", "no_flow"): 2_764_480, ("freyfaces", "planar"): 2_897_092, ("freyfaces", "orthogonal"): 3_381_280,
    ("freyfaces", "householder"): 7_698_880, ("freyfaces", "triangular"): 7_172_544,
    ("mnist", "iaf"): 3_807_777, ("freyfaces", "iaf"): 3_505_152,
}

PAPER_CONFIGS = REPO / "configs" / "paper" / "sylvester"
PAPER_DATA = ["mnist", "freyfaces"]
PAPER_FLOWS = list(AUTHORS_FLOW_COUNTS)


def paper_config(data: str, flow: str, overrides: list[str] = ()):
    return load_config(PAPER_CONFIGS / f"{data}_{flow}.yaml", overrides)


def paper_model(data: str, flow: str):
    """The model of a paper config, as ``flowzoo train`` builds it."""
    config = paper_config(data, flow)
    shape = datasets.instantiate(config.data, "data").shape
    return models.instantiate(config.model, "model", data_shape=tuple(shape))


def test_every_paper_config_is_a_row():
    rows = {path.stem for path in PAPER_CONFIGS.glob("*.yaml")} - {f"{data}_base" for data in PAPER_DATA}
    assert rows == {f"{data}_{flow}" for data in PAPER_DATA for flow in PAPER_FLOWS}


@pytest.mark.parametrize("flow", PAPER_FLOWS)
@pytest.mark.parametrize("data", PAPER_DATA)
def test_parameter_counts_equal_the_authors_models(data, flow):
    model = paper_model(data, flow)
    parts = {name: parameter_count(module) for name, module in model.components().items()}
    assert {name: parts[name] for name in AUTHORS_COUNTS[data]} == AUTHORS_COUNTS[data]
    assert parts["flows"] + parts.get("context", 0) == AUTHORS_FLOW_COUNTS[flow]  # their flows hold the context
    assert parameter_count(model) == AUTHORS_TOTALS[data, flow]


@pytest.mark.parametrize("flow", PAPER_FLOWS)
def test_the_paper_models_give_finite_importance_weights(flow):
    torch.manual_seed(0)
    model = paper_model("mnist", flow)
    terms = model.log_weights(torch.randint(0, 2, (2, 1, 28, 28)).float(), n_samples=3)
    assert all(t.shape[:2] == (3, 2) and torch.isfinite(t).all() for t in terms.values())


@pytest.mark.parametrize("path", [PAPER_CONFIGS / f"{data}_{flow}.yaml" for data in PAPER_DATA for flow in PAPER_FLOWS],
                         ids=lambda path: path.stem)
def test_each_paper_configs_short_cpu_run_is_a_valid_override(path):
    """The header's ``flowzoo train`` lines: the config as it is and its documented short override."""
    text = path.read_text()
    commands = re.findall(r"^#   flowzoo train (\S+)((?: \S+=\S+)*)(?: \\\n#\s+((?:\S+=\S+ ?)+))?", text, flags=re.M)
    assert [command[0] for command in commands] == [f"configs/paper/sylvester/{path.name}"] * 2
    overrides = (commands[1][1] + " " + commands[1][2]).split()
    short = load_config(path, overrides)
    assert short.trainer.epochs == 1 and short.eval.iw_samples == 10
    assert load_config(path).eval.iw_samples == 5000  # the paper's test −log p(x) by default
