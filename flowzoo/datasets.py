"""Data sets, found under a configurable data root and verified by checksum.

A data set is a registered class whose instances know their example ``shape`` and
``splits`` before reading anything (so a model can be built and checked first), and
whose ``load(split)`` returns every example of a split as a ``uint8`` tensor. The
built-in ones derive from :class:`DataSet`, which checks the split and makes the tensor.

The data root is, in order: the ``root`` parameter (``data.root`` in a config), the
``FLOWZOO_DATA_ROOT`` environment variable, then ``~/.cache/flowzoo/data``.
"""

from __future__ import annotations

__all__ = [
    "DATA_ROOT_ENV",
    "DataSet",
    "BinarizedMNIST",
    "CIFAR10",
    "Caltech101Silhouettes",
    "DynamicMNIST",
    "FreyFaces",
    "Omniglot",
    "data_root",
    "amat_bytes",
    "parse_amat",
    "pack_bits",
    "unpack_bits",
    "BINARIZED_MNIST_SHA256",
    "parse_cifar_batch",
    "parse_freyfaces",
    "parse_idx",
    "fixed_binarization",
    "git_blob_sha1",
    "decompress",
]

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
from flowzoo.schema import NonNegativeInt, PositiveInt

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


class DataSet:
    """What the built-in data sets share: three splits, the check of a split's name, and the tensor.

    A subclass sets ``shape`` and ``title`` (its name in messages) and implements
    ``_read(split)``, the split's images as a uint8 numpy array (any layout holding
    ``prod(shape)`` values per image, in order).
    """

    shape: tuple[int, ...]
    splits = ("train", "valid", "test")
    title: str

    def load(self, split: str) -> Tensor:
        """Every image of a split as a ``(n, *shape)`` uint8 tensor."""
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}'; {self.title} has {', '.join(self.splits)}")
        return torch.from_numpy(np.array(self._read(split), dtype=np.uint8)).view(-1, *self.shape)

    def _read(self, split: str) -> np.ndarray:
        raise NotImplementedError


def _places(root: Path, folder: str, name: str) -> list[Path]:
    """Where a data file is looked for: in its folder under the data root, then in the root itself."""
    return [root / folder / name, root / name]


def _find(candidates: list[Path], what: str, fix: str) -> Path:
    """The first of ``candidates`` that is a file; a DataError naming every place looked in if none is."""
    path = next((path for path in candidates if path.is_file()), None)
    if path is None:
        raise DataError(f"{what} not found (looked in {', '.join(str(p) for p in candidates)}). {fix}.")
    return path


def _check_digest(digest: str, actual: str, expected: str, source: str, what: str, fix: str) -> None:
    """A DataError saying that ``source`` is not ``what`` when its ``digest`` (e.g. "its SHA-256") differs."""
    if actual != expected:
        raise DataError(f"{source} is not {what}: {digest} is {actual}, expected {expected}. {fix}.")


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


MAX_DECOMPRESSED = 1 << 28
"""The most bytes a compressed data file may expand to (256 MiB: MNIST's largest file is 47 MB),
so that a compression bomb is refused instead of filling the memory."""


def decompress(data: bytes, compressor: str, source: str) -> bytes:
    """``data`` decompressed (``compressor``: ``gzip`` or ``xz``), at most :data:`MAX_DECOMPRESSED`
    bytes; raises :class:`DataError` for a file that expands to more.

    Example:
        >>> import gzip
        >>> decompress(gzip.compress(b"flowzoo"), "gzip", "a file")
        b'flowzoo'
    """
    engine = zlib.decompressobj(wbits=31) if compressor == "gzip" else lzma.LZMADecompressor()
    out = engine.decompress(data, MAX_DECOMPRESSED)
    if len(out) >= MAX_DECOMPRESSED and not engine.eof:
        raise DataError(f"{source} expands to more than {MAX_DECOMPRESSED >> 20} MiB when decompressed: "
                        "it is not a data file flowzoo reads (a compression bomb?); replace it with the official file")
    if not engine.eof:
        raise EOFError("the compressed data ends early")
    return out


def unpack_bits(data: bytes) -> np.ndarray:
    """Inverse of :func:`pack_bits`."""
    packed = np.frombuffer(decompress(data, "xz", "packaged binarized MNIST"), dtype=np.uint8).reshape(-1, _PIXELS // 8)
    return np.unpackbits(packed, axis=1)


@register_dataset("binarized_mnist")
class BinarizedMNIST(DataSet):
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
    title = "binarized MNIST"

    def __init__(self, root: str | None = None, download: bool = True):
        self.root = data_root(root)
        self.download = download

    def _read(self, split: str) -> np.ndarray:
        """The split's images as 0/1 bits, ``(n, 784)``."""
        name = f"binarized_mnist_{split}.amat"
        candidates = _places(self.root, "binarized_mnist", name)
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
    _check_digest("its SHA-256", hashlib.sha256(raw).hexdigest(), BINARIZED_MNIST_SHA256[split], source,
                  f"the canonical binarized MNIST '{split}' file", "It is corrupt or truncated; delete it (flowzoo "
                  "then uses its packaged copy or downloads the file again) or replace it with the original")
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


# Everything a pickle of numpy arrays (a CIFAR-10 batch, the Frey Faces file) refers to by
# name; dicts, lists, bytes, str and int are built by pickle opcodes and need no name.
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # as written by the official files
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # as written by numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds plain containers and numpy arrays only: unpickling can run any named
    callable, so a pickle naming anything else is refused instead of called."""

    def find_class(self, module: str, name: str):
        try:
            return _ARRAY_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no pickle of arrays does") from None


def _unpickle_arrays(raw: bytes, encoding: str, source: str, what: str, fix: str):
    """The containers and arrays pickled in ``raw``, read with :class:`_ArrayUnpickler`; a DataError if it fails."""
    try:
        return _ArrayUnpickler(io.BytesIO(raw), encoding=encoding).load()
    except Exception as error:  # a damaged pickle fails in many ways: EOFError, UnpicklingError, ValueError...
        raise DataError(f"{source} is not {what}: {error}. {fix}.") from error


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
    batch = _unpickle_arrays(raw, "bytes", source, "a CIFAR-10 batch", fix)
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
class CIFAR10(DataSet):
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
    title = "CIFAR-10"

    def __init__(self, root: str | None = None, download: bool = True, valid_size: PositiveInt | None = None):
        self.root = data_root(root)
        self.download = download
        self.valid_size = valid_size

    def _read(self, split: str) -> np.ndarray:
        """The split's channel-major rows of 0..255, ``(n, 3072)``."""
        folder = self._folder()
        if split == "test":
            rows = _read_cifar_batch(folder / "test_batch")
        else:
            batches = [folder / name for name in CIFAR10_TRAIN_BATCHES if (folder / name).is_file()]
            rows = np.concatenate([_read_cifar_batch(path) for path in batches])
            first_valid = len(rows) - self._valid_rows(len(rows), folder)
            rows = rows[:first_valid] if split == "train" else rows[first_valid:]
        return rows

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
class DynamicMNIST(DataSet):
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
    title = "dynamically binarized MNIST"

    def __init__(self, root: str | None = None, binarization_seed: int = 0):
        self.root = data_root(root)
        self.binarization_seed = binarization_seed

    def _read(self, split: str) -> np.ndarray:
        """Grayscale 0..255 images for ``train``, a fixed binarization (0/1) otherwise."""
        images = self._idx_images("t10k-images-idx3-ubyte" if split == "test" else "train-images-idx3-ubyte")
        if split == "train":
            return images[:50_000]
        images = images[50_000:] if split == "valid" else images
        return fixed_binarization(images, self.binarization_seed, self.splits.index(split))

    @staticmethod
    def train_transform(batch: Tensor) -> Tensor:
        """A fresh binarization of a batch of grayscale training images, as float 0/1 on the batch's device.

        Example:
            >>> DynamicMNIST.train_transform(torch.tensor([[0, 255]], dtype=torch.uint8))
            tensor([[0., 1.]])
        """
        return torch.bernoulli(batch.float() / 255)

    def _idx_images(self, name: str) -> np.ndarray:
        path = _find(_places(self.root, "mnist", f"{name}.gz"), f"MNIST file {name}.gz",
                     f"flowzoo does not download it: put the official MNIST IDX files in {self.root / 'mnist'}, "
                     f"or point data.root (or ${DATA_ROOT_ENV}) at a folder that holds them")
        fix = "It is corrupt or truncated; replace it with the official file"
        try:
            raw = decompress(path.read_bytes(), "gzip", str(path))
            images = parse_idx(raw)
        except (OSError, EOFError, zlib.error, ValueError) as error:
            raise DataError(f"{path} is not a gzip-compressed MNIST IDX file: {error}. {fix}.") from error
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{path} holds an array of shape {images.shape}, not MNIST's (n, 28, 28) images. {fix}.")
        _check_digest("the MD5 of its decompressed bytes", hashlib.md5(raw).hexdigest(), MNIST_MD5[name], str(path),
                      f"the official {name}", fix)
        return images


# -- the Sylvester-flow paper's other data sets (van den Berg et al. 2018) ------------------

FREYFACES_SHA256 = "3b69410c6a5fd6e03f09012905168be3712373a094a776f7e58fcd0670d2138a"
FREYFACES_URL = "https://github.com/y0ast/Variational-Autoencoder/raw/master/freyfaces.pkl"  # linked by the authors
FREYFACES_SPLIT = {"train": 1565, "valid": 200, "test": 200}  # the authors' (utils/load_data.py)
_FREY_PIXELS = 28 * 20


def parse_freyfaces(raw: bytes, source: str) -> np.ndarray:
    """The faces of ``freyfaces.pkl`` as an ``(n, 560)`` uint8 array, each row a 28×20 face in row-major order.

    The file is a pickle (protocol 0, written by Python 2) of a one-element list holding
    the array; it is read with the same restricted unpickler as CIFAR-10, which
    rebuilds arrays and plain containers and refuses anything else.

    Raises:
        DataError: naming ``source``, if ``raw`` is not such a pickle.

    Example:
        >>> faces = parse_freyfaces(pickle.dumps([np.zeros((3, 560), np.uint8)], protocol=0), "faces")
        >>> faces.shape, faces.dtype
        ((3, 560), dtype('uint8'))
    """
    fix = f"Replace it with the original file ({FREYFACES_URL})"
    content = _unpickle_arrays(raw, "latin1", source, "the Frey Faces pickle", fix)
    faces = content[0] if isinstance(content, list) and len(content) == 1 else None
    if not (isinstance(faces, np.ndarray) and faces.dtype == np.uint8 and faces.ndim == 2
            and faces.shape[1] == _FREY_PIXELS):
        raise DataError(f"{source} is not the Frey Faces pickle: expected a one-element list holding a uint8 array "
                        f"of shape (n, {_FREY_PIXELS}). {fix}.")
    return faces


@register_dataset("freyfaces")
class FreyFaces(DataSet):
    """Frey Faces: 1,965 grey 28×20 faces of 8-bit pixels, split 1,565 / 200 / 200 as in the Sylvester-flow paper.

    Reads ``<root>/freyfaces/freyfaces.pkl`` (or ``<root>/freyfaces.pkl``), the file
    the Sylvester-flow authors link to, whose SHA-256 must be
    :data:`FREYFACES_SHA256`; flowzoo does not download it. The faces are shuffled by
    ``numpy.random.RandomState(split_seed).permutation`` (the permutation their
    ``np.random.seed(seed); np.random.shuffle(data)`` applies) and split in that order
    into the first 1,565 (train), the next 200 (valid) and the last 200 (test), so
    the test set depends on ``split_seed``: the paper's results average over the
    seeds 123, 321 and 231. Pair it with the ``categorical`` likelihood (the paper's)
    or a discretized logistic.

    Args:
        root: data root; see :func:`data_root`.
        split_seed: seed of the shuffle before the split.

    References:
        van den Berg, Hasenclever, Tomczak & Welling, "Sylvester Normalizing Flows for
        Variational Inference", UAI 2018, and its released code (utils/load_data.py,
        main_experiment.py).

    Example:
        >>> data = FreyFaces(split_seed=321)
        >>> data.shape, data.splits
        ((1, 28, 20), ('train', 'valid', 'test'))
    """

    shape = (1, 28, 20)
    title = "Frey Faces"

    def __init__(self, root: str | None = None, split_seed: NonNegativeInt = 123):
        self.root = data_root(root)
        self.split_seed = split_seed

    def _read(self, split: str) -> np.ndarray:
        """The split's faces as ``(n, 560)`` rows of 0..255."""
        path = _find(_places(self.root, "freyfaces", "freyfaces.pkl"), "Frey Faces file freyfaces.pkl",
                     f"flowzoo does not download it: put the file ({FREYFACES_URL}) in {self.root / 'freyfaces'}, "
                     f"or point data.root (or ${DATA_ROOT_ENV}) at a folder that holds it")
        raw = path.read_bytes()
        _check_digest("its SHA-256", hashlib.sha256(raw).hexdigest(), FREYFACES_SHA256, str(path),
                      "the Frey Faces file of the Sylvester-flow paper",
                      f"It is corrupt, truncated or another version; replace it with the original ({FREYFACES_URL})")
        faces = parse_freyfaces(raw, str(path))
        faces = faces[np.random.RandomState(self.split_seed).permutation(len(faces))]
        start = 0
        for name in self.splits[: self.splits.index(split)]:
            start += FREYFACES_SPLIT[name]
        return faces[start : start + FREYFACES_SPLIT[split]]


def git_blob_sha1(raw: bytes) -> str:
    """The SHA-1 by which git names a file's content (``git hash-object``): the checksum a repository publishes.

    Example:
        >>> git_blob_sha1(b"")  # git's empty blob
        'e69de29bb2d1d6434b8b29ae775ad8c2e48c5391'
    """
    return hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()


def _read_mat(path: Path, keys: tuple[str, ...], what: str, fix: str) -> dict[str, np.ndarray]:
    """The 2-D arrays ``keys``, of values in [0, 1], of a MATLAB ``.mat`` file, read with scipy (an optional extra)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"reading {what} ({path}) needs scipy, an optional dependency of flowzoo: "
                        "pip install 'flowzoo[mat]' (or pip install scipy)") from None
    try:
        content = loadmat(path)
    except Exception as error:  # scipy raises ValueError, TypeError, NotImplementedError (v7.3 files), ...
        raise DataError(f"{path} is not a MATLAB file that scipy can read: {error}. {fix}.") from error
    missing = [key for key in keys if key not in content]
    if missing:
        found = ", ".join(sorted(key for key in content if not key.startswith("__")))
        raise DataError(f"{path} is not {what}: it has no {', '.join(missing)} (found: {found}). {fix}.")
    arrays = {key: content[key] for key in keys}
    for key, array in arrays.items():
        if not (array.ndim == 2 and np.issubdtype(array.dtype, np.number) and array.size
                and 0 <= array.min() and array.max() <= 1):
            raise DataError(f"{path} is not {what}: {key} should be a 2-D array of values in [0, 1], found a "
                            f"{array.dtype} array of shape {array.shape}. {fix}.")
    return arrays


def _images_from_columns(rows: np.ndarray) -> np.ndarray:
    """``(n, 784)`` rows, each a 28×28 image flattened column by column (MATLAB's order), as ``(n, 28, 28)`` images."""
    return rows.reshape(-1, 28, 28).transpose(0, 2, 1)


# The git blob SHA-1 of datasets/OMNIGLOT/chardata.mat in yburda/iwae at commit
# 78a6075484bd7dd6f47a4bb9880d2295bc7a5220, the file the Sylvester-flow authors link to.
OMNIGLOT_GIT_SHA1 = "016a3536ffe5e1d38e42563a18d7a78bfaf643ec"
OMNIGLOT_URL = "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat"


@register_dataset("omniglot")
class Omniglot(DataSet):
    """Omniglot at 28×28 (Burda et al. 2016's ``chardata.mat``), dynamically binarized, a validation split held out.

    Reads ``<root>/omniglot/chardata.mat`` (or ``<root>/chardata.mat``), the file of
    the IWAE repository, whose git blob SHA-1 must be :data:`OMNIGLOT_GIT_SHA1`
    (:func:`git_blob_sha1`); flowzoo does not download it. Needs scipy (``pip install
    'flowzoo[mat]'``). Its ``data`` and ``testdata`` hold one grey image per column,
    flattened column by column (24,345 and 8,070 images, as Burda et al. report them,
    giving 23,000 / 1,345 / 8,070 with the default ``valid_size``). The training
    images are shuffled by ``numpy.random.RandomState(split_seed).permutation`` and
    the last ``valid_size`` become the validation split, as in the IWAE code (seed
    123); the Sylvester-flow authors do the same with their run's seed
    (``--manual_seed``, random when not given).

    ``load("train")`` returns the grey images (rounded to 0..255), to be binarized
    afresh in every batch by :meth:`train_transform`. ``valid`` and ``test`` are one
    fixed binarization, drawn as the Sylvester-flow authors draw it:
    ``numpy.random.RandomState(binarization_seed).binomial(1, ·)`` of the float32 grey
    values, the validation images first, then the test images, with their seed 777.
    Tested on synthetic files only: no copy of ``chardata.mat`` was available.

    Args:
        root: data root; see :func:`data_root`.
        valid_size: training images held out for validation.
        split_seed: seed of the shuffle before the validation images are taken.
        binarization_seed: seed of the fixed binarization of valid and test.

    References:
        Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through
        probabilistic program induction", Science 2015.
        Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016,
        and its code, yburda/iwae (datasets.py).

    Example:
        >>> data = Omniglot()
        >>> data.shape, data.splits
        ((1, 28, 28), ('train', 'valid', 'test'))
    """

    shape = (1, 28, 28)
    title = "Omniglot"
    train_transform = staticmethod(DynamicMNIST.train_transform)

    def __init__(self, root: str | None = None, valid_size: PositiveInt = 1345, split_seed: NonNegativeInt = 123,
                 binarization_seed: NonNegativeInt = 777):
        self.root = data_root(root)
        self.valid_size = valid_size
        self.split_seed = split_seed
        self.binarization_seed = binarization_seed

    def _read(self, split: str) -> np.ndarray:
        """Grey 0..255 images for ``train``, the fixed binarization (0/1) for ``valid`` and ``test``."""
        fix = f"Replace it with the file of the IWAE repository ({OMNIGLOT_URL})"
        path = _find(_places(self.root, "omniglot", "chardata.mat"), "Omniglot file chardata.mat",
                     f"flowzoo does not download it: put the file ({OMNIGLOT_URL}) in {self.root / 'omniglot'}, "
                     f"or point data.root (or ${DATA_ROOT_ENV}) at a folder that holds it")
        _check_digest("its git blob SHA-1", git_blob_sha1(path.read_bytes()), OMNIGLOT_GIT_SHA1, str(path),
                      "the chardata.mat of the IWAE repository", fix)
        mat = _read_mat(path, ("data", "testdata"), "the Omniglot chardata.mat", fix)
        train = _images_from_columns(mat["data"].T.astype(np.float32))
        if self.valid_size >= len(train):
            raise DataError(f"data.valid_size={self.valid_size} leaves no Omniglot training images: {path} holds "
                            f"{len(train):,}. Set data.valid_size below {len(train)}.")
        train = train[np.random.RandomState(self.split_seed).permutation(len(train))]
        train, valid = train[: -self.valid_size], train[-self.valid_size :]
        if split == "train":
            return np.rint(train * 255)
        draw = np.random.RandomState(self.binarization_seed)
        valid_bits = draw.binomial(1, valid)  # drawn first even for the test split: the test bits come after them
        if split == "valid":
            return valid_bits
        return draw.binomial(1, _images_from_columns(mat["testdata"].T.astype(np.float32)))


@register_dataset("caltech101_silhouettes")
class Caltech101Silhouettes(DataSet):
    """Caltech 101 Silhouettes at 28×28 (Marlin et al. 2010), split 1: binary shapes, the file's own three splits.

    Reads ``<root>/caltech101_silhouettes/caltech101_silhouettes_28_split1.mat`` (or
    the file in ``<root>``), as published by Marlin; flowzoo does not download it, and
    no checksum is known to check it against (its structure is checked). Needs scipy
    (``pip install 'flowzoo[mat]'``). ``train_data``, ``val_data`` and ``test_data``
    hold one image per row, flattened column by column; as the Sylvester-flow authors
    do, each pixel is inverted (``1 − x``). Tested on synthetic files only: no copy of
    the file was available.

    Args:
        root: data root; see :func:`data_root`.

    References:
        Marlin, Swersky, Chen & de Freitas, "Inductive Principles for Restricted
        Boltzmann Machine Learning", AISTATS 2010.

    Example:
        >>> data = Caltech101Silhouettes()
        >>> data.shape, data.splits
        ((1, 28, 28), ('train', 'valid', 'test'))
    """

    shape = (1, 28, 28)
    title = "Caltech 101 Silhouettes"
    KEYS = {"train": "train_data", "valid": "val_data", "test": "test_data"}
    URL = "https://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat"

    def __init__(self, root: str | None = None):
        self.root = data_root(root)

    def _read(self, split: str) -> np.ndarray:
        """The split's images as 0/1 bits."""
        name = "caltech101_silhouettes_28_split1.mat"
        path = _find(_places(self.root, "caltech101_silhouettes", name), f"Caltech 101 Silhouettes file {name}",
                     f"flowzoo does not download it: put the file ({self.URL}) in "
                     f"{self.root / 'caltech101_silhouettes'}, or point data.root (or ${DATA_ROOT_ENV}) at a folder "
                     "that holds it")
        fix = f"Replace it with the original file ({self.URL})"
        rows = _read_mat(path, tuple(self.KEYS.values()), "the Caltech 101 Silhouettes 28×28 split 1", fix)
        pixels = rows[self.KEYS[split]]
        if pixels.shape[1] != 784 or not np.isin(pixels, (0, 1)).all():
            raise DataError(f"{path} is not the Caltech 101 Silhouettes 28×28 split 1: {self.KEYS[split]} should "
                            f"hold 784 binary values per row, found an array of shape {pixels.shape}"
                            f"{'' if np.isin(pixels, (0, 1)).all() else ' with values other than 0 and 1'}. {fix}.")
        return 1 - _images_from_columns(pixels.astype(np.uint8))
