"""Decoder backbones: a latent ``z`` to the likelihood's parameters for each pixel.

A decoder is built for ``output_shape = (channels × params_per_channel, height,
width)``, so one architecture serves any likelihood.
"""

from __future__ import annotations

__all__ = ["ConvDecoder", "GatedConvDecoder", "MLPDecoder"]

import functools
import math
from typing import Sequence

from torch import Tensor, nn

from flowzoo import layers
from flowzoo.encoders import conv_output_sizes, quarter_size
from flowzoo.layers import Activation, Gated, mlp
from flowzoo.registry import register_decoder
from flowzoo.schema import NonNegativeInt, PositiveInt


@register_decoder("conv")
class ConvDecoder(nn.Module):
    """Dense layers then transposed convolutions, mirroring :class:`~flowzoo.encoders.ConvEncoder`.

    Args:
        latent_size: size of ``z`` (set by the model).
        output_shape: ``(channels, height, width)`` of the output (set by the model).
        channels: the encoder's convolution channels; the decoder runs them backwards.
        hidden_sizes: the encoder's dense sizes; the decoder runs them backwards.
        activation: nonlinearity after every layer but the last.

    Example:
        >>> import torch
        >>> decoder = ConvDecoder(8, (1, 28, 28), channels=(16, 32), hidden_sizes=(64,))
        >>> decoder(torch.zeros(5, 8)).shape
        torch.Size([5, 1, 28, 28])
    """

    def __init__(
        self,
        latent_size: int,
        output_shape: Sequence[int],
        channels: Sequence[PositiveInt] = (32, 64),
        hidden_sizes: Sequence[PositiveInt] = (450,),
        activation: Activation = "elu",
    ):
        super().__init__()
        if len(output_shape) != 3:
            raise ValueError(f"needs image data of shape (channels, height, width), got {tuple(output_shape)}")
        if not channels:
            raise ValueError("channels must have at least one convolution")
        heights = conv_output_sizes(output_shape[1], len(channels))
        widths = conv_output_sizes(output_shape[2], len(channels))
        self.start_shape = (channels[-1], heights[-1], widths[-1])
        sizes = [latent_size, *reversed(hidden_sizes), math.prod(self.start_shape)]
        self.dense = mlp(sizes, activation, final_activation=True)
        targets = list(reversed(channels[:-1])) + [output_shape[0]]
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(n_in, n_out, kernel_size=3, stride=2, padding=1)
            for n_in, n_out in zip(reversed(channels), targets)
        )
        self.output_sizes = list(zip(reversed(heights[:-1]), reversed(widths[:-1])))
        self.act = layers.activation(activation)

    def forward(self, z: Tensor) -> Tensor:
        h = self.dense(z).view(-1, *self.start_shape)
        for i, (deconv, size) in enumerate(zip(self.deconvs, self.output_sizes)):
            h = deconv(h, output_size=size)
            if i < len(self.deconvs) - 1:
                h = self.act(h)
        return h


@register_decoder("gated_conv")
class GatedConvDecoder(nn.Module):
    """The gated convolutional decoder of the Sylvester-flow paper (van den Berg et al. 2018).

    ``z`` is read as a 1×1 map of ``latent_size`` channels. A gated transposed
    convolution with an ``H/4 × W/4`` kernel (7×7 for 28×28 images, 7×5 for 28×20)
    makes it a 64-channel ``H/4 × W/4`` map; five gated 5×5 transposed convolutions
    (64, 32, 32, 32, 32 channels; strides 1, 2, 1, 2, 1; padding 2; output padding 1
    on the stride-2 ones) bring it to 32 maps of ``H × W``. The head then gives the
    likelihood's parameters: a 1×1 convolution (the authors' Bernoulli head, whose
    sigmoid flowzoo's ``bernoulli`` applies to the logits), or with
    ``head_channels > 0`` a 5×5 convolution (padding 2) to ``head_channels`` maps
    followed, with no activation between, by a 1×1 convolution (the authors' head for
    the 256-way categorical likelihood has ``head_channels: 256``).

    Args:
        latent_size: size of ``z`` (set by the model).
        output_shape: ``(channels × params per channel, height, width)``, height and
            width divisible by 4 (set by the model).
        head_channels: channels of the head's 5×5 convolution; 0 for a 1×1 head alone.

    References:
        van den Berg, Hasenclever, Tomczak & Welling, "Sylvester Normalizing Flows for
        Variational Inference", UAI 2018, and its released code,
        riannevdberg/sylvester-flows (models/VAE.py).

    Example:
        >>> import torch
        >>> GatedConvDecoder(64, (256, 28, 20), head_channels=256)(torch.zeros(2, 64)).shape
        torch.Size([2, 256, 28, 20])
    """

    def __init__(self, latent_size: int, output_shape: Sequence[int], head_channels: NonNegativeInt = 0):
        super().__init__()
        deconvs = [  # (in channels, out channels, kernel, stride, padding, output padding)
            (latent_size, 64, quarter_size(output_shape), 1, 0, 0),
            (64, 64, 5, 1, 2, 0),
            (64, 32, 5, 2, 2, 1),
            (32, 32, 5, 1, 2, 0),
            (32, 32, 5, 2, 2, 1),
            (32, 32, 5, 1, 2, 0),
        ]
        self.deconvs = nn.Sequential(*(Gated(functools.partial(nn.ConvTranspose2d, *d)) for d in deconvs))
        if head_channels:
            head = [nn.Conv2d(32, head_channels, 5, 1, 2), nn.Conv2d(head_channels, output_shape[0], 1)]
        else:
            head = [nn.Conv2d(32, output_shape[0], 1)]
        self.head = nn.Sequential(*head)
        self.latent_size = latent_size

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.deconvs(z.view(-1, self.latent_size, 1, 1)))


@register_decoder("mlp")
class MLPDecoder(nn.Module):
    """Dense layers, the last reshaped to the output.

    Args:
        latent_size: size of ``z`` (set by the model).
        output_shape: shape of the output (set by the model).
        hidden_sizes: sizes of the hidden layers, from ``z`` outwards.
        activation: nonlinearity after every hidden layer.

    Example:
        >>> import torch
        >>> MLPDecoder(8, (1, 28, 28), hidden_sizes=(16,))(torch.zeros(2, 8)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(
        self,
        latent_size: int,
        output_shape: Sequence[int],
        hidden_sizes: Sequence[PositiveInt] = (300, 300),
        activation: Activation = "elu",
    ):
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.dense = mlp([latent_size, *hidden_sizes, math.prod(output_shape)], activation, final_activation=False)

    def forward(self, z: Tensor) -> Tensor:
        return self.dense(z).view(-1, *self.output_shape)
