"""Inverse autoregressive flow (IAF) steps: gated, affine (the authors' code) and residual-MADE."""

from __future__ import annotations

__all__ = ["GatedIAF", "ResidualGatedIAF", "AffineIAF", "made", "gated_update", "start_near_identity"]

import torch
import torch.nn.functional as F
from nflows.transforms import Transform
from nflows.transforms.made import MADE
from torch import Tensor, nn

from flowzoo import layers
from flowzoo.layers import Activation
from flowzoo.registry import register_flow
from flowzoo.schema import PositiveFloat, PositiveInt


def made(
    features: int, context_features: int, hidden_features: int, blocks: int, residual: bool, activation: Activation
) -> MADE:
    """nflows' MADE giving 2 outputs per latent, each depending only on earlier latents and h.

    ``blocks`` counts the hidden blocks after the first hidden layer, where h is added;
    a residual block is two masked layers with a skip connection.
    """
    return MADE(
        features=features,
        hidden_features=hidden_features,
        context_features=context_features or None,
        num_blocks=blocks,
        output_multiplier=2,
        use_residual_blocks=residual,
        activation=layers.activation(activation),
    )


def gated_update(z: Tensor, m: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """The gated IAF update ``σ·z + (1−σ)·m`` with ``σ = sigmoid(s)``, and ``log σ`` elementwise."""
    sigma = torch.sigmoid(s)
    return sigma * z + (1 - sigma) * m, F.logsigmoid(s)


@torch.no_grad()
def start_near_identity(weight: Tensor, m_bias: Tensor, s_bias: Tensor, gate_bias: float) -> None:
    """Initialise an autoregressive network's output layer so that ``m ≈ 0`` and
    ``s ≈ gate_bias`` for every input: a gated step then starts close to the identity."""
    nn.init.uniform_(weight, -1e-3, 1e-3)
    m_bias.zero_()
    s_bias.fill_(gate_bias)


class _Gated(Transform):
    """The gated update shared by the IAF steps below, whatever their MADE."""

    def __init__(self, features: int, made: MADE, gate_bias: float):
        super().__init__()
        self.features = features
        self.made = made
        final = self.made.final_layer
        start_near_identity(final.weight, final.bias.view(features, 2)[:, 0], final.bias.view(features, 2)[:, 1],
                            gate_bias)

    def _gate(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        params = self.made(z, context).view(-1, self.features, 2)
        return params[..., 0], params[..., 1]

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, log_sigma = gated_update(z, *self._gate(z, context))
        return z, log_sigma.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Invert by ``features`` sequential MADE passes (exact after the last)."""
        x = torch.zeros_like(z)
        for _ in range(self.features):
            m, s = self._gate(x, context)
            sigma = torch.sigmoid(s)
            x = (z - (1 - sigma) * m) / sigma
        return x, -F.logsigmoid(s).sum(-1)


@register_flow("iaf", triangular="lower")
class GatedIAF(_Gated):
    r"""One gated IAF step: a single parallel MADE pass over z.

    .. math::
        [m, s] = \mathrm{MADE}(z, h), \quad \sigma = \mathrm{sigmoid}(s), \quad
        z' = \sigma \odot z + (1 - \sigma) \odot m, \quad
        \log|\det \partial z'/\partial z| = \textstyle\sum_i \log \sigma_i .

    ``m_i`` and ``s_i`` depend only on ``z_{<i}`` (and ``h``), so the Jacobian is lower
    triangular with diagonal ``σ``. The context ``h`` enters the MADE's first hidden
    layer. The gate's bias starts at ``gate_bias`` so that ``σ`` starts near 1 and the
    step starts close to the identity, which keeps deep stacks free of NaNs.

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        hidden_features: units in each MADE hidden layer.
        hidden_layers: number of MADE hidden layers.
        activation: MADE nonlinearity.
        gate_bias: initial bias of ``s``; ``sigmoid(2) ≈ 0.88``.

    References:
        Kingma et al., "Improving Variational Inference with Inverse Autoregressive
        Flow", NeurIPS 2016, equations 11–14.
        Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.

    Example:
        >>> flow = GatedIAF(features=4, context_features=3, hidden_features=16)
        >>> z, h = torch.randn(5, 4), torch.randn(5, 3)
        >>> z_new, logabsdet = flow(z, context=h)
        >>> z_new.shape, logabsdet.shape
        (torch.Size([5, 4]), torch.Size([5]))
        >>> torch.allclose(flow.inverse(z_new, context=h)[0], z, atol=1e-5)
        True
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden_features: PositiveInt = 320,
        hidden_layers: PositiveInt = 2,
        activation: Activation = "elu",
        gate_bias: float = 2.0,
    ):
        network = made(features, context_features, hidden_features, hidden_layers - 1, False, activation)
        super().__init__(features, network, gate_bias)


@register_flow("iaf_resnet", triangular="lower")
class ResidualGatedIAF(_Gated):
    r"""A gated IAF step whose MADE is residual: the "ResNet-style" IAF layer.

    The update and log-det are those of :class:`GatedIAF`; the autoregressive network
    is nflows' residual MADE: a first masked layer (h added), then ``residual_blocks``
    blocks of two masked layers with a skip connection, each gating its output with h,
    which keeps deeper networks trainable (Kingma et al. 2016 use ResNet blocks
    throughout their models).

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        hidden_features: units in each MADE hidden layer.
        residual_blocks: number of residual blocks after the first hidden layer.
        activation: MADE nonlinearity.
        gate_bias: initial bias of ``s``; ``sigmoid(2) ≈ 0.88``.

    References:
        Kingma et al., "Improving Variational Inference with Inverse Autoregressive
        Flow", NeurIPS 2016. He et al., "Deep Residual Learning for Image
        Recognition", CVPR 2016. Durkan et al., nflows (residual MADE).

    Example:
        >>> flow = ResidualGatedIAF(features=4, context_features=3, hidden_features=16)
        >>> z, h = torch.randn(5, 4), torch.randn(5, 3)
        >>> torch.allclose(flow.inverse(flow(z, context=h)[0], context=h)[0], z, atol=1e-5)
        True
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden_features: PositiveInt = 320,
        residual_blocks: PositiveInt = 2,
        activation: Activation = "elu",
        gate_bias: float = 2.0,
    ):
        network = made(features, context_features, hidden_features, residual_blocks, True, activation)
        super().__init__(features, network, gate_bias)


@register_flow("iaf_affine", triangular="lower")
class AffineIAF(Transform):
    r"""The affine IAF step of the IAF authors' code: a scaled, near-identity shift and scale.

    .. math::
        [m, s] = \mathrm{MADE}(z, h), \quad
        z' = (z - \alpha m) \odot e^{-\alpha s}, \quad
        \log|\det \partial z'/\partial z| = -\alpha \textstyle\sum_i s_i,

    with the outputs scaled by ``α`` (0.1 in the released code) so that the step starts
    close to the identity. Compared with the gated form, ``s`` is unbounded.

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        hidden_features: units in each MADE hidden layer.
        hidden_layers: number of MADE hidden layers.
        activation: MADE nonlinearity.
        scale: α, the factor on the MADE's outputs.

    References:
        Kingma et al., "Improving Variational Inference with Inverse Autoregressive
        Flow", NeurIPS 2016, and the released code (openai/iaf,
        ``IAFLayer``: ``z = (z - 0.1 m) / exp(0.1 s)``).

    Example:
        >>> flow = AffineIAF(features=4, context_features=3, hidden_features=16)
        >>> z, h = torch.randn(5, 4), torch.randn(5, 3)
        >>> torch.allclose(flow.inverse(flow(z, context=h)[0], context=h)[0], z, atol=1e-5)
        True
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden_features: PositiveInt = 320,
        hidden_layers: PositiveInt = 2,
        activation: Activation = "elu",
        scale: PositiveFloat = 0.1,
    ):
        super().__init__()
        self.features = features
        self.scale = scale
        self.made = made(features, context_features, hidden_features, hidden_layers - 1, False, activation)

    def _shift_and_log_scale(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        params = self.scale * self.made(z, context).view(-1, self.features, 2)
        return params[..., 0], params[..., 1]

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        m, s = self._shift_and_log_scale(z, context)
        return (z - m) * torch.exp(-s), -s.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Invert by ``features`` sequential MADE passes (exact after the last)."""
        x = torch.zeros_like(z)
        for _ in range(self.features):
            m, s = self._shift_and_log_scale(x, context)
            x = z * torch.exp(s) + m
        return x, s.sum(-1)
