"""CIFAR-10 (official pickle batches, safe unpickling, download) and dynamically binarized MNIST (IDX files)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from flowzoo import datasets
from flowzoo.datasets import CIFAR10, DynamicMNIST, parse_idx
from flowzoo.errors import DataError
from flowzoo.registry import datasets as dataset_registry

# SHA-256 of the fixed test binarization (seed 0): a change in it changes every published test number.
MNIST_TEST_BITS_SHA256 = "b6d3406e7c56060705d989552f71b80bcebff2c4dd1c4d94ad7ce20f60e62c2e"


def batch_bytes(data: np.ndarray, labels: list | None = None) -> bytes:
    """A batch pickled as the official files are (protocol 2, bytes keys)."""
    labels = list(range(len(data))) if labels is None else labels
    return pickle.dumps({b"batch_label": b"synthetic", b"labels": labels, b"data": data}, protocol=2)


def write_batches(folder: Path, **batches: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in batches.items():
        (folder / name).write_bytes(batch_bytes(data))


def random_rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3072), dtype=np.uint8)


def test_registered():
    assert isinstance(dataset_registry.build({"name": "cifar10"}, "data"), CIFAR10)
    assert isinstance(dataset_registry.build({"name": "mnist_dynamic"}, "data"), DynamicMNIST)


# -- CIFAR-10: the shared subset ---------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_subset(shared_data_root) -> Path:
    folder = shared_data_root / "cifar10_subset" / "cifar-10-batches-py"
    if not (folder / "data_batch_1").is_file():
        pytest.skip(f"the shared CIFAR-10 subset is not at {folder}")
    return folder


def test_reads_the_shared_subset(cifar_subset):
    data = CIFAR10(root=str(cifar_subset.parents[1]), download=False)
    train, valid, test = (data.load(split) for split in data.splits)
    # A tenth of the 2,000 train rows is held out by default.
    assert (train.shape, valid.shape, test.shape) == ((1800, 3, 32, 32), (200, 3, 32, 32), (1000, 3, 32, 32))
    assert train.dtype == valid.dtype == test.dtype == torch.uint8
    with open(cifar_subset / "data_batch_1", "rb") as file:
        official = pickle.load(file, encoding="bytes")[b"data"]  # trusted file: the reference reader
    assert np.array_equal(torch.cat([train, valid]).flatten(1).numpy(), official)
    assert 110 < test.float().mean() < 130
    red, green, blue = test.float().mean((0, 2, 3))
    assert red > blue + 5 and green > blue + 5  # natural images are least blue: the channels are in place


def test_valid_size_carves_the_last_train_rows(cifar_subset):
    root = str(cifar_subset.parents[1])
    everything = torch.cat([CIFAR10(root=root, download=False).load(s) for s in ("train", "valid")])
    data = CIFAR10(root=root, download=False, valid_size=500)
    assert torch.equal(data.load("train"), everything[:1500])
    assert torch.equal(data.load("valid"), everything[1500:])


# -- CIFAR-10: the official format -------------------------------------------------------


def test_synthetic_batches_keep_the_pixel_layout(tmp_path):
    first, third, test = random_rows(4, 1), random_rows(3, 2), random_rows(2, 3)
    # data_batch_2 is missing: the train batches that exist are used, in order.
    write_batches(tmp_path / "cifar-10-batches-py", data_batch_1=first, data_batch_3=third, test_batch=test)
    data = CIFAR10(root=str(tmp_path), download=False, valid_size=2)
    train, valid = data.load("train"), data.load("valid")
    rows = np.concatenate([first, third])
    assert train.shape == (5, 3, 32, 32) and valid.shape == (2, 3, 32, 32)
    images = torch.cat([train, valid]).numpy()
    for i, c, y, x in [(0, 0, 0, 0), (1, 2, 31, 31), (4, 1, 5, 17), (6, 2, 0, 31), (5, 0, 31, 0)]:
        assert images[i, c, y, x] == rows[i, c * 1024 + y * 32 + x]  # channel-major, then row-major
    assert np.array_equal(images.reshape(7, -1), rows)
    assert np.array_equal(data.load("test").numpy().reshape(2, -1), test)


def test_reads_batches_written_by_old_numpy(tmp_path):
    raw = batch_bytes(random_rows(3, 4)).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in raw  # the name the official (Python 2) files use
    assert datasets.parse_cifar_batch(raw, "old").shape == (3, 3072)


def test_search_order_prefers_the_root_folder(tmp_path):
    write_batches(tmp_path / "cifar10_subset" / "cifar-10-batches-py", data_batch_1=random_rows(4, 5),
                  test_batch=random_rows(4, 5))
    write_batches(tmp_path / "cifar-10-batches-py", data_batch_1=random_rows(3, 6), test_batch=random_rows(2, 6))
    write_batches(tmp_path / "cifar10" / "cifar-10-batches-py", test_batch=random_rows(1, 7))  # no train batch
    assert len(CIFAR10(root=str(tmp_path), download=False).load("test")) == 2
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    assert len(CIFAR10(root=str(tmp_path), download=False).load("test")) == 4


def test_a_pickle_that_calls_anything_else_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder, test_batch=random_rows(1, 8))
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(DataError) as error:
        CIFAR10(root=str(tmp_path), download=False).load("train")
    assert str(folder / "data_batch_1") in str(error.value) and "system" in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("bad, complaint", [
    (batch_bytes(random_rows(7, 9))[:15_000], "truncated"),
    (pickle.dumps({b"pixels": random_rows(2, 9), b"labels": [0, 1]}, protocol=2), "b'pixels'"),
    (batch_bytes(random_rows(2, 9).astype(np.float32)), "float32"),
    (batch_bytes(random_rows(2, 9)[:, :3071]), "(2, 3071)"),
    (batch_bytes(random_rows(2, 9), labels=[0]), "2 labels"),
], ids=["truncated", "keys", "dtype", "shape", "labels"])
def test_an_invalid_batch_is_a_data_error_naming_the_file(tmp_path, bad, complaint):
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder, data_batch_1=random_rows(2, 10))
    (folder / "test_batch").write_bytes(bad)
    with pytest.raises(DataError) as error:
        CIFAR10(root=str(tmp_path), download=False).load("test")
    assert f"{folder / 'test_batch'} is not a CIFAR-10 batch" in str(error.value)
    assert complaint in str(error.value)


def test_valid_size_must_leave_training_rows(tmp_path):
    write_batches(tmp_path / "cifar-10-batches-py", data_batch_1=random_rows(3, 11), test_batch=random_rows(1, 11))
    with pytest.raises(DataError, match="valid_size=3 leaves no CIFAR-10 training images"):
        CIFAR10(root=str(tmp_path), download=False, valid_size=3).load("valid")


def test_missing_cifar_with_downloads_off_says_where_it_looked(tmp_path):
    with pytest.raises(DataError) as error:
        CIFAR10(root=str(tmp_path), download=False).load("train")
    message = str(error.value)
    for place in ("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10_subset/cifar-10-batches-py"):
        assert str(tmp_path / place) in message
    assert "data.download=false" in message and "FLOWZOO_DATA_ROOT" in message


def cifar_archive(train: np.ndarray, test: np.ndarray) -> bytes:
    """A small archive laid out like cifar-10-python.tar.gz, plus members that must not be extracted."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        members = {"data_batch_1": batch_bytes(train), "test_batch": batch_bytes(test), "../escaped": b"x"}
        for name, raw in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        link = tarfile.TarInfo("cifar-10-batches-py/data_batch_2")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return buffer.getvalue()


@pytest.fixture
def cifar_server(tmp_path, monkeypatch):
    """Serve a small archive over HTTP on localhost, in place of the original host."""
    served = tmp_path / "served"
    served.mkdir()
    archive = cifar_archive(random_rows(10, 12), random_rows(3, 13))
    (served / "cifar-10-python.tar.gz").write_bytes(archive)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(datasets, "CIFAR10_URL", f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz")
    monkeypatch.setattr(datasets, "CIFAR10_MD5", hashlib.md5(archive).hexdigest())
    yield served
    server.shutdown()


def test_downloads_verifies_and_unpacks_safely(tmp_path, cifar_server):
    root = tmp_path / "root"
    data = CIFAR10(root=str(root))
    assert data.load("train").shape == (9, 3, 32, 32) and data.load("test").shape == (3, 3, 32, 32)
    assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == ["data_batch_1", "test_batch"]
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no archive, .part or escapee
    assert not (tmp_path / "escaped").exists()


def test_download_with_wrong_md5_leaves_nothing(tmp_path, cifar_server, monkeypatch):
    monkeypatch.setattr(datasets, "CIFAR10_MD5", "0" * 32)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="MD5 is [0-9a-f]{32}, expected 0{32}"):
        CIFAR10(root=str(root)).load("test")
    assert not any(root.iterdir())


def test_offline_cifar_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DataError) as error:
        CIFAR10(root=str(tmp_path)).load("test")
    message = str(error.value)
    assert "could not download http://127.0.0.1:9/" in message and str(tmp_path / "cifar-10-batches-py") in message
    assert "Unpack the official archive" in message


# -- dynamically binarized MNIST ---------------------------------------------------------


@pytest.fixture(scope="module")
def mnist(shared_data_root) -> DynamicMNIST:
    if not (shared_data_root / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the shared MNIST IDX files are not in {shared_data_root / 'mnist'}")
    return DynamicMNIST(root=str(shared_data_root))


@pytest.fixture(scope="module")
def mnist_splits(mnist) -> dict[str, torch.Tensor]:
    return {split: mnist.load(split) for split in mnist.splits}


def test_reads_the_official_idx_files(mnist_splits):
    train, valid, test = mnist_splits["train"], mnist_splits["valid"], mnist_splits["test"]
    assert (train.shape, valid.shape, test.shape) == ((50_000, 1, 28, 28), (10_000, 1, 28, 28), (10_000, 1, 28, 28))
    assert train.dtype == valid.dtype == test.dtype == torch.uint8
    assert (train.min(), train.max()) == (0, 255) and len(train.unique()) == 256  # grayscale
    assert set(valid.unique().tolist()) == set(test.unique().tolist()) == {0, 1}
    assert 0.1 < test.float().mean() < 0.16  # about 13% of MNIST's pixels are ink


def test_valid_is_a_binarization_of_the_last_training_images(mnist, mnist_splits):
    grayscale = parse_idx(gzip.decompress((mnist.root / "mnist" / "train-images-idx3-ubyte.gz").read_bytes()))
    last = torch.from_numpy(grayscale[50_000:].copy()).unsqueeze(1)
    valid = mnist_splits["valid"]
    assert torch.equal(valid[last == 0], torch.zeros_like(valid[last == 0]))
    assert torch.equal(valid[last == 255], torch.ones_like(valid[last == 255]))
    assert torch.equal(mnist_splits["train"], torch.from_numpy(grayscale[:50_000].copy()).unsqueeze(1))


def test_the_test_binarization_is_fixed(mnist, mnist_splits):
    test = mnist_splits["test"]
    assert hashlib.sha256(test.numpy().tobytes()).hexdigest() == MNIST_TEST_BITS_SHA256
    assert torch.equal(mnist.load("test"), test)
    other_seed = DynamicMNIST(root=str(mnist.root), binarization_seed=1).load("test")
    assert not torch.equal(other_seed, test)


def test_train_transform_binarizes_afresh(mnist_splits):
    batch = mnist_splits["train"][:500]
    first, second = DynamicMNIST.train_transform(batch), DynamicMNIST.train_transform(batch)
    assert first.dtype == torch.float32 and set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    assert abs(first.mean() - batch.float().mean() / 255) < 0.01


def idx_bytes(images: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 8, images.ndim) + struct.pack(f">{images.ndim}I", *images.shape)
    return header + images.tobytes()


@pytest.mark.parametrize("content, complaint", [
    (gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8))), "MD5 of its decompressed bytes"),
    (gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-1]), "shape (3, 28, 28) (2,368 bytes)"),
    (gzip.compress(b"\x00\x00\x0d\x03" + idx_bytes(np.zeros((3, 28, 28), np.uint8))[4:]), "magic number is 00000d03"),
    (gzip.compress(idx_bytes(np.zeros((3, 28, 27), np.uint8))), "not MNIST's (n, 28, 28) images"),
    (gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8)))[:-10], "not a gzip-compressed MNIST IDX file"),
    (idx_bytes(np.zeros((3, 28, 28), np.uint8)), "not a gzip-compressed MNIST IDX file"),
], ids=["contents", "truncated", "magic", "dims", "truncated-gzip", "not-gzip"])
def test_a_bad_idx_file_is_a_data_error_naming_it(tmp_path, content, complaint):
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        DynamicMNIST(root=str(tmp_path)).load("test")
    assert str(path) in str(error.value) and complaint in str(error.value)


def test_missing_mnist_says_where_it_looked(tmp_path):
    with pytest.raises(DataError) as error:
        DynamicMNIST(root=str(tmp_path)).load("train")
    message = str(error.value)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in message and "FLOWZOO_DATA_ROOT" in message
