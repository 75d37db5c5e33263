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
    "CIFAR10",
    "DynamicMNIST",
    "data_root",
    "amat_bytes",
    "parse_amat",
    "pack_bits",
    "unpack_bits",
    "BINARIZED_MNIST_SHA256",
    "parse_cifar_batch",
    "parse_idx",
    "fixed_binarization",
]

import gzip
import hashlib
import io
import lzma
import math
import os
import pickle
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowzoo.download import download as fetch
from flowzoo.errors import DataError
from flowzoo.registry import register_dataset
from flowzoo.schema import PositiveInt

try:  # numpy 2 moved the array reconstructor that pickled arrays name
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

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


# -- CIFAR-10 ---------------------------------------------------------------------------

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published next to the archive
CIFAR10_FOLDER = "cifar-10-batches-py"
# Folders (relative to the data root) that may hold CIFAR10_FOLDER, in the order searched.
CIFAR10_PLACES = (".", "cifar10", "cifar10_subset")
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_ROW = 3 * 32 * 32


def _latin1(text: str, encoding: str) -> bytes:
    # Python 3 writes bytes at pickle protocol 2 as _codecs.encode(text, "latin1").
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"it encodes text as {encoding!r}, not latin1")
    return text.encode("latin1")


# Everything a CIFAR-10 batch pickle refers to by name; dicts, lists, bytes, str and
# int are built by pickle opcodes and need no name.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # as written by the official files
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # as written by numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _CifarUnpickler(pickle.Unpickler):
    """Rebuilds plain containers and numpy arrays only: unpickling can run any named
    callable, so a pickle naming anything else is refused instead of called."""

    def find_class(self, module: str, name: str):
        try:
            return _CIFAR_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR-10 batch does") from None


def parse_cifar_batch(raw: bytes, source: str) -> np.ndarray:
    """The pixel rows of one CIFAR-10 batch pickle (official python format), as a ``(rows, 3072)`` uint8 array.

    Each row is channel-major: 1,024 red, then green, then blue values of a 32 x 32
    image in row-major order, so ``rows.reshape(-1, 3, 32, 32)`` gives the images.
    Any number of rows is accepted. The pickle is read with a restricted unpickler.

    Raises:
        DataError: naming ``source``, if ``raw`` is not a valid batch (truncated,
            wrong keys, dtype or shape, or naming any callable beyond numpy's array
            reconstruction).

    Example:
        >>> batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
        >>> parse_cifar_batch(pickle.dumps(batch, protocol=2), "batch").shape
        (2, 3072)
        >>> parse_cifar_batch(pickle.dumps(os.system), "evil")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        flowzoo.errors.DataError: evil is not a CIFAR-10 batch: it refers to posix.system, ...
    """
    fix = ("It is corrupt, truncated or not from the official cifar-10-python.tar.gz; "
           "delete it and download the archive again")
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # a damaged pickle fails in many ways: EOFError, UnpicklingError, ValueError...
        raise DataError(f"{source} is not a CIFAR-10 batch: {error}. {fix}.") from error
    if not isinstance(batch, dict) or not {b"data", b"labels"} <= batch.keys():
        found = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{source} is not a CIFAR-10 batch: expected a dict with keys b'data' and b'labels', "
                        f"found {found}. {fix}.")
    data, labels = batch[b"data"], batch[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _CIFAR_ROW):
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{source} is not a CIFAR-10 batch: b'data' should be a uint8 array of shape "
                        f"(rows, {_CIFAR_ROW}), found a {found}. {fix}.")
    if not isinstance(labels, list) or len(labels) != len(data):
        raise DataError(f"{source} is not a CIFAR-10 batch: {len(data)} rows of b'data' but b'labels' is "
                        f"not a list of {len(data)} labels. {fix}.")
    return data


@register_dataset("cifar10")
class CIFAR10:
    """CIFAR-10 (Krizhevsky 2009) from the official python-pickle batches: 32 x 32 RGB images.

    The batches are read from the first of ``<root>/cifar-10-batches-py/``,
    ``<root>/cifar10/cifar-10-batches-py/`` and ``<root>/cifar10_subset/cifar-10-batches-py/``
    that holds ``test_batch`` and at least one of ``data_batch_1`` ... ``data_batch_5``. If none
    does and ``download`` is true, the official archive is downloaded, checked against its
    published MD5 and unpacked into ``<root>/cifar-10-batches-py/``.

    Batches may have any number of rows, and missing train batches are allowed: the
    train and valid splits are carved from the train batches that exist, in order (a
    partial copy such as the shared 2,000-image subset then gives a smaller data set;
    results measured on it must say so). The batch files are checked for structure,
    not by checksum, so that such subsets can be read.

    Splits: ``valid`` is the last ``valid_size`` train rows and ``train`` the rest;
    ``test`` is ``test_batch``. By default ``valid_size`` is 5,000 or a tenth of the train
    rows, whichever is fewer (the usual 45,000 / 5,000 split of the full data set).

    Args:
        root: data root; see :func:`data_root`.
        download: whether to fetch the archive if no batches are found.
        valid_size: rows held out for validation; must leave at least one for training.

    References:
        Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.

    Example:
        >>> data = CIFAR10()
        >>> data.shape, data.splits
        ((3, 32, 32), ('train', 'valid', 'test'))
    """

    shape = (3, 32, 32)
    splits = ("train", "valid", "test")

    def __init__(self, root: str | None = None, download: bool = True, valid_size: PositiveInt | None = None):
        self.root = data_root(root)
        self.download = download
        self.valid_size = valid_size

    def load(self, split: str) -> Tensor:
        """All images of a split as a ``(n, 3, 32, 32)`` uint8 tensor of 0..255."""
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}'; CIFAR-10 has {', '.join(self.splits)}")
        folder = self._folder()
        if split == "test":
            rows = _read_cifar_batch(folder / "test_batch")
        else:
            batches = [folder / name for name in CIFAR10_TRAIN_BATCHES if (folder / name).is_file()]
            rows = np.concatenate([_read_cifar_batch(path) for path in batches])
            first_valid = len(rows) - self._valid_rows(len(rows), folder)
            rows = rows[:first_valid] if split == "train" else rows[first_valid:]
        return torch.from_numpy(rows.copy()).view(-1, *self.shape)

    def _valid_rows(self, train_rows: int, folder: Path) -> int:
        if self.valid_size is None:
            return min(5000, train_rows // 10)
        if self.valid_size >= train_rows:
            raise DataError(f"data.valid_size={self.valid_size} leaves no CIFAR-10 training images: the train "
                            f"batches in {folder} hold {train_rows:,} rows. Set data.valid_size below {train_rows}.")
        return self.valid_size

    def _folder(self) -> Path:
        candidates = [self.root / place / CIFAR10_FOLDER for place in CIFAR10_PLACES]
        for folder in candidates:
            if (folder / "test_batch").is_file() and any((folder / name).is_file() for name in CIFAR10_TRAIN_BATCHES):
                return folder
        looked = f"looked for test_batch and data_batch_1..5 in {', '.join(str(p) for p in candidates)}"
        fix = (f"Unpack the official archive ({CIFAR10_URL}) into {self.root}, so that "
               f"{candidates[0]} holds its batches, or point data.root (or ${DATA_ROOT_ENV}) at a folder that does")
        if not self.download:
            raise DataError(f"CIFAR-10 not found ({looked}; downloads are off: data.download=false). {fix}.")
        try:
            return _download_cifar10(self.root)
        except DataError as error:
            raise DataError(f"CIFAR-10 not found ({looked}) and {error}. {fix}.") from error


def _read_cifar_batch(path: Path) -> np.ndarray:
    return parse_cifar_batch(path.read_bytes(), str(path))


def _download_cifar10(root: Path) -> Path:
    """Download and verify the official archive, then unpack its batch folder into ``root``."""
    archive = fetch(CIFAR10_URL, root / "cifar-10-python.tar.gz", CIFAR10_MD5, algorithm="md5")
    target, staging = root / CIFAR10_FOLDER, root / f"{CIFAR10_FOLDER}.part"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                # Only plain files directly inside the batch folder: no links, no paths
                # that could point outside it.
                folder, _, name = member.name.partition("/")
                if member.isfile() and folder == CIFAR10_FOLDER and name and "/" not in name and name != "..":
                    (staging / name).write_bytes(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"could not unpack {archive}: {error}") from error
    target.mkdir(exist_ok=True)
    for path in staging.iterdir():
        os.replace(path, target / path.name)
    staging.rmdir()
    archive.unlink()
    return target


# -- dynamically binarized MNIST ---------------------------------------------------------

# MD5 of the decompressed IDX files: gzip wrappers differ between copies, the contents do not.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
}


def parse_idx(raw: bytes) -> np.ndarray:
    """An IDX file of unsigned bytes (the MNIST format) as an array of the dimensions in its header.

    Raises:
        ValueError: the magic number is not that of unsigned bytes, or the size does not
            match the header.

    Example:
        >>> parse_idx(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6)))
        array([[0, 1, 2],
               [3, 4, 5]], dtype=uint8)
    """
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"its magic number is {raw[:4].hex() or 'missing'}, not 000008xx (unsigned bytes)")
    header = 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"its header announces {raw[3]} dimensions but the file ends after {len(raw)} bytes")
    dims = struct.unpack(f">{raw[3]}I", raw[4:header])
    if len(raw) != header + math.prod(dims):
        raise ValueError(f"its header announces an array of shape {dims} ({header + math.prod(dims):,} bytes), "
                         f"but the file has {len(raw):,} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def fixed_binarization(images: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """One Bernoulli sample of grayscale ``images``: a pixel of value ``v`` is 1 with probability ``v / 255``.

    The noise is ``numpy.random.default_rng([seed, stream]).random(images.shape)``, so
    the same arguments always give the same bits.

    Example:
        >>> fixed_binarization(np.array([[0, 128, 255]], np.uint8), seed=0, stream=0)
        array([[0, 1, 1]], dtype=uint8)
    """
    noise = np.random.default_rng([seed, stream]).random(images.shape)
    return (noise < images / 255).astype(np.uint8)


@register_dataset("mnist_dynamic")
class DynamicMNIST:
    """Dynamically binarized MNIST: grayscale MNIST binarized afresh each time an image is trained on.

    Reads the official IDX files ``train-images-idx3-ubyte.gz`` and ``t10k-images-idx3-ubyte.gz``
    from ``<root>/mnist/`` (or ``<root>`` itself); their decompressed bytes must match the
    published MD5. flowzoo does not download them.

    Splits: ``train`` is the first 50,000 training images, ``valid`` the last 10,000, ``test``
    the 10,000 t10k images. ``load("train")`` returns the **grayscale** images (0..255), to be
    binarized per batch by :meth:`train_transform`, which the training loop must apply.
    ``load("valid")`` and ``load("test")`` return one **fixed** binarization (0/1), as the
    literature evaluates, so evaluations repeat exactly: :func:`fixed_binarization` with
    ``binarization_seed`` and stream 1 for valid, 2 for test.

    Args:
        root: data root; see :func:`data_root`.
        binarization_seed: seed of the fixed valid and test binarizations.

    Example:
        >>> data = DynamicMNIST()
        >>> data.shape, data.splits
        ((1, 28, 28), ('train', 'valid', 'test'))
    """

    shape = (1, 28, 28)
    splits = ("train", "valid", "test")

    def __init__(self, root: str | None = None, binarization_seed: int = 0):
        self.root = data_root(root)
        self.binarization_seed = binarization_seed

    def load(self, split: str) -> Tensor:
        """A split as a ``(n, 1, 28, 28)`` uint8 tensor: grayscale 0..255 for ``train``, fixed 0/1 otherwise."""
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}'; dynamically binarized MNIST has {', '.join(self.splits)}")
        images = self._images("t10k-images-idx3-ubyte" if split == "test" else "train-images-idx3-ubyte")
        if split == "train":
            return torch.from_numpy(images[:50_000].copy()).view(-1, *self.shape)
        images = images[50_000:] if split == "valid" else images
        bits = fixed_binarization(images, self.binarization_seed, self.splits.index(split))
        return torch.from_numpy(bits).view(-1, *self.shape)

    @staticmethod
    def train_transform(batch: Tensor) -> Tensor:
        """A fresh binarization of a batch of grayscale training images, as float 0/1 on the batch's device.

        Example:
            >>> DynamicMNIST.train_transform(torch.tensor([[0, 255]], dtype=torch.uint8))
            tensor([[0., 1.]])
        """
        return torch.bernoulli(batch.float() / 255)

    def _images(self, name: str) -> np.ndarray:
        candidates = [self.root / "mnist" / f"{name}.gz", self.root / f"{name}.gz"]
        path = next((path for path in candidates if path.is_file()), None)
        if path is None:
            raise DataError(
                f"MNIST file {name}.gz not found (looked in {', '.join(str(p) for p in candidates)}). "
                f"flowzoo does not download it: put the official MNIST IDX files in {self.root / 'mnist'}, "
                f"or point data.root (or ${DATA_ROOT_ENV}) at a folder that holds them."
            )
        fix = "It is corrupt or truncated; replace it with the official file"
        try:
            raw = gzip.decompress(path.read_bytes())
            images = parse_idx(raw)
        except (OSError, EOFError, zlib.error, ValueError) as error:
            raise DataError(f"{path} is not a gzip-compressed MNIST IDX file: {error}. {fix}.") from error
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{path} holds an array of shape {images.shape}, not MNIST's (n, 28, 28) images. {fix}.")
        actual = hashlib.md5(raw).hexdigest()
        if actual != MNIST_MD5[name]:
            raise DataError(f"{path} is not the official {name}: the MD5 of its decompressed bytes is {actual}, "
                            f"expected {MNIST_MD5[name]}. {fix}.")
        return images
