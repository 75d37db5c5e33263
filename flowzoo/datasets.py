"""Data sets, found under a configurable data root and verified by checksum.

A data set is a registered class whose instances know their example ``shape`` and
``splits`` before reading anything (so a model can be built and checked first), and
whose ``load(split)`` returns every example of a split as a ``uint8`` tensor.

The data root is, in order: the ``root`` parameter (``data.root`` in a config), the
``FLOWZOO_DATA_ROOT`` environment variable, then ``~/.cache/flowzoo/data``.
"""

from __future__ import annotations

__all__ = [
    "DATA_ROOT_ENV",
    "BinarizedMNIST",
    "data_root",
    "amat_bytes",
    "parse_amat",
    "pack_bits",
    "unpack_bits",
    "BINARIZED_MNIST_SHA256",
]

import hashlib
import lzma
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowzoo.download import download as fetch
from flowzoo.errors import DataError
from flowzoo.registry import register_dataset

DATA_ROOT_ENV = "FLOWZOO_DATA_ROOT"
PACKAGED_DIR = Path(__file__).parent / "_data"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$FLOWZOO_DATA_ROOT``, else ``~/.cache/flowzoo/data``."""
    if root:
        return Path(root).expanduser()
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "flowzoo" / "data"


# Published SHA-256 of Larochelle & Murray's canonical text files.
BINARIZED_MNIST_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
_PIXELS = 784


def parse_amat(raw: bytes) -> np.ndarray:
    """Rows of space-separated 0/1 values (the ``.amat`` format) as a ``(rows, 784)`` uint8 array.

    Example:
        >>> parse_amat(b" ".join([b"1"] * 784) + b"\\n").sum()
        np.uint64(784)
    """
    chars = np.frombuffer(raw, dtype=np.uint8)
    if chars.size % (2 * _PIXELS):
        raise ValueError(f"{chars.size} bytes is not a whole number of {_PIXELS}-value rows")
    return (chars[0::2] - ord("0")).reshape(-1, _PIXELS)


def amat_bytes(bits: np.ndarray) -> bytes:
    """The canonical ``.amat`` text of ``(rows, 784)`` bits: the inverse of :func:`parse_amat`."""
    text = np.full((bits.shape[0], 2 * _PIXELS), ord(" "), dtype=np.uint8)
    text[:, 0::2] = bits + ord("0")
    text[:, -1] = ord("\n")
    return text.tobytes()


def pack_bits(bits: np.ndarray) -> bytes:
    """Compact form of ``(rows, 784)`` bits: 98 bytes per row, xz-compressed."""
    return lzma.compress(np.packbits(bits, axis=1).tobytes(), preset=9 | lzma.PRESET_EXTREME)


def unpack_bits(data: bytes) -> np.ndarray:
    """Inverse of :func:`pack_bits`."""
    packed = np.frombuffer(lzma.decompress(data), dtype=np.uint8).reshape(-1, _PIXELS // 8)
    return np.unpackbits(packed, axis=1)


@register_dataset("binarized_mnist")
class BinarizedMNIST:
    """Static binarized MNIST (Larochelle & Murray 2011): 50,000 / 10,000 / 10,000 images.

    Looks for ``binarized_mnist_{split}.amat`` in ``<root>/binarized_mnist/`` (or in
    ``<root>`` itself), then uses the compact copy packaged with flowzoo, then, if
    ``download`` is true, downloads the canonical file into ``<root>/binarized_mnist/``.
    Whatever the source, the bytes must hash to the published SHA-256: the packaged
    copy is expanded back to the canonical text and checked against the same values.

    Args:
        root: data root; see :func:`data_root`.
        download: whether to fetch missing files from the original host.

    References:
        Larochelle & Murray, "The Neural Autoregressive Distribution Estimator",
        AISTATS 2011.

    Example:
        >>> data = BinarizedMNIST()
        >>> data.shape, data.splits
        ((1, 28, 28), ('train', 'valid', 'test'))
    """

    shape = (1, 28, 28)
    splits = ("train", "valid", "test")

    def __init__(self, root: str | None = None, download: bool = True):
        self.root = data_root(root)
        self.download = download

    def load(self, split: str) -> Tensor:
        """All images of a split as a ``(n, 1, 28, 28)`` uint8 tensor of 0/1."""
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}'; binarized MNIST has {', '.join(self.splits)}")
        bits = self._bits(split)
        return torch.from_numpy(bits.copy()).view(-1, *self.shape)

    def _bits(self, split: str) -> np.ndarray:
        name = f"binarized_mnist_{split}.amat"
        candidates = [self.root / "binarized_mnist" / name, self.root / name]
        for path in candidates:
            if path.is_file():
                return parse_amat(_verified(path.read_bytes(), split, f"{path}"))
        packaged = PACKAGED_DIR / f"binarized_mnist_{split}.bits.xz"
        if packaged.is_file():
            bits = unpack_bits(packaged.read_bytes())
            _verified(amat_bytes(bits), split, f"flowzoo's packaged copy {packaged}")
            return bits
        looked = ", ".join(str(p) for p in candidates)
        fix = (
            f"Put the canonical .amat files in {self.root / 'binarized_mnist'}, or point data.root "
            f"(or ${DATA_ROOT_ENV}) at a folder that holds them"
        )
        if not self.download:
            raise DataError(f"static binarized MNIST '{split}' split not found (looked in {looked}; "
                            f"downloads are off: data.download=false). {fix}.")
        try:
            path = fetch(BINARIZED_MNIST_URL.format(split=split), candidates[0], BINARIZED_MNIST_SHA256[split])
        except DataError as error:
            raise DataError(f"static binarized MNIST '{split}' split not found (looked in {looked}) "
                            f"and {error}. {fix}.") from error
        return parse_amat(path.read_bytes())


def _verified(raw: bytes, split: str, source: str) -> bytes:
    actual = hashlib.sha256(raw).hexdigest()
    expected = BINARIZED_MNIST_SHA256[split]
    if actual != expected:
        raise DataError(
            f"{source} is not the canonical binarized MNIST '{split}' file: its SHA-256 is {actual}, "
            f"expected {expected}. It is corrupt or truncated; delete it (flowzoo then uses its packaged "
            "copy or downloads the file again) or replace it with the original."
        )
    return raw
