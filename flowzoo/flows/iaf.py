"""Inverse autoregressive flow (IAF) steps, gated and affine (the authors' code), on nflows' contract.

Each step is an nflows ``AutoregressiveTransform``: its MADE (``autoregressive_net``,
built by :func:`~flowzoo.flows.autoregressive.made_arguments`) gives two numbers per
latent, and the step says only what it does with them, elementwise, forwards
(``_elementwise_forward``) and backwards (``_elementwise_inverse``); nflows runs the
single MADE pass forwards and the ``features`` sequential passes of the inverse.
"""

from __future__ import annotations

__all__ = ["GatedIAF", "ResidualGatedIAF", "AffineIAF", "IAFInit", "gated_update", "start_near_identity",
           "kaiming_fan_out"]

import math
from typing import Literal

import torch
import torch.nn.functional as F
from nflows.transforms.autoregressive import AutoregressiveTransform
from nflows.transforms.made import MADE, MaskedLinear
from torch import Tensor, nn

from flowzoo import legacy
from flowzoo.flows.autoregressive import ContextEntry, MadeMasks, made
from flowzoo.layers import Activation
from flowzoo.registry import register_flow
from flowzoo.schema import PositiveFloat, PositiveInt


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


IAFInit = Literal["near_identity", "kaiming_fan_out"]
"""How a gated step's MADE starts: ``near_identity``, nflows' initialisation with the output
layer's weights in ±10⁻³ (:func:`start_near_identity`); or ``kaiming_fan_out``, the
Sylvester-flow authors' (:func:`kaiming_fan_out`). Either way the bias of m starts at 0 and
that of s at ``gate_bias``."""


@torch.no_grad()
def kaiming_fan_out(network: MADE, features: int) -> None:
    """Start every masked layer of ``network`` as the Sylvester-flow authors' ``MaskedLinear``: weights
    normal with standard deviation √(2 / outputs), biases 0.

    Their layers store the weight as (inputs, outputs), so PyTorch's ``kaiming_normal`` takes
    the outputs for the fan-in: √(2/320) in the hidden layers of a 320-unit MADE and √(2/64)
    in the output layers of m and s, which are one layer of 2 × 64 outputs here.
    """
    for layer in network.modules():
        if isinstance(layer, MaskedLinear):
            outputs = features if layer is network.final_layer else layer.out_features
            nn.init.normal_(layer.weight, std=math.sqrt(2 / outputs))
            nn.init.zeros_(layer.bias)


class _TwoOutputMADE(AutoregressiveTransform):
    """An autoregressive step whose MADE gives two numbers per latent, paired by :meth:`_pair`."""

    def __init__(self, features: int, context_features: int, hidden_features: int, hidden_layers: int,
                 residual: bool, activation: Activation, context_entry: ContextEntry = "projected",
                 masks: MadeMasks = "cyclic"):
        self.features = features
        super().__init__(made(features, context_features, hidden_features, hidden_layers, residual, activation,
                              output_multiplier=self._output_dim_multiplier(), context_entry=context_entry,
                              masks=masks))
        legacy.load_old_iaf_states(self)

    def _output_dim_multiplier(self) -> int:
        return 2

    def _pair(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """The MADE's output ``(batch, 2·features)`` as the two numbers of every latent, each ``(batch, features)``."""
        params = params.view(-1, self.features, 2)
        return params[..., 0], params[..., 1]


@register_flow("iaf", triangular="lower")
class GatedIAF(_TwoOutputMADE):
    r"""One gated IAF step: a single parallel MADE pass over z.

    .. math::
        [m, s] = \mathrm{MADE}(z, h), \quad \sigma = \mathrm{sigmoid}(s), \quad
        z' = \sigma \odot z + (1 - \sigma) \odot m, \quad
        \log|\det \partial z'/\partial z| = \textstyle\sum_i \log \sigma_i .

    ``m_i`` and ``s_i`` depend only on ``z_{<i}`` (and ``h``), so the Jacobian is lower
    triangular with diagonal ``σ``. The context ``h`` enters the MADE's first hidden
    layer. The gate's bias starts at ``gate_bias`` so that ``σ`` starts near 1 and the
    step starts close to the identity, which keeps deep stacks free of NaNs.

    The Sylvester-flow authors' IAF step is this one with ``context_entry:
    added_after_activation``, ``masks: blocks``, ``init: kaiming_fan_out`` and ``gate_bias:
    1.0``: their ``sigmoid(s + 1)`` with a fixed 1 and a learned bias of s starting at 0 is
    this gate with a learned bias starting at 1 (the same gradients, the same updates).

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        hidden_features: units in each MADE hidden layer.
        hidden_layers: MADE hidden layers, counting the first (where h enters).
        residual: the hidden layers after the first are residual blocks (two masked
            layers and a skip, h added in each).
        activation: MADE nonlinearity.
        gate_bias: initial bias of ``s``; ``sigmoid(2) ≈ 0.88``.
        context_entry: how h enters the first hidden layer (see
            :data:`~flowzoo.flows.autoregressive.ContextEntry`).
        masks: the MADE's connectivity (see :data:`~flowzoo.flows.autoregressive.MadeMasks`).
        init: how the MADE starts (see :data:`IAFInit`).

    References:
        Kingma et al., "Improving Variational Inference with Inverse Autoregressive
        Flow", NeurIPS 2016, equations 11–14.
        Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.
        van den Berg et al., "Sylvester Normalizing Flows for Variational Inference",
        UAI 2018, and its released code (riannevdberg/sylvester-flows, ``models/flows.py``
        ``IAF``, ``models/layers.py`` ``MaskedLinear``).

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
        residual: bool = False,
        activation: Activation = "elu",
        gate_bias: float = 2.0,
        context_entry: ContextEntry = "projected",
        masks: MadeMasks = "cyclic",
        init: IAFInit = "near_identity",
    ):
        super().__init__(features, context_features, hidden_features, hidden_layers, residual, activation,
                         context_entry, masks)
        final = self.autoregressive_net.final_layer
        m_bias, s_bias = final.bias.view(features, 2).unbind(1)
        if init == "near_identity":
            start_near_identity(final.weight, m_bias, s_bias, gate_bias)
        else:
            kaiming_fan_out(self.autoregressive_net, features)
            with torch.no_grad():
                s_bias.fill_(gate_bias)

    def _elementwise_forward(self, inputs: Tensor, autoregressive_params: Tensor) -> tuple[Tensor, Tensor]:
        z, log_sigma = gated_update(inputs, *self._pair(autoregressive_params))
        return z, log_sigma.sum(-1)

    def _elementwise_inverse(self, inputs: Tensor, autoregressive_params: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self._pair(autoregressive_params)
        sigma = torch.sigmoid(s)
        return (inputs - (1 - sigma) * m) / sigma, -F.logsigmoid(s).sum(-1)


@register_flow("iaf_resnet", triangular="lower")
class ResidualGatedIAF(GatedIAF):
    r"""A gated IAF step whose MADE is residual: the "ResNet-style" IAF layer.

    :class:`GatedIAF` with ``residual`` on: after the first masked layer (h added),
    ``hidden_layers − 1`` blocks of two masked layers with a skip connection, each
    gating its output with h, which keeps deeper networks trainable (Kingma et al.
    2016 use ResNet blocks throughout their models).

    Args:
        features: size of z (set by the model).
        context_features: size of the context h, 0 for none (set by the model).
        hidden_features: units in each MADE hidden layer.
        hidden_layers: MADE hidden layers, counting the first: 1 + the residual blocks.
        residual: the hidden layers after the first are residual blocks (two masked
            layers and a skip, h added in each).
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
        hidden_layers: PositiveInt = 3,
        residual: bool = True,
        activation: Activation = "elu",
        gate_bias: float = 2.0,
    ):
        super().__init__(features, context_features, hidden_features, hidden_layers, residual, activation, gate_bias)


@register_flow("iaf_affine", triangular="lower")
class AffineIAF(_TwoOutputMADE):
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
        hidden_layers: MADE hidden layers, counting the first (where h enters).
        residual: the hidden layers after the first are residual blocks (two masked
            layers and a skip, h added in each).
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
        residual: bool = False,
        activation: Activation = "elu",
        scale: PositiveFloat = 0.1,
    ):
        self.scale = scale
        super().__init__(features, context_features, hidden_features, hidden_layers, residual, activation)

    def _elementwise_forward(self, inputs: Tensor, autoregressive_params: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self._pair(self.scale * autoregressive_params)
        return (inputs - m) * torch.exp(-s), -s.sum(-1)

    def _elementwise_inverse(self, inputs: Tensor, autoregressive_params: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self._pair(self.scale * autoregressive_params)
        return inputs * torch.exp(s) + m, s.sum(-1)
