"""Stochastic layers of the ResNet VAE: bidirectional-inference blocks, with or without an IAF step.

A block is one residual layer of the ResNet VAE (:mod:`flowzoo.resnet_vae`) holding
one latent tensor ``z`` of ``latent_channels`` channels. The bottom-up pass gives each
block its share of the posterior (and a context); the top-down pass, which is also
the generative model, gives the prior and a correction to the posterior, so that the
posterior of a layer depends on the data and on the layers above it.
"""

from __future__ import annotations

__all__ = ["MaskedConv2d", "AutoregressiveConvNet", "GaussianBlock", "IAFBlock", "Statistics"]

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowzoo.flows.iaf import gated_update, start_near_identity
from flowzoo.registry import register_block
from flowzoo.schema import NonNegativeFloat, PositiveInt

Statistics = tuple[Tensor, Tensor, Tensor]
"""What the bottom-up pass leaves a block: posterior mean, posterior log-std and context."""

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _wide(t: Tensor) -> Tensor:
    """``t`` in float32 if autocast made it narrower (float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _normal_log_prob(standardized: Tensor, log_std: Tensor) -> Tensor:
    return -0.5 * standardized.square() - log_std - _HALF_LOG_2PI


class MaskedConv2d(nn.Conv2d):
    """A convolution in which output channel ``o`` sees input channel ``i`` only if
    ``out_degrees[o] > in_degrees[i]`` (``strict``) or ``≥`` (not strict), at every tap.

    Masking channels, not positions, makes the map autoregressive over the channel
    order: with channel-major ordering of ``(channel, height, width)`` its Jacobian is
    block triangular, every position of a channel coming after all earlier channels.

    Example:
        >>> conv = MaskedConv2d(torch.arange(3), torch.arange(3), kernel_size=3, strict=True)
        >>> conv.mask[:, :, 0, 0]
        tensor([[0., 0., 0.],
                [1., 0., 0.],
                [1., 1., 0.]])
    """

    def __init__(self, in_degrees: Tensor, out_degrees: Tensor, kernel_size: int, strict: bool):
        super().__init__(len(in_degrees), len(out_degrees), kernel_size, padding=kernel_size // 2)
        connected = out_degrees[:, None] > in_degrees[None] if strict else out_degrees[:, None] >= in_degrees[None]
        self.register_buffer("mask", connected[:, :, None, None].float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class AutoregressiveConvNet(nn.Module):
    """Masked convolutions mapping ``z`` (and a context) to ``outputs`` tensors shaped like ``z``,
    output channel ``c`` of each depending only on channels ``< c`` of ``z``.

    The context is added after the first hidden layer, as in the IAF authors' code;
    hidden channels are spread evenly over the latent channels' degrees (MADE's rule).

    Args:
        channels: channels of ``z``.
        hidden_channels: channels of each hidden layer (and of the context).
        hidden_layers: number of hidden layers.
        kernel_size: spatial size of every convolution.
        outputs: tensors shaped like ``z`` to produce (2: ``m`` and ``s``).

    References:
        Kingma et al., "Improving Variational Inference with Inverse Autoregressive
        Flow", NeurIPS 2016 (appendix C and the released code, ``ar_multiconv2d``).
        Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.

    Example:
        >>> net = AutoregressiveConvNet(channels=4, hidden_channels=8)
        >>> m, s = net(torch.randn(2, 4, 5, 5), context=torch.randn(2, 8, 5, 5))
        >>> m.shape
        torch.Size([2, 4, 5, 5])
    """

    def __init__(self, channels: int, hidden_channels: int, hidden_layers: int = 2, kernel_size: int = 3,
                 outputs: int = 2):
        super().__init__()
        self.channels, self.outputs = channels, outputs
        latent = torch.arange(channels)
        hidden = torch.arange(hidden_channels) * channels // hidden_channels
        self.hidden = nn.ModuleList(
            MaskedConv2d(latent if i == 0 else hidden, hidden, kernel_size, strict=False) for i in range(hidden_layers)
        )
        self.output = MaskedConv2d(hidden, latent.repeat(outputs), kernel_size, strict=True)

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, ...]:
        h = F.elu(self.hidden[0](z) + context)
        for layer in self.hidden[1:]:
            h = F.elu(layer(h))
        return self.output(h).unflatten(1, (self.outputs, self.channels)).unbind(1)


@register_block("gaussian")
class GaussianBlock(nn.Module):
    r"""A bidirectional-inference ResNet block whose posterior is a diagonal Gaussian.

    Bottom-up, from the features ``d`` below: one convolution gives the posterior's
    mean and log-std contributions, a context and a hidden feature; a second turns the
    hidden feature into a residual update, ``d ← d + α·conv(elu(·))``.

    Top-down, from the features ``h`` above: one convolution gives the prior's mean
    and log-std, corrections to the posterior's, a context and a deterministic feature;

    .. math::
        q(z|\cdot) = \mathcal N(\mu_\uparrow + \mu_\downarrow,\ e^{\log\sigma_\uparrow + \log\sigma_\downarrow}),
        \qquad p(z|\cdot) = \mathcal N(\mu_p, e^{\log\sigma_p}),

    ``z`` is drawn from the posterior (from the prior when generating), the KL term of
    the layer is ``log q(z) − log p(z)`` per element, and ``[z, feature]`` makes the
    residual update ``h ← h + α·conv(elu(·))``. A block that downsamples halves the
    resolution on the way up (strided convolution, average-pooled skip) and doubles it
    on the way down (transposed convolution, nearest-neighbour skip).

    Args:
        width: channels of the residual stream (set by the model).
        latent_channels: channels of ``z`` (set by the model).
        downsample: whether this block changes resolution (set by the model).
        top: whether this is the topmost block, whose bottom-up pass ends the encoder
            and so makes no residual update (set by the model).
        kernel_size: spatial size of the convolutions.
        residual_scale: α, which keeps every block close to the identity at the start
            of training (0.1 in the IAF authors' code).

    References:
        Kingma et al., "Improving Variational Inference with Inverse Autoregressive
        Flow", NeurIPS 2016, section 6 and appendix C ("bidirectional inference").

    Example:
        >>> block = GaussianBlock(width=8, latent_channels=2, downsample=True)
        >>> d, statistics = block.up(torch.randn(3, 8, 8, 8))
        >>> d.shape
        torch.Size([3, 8, 4, 4])
        >>> h, z, log_q, log_p = block.down(torch.randn(3, 8, 4, 4), statistics)
        >>> h.shape, z.shape, log_q.shape
        (torch.Size([3, 8, 8, 8]), torch.Size([3, 2, 4, 4]), torch.Size([3, 2]))
    """

    def __init__(self, width: int, latent_channels: int, downsample: bool, top: bool = False,
                 kernel_size: PositiveInt = 3, residual_scale: NonNegativeFloat = 0.1):
        super().__init__()
        self.width, self.latent_channels, self.downsample = width, latent_channels, downsample
        self.residual_scale = residual_scale
        padding = kernel_size // 2
        self.up_in = nn.Conv2d(width, 2 * latent_channels + 2 * width, kernel_size, 2 if downsample else 1, padding)
        self.up_out = None if top else nn.Conv2d(width, width, kernel_size, padding=padding)
        self.down_in = nn.Conv2d(width, 4 * latent_channels + 2 * width, kernel_size, padding=padding)
        if downsample:
            self.down_out = nn.ConvTranspose2d(latent_channels + width, width, 4, stride=2, padding=1)
        else:
            self.down_out = nn.Conv2d(latent_channels + width, width, kernel_size, padding=padding)

    def up(self, d: Tensor) -> tuple[Tensor | None, Statistics]:
        """The bottom-up step: the features for the block above (None for the top block),
        and this block's posterior terms."""
        c, w = self.latent_channels, self.width
        q_mean, q_log_std, context, hidden = self.up_in(F.elu(d)).split([c, c, w, w], dim=1)
        if self.up_out is None:
            return None, (q_mean, q_log_std, context)
        skip = F.avg_pool2d(d, 2) if self.downsample else d
        return skip + self.residual_scale * self.up_out(F.elu(hidden)), (q_mean, q_log_std, context)

    def down(
        self, h: Tensor, statistics: Statistics | None, z: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """The top-down step: the features for the block below, this layer's ``z``, and
        ``log q(z)`` and ``log p(z)`` summed per latent channel, ``(batch, latent_channels)``.

        ``statistics`` are the block's bottom-up terms, repeated to ``h``'s batch (one
        copy per posterior sample); with ``None``, ``z`` is drawn from the prior, or is
        the given ``z``, and no log-densities are returned.
        """
        c, w = self.latent_channels, self.width
        p_mean, p_log_std, r_mean, r_log_std, context, feature = self.down_in(F.elu(h)).split(
            [c, c, c, c, w, w], dim=1
        )
        # Densities in float32 even under autocast: log q and log p are sums over every
        # position whose difference, the KL term, is small next to either.
        p_mean, p_log_std, r_mean, r_log_std = (_wide(t) for t in (p_mean, p_log_std, r_mean, r_log_std))
        if statistics is None:
            if z is None:
                z = p_mean + p_log_std.exp() * torch.randn_like(p_mean)
            log_q = log_p = None
        else:
            q_mean, q_log_std, up_context = statistics
            log_std = _wide(q_log_std) + r_log_std
            noise = torch.randn_like(log_std)
            z = q_mean + r_mean + log_std.exp() * noise
            log_q = _normal_log_prob(noise, log_std)
            z, log_diagonal = self.transform(z, up_context + context)
            log_q = (log_q - log_diagonal).sum((2, 3))
            log_p = _normal_log_prob((z - p_mean) * (-p_log_std).exp(), p_log_std).sum((2, 3))
        skip = F.interpolate(h, scale_factor=2.0, mode="nearest") if self.downsample else h
        update = self.down_out(F.elu(torch.cat([z.to(feature.dtype), feature], dim=1)))
        return skip + self.residual_scale * update, z, log_q, log_p

    def transform(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """A flow applied to the posterior sample: ``(z', log|∂z'_i/∂z_i|)`` elementwise
        (the Jacobian is triangular); the identity here."""
        return z, torch.zeros_like(z)


@register_block("iaf")
class IAFBlock(GaussianBlock):
    r"""A bidirectional-inference ResNet block with one gated IAF step on its posterior sample.

    As :class:`GaussianBlock`, then

    .. math::
        [m, s] = \mathrm{ARConv}(z, c_\uparrow + c_\downarrow), \quad
        z \leftarrow \sigma \odot z + (1 - \sigma) \odot m, \quad \sigma = \mathrm{sigmoid}(s),
        \quad \log q(z) \leftarrow \log q(z) - \textstyle\sum \log \sigma,

    with an autoregressive convolutional network over the latent channels
    (:class:`AutoregressiveConvNet`) that receives the sum of the bottom-up and
    top-down contexts. The gate's bias starts at ``gate_bias`` so the step starts near
    the identity.

    Args:
        width: channels of the residual stream (set by the model).
        latent_channels: channels of ``z`` (set by the model).
        downsample: whether this block changes resolution (set by the model).
        top: whether this is the topmost block (set by the model).
        kernel_size: spatial size of the convolutions.
        residual_scale: α, the scale of the residual updates at every step.
        hidden_layers: hidden layers of the autoregressive network (each ``width`` channels).
        gate_bias: initial bias of ``s``; ``sigmoid(2) ≈ 0.88``.

    References:
        Kingma et al., "Improving Variational Inference with Inverse Autoregressive
        Flow", NeurIPS 2016, section 6 and appendix C.

    Example:
        >>> block = IAFBlock(width=8, latent_channels=2, downsample=False)
        >>> d, statistics = block.up(torch.randn(3, 8, 4, 4))
        >>> h, z, log_q, log_p = block.down(torch.randn(3, 8, 4, 4), statistics)
        >>> (log_q - log_p).shape  # the KL term per latent channel
        torch.Size([3, 2])
    """

    def __init__(self, width: int, latent_channels: int, downsample: bool, top: bool = False,
                 kernel_size: PositiveInt = 3, residual_scale: NonNegativeFloat = 0.1, hidden_layers: PositiveInt = 2,
                 gate_bias: float = 2.0):
        super().__init__(width, latent_channels, downsample, top, kernel_size, residual_scale)
        self.autoregressive = AutoregressiveConvNet(latent_channels, width, hidden_layers, kernel_size)
        output = self.autoregressive.output
        start_near_identity(output.weight, output.bias[:latent_channels], output.bias[latent_channels:], gate_bias)

    def transform(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.autoregressive(z, context)
        return gated_update(z, _wide(m), _wide(s))
