"""Image grids written as PNG files."""

from __future__ import annotations

__all__ = ["image_grid", "sample_images", "save_png"]

import math
import os
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor


def image_grid(images: Tensor, columns: int | None = None, padding: int = 2) -> Tensor:
    """Tile ``(n, channels, height, width)`` images with values in [0, 1] into one image.

    Args:
        images: one or three channels.
        columns: images per row; about the square root of ``n`` by default.
        padding: pixels of white between images and around the border.

    Returns:
        A ``(channels, H, W)`` uint8 tensor.

    Example:
        >>> image_grid(torch.zeros(6, 1, 4, 4), columns=3, padding=1).shape
        torch.Size([1, 11, 16])
    """
    n, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = torch.full(
        (channels, rows * (height + padding) + padding, columns * (width + padding) + padding), 255, dtype=torch.uint8
    )
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    for i, image in enumerate(pixels):
        top = padding + (i // columns) * (height + padding)
        left = padding + (i % columns) * (width + padding)
        grid[:, top : top + height, left : left + width] = image
    return grid


def sample_images(images: Tensor, count: int, seed: int) -> Tensor:
    """``count`` of the images (all of them when there are fewer) in a random order seeded by
    ``seed``: the pictures of a split, whose first images may all be alike (static binarized
    MNIST's test split is sorted by digit).

    Example:
        >>> sample_images(torch.arange(10_000), 4, seed=0).tolist() != [0, 1, 2, 3]
        True
    """
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[:count]]


def save_png(grid: Tensor, path: Path) -> None:
    """Write a ``(channels, H, W)`` uint8 image (1 or 3 channels) as a PNG file, whole or not at all
    (beside it first, then renamed: a link at ``path`` is replaced, not written through)."""
    array = grid.permute(1, 2, 0).numpy()
    partial = Path(path).with_name(Path(path).name + ".partial")
    try:
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(partial, format="PNG")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
