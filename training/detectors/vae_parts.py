"""Convolutional encoder/decoder pieces shared by the VAE detectors (``memvae``, ``advvae``).

Both networks adapt to the input: the encoder halves the image with stride-2 convolutions until its
smaller side is at most ``smallest`` pixels, and the decoder retraces the exact same sizes (odd sizes
included, so 28 -> 14 -> 7 -> 4 comes back as 4 -> 7 -> 14 -> 28), whatever the height, width or channels.
"""

from __future__ import annotations

import torch
from torch import nn


def halving_sizes(size: tuple[int, int], smallest: int = 4) -> list[tuple[int, int]]:
    """Spatial sizes seen by the encoder: ``size`` then after each stride-2 conv (at least one).

    Example:
        >>> halving_sizes((28, 28))
        [(28, 28), (14, 14), (7, 7), (4, 4)]
    """
    sizes = [(int(size[0]), int(size[1]))]
    while min(sizes[-1]) > smallest or len(sizes) == 1:
        height, width = sizes[-1]
        sizes.append(((height + 1) // 2, (width + 1) // 2))
    return sizes


def block_widths(blocks: int, base_width: int, max_width: int) -> list[int]:
    """Channel widths of ``blocks`` stride-2 blocks: ``base_width`` doubling per block, capped."""
    return [min(base_width * 2**index, max_width) for index in range(blocks)]


def _activation(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(0.2, inplace=True)
    raise ValueError(f"unknown activation '{kind}'; use relu or leaky_relu")


class ConvEncoder(nn.Module):
    """Stride-2 conv3x3 blocks (conv, optional BN, activation) down to ``sizes[-1]``, flattened."""

    def __init__(
        self,
        channels: int,
        widths: list[int],
        batch_norm: bool,
        activation: str,
        first_batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = channels
        for index, width in enumerate(widths):
            use_norm = batch_norm and (first_batch_norm or index > 0)
            layers.append(nn.Conv2d(previous, width, 3, stride=2, padding=1, bias=not use_norm))
            if use_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(_activation(activation))
            previous = width
        self.features = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.features(image).flatten(1)


class ConvDecoder(nn.Module):
    """A flat vector -> linear -> ``[widths[-1], *sizes[-1]]`` -> transposed-conv blocks -> image.

    Each transposed conv (3x3, stride 2) uses the output padding that lands exactly on the encoder's size
    at that level; a final conv3x3 maps to the image channels and ``output`` (sigmoid or tanh) bounds it.
    """

    def __init__(
        self,
        in_features: int,
        channels: int,
        widths: list[int],
        sizes: list[tuple[int, int]],
        batch_norm: bool,
        activation: str,
        output: str,
    ) -> None:
        super().__init__()
        if len(sizes) != len(widths) + 1:
            raise ValueError("sizes must hold the input size and one size per block")
        self.start_shape = (widths[-1], *sizes[-1])
        self.project = nn.Sequential(
            nn.Linear(in_features, widths[-1] * sizes[-1][0] * sizes[-1][1]), _activation(activation)
        )
        layers: list[nn.Module] = []
        reversed_widths = list(reversed(widths))
        targets = list(reversed(sizes[:-1]))
        for index, (width, target) in enumerate(zip(reversed_widths, targets)):
            out_width = (
                reversed_widths[index + 1] if index + 1 < len(reversed_widths) else reversed_widths[-1]
            )
            source = sizes[len(sizes) - 1 - index]
            padding = tuple(t - (2 * s - 1) for t, s in zip(target, source))
            layers.append(
                nn.ConvTranspose2d(
                    width, out_width, 3, stride=2, padding=1, output_padding=padding, bias=not batch_norm
                )
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_width))
            layers.append(_activation(activation))
        layers.append(nn.Conv2d(reversed_widths[-1], channels, 3, padding=1))
        layers.append(nn.Sigmoid() if output == "sigmoid" else nn.Tanh())
        self.upsample = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        grid = self.project(features).reshape(-1, *self.start_shape)
        return self.upsample(grid)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over the latent dimensions: ``[N]``."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """A sample ``mu + sigma * eps`` (training only: scoring always uses ``mu``)."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
