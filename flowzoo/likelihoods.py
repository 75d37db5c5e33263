"""Likelihoods p(x | z) over data, parameterized by the decoder's output."""

from __future__ import annotations

__all__ = ["Bernoulli", "Categorical", "DiscretizedLogistic", "DiscretizedLogisticMixture", "LOG_SCALE_MIN",
           "bits_per_dim"]

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowzoo.registry import register_likelihood
from flowzoo.schema import PositiveInt


@register_likelihood("bernoulli")
class Bernoulli(nn.Module):
    """Independent Bernoulli pixels; the decoder outputs one logit per pixel.

    For binary data such as static binarized MNIST.

    Example:
        >>> likelihood = Bernoulli()
        >>> x = torch.tensor([[[[1.0, 0.0]]]])
        >>> likelihood.log_prob(x, torch.zeros(1, 1, 1, 2))  # two fair coins
        tensor([-1.3863])
    """

    params_per_channel = 1

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """``log p(x|z)`` summed over each example's dimensions.

        ``params`` may carry extra leading sample dimensions; ``x`` broadcasts against them.
        """
        log_p = -F.binary_cross_entropy_with_logits(params, x.expand_as(params), reduction="none")
        return log_p.flatten(-x.dim() + 1).sum(-1)

    def mean(self, params: Tensor) -> Tensor:
        """The expected image (pixel probabilities)."""
        return torch.sigmoid(params)

    def unit(self, x: Tensor) -> Tensor:
        """Data as images in [0, 1], for the encoder and for pictures: binary data already is."""
        return x


# -- 8-bit images -------------------------------------------------------------------------


class _EightBit(nn.Module):
    """Likelihoods over the 256 values of 8-bit images, given as floats 0..255."""

    reports_bits_per_dim = True
    """Bounds on −log p(x) are also reported in bits per dimension, the unit of the image-modelling literature."""

    def unit(self, x: Tensor) -> Tensor:
        """Data as images in [0, 1], for the encoder (whose inputs stay O(1)) and for pictures."""
        return x / 255
#
# Scale convention (that of PixelCNN++, Salimans et al. 2017): the data reach the
# likelihood as floats holding the integers 0..255, and the decoder's location and
# log-scale parameters live on the [-1, 1] scale, pixel value k sitting at 2k/255 - 1
# with bins of width 2/255.  Internally everything is mapped to the 0..255 scale
# (location 127.5 (mu + 1), scale 127.5 s), where the bin edges k ± 0.5 are exact in
# float32 and the edges one bin shares with the next are computed identically, so the
# 256 probabilities of a pixel telescope to 1 up to rounding.

LOG_SCALE_MIN = -7.0
"""Log-scales (on the [-1, 1] scale) are clamped to at least this, as in PixelCNN++:
a logistic of scale e^-7 ≈ 9e-4 centred on a bin already puts 97% of its mass in that bin of width 2/255."""

_HALF_RANGE = 127.5  # [-1, 1] scale → 0..255 scale
_MEAN_CHUNK = 16  # bin edges per step when summing P(K ≥ j) in mean()


def bits_per_dim(nats: float | Tensor, dims: int) -> float | Tensor:
    r"""Convert a negative log-likelihood in nats per example to bits per dimension.

    The convention of the image-modelling literature (PixelRNN/PixelCNN++, IAF VAEs,
    Glow, ...): :math:`\mathrm{bpd} = \mathrm{NLL} / (D \ln 2)`, with NLL the
    negative log-probability of one image, in nats, of the *discrete* 8-bit data
    and :math:`D` the number of sub-pixels (3072 for a CIFAR-10 image).  The
    discretized likelihoods here are probability mass functions over 0..255, so
    their NLL (or a bound on it such as the negative ELBO) converts directly; a
    continuous density on data scaled to [0, 1] would first need
    :math:`D \ln 256` nats added.  A model that ignores the data and puts 1/256 on
    every value scores exactly 8 bits/dim.

    Args:
        nats: negative log-likelihood (or negative ELBO) of one example, in nats
            (a number, or a tensor of them).
        dims: number of dimensions of one example (channels × height × width).

    Raises:
        ValueError: ``dims`` is not positive.

    References:
        van den Oord et al., "Pixel Recurrent Neural Networks", ICML 2016 (section 5.1).
        Salimans et al., "PixelCNN++", ICLR 2017.

    Example:
        >>> import math
        >>> bits_per_dim(3 * 32 * 32 * math.log(256), 3 * 32 * 32)  # the uniform model
        8.0
        >>> round(bits_per_dim(6500.0, 3072), 4)
        3.0526
    """
    if dims <= 0:
        raise ValueError(f"dims must be a positive number of dimensions, got {dims}")
    return nats / (dims * math.log(2))


def _as_float(params: Tensor) -> Tensor:
    """At least float32, so that the likelihood is computed in full precision under autocast."""
    return params.to(torch.promote_types(params.dtype, torch.float32))


def _blocks(params: Tensor, x: Tensor, groups: tuple[int, ...]) -> Tensor:
    """``params`` ``(..., prod(groups) * C, H, W)`` as ``(..., *groups, C, H, W)``, for data ``x`` of C channels."""
    channels = x.shape[-3]
    per_channel = math.prod(groups)
    if params.dim() < 3 or params.shape[-3] != per_channel * channels:
        raise ValueError(
            f"expected parameters with {per_channel} × {channels} = {per_channel * channels} channels "
            f"for data with {channels} channels, got shape {tuple(params.shape)}"
        )
    return params.unflatten(-3, (*groups, channels))


def _split(params: Tensor, x: Tensor, groups: tuple[int, ...]) -> tuple[Tensor, ...]:
    """The parameter blocks of ``params`` ``(..., prod(groups) * C, H, W)``, each ``(..., *groups[1:], C, H, W)``."""
    return _blocks(params, x, groups).unbind(-4 - len(groups) + 1)


def _standardize(mean: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """Location and log-scale on the 0..255 scale, the log-scale clamped at :data:`LOG_SCALE_MIN` first."""
    log_scale = log_scale.clamp(min=LOG_SCALE_MIN) + math.log(_HALF_RANGE)
    return (mean + 1) * _HALF_RANGE, log_scale


def _log_bin_mass(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """``log P(K = x)`` per element for a logistic discretized to the bins 0..255 (edge bins take the tails).

    ``x`` holds integers 0..255; ``mean`` and ``log_scale`` are on the [-1, 1] scale
    (``log_scale`` not yet clamped); all three broadcast.  Interior bins use the exact
    identity ``σ(u) − σ(l) = σ(u) (1 − σ(l)) (1 − e^{−(u−l)})``, in logs
    ``logσ(u) − softplus(l) + log(1 − e^{−(u−l)})``: no difference of nearly equal
    CDFs, no log of zero, accurate in either tail.  This replaces the PixelCNN++
    fallback (the log density at the bin centre plus the log bin width when the
    mass is below 1e-5), which is the first-order approximation of the same thing.
    """
    loc, log_s = _standardize(mean, log_scale)
    inv_s = torch.exp(-log_s)
    upper = (x + 0.5 - loc) * inv_s
    lower = (x - 0.5 - loc) * inv_s
    # upper − lower is the bin width in standardized units, w = 1/s, taken from log s rather
    # than by subtraction: exact, and without the huge gradients of log(upper − lower) when
    # the scale is enormous. log(1 − e^{−w}) is log w − w/2 (error w²/24) for small w, so it
    # survives w underflowing to 0.
    width = inv_s
    small = width < 1e-4
    log1m_exp = torch.where(small, -log_s - width / 2, torch.log(-torch.expm1(-torch.where(small, 1.0, width))))
    interior = F.logsigmoid(upper) - F.softplus(lower) + log1m_exp
    first = F.logsigmoid(upper)  # k = 0 takes everything below 0.5
    last = -F.softplus(lower)  # k = 255 takes everything above 254.5
    return torch.where(x < 0.5, first, torch.where(x > 254.5, last, interior))


def _expected_value(mean: Tensor, log_scale: Tensor) -> Tensor:
    """``E[K] / 255`` per element for the discretized logistic, exactly: ``Σ_{j=1}^{255} P(K ≥ j) / 255``."""
    loc, log_s = _standardize(mean, log_scale)
    inv_s = torch.exp(-log_s)
    total = torch.zeros_like(loc)
    edges = torch.arange(255, dtype=loc.dtype, device=loc.device) + 0.5  # P(K ≥ j) = 1 − F(j − 0.5)
    for chunk in edges.split(_MEAN_CHUNK):
        total = total + torch.sigmoid((loc.unsqueeze(-1) - chunk) * inv_s.unsqueeze(-1)).sum(-1)
    return total / 255


@register_likelihood("discretized_logistic")
class DiscretizedLogistic(_EightBit):
    r"""A logistic per sub-pixel, discretized to the 256 values of 8-bit images.

    For data given as floats holding the integers 0..255 (the trainer's ``x.float()``
    of ``uint8`` images).  The decoder outputs, per channel, a location :math:`\mu`
    and a log-scale :math:`\log s`, both on the [-1, 1] scale of PixelCNN++ (value
    :math:`k` at :math:`2k/255 - 1`): output channels ``0..C-1`` are the locations
    and ``C..2C-1`` the log-scales. Log-scales are clamped at :data:`LOG_SCALE_MIN`.
    On the 0..255 scale, with :math:`F` the logistic CDF of location
    :math:`127.5(\mu+1)` and scale :math:`127.5 s`,

    .. math::
        P(k) = F(k + \tfrac12) - F(k - \tfrac12), \quad
        P(0) = F(\tfrac12), \quad P(255) = 1 - F(254.5),

    so the edge bins take the tails and the 256 probabilities sum to 1. Computed in
    log-sigmoid/softplus form, exactly (see ``_log_bin_mass``), in float32 at least
    even under autocast. Sub-pixels are independent given ``z``.

    References:
        Kingma et al., "Improved Variational Inference with Inverse Autoregressive
        Flow", NeurIPS 2016 (the discretized logistic likelihood of its CIFAR-10
        VAE; their code uses bins of 1/256 on data in [-0.5, 0.5] without edge bins).
        Salimans et al., "PixelCNN++: Improving the PixelCNN with Discretized Logistic
        Mixture Likelihood and Other Modifications", ICLR 2017 (the edge bins, the
        [-1, 1] scale and the log-scale floor of -7 followed here).

    Example:
        >>> likelihood = DiscretizedLogistic()
        >>> params = torch.zeros(1, 2, 1, 1)  # μ = 0 (value 127.5), s = 1 (127.5 values)
        >>> likelihood.log_prob(torch.tensor([[[[127.0]]]]), params)
        tensor([-6.2344])
        >>> every_value = torch.arange(256.0).view(256, 1, 1, 1)
        >>> likelihood.log_prob(every_value, params).logsumexp(0).abs() < 1e-5
        tensor(True)
        >>> likelihood.mean(params)  # the expected image, in [0, 1]
        tensor([[[[0.5000]]]])
    """

    params_per_channel = 2

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """``log p(x|z)`` summed over each example's dimensions.

        Args:
            x: ``(batch, C, H, W)`` integers 0..255 as floats.
            params: ``(..., batch, 2C, H, W)``; extra leading sample dimensions
                broadcast against ``x``.

        Returns:
            ``(..., batch)`` log-probabilities in nats.
        """
        params = _as_float(params)
        mean, log_scale = _split(params, x, (2,))
        log_p = _log_bin_mass(x.to(params.dtype), mean, log_scale)
        return log_p.flatten(-x.dim() + 1).sum(-1)

    def mean(self, params: Tensor) -> Tensor:
        """The expected image ``E[x] / 255`` in [0, 1], ``(..., C, H, W)`` (exact, not the clamped location)."""
        params = _as_float(params)
        mean, log_scale = params.unflatten(-3, (2, -1)).unbind(-4)
        return _expected_value(mean, log_scale)


@register_likelihood("discretized_logistic_mixture")
class DiscretizedLogisticMixture(_EightBit):
    r"""A mixture of discretized logistics per sub-pixel, for 8-bit images (PixelCNN++).

    Each sub-pixel has its own ``components`` mixture weights (logits), locations and
    log-scales, with the scale convention and edge bins of
    :class:`DiscretizedLogistic`. For simplicity the channels of a pixel are
    independent given ``z``: unlike PixelCNN++, there are no coefficients making the
    green and blue locations depend on the red and green values, and the weights are
    per sub-pixel rather than shared by the channels of a pixel. The decoder outputs
    ``3 × components × C`` channels: the logits, then the locations, then the
    log-scales, each block ``components`` groups of ``C`` channels.

    Args:
        components: number of logistics per sub-pixel.

    References:
        Salimans et al., "PixelCNN++: Improving the PixelCNN with Discretized Logistic
        Mixture Likelihood and Other Modifications", ICLR 2017.

    Example:
        >>> likelihood = DiscretizedLogisticMixture(components=2)
        >>> params = torch.zeros(1, 6, 1, 1)
        >>> params[0, 2:4, 0, 0] = torch.tensor([-0.9, 0.9])  # two modes, near 13 and 242
        >>> params[0, 4:6, 0, 0] = -4.0  # scales of e^-4 (about 2.3 values)
        >>> likelihood.log_prob(torch.tensor([[[[13.0]]], [[[242.0]]], [[[128.0]]]]), params)
        tensor([ -2.9342,  -2.9342, -49.9561])
        >>> likelihood.mean(params)  # symmetric modes average to the middle
        tensor([[[[0.5000]]]])
    """

    def __init__(self, components: PositiveInt = 10):
        super().__init__()
        if components < 1:
            raise ValueError(f"components must be at least 1, got {components}")
        self.components = components
        self.params_per_channel = 3 * components

    def extra_repr(self) -> str:
        return f"components={self.components}"

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """``log p(x|z)`` summed over each example's dimensions.

        Args:
            x: ``(batch, C, H, W)`` integers 0..255 as floats.
            params: ``(..., batch, 3 × components × C, H, W)``; extra leading sample
                dimensions broadcast against ``x``.

        Returns:
            ``(..., batch)`` log-probabilities in nats.
        """
        params = _as_float(params)
        logits, mean, log_scale = _split(params, x, (3, self.components))  # each (..., K, C, H, W)
        log_mass = _log_bin_mass(x.to(params.dtype).unsqueeze(-4), mean, log_scale)
        log_p = torch.logsumexp(F.log_softmax(logits, dim=-4) + log_mass, dim=-4)
        return log_p.flatten(-x.dim() + 1).sum(-1)

    def mean(self, params: Tensor) -> Tensor:
        """The expected image ``E[x] / 255`` in [0, 1], ``(..., C, H, W)``: the mixture of the components' means."""
        params = _as_float(params)
        logits, mean, log_scale = params.unflatten(-3, (3, self.components, -1)).unbind(-5)
        return (torch.softmax(logits, dim=-4) * _expected_value(mean, log_scale)).sum(-4)


_VALUES = 256


@register_likelihood("categorical")
class Categorical(_EightBit):
    r"""A 256-way categorical distribution per sub-pixel, for 8-bit images.

    For data given as floats holding the integers 0..255. The decoder outputs 256
    logits per channel, value-major: output channel ``k·C + c`` is the logit of value
    ``k`` for channel ``c`` (for grey images, channel ``k`` is value ``k``), the layout
    of the Sylvester-flow authors' "multinomial" likelihood, whose logits they view as
    ``(batch, 256, C, H, W)``. Sub-pixels are independent given ``z``, and

    .. math::
        \log p(x \mid z) = 	extstyle\sum_{c,i,j} ig(\ell_{x_{cij}, c, i, j}
            - \log\sum_{k=0}^{255} e^{\ell_{k, c, i, j}}ig),

    computed in float32 at least, even under autocast. The −ELBO and −log p(x) are
    also reported in bits per dimension.

    References:
        van den Oord, Kalchbrenner & Kavukcuoglu, "Pixel Recurrent Neural Networks",
        ICML 2016 (the 256-way softmax over pixel values).
        van den Berg, Hasenclever, Tomczak & Welling, "Sylvester Normalizing Flows for
        Variational Inference", UAI 2018 (Frey Faces), released code
        (optimization/loss.py).

    Example:
        >>> likelihood = Categorical()
        >>> params = torch.zeros(1, 256, 1, 1)  # uniform over the 256 values
        >>> likelihood.log_prob(torch.tensor([[[[17.0]]]]), params)
        tensor([-5.5452])
        >>> params[0, 200] = 30.0  # nearly all the mass on value 200
        >>> likelihood.mean(params)
        tensor([[[[0.7843]]]])
    """

    params_per_channel = _VALUES

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """``log p(x|z)`` summed over each example's dimensions.

        Args:
            x: ``(batch, C, H, W)`` integers 0..255 as floats.
            params: ``(..., batch, 256·C, H, W)`` logits; extra leading sample
                dimensions broadcast against ``x``.

        Returns:
            ``(..., batch)`` log-probabilities in nats.
        """
        logits = _blocks(_as_float(params), x, (_VALUES,))  # (..., 256, C, H, W)
        index = x.long().unsqueeze(-4).expand(*logits.shape[:-4], 1, *x.shape[-3:])
        log_p = logits.gather(-4, index).squeeze(-4) - logits.logsumexp(-4)
        return log_p.flatten(-x.dim() + 1).sum(-1)

    def mean(self, params: Tensor) -> Tensor:
        """The expected image ``E[x] / 255`` in [0, 1], ``(..., C, H, W)``."""
        probs = torch.softmax(_as_float(params).unflatten(-3, (_VALUES, -1)), dim=-4)
        values = torch.arange(_VALUES, dtype=probs.dtype, device=probs.device).view(-1, 1, 1, 1)
        return (probs * values).sum(-4) / (_VALUES - 1)
