"""Encoder backbones: an image ``x`` to a feature vector.

The VAE puts two linear heads on the features: the base posterior's parameters
(mean and log-std for :class:`~flowzoo.posteriors.DiagonalGaussian`) and the flows'
context ``h``. An encoder exposes ``out_features``, the size of its features.
"""

from __future__ import annotations

__all__ = ["ConvEncoder", "GatedConvEncoder", "MLPEncoder", "conv_output_sizes", "quarter_size"]

import functools
import math
from typing import Sequence

from torch import Tensor, nn

from flowzoo import layers
from flowzoo.layers import Activation, Gated, mlp
from flowzoo.registry import register_encoder
from flowzoo.schema import PositiveInt


def conv_output_sizes(size: int, stages: int) -> list[int]:
    """Spatial sizes after each stride-2, kernel-3, padding-1 convolution.

    Example:
        >>> conv_output_sizes(28, 3)
        [28, 14, 7, 4]
    """
    sizes = [size]
    for _ in range(stages):
        sizes.append((sizes[-1] - 1) // 2 + 1)
    return sizes


@register_encoder("conv")
class ConvEncoder(nn.Module):
    """Strided convolutions then dense layers.

    Each convolution halves the image (kernel 3, stride 2); the feature map is then
    flattened and passed through dense layers. Mirrored by
    :class:`~flowzoo.decoders.ConvDecoder` with the same arguments.

    Args:
        input_shape: ``(channels, height, width)`` of the data (set by the model).
        channels: output channels of each convolution.
        hidden_sizes: sizes of the dense layers; the last is ``out_features``.
        activation: nonlinearity after every layer.

    Example:
        >>> import torch
        >>> encoder = ConvEncoder((1, 28, 28), channels=(16, 32), hidden_sizes=(64,))
        >>> encoder(torch.zeros(5, 1, 28, 28)).shape
        torch.Size([5, 64])
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[PositiveInt] = (32, 64),
        hidden_sizes: Sequence[PositiveInt] = (450,),
        activation: Activation = "elu",
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"needs image data of shape (channels, height, width), got {tuple(input_shape)}")
        if not hidden_sizes:
            raise ValueError("hidden_sizes must have at least one dense layer")
        convs: list[nn.Module] = []
        for n_in, n_out in zip([input_shape[0], *channels[:-1]], channels):
            convs += [nn.Conv2d(n_in, n_out, kernel_size=3, stride=2, padding=1), layers.activation(activation)]
        height = conv_output_sizes(input_shape[1], len(channels))[-1]
        width = conv_output_sizes(input_shape[2], len(channels))[-1]
        flat = (channels[-1] if channels else input_shape[0]) * height * width
        self.convs = nn.Sequential(*convs)
        self.dense = mlp([flat, *hidden_sizes], activation, final_activation=True)
        self.out_features = hidden_sizes[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.dense(self.convs(x).flatten(1))


def quarter_size(shape: Sequence[int]) -> tuple[int, int]:
    """``(height / 4, width / 4)`` of a ``(channels, height, width)`` image: the feature map between
    the gated convolutional encoder (or decoder) and its features (or latent).

    Raises:
        ValueError: ``shape`` is not an image shape with height and width divisible by 4.

    Example:
        >>> quarter_size((1, 28, 20))
        (7, 5)
    """
    if len(shape) != 3 or shape[1] % 4 or shape[2] % 4:
        raise ValueError(f"needs images of shape (channels, height, width) with height and width divisible by 4 "
                         f"(two stride-2 stages), got {tuple(shape)}")
    return shape[1] // 4, shape[2] // 4


@register_encoder("gated_conv")
class GatedConvEncoder(nn.Module):
    """The gated convolutional encoder of the Sylvester-flow paper (van den Berg et al. 2018).

    Five gated 5×5 convolutions (:class:`~flowzoo.layers.Gated`: ``h ⊙ sigmoid(g)``,
    no other activation) with 32, 32, 64, 64, 64 channels, strides 1, 2, 1, 2, 1 and
    padding 2 take an ``H × W`` image to 64 maps of ``H/4 × W/4``; a last gated
    convolution whose kernel covers that whole map (7×7 for 28×28 images, 7×5 for the
    28×20 Frey faces; stride 1, no padding) gives ``out_features`` features. This is
    the authors' encoder for both their binary and their 8-bit data sets; see
    docs/sylvester_reference.md for the lines of their code it follows.

    Args:
        input_shape: ``(channels, height, width)`` of the data, height and width
            divisible by 4 (set by the model).
        out_features: size of the features (the authors' 256).

    References:
        van den Berg, Hasenclever, Tomczak & Welling, "Sylvester Normalizing Flows for
        Variational Inference", UAI 2018, appendix (architecture), and its released
        code, riannevdberg/sylvester-flows (models/VAE.py).

    Example:
        >>> import torch
        >>> GatedConvEncoder((1, 28, 20))(torch.zeros(2, 1, 28, 20)).shape
        torch.Size([2, 256])
    """

    def __init__(self, input_shape: Sequence[int], out_features: PositiveInt = 256):
        super().__init__()
        convs = [  # (in channels, out channels, kernel, stride, padding)
            (input_shape[0], 32, 5, 1, 2),
            (32, 32, 5, 2, 2),
            (32, 64, 5, 1, 2),
            (64, 64, 5, 2, 2),
            (64, 64, 5, 1, 2),
            (64, out_features, quarter_size(input_shape), 1, 0),
        ]
        self.convs = nn.Sequential(*(Gated(functools.partial(nn.Conv2d, *conv)) for conv in convs))
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x).flatten(1)


@register_encoder("mlp")
class MLPEncoder(nn.Module):
    """Dense layers over the flattened input.

    Args:
        input_shape: shape of one example (set by the model).
        hidden_sizes: sizes of the dense layers; the last is ``out_features``.
        activation: nonlinearity after every layer.

    Example:
        >>> import torch
        >>> MLPEncoder((1, 28, 28), hidden_sizes=(32, 16))(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_sizes: Sequence[PositiveInt] = (300, 300),
        activation: Activation = "elu",
    ):
        super().__init__()
        if not hidden_sizes:
            raise ValueError("hidden_sizes must have at least one layer")
        self.dense = mlp([math.prod(input_shape), *hidden_sizes], activation, final_activation=True)
        self.out_features = hidden_sizes[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.dense(x.flatten(1))
