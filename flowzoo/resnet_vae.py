"""The ResNet VAE of Kingma et al. (2016): many stochastic layers, bidirectional inference, IAF in each."""

from __future__ import annotations

__all__ = ["ResNetVAE"]

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowzoo.errors import ConfigError
from flowzoo.blocks import Statistics
from flowzoo.registry import blocks, likelihoods, register_model
from flowzoo.schema import PositiveInt
from flowzoo.vae import VariationalModel


@register_model("resnet_vae", test_parameters={"width": 8, "latent_channels": 2, "blocks_per_level": 1})
class ResNetVAE(VariationalModel):
    r"""A hierarchical VAE whose stochastic layers are residual blocks, inferred bidirectionally.

    A strided 5×5 convolution maps the image to ``width`` channels at half resolution.
    The blocks (``blocks_per_level`` per level; the first block of every level after
    the first halves the resolution) then run twice. Bottom-up, each block adds a
    residual update and leaves its posterior terms. Top-down, from a learned constant
    at the top, each block in reverse order computes its prior and the rest of its
    posterior, draws its latent tensor ``z_l`` (and applies its IAF step) and adds a
    residual update. A transposed convolution turns the result into the likelihood's
    parameters. With :math:`L` layers,

    .. math::
        p(x, z) = p(x|z_{1:L}) \prod_l p(z_l|z_{>l}), \qquad
        \log w = \log p(x|z) - \textstyle\sum_l [\log q(z_l|x, z_{>l}) - \log p(z_l|z_{>l})],

    so the KL term is a sum over layers, each reported on its own (``kl/level1.block0``)
    and split over its latent channels for free bits (a "group" is one channel of one
    layer, as in the paper's code).

    Args:
        data_shape: ``(channels, height, width)`` of the images (set from the data set);
            height and width must be divisible by ``2**levels``.
        width: channels of the residual stream (the paper's 160 for CIFAR-10).
        latent_channels: channels of each latent tensor (the paper's 32).
        levels: resolutions; each level after the first starts by halving it.
        blocks_per_level: stochastic layers per level.
        block: the block spec (``flowzoo list blocks``): ``iaf`` or ``gaussian``.
        likelihood: p(x|z); the discretized logistic for 8-bit images.

    References:
        Kingma et al., "Improving Variational Inference with Inverse Autoregressive
        Flow", NeurIPS 2016, section 6, figure 4 and appendix C; the released code
        (openai/iaf).

    Example:
        >>> model = ResNetVAE((3, 8, 8), width=16, latent_channels=4, levels=2, blocks_per_level=1)
        >>> model.layer_names
        ('level0.block0', 'level1.block0')
        >>> x = torch.randint(0, 256, (2, 3, 8, 8)).float()
        >>> sorted(model(x))
        ['bpd', 'kl', 'kl/level0.block0', 'kl/level1.block0', 'loss', 'neg_elbo', 'recon']
        >>> model.log_weights(x, n_samples=5)["kl_groups"].shape  # samples, batch, layers, channels
        torch.Size([5, 2, 2, 4])
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        *,
        width: PositiveInt = 160,
        latent_channels: PositiveInt = 32,
        levels: PositiveInt = 2,
        blocks_per_level: PositiveInt = 2,
        block: blocks.spec = {"name": "iaf"},  # spec defaults are copied, never mutated
        likelihood: likelihoods.spec = {"name": "discretized_logistic"},
    ):
        super().__init__()
        channels, height, image_width = data_shape
        factor = 2**levels
        if height % factor or image_width % factor:
            raise ValueError(f"{height}×{image_width} images cannot be halved {levels} times (once by the input "
                             f"convolution, once per level after the first); use fewer levels")
        self.likelihood = likelihoods.instantiate(likelihood, "likelihood")  # specs are resolved with the model's
        try:
            self.levels = nn.ModuleList(
                nn.ModuleList(
                    blocks.instantiate(block, "block", width=width, latent_channels=latent_channels,
                                       downsample=level > 0 and index == 0,
                                       top=level == levels - 1 and index == blocks_per_level - 1)
                    for index in range(blocks_per_level)
                )
                for level in range(levels)
            )
        except ConfigError as error:  # the same spec fails the same way for every block: report it once
            raise ConfigError(error.problems[:1]) from error
        self.layer_names = tuple(f"level{i}.block{j}" for i in range(levels) for j in range(blocks_per_level))
        self.input = nn.Conv2d(channels, width, 5, stride=2, padding=2)
        self.top = nn.Parameter(torch.zeros(width, height // factor, image_width // factor))
        per_channel = getattr(self.likelihood, "params_per_channel", 1)
        self.output = nn.ConvTranspose2d(width, channels * per_channel, 6, stride=2, padding=2)

    def _blocks(self) -> list[nn.Module]:
        """Bottom-up order, that of ``layer_names``."""
        return [block for level in self.levels for block in level]

    def _bottom_up(self, x: Tensor, n: int = 1) -> list[Statistics]:
        """Each block's posterior terms, repeated for ``n`` samples per image (sample-major rows)."""
        d = self.input(self.likelihood.unit(x) - 0.5)
        statistics = []
        for block in self._blocks():
            d, terms = block.up(d)
            statistics.append(terms if n == 1 else tuple(t.repeat(n, 1, 1, 1) for t in terms))  # training: no copy
        return statistics

    def _top_down(
        self, batch: int, statistics: list[Statistics] | None = None, latents: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, list[Tensor], Tensor | None, Tensor | None]:
        """Likelihood parameters, every layer's ``z`` (bottom-up order), and ``log q``,
        ``log p`` per layer and channel, ``(batch, layers, latent_channels)``. Each
        layer's ``z`` is drawn from its posterior (given ``statistics``), taken from
        ``latents``, or else drawn from its prior."""
        h = self.top.expand(batch, *self.top.shape)
        layers = len(self.layer_names)
        zs, log_q, log_p = [None] * layers, [None] * layers, [None] * layers
        blocks_bottom_up = self._blocks()
        for i in reversed(range(layers)):
            h, zs[i], log_q[i], log_p[i] = blocks_bottom_up[i].down(
                h, statistics[i] if statistics else None, latents[i] if latents else None
            )
        params = self.output(F.elu(h))
        if statistics is None:
            return params, zs, None, None
        return params, zs, torch.stack(log_q, dim=1), torch.stack(log_p, dim=1)

    def log_weights(self, x: Tensor, n_samples: int = 1) -> dict[str, Tensor]:
        batch = len(x)
        params, _, log_q, log_p = self._top_down(n_samples * batch, self._bottom_up(x, n_samples))
        return {
            "log_px_given_z": self.likelihood.log_prob(x, params.unflatten(0, (n_samples, batch))),
            "log_pz": log_p.sum((1, 2)).view(n_samples, batch),
            "log_qz": log_q.sum((1, 2)).view(n_samples, batch),
            "kl_groups": (log_q - log_p).unflatten(0, (n_samples, batch)),
        }

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` images: the likelihood's mean, every layer drawn from its prior."""
        return self.likelihood.mean(self._top_down(n)[0])

    @torch.no_grad()
    def encode(self, x: Tensor) -> list[Tensor]:
        """One posterior sample of every layer's ``z``, bottom-up."""
        return self._top_down(len(x), self._bottom_up(x))[1]

    @torch.no_grad()
    def decode(self, latents: Sequence[Tensor]) -> Tensor:
        """The likelihood's mean given every layer's ``z``."""
        return self.likelihood.mean(self._top_down(len(latents[0]), latents=latents)[0])

    def components(self) -> dict[str, nn.Module]:
        """Input and output convolutions and each level's blocks, for parameter summaries."""
        levels = {f"level{i}": level for i, level in enumerate(self.levels)}
        return {"input": self.input, **levels, "output": self.output, "likelihood": self.likelihood}
